"""P4 latency and P5 memory: the router as a real subprocess, measured from outside.

    .venv/bin/python bench/delivery.py latency [--rate 1000] [--seconds 20]
    .venv/bin/python bench/delivery.py memory [--events 1000000] [--small 100000]

latency (P4): events at a steady rate (single-event requests) to a router delivering to the local
HubSpot (v3 events); p50/p99 from the client's acknowledgement to the emulator's receipt.
memory (P5): a backlog of N events waits for a webhook receiver that is down, then drains when it
comes up; the router's peak RSS for a small and a large backlog (flat = not proportional to it).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from plugins.hubspot.emulator import Emulator, serve

ROUTER = os.path.join(os.path.dirname(sys.executable), "router")
TOKEN, HUB_ID = "pat-bench-0000", "20546336"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_router(config: str, workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    path = os.path.join(workdir, "router.yaml")
    with open(path, "w") as f:
        f.write(config)
    out = os.path.join(workdir, "router.out")
    proc = subprocess.Popen([ROUTER, "--log-level", "warning", "run", "-c", path], stdout=open(out, "wb"))
    while True:  # the first line says where it listens
        with open(out) as f:
            line = f.readline()
        if "router listening on " in line:
            return proc, line.split("router listening on ")[1].split()[0]
        if proc.poll() is not None:
            raise RuntimeError(f"the router exited: {open(out).read()}")
        await asyncio.sleep(0.05)


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


async def latency(rate: int, seconds: int) -> None:
    emulator = Emulator(TOKEN, HUB_ID, rate_limit=100_000, daily_limit=10**9)
    runner = await serve(emulator, "127.0.0.1", 0)
    api = f"http://127.0.0.1:{runner.addresses[0][1]}"
    work = tempfile.mkdtemp(prefix="bench-latency-")
    proc, url = await start_router(textwrap.dedent(f"""
        server: {{listen: "127.0.0.1:0"}}
        storage: {{path: "{work}/data"}}
        api_keys: [{{id: bench, server_secret: s2s.bench}}]
        destinations:
          hs:
            type: hubspot
            hubspot: {{access_token: {TOKEN}, hub_id: "{HUB_ID}", api_base: "{api}", track_base: "{api}",
                       events_api: v3, rate_limit: 100000, daily_limit: 1000000000}}
            delivery: {{batch_size: 500}}
    """), work)
    acked: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as session:
            async def one(i: int) -> None:
                event = {"event_type": "page_view", "user": {"email": f"u{i}@bench.test"}}
                async with session.post(f"{url}/api/v1/s2s/event", json=event,
                                        headers={"X-Auth-Token": "s2s.bench"}) as resp:
                    if resp.status == 200:
                        acked[f"u{i}@bench.test"] = time.time()

            loop = asyncio.get_running_loop()
            start = loop.time()
            tasks = []
            for i in range(rate * seconds):
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
            deadline = time.monotonic() + 60
            while len(emulator.events) < len(acked) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        arrivals = {e["email"]: dt.datetime.fromisoformat(e["receivedAt"].replace("Z", "+00:00")).timestamp()
                    for e in emulator.events}
        lat = [arrivals[email] - t for email, t in acked.items() if email in arrivals]
        print(f"P4 latency at {rate} events/s for {seconds}s: {len(acked)} acknowledged, {len(lat)} arrived; "
              f"p50 {percentile(lat, 50) * 1000:.0f} ms, p99 {percentile(lat, 99) * 1000:.0f} ms (target p99 <= 2000 ms)")
    finally:
        proc.terminate()
        proc.wait(30)
        await runner.cleanup()


async def backlog(events: int) -> tuple[float, float, float, float]:
    """Peak RSS (MB) while a backlog of ``events`` builds and while it drains; ingest and drain seconds."""
    received = 0
    up = False
    done = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        nonlocal received
        if not up:  # the destination is down: every attempt fails and is retried later
            return web.Response(status=503, text="down")
        received += len(await request.json())
        if received >= events:
            done.set()
        return web.Response(text="ok")

    app = web.Application(client_max_size=100_000_000)
    app.router.add_post("/", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    work = tempfile.mkdtemp(prefix="bench-memory-")
    proc, url = await start_router(textwrap.dedent(f"""
        server: {{listen: "127.0.0.1:0", max_body_bytes: 10000000}}
        storage: {{path: "{work}/data"}}
        api_keys: [{{id: bench, server_secret: s2s.bench}}]
        destinations:
          hook:
            type: webhook
            config: {{url: "http://127.0.0.1:{port}/", batch_size: 1000}}
            delivery: {{batch_size: 1000, max_backoff: 1s}}
    """), work)
    try:
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            body = [{"event_type": "page_view", "user": {"email": "a@b.c"}, "url": "https://shop.example.com/x"}] * 1000
            for _ in range(events // 1000):
                async with session.post(f"{url}/api/v1/s2s/events", json=body, headers={"X-Auth-Token": "s2s.bench"}) as r:
                    assert r.status == 200, await r.text()
        ingest_s = time.monotonic() - started
        backlog_peak = rss_mb(proc.pid, "VmHWM")
        up = True
        started = time.monotonic()
        await asyncio.wait_for(done.wait(), 900)
        drain_s = time.monotonic() - started
        return backlog_peak, rss_mb(proc.pid, "VmHWM"), ingest_s, drain_s
    finally:
        proc.terminate()
        proc.wait(60)
        await runner.cleanup()


async def memory(large: int, small: int) -> None:
    for n in (small, large):
        during, overall, ingest_s, drain_s = await backlog(n)
        print(f"P5 backlog of {n:>9,} events: peak RSS {during:6.1f} MB while queued, {overall:6.1f} MB through the "
              f"drain (target <= 200 MB, flat); ingest {n / ingest_s:,.0f} events/s, drain {n / drain_s:,.0f} events/s",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="what", required=True)
    lat = sub.add_parser("latency")
    lat.add_argument("--rate", type=int, default=1000)
    lat.add_argument("--seconds", type=int, default=20)
    mem = sub.add_parser("memory")
    mem.add_argument("--events", type=int, default=1_000_000)
    mem.add_argument("--small", type=int, default=100_000)
    args: Any = parser.parse_args()
    if args.what == "latency":
        asyncio.run(latency(args.rate, args.seconds))
    else:
        asyncio.run(memory(args.events, args.small))


if __name__ == "__main__":
    main()
