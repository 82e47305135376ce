"""HubSpot request efficiency: requests per 1,000 identifies / events, and the 429 share under a rate limit.

The real router (in-process, SQLite queue in a temp dir) delivers to the HubSpot emulator on
loopback; the emulator counts every request it gets.

    .venv/bin/python bench/hubspot_efficiency.py [--events 1000] [--backlog 50000] [--window 10]
        [--ceiling-apis v3]

Scenarios:
- backlog: every event is queued in one ingest request before delivery catches up (a restart, an
  outage, a bulk import): the batching ceiling.
- trickle: one event per ingest request from 20 concurrent clients, the default 200 ms linger of
  configs/hubspot.yaml: what a live site gets.
- 429 share (P3): a backlog of 50,000 identifies against an emulator allowing 100 requests per
  10 s in real time (about a minute): v3 batch upserts, 500 requests at the ceiling.
  `--window 0.2` compresses the window 50x on both sides; `--ceiling-apis v1` makes one request
  per identify (use it with a smaller backlog: 5,000 v1 identifies are 8 minutes real time).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import textwrap
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugins.hubspot.emulator import Emulator, serve
from router.app import ROUTER, build_app
from router.config import parse_config
from router.registry import PluginManager

TOKEN = "pat-bench-0000"
HUB_ID = "20546336"
API_PREFIXES = ("/crm/", "/contacts/", "/events/", "/properties/")
CATALOG = ("/crm/v3/properties/contacts", "/properties/v1/contacts/properties")


def config_text(data: str, url: str, *, contacts_api: str, events_api: str, linger: str, rate: str) -> str:
    return textwrap.dedent(
        f"""
        server: {{listen: "127.0.0.1:0", shutdown_grace: 1s}}
        storage: {{path: "{data}"}}
        api_keys: [{{id: bench, server_secret: s2s.bench}}]
        destinations:
          hs:
            type: hubspot
            hubspot:
              access_token: {TOKEN}
              hub_id: "{HUB_ID}"
              api_base: {url}
              track_base: {url}
              contacts_api: {contacts_api}
              events_api: {events_api}
              {rate}
            delivery: {{batch_size: 500, linger: {linger}, initial_backoff: 50ms, max_backoff: 2s}}
        """
    )


def identify(i: int) -> dict[str, Any]:
    return {"event_type": "user_identify",
            "user": {"email": f"user{i}@example.com", "firstname": f"User{i}", "anonymous_id": f"a{i}"}}


def track(i: int) -> dict[str, Any]:
    return {"event_type": "purchase", "user": {"email": f"user{i % 300}@example.com"}, "revenue": 10 + i % 7,
            "product": f"sku-{i % 13}"}


async def run(
    events: list[dict[str, Any]], *, contacts_api: str = "v3", events_api: str = "v3", trickle: bool = False,
    rate_limit: int = 100, rate_window: float = 10.0,
) -> dict[str, Any]:
    emulator = Emulator(TOKEN, HUB_ID, rate_limit=rate_limit, rate_window=rate_window)
    emulator_runner = await serve(emulator, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{emulator_runner.addresses[0][1]}"
    rate = f"rate_limit: {rate_limit}\n              rate_window: {rate_window}"
    with tempfile.TemporaryDirectory() as data:
        text = config_text(data, url, contacts_api=contacts_api, events_api=events_api,
                           linger="200ms" if trickle else "0", rate=rate)
        plugins = PluginManager()
        app = build_app(parse_config(text, plugins, env={}), plugins)
        router = app[ROUTER]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        ingest = f"http://127.0.0.1:{runner.addresses[0][1]}/api/v1/events?token=s2s.bench"
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            if trickle:
                pending = list(events)

                async def client() -> None:
                    while pending:
                        async with session.post(ingest, data=orjson.dumps([pending.pop(0)])) as resp:
                            assert resp.status == 200
                await asyncio.gather(*(client() for _ in range(20)))
            else:
                for start in range(0, len(events), 1000):
                    async with session.post(ingest, data=orjson.dumps(events[start:start + 1000])) as resp:
                        assert resp.status == 200, await resp.text()
        while router.queue.depth("hs"):
            await router.drain()
            await asyncio.sleep(0.05)
        elapsed = time.monotonic() - started
        dead = (await router.queue.stats()).get("hs")
        await runner.cleanup()
    await emulator_runner.cleanup()
    api = [r for r in emulator.requests if r["path"].startswith(API_PREFIXES)]
    return {
        "events": len(events),
        "seconds": elapsed,
        "api_requests": len(api),
        "without_catalog": sum(1 for r in api if r["path"] not in CATALOG),
        "by_path": Counter(r["path"] for r in api),
        "statuses": Counter(r["status"] for r in api),
        "tracker_requests": sum(1 for r in emulator.requests if r["path"].startswith("/v1/event")),
        "dead_letters": dead.dead_letters if dead else 0,
        "contacts": len(emulator.contacts),
        "hubspot_events": len(emulator.events),
    }


def per_thousand(result: dict[str, Any]) -> str:
    n = result["events"]
    return (f"{1000 * result['api_requests'] / n:6.1f} API requests per 1,000 "
            f"({1000 * result['without_catalog'] / n:.1f} without the one-off property catalog fetch); "
            f"statuses {dict(result['statuses'])}; {result['seconds']:.2f}s; dead letters {result['dead_letters']}")


async def main(n: int, backlog: int, window: float, ceiling_apis: list[str]) -> None:
    print(f"HubSpot requests measured against the emulator ({n} events per scenario)\n")
    scenarios: list[tuple[str, list[dict[str, Any]], str, bool]] = [
        ("identifies, v3 contacts, backlog", [identify(i) for i in range(n)], "v3", False),
        ("identifies, v3 contacts, trickle", [identify(i) for i in range(n)], "v3", True),
        ("v3 events, backlog", [track(i) for i in range(n)], "v3", False),
        ("v3 events, trickle", [track(i) for i in range(n)], "v3", True),
        ("legacy events, backlog", [track(i) for i in range(n)], "legacy", False),
    ]
    for label, events, events_api, trickle in scenarios:
        result = await run(events, events_api=events_api, trickle=trickle)
        print(f"{label:34s} {per_thousand(result)}")
        if events_api == "legacy":
            print(f"{'':34s} + {result['tracker_requests']} tracker GETs (not under the API limits)")
    squeeze = 10.0 / window
    print(f"\n429 share: a backlog of {backlog} identifies, emulator at 100 requests / 10 s"
          f"{f' compressed {squeeze:g}x (100 / {window:g} s)' if squeeze != 1 else ''},"
          " the destination configured to the same limit\n")
    for contacts_api in ceiling_apis:
        result = await run([identify(i) for i in range(backlog)], contacts_api=contacts_api, rate_window=window)
        total = result["api_requests"]
        share = 100 * result["statuses"].get(429, 0) / total
        # a run shorter than a window never meets the ceiling: the first 100 requests may burst
        used = f"{100 * total / (result['seconds'] / window * 100):.0f} %" if total > 100 else "(below the ceiling, none)"
        print(f"contacts_api {contacts_api}: {total} API requests, {result['statuses'].get(429, 0)} answered 429 "
              f"({share:.2f} %), {result['contacts']} contacts, {result['seconds']:.1f}s "
              f"(= {result['seconds'] * squeeze / 60:.1f} min at the real 10 s window); "
              f"{used} of the ceiling used")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=50000)
    parser.add_argument("--window", type=float, default=10.0,
                        help="the emulated 10 s window, in seconds (10 = real; 0.2 compresses it 50x)")
    parser.add_argument("--ceiling-apis", default="v3",
                        help="contacts APIs for the 429 run, comma-separated (v1 makes one request per identify)")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.backlog, args.window, args.ceiling_apis.split(",")))
