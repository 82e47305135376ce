"""A local HubSpot for tests and demos: contacts, properties, custom events, the tracker, rate limits, faults."""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import logging
import random
import re
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeGuard

import attrs
import orjson
import yaml
from aiohttp import web

from plugins.hubspot.standard_properties import STANDARD_CONTACT_PROPERTIES

logger = logging.getLogger(__name__)

MAX_UPSERT_INPUTS: Final = 100
MAX_EVENT_BATCH: Final = 500
MAX_STRING_LENGTH: Final = 65_536
MAX_EVENT_PROPERTIES: Final = 50
MAX_EVENT_PROPERTY_NAME: Final = 50
MAX_EVENT_VALUE: Final = 50
MAX_EVENT_URL_VALUE: Final = 200
DAY_SECONDS: Final = 86_400.0

# Routes that need a token and count against the rate limits; everything else is the tracker
# (no auth, no limits) or the emulator's own /_emulator/ control surface.
API_PREFIXES: Final = ("/crm/", "/contacts/", "/events/", "/properties/")
CONTROL_PREFIX: Final = "/_emulator/"

AUTH_MESSAGE: Final = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find "
    "more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
HAPIKEY_MESSAGE: Final = (
    "Authentication credentials not found. API keys (hapikey) were sunset on 2022-11-30; use a private "
    "app access token as 'Authorization: Bearer <token>'. See "
    "https://developers.hubspot.com/docs/api/migrate-an-api-key-integration-to-a-private-app"
)
TEN_SECONDLY: Final = "TEN_SECONDLY_ROLLING"
DAILY: Final = "DAILY"
RATE_MESSAGES: Final = {
    TEN_SECONDLY: "You have reached your ten_secondly_rolling limit.",
    DAILY: "You have reached your daily limit.",
}

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_EMAIL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$"
)
_EPOCH_MS = re.compile(r"^-?\d{1,15}$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_NUMBER = re.compile(r"^-?\d+(\.\d+)?$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*(ms|s|m|h)?\s*$")
_EVENT_TYPES: Final = frozenset({"string", "number", "enumeration", "datetime", "bool"})
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Category and message of the error envelope a fault with a bare status answers with.
_FAULT_ENVELOPES: Final[dict[int, tuple[str, str]]] = {
    400: ("VALIDATION_ERROR", "Invalid input"),
    401: ("INVALID_AUTHENTICATION", AUTH_MESSAGE),
    403: (
        "MISSING_SCOPES",
        "This app hasn't been granted all required scopes to make this call. Read more about required "
        "scopes here: https://developers.hubspot.com/scopes.",
    ),
    404: ("OBJECT_NOT_FOUND", "Resource not found"),
    409: ("CONFLICT", "Conflict"),
    423: (
        "LOCKED",
        "The record is locked while a high volume of writes to it is processed. Retry after at least 2 seconds.",
    ),
    477: (
        "MIGRATION_IN_PROGRESS",
        "This account is being migrated to another data center. Retry after the period in Retry-After.",
    ),
    500: ("INTERNAL_ERROR", "internal error"),
    502: ("SERVICE_UNAVAILABLE", "Bad gateway"),
    503: ("SERVICE_UNAVAILABLE", "Service unavailable"),
    504: ("SERVICE_UNAVAILABLE", "Gateway timeout"),
    521: ("SERVICE_UNAVAILABLE", "Web server is down"),
}
_FAULT_KEYS: Final = frozenset({"path", "status", "rate", "count", "latency", "reset", "retry_after", "body", "policy"})


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _now_iso() -> str:
    return _iso(dt.datetime.now(dt.UTC))


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    response = web.Response(body=orjson.dumps(data), status=status, headers=headers)
    response.headers["Content-Type"] = "application/json;charset=utf-8"
    return response


def _envelope(message: str, category: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
    }
    body.update(extra)
    return body


def _error(status: int, message: str, category: str = "VALIDATION_ERROR", **extra: Any) -> web.Response:
    return _json(_envelope(message, category, **extra), status=status)


def _rate_limited_body(policy: str) -> dict[str, Any]:
    return {
        "status": "error",
        "message": RATE_MESSAGES[policy],
        "errorType": "RATE_LIMIT",
        "correlationId": str(uuid.uuid4()),
        "policyName": policy,
    }


def is_valid_email(value: str) -> bool:
    """Whether HubSpot would take ``value`` as an email address (a pragmatic RFC 5322 subset)."""
    return len(value) <= 254 and _EMAIL.fullmatch(value) is not None


def _is_property_name(name: Any) -> TypeGuard[str]:
    """Event, event-property and definition names: lowercase snake_case starting with a letter, ≤ 50 chars."""
    return isinstance(name, str) and len(name) <= MAX_EVENT_PROPERTY_NAME and _NAME.fullmatch(name) is not None


def _is_read_only(definition: Mapping[str, Any]) -> bool:
    metadata = definition.get("modificationMetadata") or {}
    return bool(metadata.get("readOnlyValue")) or bool(definition.get("calculated"))


class _BadRequest(Exception):
    """A request body the endpoint cannot take; becomes a 400 error envelope."""

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _BadRequest(f"Invalid input JSON on line {exc.lineno}, column {exc.colno}: {exc.msg}") from None


def _normalize_property(definition: Mapping[str, Any]) -> dict[str, Any]:
    """A custom property definition with every field HubSpot returns filled in."""
    name = definition.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"property definition without a name: {definition!r}")
    metadata = {"archivable": True, "readOnlyDefinition": False, "readOnlyValue": False}
    metadata.update(definition.get("modificationMetadata") or {})
    full: dict[str, Any] = {
        "name": name,
        "label": name,
        "type": "string",
        "fieldType": "text",
        "description": "",
        "groupName": "contactinformation",
        "options": [],
        "displayOrder": -1,
        "calculated": False,
        "externalOptions": False,
        "hasUniqueValue": False,
        "hidden": False,
        "hubspotDefined": False,
        "formField": True,
    }
    full.update(definition)
    full["modificationMetadata"] = metadata
    full["options"] = [
        {"label": o.get("label", o.get("value")), "value": o.get("value"), "displayOrder": o.get("displayOrder", i),
         "hidden": bool(o.get("hidden", False))}
        for i, o in enumerate(full["options"] or [])
    ]
    return full


