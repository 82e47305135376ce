"""SIGTERM under load: `router run` exits 0 within server.shutdown_grace (plus a margin) while clients
keep sending, prints one "router stopped" summary line, and after a restart every event it
acknowledged is delivered."""

from __future__ import annotations

import asyncio
import random
import time

import aiohttp
import pytest

from tests.conftest import poll_until
from tests.reliability_helpers import (
    ADMIN,
    LoadGenerator,
    ScriptedReceiver,
    router_config,
    wait_for_ids,
)

GRACE = 3.0
#: process start-up of the interpreter is not part of it, but closing the queue and exiting are
MARGIN = 2.0


#: what the destination is doing when SIGTERM comes, and the delivery settings that make it so
DESTINATIONS = {
    "healthy": {},
    # every delivery request hangs longer than the grace: in-flight sends are cancelled
    "hangs_past_the_grace": {},
    # 401: paused, next probe in a minute (a dispatcher asleep in a pause or a back-off hold must
    # wake for SIGTERM)
    "paused": {"pause_probe": "60s"},
}


async def _state(url: str, state: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(
        f"{url}/api/v1/destinations", headers={"Authorization": f"Bearer {ADMIN}"}
    ) as resp:
        return (await resp.json())["destinations"]["hook"]["state"] == state


@pytest.mark.parametrize("destination", list(DESTINATIONS))
async def test_sigterm_under_load_exits_in_time_and_loses_nothing(router_process, tmp_path, destination):
    rng = random.Random(list(DESTINATIONS).index(destination))
    receiver = ScriptedReceiver()
    await receiver.start()
    path = tmp_path / "router.yaml"
    path.write_text(router_config(tmp_path, receiver.url, server={"shutdown_grace": f"{GRACE:g}s"},
                                  webhook={"batch_size": 10},
                                  delivery={"batch_size": 50, **DESTINATIONS[destination]}))
    try:
        proc = await asyncio.to_thread(router_process, str(path))
        if destination == "hangs_past_the_grace":
            receiver.gate.clear()  # every delivery request hangs until the test opens the gate
        elif destination == "paused":
            receiver.always_status = 401
        load = LoadGenerator(proc.url, rng, prefix=f"{destination}-", concurrency=20, max_array=10).start()
        # SIGTERM lands while clients are sending and the destination is in the state under test
        await load.wait_until(lambda: load.requests_acked >= 150)
        await receiver.wait_until(lambda: receiver.started > 0)
        if destination == "paused":
            await poll_until(lambda: _state(proc.url, "paused"))
        assert load.requests_sent > load.requests_acked  # requests in flight
        started = time.monotonic()
        code = await asyncio.to_thread(proc.terminate, GRACE + 30)
        took = time.monotonic() - started
        await load.stop()
        output = "".join(proc.output)
        assert code == 0, output[-3000:]
        assert took <= GRACE + MARGIN, f"took {took:.1f}s to exit after SIGTERM (grace {GRACE:g}s)\n{output[-3000:]}"
        summary = [line for line in proc.output if line.startswith("router stopped")]
        assert len(summary) == 1, output[-3000:]
        # what was refused during the shutdown was refused properly: 503 with a JSON reason, never a 500
        assert all(status == 503 and '"reason"' in text for status, text in load.refusals), load.refusals[:5]
        assert load.acked, "nothing was acknowledged"

        # a restart delivers everything acknowledged, none lost
        receiver.always_status = None
        receiver.open()
        second = await asyncio.to_thread(router_process, str(path))
        missing = await wait_for_ids(receiver, load.acked, timeout=60)
        assert not missing, (
            f"{len(missing)} of {len(load.acked)} acknowledged events never arrived (e.g. {sorted(missing)[:10]}); "
            f"{receiver.duplicates()} duplicates; summary: {summary[0].strip()}"
        )
        assert set(receiver.ids()) <= load.sent
        assert await asyncio.to_thread(second.terminate) == 0
        print(f"\n{destination}: exit 0 after {took:.2f}s; {summary[0].strip()}; {len(load.acked)} acknowledged, "
              f"statuses {dict(load.statuses)}, connection errors {dict(load.errors)}, "
              f"{receiver.duplicates()} duplicates after restart")
    finally:
        receiver.open()
        await receiver.stop()
