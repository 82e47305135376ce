"""What the contact and event senders share: the bound on requests per send, failures in the middle
of a send, and isolating the inputs of a batch HubSpot refused without naming them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable

import aiohttp

from plugins.hubspot.client import HubSpotError
from router.destination import Outcome, Rejected, Retry, RetryBatch, describe_error, time_left

log = logging.getLogger(__name__)

#: requests one send() may make to HubSpot (resends, halves, event definitions); what is still
#: undecided then is retried by the core in a later attempt
MAX_REQUESTS_PER_SEND = 24
#: failures in the middle of a send that make the undecided inputs retry (decided ones keep theirs)
TRANSIENT_FAILURES = (RetryBatch, aiohttp.ClientError, asyncio.TimeoutError, OSError)
#: answers to a batch that name no input but are worth splitting the batch for: 400 (one bad input
#: fails them all) and 413 (too large: halves fit)
SPLIT_STATUSES = frozenset({400, 413})
#: why an input was left for a later attempt when the core's deadline for the send drew near
OUT_OF_TIME = (
    "not sent in this attempt: another HubSpot request would outlast delivery.timeout, which cancels "
    "the send with every answer it had; retried later"
)


class SendClock:
    """How long this send's requests take. Before each request after the first, ``out_of_time()``
    says whether twice the slowest so far no longer fits before the core cancels the send: the
    measure is what HubSpot is doing now, so a fast HubSpot never stops a send early, whatever
    hubspot.timeout says."""

    def __init__(self) -> None:
        self.slowest = 0.0
        self._started: float | None = None

    def out_of_time(self) -> bool:
        """Called before each request: True when it should not start (never before the first)."""
        now = asyncio.get_running_loop().time()
        if self._started is None:
            self._started = now
            return False
        self.slowest = max(self.slowest, now - self._started)
        if self.short():
            return True
        self._started = now
        return False

    def short(self) -> bool:
        """Whether twice the slowest request so far no longer fits (never, before one is timed)."""
        return time_left() < 2 * self.slowest

    def took(self, seconds: float) -> None:
        """Record a request timed by the caller (requests running side by side)."""
        self.slowest = max(self.slowest, seconds)


async def keep_decided(work: Awaitable[None], results: dict[int, Outcome], pending: Iterable[int]) -> None:
    """Await ``work``, which fills ``results``. When it fails transiently half-way, what HubSpot has
    already decided stays decided and every other input of ``pending`` is retried; when it decided
    nothing, the failure is raised on (a whole-batch failure: the core holds the destination back)."""
    decided = len(results)
    try:
        await work
    except TRANSIENT_FAILURES as exc:
        if len(results) == decided:
            raise
        reason = exc.reason if isinstance(exc, RetryBatch) else describe_error(exc)
        not_before = exc.not_before if isinstance(exc, RetryBatch) else None
        for key in pending:
            results.setdefault(key, Retry(reason, not_before))


class BatchPlan:
    """The requests of one send: groups of inputs (positions) still to send, resent or split in
    halves as HubSpot answers, within :data:`MAX_REQUESTS_PER_SEND` requests."""

    def __init__(self, inputs: list[int], results: dict[int, Outcome], *, what: str, destination: str) -> None:
        self.groups: list[list[int]] = [inputs] if inputs else []
        self.results = results
        self.requests = 0
        self.what = what
        self.destination = destination
        self.clock = SendClock()

    def count(self) -> None:
        """Count a request of this send that is not a group's (e.g. creating an event definition)."""
        self.requests += 1

    def next(self) -> list[int] | None:
        """The next group's undecided inputs, its request counted. None when nothing is left, or when
        the send has made all its requests: every undecided input is then left to a retry."""
        while self.groups:
            group = [i for i in self.groups.pop(0) if i not in self.results]
            if not group:
                continue
            if self.requests >= MAX_REQUESTS_PER_SEND:
                self._leave(group, f"not sent in this attempt: it made its {MAX_REQUESTS_PER_SEND} HubSpot requests "
                            "resending parts of the batch HubSpot refused; retried later")
                return None
            if self.clock.out_of_time():
                self._leave(group, OUT_OF_TIME)
                return None
            self.requests += 1
            return group
        return None

    def _leave(self, group: list[int], reason: str) -> None:
        """Every undecided input (``group`` and the groups still planned) is retried later."""
        left = group + [i for g in self.groups for i in g if i not in self.results]
        self.groups.clear()
        for i in left:
            self.results.setdefault(i, Retry(reason))
        log.warning("destination %s: a send left %d %s for a later attempt after %d HubSpot requests: %s",
                    self.destination, len(left), self.what, self.requests, reason)

    def resend(self, group: list[int]) -> None:
        """Send the group's still undecided inputs again, next."""
        self.groups.insert(0, group)

    def refused(self, group: list[int], err: HubSpotError) -> None:
        """HubSpot refused the group without naming an input: a 400 or 413 on several inputs is split
        in halves (to find the bad ones, or to fit); anything else rejects the group with the answer."""
        if len(group) > 1 and err.status in SPLIT_STATUSES:
            half = len(group) // 2
            self.groups[:0] = [group[:half], group[half:]]
            return
        for i in group:
            self.results[i] = Rejected(err.describe(), response=err.text)
