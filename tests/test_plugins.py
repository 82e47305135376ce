"""Plugins: a destination package from outside the project is a first-class citizen, and every hook
is documented."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import textwrap

import aiohttp

from router import hookspecs
from tests.conftest import ROUTER_BIN, poll_until

PLUGIN = '''
"""A third-party destination: POSTs each event, wrapped, to a URL."""
import attrs
import orjson
from router import hookimpl
from router.destination import Delivered, Destination, Sender
from router.registry import DestinationType


@attrs.define
class EchoConfig:
    target: str


class EchoSender(Sender):
    name = "echo"
    max_batch = 10

    def __init__(self, config, http):
        self.config, self.http = config, http

    async def send(self, batch):
        body = orjson.dumps([{"via": "echo-plugin", **d.event} for d in batch])
        async with self.http.post(self.config.target, data=body) as resp:
            resp.raise_for_status()
        return [Delivered()] * len(batch)


class EchoDestination(Destination):
    def __init__(self, config, context):
        self.sender = EchoSender(config, context.http)

    def sender_for(self, event):
        return self.sender


@hookimpl
def router_destination_types():
    return [DestinationType(name="echo", config_class=EchoConfig, factory=EchoDestination,
                            description="wraps and forwards events")]


@hookimpl
def router_filter_event(destination, event):
    if destination.type == "echo" and event.get("event_type") == "secret_thing":
        return "echo refuses secret things"
    return None
'''


def make_plugin_package(root) -> str:
    """A distribution installed the way pip would lay it out: the module and its dist-info."""
    site = root / "site"
    (site / "router_echo").mkdir(parents=True)
    (site / "router_echo" / "__init__.py").write_text(PLUGIN)
    info = site / "router_echo-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: router-echo\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text("[router]\necho = router_echo\n")
    (info / "RECORD").write_text("")
    return str(site)


async def test_an_outside_plugin_is_listed_and_receives_events(tmp_path, receiver, router_process):
    site = make_plugin_package(tmp_path)
    env = {"PYTHONPATH": site + os.pathsep + os.environ.get("PYTHONPATH", "")}
    listing = subprocess.run([ROUTER_BIN, "plugins"], capture_output=True, text=True, timeout=30,
                             env={**os.environ, **env})
    assert listing.returncode == 0, listing.stderr
    echo_line = next(line for line in listing.stdout.splitlines() if line.startswith("echo"))
    assert "router-echo 1.2.3" in echo_line and "wraps and forwards events" in echo_line
    assert any(line.startswith("webhook") for line in listing.stdout.splitlines())

    config = tmp_path / "router.yaml"
    config.write_text(textwrap.dedent(f"""
        server: {{listen: "127.0.0.1:0"}}
        storage: {{path: "{tmp_path}/data"}}
        api_keys: [{{id: web, server_secret: s2s.1}}]
        destinations:
          outside:
            type: echo
            echo: {{target: "{receiver.url}"}}
            delivery: {{linger: 0}}
    """))
    proc = router_process(str(config), env)
    async with aiohttp.ClientSession() as session:
        events = [{"event_type": "signup", "event_id": "p1"}, {"event_type": "secret_thing", "event_id": "p2"}]
        async with session.post(f"{proc.url}/api/v1/s2s/events", json=events, headers={"X-Auth-Token": "s2s.1"}) as resp:
            assert resp.status == 200
        [event] = await receiver.wait_for(1)
        assert event["via"] == "echo-plugin" and event["eventn_ctx_event_id"] == "p1"

        async def skip_counted() -> bool:  # the skipped one is counted with the plugin's reason
            async with session.get(f"{proc.url}/metrics") as resp:
                text = await resp.text()
            return 'router_events_skipped_total{destination="outside",reason="echo refuses secret things"} 1.0' in text

        await poll_until(skip_counted)


def test_every_hook_is_documented():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "plugin_hooks.md")) as f:
        docs = f.read()
    hooks = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("router_")]
    assert hooks, "no hooks found"
    for name in hooks:
        signature = f"{name}({', '.join(inspect.signature(getattr(hookspecs, name)).parameters)})"
        documented = re.search(rf"^## {re.escape(signature)}$", docs, re.M)
        assert documented, f"docs/plugin_hooks.md does not describe {signature}"
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


def test_the_core_never_mentions_a_destination_plugin():
    core = os.path.join(os.path.dirname(__file__), "..", "router")
    for folder, _, files in os.walk(core):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    text = f.read().lower()
                assert "hubspot" not in text, f"router/{name} mentions HubSpot: that belongs in plugins/hubspot/"
