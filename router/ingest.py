"""Jitsu classic Events API ingest: authenticate, parse, enrich, route, commit, answer.

An event is answered 200 only after the queue committed it. Client mistakes get a 4xx with a JSON
reason; 503 means the queue cannot accept right now; nothing else.
"""

from __future__ import annotations

import base64
import datetime
import fnmatch
import ipaddress
import logging
import os
import uuid
import zlib
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import attrs
import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from router.config import ApiKey, RouterConfig
from router.metrics import Metrics
from router.queue import NewEvent, Queue, QueueFull

log = logging.getLogger(__name__)


MAX_BODY = web.AppKey("max_body_bytes", int)


class IngestError(Exception):
    """A client's mistake: answered with ``status`` and a JSON reason."""

    def __init__(self, status: int, reason: str, metric: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.metric = metric


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"status": "error", "reason": reason}, status=status, headers=headers)


@attrs.frozen
class Token:
    key: ApiKey
    kind: str  # "client" (browser) or "server"


class Ingest:
    """The ingest handlers of one router, with the key index and routing table built once."""

    def __init__(self, config: RouterConfig, queue: Queue, metrics: Metrics) -> None:
        self.config = config
        self.queue = queue
        self.metrics = metrics
        self.tokens: dict[str, Token] = {}
        for key in config.api_keys:
            if key.server_secret:
                self.tokens[key.server_secret.get()] = Token(key, "server")
            if key.client_secret:
                self.tokens.setdefault(key.client_secret.get(), Token(key, "client"))
        self.routes: dict[str, tuple[str, ...]] = {}
        for key in config.api_keys:
            names = {key.id}
            names.update(s.get() for s in (key.client_secret, key.server_secret) if s)
            self.routes[key.id] = tuple(
                name
                for name, dest in config.destinations.items()
                if not dest.only_tokens or names.intersection(dest.only_tokens)
            )
        # one metric child per key, looked up once rather than per request
        self._received = {key.id: metrics.received.labels(key.id) for key in config.api_keys}
        self.trusted = [ipaddress.ip_network(p, strict=False) for p in config.server.trusted_proxies]
        self.accepting = True

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        for path in ("/api/v1/event", "/api/v1/events"):
            r.add_post(path, self.browser_event)
            r.add_route("OPTIONS", path, self.preflight)
        for path in ("/api/v1/s2s/event", "/api/v1/s2s/events"):
            r.add_post(path, self.server_event)
        r.add_post("/api/v1/events/bulk", self.bulk)
        r.add_get("/api/v1/p.gif", self.pixel)
        r.add_post(r"/api.{tail:[^/]+}", self.browser_event)
        r.add_route("OPTIONS", r"/api.{tail:[^/]+}", self.preflight)

    # -- handlers -------------------------------------------------------------------------

    async def browser_event(self, request: web.Request) -> web.StreamResponse:
        cors: dict[str, str] = {}
        try:
            token = self._authenticate(request, server_only=False)
            cors = self._cors_headers(request, token)
            events = parse_events(await read_body(request))
            return await self._accept(request, token, events, src="jitsu", headers=cors)
        except IngestError as exc:
            return self._refuse(exc, cors)

    async def server_event(self, request: web.Request) -> web.StreamResponse:
        try:
            token = self._authenticate(request, server_only=True)
            events = parse_events(await read_body(request))
            return await self._accept(request, token, events, src="api")
        except IngestError as exc:
            return self._refuse(exc)

    async def bulk(self, request: web.Request) -> web.StreamResponse:
        try:
            token = self._authenticate(request, server_only=True)
            events = parse_ndjson(await _read_bulk_body(request))
            return await self._accept(request, token, events, src="api")
        except IngestError as exc:
            return self._refuse(exc)

    async def pixel(self, request: web.Request) -> web.StreamResponse:
        try:
            data = request.query.get("data", "")
            try:
                raw = base64.b64decode(data + "=" * (-len(data) % 4), altchars=b"-_" if "-" in data or "_" in data else None)
            except ValueError:
                raise IngestError(400, "data is not base64", "bad_pixel") from None
            events = parse_events(raw)
            token = self._authenticate(request, server_only=False, fallback=events[0].get("api_key"))
            stored = await self._accept(request, token, events, src="jitsu")
            if stored.status != 200:  # not stored (503): never a 200 the client would take as kept
                return stored
        except IngestError as exc:
            return self._refuse(exc)
        return web.Response(body=_GIF, content_type="image/gif", headers={"Cache-Control": "no-store"})

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        token = self._find_token(request)
        keys = [token.key] if token else [t.key for t in self.tokens.values() if t.kind == "client"]
        if origin is None or not any(origin_allowed(origin, k.origins) for k in keys):
            self.metrics.ingest_errors.labels("origin_refused").inc()
            return error_response(403, "origin not allowed")
        return web.Response(status=204, headers=self._cors_for(origin, request))

    # -- steps ----------------------------------------------------------------------------

    def _find_token(self, request: web.Request, fallback: Any = None) -> Token | None:
        for value in _token_candidates(request, fallback):
            token = self.tokens.get(value)
            if token is not None:
                return token
        return None

    def _authenticate(self, request: web.Request, *, server_only: bool, fallback: Any = None) -> Token:
        if not self.accepting:
            raise IngestError(503, "the router is shutting down", "shutting_down")
        token, seen = None, False
        for value in _token_candidates(request, fallback):
            seen = True
            if (token := self.tokens.get(value)) is not None:
                break
        if not seen:
            raise IngestError(401, "missing token: pass ?token=, X-Auth-Token or api_key", "no_token")
        if token is None:
            raise IngestError(401, "unknown token", "bad_token")
        if server_only and token.kind != "server":
            raise IngestError(
                401,
                "this is a browser key (client_secret); server-to-server endpoints need a server_secret",
                "browser_key_on_s2s",
            )
        return token

    def _cors_headers(self, request: web.Request, token: Token) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if origin is None:
            return {}
        if token.kind == "client" and not origin_allowed(origin, token.key.origins):
            raise IngestError(403, "origin not allowed for this key", "origin_refused")
        return self._cors_for(origin, request)

    @staticmethod
    def _cors_for(origin: str, request: web.Request) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Allow-Methods": "POST, GET, OPTIONS",
            "Access-Control-Allow-Headers": request.headers.get(
                "Access-Control-Request-Headers", "Content-Type, X-Auth-Token"
            ),
            "Access-Control-Max-Age": "86400",
            "Vary": "Origin",
        }

    def _refuse(self, exc: IngestError, headers: dict[str, str] | None = None) -> web.Response:
        self.metrics.ingest_errors.labels(exc.metric).inc()
        return error_response(exc.status, exc.reason, headers)

    async def _accept(
        self, request: web.Request, token: Token, events: list[dict[str, Any]], *, src: str,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        ip = self._client_ip(request)
        agent = _clean(request.headers.get("User-Agent"))
        destinations = self.routes.get(token.key.id, ())
        batch = []
        ids = random_ids(len(events))
        for i, event in enumerate(events):
            dedup_id = enrich(event, token.key.id, now=now, ip=ip, user_agent=agent, src=src, new_id=ids)
            try:
                payload = orjson.dumps(event)
            except TypeError as exc:  # orjson refuses what it cannot write back
                if "recursion" in str(exc).lower():
                    raise IngestError(400, f"event {i} is nested too deeply to store (254 levels)", "too_deep") from None
                raise IngestError(400, f"event {i} cannot be stored: {exc}", "invalid_event") from None
            batch.append(
                NewEvent(
                    payload=payload,
                    destinations=destinations,
                    dedup_id=f"{token.key.id}:{dedup_id}" if dedup_id else None,
                )
            )
        # the stored form is the bytes: free the parsed events now rather than after the commit
        # (a wave of big arrays would otherwise keep thousands of dicts alive for the collector)
        events.clear()
        try:
            duplicates = await self.queue.append(batch)
        except QueueFull as exc:
            self.metrics.ingest_errors.labels("queue_unavailable").inc()
            log.error("refusing %d events: %s", len(batch), exc)
            return error_response(503, f"cannot store events now: {exc}", {**(headers or {}), "Retry-After": "5"})
        self._received[token.key.id].inc(len(batch) - duplicates)
        if duplicates:
            self.metrics.duplicates.inc(duplicates)
        if not destinations:
            self.metrics.skipped.labels("", "no destination for this api key").inc(len(batch) - duplicates)
        return web.Response(body=_OK, content_type="application/json", headers=headers)

    def _client_ip(self, request: web.Request) -> str:
        remote = request.remote or ""
        if self.trusted and _in_networks(remote, self.trusted):
            forwarded = _clean(request.headers.get("X-Forwarded-For"))
            if forwarded:
                return forwarded.split(",")[0].strip()
            real = _clean(request.headers.get("X-Real-IP"))
            if real:
                return real.strip()
        return remote


_OK = b'{"status":"ok"}'


def _token_candidates(request: web.Request, fallback: Any = None) -> Iterable[str]:
    """Jitsu's lookup order: ?token=, X-Auth-Token, api_key header, any ?p_*, basic-auth user."""
    query = request.query
    if query.get("token"):
        yield query["token"]
    for header in ("X-Auth-Token", "api_key", "Api-Key"):
        if request.headers.get(header):
            yield request.headers[header]
    for name, value in query.items():
        if name.startswith("p_") and value:
            yield value
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user = base64.b64decode(auth[6:].strip()).decode().split(":", 1)[0]
        except ValueError:
            user = ""
        if user:
            yield user
    if isinstance(fallback, str) and fallback:
        yield fallback


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """One JSON object or an array of objects, whatever the content type says."""
    if not body.strip():
        raise IngestError(400, "empty body: expected a JSON object or an array of objects", "empty_body")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, f"invalid JSON: {exc}", "invalid_json") from None
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        if not data:
            raise IngestError(400, "empty array: no events", "empty_body")
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise IngestError(400, f"event {i} is not a JSON object", "not_an_object")
        return data
    raise IngestError(400, "expected a JSON object or an array of objects", "not_an_object")


