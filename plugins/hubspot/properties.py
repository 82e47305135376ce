"""The contact property catalog: fetch, cache and refresh it; normalise names; convert values by type.

A user property becomes a HubSpot contact property when its normalised name (lowercase, every run
of other characters -> ``_``) is a property HubSpot lists as writable, and its value converts to
that property's type. Everything else is dropped from the request (never the whole event) and
counted in ``router_hubspot_properties_dropped_total{destination,reason}``; names are logged, values
never are.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import re
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs
import orjson
import prometheus_client as prom

from plugins.hubspot.client import HubSpotClient, RequestBudget
from router.destination import PauseDestination, PauseSender

log = logging.getLogger(__name__)

#: why a property was left out of a request (the ``reason`` label)
UNKNOWN = "unknown"
READ_ONLY = "read_only"
CALCULATED = "calculated"
INVALID_VALUE = "invalid_value"

MAX_STRING = 65_536

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})
#: epoch numbers at or above this are milliseconds, below it seconds (1e11 s is the year 5138)
_MS_THRESHOLD = 100_000_000_000
_UTC_MIDNIGHT = dt.time(0, 0, tzinfo=dt.UTC)

_counters: weakref.WeakKeyDictionary[Any, prom.Counter] = weakref.WeakKeyDictionary()


def dropped_counter(registry: Any) -> prom.Counter:
    """The ``router_hubspot_properties_dropped_total`` counter of a registry (one per registry)."""
    if registry is None:
        return prom.Counter(
            "router_hubspot_properties_dropped", "HubSpot properties left out of requests, by reason",
            ["destination", "reason"], registry=None,
        )
    counter = _counters.get(registry)
    if counter is None:
        counter = prom.Counter(
            "router_hubspot_properties_dropped", "HubSpot properties left out of requests, by reason",
            ["destination", "reason"], registry=registry,
        )
        _counters[registry] = counter
    return counter


def normalise_name(name: str) -> str:
    """``"Favorite Color"`` -> ``"favorite_color"``: lowercase, runs of non-alphanumerics -> ``_``, trimmed."""
    return _NON_ALNUM.sub("_", str(name).lower()).strip("_")


class InvalidValue(ValueError):
    """A value that cannot be converted to its property's type."""


@attrs.frozen
class PropertyDef:
    """What the catalog keeps of one contact property."""

    name: str
    type: str
    field_type: str
    #: (value, label) of each enumeration option
    options: tuple[tuple[str, str], ...] = ()
    #: why it cannot be written ("read_only", "calculated"), or None
    unwritable: str | None = None

    @classmethod
    def from_api(cls, raw: Mapping[str, Any]) -> PropertyDef:
        metadata = raw.get("modificationMetadata") or {}
        unwritable = None
        if raw.get("calculated"):
            unwritable = CALCULATED
        elif metadata.get("readOnlyValue") or raw.get("readOnlyValue"):
            unwritable = READ_ONLY
        options = tuple(
            (str(o.get("value")), str(o.get("label", o.get("value"))))
            for o in raw.get("options") or []
            if isinstance(o, dict) and o.get("value") is not None
        )
        return cls(
            name=str(raw["name"]),
            type=str(raw.get("type") or "string"),
            field_type=str(raw.get("fieldType") or ""),
            options=options,
            unwritable=unwritable,
        )


# -- value conversion (pure) ------------------------------------------------------------------


def convert(prop: PropertyDef, value: Any) -> str:
    """``value`` as the string HubSpot takes for ``prop``'s type; raises :class:`InvalidValue`."""
    if value == "" and isinstance(value, str):
        return ""  # an empty string clears the property
    kind = prop.type
    if kind == "date":
        return date_ms(value)
    if kind == "datetime":
        return datetime_ms(value)
    if kind == "bool":
        return boolean(value)
    if kind == "number":
        return plain_number(value)
    if kind == "enumeration":
        return enumeration(prop, value)
    return text(value)


