"""Every event but identifies -> HubSpot: the legacy tracker (default) or custom behavioral events (v3).

legacy: ``GET {track_base}/v1/event?_a=<hub_id>&_n=<event_type>&email=..&_m=<revenue>&<contact props>``,
one request per event. The tracker is not under the API's rate limits, so in this mode the sender
is not rate limited by the core (``rate_limited = False``); only API calls (a catalog refresh)
take tokens.

v3: ``POST /events/v3/send/batch`` with up to 500 occurrences named ``pe<hub_id>_<event_type>``, a
``uuid`` derived from the api key and the event id (so a resent event is refused as a duplicate,
never counted twice: a duplicate answer naming that uuid means it was delivered). A missing event
definition is created once, and again when HubSpot says it is missing (400 naming it, or 404).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import prometheus_client as prom

from plugins.hubspot.client import HubSpotClient, HubSpotError, RequestBudget
from plugins.hubspot.filter import email_of, event_time, user_properties
from plugins.hubspot.outcomes import OUT_OF_TIME, BatchPlan, SendClock, keep_decided
from plugins.hubspot.properties import (
    INVALID_VALUE,
    InvalidValue,
    PropertyCatalog,
    normalise_name,
    plain_number,
)
from router.destination import (
    Delivered,
    Delivery,
    Outcome,
    Rejected,
    Retry,
    RetryBatch,
    Sender,
    Skipped,
    describe_error,
)

log = logging.getLogger(__name__)

SEND_PATH = "/events/v3/send/batch"
DEFINITIONS_PATH = "/events/v3/event-definitions"
#: events per send() in legacy mode, and tracker requests in flight at once within it
LEGACY_MAX_BATCH = 50
LEGACY_CONCURRENCY = 8
#: HubSpot's rules for event names and occurrence properties
MAX_NAME = 50
MAX_PROPERTIES = 50
MAX_VALUE = 50
MAX_URL_VALUE = 200
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
#: occurrence uuids are derived from "<api key id>:<event id>" in this namespace, stably
_UUID_NAMESPACE = uuid.UUID("6f0d3c52-5d2a-4c55-9d0e-7a1f4d1b8a61")
_INPUT_INDEX = re.compile(r"inputs\[(\d+)\]")

#: Jitsu's context and the router's enrichment: not event properties
CONTEXT_FIELDS = frozenset({
    "event_id", "eventn_ctx", "eventn_ctx_event_id", "user", "ids", "utc_time", "local_tz_offset", "referer",
    "url", "page_title", "doc_path", "doc_host", "doc_search", "screen_resolution", "vp_size", "user_agent",
    "user_language", "doc_encoding", "utm", "click_id", "api_key", "src", "event_type", "source_ip",
    "revenue", "conversion", "anonymous_id",
})


class InvalidEvent(ValueError):
    """An event HubSpot can never take (e.g. an event_type without letters or digits)."""


def event_name(event_type: Any) -> str:
    """The definition name of an event type: normalised, starting with a letter, at most 50 characters."""
    name = normalise_name(event_type) if isinstance(event_type, str) else ""
    if not name:
        raise InvalidEvent(f"event_type {event_type!r} cannot be a HubSpot event name")
    if not name[0].isalpha():
        name = f"e_{name}"
    return name[:MAX_NAME].rstrip("_")


def revenue_of(event: Mapping[str, Any]) -> str | None:
    """``/revenue``, else ``/conversion/revenue``, as plain decimal text; None when absent or not a number."""
    value = event.get("revenue")
    if value is None and isinstance(event.get("conversion"), dict):
        value = event["conversion"].get("revenue")
    if value is None:
        return None
    return plain_number(value)


def occurrence_uuid(api_key: str, event_id: str) -> str | None:
    """HubSpot's idempotency key for an event: a UUID derived from ``<api key id>:<event id>``, the
    same pair the router's ingest dedups on, so two keys' events with one id stay two occurrences
    and a resent event gets the same uuid."""
    if not event_id:
        return None
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{api_key}:{event_id}"))


def iso_ms(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventSender(Sender):
    """Sends non-identify events to HubSpot, one outcome per event."""

    name = "events"

    def __init__(
        self,
        client: HubSpotClient,
        catalog: PropertyCatalog,
        *,
        hub_id: str,
        api: str,
        batch_size: int,
        destination: str,
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.hub_id = hub_id
        self.api = api
        self.destination = destination
        self.max_batch = LEGACY_MAX_BATCH if api == "legacy" else batch_size
        self.rate_limited = api != "legacy"
        self.dropped: prom.Counter = catalog.dropped
        #: definition names known to exist in the account
        self.defined: set[str] = set()
        self._defining: dict[str, asyncio.Lock] = {}

    async def send(self, batch: Sequence[Delivery]) -> Sequence[Outcome]:
        if self.api == "legacy":
            return await self._send_legacy(batch)
        return await self._send_v3(batch)

    def _drop(self, name: str, reason: str) -> None:
        self.dropped.labels(self.destination, reason).inc()
        log.debug("destination %s: event property %r left out (%s)", self.destination, name, reason)

    # -- legacy tracker -------------------------------------------------------------------

    async def _send_legacy(self, batch: Sequence[Delivery]) -> Sequence[Outcome]:
        await self.catalog.ensure_fresh(RequestBudget(self.client.limiter, prepaid=0))
        slots = asyncio.Semaphore(LEGACY_CONCURRENCY)
        clock = SendClock()
        loop = asyncio.get_running_loop()

        async def one(delivery: Delivery) -> Outcome:
            async with slots:
                # the first wave always goes (nothing is timed yet), so every send makes progress
                if clock.short():
                    return Retry(OUT_OF_TIME)
                started = loop.time()
                try:
                    return await self._track(delivery)
                finally:
                    clock.took(loop.time() - started)

        outcomes = await asyncio.gather(*(one(d) for d in batch))
        if outcomes and all(isinstance(o, Retry) for o in outcomes):
            # the tracker failed every event: a whole-batch failure, so the core holds the destination back
            first = outcomes[0]
            assert isinstance(first, Retry)
            raise RetryBatch(first.reason, first.not_before)
        return outcomes

    def _revenue(self, event: Mapping[str, Any]) -> str | None:
        """``/revenue``, else ``/conversion/revenue``, as HubSpot number text; a bad value is dropped."""
        try:
            return revenue_of(event)
        except InvalidValue:
            self._drop("revenue", INVALID_VALUE)
            return None

    def tracker_query(self, event: Mapping[str, Any], email: str) -> str:
        """The tracker's query string, encoded (everything but ``@ - _ .`` in the email)."""
        pairs: list[tuple[str, str]] = [("_a", self.hub_id), ("_n", str(event.get("event_type") or "")), ("email", email)]
        revenue = self._revenue(event)
        if revenue is not None:
            pairs.append(("_m", revenue))
        properties = self.catalog.contact_properties(user_properties(event))
        pairs.extend((name, value) for name, value in properties.items() if name != "email")
        return "&".join(f"{quote(k, safe='')}={quote(v, safe='@-_.')}" for k, v in pairs)

    async def _track(self, delivery: Delivery) -> Outcome:
        event = delivery.event
        email = email_of(event)
        if email is None:
            return Skipped("no email")
        if not event.get("event_type"):
            return Rejected("event has no event_type to name the HubSpot event")
        try:
            status = await self.client.track(self.tracker_query(event, email))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return Retry(describe_error(exc))
        if 200 <= status < 300:
            return Delivered()
        if status in (408, 429) or status >= 500:
            return Retry(f"HubSpot tracker answered {status}")
        return Rejected(f"HubSpot tracker answered {status}")

    # -- v3 custom behavioral events ------------------------------------------------------

    def occurrence(self, delivery: Delivery) -> tuple[str, dict[str, Any]]:
        """(definition name, occurrence) of one event; raises InvalidEvent."""
        event = delivery.event
        email = email_of(event)
        if email is None:
            raise InvalidEvent("no email")
        name = event_name(event.get("event_type"))
        occurrence: dict[str, Any] = {"eventName": f"pe{self.hub_id}_{name}", "email": email}
        moment = event_time(event)
        if moment is not None:
            occurrence["occurredAt"] = iso_ms(moment)
        key = occurrence_uuid(str(event.get("api_key") or ""), delivery.event_id)
        if key is not None:
            occurrence["uuid"] = key
        properties = self.event_properties(event)
        if properties:
            occurrence["properties"] = properties
        return name, occurrence

    def event_properties(self, event: Mapping[str, Any]) -> dict[str, str]:
        """Revenue plus the event's own top-level values, under HubSpot's name and value rules."""
        properties: dict[str, str] = {}
        revenue = self._revenue(event)
        if revenue is not None:
            properties["revenue"] = revenue
        for key, value in event.items():
            if key in CONTEXT_FIELDS or key.startswith("_") or value is None:
                continue
            name = normalise_name(key)
            if not _NAME.match(name) or len(name) > MAX_NAME:
                self._drop(name or key, "invalid_name")
                continue
            if isinstance(value, dict | list):
                self._drop(name, "not_scalar")
                continue
            if name in properties:
                continue
            if len(properties) >= MAX_PROPERTIES:
                self._drop(name, "too_many")
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int | float):
                try:
                    text = plain_number(value)
                except InvalidValue:
                    self._drop(name, INVALID_VALUE)
                    continue
            else:
                text = str(value)
            limit = MAX_URL_VALUE if text.startswith(("http://", "https://")) else MAX_VALUE
            if len(text) > limit:
                log.debug("destination %s: event property %r truncated to %d characters", self.destination, name, limit)
                text = text[:limit]
            properties[name] = text
        return properties

    async def _define(self, name: str, label: str, sample: Mapping[str, str], budget: RequestBudget) -> None:
        """Create the event definition (409 "already exists" is fine) and remember it."""
        definitions = [{"name": "revenue", "label": "Revenue", "type": "number"}]
        definitions += [{"name": p, "label": p, "type": "string"} for p in sample if p != "revenue"]
        body = {"name": name, "label": label[:100] or name, "primaryObject": "CONTACT", "propertyDefinitions": definitions}
        try:
            await self.client.call("POST", DEFINITIONS_PATH, operation="event definition", budget=budget, body=body)
            log.info("destination %s: created HubSpot event definition pe%s_%s", self.destination, self.hub_id, name)
        except HubSpotError as err:
            if err.status != 409:
                raise
        self.defined.add(name)

    async def _send_v3(self, batch: Sequence[Delivery]) -> Sequence[Outcome]:
        budget = RequestBudget(self.client.limiter)
        results: dict[int, Outcome] = {}
        occurrences: dict[int, tuple[str, dict[str, Any]]] = {}
        labels: dict[str, str] = {}
        for position, delivery in enumerate(batch):
            try:
                occurrences[position] = self.occurrence(delivery)
            except InvalidEvent as exc:
                results[position] = Skipped("no email") if str(exc) == "no email" else Rejected(str(exc))
                continue
            labels.setdefault(occurrences[position][0], str(delivery.event.get("event_type")))
        await keep_decided(self._send_occurrences(occurrences, labels, budget, results), results, occurrences)
        return [results.get(i, Retry("not sent")) for i in range(len(batch))]

    async def _send_occurrences(
        self,
        occurrences: dict[int, tuple[str, dict[str, Any]]],
        labels: dict[str, str],
        budget: RequestBudget,
        results: dict[int, Outcome],
    ) -> None:
        plan = BatchPlan(list(occurrences), results, what="events", destination=self.destination)

        async def define(name: str) -> None:
            plan.count()
            sample = next(o.get("properties", {}) for n, o in occurrences.values() if n == name)
            try:
                await self._define(name, labels.get(name, name), sample, budget)
            except HubSpotError as err:
                for position, (n, _) in occurrences.items():
                    if n == name:
                        results[position] = Rejected(f"event definition {name}: {err.message}", response=err.text)

        for name in dict.fromkeys(n for n, _ in occurrences.values()):
            # one creation per name: batches in flight side by side wait for it (not a 409 each)
            async with self._defining.setdefault(name, asyncio.Lock()):
                if name not in self.defined:
                    await define(name)
        redefined: set[str] = set()
        while (group := plan.next()) is not None:
            inputs = [occurrences[p][1] for p in group]
            try:
                await self.client.call("POST", SEND_PATH, operation="event send", budget=budget, body={"inputs": inputs})
            except HubSpotError as err:
                missing = [n for n in _missing_definitions(err, group, occurrences) if n not in redefined]
                if missing:
                    # deleted in HubSpot since we created or saw it: create it again and resend
                    for name in missing:
                        redefined.add(name)
                        self.defined.discard(name)
                        await define(name)
                    plan.resend(group)
                    continue
                named = self._named_input(err, group)
                if named is None:
                    plan.refused(group, err)
                    continue
                if _names_duplicate(err, occurrences[named][1].get("uuid")):
                    results[named] = Delivered()  # HubSpot already has this occurrence
                else:
                    results[named] = Rejected(err.message, response=err.text)
                plan.resend(group)
                continue
            for p in group:
                results[p] = Delivered()

    @staticmethod
    def _named_input(err: HubSpotError, group: list[int]) -> int | None:
        """The batch position of the input an error names (``inputs[3]: ...``), if any."""
        match = _INPUT_INDEX.search(err.message)
        if match and int(match.group(1)) < len(group):
            return group[int(match.group(1))]
        if len(group) == 1 and (err.context.get("uuid") or err.context.get("propertyName")):
            return group[0]
        return None


def _missing_definitions(
    err: HubSpotError, group: list[int], occurrences: Mapping[int, tuple[str, Mapping[str, Any]]]
) -> list[str]:
    """Definition names HubSpot says are missing: those a 400 names in ``context.eventName``, or on
    a 404 (naming nothing) every definition the group uses."""
    undefined = err.context.get("eventName")
    if isinstance(undefined, list) and undefined:
        full = {str(n) for n in undefined}
        return list(dict.fromkeys(occurrences[p][0] for p in group if occurrences[p][1]["eventName"] in full))
    if err.status == 404:
        return list(dict.fromkeys(occurrences[p][0] for p in group))
    return []


def _names_duplicate(err: HubSpotError, key: str | None) -> bool:
    """Whether HubSpot refused the occurrence because it already has its uuid ``key``: the error
    names that uuid in ``context.uuid``, or says "duplicate" and names it in the message."""
    if not key:
        return False
    named = err.context.get("uuid")
    if isinstance(named, str):
        named = [named]
    if isinstance(named, list) and key in (str(n) for n in named):
        return True
    return key in err.message and "duplicate" in err.message.lower()
