"""The ``router`` command: run, check, plugins, dlq, and the commands plugins add."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence

from aiohttp import web

from router.config import ConfigError, RouterConfig, load_config
from router.queue.sqlite import SQLiteQueue
from router.registry import PluginManager

log = logging.getLogger("router")


def main(argv: Sequence[str] | None = None) -> int:
    plugins = PluginManager()
    parser = build_parser(plugins)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    args.plugins = plugins
    return int(args.func(args) or 0)


def build_parser(plugins: PluginManager) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router", description="A durable, Jitsu-compatible event router.")
    parser.add_argument("--log-level", default=os.environ.get("ROUTER_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = sub.add_parser("run", help="run the router")
    run.add_argument("-c", "--config", required=True, help="the YAML config file")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config without starting anything")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(func=cmd_check)

    plug = sub.add_parser("plugins", help="list destination types and the packages that provide them")
    plug.set_defaults(func=cmd_plugins)

    dlq = sub.add_parser("dlq", help="dead letters: list, replay, purge")
    dlq_sub = dlq.add_subparsers(title="actions", metavar="ACTION", required=True)
    for action, helptext in (
        ("list", "show dead letters with their reasons"),
        ("replay", "put dead letters back in the queue; a running router delivers them"),
        ("purge", "delete dead letters"),
    ):
        p = dlq_sub.add_parser(action, help=helptext)
        p.add_argument("destination")
        p.add_argument("-c", "--config", required=True)
        if action == "list":
            p.add_argument("--limit", type=int, default=50)
        if action == "replay":
            p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                           help="then follow delivery for up to SECONDS, printing progress")
        p.set_defaults(func=cmd_dlq, action=action)

    plugins.hook.router_add_commands(subparsers=sub)
    return parser


def _load(args: argparse.Namespace) -> RouterConfig | None:
    try:
        return load_config(args.config, args.plugins)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) in {args.config}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    print(f"{args.config}: ok ({len(config.destinations)} destinations, {len(config.api_keys)} api keys)")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    types = args.plugins.destination_types()
    width = max((len(n) for n in types), default=4)
    for name, (dtype, provider) in sorted(types.items()):
        print(f"{name:<{width}}  {provider:<28}  {dtype.description}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    tune_gc()
    return asyncio.run(serve(config, args.plugins))


def tune_gc() -> None:
    """Collect garbage less often while serving: what was loaded at start is frozen out of every
    collection, and young collections come every 10,000 allocations rather than 700. Under
    load each request allocates hundreds of objects; with CPython's defaults the full
    collections they set off doubled the single-event p99 in bench/ingest.py (docs/benchmarks.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def serve(config: RouterConfig, plugins: PluginManager, ready: asyncio.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT: stop intake, finish commits, let sends finish, one summary line."""
    from router.app import ROUTER, build_app

    app = build_app(config, plugins)
    router = app[ROUTER]
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=5)
    await runner.setup()
    host, _, port = config.server.listen.rpartition(":")
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    actual = runner.addresses[0]
    # one line a supervisor (or a test) can wait for
    print(f"router listening on http://{actual[0]}:{actual[1]} "
          f"({len(config.destinations)} destinations, queue in {config.storage.path})", flush=True)
    log.info("destinations: %s", ", ".join(f"{n} ({d.type})" for n, d in config.destinations.items()) or "none")
    if ready is not None:
        ready.set()
    await stop.wait()
    started = time.monotonic()
    log.info("stopping: intake closed, finishing commits and in-flight sends (grace %gs)", config.server.shutdown_grace)
    router.ingest.accepting = False
    await runner.cleanup()
    received = sum(s.value for m in router.metrics.received.collect() for s in m.samples if s.name.endswith("_total"))
    delivered = sum(d.counts["delivered"] for d in router.dispatchers.values())
    pending = sum(router.queue.depth(n) for n in config.destinations)
    with contextlib.suppress(OSError):  # whoever read our output may be gone already
        print(f"router stopped in {time.monotonic() - started:.1f}s: received {int(received)}, delivered {delivered}, "
              f"{pending} waiting in the queue for the next start", flush=True)
    return 0


def cmd_dlq(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 2
    if args.destination not in config.destinations:
        print(f"no destination named {args.destination!r} in {args.config}", file=sys.stderr)
        return 2
    return asyncio.run(_dlq(config, args))


async def _dlq(config: RouterConfig, args: argparse.Namespace) -> int:
    # a router may be running on the same file: its leases are its own
    queue = SQLiteQueue(os.path.join(config.storage.path, "queue.sqlite3"), owner=False)
    await queue.open()
    try:
        name = args.destination
        if args.action == "list":
            letters = await queue.dead_letters(name, limit=args.limit)
            for dl in letters:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(dl.dead_at))
                print(f"{dl.id}\t{when}Z\tattempts={dl.attempts}\t{dl.reason}")
                if dl.last_response:
                    print(f"\tresponse: {dl.last_response[:500]}")
            total = (await queue.stats()).get(name)
            print(f"{total.dead_letters if total else 0} dead letters for {name}")
        elif args.action == "purge":
            print(f"purged {await queue.purge(name)} dead letters of {name}")
        else:
            total = (await queue.stats()).get(name)
            expected = total.dead_letters if total else 0
            moved = 0
            while True:
                n = await queue.replay(name, 1000)
                if not n:
                    break
                moved += n
                print(f"replayed {moved}/{expected}", flush=True)
            print(f"replayed {moved} dead letters of {name}; a running router delivers them now", flush=True)
            deadline = time.monotonic() + args.wait
            while args.wait and time.monotonic() < deadline:
                stats = (await queue.stats()).get(name)
                depth = stats.depth if stats else 0
                print(f"waiting: {depth} undelivered for {name}", flush=True)
                if depth == 0:
                    break
                await asyncio.sleep(1)
    finally:
        await queue.close()
    return 0
