"""The SQLite queue on a real file: leases, retries, dead letters, replay, dedup, reopen, close."""

from __future__ import annotations

import asyncio
import os

import pytest

from router.queue import NewEvent
from router.queue.sqlite import WAL_BACKSTOP, SQLiteQueue
from tests.conftest import poll_until


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def queue(tmp_path):
    q = SQLiteQueue(str(tmp_path / "q.sqlite3"), clock=Clock())
    await q.open()
    yield q
    await q.close()


def event(n: int, dedup: str | None = None) -> NewEvent:
    return NewEvent(payload=b'{"n":%d}' % n, destinations=("a", "b"), dedup_id=dedup)


async def test_an_event_is_stored_once_per_destination_and_leased_once(queue):
    assert await queue.append([event(1), event(2)]) == 0
    assert queue.depth("a") == 2 and queue.depth("b") == 2
    first = await queue.lease("a", 10, 60)
    assert [r.payload for r in first] == [b'{"n":1}', b'{"n":2}']
    assert await queue.lease("a", 10, 60) == []  # leased records are hidden
    await queue.ack([first[0].id])
    assert queue.depth("a") == 1 and queue.depth("b") == 2


async def test_a_lease_that_expires_hands_the_record_out_again(queue):
    await queue.append([event(1)])
    [record] = await queue.lease("a", 10, 60)
    queue.clock.now += 61
    [again] = await queue.lease("a", 10, 60)
    assert again.id == record.id


async def test_reschedule_waits_for_not_before_and_counts_attempts(queue):
    await queue.append([event(1)])
    [record] = await queue.lease("a", 10, 60)
    await queue.reschedule([(record.id, queue.clock.now + 30, "HTTP 503")])
    assert await queue.lease("a", 10, 60) == []
    assert await queue.next_ready_at("a") == queue.clock.now + 30
    queue.clock.now += 30
    [again] = await queue.lease("a", 10, 60)
    assert again.attempts == 1


async def test_dead_letters_keep_reason_and_answer_and_replay_returns_them(queue):
    await queue.append([event(1), event(2)])
    records = await queue.lease("a", 10, 60)
    await queue.dead_letter([(r.id, "HTTP 422", '{"error":"no"}') for r in records])
    assert queue.depth("a") == 0
    letters = await queue.dead_letters("a")
    assert [(d.reason, d.last_response, d.attempts) for d in letters] == [("HTTP 422", '{"error":"no"}', 1)] * 2
    assert (await queue.stats())["a"].dead_letters == 2
    assert await queue.replay("a", 1) == 1
    assert await queue.replay("a", 10) == 1
    assert await queue.dead_letters("a") == []
    replayed = await queue.lease("a", 10, 60)
    assert [r.payload for r in replayed] == [b'{"n":1}', b'{"n":2}'] and all(r.attempts == 0 for r in replayed)


async def test_a_client_event_id_is_kept_once_within_the_window(queue):
    assert await queue.append([event(1, "k:1")]) == 0
    assert await queue.append([event(1, "k:1"), event(2, "k:2")]) == 1
    assert queue.depth("a") == 2
    queue.clock.now += 3601  # past the window: accepted again
    assert await queue.append([event(1, "k:1")]) == 0
    assert queue.depth("a") == 3


async def test_one_group_commit_keeps_order_and_drops_ids_repeated_within_it(tmp_path):
    # many appends waiting at once become one transaction, written in chunks of up to 512 rows
    q = SQLiteQueue(str(tmp_path / "q.sqlite3"), group_commit_window=0.01, clock=Clock())
    await q.open()
    try:
        await q.append([event(0, "k:0")])
        appends = [
            asyncio.create_task(q.append([event(n, f"k:{n % 700}") for n in range(i * 100, i * 100 + 100)]))
            for i in range(13)
        ]
        results = await asyncio.gather(*appends)
        # ids 0..699 are new once each (0 was already stored); 700..1299 repeat them
        assert sum(results) == 601
        assert q.depth("a") == q.depth("b") == 700
        records = await q.lease("a", 2000, 60)
        assert [r.payload for r in records] == [b'{"n":%d}' % n for n in range(700)]
    finally:
        await q.close()


async def append_4k_events(q: SQLiteQueue, requests: int) -> None:
    """``requests`` commits of 100 events of 4 KB each (about 1 MB of log per commit)."""
    blob = b'{"pad":"%s"}' % (b"x" * 4000)
    for _ in range(requests):
        await q.append([NewEvent(payload=blob, destinations=("a",)) for _ in range(100)])


async def test_commits_are_copied_into_the_database_file_in_the_background(queue, tmp_path):
    # the write-ahead log is checkpointed off the commit path, long before the commit path's own
    # backstop (WAL_BACKSTOP of log) would do it
    await append_4k_events(queue, 10)

    async def in_the_file() -> bool:
        return os.path.getsize(tmp_path / "q.sqlite3") > 4_000_000

    await poll_until(in_the_file, timeout=10)
    assert queue.depth("a") == 1000


async def test_the_write_ahead_log_stays_within_its_bound_under_steady_writes(queue, tmp_path):
    for _ in range(120):  # commits of about 1 MB (48 MB of events), three times the bound
        await append_4k_events(queue, 1)
        # the commit that crosses the bound checkpoints, or the next ones when the background
        # checkpoint holds the lock then; unbounded, the log would reach about 48 MB
        assert os.path.getsize(tmp_path / "q.sqlite3-wal") <= WAL_BACKSTOP * 2
    assert queue.depth("a") == 12_000


async def test_reopening_releases_what_a_dead_process_had_leased(tmp_path):
    path = str(tmp_path / "q.sqlite3")
    first = SQLiteQueue(path)
    await first.open()
    await first.append([event(1)])
    assert len(await first.lease("a", 10, 3600)) == 1
    await first.close()  # as if the process had died with the record in flight
    second = SQLiteQueue(path)
    await second.open()
    try:
        assert len(await second.lease("a", 10, 3600)) == 1
        assert second.depth("a") == 1
    finally:
        await second.close()


async def test_a_tool_opening_the_file_beside_a_running_router_keeps_its_leases(tmp_path):
    # `router dlq` opens the queue while the router delivers: releasing the router's leases would
    # hand the records out again and deliver them twice
    path = str(tmp_path / "q.sqlite3")
    running = SQLiteQueue(path)
    await running.open()
    try:
        await running.append([event(1)])
        assert len(await running.lease("a", 10, 3600)) == 1
        tool = SQLiteQueue(path, owner=False)
        await tool.open()
        await tool.close()
        assert await running.lease("a", 10, 3600) == []
    finally:
        await running.close()


async def test_close_finishes_pending_appends(tmp_path):
    q = SQLiteQueue(str(tmp_path / "q.sqlite3"), group_commit_window=0.01)
    await q.open()
    appends = [asyncio.create_task(q.append([event(i)])) for i in range(50)]
    await asyncio.sleep(0)  # the appends are queued, the writer is waiting for company
    await asyncio.wait_for(q.close(), 5)
    assert [t.result() for t in appends] == [0] * 50
    reopened = SQLiteQueue(str(tmp_path / "q.sqlite3"))
    await reopened.open()
    try:
        assert reopened.depth("a") == 50
    finally:
        await reopened.close()
