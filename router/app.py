"""The router as an aiohttp application: queue, destinations and dispatchers as cleanup contexts,
plus the health, metrics and admin endpoints."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from router.config import RouterConfig
from router.destination import DestinationContext
from router.dispatcher import Dispatcher
from router.ingest import MAX_BODY, Ingest, error_response
from router.metrics import Metrics
from router.queue import Queue
from router.queue.sqlite import SQLiteQueue
from router.registry import PluginManager

log = logging.getLogger(__name__)


class Router:
    """Everything one running router owns. Reached from handlers through ``app[ROUTER]``."""

    def __init__(self, config: RouterConfig, plugins: PluginManager) -> None:
        self.config = config
        self.plugins = plugins
        self.metrics = Metrics()
        self.queue: Queue = SQLiteQueue(
            os.path.join(config.storage.path, "queue.sqlite3"),
            dedup_window=config.server.dedup_window,
            group_commit_window=config.storage.group_commit_window,
            max_depth=config.storage.max_depth,
            max_bytes=config.storage.max_bytes,
        )
        self.ingest = Ingest(config, self.queue, self.metrics)
        self.dispatchers: dict[str, Dispatcher] = {}
        self.started_at = time.time()

    def _notify(self, destinations: set[str]) -> None:
        for name in destinations:
            dispatcher = self.dispatchers.get(name)
            if dispatcher is not None:
                dispatcher.notify()

    async def queue_ctx(self, app: web.Application) -> AsyncIterator[None]:
        self.queue.on_append = self._notify
        self.queue.on_commit = lambda requests: self.metrics.commits.inc()
        await self.queue.open()
        yield
        self.ingest.accepting = False
        await self.queue.close()

    async def destinations_ctx(self, app: web.Application) -> AsyncIterator[None]:
        types = self.plugins.destination_types()
        sessions: list[aiohttp.ClientSession] = []
        tasks: list[asyncio.Task[None]] = []
        for name, dconf in self.config.destinations.items():
            dtype = types[dconf.type][0]
            session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
            sessions.append(session)
            context = DestinationContext(
                name=name, data_dir=os.path.join(self.config.storage.path, name), http=session,
                metrics_registry=self.metrics.registry, delivery=dconf.delivery,
            )
            destination = dtype.factory(dconf.config, context)
            dispatcher = Dispatcher(dconf, destination, self.queue, self.plugins.hook, self.metrics)
            self.dispatchers[name] = dispatcher
            tasks.append(asyncio.create_task(self._run_dispatcher(dispatcher), name=f"dispatcher-{name}"))
        yield
        self.ingest.accepting = False
        grace = self.config.server.shutdown_grace
        await asyncio.gather(*(d.stop(grace) for d in self.dispatchers.values()))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for dispatcher in self.dispatchers.values():
            try:
                await dispatcher.destination.close()
            except Exception:
                log.exception("destination %s: close failed", dispatcher.name)
        for session in sessions:
            await session.close()

    async def _run_dispatcher(self, dispatcher: Dispatcher) -> None:
        try:
            await dispatcher.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("destination %s: dispatcher crashed", dispatcher.name)
            dispatcher.state = "failed"

    async def drain(self) -> None:
        """Wait until every destination has nothing ready and nothing in flight."""
        for dispatcher in self.dispatchers.values():
            dispatcher.notify()
        await asyncio.gather(*(d.drain() for d in self.dispatchers.values()))

    # -- endpoints ------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        status = "ok" if self.ingest.accepting else "stopping"
        return web.json_response({"status": status, "uptime_seconds": round(time.time() - self.started_at, 1)})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        stats = await self.queue.stats(exact=False)
        self.metrics.set_queue_stats(list(self.config.destinations), stats)
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def destinations_status(self, request: web.Request) -> web.Response:
        admin = self.config.server.admin_token
        if not admin:
            return error_response(404, "admin endpoints are off: set server.admin_token")
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        given = given or request.headers.get("X-Admin-Token", "")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), admin.get().encode()):
            return error_response(401, "admin token required (Authorization: Bearer ...)")
        stats = await self.queue.stats(exact=False)
        now = time.time()
        out: dict[str, Any] = {}
        for name, dispatcher in self.dispatchers.items():
            s = stats.get(name)
            out[name] = {
                **dispatcher.status(),
                "depth": s.depth if s else 0,
                "oldest_age_seconds": round(now - s.oldest_received_at, 3) if s and s.oldest_received_at else 0,
                "dead_letters": s.dead_letters if s else 0,
            }
        return web.json_response({"destinations": out})


ROUTER = web.AppKey("router", Router)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every answer is JSON with a reason: aiohttp's own 4xx included; a 500 means our bug."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {413: "request body too large", 404: "no such endpoint", 405: "method not allowed"}.get(
            exc.status, exc.reason
        )
        if exc.status == 413:
            reason = f"request body too large (server.max_body_bytes is {request.app[MAX_BODY]})"
        return error_response(exc.status, reason)
    except Exception:
        log.exception("internal error handling %s %s", request.method, request.path)
        return error_response(500, "internal error")


def build_app(config: RouterConfig, plugins: PluginManager) -> web.Application:
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[json_errors],
        # tracking-pixel URLs carry the event: allow long request lines
        # and bodies are decoded by ingest itself, so a bad Content-Encoding gets a JSON answer
        handler_args={"max_line_size": 65536, "max_field_size": 16384, "auto_decompress": False},
    )
    router = Router(config, plugins)
    app[ROUTER] = router
    app[MAX_BODY] = config.server.max_body_bytes
    app.cleanup_ctx.append(router.queue_ctx)
    app.cleanup_ctx.append(router.destinations_ctx)
    router.ingest.add_routes(app)
    app.router.add_get("/health", router.health)
    app.router.add_get("/metrics", router.metrics_endpoint)
    app.router.add_get("/api/v1/destinations", router.destinations_status)
    return app
