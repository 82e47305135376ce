"""Secrets stay secret: the key secrets, the admin token and a webhook's header secret never appear in
logs (DEBUG), /metrics, /api/v1/destinations, error answers, dead letters (the router's own fields)
or delivered events - whatever the clients and the destination do."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import logging
import subprocess

import aiohttp
import orjson
from aiohttp import web

from tests.conftest import ROUTER_BIN, poll_until
from tests.reliability_helpers import ScriptedReceiver, router_config

CLIENT = "cs-Zq8Jv3-client-secret"
SERVER = "ss-Hk2Wx9-server-secret"
ADMIN = "adm-Pp7Rt4-admin-token"
HOOK = "hk-Lm5Nb6-webhook-secret"
#: Slack-style webhooks carry their credential in the URL
URL_KEY = "uk-Qw3Ee8-url-secret"
SECRETS = (CLIENT, SERVER, ADMIN, HOOK, URL_KEY)
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def secrets_config(tmp_path, url: str) -> str:
    return router_config(
        tmp_path, f"{url}?key={URL_KEY}",
        server={"admin_token": ADMIN},
        api_keys=[{"id": "web", "client_secret": CLIENT, "server_secret": SERVER, "origins": ["*.example.com"]}],
        webhook={"headers": {"Authorization": f"Bearer {HOOK}"}},
        delivery={"pause_probe": 0.1},
    )


def leaks(text: str | bytes, where: str) -> list[str]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return [f"{where}: {secret}" for secret in SECRETS if secret in text]


def echo_headers(request: web.Request) -> dict[str, object]:
    """A destination that answers with what it received: its answer legitimately holds the secret."""
    return {"error": "rejected", "you_sent": dict(request.headers)}


def plain_refusal(request: web.Request) -> dict[str, object]:
    return {"error": "invalid payload"}


class Client:
    """Requests as clients make them; keeps every answer body for the leak check."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session
        self.answers: list[tuple[str, int, bytes]] = []

    async def __call__(self, method: str, path: str, **kw: object) -> tuple[int, bytes]:
        async with self.session.request(method, self.url + path, **kw) as resp:
            body = await resp.read()
        self.answers.append((f"{method} {path}", resp.status, body))
        return resp.status, body


async def exercise(call: Client, receiver: ScriptedReceiver, prefix: str) -> set[str]:
    """Good events on every endpoint and token position, the secret in the event's api_key field,
    and a series of bad requests. Returns the ids that must be delivered."""
    ids = set()

    def event(n: int, **extra: object) -> dict[str, object]:
        ids.add(f"{prefix}{n}")
        return {"event_type": "secret_test", "event_id": f"{prefix}{n}", **extra}

    basic = base64.b64encode(f"{CLIENT}:".encode()).decode()
    pixel = base64.urlsafe_b64encode(orjson.dumps(event(6, api_key=CLIENT))).decode()
    bulk = gzip.compress(orjson.dumps(event(7, api_key=SERVER)) + b"\n")
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(bulk), filename="events.ndjson.gz")
    good = [
        ("POST", f"/api/v1/event?token={CLIENT}", {"json": event(1)}),
        ("POST", "/api/v1/s2s/event", {"json": event(2, api_key=SERVER), "headers": {"X-Auth-Token": SERVER}}),
        ("POST", "/api/v1/events", {"json": [event(3, api_key=CLIENT)], "headers": {"api_key": CLIENT}}),
        ("POST", f"/api.x1y2?p_z={CLIENT}", {"json": event(4, api_key=SERVER)}),
        ("POST", "/api/v1/event", {"json": event(5), "headers": {"Authorization": f"Basic {basic}"}}),
        ("GET", f"/api/v1/p.gif?data={pixel}", {}),
        ("POST", f"/api/v1/events/bulk?token={SERVER}", {"data": form}),
    ]
    for method, path, kw in good:
        status, body = await call(method, path, **kw)
        assert status == 200, (path, status, body)
    bad = [
        ("POST", f"/api/v1/event?token={CLIENT}x", {"json": {"event_type": "x"}}),
        ("POST", "/api/v1/s2s/event", {"json": {"event_type": "x"}, "headers": {"X-Auth-Token": CLIENT}}),
        ("POST", f"/api/v1/events/bulk?token={CLIENT}", {"data": b"{}"}),
        ("POST", f"/api/v1/event?token={SERVER[:-1]}", {"json": {"event_type": "x", "api_key": SERVER}}),
        ("POST", f"/api/v1/event?token={CLIENT}", {"data": f'{{"api_key": "{SERVER}", '.encode()}),
        ("POST", f"/api/v1/event?token={CLIENT}", {"data": f'["{SERVER}"]'.encode()}),
        ("POST", f"/api/v1/event?token={CLIENT}", {"data": b"x" * 1_100_000}),
        ("GET", f"/api/v1/p.gif?data=!!{SERVER}!!&token={CLIENT}", {}),
        ("POST", f"/api/v1/nope?token={CLIENT}", {"json": {}}),
        ("GET", "/api/v1/destinations", {"headers": {"Authorization": f"Bearer {ADMIN}x"}}),
        ("GET", "/api/v1/destinations", {"headers": {"Authorization": f"Bearer {SERVER}"}}),
        ("OPTIONS", f"/api/v1/event?token={CLIENT}", {"headers": {"Origin": f"https://{CLIENT}.evil"}}),
    ]
    for method, path, kw in bad:
        status, _ = await call(method, path, **kw)
        assert status >= 400, path
    return ids


