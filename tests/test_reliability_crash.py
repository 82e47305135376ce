"""Conservation under crashes: `router run` is SIGKILLed at random moments, under load, again and
again on the same storage; at the end every event id it acknowledged with 200 reaches the receiver.

Duplicates are allowed (delivery is at-least-once) and reported; a missing id fails. Requests that
failed with a connection error because of a kill were never acknowledged and are not owed.

ROUTER_SOAK_CYCLES (default 4) sets the number of kill cycles, ROUTER_SOAK_SEED the seed:
``ROUTER_SOAK_CYCLES=20 .venv/bin/python -m pytest tests/test_reliability_crash.py``.
"""

from __future__ import annotations

import asyncio
import os
import random

import aiohttp

from tests.reliability_helpers import (
    CLIENT,
    LoadGenerator,
    ScriptedReceiver,
    router_config,
    wait_for_ids,
)

CYCLES = int(os.environ.get("ROUTER_SOAK_CYCLES", "4"))
SEED = int(os.environ.get("ROUTER_SOAK_SEED", "20260611"))

#: how each life of the router ends; the first four cycles take each once, later ones at random
MOMENTS = ("after_acks", "during_ingest", "during_slow_delivery", "during_failing_delivery")


async def _one_life(rng: random.Random, router_process, path: str, receiver: ScriptedReceiver, cycle: int,
                    moment: str) -> tuple[LoadGenerator, str]:
    """Start the router, load it, kill it at the chosen moment. Returns the load and what happened."""
    proc = await asyncio.to_thread(router_process, path)
    # bounded, so a slow receiver does not face an ever-growing backlog
    cap = rng.randint(150, 400) if moment in ("during_slow_delivery", "during_failing_delivery") else 1500
    load = LoadGenerator(proc.url, rng, prefix=f"c{cycle}-", concurrency=20, max_array=rng.choice((5, 20, 60)),
                         max_requests=cap)
    if moment == "during_slow_delivery":
        receiver.delay = rng.uniform(0.1, 0.3)
    elif moment == "during_failing_delivery":
        receiver.fail_first, receiver.fail_status = rng.randint(10, 40), rng.choice((500, 503, 429))
    failed_before = receiver.failed
    load.start()
    try:
        if moment == "after_acks":
            target = rng.randint(10, 250)
            await load.wait_until(lambda: load.requests_acked >= target)
            what = f"killed after {target} acknowledged requests"
        elif moment == "during_ingest":
            # the moment request number N leaves the client: up to `concurrency` requests in flight
            target = rng.randint(5, 300)
            await load.wait_until(lambda: load.requests_sent >= target)
            what = f"killed as request {target} was sent ({load.requests_sent - load.requests_acked} unanswered)"
        elif moment == "during_slow_delivery":
            target = rng.randint(1, 8)
            started = receiver.started
            await load.wait_until(lambda: load.requests_acked >= 20)
            await receiver.wait_until(lambda: receiver.started - started >= target and receiver.inflight > 0)
            what = f"killed while the receiver was slowly answering (delivery request {target} of this life)"
        else:
            fail_first = receiver.fail_first
            target = rng.randint(1, max(1, fail_first - 1))
            await load.wait_until(lambda: load.requests_acked >= 20)
            await receiver.wait_until(lambda: receiver.failed - failed_before >= target)
            what = f"killed after {target} failed delivery attempts (receiver failing the first {fail_first})"
        await asyncio.to_thread(proc.kill)
    finally:
        await load.stop()
        receiver.delay = 0.0
        receiver.fail_first = 0
    return load, what


async def _resend(url: str, ids: list[str]) -> dict[str, int]:
    """Each id once more as a single event, 20 at a time; the answer status per id."""
    answers: dict[str, int] = {}
    limit = asyncio.Semaphore(20)
    async with aiohttp.ClientSession() as session:
        async def one(event_id: str) -> None:
            async with limit, session.post(f"{url}/api/v1/event?token={CLIENT}",
                                           json={"event_type": "load", "event_id": event_id}) as resp:
                answers[event_id] = resp.status

        await asyncio.gather(*(one(i) for i in ids))
    return answers


async def test_sigkill_at_random_moments_loses_no_acknowledged_event(router_process, tmp_path):
    rng = random.Random(SEED)
    receiver = ScriptedReceiver()
    await receiver.start()
    path = tmp_path / "router.yaml"
    path.write_text(router_config(tmp_path, receiver.url, webhook={"batch_size": 25},
                                  delivery={"batch_size": 100, "concurrency": 2}))
    acked: set[str] = set()
    sent: set[str] = set()
    history: list[str] = []
    try:
        for cycle in range(CYCLES):
            moment = MOMENTS[cycle] if cycle < len(MOMENTS) else rng.choice(MOMENTS)
            load, what = await _one_life(rng, router_process, str(path), receiver, cycle, moment)
            assert not load.server_errors(), f"cycle {cycle}: the router answered 5xx: {load.server_errors()[:3]}"
            acked |= load.acked
            sent |= load.sent
            history.append(
                f"cycle {cycle} {moment}: {what}; {load.requests_acked}/{load.requests_sent} requests acknowledged, "
                f"{len(load.acked)} events, connection errors {dict(load.errors)}"
            )

        # the last life: a healthy receiver; everything acknowledged in any earlier life arrives
        final = await asyncio.to_thread(router_process, str(path))
        missing = await wait_for_ids(receiver, acked, timeout=90)
        delivered = receiver.ids()
        story = "\n".join(history)
        assert not missing, (
            f"{len(missing)} of {len(acked)} acknowledged events never arrived (e.g. {sorted(missing)[:10]}); "
            f"{len(delivered)} deliveries, {receiver.duplicates()} duplicates\n{story}"
        )
        # clients retry what was never acknowledged, with the same event ids (clients that set ids):
        # what a killed router had committed without answering is dropped as a duplicate, the rest
        # is stored; either way every event sent is now delivered
        retried = sorted(sent - acked)
        answers = await _resend(final.url, retried)
        refused = {i: a for i, a in answers.items() if a != 200}
        assert not refused, f"retries refused: {list(refused.items())[:5]}"
        missing = await wait_for_ids(receiver, sent, timeout=60)
        delivered = receiver.ids()
        assert not missing, (
            f"{len(missing)} of {len(retried)} events retried by clients never arrived (e.g. {sorted(missing)[:10]})"
        )
        unknown = set(delivered) - sent
        assert not unknown, f"the receiver got ids nobody sent: {sorted(unknown)[:10]}"
        print(f"\n{len(acked)} acknowledged events over {CYCLES} kills, all delivered; {len(retried)} unacknowledged "
              f"ones retried by clients, all delivered; {len(delivered)} deliveries, {receiver.duplicates()} "
              f"duplicates\n{story}")
        assert await asyncio.to_thread(final.terminate) == 0
    finally:
        receiver.open()
        await receiver.stop()
