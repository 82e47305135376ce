"""Delivery: routing, filters, retries, dead letters and replay, against real receiving servers."""

from __future__ import annotations

import asyncio
import subprocess
import textwrap

from tests.conftest import ROUTER_BIN, webhook_config

TRACK = {"event_type": "page_view", "user": {"email": "jane@example.com"}}


def two_keys_config(tmp_path, url1: str, url2: str) -> str:
    return textwrap.dedent(
        f"""
        server: {{listen: "127.0.0.1:0"}}
        storage: {{path: "{tmp_path}/data"}}
        api_keys:
          - {{id: web, client_secret: js.web, server_secret: s2s.web}}
          - {{id: app, client_secret: js.app}}
        destinations:
          web_only:
            type: webhook
            only_tokens: [web]
            config: {{url: "{url1}"}}
            delivery: {{linger: 0}}
          everything:
            type: webhook
            config: {{url: "{url2}"}}
            delivery: {{linger: 0}}
        """
    )


async def test_only_tokens_routes_each_key_to_its_destinations(start_router, receiver, receiver2, tmp_path):
    router = await start_router(two_keys_config(tmp_path, receiver.url, receiver2.url))
    assert (await router.post("/api/v1/event?token=js.web", {**TRACK, "event_id": "from-web"}))[0] == 200
    assert (await router.post("/api/v1/event?token=js.app", {**TRACK, "event_id": "from-app"}))[0] == 200
    await receiver2.wait_for(2)
    await router.drain()
    assert receiver.ids() == ["from-web"]
    assert sorted(receiver2.ids()) == ["from-app", "from-web"]


def with_template(tmp_path, receiver, template: str) -> str:
    """The webhook config with a data_layout.table_name_template."""
    layout = f'data_layout:\n  table_name_template: "{template}"\n'
    return webhook_config(tmp_path, receiver.url).rstrip("\n") + "\n" + textwrap.indent(layout, "    ")


async def test_template_skips_are_counted_not_failed(start_router, receiver, tmp_path):
    router = await start_router(with_template(tmp_path, receiver, "{% if event_type == 'page_view' %}pages{% endif %}"))
    events = [{**TRACK, "event_id": "kept"}, {"event_type": "click", "event_id": "dropped"}]
    assert (await router.post("/api/v1/events?token=js.secret.1", events))[0] == 200
    await receiver.wait_for(1)
    await router.drain()
    assert receiver.ids() == ["kept"]
    assert await router.metric("router_events_skipped_total", destination="hook", reason="table_name_template") == 1
    assert await router.metric("router_events_failed_total", destination="hook", reason="rejected") == 0
    assert await router.metric("router_events_delivered_total", destination="hook") == 1


async def test_a_failing_receiver_gets_every_event_after_recovery(start_router, receiver, tmp_path):
    receiver.fail_first = 3
    router = await start_router(webhook_config(tmp_path, receiver.url))
    for i in range(5):
        assert (await router.post("/api/v1/event?token=js.secret.1", {**TRACK, "event_id": f"r{i}"}))[0] == 200
    await receiver.wait_for(5)
    await router.drain()
    assert sorted(receiver.ids()) == [f"r{i}" for i in range(5)]
    assert await router.metric("router_events_retried_total", destination="hook") >= 3


async def test_retry_after_is_honoured(start_router, receiver, tmp_path):
    receiver.fail_first, receiver.fail_status, receiver.retry_after = 1, 429, "1"
    router = await start_router(webhook_config(tmp_path, receiver.url))
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await router.post("/api/v1/event?token=js.secret.1", TRACK))[0] == 200
    await receiver.wait_for(1)
    # the fast backoff of the test config would have retried within 50 ms; Retry-After said 1 s
    assert loop.time() - started >= 0.9


