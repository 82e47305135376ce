"""Shared parts of the reliability suites (tests/test_reliability_*.py).

- :func:`router_config`: a complete config as YAML text, every part overridable.
- :class:`ScriptedReceiver`: the conftest Receiver plus slowness, a gate that holds requests, custom
  answers (e.g. echo the request headers) and counters one can wait on.
- :class:`LoadGenerator`: concurrent Jitsu clients (single events and arrays, unique ids) that record
  exactly which event ids the router acknowledged with 200.
- :class:`ThreadedRouter`: an in-process router and receiver on their own event loop in a background
  thread, driven by plain synchronous calls (for Hypothesis tests).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import threading
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import attrs
import orjson
import yaml
from aiohttp import web

from router.config import parse_config
from router.registry import PluginManager
from tests.conftest import Receiver, RunningRouter, poll_until

CLIENT = "js.reliability.client.1"
SERVER = "s2s.reliability.server.1"
ADMIN = "admin.reliability.1"


def router_config(
    tmp_path: Any,
    url: str,
    *,
    server: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
    api_keys: list[dict[str, Any]] | None = None,
    webhook: dict[str, Any] | None = None,
    delivery: dict[str, Any] | None = None,
    destination: dict[str, Any] | None = None,
) -> str:
    """One api key (``web``), one webhook destination ``hook`` with fast retries, as YAML text."""
    config = {
        "server": {"listen": "127.0.0.1:0", "admin_token": ADMIN, **(server or {})},
        "storage": {"path": str(tmp_path / "data"), **(storage or {})},
        "api_keys": api_keys
        if api_keys is not None
        else [{"id": "web", "client_secret": CLIENT, "server_secret": SERVER, "origins": ["*.example.com"]}],
        "destinations": {
            "hook": {
                "type": "webhook",
                "config": {"url": url, **(webhook or {})},
                "delivery": {"linger": 0, "initial_backoff": 0.01, "max_backoff": 0.05, **(delivery or {})},
                **(destination or {}),
            }
        },
    }
    return yaml.safe_dump(config, sort_keys=False)


class ScriptedReceiver(Receiver):
    """The conftest receiver with more scripts.

    - ``delay``: seconds each request takes before it is answered (a slow destination);
    - ``gate``: while cleared, requests wait for it (a destination that hangs); ``open()`` releases them;
    - ``answer``: ``(status, body_fn)``: answer every request with ``status`` and ``body_fn(request)``;
    - counters ``started``, ``inflight``, ``failed`` and :meth:`wait_until` to wait on them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.delay = 0.0
        self.gate = asyncio.Event()
        self.gate.set()
        self._wake = asyncio.Event()
        self.answer: tuple[int, Callable[[web.Request], Any]] | None = None
        self.started = 0
        self.inflight = 0
        self.failed = 0
        self._activity = asyncio.Condition()

    async def _touch(self) -> None:
        async with self._activity:
            self._activity.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        async def until() -> None:
            async with self._activity:
                await self._activity.wait_for(predicate)

        await asyncio.wait_for(until(), timeout)

    def open(self) -> None:
        """Release every held or slow request now (and keep answering at once)."""
        self.delay = 0.0
        self._wake.set()
        self.gate.set()

    async def handle(self, request: web.Request) -> web.Response:
        self.started += 1
        self.inflight += 1
        await self._touch()
        try:
            if self.delay and not self._wake.is_set():
                # a slow destination; wakes early once the test opens up (e.g. at teardown)
                try:
                    await asyncio.wait_for(self._wake.wait(), self.delay)
                except TimeoutError:
                    pass
            await self.gate.wait()
            if self.answer is not None:
                status, body_fn = self.answer
                body = await request.read()
                self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
                self.failed += 1
                return web.json_response(body_fn(request), status=status)
            response = await super().handle(request)
            if response.status >= 300:
                self.failed += 1
            return response
        finally:
            self.inflight -= 1
            await self._touch()

    def duplicates(self) -> int:
        ids = self.ids()
        return len(ids) - len(set(ids))


