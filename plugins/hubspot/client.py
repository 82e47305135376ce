"""HTTP to HubSpot: auth, JSON, error envelopes into typed errors, rate-limit answers into the shared limiter.

Every API answer is classified here, once:

- 2xx                   -> :class:`ApiResponse`
- 400/404/409/other 4xx -> :class:`HubSpotError` (about the request: the sender decides per input)
- 401                   -> ``PauseDestination`` naming the credential (never its value)
- 403                   -> ``PauseSender`` naming the scope: only that kind of call waits
- 429, 423, 477, 5xx    -> ``RetryBatch`` with the right ``not_before``; 429 also pauses the limiter

Nothing here logs a URL with its query string or a header: the token (or the deprecated hapikey)
never reaches logs, errors or status output. Every answer's text is redacted before it is parsed or
kept (an error's message and text reach logs, status and dead letters): the credential's value and
any ``hapikey=<value>`` become ``***``, in case a proxy or HubSpot echoes the request.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

import aiohttp
import attrs
import orjson
from yarl import URL

from plugins.hubspot.config import HubSpotConfig
from router.destination import DestinationError, PauseDestination, PauseSender, RetryBatch
from router.ratelimit import RateLimiter

log = logging.getLogger(__name__)

#: what each kind of call needs from a private app (named in 403 messages)
SCOPES: Mapping[str, str] = {
    "property catalog": "crm.objects.contacts.read",
    "contact upsert": "crm.objects.contacts.write",
    "event send": "analytics.behavioral_events.send",
    "event definition": "behavioral_events.event_definitions.read_write",
}

#: how long HubSpot asks a client to wait after 423 Locked
LOCKED_WAIT = 2.0
#: when a 477 comes without Retry-After
MIGRATION_WAIT = 60.0

_PROPERTY_DETAIL = re.compile(r"Property values were not valid:\s*(\[.*\])\s*$", re.DOTALL)
_HAPIKEY = re.compile(r"(hapikey=)[^&\s\"'<>\\]+", re.IGNORECASE)
REDACTED = "***"


@attrs.frozen
class ApiResponse:
    """A successful answer."""

    status: int
    body: Any
    text: str


class HubSpotError(DestinationError):
    """HubSpot refused one request for a reason about the request itself (400, 404, 409, ...)."""

    def __init__(self, status: int, body: Any, text: str) -> None:
        envelope = body if isinstance(body, dict) else {}
        self.status = status
        self.body = envelope
        self.text = text[:4000]
        self.message = str(envelope.get("message") or text[:500] or f"HTTP {status}")
        self.category = str(envelope.get("category") or envelope.get("error") or "")
        self.correlation_id = str(envelope.get("correlationId") or "")
        context = envelope.get("context")
        self.context: dict[str, Any] = context if isinstance(context, dict) else {}
        errors = envelope.get("errors")
        self.errors: list[Any] = errors if isinstance(errors, list) else []
        super().__init__(self.describe())

    def describe(self) -> str:
        """``HubSpot 400 VALIDATION_ERROR: <message>`` (no URL, no credential)."""
        category = f" {self.category}" if self.category else ""
        return f"HubSpot {self.status}{category}: {self.message}"

    def ids(self) -> list[str]:
        """The input ids HubSpot names in ``context.ids``."""
        ids = self.context.get("ids")
        return [str(i) for i in ids] if isinstance(ids, list) else []

    def property_problems(self) -> list[dict[str, str]]:
        """Per-property validation results: ``[{"name", "error", "message"}, ...]``.

        HubSpot puts them in ``validationResults`` (v1), as JSON inside ``message``
        ("Property values were not valid: [...]"), or in ``errors[].context.propertyName``.
        """
        found: list[dict[str, str]] = []
        results = self.body.get("validationResults")
        if not isinstance(results, list):
            match = _PROPERTY_DETAIL.search(self.message)
            results = []
            if match:
                try:
                    results = json.loads(match.group(1))
                except ValueError:
                    results = []
        for item in results if isinstance(results, list) else []:
            if isinstance(item, dict) and item.get("name"):
                found.append(
                    {"name": str(item["name"]), "error": str(item.get("error", "")), "message": str(item.get("message", ""))}
                )
        if not found:
            for item in self.errors:
                names = (item.get("context") or {}).get("propertyName") if isinstance(item, dict) else None
                for name in names if isinstance(names, list) else []:
                    found.append({"name": str(name), "error": str(item.get("code", "")), "message": str(item.get("message", ""))})
        return found


class RequestBudget:
    """Rate-limiter tokens for one ``send()``: the core acquired one before the call, the first
    request uses it; every further request (a resend, a refresh, a definition) acquires its own."""

    def __init__(self, limiter: RateLimiter, prepaid: int = 1) -> None:
        self.limiter = limiter
        self.prepaid = prepaid

    async def take(self) -> None:
        if self.prepaid > 0:
            self.prepaid -= 1
            return
        await self.limiter.acquire()


class HubSpotClient:
    """Calls HubSpot's API and tracker with the session the core created for this destination."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        config: HubSpotConfig,
        limiter: RateLimiter,
        *,
        destination: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.http = http
        self.config = config
        self.limiter = limiter
        self.destination = destination
        self.wall_clock = wall_clock
        self.api_base = str(config.api_base).rstrip("/")
        self.track_base = str(config.track_base).rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self._params: dict[str, str] = {}
        if config.uses_api_key:
            assert config.api_key is not None
            self._params["hapikey"] = config.api_key.get()
            self.credential = "API key (hapikey)"
        else:
            assert config.access_token is not None
            self._headers["Authorization"] = f"Bearer {config.access_token.get()}"
            self.credential = "access token"
        #: credential values (and their URL-encoded forms) removed from every answer's text
        values = [secret.get() for secret in (config.access_token, config.api_key) if secret and secret.get()]
        self._secrets = sorted({form for v in values for form in (v, quote(v, safe=""))}, key=len, reverse=True)
        #: wall-clock time before which the daily allowance is spent
        self.daily_until = 0.0
        self._day_start = 0.0
        self._day_count = 0

    # -- the API ---------------------------------------------------------------------------

    async def call(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        budget: RequestBudget | None = None,
        body: Any = None,
    ) -> ApiResponse:
        """One API request. ``path`` is already URL-encoded; ``budget`` None acquires the limiter."""
        if budget is None:
            await self.limiter.acquire()
        else:
            await budget.take()
        self._count_daily()
        data = orjson.dumps(body) if body is not None else None
        url = URL(self.api_base + path, encoded=True)
        if self._params:
            url = url.update_query(self._params)
        async with self.http.request(method, url, data=data, headers=self._headers, timeout=self.timeout) as resp:
            raw = await resp.read()
            headers = resp.headers
            status = resp.status
        text = self.redact(raw.decode("utf-8", errors="replace"))
        parsed: Any = None
        if text:
            try:
                parsed = orjson.loads(text)
            except orjson.JSONDecodeError:
                parsed = None
        self._observe(headers)
        if 200 <= status < 300:
            return ApiResponse(status, parsed, text)
        error = HubSpotError(status, parsed, text)
        log.debug("destination %s: %s answered %s %s", self.destination, operation, status, error.category)
        self._raise_destination_wide(error, headers, operation)
        raise error

    def redact(self, text: str) -> str:
        """``text`` without the credential's value or any ``hapikey=<value>``."""
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return _HAPIKEY.sub(r"\1" + REDACTED, text)

    def _raise_destination_wide(self, error: HubSpotError, headers: Mapping[str, str], operation: str) -> None:
        status = error.status
        now = self.wall_clock()
        if status == 401:
            category = error.category or "INVALID_AUTHENTICATION"
            hint = (
                " (HubSpot switched API keys off on 2022-11-30: set access_token to a private app's token)"
                if self.config.uses_api_key
                else ""
            )
            raise PauseDestination(f"HubSpot {self.credential} was refused ({status} {category}){hint}")
        if status == 403:
            # a scope covers one kind of call: the other kinds (another sender) may still work
            scope = SCOPES.get(operation, "the scope this call needs")
            raise PauseSender(
                f"HubSpot refused the {self.credential} for the {operation} ({status} {error.category or 'FORBIDDEN'}): "
                f"the private app is missing a scope; grant it {scope}"
            )
        if status == 429:
            policy = str(error.body.get("policyName") or "")
            if policy == "DAILY":
                until = self.stop_for_the_day()
                raise RetryBatch(f"HubSpot daily request limit reached (429 DAILY); resumes at {_utc(until)}", until)
            wait = _seconds(headers.get("Retry-After"))
            if wait is None:
                interval = _int(headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"))
                if interval:
                    self.limiter.window = interval / 1000
                # the window is rolling: wait until our oldest request in it leaves (at least a tenth
                # of a window, for the difference between HubSpot's clock and ours), not a whole window
                wait = max(self.limiter.saturate(), self.limiter.window / 10)
            reason = f"rate limited by HubSpot (429 {policy or 'TOO_MANY_REQUESTS'})"
            self.limiter.pause_until(self.limiter.clock() + wait, reason)
            log.warning("destination %s: %s; pausing requests for %.3gs", self.destination, reason, wait)
            raise RetryBatch(reason, now + wait)
        if status == 423:
            raise RetryBatch(f"HubSpot locked the records (423 {error.category or 'LOCKED'})", now + LOCKED_WAIT)
        if status == 477:
            wait = _seconds(headers.get("Retry-After"))
            wait = MIGRATION_WAIT if wait is None else wait
            raise RetryBatch(f"HubSpot account is migrating (477); retry after {wait:g}s", now + wait)
        if status >= 500 or status == 408:
            raise RetryBatch(f"HubSpot answered {status} {error.category}".rstrip())

    # -- the legacy tracker ----------------------------------------------------------------

    async def track(self, query: str) -> int:
        """GET {track_base}/v1/event?<query> (already encoded). No auth, not under the API limits."""
        url = URL(f"{self.track_base}/v1/event?{query}", encoded=True)
        async with self.http.get(url, timeout=self.timeout) as resp:
            await resp.read()
            return resp.status

    # -- limits ----------------------------------------------------------------------------

    def _observe(self, headers: Mapping[str, str]) -> None:
        """Correct the shared limiter from HubSpot's X-HubSpot-RateLimit-* headers."""
        remaining = _int(headers.get("X-HubSpot-RateLimit-Remaining"))
        if remaining is not None:
            interval = _int(headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"))
            maximum = _int(headers.get("X-HubSpot-RateLimit-Max"))
            if maximum is not None and maximum > self.limiter.limit:
                # we were told to use less than the account's budget: keep our share
                remaining -= maximum - self.limiter.limit
            self.limiter.observe_remaining(remaining, interval / 1000 if interval else None)
        daily_remaining = _int(headers.get("X-HubSpot-RateLimit-Daily-Remaining"))
        if daily_remaining is not None and daily_remaining <= 0:
            self.stop_for_the_day()

    def _count_daily(self) -> None:
        now = self.wall_clock()
        if now >= self._day_start + 86400:
            self._day_start = self._last_reset(now)
            self._day_count = 0
        self._day_count += 1
        if self._day_count >= self.config.daily_limit:
            self.stop_for_the_day()

    def stop_for_the_day(self) -> float:
        """Send nothing until the daily allowance starts again; returns that wall-clock time."""
        now = self.wall_clock()
        until = self._last_reset(now) + 86400
        if until > self.daily_until:
            self.daily_until = until
            log.error(
                "destination %s: HubSpot daily request limit reached; sending again at %s (events keep queueing)",
                self.destination, _utc(until),
            )
        self.limiter.pause_until(self.limiter.clock() + (until - now), f"daily limit reached until {_utc(until)}")
        return until

    def _last_reset(self, now: float) -> float:
        day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        reset = day.timestamp() + self.config.daily_reset.seconds
        return reset if reset <= now else reset - 86400

    @property
    def daily_limit_reached(self) -> bool:
        return self.wall_clock() < self.daily_until


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    """``Retry-After`` in seconds (HubSpot sends seconds; dates are not expected)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or seconds < 0 else seconds


def _utc(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