def parse_ndjson(body: bytes) -> list[dict[str, Any]]:
    events = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise IngestError(400, f"line {number}: invalid JSON: {exc}", "invalid_json") from None
        if not isinstance(item, dict):
            raise IngestError(400, f"line {number}: not a JSON object", "not_an_object")
        events.append(item)
    if not events:
        raise IngestError(400, "no events in the upload", "empty_body")
    return events


def _clean(header: str | None) -> str | None:
    """A header as valid text: bytes that are not UTF-8 become U+FFFD instead of breaking the event."""
    if header is None:
        return None
    return header.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def read_body(request: web.Request) -> bytes:
    """The request body, decoded per its Content-Encoding (gzip, deflate); the rest is refused."""
    try:
        raw = await request.read()
    except web.RequestPayloadError as exc:
        raise IngestError(400, f"the body could not be read: {str(exc).splitlines()[-1].strip()}", "bad_body") from None
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise IngestError(415, f"Content-Encoding {encoding!r} is not supported (use gzip or deflate)", "bad_encoding")
    limit = request.app[MAX_BODY] * 50
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else (zlib.MAX_WBITS if raw[:1] == b"\x78" else -zlib.MAX_WBITS)
    try:
        return _inflate(raw, limit, wbits)
    except (zlib.error, OSError):
        raise IngestError(400, f"the body is not valid {encoding}", "bad_body") from None