# ---------------------------------------------------------------------------------------------
# Property values
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class PropertyProblem:
    """Why one property value was refused, in HubSpot's validation-result shape."""

    name: str
    error: str
    message: str

    def result(self) -> dict[str, Any]:
        return {"isValid": False, "message": self.message, "error": self.error, "name": self.name}


def _check_date(name: str, value: str) -> tuple[str | None, PropertyProblem | None]:
    if _EPOCH_MS.fullmatch(value):
        millis = int(value)
        rest = millis % 86_400_000
        if rest:
            hours, minutes = rest // 3_600_000, rest // 60_000 % 60
            seconds, fraction = rest // 1000 % 60, rest % 1000
            return None, PropertyProblem(
                name, "INVALID_DATE", f"{value} is at {hours}:{minutes}:{seconds}.{fraction} UTC, not midnight!"
            )
        try:
            return (_EPOCH + dt.timedelta(milliseconds=millis)).date().isoformat(), None
        except OverflowError:
            pass
    elif _ISO_DATE.fullmatch(value):
        try:
            return dt.date.fromisoformat(value).isoformat(), None
        except ValueError:
            pass
    return None, PropertyProblem(
        name, "INVALID_DATE", f"{value} is not a valid date: expected epoch milliseconds at midnight UTC or YYYY-MM-DD"
    )


def _check_datetime(name: str, value: str) -> tuple[str | None, PropertyProblem | None]:
    try:
        if _EPOCH_MS.fullmatch(value):
            return _iso(_EPOCH + dt.timedelta(milliseconds=int(value))), None
        moment = dt.datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return _iso(moment), None
    except (ValueError, OverflowError):
        return None, PropertyProblem(
            name, "INVALID_DATE", f"{value} is not a valid datetime: expected epoch milliseconds or ISO 8601"
        )


def _check_enumeration(definition: Mapping[str, Any], value: str) -> PropertyProblem | None:
    if definition.get("externalOptions"):
        return None
    allowed = [str(o.get("value")) for o in definition.get("options") or []]
    # Checkboxes take several options joined with ";"; radio buttons and selects take exactly one.
    chosen = [part for part in value.split(";") if part] if definition.get("fieldType") == "checkbox" else [value]
    for choice in chosen:
        if choice not in allowed:
            return PropertyProblem(
                definition["name"],
                "INVALID_OPTION",
                f"{choice} was not one of the allowed options: [{', '.join(allowed)}]",
            )
    return None


def check_property_value(definition: Mapping[str, Any], value: str) -> tuple[str, PropertyProblem | None]:
    """Validate one string value against its definition; return the value as HubSpot stores it."""
    name = str(definition["name"])
    if value == "":
        return "", None
    if name == "email" and not is_valid_email(value):
        return value, PropertyProblem(name, "INVALID_EMAIL", f"Email address {value} is invalid")
    kind = definition.get("type")
    if kind == "date":
        stored, problem = _check_date(name, value)
        return stored or value, problem
    if kind == "datetime":
        stored, problem = _check_datetime(name, value)
        return stored or value, problem
    if kind == "number":
        if _NUMBER.fullmatch(value):
            return value, None
        if definition.get("numberDisplayHint") in {"currency", "decimal", "percentage"}:
            return value, PropertyProblem(name, "INVALID_DOUBLE", f"{value} was not a valid double.")
        return value, PropertyProblem(name, "INVALID_LONG", f"{value} was not a valid long.")
    if kind == "bool":
        if value in {"true", "false"}:
            return value, None
        message = f"{value} was not one of the allowed options: [true, false]"
        return value, PropertyProblem(name, "INVALID_OPTION", message)
    if kind == "enumeration":
        return value, _check_enumeration(definition, value)
    if len(value) > MAX_STRING_LENGTH:
        return value, PropertyProblem(
            name,
            "INVALID_STRING_LENGTH",
            f"Property \"{name}\" is {len(value)} characters long; the maximum is {MAX_STRING_LENGTH}",
        )
    return value, None


# ---------------------------------------------------------------------------------------------
# Rate limits and faults
# ---------------------------------------------------------------------------------------------


class RateLimiter:
    """HubSpot's per-app rolling window plus the per-account daily allowance."""

    def __init__(self, limit: int, window: float, daily_limit: int, clock: Callable[[], float]) -> None:
        self.limit = limit
        self.window = window
        self.daily_limit = daily_limit
        self._clock = clock
        self._recent: collections.deque[float] = collections.deque()
        self._day_started: float | None = None
        self._day_count = 0

    def reset(self) -> None:
        self._recent.clear()
        self._day_started = None
        self._day_count = 0

    def admit(self) -> tuple[str | None, dict[str, str]]:
        """Count one request: the policy it breaks (None when admitted) and the headers to send."""
        now = self._clock()
        while self._recent and self._recent[0] <= now - self.window:
            self._recent.popleft()
        if self._day_started is None or now - self._day_started >= DAY_SECONDS:
            self._day_started, self._day_count = now, 0
        policy: str | None = None
        if self._day_count >= self.daily_limit:
            policy = DAILY
        elif len(self._recent) >= self.limit:
            policy = TEN_SECONDLY
        else:
            self._recent.append(now)
            self._day_count += 1
        return policy, self.headers()

    def headers(self) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(self.window * 1000)),
            "X-HubSpot-RateLimit-Max": str(self.limit),
            "X-HubSpot-RateLimit-Remaining": str(max(0, self.limit - len(self._recent))),
            "X-HubSpot-RateLimit-Daily": str(self.daily_limit),
            "X-HubSpot-RateLimit-Daily-Remaining": str(max(0, self.daily_limit - self._day_count)),
        }


