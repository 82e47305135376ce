"""Durability: what the router acknowledged survives SIGKILL, and SIGTERM shuts down cleanly."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import webhook_config

N = 200


async def _send(url: str, ids: list[str]) -> list[str]:
    acknowledged = []
    async with aiohttp.ClientSession() as session:
        async def one(event_id: str) -> None:
            async with session.post(f"{url}/api/v1/event?token=js.secret.1",
                                    json={"event_type": "t", "event_id": event_id}) as resp:
                if resp.status == 200:
                    acknowledged.append(event_id)

        await asyncio.gather(*(one(i) for i in ids))
    return acknowledged


async def test_sigkill_after_acknowledgement_loses_nothing(router_process, receiver, tmp_path):
    # first life: the receiver refuses everything (503), so nothing is delivered before the kill
    receiver.always_status = 503
    path = tmp_path / "router.yaml"
    path.write_text(webhook_config(tmp_path, receiver.url))
    first = router_process(str(path))
    acknowledged = await _send(first.url, [f"k{i}" for i in range(N)])
    assert len(acknowledged) == N
    first.kill()
    assert receiver.events == []

    # second life: the receiver is fixed; everything acknowledged arrives
    receiver.always_status = None
    second = router_process(str(path))
    # a request in flight at the kill may reach the receiver after it was fixed: duplicates are
    # allowed (at-least-once), a missing id is not
    await receiver.wait_for_ids(set(acknowledged), timeout=60)
    assert set(receiver.ids()) == set(acknowledged)
    assert second.terminate() == 0


async def test_sigterm_finishes_and_prints_one_summary_line(router_process, receiver, tmp_path):
    path = tmp_path / "router.yaml"
    path.write_text(webhook_config(tmp_path, receiver.url))
    proc = router_process(str(path))
    acknowledged = await _send(proc.url, [f"t{i}" for i in range(50)])
    await receiver.wait_for(len(acknowledged))
    assert await asyncio.to_thread(proc.terminate) == 0
    summary = [line for line in proc.output if line.startswith("router stopped")]
    assert len(summary) == 1
    assert "received 50, delivered 50" in summary[0]