async def test_secrets_never_leak_in_process(start_router, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    receiver = ScriptedReceiver()
    await receiver.start()
    found: list[str] = []
    try:
        router = await start_router(secrets_config(tmp_path, receiver.url), env={})
        assert router.session is not None
        call = Client(router.url, router.session)

        # 1. a healthy destination
        ids = await exercise(call, receiver, "ok")
        await receiver.wait_for_ids(ids)
        await router.drain()

        # 2. the destination refuses the credential (401): paused, every event kept, then resumed
        receiver.always_status = 401
        paused_ids = await exercise(call, receiver, "pause")

        async def paused() -> bool:
            _, body = await call("GET", "/api/v1/destinations", headers=ADMIN_HEADERS)
            return orjson.loads(body)["destinations"]["hook"]["state"] == "paused"

        await poll_until(paused)
        _, status_while_paused = await call("GET", "/api/v1/destinations", headers=ADMIN_HEADERS)
        _, metrics_while_paused = await call("GET", "/metrics")
        found += leaks(status_while_paused, "/api/v1/destinations while paused")
        found += leaks(metrics_while_paused, "/metrics while paused")
        receiver.always_status = None
        await receiver.wait_for_ids(paused_ids)
        await router.drain()

        # 3. 5xx answers: retried until delivered
        receiver.fail_first, receiver.fail_status = 4, 502
        retried_ids = await exercise(call, receiver, "retry")
        await receiver.wait_for_ids(retried_ids)
        await router.drain()

        # 4a. a 4xx whose body echoes the request headers (and so the header secret): dead letters.
        # The receiver's answer is kept as last_response with the configured header values
        # redacted; no field of the dead letter carries the secret, nor may the logs.
        receiver.answer = (422, echo_headers)
        await exercise(call, receiver, "echo")
        await router.drain()
        echoed = await router.router.queue.dead_letters("hook", limit=1000)
        assert echoed and all("***" in (d.last_response or "") for d in echoed)  # the echo, redacted
        for letter in echoed:
            found += leaks(f"{letter.reason} {letter.last_response} ", f"dead letter {letter.id}")
            found += leaks(letter.payload, f"dead letter {letter.id} payload")
        await router.router.queue.purge("hook")

        # 4b. a 4xx with a plain body: nothing of the dead letter holds a secret
        receiver.answer = (400, plain_refusal)
        await exercise(call, receiver, "dead")
        await router.drain()
        letters = await router.router.queue.dead_letters("hook", limit=1000)
        assert len(letters) == 7
        for letter in letters:
            assert letter.reason == "HTTP 400"
            found += leaks(f"{letter.reason} {letter.last_response} ", f"dead letter {letter.id}")
            found += leaks(letter.payload, f"dead letter {letter.id} payload")
        receiver.answer = None

        # status and metrics after all that
        status, body = await call("GET", "/api/v1/destinations", headers=ADMIN_HEADERS)
        assert status == 200
        found += leaks(body, "/api/v1/destinations")
        found += leaks((await call("GET", "/metrics"))[1], "/metrics")
        found += leaks((await call("GET", "/health"))[1], "/health")

        # every answer to a client, good or bad
        for what, status, body in call.answers:
            if what.startswith("GET /api/v1/p.gif") and status == 200:
                continue  # the gif
            found += leaks(body, f"answer {status} to {what}")

        # delivered events carry the key id, never a secret, even where the client put the secret
        for event in receiver.events:
            assert event["api_key"] == "web", event
            found += leaks(orjson.dumps(event), f"delivered event {event['eventn_ctx_event_id']}")
        # the header secret itself did reach the destination (where it belongs)
        assert receiver.requests[0]["headers"]["Authorization"] == f"Bearer {HOOK}"
    finally:
        await receiver.stop()

    logs = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert "PAUSED" in caplog.text  # the pause was logged, loudly
    found += leaks(logs, "logs")
    assert not found, "secrets leaked:\n" + "\n".join(found)


async def test_secrets_never_leak_from_the_process_at_debug_level(router_process, tmp_path):
    """The same with `router run --log-level debug` (ROUTER_LOG_LEVEL): its whole output, and
    `router dlq list`."""
    receiver = ScriptedReceiver()
    await receiver.start()
    found: list[str] = []
    try:
        path = tmp_path / "router.yaml"
        path.write_text(secrets_config(tmp_path, receiver.url))
        proc = await asyncio.to_thread(router_process, str(path), {"ROUTER_LOG_LEVEL": "debug",
                                                                   "PYTHONASYNCIODEBUG": "1"})
        async with aiohttp.ClientSession() as session:
            call = Client(proc.url, session)
            ids = await exercise(call, receiver, "ok")
            await receiver.wait_for_ids(ids)
            receiver.always_status = 401
            paused_ids = await exercise(call, receiver, "pause")

            async def paused() -> bool:
                _, body = await call("GET", "/api/v1/destinations", headers=ADMIN_HEADERS)
                return orjson.loads(body)["destinations"]["hook"]["state"] == "paused"

            await poll_until(paused)
            receiver.always_status = None
            await receiver.wait_for_ids(paused_ids)
            receiver.fail_first = 3
            await receiver.wait_for_ids(await exercise(call, receiver, "retry"))
            receiver.answer = (400, plain_refusal)
            started = receiver.started
            await exercise(call, receiver, "dead")
            await receiver.wait_until(lambda: receiver.started >= started + 7)
            _, body = await call("GET", "/api/v1/destinations", headers=ADMIN_HEADERS)

            async def all_dead() -> bool:
                _, body = await call("GET", "/api/v1/destinations", headers=ADMIN_HEADERS)
                return orjson.loads(body)["destinations"]["hook"]["dead_letters"] == 7

            await poll_until(all_dead)
            found += leaks(body, "/api/v1/destinations")
            found += leaks((await call("GET", "/metrics"))[1], "/metrics")
            for what, status, body in call.answers:
                if not (what.startswith("GET /api/v1/p.gif") and status == 200):
                    found += leaks(body, f"answer {status} to {what}")
        assert await asyncio.to_thread(proc.terminate) == 0
        output = "".join(proc.output)
        assert " DEBUG " in output, output[-2000:]  # debug logging was really on
        found += leaks(output, "router output at debug level")
        listing = await asyncio.to_thread(
            subprocess.run, [ROUTER_BIN, "--log-level", "debug", "dlq", "list", "hook", "-c", str(path)],
            capture_output=True, text=True, timeout=30,
        )
        assert listing.returncode == 0 and "7 dead letters" in listing.stdout, listing.stdout + listing.stderr
        found += leaks(listing.stdout + listing.stderr, "router dlq list")
        for event in receiver.events:
            assert event["api_key"] == "web", event
    finally:
        receiver.open()
        await receiver.stop()
    assert not found, "secrets leaked:\n" + "\n".join(found)