async def _read_bulk_body(request: web.Request) -> bytes:
    limit = request.app[MAX_BODY]
    if request.content_type.startswith("multipart/"):
        data = await _read_file_part(request)
    else:
        data = await read_body(request)
    # a transport Content-Encoding was already undone by read_body; this is a gzipped file
    if data[:2] == b"\x1f\x8b":
        try:
            data = _inflate(data, limit * 50, 16 + zlib.MAX_WBITS)
        except (OSError, zlib.error):
            raise IngestError(400, "the upload is not valid gzip", "invalid_gzip") from None
    return data


async def _read_file_part(request: web.Request) -> bytes:
    """The first file field of a multipart upload."""
    try:
        reader = await request.multipart()
        async for part in reader:
            if isinstance(part, BodyPartReader) and (part.filename or part.name in ("file", "events")):
                data = bytes(await part.read(decode=True))
                if data:
                    return data
    except (
        ValueError, AssertionError, RuntimeError, LookupError, OSError, zlib.error, HttpProcessingError,
        web.RequestPayloadError,
    ) as exc:
        raise IngestError(400, f"malformed multipart upload ({type(exc).__name__})", "bad_multipart") from None
    raise IngestError(400, "multipart upload without a file field", "empty_body")


def _inflate(data: bytes, limit: int, wbits: int) -> bytes:
    """Decompress at most ``limit`` bytes (a zip bomb gets 413, not all our memory). A gzip body
    may hold several members one after another; each is read."""
    out = b""
    while True:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise IngestError(413, f"the decompressed body is over {limit} bytes", "too_large")
        if not inflater.eof:
            raise OSError("truncated")
        data = inflater.unused_data
        if not data:
            return out
        if wbits != 16 + zlib.MAX_WBITS:
            raise OSError("trailing bytes after the compressed body")


