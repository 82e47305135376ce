"""The embedded durable queue: one SQLite file in WAL mode, written by one thread, group commit.

Every database call runs on one dedicated thread, so the event loop never blocks on disk. Appends
from concurrent requests are gathered by a writer task and committed in one transaction
(``synchronous=FULL``: a committed append survives SIGKILL and power loss), then every caller is
answered. Leases are a ``leased_until`` time on the record; opening the file releases every lease,
so records in flight when a previous process died are delivered again (at-least-once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from router.queue import DeadLetter, DepthStats, NewEvent, Queue, QueueFull, Record

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id           INTEGER PRIMARY KEY,
    destination  TEXT    NOT NULL,
    payload      BLOB    NOT NULL,
    received_at  REAL    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    not_before   REAL    NOT NULL,
    leased_until REAL    NOT NULL DEFAULT 0,
    last_error   TEXT
);
CREATE INDEX IF NOT EXISTS records_ready ON records (destination, not_before, id);
CREATE TABLE IF NOT EXISTS dead_letters (
    id            INTEGER PRIMARY KEY,
    destination   TEXT    NOT NULL,
    payload       BLOB    NOT NULL,
    received_at   REAL    NOT NULL,
    attempts      INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    last_response TEXT,
    dead_at       REAL    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_destination ON dead_letters (destination, id);
CREATE TABLE IF NOT EXISTS seen_ids (
    event_id TEXT PRIMARY KEY,
    seen_at  REAL NOT NULL
) WITHOUT ROWID;
"""

#: the most events one group commit takes; the rest wait for the next one
MAX_GROUP = 5000
#: how often (seconds) ``stats(exact=False)`` counts the stored records instead of trusting its counts
DEPTH_RECOUNT = 60.0
#: the background checkpointer runs at most this often (seconds)
CHECKPOINT_PAUSE = 0.1
#: the committing connection checkpoints by itself past this much log, and starts the log over:
#: the most disk the log takes (with storage.max_bytes, a tenth of it if that is less)
WAL_BACKSTOP = 16 * 1024 * 1024


