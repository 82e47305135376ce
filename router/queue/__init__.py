"""The durable queue interface: one record per (event, destination), at-least-once.

Implementations: :mod:`router.queue.sqlite` (SQLite in WAL mode, the embedded default).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import attrs


class QueueFull(Exception):
    """The queue cannot accept more records now (disk full, depth limit). Ingest answers 503."""


@attrs.frozen
class NewEvent:
    """What ingest appends: one accepted event, stored once per destination that wants it."""

    payload: bytes  # the enriched event as JSON
    destinations: tuple[str, ...]
    #: a client-supplied event id: the event is dropped as a duplicate if this id was accepted
    #: within the dedup window. None when the router assigned the id.
    dedup_id: str | None = None


@attrs.frozen
class Record:
    id: int
    destination: str
    payload: bytes
    received_at: float
    attempts: int


@attrs.frozen
class DeadLetter:
    id: int
    destination: str
    payload: bytes
    received_at: float
    attempts: int
    reason: str
    last_response: str | None
    dead_at: float


@attrs.frozen
class DepthStats:
    depth: int
    oldest_received_at: float | None
    dead_letters: int


class Queue(abc.ABC):
    """What the core needs of a queue. Every method is safe to call from the event loop."""

    #: called (on the event loop) with the destinations that got new records after a commit
    on_append: Callable[[set[str]], None] | None = None
    #: called after each group commit with how many append() calls shared it
    on_commit: Callable[[int], None] | None = None

    @abc.abstractmethod
    async def open(self) -> None:
        """Open storage; records leased by a previous process become ready again."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending commits and close."""

    @abc.abstractmethod
    async def append(self, events: Sequence[NewEvent]) -> int:
        """Durably append events. Returns once committed (group commit with concurrent callers).

        Returns how many events were duplicates (their ``dedup_id`` was accepted within the dedup
        window) and were therefore not appended. Raises :class:`QueueFull` when storage cannot
        accept; then nothing of this call was appended.
        """

    @abc.abstractmethod
    async def lease(self, destination: str, limit: int, lease_seconds: float) -> list[Record]:
        """Up to ``limit`` ready records of a destination, oldest first, hidden from other leases
        for ``lease_seconds``."""

    @abc.abstractmethod
    async def ack(self, ids: Sequence[int]) -> None:
        """Remove delivered (or skipped) records."""

    @abc.abstractmethod
    async def release(self, ids: Sequence[int], not_before: float = 0.0) -> None:
        """Give leased records back untouched (no attempt counted), e.g. while a destination is
        paused; not ready again before ``not_before`` (epoch seconds) if it is later than theirs."""

    @abc.abstractmethod
    async def reschedule(self, items: Sequence[tuple[int, float, str]]) -> None:
        """``(id, not_before, last_error)``: release for another attempt, attempts += 1."""

    @abc.abstractmethod
    async def dead_letter(self, items: Sequence[tuple[int, str, str | None]]) -> None:
        """``(id, reason, last_response)``: move to dead letters."""

    @abc.abstractmethod
    async def next_ready_at(self, destination: str) -> float | None:
        """When the earliest not-leased record of a destination becomes ready, or None if none."""

    @abc.abstractmethod
    def depth(self, destination: str) -> int:
        """Undelivered records of a destination, from memory (cheap enough for every loop turn)."""

    @abc.abstractmethod
    async def stats(self, *, exact: bool = True) -> dict[str, DepthStats]:
        """Depth, oldest age and dead-letter count per destination. ``exact=False`` takes depths from
        this process's running counts (cheap, for every scrape) instead of counting stored records
        (what another process, e.g. ``router dlq``, needs)."""

    @abc.abstractmethod
    async def dead_letters(self, destination: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Dead letters of a destination, oldest first."""

    @abc.abstractmethod
    async def replay(self, destination: str, limit: int) -> int:
        """Move up to ``limit`` dead letters back into the queue (attempts reset). Returns how many."""

    @abc.abstractmethod
    async def purge(self, destination: str) -> int:
        """Delete every dead letter of a destination. Returns how many."""