def plain_number(value: Any) -> str:
    """Decimal text without an exponent; whole numbers without ``.0``."""
    if isinstance(value, bool):
        raise InvalidValue("a boolean is not a number")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidValue("not a finite number")
        number = Decimal(repr(value))
    elif isinstance(value, str) and _NUMBER.match(value.strip()):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidValue("not a number") from None
    else:
        raise InvalidValue("not a number")
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


def _instant(value: Any) -> dt.datetime | dt.date:
    """An ISO date, ISO datetime (naive = UTC) or epoch seconds/milliseconds number."""
    if isinstance(value, bool):
        raise InvalidValue("a boolean is not a date")
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        value = float(value.strip())
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise InvalidValue("not a finite number")
        seconds = value / 1000 if abs(value) >= _MS_THRESHOLD else value
        try:
            return dt.datetime.fromtimestamp(seconds, dt.UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidValue("epoch number out of range") from None
    if isinstance(value, str):
        text_value = value.strip()
        try:
            if _ISO_DATE.match(text_value):
                return dt.date.fromisoformat(text_value)
            moment = dt.datetime.fromisoformat(text_value)
        except ValueError:
            raise InvalidValue("not an ISO 8601 date or time") from None
        return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)
    raise InvalidValue("not a date")


def _epoch_ms(moment: dt.datetime) -> str:
    return str(round(moment.timestamp() * 1000))


def date_ms(value: Any) -> str:
    """Epoch milliseconds at midnight UTC of the (UTC) date."""
    moment = _instant(value)
    day = moment.date() if isinstance(moment, dt.datetime) else moment
    return _epoch_ms(dt.datetime.combine(day, _UTC_MIDNIGHT))


def datetime_ms(value: Any) -> str:
    """Epoch milliseconds of the instant (a bare date means its midnight UTC)."""
    moment = _instant(value)
    if not isinstance(moment, dt.datetime):
        moment = dt.datetime.combine(moment, _UTC_MIDNIGHT)
    return _epoch_ms(moment)