class SQLiteQueue(Queue):
    def __init__(
        self,
        path: str,
        *,
        dedup_window: float = 3600.0,
        group_commit_window: float = 0.0,
        max_depth: int = 0,
        max_bytes: int = 0,
        clock: Callable[[], float] = time.time,
        owner: bool = True,
    ) -> None:
        """``owner``: this process delivers from the file, so leases left by a previous one are
        released at open. False for a tool (``router dlq``) beside a running router."""
        self.path = path
        self.owner = owner
        self.dedup_window = dedup_window
        self.group_commit_window = group_commit_window
        self.max_depth = max_depth
        self.max_bytes = max_bytes
        self.clock = clock
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-queue")
        self._db: sqlite3.Connection | None = None
        # checkpoints (copying the write-ahead log into the database file) run on a connection
        # and thread of their own, off the commit path
        self._checkpoint_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="sqlite-checkpoint"
        )
        self._checkpoint_db: sqlite3.Connection | None = None
        self._checkpointer: asyncio.Task[None] | None = None
        self._written = asyncio.Event()
        self._pending: list[tuple[Sequence[NewEvent], asyncio.Future[int]]] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._depth: dict[str, int] = {}
        self._depth_checked = 0.0
        self._last_purge = 0.0
        self._closing = False

    # -- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        """``_run`` for a call that writes: the checkpointer copies what it wrote."""
        try:
            return await self._run(fn, *args)
        finally:
            self._written.set()

    def _conn(self) -> sqlite3.Connection:
        assert self._db is not None, "queue is not open"
        return self._db

    def _open_sync(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._setup(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    def _setup(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        # the background checkpointer copies the log into the file as it grows; the committing
        # connection checkpoints the rest itself once the log holds this much
        wal_bytes = WAL_BACKSTOP
        if self.max_bytes:
            db.execute(f"PRAGMA max_page_count = {max(16, self.max_bytes // page_size)}")
            # keep the write-ahead log within a tenth of the limit too (it is checkpointed and
            # truncated back to this size), so the files on disk stay near max_bytes
            wal_bytes = min(wal_bytes, max(64 * 1024, self.max_bytes // 10))
        db.execute(f"PRAGMA wal_autocheckpoint = {max(16, wal_bytes // page_size)}")
        db.execute(f"PRAGMA journal_size_limit = {wal_bytes}")
        released = db.execute("UPDATE records SET leased_until = 0 WHERE leased_until > 0").rowcount if self.owner else 0
        if released:
            log.info("released %d records leased by a previous process; they will be delivered again", released)
        self._depth = dict(db.execute("SELECT destination, COUNT(*) FROM records GROUP BY destination").fetchall())

    def _open_checkpointer_sync(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        self._checkpoint_db = db

    async def open(self) -> None:
        try:
            await self._run(self._open_sync)
            await asyncio.get_running_loop().run_in_executor(self._checkpoint_executor, self._open_checkpointer_sync)
        except BaseException:
            await self.close()  # whatever was opened, and both threads
            raise
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop(), name="sqlite-queue-writer")
        self._checkpointer = asyncio.create_task(self._checkpoint_loop(), name="sqlite-queue-checkpointer")

    async def _checkpoint_loop(self) -> None:
        """Copy committed pages from the log into the database file, at most every
        CHECKPOINT_PAUSE seconds while there are writes. A passive checkpoint never blocks a
        commit. Under steady writes the log rarely ends copied (commits land while it runs), so
        it grows to WAL_BACKSTOP; the commit that crosses it then checkpoints what is left (little,
        most was copied here) and the log starts over."""
        loop = asyncio.get_running_loop()
        failure = None
        while not self._closing:
            await self._written.wait()
            self._written.clear()
            try:
                await loop.run_in_executor(self._checkpoint_executor, self._checkpoint_sync)
                failure = None
            except Exception as exc:  # the commit path checkpoints by itself as a backstop
                if repr(exc) != failure:
                    log.warning("queue checkpoint failed (retrying): %s", _describe(exc))
                failure = repr(exc)
            await asyncio.sleep(CHECKPOINT_PAUSE)

    def _checkpoint_sync(self) -> None:
        assert self._checkpoint_db is not None
        self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
            self._writer = None
        if self._checkpointer is not None:
            self._written.set()
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        if self._checkpoint_db is not None:
            await asyncio.get_running_loop().run_in_executor(self._checkpoint_executor, self._checkpoint_db.close)
            self._checkpoint_db = None
        self._checkpoint_executor.shutdown(wait=True)
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    # -- append: group commit -------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> int:
        if self._closing or self._writer is None:
            raise QueueFull("the queue is shutting down")
        if self.max_depth and sum(self._depth.values()) >= self.max_depth:
            raise QueueFull(f"the queue holds {self.max_depth} undelivered records (storage.max_depth)")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((events, future))
        self._wakeup.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.group_commit_window and not self._closing:
                await asyncio.sleep(self.group_commit_window)  # wait a moment for company
            group, count = [], 0
            while self._pending and count < MAX_GROUP:
                item = self._pending.pop(0)
                group.append(item)
                count += len(item[0])
            try:
                results, added = await self._write(self._commit_group, [events for events, _ in group])
            except Exception as exc:
                error = QueueFull(_describe(exc))
                log.error("queue commit failed: %s", error)
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            self._count(added)
            if self.on_commit is not None:
                self.on_commit(len(group))
            touched: set[str] = set()
            for (events, future), duplicates in zip(group, results, strict=True):
                for event in events:
                    touched.update(event.destinations)
                if not future.done():
                    future.set_result(duplicates)
            if touched and self.on_append is not None:
                self.on_append(touched)

    def _count(self, changes: dict[str, int]) -> None:
        """Apply depth changes (on the event loop, the only place that reads them)."""
        for destination, n in changes.items():
            self._depth[destination] = max(0, self._depth.get(destination, 0) + n)

    def _commit_group(self, groups: list[Sequence[NewEvent]]) -> tuple[list[int], dict[str, int]]:
        """One transaction for every waiting append, in a handful of statements whatever its size:
        each statement lets the event loop's thread take the GIL, and taking it back waits for that
        thread's next pause, so a statement per row made a commit crawl while requests were
        being parsed."""
        db = self._conn()
        now = self.clock()
        horizon = now - self.dedup_window
        results: list[int] = []
        payloads: dict[str, list[bytes]] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            recent = self._recently_seen(db, [e.dedup_id for events in groups for e in events if e.dedup_id], horizon)
            fresh: list[str] = []
            for events in groups:
                duplicates = 0
                for event in events:
                    if event.dedup_id:
                        if event.dedup_id in recent:
                            duplicates += 1
                            continue
                        recent.add(event.dedup_id)
                        fresh.append(event.dedup_id)
                    for destination in event.destinations:
                        payloads.setdefault(destination, []).append(event.payload)
                results.append(duplicates)
            for chunk in _pow2_chunks(fresh):
                db.execute(_values_sql("INSERT OR REPLACE INTO seen_ids (event_id, seen_at)", "(?{}, ?1)", len(chunk), 2),
                           (now, *chunk))
            for destination, rows in payloads.items():
                # records of one destination keep their order of arrival (ids rise with it)
                for chunk in _pow2_chunks(rows):
                    db.execute(
                        _values_sql("INSERT INTO records (destination, payload, received_at, not_before)",
                                    "(?1, ?{}, ?2, ?2)", len(chunk), 3),
                        (destination, now, *chunk),
                    )
            if now - self._last_purge > 60:
                db.execute("DELETE FROM seen_ids WHERE seen_at < ?", (horizon,))
                self._last_purge = now
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return results, {destination: len(rows) for destination, rows in payloads.items()}

    @staticmethod
    def _recently_seen(db: sqlite3.Connection, ids: list[str], horizon: float) -> set[str]:
        """Which of ``ids`` were accepted within the dedup window."""
        seen: set[str] = set()
        for chunk in _pow2_chunks(sorted(set(ids))):
            marks = ",".join("?" * len(chunk))
            seen.update(
                row[0]
                for row in db.execute(f"SELECT event_id FROM seen_ids WHERE event_id IN ({marks}) AND seen_at >= ?",
                                      (*chunk, horizon))
            )
        return seen

    # -- delivery side --------------------------------------------------------------------

    async def lease(self, destination: str, limit: int, lease_seconds: float) -> list[Record]:
        return await self._write(self._lease_sync, destination, limit, lease_seconds)

    def _lease_sync(self, destination: str, limit: int, lease_seconds: float) -> list[Record]:
        db = self._conn()
        now = self.clock()
        with _transaction(db):
            rows = db.execute(
                "SELECT id, payload, received_at, attempts FROM records"
                " WHERE destination = ? AND not_before <= ? AND leased_until <= ?"
                " ORDER BY not_before, id LIMIT ?",
                (destination, now, now, limit),
            ).fetchall()
            for chunk in _chunks([row[0] for row in rows], 500):
                db.execute(
                    f"UPDATE records SET leased_until = ? WHERE id IN ({','.join('?' * len(chunk))})",
                    (now + lease_seconds, *chunk),
                )
        return [Record(id=r[0], destination=destination, payload=r[1], received_at=r[2], attempts=r[3]) for r in rows]

    async def ack(self, ids: Sequence[int]) -> None:
        if ids:
            self._count(await self._write(self._ack_sync, list(ids)))

    def _ack_sync(self, ids: list[int]) -> dict[str, int]:
        db = self._conn()
        with _transaction(db):
            removed = self._leaving(db, ids)
            db.executemany("DELETE FROM records WHERE id = ?", [(i,) for i in ids])
        return removed

    def _leaving(self, db: sqlite3.Connection, ids: list[int]) -> dict[str, int]:
        """Depth changes for records about to leave the table."""
        changes: dict[str, int] = {}
        for chunk in _chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            for destination, n in db.execute(
                f"SELECT destination, COUNT(*) FROM records WHERE id IN ({marks}) GROUP BY destination", chunk
            ):
                changes[destination] = changes.get(destination, 0) - n
        return changes

    async def release(self, ids: Sequence[int], not_before: float = 0.0) -> None:
        if ids:
            await self._write(self._release_sync, list(ids), not_before)

    def _release_sync(self, ids: list[int], not_before: float) -> None:
        db = self._conn()
        with _transaction(db):
            db.executemany(
                "UPDATE records SET leased_until = 0, not_before = MAX(not_before, ?) WHERE id = ?",
                [(not_before, i) for i in ids],
            )

    async def reschedule(self, items: Sequence[tuple[int, float, str]]) -> None:
        if items:
            await self._write(self._reschedule_sync, list(items))

    def _reschedule_sync(self, items: list[tuple[int, float, str]]) -> None:
        db = self._conn()
        with _transaction(db):
            db.executemany(
                "UPDATE records SET not_before = ?, leased_until = 0, attempts = attempts + 1, last_error = ?"
                " WHERE id = ?",
                [(not_before, error, record_id) for record_id, not_before, error in items],
            )

    async def dead_letter(self, items: Sequence[tuple[int, str, str | None]]) -> None:
        if items:
            self._count(await self._write(self._dead_letter_sync, list(items)))

    def _dead_letter_sync(self, items: list[tuple[int, str, str | None]]) -> dict[str, int]:
        db = self._conn()
        now = self.clock()
        with _transaction(db):
            removed = self._leaving(db, [i for i, _, _ in items])
            for record_id, reason, response in items:
                db.execute(
                    "INSERT INTO dead_letters (destination, payload, received_at, attempts, reason, last_response,"
                    " dead_at) SELECT destination, payload, received_at, attempts + 1, ?, ?, ? FROM records"
                    " WHERE id = ?",
                    (reason, response, now, record_id),
                )
                db.execute("DELETE FROM records WHERE id = ?", (record_id,))
        return removed

    async def next_ready_at(self, destination: str) -> float | None:
        return await self._run(self._next_ready_sync, destination)

    def _next_ready_sync(self, destination: str) -> float | None:
        # walks the (destination, not_before) index from the front, passing over the few records
        # in flight; a lease that expires is found by the dispatcher's periodic look anyway
        row = self._conn().execute(
            "SELECT not_before FROM records WHERE destination = ? AND leased_until <= ?"
            " ORDER BY not_before LIMIT 1",
            (destination, self.clock()),
        ).fetchone()
        return None if row is None else float(row[0])

    def depth(self, destination: str) -> int:
        """Undelivered records of a destination (in memory, no disk access)."""
        return self._depth.get(destination, 0)

    async def stats(self, *, exact: bool = True) -> dict[str, DepthStats]:
        # the running counts miss what another process (``router dlq replay``) adds: count the
        # stored records now and then and start again from there
        exact = exact or self.clock() - self._depth_checked > DEPTH_RECOUNT
        counts = None if exact else {name: n for name, n in self._depth.items() if n}
        stats = await self._run(self._stats_sync, counts)
        if exact:
            self._depth = {name: s.depth for name, s in stats.items()}
            self._depth_checked = self.clock()
        return stats

    def _stats_sync(self, counts: dict[str, int] | None) -> dict[str, DepthStats]:
        db = self._conn()
        if counts is None:
            counts = dict(db.execute("SELECT destination, COUNT(*) FROM records GROUP BY destination"))
        dead = dict(db.execute("SELECT destination, COUNT(*) FROM dead_letters GROUP BY destination"))
        out = {}
        for name in set(counts) | set(dead):
            # rows are inserted in receipt order (a replay inserts anew), so the lowest id is the oldest
            row = db.execute(
                "SELECT received_at FROM records WHERE destination = ? ORDER BY id LIMIT 1", (name,)
            ).fetchone()
            out[name] = DepthStats(
                depth=counts.get(name, 0),
                oldest_received_at=row[0] if row else None,
                dead_letters=dead.get(name, 0),
            )
        return out

    # -- dead letters ---------------------------------------------------------------------

    async def dead_letters(self, destination: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return await self._run(self._dead_letters_sync, destination, limit, offset)

    def _dead_letters_sync(self, destination: str, limit: int, offset: int) -> list[DeadLetter]:
        rows = self._conn().execute(
            "SELECT id, destination, payload, received_at, attempts, reason, last_response, dead_at"
            " FROM dead_letters WHERE destination = ? ORDER BY id LIMIT ? OFFSET ?",
            (destination, limit, offset),
        )
        return [DeadLetter(*row) for row in rows]

    async def replay(self, destination: str, limit: int) -> int:
        moved = await self._write(self._replay_sync, destination, limit)
        if moved:
            self._count({destination: moved})
            if self.on_append is not None:
                self.on_append({destination})
        return moved

    def _replay_sync(self, destination: str, limit: int) -> int:
        db = self._conn()
        now = self.clock()
        with _transaction(db):
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM dead_letters WHERE destination = ? ORDER BY id LIMIT ?", (destination, limit)
                )
            ]
            if not ids:
                return 0
            for chunk in _chunks(ids, 500):
                marks = ",".join("?" * len(chunk))
                # received_at restarts so the replayed event gets a fresh max_retry_age
                db.execute(
                    "INSERT INTO records (destination, payload, received_at, not_before)"
                    f" SELECT destination, payload, ?, ? FROM dead_letters WHERE id IN ({marks}) ORDER BY id",
                    (now, now, *chunk),
                )
                db.execute(f"DELETE FROM dead_letters WHERE id IN ({marks})", chunk)
        return len(ids)

    async def purge(self, destination: str) -> int:
        return await self._write(self._purge_sync, destination)

    def _purge_sync(self, destination: str) -> int:
        db = self._conn()
        with _transaction(db):
            return db.execute("DELETE FROM dead_letters WHERE destination = ?", (destination,)).rowcount


class _transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _pow2_chunks(items: list[T]) -> list[list[T]]:
    """``items`` in chunks of 512, 256, ... 1: few distinct statement texts (SQLite caches
    each prepared one) and never more than 999 parameters, the oldest SQLite's limit."""
    out, i = [], 0
    while i < len(items):
        size = 1 << min(9, (len(items) - i).bit_length() - 1)
        out.append(items[i : i + size])
        i += size
    return out


@functools.lru_cache(maxsize=64)
def _values_sql(head: str, row: str, n: int, first: int) -> str:
    """``head VALUES row, row, ...`` for ``n`` rows; each row's own parameter ``?{}`` is numbered
    from ``first`` up (the ones below are shared by every row)."""
    return f"{head} VALUES " + ",".join(row.format(i) for i in range(first, n + first))


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
        return "storage is full"
    return f"storage failed: {exc}"