def _first_id(event: dict[str, Any]) -> str:
    ctx = event.get("eventn_ctx")
    for value in (
        ctx.get("event_id") if isinstance(ctx, dict) else None,
        event.get("eventn_ctx_event_id"),
        event.get("event_id"),
    ):
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return ""


def enrich(
    event: dict[str, Any], key_id: str, *, now: str, ip: str, user_agent: str | None, src: str,
    new_id: Iterator[str] | None = None,
) -> str:
    """Add the server-side fields in place (``now``: the receive time, ISO 8601 UTC; ``new_id``
    gives the id of an event that has none). Returns the client-supplied event id, or ""."""
    client_id = _first_id(event)
    event["eventn_ctx_event_id"] = client_id or (next(new_id) if new_id is not None else str(uuid.uuid4()))
    if not event.get("_timestamp"):
        event["_timestamp"] = now
    if not event.get("source_ip") and ip:
        event["source_ip"] = ip
    if user_agent:
        ctx = event.get("eventn_ctx")
        if isinstance(ctx, dict):
            ctx.setdefault("user_agent", user_agent)
        else:
            event.setdefault("user_agent", user_agent)
    # the id of the key, never the secret the client sent
    event["api_key"] = key_id
    if not event.get("src"):
        event["src"] = src
    return client_id


class _Randomness:
    """Bytes from the system's CSPRNG, read 64 KiB at a time. The read is a system call that costs
    several microseconds here; one per event (``uuid.uuid4()``) was a tenth of the ingest time."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the buffer (a forked child must not hand out its parent's ids)."""
        self._buffer = b""
        self._used = 0

    def take(self, n: int) -> bytes:
        if self._used + n > len(self._buffer):
            self._buffer = os.urandom(max(n, 65536))
            self._used = 0
        start, self._used = self._used, self._used + n
        return self._buffer[start : self._used]


_randomness = _Randomness()
os.register_at_fork(after_in_child=_randomness.reset)


def random_ids(n: int) -> Iterator[str]:
    """``n`` random (version 4) UUIDs; nothing is read until the first is asked for."""
    raw = _randomness.take(16 * n).hex()
    for i in range(0, 32 * n, 32):
        h = raw[i : i + 32]
        yield f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: the RFC 4122 variant bits (10xx) in the first hex digit of the fourth group
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def origin_allowed(origin: str, patterns: list[str]) -> bool:
    """An empty list allows every origin; patterns match the host (``*.example.com``) or the whole origin."""
    if not patterns:
        return True
    try:
        host = urlsplit(origin).hostname or origin
    except ValueError:  # not a URL at all
        return False
    for pattern in patterns:
        target = origin if "://" in pattern else host
        if pattern == "*" or fnmatch.fnmatchcase(target, pattern):
            return True
        if pattern.startswith("*.") and host == pattern[2:]:
            return True
    return False


def _in_networks(address: str, networks: list[Any]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


_GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