def boolean(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and value in (0, 1):
        return "true" if value else "false"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return "true"
        if word in _FALSE:
            return "false"
    raise InvalidValue("not a boolean")


def _scalar_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return plain_number(value)
    if isinstance(value, str):
        return value.strip()
    raise InvalidValue("not a single value")


def enumeration(prop: PropertyDef, value: Any) -> str:
    """The option's ``value``, matching a value or a label case-insensitively; lists joined with ``;``."""
    if isinstance(value, list):
        items = value
    elif prop.field_type == "checkbox" and isinstance(value, str):
        items = [part for part in value.split(";") if part.strip()]
    else:
        items = [value]
    if len(items) > 1 and prop.field_type != "checkbox":
        raise InvalidValue("several values for a single-choice property")
    chosen = [_option(prop, _scalar_text(item)) for item in items]
    return ";".join(dict.fromkeys(chosen))


def _option(prop: PropertyDef, given: str) -> str:
    if not prop.options:
        return given  # options managed elsewhere (owners, external options): pass through
    for option_value, _ in prop.options:
        if option_value == given:
            return option_value
    folded = given.casefold()
    for option_value, label in prop.options:
        if option_value.casefold() == folded or label.casefold() == folded:
            return option_value
    raise InvalidValue("not one of the property's options")


def text(value: Any) -> str:
    """Strings as they are; numbers as plain decimals; objects and lists as JSON text."""
    if isinstance(value, dict | list):
        result = orjson.dumps(value).decode()
    elif isinstance(value, str):
        result = value
    else:
        result = _scalar_text(value)
    if len(result) > MAX_STRING:
        raise InvalidValue(f"longer than {MAX_STRING} characters")
    return result


# -- the catalog ------------------------------------------------------------------------------


class PropertyCatalog:
    """HubSpot's contact properties, fetched at start, every ``refresh_every`` and after a refusal."""

    def __init__(
        self,
        client: HubSpotClient,
        *,
        legacy: bool,
        refresh_every: float,
        destination: str,
        registry: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.legacy = legacy
        self.refresh_every = refresh_every
        self.destination = destination
        self.clock = clock
        self.dropped = dropped_counter(registry)
        self._props: dict[str, PropertyDef] = {}
        self._refused: set[str] = set()
        self._loaded_at: float | None = None
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._props)

    def get(self, name: str) -> PropertyDef | None:
        return self._props.get(name)

    @property
    def loaded(self) -> bool:
        return self._loaded_at is not None

    async def load(self, budget: RequestBudget | None = None) -> None:
        """Fetch the whole catalog (one request). Raises when HubSpot cannot be reached."""
        async with self._lock:
            await self._fetch(budget)

    async def _fetch(self, budget: RequestBudget | None, *, keep_refused: bool = False) -> None:
        path = "/properties/v1/contacts/properties" if self.legacy else "/crm/v3/properties/contacts"
        response = await self.client.call("GET", path, operation="property catalog", budget=budget)
        body = response.body
        results = body if self.legacy and isinstance(body, list) else (body or {}).get("results", [])
        props = {}
        for raw in results if isinstance(results, list) else []:
            if isinstance(raw, dict) and raw.get("name"):
                prop = PropertyDef.from_api(raw)
                props[prop.name] = prop
        self._props = props
        if not keep_refused:
            self._refused.clear()
        self._loaded_at = self.clock()
        writable = sum(1 for p in props.values() if p.unwritable is None)
        log.info("destination %s: %d contact properties known (%d writable)", self.destination, len(props), writable)

    async def ensure_fresh(self, budget: RequestBudget | None = None) -> None:
        """Load if never loaded; fetch again when older than ``refresh_every``. A failed periodic
        refresh keeps the old catalog (a 401 still pauses the destination; a 403 keeps it until the
        next period)."""
        if self._loaded_at is not None and self.clock() - self._loaded_at < self.refresh_every:
            return
        async with self._lock:
            if self._loaded_at is not None and self.clock() - self._loaded_at < self.refresh_every:
                return
            if self._loaded_at is None:
                await self._fetch(budget)
                return
            await self._refetch(budget)

    async def _refetch(self, budget: RequestBudget | None, *, keep_refused: bool = False) -> None:
        """Fetch a loaded catalog again; when that fails the cached one serves on (a 401 still
        pauses the destination; a 403, a scope taken away, is tried again next period)."""
        try:
            await self._fetch(budget, keep_refused=keep_refused)
        except PauseSender as exc:
            self._loaded_at = self.clock()
            log.warning("destination %s: property catalog refresh refused; using the cached one: %s",
                        self.destination, exc.reason)
        except PauseDestination:
            raise
        except Exception as exc:
            log.warning("destination %s: property catalog refresh failed (%s); using the cached one",
                        self.destination, type(exc).__name__)

    async def refused(self, names: Iterable[str], budget: RequestBudget | None = None) -> None:
        """HubSpot said these properties do not exist or cannot be written. When the catalog still
        lists any of them as writable it is fetched again at once; whatever HubSpot refused is left
        out until the next periodic refresh (so one name costs at most one extra fetch per period)."""
        names = set(names)
        async with self._lock:
            stale = [n for n in names if n not in self._refused and (p := self._props.get(n)) and p.unwritable is None]
            if stale:
                await self._refetch(budget, keep_refused=True)
            self._refused |= names

    def count_drop(self, name: str, reason: str) -> None:
        self.dropped.labels(self.destination, reason).inc()
        log.debug("destination %s: property %r left out (%s)", self.destination, name, reason)

    def contact_properties(self, user: Mapping[str, Any]) -> dict[str, str]:
        """The user's properties HubSpot can take, converted; the rest dropped and counted."""
        out: dict[str, str] = {}
        for key, value in user.items():
            if value is None:
                continue
            name = normalise_name(key)
            prop = self._props.get(name)
            if prop is None or name in self._refused:
                self.count_drop(name or str(key), UNKNOWN)
                continue
            if prop.unwritable is not None:
                self.count_drop(name, prop.unwritable)
                continue
            try:
                out[name] = convert(prop, value)
            except InvalidValue as exc:
                self.dropped.labels(self.destination, INVALID_VALUE).inc()
                log.info("destination %s: property %r left out: value is %s (expected %s)",
                         self.destination, name, exc, prop.type)
        return out
