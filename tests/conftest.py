"""Shared test parts: a real receiving server, the router in-process or as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from router.app import ROUTER, Router, build_app
from router.config import RouterConfig, parse_config
from router.registry import PluginManager

ROUTER_BIN = os.path.join(os.path.dirname(sys.executable), "router")


async def poll_until(check: Callable[[], Any], timeout: float = 20, interval: float = 0.05) -> None:
    """For state in another process, where no event can be awaited: ask until yes, bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"{check.__name__} still false after {timeout}s")
        await asyncio.sleep(interval)


class Receiver:
    """A webhook receiver on a loopback port 0, scriptable: fail the first N requests, or all."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.fail_first = 0
        self.fail_status = 503
        self.always_status: int | None = None
        self.retry_after: str | None = None
        #: answer the first N requests only after this many seconds (past a router's timeout)
        self.slow_first = 0
        self.slow_seconds = 0.0
        self._changed = asyncio.Condition()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append({"path": request.path, "headers": dict(request.headers), "body": body})
        if self.slow_first > 0:
            self.slow_first -= 1
            await asyncio.sleep(self.slow_seconds)
        if self.always_status is not None:
            return web.json_response({"error": "refused by test receiver"}, status=self.always_status)
        if self.fail_first > 0:
            self.fail_first -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after else None
            return web.json_response({"error": "failing on purpose"}, status=self.fail_status, headers=headers)
        data = orjson.loads(body)
        async with self._changed:
            self.events.extend(data if isinstance(data, list) else [data])
            self._changed.notify_all()
        return web.json_response({"ok": True})

    async def wait_for(self, count: int, timeout: float = 20) -> list[dict[str, Any]]:
        async def enough() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.events) >= count)

        await asyncio.wait_for(enough(), timeout)
        return self.events

    async def wait_for_ids(self, wanted: set[str], timeout: float = 30) -> None:
        """Until every wanted event id has arrived (duplicates allowed: delivery is at-least-once)."""

        async def all_there() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: wanted <= set(self.ids()))

        await asyncio.wait_for(all_there(), timeout)

    def ids(self) -> list[str]:
        return [e["eventn_ctx_event_id"] for e in self.events]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def receiver2() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


def webhook_config(tmp_path: Any, url: str, *, extra_dest: str = "", top: str = "", name: str = "hook") -> str:
    """A config with one api key and one webhook destination (fast retries for tests)."""
    return textwrap.dedent(
        f"""
        server:
          listen: 127.0.0.1:0
          admin_token: admin-secret-1
        storage:
          path: {tmp_path}/data
        api_keys:
          - id: web
            client_secret: js.secret.1
            server_secret: s2s.secret.1
            origins: ["*.example.com"]
        destinations:
          {name}:
            type: webhook
            config:
              url: {url}
            delivery:
              linger: 0
              initial_backoff: 0.01
              max_backoff: 0.05
        """
    ) + textwrap.dedent(extra_dest) + textwrap.dedent(top)


class RunningRouter:
    """The router's own HTTP server, in this process, on a free port."""

    def __init__(self, config: RouterConfig, plugins: PluginManager) -> None:
        self.app = build_app(config, plugins)
        self.router: Router = self.app[ROUTER]
        self.runner = web.AppRunner(self.app, access_log=None)
        self.url = ""
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        self.session = aiohttp.ClientSession()

    async def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        assert self.session is not None
        data = kw.pop("data", None)
        if data is None and body is not None:
            data = orjson.dumps(body)
        async with self.session.post(self.url + path, data=data, **kw) as resp:
            text = await resp.text()
            try:
                return resp.status, orjson.loads(text)
            except orjson.JSONDecodeError:
                return resp.status, text

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.get(self.url + path, **kw) as resp:
            text = await resp.text()
            try:
                return resp.status, orjson.loads(text)
            except orjson.JSONDecodeError:
                return resp.status, text

    async def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics, read as a client would."""
        _, text = await self.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if sample == name or sample == f"{name}{{{want}}}":
                return float(value)
        return 0.0

    async def drain(self) -> None:
        await asyncio.wait_for(self.router.drain(), 30)

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()
        await self.runner.cleanup()


@pytest.fixture
async def start_router() -> AsyncIterator[Callable[..., Any]]:
    started: list[RunningRouter] = []

    async def start(config_text: str, *, extra_plugins: tuple[object, ...] = (), env: dict[str, str] | None = None) -> RunningRouter:
        plugins = PluginManager(extra_plugins)
        config = parse_config(config_text, plugins, env=env if env is not None else dict(os.environ))
        running = RunningRouter(config, plugins)
        await running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        await running.stop()


class RouterProcess:
    """``router run`` as a real subprocess; the port is read from its first line."""

    def __init__(self, config_path: str, env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.output: list[str] = []

    def start(self, timeout: float = 20) -> RouterProcess:
        self.proc = subprocess.Popen(
            [ROUTER_BIN, "run", "-c", self.config_path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=self.env,
        )
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("router exited before listening:\n" + "".join(self.output))
            self.output.append(line)
            match = re.search(r"router listening on (http://\S+)", line)
            if match:
                self.url = match.group(1)
                break
        import threading

        threading.Thread(target=self._pump, daemon=True).start()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def router_process() -> Any:
    started: list[RouterProcess] = []

    def start(config_path: str, env: dict[str, str] | None = None) -> RouterProcess:
        proc = RouterProcess(config_path, env).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()