async def test_rejected_events_go_to_dead_letters_and_replay_delivers_them(start_router, receiver, tmp_path):
    receiver.always_status = 422
    config_text = webhook_config(tmp_path, receiver.url)
    config_path = tmp_path / "router.yaml"
    config_path.write_text(config_text)
    router = await start_router(config_text)
    for i in range(3):
        assert (await router.post("/api/v1/event?token=js.secret.1", {**TRACK, "event_id": f"d{i}"}))[0] == 200
    await router.drain()
    letters = await router.router.queue.dead_letters("hook")
    assert len(letters) == 3
    assert letters[0].reason == "HTTP 422"
    assert "refused by test receiver" in (letters[0].last_response or "")
    assert await router.metric("router_events_failed_total", destination="hook", reason="rejected") == 3

    listing = subprocess.run([ROUTER_BIN, "dlq", "list", "hook", "-c", str(config_path)],
                             capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    assert "HTTP 422" in listing.stdout and "3 dead letters for hook" in listing.stdout

    receiver.always_status = None  # the receiver is fixed
    replay = await asyncio.create_subprocess_exec(
        ROUTER_BIN, "dlq", "replay", "hook", "-c", str(config_path), "--wait", "20",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(replay.communicate(), 30)
    assert replay.returncode == 0, out
    assert b"replayed 3/3" in out
    await receiver.wait_for(3)
    assert sorted(receiver.ids()) == ["d0", "d1", "d2"]
    assert b"0 undelivered" in out
    assert await router.router.queue.dead_letters("hook") == []


async def test_status_endpoint_needs_the_admin_token_and_hides_secrets(start_router, receiver, tmp_path):
    config = webhook_config(tmp_path, receiver.url)
    config = config.replace("url: " + receiver.url, f"url: {receiver.url}\n      headers: {{Authorization: 'Bearer hook-secret-9'}}")
    router = await start_router(config)
    assert (await router.post("/api/v1/event?token=js.secret.1", TRACK))[0] == 200
    await receiver.wait_for(1)
    await router.drain()
    assert receiver.requests[0]["headers"]["Authorization"] == "Bearer hook-secret-9"
    status, _ = await router.get("/api/v1/destinations")
    assert status == 401
    status, body = await router.get("/api/v1/destinations", headers={"Authorization": "Bearer admin-secret-1"})
    assert status == 200
    hook = body["destinations"]["hook"]
    assert hook["state"] == "running" and hook["delivered"] == 1 and hook["depth"] == 0
    _, metrics = await router.get("/metrics")
    for secret in ("hook-secret-9", "admin-secret-1", "js.secret.1", "s2s.secret.1"):
        assert secret not in str(body)
        assert secret not in metrics


async def test_bad_credentials_pause_the_destination_and_keep_every_event(start_router, receiver, tmp_path):
    receiver.always_status = 401
    config = webhook_config(tmp_path, receiver.url).replace("max_backoff: 0.05", "max_backoff: 0.05\n      pause_probe: 0.2")
    router = await start_router(config)
    for i in range(4):
        assert (await router.post("/api/v1/event?token=js.secret.1", {**TRACK, "event_id": f"p{i}"}))[0] == 200
    admin = {"Authorization": "Bearer admin-secret-1"}

    async def paused() -> bool:
        status = (await router.get("/api/v1/destinations", headers=admin))[1]["destinations"]["hook"]
        return status["state"] == "paused" and status["depth"] == 4

    from tests.conftest import poll_until

    await poll_until(paused)
    status = (await router.get("/api/v1/destinations", headers=admin))[1]["destinations"]["hook"]
    assert "401" in status["paused_reason"] and status["failed"] == 0
    assert await router.metric("router_destination_paused", destination="hook") == 1
    receiver.always_status = None  # the credential is fixed; the next probe resumes delivery
    await receiver.wait_for(4)
    await router.drain()
    assert sorted(receiver.ids()) == [f"p{i}" for i in range(4)]
    status = (await router.get("/api/v1/destinations", headers=admin))[1]["destinations"]["hook"]
    assert status["state"] == "running" and status["depth"] == 0


async def test_events_failing_past_the_maximum_retry_age_go_to_dead_letters(start_router, receiver, tmp_path):
    receiver.always_status = 503
    config = webhook_config(tmp_path, receiver.url).replace("max_backoff: 0.05", "max_backoff: 0.05\n      max_retry_age: 0.3")
    router = await start_router(config)
    assert (await router.post("/api/v1/event?token=js.secret.1", {**TRACK, "event_id": "old"}))[0] == 200

    async def dead() -> bool:
        return len(await router.router.queue.dead_letters("hook")) == 1

    from tests.conftest import poll_until

    await poll_until(dead)
    [letter] = await router.router.queue.dead_letters("hook")
    assert letter.reason.startswith("gave up after") and "HTTP 503" in letter.reason
    assert await router.metric("router_events_failed_total", destination="hook", reason="retries_exhausted") == 1


async def test_concurrent_requests_share_commits(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    results = await asyncio.gather(
        *(router.post("/api/v1/event?token=js.secret.1", {**TRACK, "event_id": f"g{i}"}) for i in range(100))
    )
    assert all(status == 200 for status, _ in results)
    assert await router.metric("router_events_received_total", api_key="web") == 100
    commits = await router.metric("router_queue_commits_total")
    assert 1 <= commits < 100
    await receiver.wait_for(100)


async def test_a_send_past_the_attempt_timeout_is_retried(start_router, receiver, tmp_path):
    receiver.slow_first, receiver.slow_seconds = 1, 1.0
    config = webhook_config(tmp_path, receiver.url).replace("max_backoff: 0.05", "max_backoff: 0.05\n      timeout: 0.2")
    router = await start_router(config)
    assert (await router.post("/api/v1/event?token=js.secret.1", {**TRACK, "event_id": "slow"}))[0] == 200
    await receiver.wait_for(1)
    assert receiver.ids() == ["slow"]
    assert len(receiver.requests) == 2  # the first attempt timed out; the second was delivered
    status = (await router.get("/api/v1/destinations", headers={"Authorization": "Bearer admin-secret-1"}))[1]
    assert status["destinations"]["hook"]["last_error"] == "no answer within 0.2s"


async def test_a_template_that_fails_for_an_event_dead_letters_it_with_the_reason(start_router, receiver, tmp_path):
    router = await start_router(with_template(tmp_path, receiver, "{{ user.email }}"))
    events = [{**TRACK, "event_id": "has-user"}, {"event_type": "anon", "event_id": "no-user"}]
    assert (await router.post("/api/v1/events?token=js.secret.1", events))[0] == 200
    await receiver.wait_for(1)
    await router.drain()
    assert receiver.ids() == ["has-user"]
    [letter] = await router.router.queue.dead_letters("hook")
    assert letter.reason == "table_name_template: 'user' is undefined"


class FailingFilter:
    """A third-party filter with a bug: it raises for events without a user."""

    from router import hookimpl

    @staticmethod
    @hookimpl
    def router_filter_event(destination, event):
        return "vip" if event["user"]["tier"] == "vip" else None


async def test_a_plugin_filter_that_raises_dead_letters_that_event_only(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url), extra_plugins=(FailingFilter,))
    events = [{"event_type": "anon", "event_id": "bad"}, {**TRACK, "event_id": "good", "user": {"tier": "basic"}}]
    assert (await router.post("/api/v1/events?token=js.secret.1", events))[0] == 200
    await receiver.wait_for(1)
    await router.drain()
    assert receiver.ids() == ["good"]
    [letter] = await router.router.queue.dead_letters("hook")
    assert letter.reason == "filter failed: KeyError"


async def test_after_a_429_the_rest_of_the_batch_waits_for_retry_after(start_router, receiver, tmp_path):
    receiver.fail_first, receiver.fail_status, receiver.retry_after = 1, 429, "60"
    router = await start_router(webhook_config(tmp_path, receiver.url))
    events = [{**TRACK, "event_id": f"b{i}"} for i in range(20)]
    assert (await router.post("/api/v1/events?token=js.secret.1", events))[0] == 200
    await router.drain()  # returns once the destination is held back
    assert len(receiver.requests) == 1  # one event per request (batch_size 1); the other 19 wait
    status = (await router.get("/api/v1/destinations", headers={"Authorization": "Bearer admin-secret-1"}))[1]
    assert status["destinations"]["hook"]["depth"] == 20


async def test_a_probe_answered_with_a_rejection_ends_the_pause(start_router, receiver, tmp_path):
    receiver.always_status = 401
    config = webhook_config(tmp_path, receiver.url).replace("max_backoff: 0.05", "max_backoff: 0.05\n      pause_probe: 0.1")
    router = await start_router(config)
    assert (await router.post("/api/v1/event?token=js.secret.1", {**TRACK, "event_id": "x1"}))[0] == 200
    from tests.conftest import poll_until

    async def paused() -> bool:
        return router.router.dispatchers["hook"].state == "paused"

    await poll_until(paused)
    receiver.always_status = 422  # credentials fixed, but this event is refused for itself

    async def dead_lettered() -> bool:
        return len(await router.router.queue.dead_letters("hook")) == 1

    await poll_until(dead_lettered)
    assert router.router.dispatchers["hook"].state == "running"
    assert await router.metric("router_destination_paused", destination="hook") == 0