class LoadGenerator:
    """``concurrency`` clients posting single events and arrays with unique ids until stopped.

    Records every id acknowledged with 200 (``acked``) and every id sent (``sent``). A request that
    fails with a connection error (the router was killed or stopped) is simply not acknowledged; a
    refused connection ends that client (there is no server any more).
    """

    def __init__(
        self,
        url: str,
        rng: random.Random,
        *,
        prefix: str,
        concurrency: int = 20,
        max_array: int = 20,
        array_share: float = 0.4,
        token: str = CLIENT,
        max_requests: int | None = None,
    ) -> None:
        self.url = url
        self.rng = rng
        self.prefix = prefix
        self.concurrency = concurrency
        self.max_array = max_array
        self.array_share = array_share
        self.token = token
        self.max_requests = max_requests
        self.acked: set[str] = set()
        self.sent: set[str] = set()
        self.requests_sent = 0
        self.requests_acked = 0
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.refusals: list[tuple[int, str]] = []
        self._ids = itertools.count()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._activity = asyncio.Condition()

    def _payload(self) -> tuple[list[str], bytes, str]:
        if self.rng.random() < self.array_share:
            ids = [f"{self.prefix}{next(self._ids)}" for _ in range(self.rng.randint(1, self.max_array))]
            events = [{"event_type": "load", "event_id": i, "user": {"anonymous_id": i}} for i in ids]
            return ids, orjson.dumps(events), "/api/v1/events"
        event_id = f"{self.prefix}{next(self._ids)}"
        return [event_id], orjson.dumps({"event_type": "load", "event_id": event_id}), "/api/v1/event"

    async def _client(self, session: aiohttp.ClientSession) -> None:
        while not self._stopping:
            if self.max_requests is not None and self.requests_sent >= self.max_requests:
                return
            ids, body, path = self._payload()
            self.sent.update(ids)
            self.requests_sent += 1
            await self._touch()
            try:
                async with session.post(
                    f"{self.url}{path}?token={self.token}", data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    text = await resp.text()
                    self.statuses[resp.status] += 1
                    if resp.status == 200:
                        self.acked.update(ids)
                        self.requests_acked += 1
                    else:
                        self.refusals.append((resp.status, text))
            except aiohttp.ClientConnectorError:
                self.errors["refused"] += 1
                return  # nobody listens any more
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.errors[type(exc).__name__] += 1
            await self._touch()

    async def _touch(self) -> None:
        async with self._activity:
            self._activity.notify_all()

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=30)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self._client(session) for _ in range(self.concurrency)))

    def start(self) -> LoadGenerator:
        self._task = asyncio.create_task(self._run(), name="load-generator")
        return self

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        async def until() -> None:
            async with self._activity:
                await self._activity.wait_for(lambda: predicate() or self._task is None or self._task.done())

        await asyncio.wait_for(until(), timeout)
        if self._task is not None and self._task.done() and not predicate():
            self._task.result()  # raise what ended it
            raise AssertionError("the load generator ended before the condition held")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            await self._task

    def server_errors(self) -> list[tuple[int, str]]:
        return [(s, t) for s, t in self.refusals if s >= 500 and s != 503]


async def wait_for_ids(receiver: Receiver, wanted: set[str], timeout: float) -> set[str]:
    """Wait until every wanted id reached the receiver; return the ids still missing at the deadline."""
    try:
        await receiver.wait_for_ids(wanted, timeout=timeout)
    except TimeoutError:
        pass
    return wanted - set(receiver.ids())


@attrs.frozen
class Answer:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return orjson.loads(self.body)


