"""Fault matrix: the router against a misbehaving HubSpot (the emulator) and a misbehaving webhook receiver.

For each fault -- 30 % 5xx at random (seeded), slow answers past the per-attempt timeout, connection
resets, a 429 storm, 423 Locked, 477 with Retry-After, and an outage (everything 503 until the router
has retried many times, then recovery) -- every accepted event is delivered after recovery, nothing is
delivered twice to HubSpot as a v3 event (its uuid), and dead letters hold exactly the events HubSpot
rejects by design (none at all for the webhook).

The clock is compressed, not waited on: backoff 0.02 s doubling to at most 0.2 s stands for 1 s
doubling to 5 min, so the outage's "several retries at the backoff cap" is the 10-minute outage of
the real settings. Waiting is done on the emulator's and the receiver's request logs and on the
router's queue, never with a fixed sleep.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import attrs
import orjson
import pytest
import yaml
from aiohttp import web

from plugins.hubspot.emulator import Emulator
from plugins.hubspot.events import occurrence_uuid
from tests.conftest import RunningRouter, poll_until
from tests.reliability_helpers import ADMIN, CLIENT, SERVER, router_config

pytestmark = pytest.mark.timeout(90)

TOKEN = "pat-na1-fault-matrix-70ken"
HUB_ID = "20546336"
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
CONTACTS_PREFIX = "/crm/v3/objects/"
EVENTS_PREFIX = "/events/v3/"  # sends and event definitions
SEND = "/events/v3/send/batch"
#: a count large enough never to run out: what is left of it says how often a rate fault hit
ENDLESS = 1_000_000
#: failed attempts an outage lasts: with the backoff capped at 0.2 s (5 min at real settings) this is
#: well past the cap, i.e. a 10-minute outage of the real settings
OUTAGE_FAILURES = 15
#: how long delivery may take after an outage ends (a few backoff caps; generous for 2 busy cores)
RECOVERY_SECONDS = 10.0

N = 300  # identifies and track events each (HubSpot); events (webhook)

PROPERTIES: list[dict[str, Any]] = [
    {"name": "plan", "label": "Plan", "type": "enumeration", "fieldType": "select",
     "options": [{"label": "Free", "value": "free"}, {"label": "Pro", "value": "pro"}]},
    {"name": "signup_date", "label": "Signup date", "type": "date", "fieldType": "date"},
    {"name": "score", "label": "Score", "type": "number", "fieldType": "number"},
]


def fast_delivery(timeout: float) -> dict[str, Any]:
    return {
        "batch_size": 100,
        "linger": 0,
        "concurrency": 2,
        "timeout": timeout,
        "initial_backoff": 0.02,
        "max_backoff": 0.2,
        "pause_probe": 0.2,
    }


@attrs.frozen
class Scenario:
    """One fault: what the far side does, and what the router must honour."""

    #: emulator-format faults (without a path: the HubSpot test applies each to the contacts and the events API)
    faults: tuple[dict[str, Any], ...]
    #: delivery.timeout (per attempt)
    timeout: float = 5.0
    #: hubspot.timeout (per HTTP request; None: the default 20 s, so delivery.timeout cuts a send off)
    request_timeout: float | None = None
    #: everything fails until the router retried OUTAGE_FAILURES times, then the faults are cleared
    outage: bool = False
    #: the far side's "not before": the failed events may not arrive earlier than this after the fault
    not_before: float = 0.0
    #: the fault answers with this status (None: a latency or a reset)
    status: int | None = None
    #: (first event sends, rate, seconds): HubSpot takes the request but answers this late (see LateAnswers)
    late: tuple[int, float, float] | None = None


HUBSPOT_SCENARIOS = [
    pytest.param(Scenario(({"status": 503, "rate": 0.3, "count": ENDLESS},), status=503), id="5xx-30pct"),
    pytest.param(Scenario(({"latency": 0.5, "rate": 0.25, "count": ENDLESS},), timeout=0.3), id="slow-past-timeout"),
    # HubSpot took the request, its answer came after the timeout: the occurrences are resent and meet
    # their uuids. Per-request timeout 0.2 s within the attempt's 0.3 s, the defaults' 20 s within 30 s
    # compressed: a late answer fails that request, and what the send decided before it stays decided.
    pytest.param(Scenario((), timeout=0.3, request_timeout=0.2, late=(2, 0.15, 0.5)), id="answer-lost-past-timeout"),
    # the same where only delivery.timeout cuts the send off (which drops what the send had decided)
    pytest.param(Scenario((), timeout=0.3, late=(2, 0.0, 0.5)), id="answer-lost-past-send-timeout"),
    pytest.param(Scenario(({"reset": True, "rate": 0.3, "count": ENDLESS},)), id="connection-reset"),
    pytest.param(Scenario(({"status": 429, "count": 8},), status=429), id="429-storm"),
    pytest.param(Scenario(({"status": 423, "count": 1},), status=423, not_before=2.0), id="423-locked"),
    pytest.param(Scenario(({"status": 477, "count": 2, "retry_after": 0.5},), status=477, not_before=0.5),
                 id="477-retry-after"),
    pytest.param(Scenario(({"status": 503},), status=503, outage=True), id="outage"),
]

WEBHOOK_SCENARIOS = [
    pytest.param(Scenario(({"status": [500, 502, 503, 504], "rate": 0.3, "count": ENDLESS},)), id="5xx-30pct"),
    pytest.param(Scenario(({"latency": 0.5, "rate": 0.25, "count": ENDLESS},), timeout=0.3), id="slow-past-timeout"),
    pytest.param(Scenario(({"reset": True, "rate": 0.3, "count": ENDLESS},)), id="connection-reset"),
    pytest.param(Scenario(({"status": 429, "count": 12},), status=429), id="429-storm"),
    pytest.param(Scenario(({"status": 423, "count": 3},), status=423), id="423-locked"),
    # Retry-After in whole seconds: HTTP's delay-seconds has no fraction
    pytest.param(Scenario(({"status": 477, "count": 2, "retry_after": 1},), status=477, not_before=1.0),
                 id="477-retry-after"),
    pytest.param(Scenario(({"status": 503},), status=503, outage=True), id="outage"),
]


# -- shared ---------------------------------------------------------------------------------------


async def post_in_chunks(router: RunningRouter, events: list[dict[str, Any]], size: int = 60) -> None:
    for start in range(0, len(events), size):
        status, body = await router.post(f"/api/v1/s2s/events?token={SERVER}", events[start : start + size])
        assert status == 200, body


async def settled(router: RunningRouter, name: str, timeout: float = 45) -> None:
    """Until nothing of the destination is left in the queue (delivered or dead-lettered), retries included."""

    async def queue_empty() -> bool:
        await router.drain()
        return router.router.queue.depth(name) == 0

    await poll_until(queue_empty, timeout)


async def wait_started(router: RunningRouter, name: str) -> None:
    async def running() -> bool:
        status, body = await router.get("/api/v1/destinations", headers={"Authorization": f"Bearer {ADMIN}"})
        return status == 200 and body["destinations"][name]["state"] == "running"

    await poll_until(running, 20)


async def dead_letters(router: RunningRouter, name: str) -> dict[str, str]:
    """{event id: reason} of the destination's dead letters."""
    letters = await router.router.queue.dead_letters(name, limit=10_000)
    by_id = {str(orjson.loads(dl.payload)["eventn_ctx_event_id"]): dl.reason for dl in letters}
    assert len(by_id) == len(letters), "an event was dead-lettered twice"
    return by_id