@attrs.define
class Fault:
    """One injected misbehaviour: which requests it hits, how often, and what it does to them."""

    path: str | None = None
    status: int | None = None
    rate: float = 1.0
    count: int | None = None
    latency: float = 0.0
    reset: bool = False
    retry_after: float | None = None
    body: Any = None
    policy: str = TEN_SECONDLY

    @classmethod
    def from_json(cls, raw: Any) -> Fault:
        if not isinstance(raw, dict):
            raise ValueError("each fault must be an object")
        unknown = sorted(set(raw) - _FAULT_KEYS)
        if unknown:
            raise ValueError(f"unknown fault fields {unknown}; known: {sorted(_FAULT_KEYS)}")
        path = raw.get("path")
        status = raw.get("status")
        rate = raw.get("rate", 1.0)
        count = raw.get("count")
        latency = raw.get("latency", 0.0)
        retry_after = raw.get("retry_after")
        policy = str(raw.get("policy", TEN_SECONDLY)).upper()
        if path is not None and not isinstance(path, str):
            raise ValueError("path must be a string")
        if status is not None and (not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599):
            raise ValueError("status must be an HTTP status code")
        if not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be a probability between 0 and 1")
        if count is not None and (not isinstance(count, int) or count < 0):
            raise ValueError("count must be a non-negative integer")
        if not isinstance(latency, int | float) or latency < 0:
            raise ValueError("latency must be a non-negative number of seconds")
        if retry_after is not None and (not isinstance(retry_after, int | float) or retry_after < 0):
            raise ValueError("retry_after must be a non-negative number of seconds")
        if policy not in RATE_MESSAGES:
            raise ValueError(f"policy must be one of {sorted(RATE_MESSAGES)}")
        fault = cls(
            path=path,
            status=status,
            rate=float(rate),
            count=count,
            latency=float(latency),
            reset=bool(raw.get("reset", False)),
            retry_after=None if retry_after is None else float(retry_after),
            body=raw.get("body"),
            policy=policy,
        )
        if fault.status is None and not fault.reset and fault.latency == 0:
            raise ValueError("a fault needs at least one of status, reset or latency")
        return fault

    def matches(self, path: str) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        return self.path is None or path.startswith(self.path)

    def response(self) -> web.Response:
        assert self.status is not None
        headers: dict[str, str] = {}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        elif self.status == 477:
            headers["Retry-After"] = "1"
        if self.body is not None:
            if isinstance(self.body, str):
                return web.Response(text=self.body, status=self.status, headers=headers)
            return _json(self.body, status=self.status, headers=headers)
        if self.status == 429:
            return _json(_rate_limited_body(self.policy), status=429, headers=headers)
        if self.status < 400:
            return web.Response(status=self.status, headers=headers)
        category, message = _FAULT_ENVELOPES.get(self.status, ("INTERNAL_ERROR", "internal error"))
        return _json(_envelope(message, category), status=self.status, headers=headers)


# ---------------------------------------------------------------------------------------------
# The emulator
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class _UpsertInput:
    index: int
    id: str
    properties: dict[str, str]