class ThreadedRouter:
    """An in-process router (its own aiohttp server on a loopback port) and a receiver, running on an
    event loop in a background thread; synchronous methods drive them (for Hypothesis ``@given``)."""

    def __init__(self, config: Callable[[str], str], *, env: dict[str, str] | None = None) -> None:
        self._make_config = config
        self._env = env or {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="threaded-router", daemon=True)
        self.receiver: ScriptedReceiver | None = None
        self.running: RunningRouter | None = None
        self.session: aiohttp.ClientSession | None = None
        self.url = ""
        self.config_text = ""

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ThreadedRouter:
        self._thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.receiver = ScriptedReceiver()
        await self.receiver.start()
        self.config_text = self._make_config(self.receiver.url)
        plugins = PluginManager()
        config = parse_config(self.config_text, plugins, env=self._env)
        self.running = RunningRouter(config, plugins)
        await self.running.start()
        self.url = self.running.url
        # a fresh connection per request: a refused request may legitimately close its connection
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=60)
        )

    def stop(self) -> None:
        if self._thread.is_alive():
            try:
                self.call(self._stop())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(30)
        self.loop.close()

    async def _stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.running is not None:
            await self.running.stop()
        if self.receiver is not None:
            self.receiver.open()
            await self.receiver.stop()

    # -- requests -------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        data: Any = None,
        headers: dict[str, str] | None = None,
        params: Any = None,
        skip_auto_headers: tuple[str, ...] = (),
    ) -> Answer:
        return self.call(self._request(method, path, data, headers, params, skip_auto_headers))

    async def _request(
        self, method: str, path: str, data: Any, headers: Any, params: Any, skip: tuple[str, ...]
    ) -> Answer:
        assert self.session is not None
        async with self.session.request(
            method, self.url + path, data=data, headers=headers, params=params, skip_auto_headers=skip
        ) as resp:
            body = await resp.read()
            return Answer(resp.status, resp.content_type, body, dict(resp.headers))

    def raw(self, request: bytes) -> Answer:
        """Send bytes as they are (e.g. header values that are not UTF-8, which aiohttp's client
        would not send) on a fresh connection; read the answer until the server closes."""
        return self.call(self._raw(request))

    async def _raw(self, request: bytes) -> Answer:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        content_type = headers.get("Content-Type", "").split(";")[0].strip()
        return Answer(int(lines[0].split()[1]), content_type, body, headers)

    def post(self, path: str, data: Any = None, **kw: Any) -> Answer:
        return self.request("POST", path, data=data, **kw)

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    # -- checks ---------------------------------------------------------------------------

    def drain(self) -> None:
        assert self.running is not None
        self.call(self.running.drain())

    def received(self) -> list[dict[str, Any]]:
        assert self.receiver is not None
        return list(self.receiver.events)

    def wait_for_ids(self, ids: set[str], timeout: float = 30) -> set[str]:
        assert self.receiver is not None
        return self.call(wait_for_ids(self.receiver, ids, timeout), timeout + 5)

    def settle(self, ids: set[str], timeout: float = 30) -> tuple[set[str], dict[str, str]]:
        """Wait until each id was delivered or dead-lettered. Returns (delivered, {dead id: reason})."""
        return self.call(self._settle(ids, timeout), timeout + 5)

    async def _settle(self, ids: set[str], timeout: float) -> tuple[set[str], dict[str, str]]:
        assert self.running is not None and self.receiver is not None
        queue = self.running.router.queue
        dead: dict[str, str] = {}

        async def settled() -> bool:
            dead.clear()
            for letter in await queue.dead_letters("hook", limit=10_000):
                dead[str(orjson.loads(letter.payload).get("eventn_ctx_event_id"))] = letter.reason
            return ids <= set(self.receiver.ids()) | set(dead)  # type: ignore[union-attr]

        await poll_until(settled, timeout=timeout)
        return ids & set(self.receiver.ids()), {k: v for k, v in dead.items() if k in ids}

    def metric(self, name: str, **labels: str) -> float:
        assert self.running is not None
        return self.call(self.running.metric(name, **labels))


def short(value: Any, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def assert_error_answer(answer: Answer, context: Any = "") -> None:
    """Never a 5xx; a 4xx is JSON with a non-empty reason."""
    assert answer.status < 500, f"{answer.status} {answer.body[:300]!r} for {short(context)}"
    if answer.status >= 400:
        assert answer.content_type == "application/json", (
            f"{answer.status} answered {answer.content_type} {answer.body[:300]!r} for {short(context)}"
        )
        body = answer.json()
        assert isinstance(body, dict) and isinstance(body.get("reason"), str) and body["reason"].strip(), (
            f"{answer.status} without a reason: {answer.body[:300]!r} for {short(context)}"
        )