async def assert_counts(router: RunningRouter, name: str, *, delivered: int, rejected: int) -> None:
    failed = {reason: await router.metric("router_events_failed_total", destination=name, reason=reason)
              for reason in ("rejected", "retries_exhausted")}
    assert failed == {"rejected": rejected, "retries_exhausted": 0}
    assert await router.metric("router_events_delivered_total", destination=name) == delivered
    assert await router.metric("router_events_retried_total", destination=name) > 0, "no fault was retried"


def hits(faults: list[dict[str, Any]], remaining: list[int | None]) -> int:
    """How often the faults struck, from what is left of their counts."""
    return sum(f["count"] - (left or 0) for f, left in zip(faults, remaining, strict=True) if f.get("count"))


# -- HubSpot --------------------------------------------------------------------------------------


class LateAnswers:
    """What the emulator's ``latency`` fault cannot do (it waits before reading the request, so a request
    whose sender gave up is never taken): let HubSpot take the request, then hold its answer back past
    the router's timeout -- the write was made, the answer is lost. It strikes the first ``sends``
    event sends HubSpot took (so resent occurrences certainly meet their uuids again) and a seeded
    ``rate`` share of every other API request."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.rate = 0.0
        self.sends = 0
        self.latency = 0.0
        self.hits = 0
        #: event sends HubSpot took whose answer was lost
        self.lost_sends = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        if not request.path.startswith((CONTACTS_PREFIX, EVENTS_PREFIX)) or not self.latency:
            return response
        taken_send = request.path == SEND and response.status == 204
        if (taken_send and self.sends > 0) or self.random.random() < self.rate:
            if taken_send:
                self.sends = max(0, self.sends - 1)
                self.lost_sends += 1
            self.hits += 1
            await asyncio.sleep(self.latency)
        return response


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[Emulator, str, LateAnswers]]:
    # seeded: which requests a rate fault hits is the emulator's seeded draw; the 10 s window is
    # compressed to 0.2 s on both sides
    hubspot = Emulator(TOKEN, HUB_ID, properties=PROPERTIES, rate_limit=100, rate_window=0.2, seed=20260120)
    late = LateAnswers(seed=20260121)
    # what plugins.hubspot.emulator.serve does, with the late answers outside the emulator's own middleware
    app = hubspot.app()
    app.middlewares.insert(0, late.middleware)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield hubspot, f"http://127.0.0.1:{runner.addresses[0][1]}", late
    hubspot.set_faults([])  # a latency fault would hold the cleanup up
    late.latency = 0.0
    await runner.cleanup()


def hubspot_config(tmp_path: Any, url: str, scenario: Scenario) -> str:
    request_timeout = {"timeout": scenario.request_timeout} if scenario.request_timeout else {}
    config = {
        "server": {"listen": "127.0.0.1:0", "admin_token": ADMIN, "shutdown_grace": "0.5s"},
        "storage": {"path": str(tmp_path / "data")},
        "api_keys": [{"id": "web", "client_secret": CLIENT, "server_secret": SERVER}],
        "destinations": {
            "hs": {
                "type": "hubspot",
                "hubspot": {
                    "access_token": TOKEN,
                    "hub_id": HUB_ID,
                    "api_base": url,
                    "track_base": url,
                    "contacts_api": "v3",
                    "events_api": "v3",
                    "rate_limit": 100,
                    "rate_window": "200ms",
                    # more, smaller requests: more of them for the faults to hit
                    "contacts_batch_size": 25,
                    "events_batch_size": 50,
                    **request_timeout,
                },
                "delivery": fast_delivery(scenario.timeout),
            }
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


def email(i: int) -> str:
    return f"user{i}@example.com"


#: events HubSpot rejects by design: (event, words of the dead letter's reason)
REJECTED: dict[str, tuple[dict[str, Any], str]] = {
    "bad-identify-1": ({"event_type": "user_identify", "user": {"email": "not-an-email", "firstname": "X"}},
                       "Email address not-an-email is invalid"),
    "bad-identify-2": ({"event_type": "user_identify", "user": {"email": "two@@example.com"}},
                       "Email address two@@example.com is invalid"),
    "bad-track-1": ({"event_type": "purchase", "user": {"email": "bad@"}, "revenue": 1},
                    "Email address bad@ is invalid"),
    "bad-track-2": ({"event_type": "purchase", "user": {"email": "nobody@localhost"}},
                    "Email address nobody@localhost is invalid"),
    "bad-track-3": ({"event_type": "!!!", "user": {"email": email(1)}}, "cannot be a HubSpot event name"),
}


def hubspot_workload() -> list[dict[str, Any]]:
    """N identifies with distinct emails and N v3 events, interleaved; the rejected ones spread among
    them; plus identifies the plugin converts or trims rather than having HubSpot reject them."""
    events: list[dict[str, Any]] = []
    for i in range(N):
        events.append({
            "event_type": "user_identify", "event_id": f"identify-{i}",
            "user": {"email": email(i), "firstname": f"First{i}", "plan": "Pro" if i % 2 else "free",
                     "score": i, "signup_date": "2026-01-20T21:14:16Z"},  # a time of day: sent as its date
        })
        events.append({
            "event_type": "purchase" if i % 3 else "Plan Upgraded", "event_id": f"track-{i}",
            "user": {"email": email(i)}, "revenue": i, "sku": f"sku-{i}",
        })
    for n, (event_id, (event, _)) in enumerate(REJECTED.items()):
        events.insert(97 * n + 13, {**event, "event_id": event_id})
    # a value that cannot be a number is left out by the plugin, not refused by HubSpot: delivered
    events.insert(301, {"event_type": "user_identify", "event_id": "odd-score",
                        "user": {"email": "odd@example.com", "firstname": "Odd", "score": "not a number"}})
    return events


@pytest.mark.parametrize("scenario", HUBSPOT_SCENARIOS)
async def test_hubspot_delivers_everything_once_through_the_fault(emulator, start_router, tmp_path, scenario):
    hubspot, url, late = emulator
    router = await start_router(hubspot_config(tmp_path, url, scenario))
    await wait_started(router, "hs")  # the property catalog is loaded before the trouble starts
    injected = [{**fault, "path": path} for path in (CONTACTS_PREFIX, EVENTS_PREFIX) for fault in scenario.faults]
    hubspot.set_faults(injected)
    faults = hubspot.faults
    if scenario.late:
        late.sends, late.rate, late.latency = scenario.late
    await post_in_chunks(router, hubspot_workload())

    if scenario.outage:
        async def outage_long_enough() -> bool:
            return sum(r["status"] == 503 for r in hubspot.requests) >= OUTAGE_FAILURES

        await poll_until(outage_long_enough, 30)
        assert hubspot.contacts == {} and hubspot.events == [], "something got through the outage"
        hubspot.set_faults([])
        recovered = time.monotonic()
        await settled(router, "hs")
        assert time.monotonic() - recovered < RECOVERY_SECONDS, "delivery did not resume promptly after the outage"
    else:
        await settled(router, "hs")
        remaining = [f.count for f in faults]
        assert hits(injected, remaining) + late.hits > 0, "the fault never struck"
        if scenario.faults and scenario.faults[0].get("count") != ENDLESS:  # a storm: every faulty answer was met
            assert remaining == [0, 0], remaining
        if scenario.late:  # occurrences HubSpot already had were sent again
            assert late.lost_sends >= scenario.late[0], late.lost_sends

    # every identify is a contact with its converted properties; the rejected ones are not
    for i in range(N):
        contact = hubspot.contacts.get(email(i))
        assert contact is not None, f"{email(i)} was not delivered"
        properties = contact["properties"]
        assert (properties.get("firstname"), properties.get("plan"), properties.get("score"),
                properties.get("signup_date")) == (f"First{i}", "pro" if i % 2 else "free", str(i), "2026-01-20")
    assert hubspot.contacts["odd@example.com"]["properties"].get("firstname") == "Odd"
    assert "score" not in hubspot.contacts["odd@example.com"]["properties"]
    assert not {"not-an-email", "two@@example.com", "bad@", "nobody@localhost"} & set(hubspot.contacts)

    # every v3 event once: no uuid twice, none missing, none foreign
    uuids = Counter(e["uuid"] for e in hubspot.events)
    twice = {u: c for u, c in uuids.items() if c > 1}
    assert twice == {}, f"delivered more than once to HubSpot: {twice}"
    wanted = {occurrence_uuid("web", f"track-{i}"): i for i in range(N)}
    missing, foreign = set(wanted) - set(uuids), set(uuids) - set(wanted)
    assert (len(missing), len(foreign)) == (0, 0), "v3 events missing, foreign"
    for event in hubspot.events:
        i = wanted[event["uuid"]]
        name = "purchase" if i % 3 else "plan_upgraded"
        assert (event["eventName"], event["email"], event["properties"]) == (
            f"pe{HUB_ID}_{name}", email(i), {"revenue": str(i), "sku": f"sku-{i}"})

    # dead letters: exactly what HubSpot rejects, each with its reason
    letters = await dead_letters(router, "hs")
    assert set(letters) == set(REJECTED), letters
    for event_id, (_, words) in REJECTED.items():
        assert words in letters[event_id], (event_id, letters[event_id])
    await assert_counts(router, "hs", delivered=2 * N + 1, rejected=len(REJECTED))

    api = [r for r in hubspot.requests if r["path"].startswith((CONTACTS_PREFIX, EVENTS_PREFIX))]
    if scenario.not_before:
        # the refused events were not sent again before HubSpot's "not before": what came last came after it
        first_fault = min(r["time"] for r in api if r["status"] == scenario.status)
        last_ok = max(r["time"] for r in api if 200 <= r["status"] < 300)
        assert last_ok - first_fault >= scenario.not_before, (first_fault, last_ok)
    if scenario.status == 429:
        # each 429 stops every request of the destination for HubSpot's window (0.2 s here): the storm is
        # ridden out, not hammered (at most the 2 concurrent sends' requests in flight meet each window)
        storm = sorted(r["time"] for r in api if r["status"] == 429)
        assert storm[-1] - storm[0] >= 0.2 * (len(storm) / 2 - 1) * 0.9, storm


# -- webhook --------------------------------------------------------------------------------------


class FaultyReceiver:
    """A webhook receiver on loopback port 0 with the emulator's faults, seeded: per request, each fault
    in turn strikes with its ``rate`` while its ``count`` lasts -- after ``latency`` seconds (the
    request is still taken: an answer that came too late), by resetting the connection, or by
    answering ``status`` (a list: one at random) with ``Retry-After: retry_after``."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.faults: list[dict[str, Any]] = []
        #: {"time", "ids", "status"} per request; status "reset" for a reset
        self.requests: list[dict[str, Any]] = []
        self.ids: list[str] = []
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()  # the seeded draws in arrival order

    def set_faults(self, faults: list[dict[str, Any]]) -> None:
        self.faults = [dict(f) for f in faults]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        data = orjson.loads(body)
        ids = [str(e["eventn_ctx_event_id"]) for e in (data if isinstance(data, list) else [data])]
        record: dict[str, Any] = {"time": time.time(), "ids": ids, "status": 0}
        self.requests.append(record)
        async with self._lock:
            struck = [f for f in self.faults
                      if (f.get("count") is None or f["count"] > 0) and self.random.random() < f.get("rate", 1.0)]
            for fault in struck:
                if fault.get("count") is not None:
                    fault["count"] -= 1
            status = None
            for fault in struck:
                if isinstance(fault.get("status"), list):
                    status = self.random.choice(fault["status"])
                    break
        for fault in struck:
            if fault.get("latency"):
                await asyncio.sleep(fault["latency"])
            if fault.get("reset"):
                record["status"] = "reset"
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)
            if fault.get("status") is not None:
                record["status"] = status if status is not None else fault["status"]
                headers = {"Retry-After": str(fault["retry_after"])} if fault.get("retry_after") else None
                return web.json_response({"error": "failing on purpose"}, status=record["status"], headers=headers)
        self.ids.extend(ids)
        record["status"] = 200
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"

    async def stop(self) -> None:
        self.faults = []
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def faulty() -> AsyncIterator[FaultyReceiver]:
    receiver = FaultyReceiver(seed=20260120)
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.mark.parametrize("scenario", WEBHOOK_SCENARIOS)
async def test_webhook_delivers_everything_through_the_fault(faulty, start_router, tmp_path, scenario):
    config = router_config(tmp_path, faulty.url, webhook={"batch_size": 10}, delivery=fast_delivery(scenario.timeout))
    router = await start_router(config)
    await wait_started(router, "hook")
    faulty.set_faults(list(scenario.faults))
    wanted = {f"hook-{i}" for i in range(N)}
    await post_in_chunks(router, [{"event_type": "page" if i % 2 else "click", "event_id": f"hook-{i}",
                                   "user": {"anonymous_id": f"a{i}"}} for i in range(N)])

    if scenario.outage:
        async def outage_long_enough() -> bool:
            return sum(r["status"] == 503 for r in faulty.requests) >= OUTAGE_FAILURES

        await poll_until(outage_long_enough, 30)
        assert faulty.ids == [], "something got through the outage"
        faulty.set_faults([])
        recovered = time.monotonic()
        await settled(router, "hook")
        assert time.monotonic() - recovered < RECOVERY_SECONDS, "delivery did not resume promptly after the outage"
    else:
        await settled(router, "hook")
        remaining = [f["count"] for f in faulty.faults]
        assert hits(list(scenario.faults), remaining) > 0, "the fault never struck"
        if scenario.faults[0].get("count") != ENDLESS:  # a storm: every faulty answer was met
            assert remaining == [0], remaining

    # dead letters: none (the receiver refuses nothing for good)
    letters = await dead_letters(router, "hook")
    assert letters == {}, letters
    received = Counter(faulty.ids)
    assert set(received) == wanted, (len(wanted - set(received)), "missing")
    if scenario.timeout >= 1:
        # only an answer that came too late can make the router send a delivered event again
        assert {i: c for i, c in received.items() if c > 1} == {}
    await assert_counts(router, "hook", delivered=N, rejected=0)

    if scenario.not_before:
        # Retry-After honoured: no event of a refused request came again before it
        for refused in (r for r in faulty.requests if r["status"] == scenario.status):
            again = [r["time"] for r in faulty.requests
                     if r["time"] > refused["time"] and set(r["ids"]) & set(refused["ids"])]
            assert again and min(again) >= refused["time"] + scenario.not_before - 0.01, (refused, again)
