"""The Destination interface: what a plugin builds, and the per-event outcomes it reports.

The core (the dispatcher) owns batching, concurrency, rate limiting, per-attempt timeouts, retries,
dead letters and metrics. A destination only turns a batch of events into requests and says, for
each event, what happened. A destination never sleeps or retries on its own.

    factory(name, config, context) -> Destination
    Destination.sender_for(event)  -> Sender        (which sender handles this event)
    await Sender.send(batch)       -> [Outcome, ...] (one per event, same order)

Outcomes:

- ``Delivered()``                       the destination accepted the event.
- ``Skipped(reason)``                   deliberately not sent; counted per reason, not an error.
- ``Retry(reason, not_before=None)``    transient; the core retries with capped exponential backoff
                                        and full jitter, never before ``not_before`` (epoch seconds).
- ``Rejected(reason, response=None)``   permanent; the event goes to dead letters with the reason and
                                        the destination's answer.

A send that makes several requests asks ``time_left()`` before each one: past ``delivery.timeout``
the core cancels the send and every answer it had is lost (the whole batch is retried), so a send
short of time stops and returns ``Retry`` for what it has not decided.

Destination-wide conditions are raised, not returned:

- ``raise PauseDestination(reason)``    credentials or scope are wrong: keep every event, stop sending,
                                        show the state loudly, probe again after ``pause_probe``.
- ``raise PauseSender(reason)``         only this sender's calls are refused (e.g. a scope one kind of
                                        call needs): its events wait for the next probe, the
                                        destination's other senders go on.
- ``raise RetryBatch(reason, not_before)`` the whole batch is to be retried (e.g. rate limited).
- any other exception (connection reset, timeout, ...) is a ``Retry`` of the whole batch.
"""

from __future__ import annotations

import abc
import asyncio
import contextvars
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs

if TYPE_CHECKING:
    from router.ratelimit import RateLimiter

Event = dict[str, Any]


@attrs.frozen
class Delivered:
    """The destination accepted the event."""


@attrs.frozen
class Skipped:
    """Deliberately not sent (e.g. a filter said no). Counted with its reason, not an error."""

    reason: str


@attrs.frozen
class Retry:
    """A transient failure: try again later, not before ``not_before`` (epoch seconds) if set."""

    reason: str
    not_before: float | None = None


@attrs.frozen
class Rejected:
    """A permanent failure: the event goes to dead letters with the reason and the answer."""

    reason: str
    response: str | None = None


Outcome = Delivered | Skipped | Retry | Rejected


#: the event-loop time by which the current ``send()`` must return; set by the dispatcher
SEND_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("send_deadline", default=None)


def time_left() -> float:
    """Seconds before the core cuts off the ``send()`` this is called from (its ``delivery.timeout``);
    infinite outside a send."""
    deadline = SEND_DEADLINE.get()
    return math.inf if deadline is None else deadline - asyncio.get_running_loop().time()


class DestinationError(Exception):
    """A send failure whose message is safe to show in status and logs (no URL, no credential).

    Raise a subclass from ``send()`` for a transient failure with a useful description; any other
    exception is shown by its type name only.
    """


class PauseDestination(Exception):
    """Destination-wide failure (bad credentials, missing scope): keep every event, stop sending.

    ``reason`` must say which credential failed, never its value.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PauseSender(PauseDestination):
    """Only the sender that raised it is refused (e.g. a missing scope that one kind of call needs):
    its events are kept and wait for a probe every ``pause_probe``; the destination's other senders
    keep sending. Raised outside ``send()`` (e.g. from ``start()``) it pauses the destination.

    ``reason`` must say which credential or scope failed, never a value.
    """


class RetryBatch(Exception):
    """The whole batch is to be retried, not before ``not_before`` (epoch seconds) if set."""

    def __init__(self, reason: str, not_before: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.not_before = not_before


@attrs.define
class Delivery:
    """One event as a sender sees it: the event plus what the core knows about its delivery."""

    record_id: int
    event: Event
    attempts: int
    received_at: float

    @property
    def event_id(self) -> str:
        return str(self.event.get("eventn_ctx_event_id", ""))


class Sender(abc.ABC):
    """Sends batches of events of one kind (e.g. contact upserts) to a destination."""

    #: a short name, used in metrics labels and logs (e.g. "contacts", "events", "http")
    name: str = "default"
    #: the most events the core passes to one ``send`` call
    max_batch: int = 1
    #: whether the core acquires the destination's rate limiter before each ``send`` call
    rate_limited: bool = True

    @abc.abstractmethod
    async def send(self, batch: Sequence[Delivery]) -> Sequence[Outcome]:
        """Send a batch; return one outcome per delivery, in the same order."""


@attrs.define
class DestinationContext:
    """What the core hands a destination factory."""

    #: the configured name of the destination (the key under ``destinations:``)
    name: str
    #: where the destination may keep files of its own
    data_dir: str
    #: an aiohttp ClientSession shared by the destination's senders (created by the core)
    http: Any
    #: a Prometheus registry for the destination's own metrics
    metrics_registry: Any = None
    #: the destination's ``delivery:`` settings (batch size, timeout, ...), for sanity checks
    delivery: Any = None


class Destination(abc.ABC):
    """A configured destination instance. Built by the factory its plugin registered."""

    @abc.abstractmethod
    def sender_for(self, event: Event) -> Sender:
        """The sender that handles ``event``; events with the same sender are batched together."""

    async def start(self) -> None:
        """Called once before the first send (e.g. load a catalog). May raise to be retried later."""

    async def close(self) -> None:
        """Release resources; called once at shutdown."""

    def rate_limiter(self) -> RateLimiter | None:
        """A rate limiter the core acquires before every send call, or None for no limit."""
        return None

    def status(self) -> Mapping[str, Any]:
        """Extra fields for the status endpoint. Never include secrets."""
        return {}


def describe_error(exc: BaseException) -> str:
    """A one-line description of a send failure that cannot carry a secret (no URLs, no headers)."""
    if isinstance(exc, DestinationError):
        return str(exc)
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or type(exc.os_error).__name__}"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed by the server"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return f"connection error ({type(exc).__name__})"
    return type(exc).__name__
