"""The webhook destination's body template, against a real receiving server."""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import webhook_config

# renders valid JSON only when revenue is a number
BODY = """'{"eventn_ctx_event_id": "{{ eventn_ctx_event_id }}", "amount": {{ revenue / 100 }}}'"""


@pytest.mark.parametrize("batch_size", [1, 4])
async def test_a_template_failing_on_some_events_rejects_only_those_and_sends_the_rest(
    start_router, receiver, tmp_path, batch_size
):
    config = webhook_config(tmp_path, receiver.url).replace(
        f"url: {receiver.url}\n", f"url: {receiver.url}\n      body: {BODY}\n      batch_size: {batch_size}\n"
    )
    router = await start_router(config)
    events = [
        {"event_type": "purchase", "event_id": "good-1", "revenue": 4990},
        {"event_type": "purchase", "event_id": "text-revenue", "revenue": "lots"},  # TypeError, not a TemplateError
        {"event_type": "purchase", "event_id": "good-2", "revenue": 100},
        {"event_type": "purchase", "event_id": "no-revenue"},  # jinja2's UndefinedError
    ]
    assert (await router.post("/api/v1/events?token=s2s.secret.1", events))[0] == 200
    await receiver.wait_for(2)
    await router.drain()

    assert sorted(receiver.ids()) == ["good-1", "good-2"]
    assert {e["amount"] for e in receiver.events} == {49.9, 1}
    assert len(receiver.requests) == (1 if batch_size > 1 else 2)  # the good ones went together
    letters = await router.router.queue.dead_letters("hook")
    reasons = {orjson.loads(dl.payload)["eventn_ctx_event_id"]: dl.reason for dl in letters}
    assert reasons == {
        "text-revenue": "body template: TypeError: unsupported operand type(s) for /: 'str' and 'int'",
        "no-revenue": "body template: UndefinedError: 'revenue' is undefined",
    }
    # refused at once, not retried, and the destination was never held back
    assert await router.metric("router_events_retried_total", destination="hook") == 0
    assert await router.metric("router_events_delivered_total", destination="hook") == 2


async def test_a_batch_where_every_event_fails_the_template_sends_nothing(start_router, receiver, tmp_path):
    config = webhook_config(tmp_path, receiver.url).replace(
        f"url: {receiver.url}\n", f"url: {receiver.url}\n      body: {BODY}\n      batch_size: 10\n"
    )
    router = await start_router(config)
    events = [{"event_type": "purchase", "event_id": f"bad-{i}", "revenue": "n/a"} for i in range(3)]
    assert (await router.post("/api/v1/events?token=s2s.secret.1", events))[0] == 200
    await router.drain()
    assert receiver.requests == []
    assert len(await router.router.queue.dead_letters("hook")) == 3