class Emulator:
    """All of one fake HubSpot account's state, and the aiohttp app that serves it."""

    def __init__(
        self,
        token: str,
        hub_id: str,
        *,
        properties: list[dict[str, Any]] | None = None,
        rate_limit: int = 100,
        rate_window: float = 10.0,
        daily_limit: int = 250_000,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        if not token:
            raise ValueError("token must not be empty")
        if not str(hub_id).isdigit():
            raise ValueError(f"hub_id must be the numeric portal id, got {hub_id!r}")
        if rate_limit < 1 or rate_window <= 0 or daily_limit < 1:
            raise ValueError("rate_limit, rate_window and daily_limit must be positive")
        self.token = token
        self.hub_id = str(hub_id)
        self.property_definitions: dict[str, dict[str, Any]] = {
            d["name"]: dict(d) for d in STANDARD_CONTACT_PROPERTIES
        }
        for definition in properties or []:
            full = _normalize_property(definition)
            self.property_definitions[full["name"]] = full
        self.limiter = RateLimiter(rate_limit, rate_window, daily_limit, clock)
        self.random = random.Random(seed)
        self.contacts: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.definitions: dict[str, dict[str, Any]] = {}
        self.faults: list[Fault] = []
        self._seen_uuids: set[str] = set()
        self._next_contact_id = 1
        self._next_definition_id = 1

    # -- state -----------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget every contact, event, request, event definition, fault and rate-limit count."""
        self.contacts.clear()
        self.events.clear()
        self.requests.clear()
        self.definitions.clear()
        self.faults.clear()
        self.limiter.reset()
        self._seen_uuids.clear()
        self._next_contact_id = 1
        self._next_definition_id = 1

    def set_faults(self, faults: Iterable[Mapping[str, Any]]) -> None:
        """Replace the injected faults (same JSON shape as POST /_emulator/faults); empty clears them."""
        self.faults = [Fault.from_json(dict(f)) for f in faults]

    def define_event(
        self, name: str, label: str | None = None, properties: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Create an event definition directly, as POST /events/v3/event-definitions would."""
        definition = self._new_definition(name, label or name, "CONTACT", properties or [], "")
        self.definitions[definition["fullyQualifiedName"]] = definition
        return definition

    def fully_qualified_name(self, name: str) -> str:
        return f"pe{self.hub_id}_{name}"

    def _new_definition(
        self, name: str, label: str, primary_object: str, properties: list[dict[str, Any]], description: str
    ) -> dict[str, Any]:
        number = self._next_definition_id
        self._next_definition_id += 1
        now = _now_iso()
        return {
            "id": str(number),
            "fullyQualifiedName": self.fully_qualified_name(name),
            "name": name,
            "labels": {"singular": label, "plural": None},
            "description": description,
            "primaryObject": primary_object,
            "primaryObjectId": "0-1",
            "objectTypeId": f"6-{number}",
            "trackingType": "MANUAL",
            "archived": False,
            "createdAt": now,
            "updatedAt": now,
            "properties": [
                {
                    "name": p["name"],
                    "label": p.get("label", p["name"]),
                    "type": p.get("type", "string"),
                    "description": p.get("description", ""),
                    "options": p.get("options", []),
                    "archived": False,
                }
                for p in properties
            ],
            "associations": [],
        }

    def _write_contact(self, email: str, properties: Mapping[str, str]) -> tuple[dict[str, Any], bool]:
        """Create or update the contact with ``email``; an empty value clears the property."""
        key = email.lower()
        now = _now_iso()
        contact = self.contacts.get(key)
        is_new = contact is None
        if contact is None:
            contact_id = str(self._next_contact_id)
            self._next_contact_id += 1
            contact = {
                "id": contact_id,
                "properties": {"email": key, "hs_object_id": contact_id, "createdate": now},
                "createdAt": now,
                "updatedAt": now,
            }
            self.contacts[key] = contact
        stored = contact["properties"]
        for name, value in properties.items():
            if name == "email":
                value = value.lower()
            if value == "":
                stored.pop(name, None)
            else:
                stored[name] = value
        new_email = stored.get("email", key)
        if new_email != key:
            del self.contacts[key]
            self.contacts[new_email] = contact
        stored["lastmodifieddate"] = now
        contact["updatedAt"] = now
        return contact, is_new

    def _email_conflict(self, email: str, properties: Mapping[str, str]) -> dict[str, Any] | None:
        """The other contact that already has the email this write would give ``email``'s contact."""
        new_email = properties.get("email", "").lower()
        if not new_email or new_email == email.lower():
            return None
        return self.contacts.get(new_email)

    # -- the app ---------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp app serving the API, the tracker and /_emulator/ on one port."""
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        app[EMULATOR_KEY] = self
        routes = [
            web.get("/crm/v3/properties/contacts", self._list_properties),
            web.get("/crm/v3/properties/contacts/{name}", self._get_property),
            web.get("/properties/v1/contacts/properties", self._list_properties_v1),
            web.post("/crm/v3/objects/contacts/batch/upsert", self._batch_upsert),
            web.get("/crm/v3/objects/contacts/{contact_id}", self._get_contact),
            web.post("/contacts/v1/contact/createOrUpdate/email/{email}", self._create_or_update_v1),
            web.post("/contacts/v1/contact/createOrUpdate/email/{email}/", self._create_or_update_v1),
            web.post("/events/v3/event-definitions", self._create_definition),
            web.get("/events/v3/event-definitions", self._list_definitions),
            web.get("/events/v3/event-definitions/{name}", self._get_definition),
            web.post("/events/v3/send", self._send_event),
            web.post("/events/v3/send/batch", self._send_event_batch),
            web.get("/v1/event", self._track),
            web.get("/v1/event/", self._track),
            web.get("/_emulator/contacts", self._inspect_contacts),
            web.get("/_emulator/events", self._inspect_events),
            web.get("/_emulator/requests", self._inspect_requests),
            web.get("/_emulator/definitions", self._inspect_definitions),
            web.get("/_emulator/faults", self._inspect_faults),
            web.post("/_emulator/faults", self._set_faults),
            web.post("/_emulator/reset", self._reset),
        ]
        app.add_routes(routes)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        path = request.path
        if path.startswith(CONTROL_PREFIX):
            return await self._call(request, handler)
        record: dict[str, Any] = {
            "method": request.method,
            "path": path,
            "query": dict(request.query),
            "status": 0,
            "time": time.time(),
        }
        self.requests.append(record)
        response = await self._answer(request, handler)
        record["status"] = response.status if response is not None else 0
        if response is None:
            # Drop the connection without a word, like a reset load balancer.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        logger.debug("%s %s -> %s", request.method, path, response.status)
        return response

    async def _answer(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse | None:
        path = request.path
        response: web.StreamResponse
        for fault in self.faults:
            if not fault.matches(path) or self.random.random() >= fault.rate:
                continue
            if fault.count is not None:
                fault.count -= 1
            if fault.latency:
                await request.read()  # HubSpot has the request; only its answer is late
                await asyncio.sleep(fault.latency)
            if fault.reset:
                return None
            if fault.status is not None:
                response = fault.response()
                if fault.status == 429 and path.startswith(API_PREFIXES):
                    response.headers.update(self.limiter.headers())
                    response.headers["X-HubSpot-RateLimit-Remaining"] = "0"
                return response
        if not path.startswith(API_PREFIXES):
            return await self._call(request, handler)
        if "hapikey" in request.query:
            return _error(401, HAPIKEY_MESSAGE, "INVALID_AUTHENTICATION")
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            return _error(401, AUTH_MESSAGE, "INVALID_AUTHENTICATION")
        policy, headers = self.limiter.admit()
        if policy is not None:
            response = _json(_rate_limited_body(policy), status=429)
        else:
            response = await self._call(request, handler)
        response.headers.update(headers)
        return response

    async def _call(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except _BadRequest as exc:
            return _error(400, exc.message, "VALIDATION_ERROR", **exc.extra)
        except web.HTTPNotFound:
            return _error(
                404, f"Unable to route {request.method} request to {request.path}: not found", "OBJECT_NOT_FOUND"
            )
        except web.HTTPMethodNotAllowed:
            return _error(405, f"Method {request.method} is not allowed on {request.path}", "VALIDATION_ERROR")
        except web.HTTPException as exc:
            return _error(exc.status, exc.reason, "VALIDATION_ERROR")
        except Exception:
            logger.exception("emulator failed on %s %s", request.method, request.path)
            return _error(500, "internal error in the HubSpot emulator", "INTERNAL_ERROR")

    # -- properties ------------------------------------------------------------------------

    async def _list_properties(self, request: web.Request) -> web.Response:
        return _json({"results": list(self.property_definitions.values())})

    async def _get_property(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        definition = self.property_definitions.get(name)
        if definition is None:
            return _error(404, f"Unable to find property {name} for object type contacts", "OBJECT_NOT_FOUND")
        return _json(definition)

    async def _list_properties_v1(self, request: web.Request) -> web.Response:
        legacy = []
        for definition in self.property_definitions.values():
            metadata = definition.get("modificationMetadata") or {}
            legacy.append(
                {
                    **definition,
                    "readOnlyValue": bool(metadata.get("readOnlyValue")),
                    "readOnlyDefinition": bool(metadata.get("readOnlyDefinition")),
                }
            )
        return _json(legacy)

    # -- contacts (v3) ---------------------------------------------------------------------

    def _contact_result(self, contact: Mapping[str, Any], *, new: bool | None = None) -> dict[str, Any]:
        result: dict[str, Any] = {
            "id": contact["id"],
            "properties": dict(contact["properties"]),
            "createdAt": contact["createdAt"],
            "updatedAt": contact["updatedAt"],
            "archived": False,
        }
        if new is not None:
            result = {"id": result["id"], "new": new, **{k: v for k, v in result.items() if k != "id"}}
        return result

    async def _get_contact(self, request: web.Request) -> web.Response:
        wanted = request.match_info["contact_id"]
        if request.query.get("idProperty") == "email":
            contact = self.contacts.get(wanted.lower())
        else:
            contact = next((c for c in self.contacts.values() if c["id"] == wanted), None)
        if contact is None:
            return _error(404, "Object not found.  objectId are usually numeric.", "OBJECT_NOT_FOUND")
        return _json(self._contact_result(contact))

    def _parse_upsert(self, body: Any) -> list[_UpsertInput]:
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise _BadRequest("Invalid input JSON: expected an object with an \"inputs\" array")
        inputs = body["inputs"]
        if len(inputs) > MAX_UPSERT_INPUTS:
            raise _BadRequest(
                f"The maximum number of inputs supported in a batch is {MAX_UPSERT_INPUTS}. "
                f"Received {len(inputs)} inputs."
            )
        parsed: list[_UpsertInput] = []
        for index, item in enumerate(inputs):
            where = f"inputs[{index}]"
            if not isinstance(item, dict):
                raise _BadRequest(f"Invalid input JSON: {where} must be an object")
            id_property = item.get("idProperty")
            if id_property is None:
                raise _BadRequest(f"Invalid input JSON: {where}.idProperty is required to upsert by a unique property")
            if id_property != "email":
                raise _BadRequest(
                    f"Invalid input JSON: {where}.idProperty {id_property!r} is not supported here; use \"email\""
                )
            contact_id = item.get("id")
            if not isinstance(contact_id, str) or not contact_id:
                raise _BadRequest(f"Invalid input JSON: {where}.id must be a non-empty string")
            properties = item.get("properties", {})
            if not isinstance(properties, dict):
                raise _BadRequest(f"Invalid input JSON: {where}.properties must be an object")
            for name, value in properties.items():
                if not isinstance(value, str):
                    raise _BadRequest(
                        f"Invalid input JSON: {where}.properties.{name} must be a string, "
                        f"got {type(value).__name__} {value!r}; HubSpot property values are sent as strings"
                    )
            parsed.append(_UpsertInput(index, contact_id, dict(properties)))
        return parsed

    def _unwritable(self, names: Iterable[str]) -> list[PropertyProblem]:
        problems: list[PropertyProblem] = []
        for name in names:
            definition = self.property_definitions.get(name)
            if definition is None:
                problems.append(PropertyProblem(name, "PROPERTY_DOESNT_EXIST", f"Property \"{name}\" does not exist"))
            elif _is_read_only(definition):
                problems.append(
                    PropertyProblem(
                        name, "READ_ONLY_VALUE", f"\"{name}\" is a read only property; its value cannot be set."
                    )
                )
        return problems

    def _check_values(self, email: str, properties: Mapping[str, str]) -> tuple[dict[str, str], list[PropertyProblem]]:
        problems: list[PropertyProblem] = []
        if not is_valid_email(email):
            problems.append(PropertyProblem("email", "INVALID_EMAIL", f"Email address {email} is invalid"))
        stored: dict[str, str] = {}
        for name, value in properties.items():
            definition = self.property_definitions[name]
            if name == "email" and value == "":
                problems.append(PropertyProblem(name, "INVALID_EMAIL", "Email address  is invalid"))
                continue
            normalized, problem = check_property_value(definition, value)
            if problem is not None:
                problems.append(problem)
            stored[name] = normalized
        return stored, problems

    async def _batch_upsert(self, request: web.Request) -> web.Response:
        started = _now_iso()
        inputs = self._parse_upsert(await _read_json(request))
        seen: dict[str, str] = {}
        duplicates: list[str] = []
        for item in inputs:
            key = item.id.lower()
            if key in seen and seen[key] not in duplicates:
                duplicates.append(seen[key])
            seen.setdefault(key, item.id)
        if duplicates:
            return _error(
                400,
                f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique",
                "VALIDATION_ERROR",
                context={"ids": duplicates},
            )
        # A property that does not exist or cannot be written fails the whole request (observed).
        names = list(dict.fromkeys(name for item in inputs for name in item.properties))
        unwritable = self._unwritable(names)
        if unwritable:
            return _error(400, _property_message(unwritable), "VALIDATION_ERROR")
        results: list[dict[str, Any]] = []
        failures: list[tuple[_UpsertInput, str, str, list[PropertyProblem]]] = []
        for item in inputs:
            stored, problems = self._check_values(item.id, item.properties)
            if problems:
                failures.append((item, "VALIDATION_ERROR", _property_message(problems), problems))
                continue
            other = self._email_conflict(item.id, stored)
            if other is not None:
                message = f"Contact already exists. Existing ID: {other['id']}"
                failures.append((item, "CONFLICT", message, []))
                continue
            contact, is_new = self._write_contact(item.id, stored)
            results.append(self._contact_result(contact, new=is_new))
        errors = [
            {
                "status": "error",
                "category": category,
                "message": message,
                "context": {"ids": [item.id]},
                "errors": [
                    {"message": p.message, "code": p.error, "context": {"propertyName": [p.name]}} for p in problems
                ],
            }
            for item, category, message, problems in failures
        ]
        if failures and not results:
            problems = [p for _, _, _, ps in failures for p in ps]
            ids = [item.id for item, _, _, _ in failures]
            if not problems:  # every input conflicted with an existing contact
                message = "; ".join(message for _, _, message, _ in failures)
                return _error(409, message, "CONFLICT", context={"ids": ids})
            return _error(
                400,
                _property_message(problems),
                "VALIDATION_ERROR",
                context={"ids": ids},
                errors=[e for error in errors for e in error["errors"]],
            )
        body: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if failures:
            body["numErrors"] = len(failures)
            body["errors"] = errors
        body["startedAt"] = started
        body["completedAt"] = _now_iso()
        return _json(body, status=207 if failures else 200)

    # -- contacts (legacy v1) --------------------------------------------------------------

    async def _create_or_update_v1(self, request: web.Request) -> web.Response:
        email = request.match_info["email"]
        body = await _read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("properties", []), list):
            raise _BadRequest("Invalid input JSON: expected an object with a \"properties\" array")
        properties: dict[str, str] = {}
        for index, item in enumerate(body.get("properties", [])):
            if not isinstance(item, dict) or not isinstance(item.get("property"), str):
                raise _BadRequest(
                    f"Invalid input JSON: properties[{index}] must be {{\"property\": ..., \"value\": ...}}"
                )
            value = item.get("value")
            if not isinstance(value, str):
                raise _BadRequest(
                    f"Invalid input JSON: properties[{index}].value must be a string, got {type(value).__name__}"
                )
            properties[item["property"]] = value
        unwritable = self._unwritable(properties)
        refused = {p.name for p in unwritable}
        stored, problems = self._check_values(email, {k: v for k, v in properties.items() if k not in refused})
        problems += unwritable
        if problems:
            return _json(
                _envelope(
                    "Property values were not valid",
                    "VALIDATION_ERROR",
                    validationResults=[p.result() for p in problems],
                ),
                status=400,
            )
        other = self._email_conflict(email, stored)
        if other is not None:
            return _error(
                409,
                "Contact already exists",
                "CONFLICT",
                error="CONTACT_EXISTS",
                identityProfile={
                    "vid": int(other["id"]),
                    "identity": [{"value": other["properties"].get("email"), "type": "EMAIL"}],
                },
            )
        contact, is_new = self._write_contact(email, stored)
        return _json({"vid": int(contact["id"]), "isNew": is_new})

    # -- event definitions -----------------------------------------------------------------

    async def _create_definition(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict):
            raise _BadRequest("Invalid input JSON: expected an object")
        name, label = body.get("name"), body.get("label")
        if not isinstance(label, str) or not label.strip():
            raise _BadRequest("label is required")
        if not _is_property_name(name):
            raise _BadRequest(
                f"Invalid event name {name!r}: names must be lowercase, start with a letter, contain only "
                f"letters, digits and underscores, and be at most {MAX_EVENT_PROPERTY_NAME} characters"
            )
        primary_object = body.get("primaryObject")
        if primary_object is None:
            raise _BadRequest("primaryObject is required")
        if primary_object not in ("CONTACT", "0-1"):
            raise _BadRequest(f"primaryObject {primary_object!r} is not supported here; use \"CONTACT\"")
        property_definitions = body.get("propertyDefinitions", [])
        if not isinstance(property_definitions, list):
            raise _BadRequest("propertyDefinitions must be an array")
        for index, prop in enumerate(property_definitions):
            where = f"propertyDefinitions[{index}]"
            if not isinstance(prop, dict):
                raise _BadRequest(f"{where} must be an object")
            prop_name = prop.get("name")
            if not _is_property_name(prop_name):
                raise _BadRequest(f"{where}.name {prop_name!r} is not a valid property name")
            if not isinstance(prop.get("label"), str) or not prop["label"]:
                raise _BadRequest(f"{where}.label is required")
            if prop.get("type", "string") not in _EVENT_TYPES:
                raise _BadRequest(f"{where}.type must be one of {sorted(_EVENT_TYPES)}")
        fqn = self.fully_qualified_name(name)
        if fqn in self.definitions:
            return _error(409, f"An event definition with name {name} already exists ({fqn})", "CONFLICT")
        description = body.get("description", "")
        definition = self._new_definition(name, label, "CONTACT", property_definitions, str(description or ""))
        self.definitions[fqn] = definition
        logger.info("event definition %s created", fqn)
        return _json(definition, status=201)

    def _find_definition(self, name: str) -> dict[str, Any] | None:
        if name in self.definitions:
            return self.definitions[name]
        return next((d for d in self.definitions.values() if d.get("name") == name), None)

    async def _list_definitions(self, request: web.Request) -> web.Response:
        results = list(self.definitions.values())
        return _json({"total": len(results), "results": results})

    async def _get_definition(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        definition = self._find_definition(name)
        if definition is None:
            return _error(404, f"Event definition {name} not found", "OBJECT_NOT_FOUND", context={"eventName": [name]})
        return _json(definition)

    # -- events (v3) -----------------------------------------------------------------------

    def _check_occurrence(self, raw: Any, where: str, batch_uuids: set[str]) -> dict[str, Any]:
        """One event occurrence as it will be stored; raises _BadRequest naming the problem."""
        if not isinstance(raw, dict):
            raise _BadRequest(f"{where}must be an object")
        event_name = raw.get("eventName")
        if not isinstance(event_name, str) or not event_name:
            raise _BadRequest(f"{where}eventName is required")
        if event_name not in self.definitions:
            raise _BadRequest(
                f"{where}Event {event_name} is not defined in portal {self.hub_id}: the eventName must be the "
                f"fullyQualifiedName of an existing event definition (pe{self.hub_id}_<name>)",
                context={"eventName": [event_name]},
            )
        email, utk, object_id = raw.get("email"), raw.get("utk"), raw.get("objectId")
        if not (email or utk or object_id):
            raise _BadRequest(f"{where}One of email, utk or objectId is required to identify the contact")
        if email is not None and (not isinstance(email, str) or not is_valid_email(email)):
            raise _BadRequest(f"{where}Email address {email} is invalid", context={"email": [str(email)]})
        if utk is not None and not isinstance(utk, str):
            raise _BadRequest(f"{where}utk must be a string")
        if object_id is not None and (isinstance(object_id, bool) or not isinstance(object_id, str | int)):
            raise _BadRequest(f"{where}objectId must be a string or a number")
        occurred_at = raw.get("occurredAt")
        if occurred_at is not None:
            try:
                if not isinstance(occurred_at, str):
                    raise ValueError(occurred_at)
                moment = dt.datetime.fromisoformat(occurred_at)
            except ValueError:
                raise _BadRequest(f"{where}occurredAt {occurred_at!r} is not an ISO 8601 timestamp") from None
            occurred_at = _iso(moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC))
        event_uuid = raw.get("uuid")
        if event_uuid is not None:
            if not isinstance(event_uuid, str) or not event_uuid:
                raise _BadRequest(f"{where}uuid must be a non-empty string")
            if event_uuid in self._seen_uuids or event_uuid in batch_uuids:
                raise _BadRequest(
                    f"{where}Duplicate uuid {event_uuid}: an event occurrence with this uuid was already received",
                    context={"uuid": [event_uuid]},
                )
            batch_uuids.add(event_uuid)
        properties = raw.get("properties", {})
        if properties is None:
            properties = {}
        if not isinstance(properties, dict):
            raise _BadRequest(f"{where}properties must be an object")
        if len(properties) > MAX_EVENT_PROPERTIES:
            raise _BadRequest(
                f"{where}Too many properties: {len(properties)}; at most {MAX_EVENT_PROPERTIES} per occurrence"
            )
        for name, value in properties.items():
            if not _is_property_name(name):
                raise _BadRequest(
                    f"{where}Invalid property name {name!r}: names must match ^[a-z][a-z0-9_]*$ and be at most "
                    f"{MAX_EVENT_PROPERTY_NAME} characters",
                    context={"propertyName": [name]},
                )
            if isinstance(value, bool):
                value = "true" if value else "false"
            if not isinstance(value, str | int | float):
                raise _BadRequest(f"{where}Property {name} must have a string or number value, got {value!r}")
            text = str(value)
            limit = MAX_EVENT_URL_VALUE if text.startswith(("http://", "https://")) else MAX_EVENT_VALUE
            if len(text) > limit:
                raise _BadRequest(
                    f"{where}Property {name} value is {len(text)} characters long; the maximum is {limit}",
                    context={"propertyName": [name]},
                )
        return {
            "eventName": event_name,
            "email": email.lower() if isinstance(email, str) else None,
            "utk": utk,
            "objectId": str(object_id) if object_id is not None else None,
            "occurredAt": occurred_at or _now_iso(),
            "uuid": event_uuid,
            "properties": dict(properties),
            "source": "v3",
            "receivedAt": _now_iso(),
        }

    def _record_events(self, occurrences: list[dict[str, Any]]) -> None:
        for occurrence in occurrences:
            if occurrence["email"]:
                contact = self.contacts.get(occurrence["email"])
                if contact is None:
                    contact, _ = self._write_contact(occurrence["email"], {})
                occurrence["objectId"] = occurrence["objectId"] or contact["id"]
            if occurrence["uuid"]:
                self._seen_uuids.add(occurrence["uuid"])
            self.events.append(occurrence)

    async def _send_event(self, request: web.Request) -> web.Response:
        occurrence = self._check_occurrence(await _read_json(request), "", set())
        self._record_events([occurrence])
        return web.Response(status=204)

    async def _send_event_batch(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
            raise _BadRequest("Invalid input JSON: expected an object with an \"inputs\" array")
        inputs = body["inputs"]
        if not inputs:
            raise _BadRequest("inputs must not be empty")
        if len(inputs) > MAX_EVENT_BATCH:
            raise _BadRequest(
                f"The maximum number of inputs supported in a batch is {MAX_EVENT_BATCH}. "
                f"Received {len(inputs)} inputs."
            )
        batch_uuids: set[str] = set()
        occurrences = [self._check_occurrence(raw, f"inputs[{i}]: ", batch_uuids) for i, raw in enumerate(inputs)]
        self._record_events(occurrences)
        return web.Response(status=204)

    # -- legacy tracker --------------------------------------------------------------------

    async def _track(self, request: web.Request) -> web.Response:
        silent = web.Response(status=200, body=b"", content_type="image/gif")
        query = request.query
        email = query.get("email", "")
        event_name = query.get("_n", "")
        if query.get("_a") != self.hub_id or not event_name or not is_valid_email(email):
            logger.debug("tracker ignored %s", request.query_string)
            return silent
        updates: dict[str, str] = {}
        for name, value in query.items():
            if name.startswith("_") or name == "email":
                continue
            definition = self.property_definitions.get(name)
            if definition is None or _is_read_only(definition):
                continue
            normalized, problem = check_property_value(definition, value)
            if problem is None:
                updates[name] = normalized
        if self._email_conflict(email, updates) is not None:
            updates.pop("email", None)
        contact, _ = self._write_contact(email, updates)
        properties = {"revenue": query["_m"]} if "_m" in query else {}
        self.events.append(
            {
                "eventName": event_name,
                "email": email.lower(),
                "utk": None,
                "objectId": contact["id"],
                "occurredAt": _now_iso(),
                "uuid": None,
                "properties": properties,
                "source": "legacy",
                "receivedAt": _now_iso(),
            }
        )
        return silent

    # -- inspection and fault injection ----------------------------------------------------

    async def _inspect_contacts(self, request: web.Request) -> web.Response:
        return _json({"results": [{"email": email, **contact} for email, contact in self.contacts.items()]})

    async def _inspect_events(self, request: web.Request) -> web.Response:
        return _json({"results": self.events})

    async def _inspect_requests(self, request: web.Request) -> web.Response:
        return _json({"results": self.requests})

    async def _inspect_definitions(self, request: web.Request) -> web.Response:
        return _json({"results": list(self.definitions.values())})

    async def _inspect_faults(self, request: web.Request) -> web.Response:
        return _json({"results": [attrs.asdict(f) for f in self.faults]})

    async def _set_faults(self, request: web.Request) -> web.Response:
        body = await _read_json(request)
        if not isinstance(body, dict) or not isinstance(body.get("faults"), list):
            raise _BadRequest("expected {\"faults\": [...]}")
        try:
            self.set_faults(body["faults"])
        except ValueError as exc:
            raise _BadRequest(f"invalid fault: {exc}") from None
        logger.info("faults set: %s", self.faults)
        return _json({"status": "ok"})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json({"status": "ok"})


EMULATOR_KEY: Final = web.AppKey("hubspot_emulator", Emulator)


def _property_message(problems: Iterable[PropertyProblem]) -> str:
    results = [p.result() for p in problems]
    return "Property values were not valid: " + json.dumps(results, separators=(",", ":"), ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Files, serving and the command line
# ---------------------------------------------------------------------------------------------


def load_properties_file(path: str) -> list[dict[str, Any]]:
    """Custom property definitions from a YAML or JSON file: a list, or {"results": [...]}."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    if isinstance(data, dict) and "results" in data:
        data = data["results"]
    if not isinstance(data, list) or not all(isinstance(d, dict) and isinstance(d.get("name"), str) for d in data):
        raise ValueError(f"{path}: expected a list of property definitions, each with a name")
    return [dict(d) for d in data]


def parse_rate(text: str) -> tuple[int, float]:
    """A rate limit written as "100/10s" (also "5/1s", "100/500ms", "600/1m") as (requests, seconds)."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid rate {text!r}: expected COUNT/WINDOW such as 100/10s")
    count = int(match.group(1))
    amount = float(match.group(2)) if match.group(2) is not None else 1.0
    seconds = amount * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[match.group(3) or "s"]
    if count < 1 or seconds <= 0:
        raise ValueError(f"invalid rate {text!r}: count and window must be positive")
    return count, seconds


async def serve(emulator: Emulator, host: str, port: int) -> web.AppRunner:
    """Start serving ``emulator`` on host:port (0 picks a free port); the caller cleans up the runner."""
    runner = web.AppRunner(emulator.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    logger.info("HubSpot emulator listening on %s", runner.addresses)
    return runner


def _listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range in {text!r}")
    return host, number


def _rate_argument(text: str) -> tuple[int, float]:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _serve_until_signalled(emulator: Emulator, host: str, port: int) -> int:
    runner = await serve(emulator, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    actual_port = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    print(f"HubSpot emulator on http://{shown}:{actual_port} (hub_id {emulator.hub_id})", flush=True)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    return 0


def run_cli(args: argparse.Namespace) -> int:
    """The hubspot-emulator command: serve until SIGINT or SIGTERM."""
    try:
        properties = load_properties_file(args.properties) if args.properties else None
        rate_limit, rate_window = args.rate_limit
        emulator = Emulator(
            args.token,
            args.hub_id,
            properties=properties,
            rate_limit=rate_limit,
            rate_window=rate_window,
            daily_limit=args.daily_limit,
            seed=args.seed,
        )
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"hubspot-emulator: {exc}", file=sys.stderr, flush=True)
        return 2
    host, port = args.listen
    try:
        return asyncio.run(_serve_until_signalled(emulator, host, port))
    except OSError as exc:  # the address is taken or cannot be bound
        print(f"hubspot-emulator: cannot listen on {host}:{port}: {exc}", file=sys.stderr, flush=True)
        return 1


def add_cli(subparsers: Any) -> None:
    """Add the ``hubspot-emulator`` subcommand to an argparse subparsers action."""
    parser = subparsers.add_parser(
        "hubspot-emulator",
        help="run a local HubSpot (API and tracker) for tests and demos",
        description="Serve a local HubSpot emulator: contacts, properties, events, the legacy tracker, "
        "rate limits and fault injection (/_emulator/).",
    )
    parser.add_argument("--listen", type=_listen_address, default=("127.0.0.1", 8002), metavar="HOST:PORT",
                        help="address to listen on (default 127.0.0.1:8002; port 0 picks a free one)")
    parser.add_argument("--token", required=True, help="the private-app access token clients must send")
    parser.add_argument("--hub-id", required=True, help="the account's numeric portal id")
    parser.add_argument("--properties", metavar="FILE", help="YAML or JSON file of custom contact property definitions")
    parser.add_argument("--rate-limit", type=_rate_argument, default=(100, 10.0), metavar="N/WINDOW",
                        help="rolling rate limit per app, e.g. 100/10s (default), 190/10s")
    parser.add_argument("--daily-limit", type=int, default=250_000, help="requests per day (default 250000)")
    parser.add_argument("--seed", type=int, default=None, help="seed for fault-injection randomness")
    parser.set_defaults(func=run_cli)
