"""The webhook sender: builds requests and classifies answers; the core does the rest."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any

import jinja2
import jinja2.sandbox
import orjson

from router.destination import (
    Delivered,
    Delivery,
    Destination,
    DestinationContext,
    Outcome,
    PauseDestination,
    Rejected,
    Retry,
    RetryBatch,
    Sender,
)

from plugins.webhook.config import WebhookConfig

#: answers that mean "later": timeout, too early, locked, rate limited (and any 5xx)
RETRYABLE = frozenset({408, 423, 425, 429})
_env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_env.filters["tojson"] = lambda value: orjson.dumps(value).decode()


@functools.lru_cache(maxsize=64)
def compile_body(source: str) -> jinja2.Template:
    try:
        return _env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from None


def retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as an epoch time: seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return now + int(value)
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


class WebhookSender(Sender):
    name = "http"

    def __init__(self, config: WebhookConfig, http: Any) -> None:
        self.config = config
        self.http = http
        self.max_batch = max(1, config.batch_size)
        self.template = compile_body(config.body) if config.body else None
        self.headers = {"Content-Type": "application/json", **{k: v.get() for k, v in config.headers.items()}}

    def _render(self, event: dict[str, Any]) -> bytes | Rejected:
        """The event's part of the request body, or why it cannot have one. A template can fail on
        any value (``{{ revenue / 100 }}`` with a string): that refuses this event only."""
        try:
            if self.template is not None:
                return self.template.render(event).encode()
            return orjson.dumps(event)
        except Exception as exc:  # noqa: BLE001 - whatever a template raises is about this event alone
            what = "body template" if self.template is not None else "body"
            return Rejected(f"{what}: {type(exc).__name__}: {exc}")

    async def send(self, batch: Sequence[Delivery]) -> Sequence[Outcome]:
        rendered = [self._render(d.event) for d in batch]
        bodies = [part for part in rendered if isinstance(part, bytes)]
        if not bodies:
            return [part for part in rendered if isinstance(part, Rejected)]
        outcomes = iter(await self._post_all(bodies))
        return [next(outcomes) if isinstance(part, bytes) else part for part in rendered]

    async def _post_all(self, bodies: list[bytes]) -> list[Outcome]:
        """Send rendered events in one request; if the receiver says it is too large (413), in halves."""
        outcome = await self._post(bodies[0] if self.config.batch_size == 1 else b"[" + b",".join(bodies) + b"]")
        if isinstance(outcome, Rejected) and outcome.reason == "HTTP 413" and len(bodies) > 1:
            half = len(bodies) // 2
            first = await self._post_all(bodies[:half])
            try:
                second = await self._post_all(bodies[half:])
            except RetryBatch as exc:  # keep what the first half delivered; retry only the rest
                second = [Retry(exc.reason, exc.not_before)] * (len(bodies) - half)
            return first + second
        return [outcome] * len(bodies)

    async def _post(self, body: bytes) -> Outcome:
        """One request; the outcome of every event in it (whole-destination conditions are raised)."""
        async with self.http.request(self.config.method, self.config.url, data=body, headers=self.headers) as resp:
            text = (await resp.text(errors="replace"))[:2000]
            status = resp.status
            if 200 <= status < 300:
                return Delivered()
            if status in (401, 403):
                # the configured credentials are wrong: keep every event until they are fixed
                raise PauseDestination(f"the webhook answered {status}: check the credentials in its headers")
            # a receiver that says when to come back (e.g. 477 with Retry-After) is asking for a retry
            not_before = retry_after(resp.headers.get("Retry-After"), time.time())
            if status in RETRYABLE or status >= 500 or not_before is not None:
                raise RetryBatch(f"HTTP {status}", not_before)
            return Rejected(f"HTTP {status}", response=self._redact(text))

    def _redact(self, text: str) -> str:
        """A receiver's answer as kept in dead letters, without the configured header values."""
        for value in self.config.headers.values():
            if value.get():
                text = text.replace(value.get(), "***")
        return text


class WebhookDestination(Destination):
    def __init__(self, config: WebhookConfig, context: DestinationContext) -> None:
        self.sender = WebhookSender(config, context.http)

    def sender_for(self, event: dict[str, Any]) -> Sender:
        return self.sender
