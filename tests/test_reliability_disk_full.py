"""A full queue file: `storage.max_bytes` is a real SQLite page limit. With the destination down,
ingest fills it until the router answers 503 with a JSON reason; nothing acknowledged before is lost;
once the destination is back everything acknowledged is delivered and ingest answers 200 again."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os

from tests.reliability_helpers import CLIENT, ScriptedReceiver, router_config

MAX_BYTES = 256 * 1024
PAD = "x" * 600
#: far more than fits in MAX_BYTES: the limit must be reached long before
MAX_REQUESTS = 3000


async def test_a_full_queue_answers_503_keeps_what_it_acknowledged_and_recovers(start_router, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    receiver = ScriptedReceiver()
    await receiver.start()
    receiver.always_status = 503  # the destination is down
    try:
        router = await start_router(router_config(
            tmp_path, receiver.url, storage={"max_bytes": MAX_BYTES},
            webhook={"batch_size": 20}, delivery={"batch_size": 100},
        ))
        ids = (f"f{i}" for i in itertools.count())
        acked: list[str] = []
        refusals: list[tuple[int, object]] = []

        async def send(n: int) -> tuple[int, object]:
            batch = [next(ids) for _ in range(n)]
            events = [{"event_type": "fill", "event_id": i, "pad": PAD} for i in batch]
            status, body = await router.post(f"/api/v1/events?token={CLIENT}", events)
            if status == 200:
                acked.extend(batch)
            return status, body

        # fill: five clients at a time, 1-3 events a request, until the router refuses
        for round_ in range(MAX_REQUESTS // 5):
            answers = await asyncio.gather(*(send(1 + (round_ + k) % 3) for k in range(5)))
            refusals.extend(a for a in answers if a[0] != 200)
            if refusals:
                break
        assert refusals, f"{len(acked)} events accepted and still no 503 from a {MAX_BYTES}-byte queue"
        # it stays full while the destination is down: single events, until ten in a row are refused
        in_a_row = 0
        for _ in range(MAX_REQUESTS):
            answer = await send(1)
            if answer[0] == 200:
                in_a_row = 0
                continue
            refusals.append(answer)
            in_a_row += 1
            if in_a_row == 10:
                break
        # the dispatcher keeps retrying the down destination while the file is full
        failed = receiver.failed
        await receiver.wait_until(lambda: receiver.failed >= failed + 10)
        assert (await send(1))[0] == 503
        for status, body in refusals:
            assert status == 503, (status, body)
            assert isinstance(body, dict) and body["status"] == "error" and "full" in body["reason"], body
        assert (await router.get("/health"))[0] == 200
        size = os.path.getsize(tmp_path / "data" / "queue.sqlite3")
        assert size <= MAX_BYTES, f"the queue file is {size} bytes, over storage.max_bytes {MAX_BYTES}"
        wal = tmp_path / "data" / "queue.sqlite3-wal"
        wal_size = os.path.getsize(wal) if wal.exists() else 0

        # every event acknowledged before is kept
        stats = (await router.router.queue.stats())["hook"]
        assert stats.depth == len(acked), f"{len(acked)} acknowledged, {stats.depth} in the queue"
        assert stats.dead_letters == 0

        # the destination comes back: everything acknowledged is delivered ...
        receiver.always_status = None
        await receiver.wait_for_ids(set(acked), timeout=60)
        await router.drain()
        assert set(receiver.ids()) == set(acked)
        assert (await router.router.queue.stats()).get("hook") is None or \
            (await router.router.queue.stats())["hook"].depth == 0

        # ... and ingest answers 200 again, for as much as it took before
        again: list[str] = []
        for k in range(len(acked) // 3):
            event_id = f"again{k}"
            status, body = await router.post(f"/api/v1/event?token={CLIENT}",
                                             {"event_type": "fill", "event_id": event_id, "pad": PAD})
            assert status == 200, f"request {k} after recovery: {status} {body}"
            again.append(event_id)
        await receiver.wait_for_ids(set(again), timeout=60)
        print(f"\n{len(acked)} events acknowledged before the queue filled; {len(refusals)} refusals "
              f"({refusals[0][1]}); queue file {size} bytes, its WAL {wal_size} bytes; all delivered; "
              f"{len(again)} accepted again after recovery")
    finally:
        await receiver.stop()
    # being full is loud but not a crash
    crashes = [r for r in caplog.records if r.exc_info and r.name.startswith("router")]
    assert not crashes, [r.getMessage() for r in crashes][:3]

