"""Prometheus metrics of one router instance (its own registry, so tests and instances never mix)."""

from __future__ import annotations

import time

import prometheus_client as prom

from router.queue import DepthStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.received = prom.Counter(
            "router_events_received", "Events accepted by ingest (committed to the queue)", ["api_key"], registry=r
        )
        self.duplicates = prom.Counter(
            "router_events_duplicate", "Events acknowledged but not enqueued: id seen within the dedup window",
            registry=r,
        )
        self.ingest_errors = prom.Counter(
            "router_ingest_errors", "Ingest requests refused, by reason", ["reason"], registry=r
        )
        self.commits = prom.Counter(
            "router_queue_commits", "Queue transactions that committed ingested events (group commit)", registry=r
        )
        self.delivered = prom.Counter("router_events_delivered", "Events delivered", ["destination"], registry=r)
        self.skipped = prom.Counter(
            "router_events_skipped", "Events deliberately not sent, by reason", ["destination", "reason"], registry=r
        )
        self.failed = prom.Counter(
            "router_events_failed", "Events moved to dead letters, by reason", ["destination", "reason"], registry=r
        )
        self.retried = prom.Counter(
            "router_events_retried", "Event delivery attempts that will be retried", ["destination"], registry=r
        )
        self.latency = prom.Histogram(
            "router_delivery_latency_seconds", "From acceptance to delivery", ["destination"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.depth = prom.Gauge("router_queue_depth", "Undelivered events", ["destination"], registry=r)
        self.oldest = prom.Gauge(
            "router_queue_oldest_age_seconds", "Age of the oldest undelivered event", ["destination"], registry=r
        )
        self.dead_letters = prom.Gauge("router_dead_letters", "Events in dead letters", ["destination"], registry=r)
        self.paused = prom.Gauge(
            "router_destination_paused", "1 while a destination is paused (bad credentials)", ["destination"],
            registry=r,
        )
        self.sender_paused = prom.Gauge(
            "router_sender_paused", "1 while one sender of a destination is paused (e.g. a missing scope)",
            ["destination", "sender"], registry=r,
        )

    def set_queue_stats(self, destinations: list[str], stats: dict[str, DepthStats]) -> None:
        now = time.time()
        for name in destinations:
            s = stats.get(name)
            self.depth.labels(name).set(s.depth if s else 0)
            oldest = s.oldest_received_at if s else None
            self.oldest.labels(name).set(now - oldest if oldest else 0)
            self.dead_letters.labels(name).set(s.dead_letters if s else 0)

    def render(self) -> bytes:
        return prom.generate_latest(self.registry)
