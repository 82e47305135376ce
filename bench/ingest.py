"""P1 ingest benchmark: durable single-event and 100-event-array ingest against a bare aiohttp + JSON
echo server, measured with wrk in the same run, so the ratio holds on a noisy machine.

    .venv/bin/python bench/ingest.py [--seconds 10] [--connections 64]

Needs `wrk` (Debian package `wrk`). Prints one line per measurement (with the CPU the server used
in cores, all its threads, from /proc) and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)

EVENT = {
    "event_type": "page_view", "user": {"anonymous_id": "a1b2c3", "email": "jane@example.com"},
    "url": "https://shop.example.com/products/42", "page_title": "Product 42", "referer": "https://google.com",
    "utm": {"source": "newsletter"}, "user_agent": "Mozilla/5.0", "screen_resolution": "1920x1080",
}

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Auth-Token"] = "s2s.bench"
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  io.write(string.format("RESULT rps=%%.1f p50=%%.3f p99=%%.3f errors=%%d non2xx=%%d\\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, body: str, seconds: int, connections: int, workdir: str, pid: int) -> dict[str, float]:
    script = os.path.join(workdir, "post.lua")
    with open(script, "w") as f:
        f.write(LUA % body)
    cpu, started = cpu_seconds(pid), time.monotonic()
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", script, url],
        capture_output=True, text=True, timeout=seconds + 60,
    ).stdout
    cores = (cpu_seconds(pid) - cpu) / (time.monotonic() - started)
    match = re.search(r"RESULT rps=([\d.]+) p50=([\d.]+) p99=([\d.]+) errors=(\d+) non2xx=(\d+)", out)
    if not match:
        raise RuntimeError("wrk said:\n" + out)
    rps, p50, p99, errors, non2xx = match.groups()
    return {"rps": float(rps), "p50_ms": float(p50), "p99_ms": float(p99), "errors": int(errors), "non2xx": int(non2xx),
            "cores": cores}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="bench-ingest-")
    procs = []
    try:
        echo_port = free_port()
        procs.append(subprocess.Popen([sys.executable, os.path.join(HERE, "echo_server.py"), str(echo_port)]))
        # a receiver that accepts connections and never answers: the destination's two batches
        # hang in flight, so this measures ingest alone while every event is stored and queued
        blackhole = socket.socket()
        blackhole.bind(("127.0.0.1", 0))
        blackhole.listen(100)
        hole = blackhole.getsockname()[1]
        router_port = free_port()
        config = os.path.join(work, "router.yaml")
        with open(config, "w") as f:
            # one destination: every event is stored once and stays queued
            f.write(textwrap.dedent(f"""
                server: {{listen: "127.0.0.1:{router_port}", max_body_bytes: 10000000}}
                storage: {{path: "{work}/data"}}
                api_keys: [{{id: bench, server_secret: s2s.bench}}]
                destinations:
                  sink: {{type: webhook, config: {{url: "http://127.0.0.1:{hole}/"}}, delivery: {{timeout: 1h, lease_timeout: 2h}}}}
            """))
        procs.append(subprocess.Popen([os.path.join(BIN, "router"), "--log-level", "warning", "run", "-c", config],
                                      stdout=subprocess.DEVNULL))
        wait_port(echo_port)
        wait_port(router_port)
        single = json.dumps(EVENT)
        array = json.dumps([EVENT] * 100)
        results = {}
        echo, router = procs
        for name, port, pid, path, body in (
            ("echo single", echo_port, echo.pid, "/api/v1/s2s/event", single),
            ("router single", router_port, router.pid, "/api/v1/s2s/event", single),
            ("echo array100", echo_port, echo.pid, "/api/v1/s2s/events", array),
            ("router array100", router_port, router.pid, "/api/v1/s2s/events", array),
        ):
            r = run_wrk(f"http://127.0.0.1:{port}{path}", body, args.seconds, args.connections, work, pid)
            results[name] = r
            per = 100 if "array" in name else 1
            events = r["rps"] * per
            print(f"{name:16} {r['rps']:9.0f} req/s {events:10.0f} events/s  "
                  f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']} non-2xx {r['non2xx']}  "
                  f"CPU {r['cores']:.2f} cores ({events / r['cores']:.0f} events/s per core)",
                  flush=True)
        ratio1 = results["router single"]["rps"] / results["echo single"]["rps"]
        ratio100 = results["router array100"]["rps"] / results["echo array100"]["rps"]
        print(f"ratio single   router/echo = {ratio1:.2f}  (target >= 0.6)")
        print(f"ratio array100 router/echo = {ratio100:.2f}")
        print(f"machine: {os.cpu_count()} cores; wrk -t1 -c{args.connections} -d{args.seconds}s")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
