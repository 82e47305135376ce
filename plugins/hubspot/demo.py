"""``router demo``: a local HubSpot emulator, a webhook receiver that prints events, and the router."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from router.config import ConfigError, load_config

log = logging.getLogger(__name__)

DEMO_TOKEN = "pat-demo-00000000-0000-0000-0000-000000000000"
DEMO_HUB_ID = "12345678"
DEMO_ADMIN_TOKEN = "demo-admin"
BROWSER_KEY = "demo.browser.key"
TEMPLATE = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"

#: custom contact properties the demo account has, on top of HubSpot's standard ones
DEMO_PROPERTIES: list[dict[str, Any]] = [
    {"name": "favorite_color", "label": "Favorite Color", "type": "string", "fieldType": "text"},
    {"name": "plan", "label": "Plan", "type": "enumeration", "fieldType": "select",
     "options": [{"label": "Free", "value": "free"}, {"label": "Pro", "value": "pro"}]},
    {"name": "signup_date", "label": "Signup date", "type": "date", "fieldType": "date"},
]


def add_cli(subparsers: Any) -> None:
    """Add the ``demo`` command."""
    parser = subparsers.add_parser(
        "demo",
        help="try the router: a local HubSpot emulator, an event printer and the router, wired together",
        description="Start a local HubSpot emulator and a webhook receiver that prints each event, then run "
        "the router on configs/demo.yaml until Ctrl-C.",
    )
    parser.add_argument("--listen", default="127.0.0.1:8001", metavar="HOST:PORT",
                        help="where the router listens (default 127.0.0.1:8001; port 0 picks a free one)")
    parser.add_argument("--emulator-port", type=int, default=0, metavar="PORT",
                        help="the emulator's port on 127.0.0.1 (default 0: a free one)")
    parser.add_argument("--data-dir", default=os.path.join(".", "data", "demo"),
                        help="the demo's queue and config live here (default ./data/demo)")
    parser.add_argument("--config-template", default=str(TEMPLATE), help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(demo(args))


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


async def start_echo() -> tuple[web.AppRunner, str]:
    """A webhook receiver that prints one line per event it gets."""

    async def handle(request: web.Request) -> web.Response:
        data = orjson.loads(await request.read())
        for event in data if isinstance(data, list) else [data]:
            user = event.get("user") if isinstance(event.get("user"), dict) else {}
            print(f"event received: {event.get('event_type')} email={user.get('email')} "
                  f"id={event.get('eventn_ctx_event_id')}", flush=True)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/events", handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/events"


async def demo(args: argparse.Namespace) -> int:
    from plugins.hubspot.emulator import Emulator
    from plugins.hubspot.emulator import serve as serve_emulator
    from router.cli import serve

    host, _, port_text = args.listen.rpartition(":")
    if not host or not port_text.isdigit():
        print(f"--listen: expected HOST:PORT, got {args.listen!r}", flush=True)
        return 2
    port = int(port_text) or free_port(host.strip("[]"))
    template = Path(args.config_template)
    if not template.is_file():
        print(f"demo config template not found: {template}", flush=True)
        return 2
    os.makedirs(args.data_dir, exist_ok=True)
    config_path = os.path.join(args.data_dir, "router.yaml")
    shutil.copyfile(template, config_path)

    emulator = Emulator(DEMO_TOKEN, DEMO_HUB_ID, properties=DEMO_PROPERTIES)
    emulator_runner = await serve_emulator(emulator, "127.0.0.1", args.emulator_port)
    echo_runner, echo_url = await start_echo()
    try:
        emulator_url = f"http://127.0.0.1:{emulator_runner.addresses[0][1]}"
        print(f"HubSpot emulator on {emulator_url} (hub_id {DEMO_HUB_ID})", flush=True)
        env = {
            **os.environ,
            "DEMO_LISTEN": f"{host}:{port}",
            "DEMO_DATA_DIR": args.data_dir,
            "DEMO_ADMIN_TOKEN": DEMO_ADMIN_TOKEN,
            "DEMO_ECHO_URL": echo_url,
            "HUBSPOT_API_BASE": emulator_url,
            "HUBSPOT_TRACK_BASE": emulator_url,
            "HUBSPOT_ACCESS_TOKEN": DEMO_TOKEN,
            "HUBSPOT_HUB_ID": DEMO_HUB_ID,
        }
        try:
            config = load_config(config_path, args.plugins, env=env)
        except ConfigError as exc:
            for problem in exc.problems:
                print(problem, flush=True)
            return 2
        ready = asyncio.Event()
        router = asyncio.create_task(serve(config, args.plugins, ready))
        waiting = asyncio.create_task(ready.wait())
        await asyncio.wait({router, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if ready.is_set():
            print(instructions(f"http://{host}:{port}", emulator_url, config_path), flush=True)
        else:
            waiting.cancel()
        return await router
    finally:
        await echo_runner.cleanup()
        await emulator_runner.cleanup()


def instructions(router_url: str, emulator_url: str, config_path: str) -> str:
    identify = orjson.dumps({
        "event_type": "user_identify",
        "user": {"email": "jane@example.com", "firstname": "Jane", "Favorite Color": "blue", "plan": "Pro",
                 "signup_date": "2026-01-20T21:14:16Z"},
    }).decode()
    track = orjson.dumps({
        "event_type": "purchase", "user": {"email": "jane@example.com"}, "revenue": 49.9, "product": "t-shirt",
    }).decode()
    send = f"curl -s -X POST '{router_url}/api/v1/event?token={BROWSER_KEY}' -H 'Content-Type: application/json'"
    return "\n".join([
        "",
        f"The demo is running (config {config_path}). Send events to {router_url} with the browser key {BROWSER_KEY}:",
        "",
        "  # an identify: becomes a HubSpot contact (names normalised, values converted, unknown ones dropped)",
        f"  {send} -d '{identify}'",
        "",
        "  # a track: becomes a HubSpot custom event with its revenue (the definition is created on first use)",
        f"  {send} -d '{track}'",
        "",
        "Then look:",
        f"  curl -s {emulator_url}/_emulator/contacts     # contacts in the local HubSpot",
        f"  curl -s {emulator_url}/_emulator/events       # events it accepted",
        f"  curl -s {emulator_url}/_emulator/requests     # every request the router made",
        f"  curl -s -H 'Authorization: Bearer {DEMO_ADMIN_TOKEN}' {router_url}/api/v1/destinations",
        f"  curl -s {router_url}/metrics",
        "",
        "Ctrl-C stops everything.",
        "",
    ])

