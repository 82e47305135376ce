"""The delivery loop: one Dispatcher per configured destination, owned by the core.

lease a batch -> filter (hook) -> group by sender -> rate limit -> send with a per-attempt timeout
-> apply each event's outcome: ack, reschedule with capped exponential backoff and full jitter,
dead-letter, or pause the whole destination.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import orjson

from router.config import DestinationConfig
from router.destination import (
    SEND_DEADLINE,
    Delivered,
    Delivery,
    Destination,
    Outcome,
    PauseDestination,
    PauseSender,
    Rejected,
    Retry,
    RetryBatch,
    Sender,
    Skipped,
    describe_error,
)
from router.filters import TemplateRejected
from router.metrics import Metrics
from router.queue import Queue, Record

log = logging.getLogger(__name__)

#: how often an idle dispatcher looks for records added by another process (`router dlq replay`)
POLL_INTERVAL = 1.0
#: the furthest ahead a destination may push a retry (a day: daily request limits reset within one)
MAX_NOT_BEFORE = 86400.0


class Dispatcher:
    def __init__(
        self,
        config: DestinationConfig,
        destination: Destination,
        queue: Queue,
        hook: Any,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.name = config.name
        self.destination = destination
        self.queue = queue
        self.hook = hook
        self.metrics = metrics
        self.clock = clock
        self.delivery = config.delivery
        self.state = "starting"
        self.last_error: str | None = None
        self.pause_reason: str | None = None
        self.counts: Counter[str] = Counter()
        self._work = asyncio.Event()
        self._stopping = False
        self._slots = asyncio.Semaphore(self.delivery.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._limiter = destination.rate_limiter()
        #: whole batches failed in a row (connection refused, 5xx, 429, timeouts): the destination
        #: as a whole is unwell, so the dispatcher holds back instead of failing every fresh batch
        self._failures_in_row = 0
        self._hold_until = 0.0
        #: senders refused on their own (PauseSender): name -> (next probe time, reason)
        self._paused_senders: dict[str, tuple[float, str]] = {}

    # -- control --------------------------------------------------------------------------

    def notify(self) -> None:
        """New records may be ready."""
        self._work.set()

    async def stop(self, grace: float) -> None:
        """Stop leasing; let in-flight sends finish within ``grace`` seconds, then cancel them.

        A cancelled send's records stay leased in the queue and are delivered again after restart.
        """
        self._stopping = True
        self._work.set()
        if self._inflight:
            done, pending = await asyncio.wait(self._inflight, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        self.state = "stopped"

    async def run(self) -> None:
        await self._start_destination()
        queue_failures = 0
        partial = False
        while not self._stopping:
            if self.state == "paused":
                self._set_idle()
                await self._sleep_unless_stopping(self.delivery.pause_probe)
                if self._stopping:
                    break
                self.state = "probing"
            if (hold := self._hold_until - self.clock()) > 0:
                self._set_idle()
                await self._sleep_unless_stopping(hold)
                continue
            if partial and self.delivery.linger and self._depth() < self.delivery.batch_size:
                # the last batch went out short: let the next one fill for a moment, as after idling
                await self._sleep_unless_stopping(self.delivery.linger)
            await self._slots.acquire()
            try:
                records = await self.queue.lease(self.name, self._lease_size(), self.delivery.lease_timeout)
                partial = 0 < len(records) < self._lease_size()
                queue_failures = 0
            except Exception:
                self._slots.release()
                log.exception("destination %s: cannot lease from the queue; trying again", self.name)
                await self._sleep_unless_stopping(self._backoff(queue_failures))
                queue_failures += 1
                continue
            if self._stopping:  # stop() came while leasing: give the records back untouched
                self._slots.release()
                await self.queue.release([r.id for r in records])
                break
            if not records:
                self._slots.release()
                self._set_idle()
                await self._wait_for_work()
                continue
            self._idle.clear()
            task = asyncio.create_task(self._deliver_and_release(records), name=f"deliver-{self.name}")
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            if self.state == "probing":
                # one batch at a time until the destination answers again
                await asyncio.wait({task})

    def _lease_size(self) -> int:
        return 1 if self.state == "probing" else self.delivery.batch_size

    async def _start_destination(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                await self.destination.start()
                self.state = "running"
                return
            except PauseDestination as exc:
                self._pause(exc.reason)
                return
            except Exception as exc:
                self.last_error = f"start failed: {describe_error(exc)}"
                log.warning("destination %s: %s; events keep queueing", self.name, self.last_error)
                await self._sleep_unless_stopping(self._backoff(attempt))
                attempt += 1

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        """Sleep; wake early only when stopping."""
        self._work.clear()
        deadline = asyncio.get_running_loop().time() + seconds
        while not self._stopping:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._work.wait(), timeout=remaining)
            self._work.clear()
            self._set_idle()  # a drain() that woke us is answered: nothing will be sent before the deadline

    async def _wait_for_work(self) -> None:
        """Until new records may be ready: a notification, the next retry time, or the poll interval."""
        timeout = POLL_INTERVAL
        self._work.clear()  # a notification from here on wakes the wait below
        try:
            ready_at = await self.queue.next_ready_at(self.name)
        except Exception:
            log.exception("destination %s: cannot read the queue; trying again", self.name)
            ready_at = None
        if ready_at is not None:
            timeout = min(timeout, max(0.0, ready_at - self.clock()))
        if timeout <= 0 or self._stopping:
            return
        try:
            await asyncio.wait_for(self._work.wait(), timeout=timeout)
        except TimeoutError:
            return
        if self.delivery.linger and not self._stopping and self._depth() < self.delivery.batch_size:
            await asyncio.sleep(self.delivery.linger)  # let a batch fill up

    def _depth(self) -> int:
        return self.queue.depth(self.name)

    def _set_idle(self) -> None:
        if not self._inflight:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until nothing is in flight and a look made after this call found nothing to send
        now (nothing ready, or the destination held back, paused or rate limited). For tests and
        benchmarks: an event to wait on instead of a sleep."""
        while True:
            self._idle.clear()
            self.notify()
            await self._idle.wait()
            if not self._inflight:
                return

    # -- one batch ------------------------------------------------------------------------

    async def _deliver_and_release(self, records: list[Record]) -> None:
        try:
            await self._deliver(records)
        except Exception:
            # our own failure (e.g. the queue could not record outcomes): hold the destination back
            # rather than spin on the same batch; the records come back when released or expired
            log.exception("destination %s: delivery failed inside the router; the batch will be retried", self.name)
            self._failures_in_row += 1
            self._hold_until = max(self._hold_until, self.clock() + self._backoff(self._failures_in_row - 1))
            with contextlib.suppress(Exception):
                await self.queue.release([r.id for r in records])
        finally:
            self._slots.release()
            self.notify()

    async def _deliver(self, records: list[Record]) -> None:
        leased_at = self.clock()
        outcomes: dict[int, Outcome] = {}
        by_sender: dict[int, tuple[Sender, list[Delivery]]] = {}
        for record in records:
            try:
                event = orjson.loads(record.payload)
                reason = self.hook.router_filter_event(destination=self.config, event=event)
                sender = None if reason else self.destination.sender_for(event)
            except TemplateRejected as exc:
                outcomes[record.id] = Rejected(str(exc))
                continue
            except orjson.JSONDecodeError:
                outcomes[record.id] = Rejected("stored payload is not valid JSON")
                continue
            except Exception as exc:  # a plugin's filter or routing failed for this event
                log.exception("destination %s: filter or routing failed for an event", self.name)
                outcomes[record.id] = Rejected(f"filter failed: {type(exc).__name__}")
                continue
            if sender is None:
                outcomes[record.id] = Skipped(str(reason))
                continue
            by_sender.setdefault(id(sender), (sender, []))[1].append(
                Delivery(record_id=record.id, event=event, attempts=record.attempts, received_at=record.received_at)
            )

        # the last moment a chunk may start and still finish within the lease
        send_by = leased_at + self.delivery.lease_timeout - self.delivery.timeout
        first = True
        for sender, deliveries in by_sender.values():
            size = max(1, min(sender.max_batch, self.delivery.batch_size))
            for start in range(0, len(deliveries), size):
                chunk = deliveries[start : start + size]
                if self._held() or (not first and self.clock() > send_by):
                    # paused, held back after a failure or out of lease time: the rest goes back
                    # untouched, without an attempt counted
                    outcomes.update((d.record_id, _PAUSED) for d in chunk)
                    continue
                if paused := self._paused_senders.get(sender.name):
                    if self.clock() < paused[0]:
                        # this sender alone is paused: its events wait for the probe, untouched
                        outcomes.update((d.record_id, _Deferred(paused[0])) for d in chunk)
                        continue
                    # this chunk is the probe: batches in flight beside it wait for the next one
                    self._paused_senders[sender.name] = (self.clock() + self.delivery.pause_probe, paused[1])
                if sender.rate_limited and self._limiter is not None and (wait := self._limiter.paused_for) > 0:
                    # the rate budget is paused (e.g. a daily limit): these wait for it, untouched,
                    # while events of senders outside the budget keep flowing
                    outcomes.update((d.record_id, _Deferred(self.clock() + wait)) for d in chunk)
                    continue
                first = False
                for delivery, outcome in zip(chunk, await self._send(sender, chunk, send_by), strict=True):
                    outcomes[delivery.record_id] = outcome

        await self._apply(records, outcomes)

    def _held(self) -> bool:
        """Paused, or held back after a failure."""
        return self.state == "paused" or self._hold_until > self.clock()

    async def _send(self, sender: Sender, chunk: Sequence[Delivery], send_by: float) -> Sequence[Outcome]:
        if self._limiter is not None and sender.rate_limited:
            await self._limiter.acquire()
            if self.clock() > send_by:  # waited out the lease: another lease may own these now
                return [_PAUSED] * len(chunk)
        deadline = SEND_DEADLINE.set(asyncio.get_running_loop().time() + self.delivery.timeout)
        try:
            # the send runs in a task of its own that inherits the deadline (time_left())
            result = await asyncio.wait_for(sender.send(chunk), timeout=self.delivery.timeout)
        except PauseSender as exc:
            if self.state == "probing":
                self._resume()  # the destination answered: its credentials work, one scope does not
            probe_at = self._pause_sender(sender.name, exc.reason)
            return [_Deferred(probe_at)] * len(chunk)
        except PauseDestination as exc:
            self._pause(exc.reason)
            return [_PAUSED] * len(chunk)
        except RetryBatch as exc:
            return self._batch_failed(chunk, Retry(exc.reason, exc.not_before))
        except TimeoutError:
            return self._batch_failed(chunk, Retry(f"no answer within {self.delivery.timeout:g}s"))
        except Exception as exc:
            return self._batch_failed(chunk, Retry(describe_error(exc)))
        finally:
            SEND_DEADLINE.reset(deadline)
        if len(result) != len(chunk):
            log.error(
                "destination %s: sender %s returned %d outcomes for %d events; retrying the batch",
                self.name, sender.name, len(result), len(chunk),
            )
            return [Retry("plugin returned a wrong number of outcomes")] * len(chunk)
        if sender.name in self._paused_senders:
            self._resume_sender(sender.name)
        if any(isinstance(o, Delivered) for o in result):
            self._failures_in_row = 0
        if self.state in ("probing", "paused") and any(isinstance(o, Delivered) for o in result):
            self._resume()
        elif self.state == "probing":
            self._resume()  # the destination answered; whatever it said, the credentials work
        return result

    def _batch_failed(self, chunk: Sequence[Delivery], retry: Retry) -> Sequence[Outcome]:
        """Hold the whole destination back: capped exponential backoff with full jitter, and never
        before the destination's own "not before"."""
        self._failures_in_row += 1
        hold = self.clock() + self._backoff(self._failures_in_row - 1)
        self._hold_until = max(self._hold_until, hold, self._bounded(retry.not_before))
        self.last_error = retry.reason
        return [retry] * len(chunk)

    async def _apply(self, records: list[Record], outcomes: dict[int, Outcome]) -> None:
        now = self.clock()
        ack: list[int] = []
        release: list[int] = []
        deferred: list[tuple[int, float]] = []
        reschedule: list[tuple[int, float, str]] = []
        dead: list[tuple[int, str, str | None]] = []
        for record in records:
            outcome = outcomes.get(record.id, _PAUSED)
            if outcome is _PAUSED:
                release.append(record.id)
            elif isinstance(outcome, _Deferred):
                deferred.append((record.id, outcome.until))
            elif isinstance(outcome, Delivered):
                ack.append(record.id)
                self.counts["delivered"] += 1
                self.metrics.delivered.labels(self.name).inc()
                self.metrics.latency.labels(self.name).observe(max(0.0, now - record.received_at))
            elif isinstance(outcome, Skipped):
                ack.append(record.id)
                self.counts["skipped"] += 1
                self.metrics.skipped.labels(self.name, outcome.reason).inc()
            elif isinstance(outcome, Rejected):
                dead.append((record.id, outcome.reason, outcome.response))
                self._count_failed("rejected", outcome.reason)
            elif isinstance(outcome, Retry):
                self.last_error = outcome.reason
                if now - record.received_at >= self.delivery.max_retry_age:
                    reason = f"gave up after {record.attempts + 1} attempts: {outcome.reason}"
                    dead.append((record.id, reason, None))
                    self._count_failed("retries_exhausted", reason)
                    continue
                not_before = now + self._backoff(record.attempts)
                if outcome.not_before is not None:
                    not_before = max(not_before, self._bounded(outcome.not_before))
                reschedule.append((record.id, not_before, outcome.reason))
                self.counts["retried"] += 1
                self.metrics.retried.labels(self.name).inc()
        await self.queue.ack(ack)
        await self.queue.release(release)
        for until in sorted({until for _, until in deferred}):
            await self.queue.release([i for i, u in deferred if u == until], not_before=until)
        await self.queue.reschedule(reschedule)
        await self.queue.dead_letter(dead)

    def _count_failed(self, kind: str, reason: str) -> None:
        self.counts["failed"] += 1
        self.last_error = reason
        self.metrics.failed.labels(self.name, kind).inc()
        log.warning("destination %s: event dead-lettered: %s", self.name, reason)

    def _bounded(self, not_before: float | None) -> float:
        """A destination's "not before", at most a day ahead (a Retry-After of years is a mistake)."""
        if not_before is None or not math.isfinite(not_before):
            return 0.0
        return min(not_before, self.clock() + MAX_NOT_BEFORE)

    def _backoff(self, attempts: int) -> float:
        """Capped exponential backoff with full jitter."""
        cap = min(self.delivery.max_backoff, self.delivery.initial_backoff * (2 ** min(attempts, 30)))
        return random.uniform(0, cap)

    def _pause(self, reason: str) -> None:
        if self.state != "paused":
            log.error(
                "destination %s PAUSED: %s. Every event is kept; fix the credential and restart, "
                "or wait for the next probe in %gs.", self.name, reason, self.delivery.pause_probe,
            )
        self.state = "paused"
        self.pause_reason = reason
        self.last_error = reason
        self.metrics.paused.labels(self.name).set(1)

    def _resume(self) -> None:
        log.warning("destination %s resumed", self.name)
        self.state = "running"
        self.pause_reason = None
        self.metrics.paused.labels(self.name).set(0)

    def _pause_sender(self, sender: str, reason: str) -> float:
        """Pause one sender until the next probe; returns the probe time."""
        if sender not in self._paused_senders:
            log.error(
                "destination %s: %s PAUSED: %s. Its events are kept and the other senders go on; "
                "probing again every %gs.", self.name, sender, reason, self.delivery.pause_probe,
            )
        probe_at = self.clock() + self.delivery.pause_probe
        self._paused_senders[sender] = (probe_at, reason)
        self.last_error = reason
        self.metrics.sender_paused.labels(self.name, sender).set(1)
        return probe_at

    def _resume_sender(self, sender: str) -> None:
        log.warning("destination %s: %s resumed", self.name, sender)
        del self._paused_senders[sender]
        self.metrics.sender_paused.labels(self.name, sender).set(0)

    def status(self) -> dict[str, Any]:
        return {
            "type": self.config.type,
            "state": self.state,
            "paused_reason": self.pause_reason,
            "paused_senders": {name: reason for name, (_, reason) in self._paused_senders.items()},
            "delivered": self.counts["delivered"],
            "skipped": self.counts["skipped"],
            "failed": self.counts["failed"],
            "retried": self.counts["retried"],
            "in_flight": len(self._inflight),
            "last_error": self.last_error,
            **dict(self.destination.status()),
        }


class _PausedMarker:
    """Not an outcome a plugin returns: the record goes back untouched while the destination is paused."""


_PAUSED: Any = _PausedMarker()


@attrs.frozen
class _Deferred:
    """Not an outcome a plugin returns: the record goes back untouched, not ready before ``until``."""

    until: float
