"""`router demo` as a user runs it: a real subprocess, an identify sent to it, the contact in its HubSpot."""

from __future__ import annotations

import asyncio
import re
import signal

import aiohttp

from tests.conftest import ROUTER_BIN, poll_until


class DemoOutput:
    """The demo's stdout, read as it comes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self.changed = asyncio.Condition()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            async with self.changed:
                self.lines.append(raw.decode(errors="replace"))
                self.changed.notify_all()

    async def wait_for(self, text: str, timeout: float = 30) -> None:
        async def seen() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: any(text in line for line in self.lines))

        try:
            await asyncio.wait_for(seen(), timeout)
        except TimeoutError:
            raise AssertionError(f"{text!r} not in the demo's output:\n{''.join(self.lines)}") from None

    def find(self, pattern: str) -> str:
        for line in self.lines:
            match = re.search(pattern, line)
            if match:
                return match.group(1)
        raise AssertionError(f"{pattern!r} not in the demo's output:\n{''.join(self.lines)}")


async def test_router_demo_delivers_an_identify_to_its_emulator_and_stops_on_sigterm(tmp_path):
    proc = await asyncio.create_subprocess_exec(
        ROUTER_BIN, "demo", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "demo"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output = DemoOutput(proc)
        await output.wait_for("Ctrl-C stops everything")
        router_url = output.find(r"router listening on (http://\S+)")
        emulator_url = output.find(r"HubSpot emulator on (http://\S+)")
        assert "curl -s -X POST" in "".join(output.lines)
        assert f"{emulator_url}/_emulator/contacts" in "".join(output.lines)

        identify = {"event_type": "user_identify", "user": {"email": "demo@example.com", "Favorite Color": "green"}}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{router_url}/api/v1/event?token=demo.browser.key", json=identify) as resp:
                assert resp.status == 200

            async def contact_arrived() -> bool:
                async with session.get(f"{emulator_url}/_emulator/contacts") as resp:
                    contacts = (await resp.json())["results"]
                return any(c["email"] == "demo@example.com" and c["properties"].get("favorite_color") == "green"
                           for c in contacts)

            await poll_until(contact_arrived, 20)
        await output.wait_for("event received: user_identify email=demo@example.com")  # the webhook printer

        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        await output.reader
        assert "router stopped" in "".join(output.lines)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
