"""Ingest end to end: a Jitsu client's requests against the router's own HTTP server, delivered to a
real receiving server."""

from __future__ import annotations

import gzip
import io

import aiohttp
import pytest

from tests.conftest import webhook_config

TRACK = {"event_type": "page_view", "user": {"anonymous_id": "a1", "email": "jane@example.com"}, "url": "https://x"}


async def test_single_event_is_acknowledged_then_delivered_enriched(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    status, body = await router.post(
        "/api/v1/event?token=js.secret.1", TRACK, headers={"User-Agent": "test-agent/1.0"}
    )
    assert (status, body) == (200, {"status": "ok"})
    [event] = await receiver.wait_for(1)
    assert event["event_type"] == "page_view"
    assert event["user"]["email"] == "jane@example.com"
    assert len(event["eventn_ctx_event_id"]) == 36  # a UUID assigned by the router
    assert event["_timestamp"].endswith("Z")
    assert event["source_ip"] == "127.0.0.1"
    assert event["user_agent"] == "test-agent/1.0"
    assert event["api_key"] == "web"  # the key id, never the secret
    assert event["src"] == "jitsu"


async def test_array_and_text_plain_bodies_are_delivered_exactly(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    events = [{**TRACK, "event_id": f"e{i}"} for i in range(5)]
    status, _ = await router.post("/api/v1/events?token=js.secret.1", events)
    assert status == 200
    # sendBeacon posts text/plain
    status, _ = await router.post(
        "/api/v1/event?token=js.secret.1", {**TRACK, "event_id": "beacon"}, headers={"Content-Type": "text/plain"}
    )
    assert status == 200
    await receiver.wait_for(6)
    await router.drain()
    assert sorted(receiver.ids()) == sorted([f"e{i}" for i in range(5)] + ["beacon"])


async def test_s2s_needs_a_server_key(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    status, body = await router.post("/api/v1/s2s/event", TRACK, headers={"X-Auth-Token": "js.secret.1"})
    assert status == 401
    assert "browser key" in body["reason"]
    status, _ = await router.post("/api/v1/s2s/event", TRACK, headers={"X-Auth-Token": "s2s.secret.1"})
    assert status == 200
    [event] = await receiver.wait_for(1)
    assert event["src"] == "api"


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "reason"),
    [
        ("/api/v1/event", {"data": b"{}"}, 401, "missing token"),
        ("/api/v1/event?token=nope", {"data": b"{}"}, 401, "unknown token"),
        ("/api/v1/event?token=js.secret.1", {"data": b"{not json"}, 400, "invalid JSON"),
        ("/api/v1/event?token=js.secret.1", {"data": b"   "}, 400, "empty body"),
        ("/api/v1/event?token=js.secret.1", {"data": b"[1, 2]"}, 400, "event 0 is not a JSON object"),
        ("/api/v1/event?token=js.secret.1", {"data": b'"a string"'}, 400, "expected a JSON object"),
        ("/api/v1/event?token=js.secret.1", {"data": b"\xff\xfe{}"}, 400, "invalid JSON"),
        ("/api/v1/event?token=js.secret.1", {"data": b"{" + b'"a":"' + b"x" * 1_100_000 + b'"}'}, 413, "too large"),
    ],
)
async def test_bad_requests_get_a_4xx_with_a_json_reason(start_router, receiver, tmp_path, path, kwargs, status, reason):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    got, body = await router.post(path, **kwargs)
    assert got == status
    assert body["status"] == "error"
    assert reason in body["reason"]
    # and the router is still healthy afterwards
    assert (await router.get("/health"))[0] == 200


async def test_randomized_url_with_p_token(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    status, _ = await router.post("/api.d7f3a2?p_k8s=js.secret.1", TRACK)
    assert status == 200
    await receiver.wait_for(1)


async def test_cors_preflight_for_allowed_and_refused_origins(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    assert router.session is not None
    allowed = {"Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "content-type"}
    async with router.session.options(router.url + "/api/v1/event?token=js.secret.1", headers=allowed) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
    refused = {**allowed, "Origin": "https://evil.test"}
    async with router.session.options(router.url + "/api/v1/event?token=js.secret.1", headers=refused) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    # the actual POST from a refused origin is refused too, from an allowed one it carries CORS headers
    status, body = await router.post("/api/v1/event?token=js.secret.1", TRACK, headers={"Origin": "https://evil.test"})
    assert status == 403 and "origin" in body["reason"]
    async with router.session.post(router.url + "/api/v1/event?token=js.secret.1", json=TRACK,
                                   headers={"Origin": "https://shop.example.com"}) as resp:
        assert resp.status == 200
        assert resp.headers["Access-Control-Allow-Origin"] == "https://shop.example.com"


async def test_bulk_ndjson_upload_plain_and_gzip(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    lines = b"\n".join(b'{"event_type":"bulk","event_id":"b%d"}' % i for i in range(10)) + b"\n"
    form = aiohttp.FormData()
    form.add_field("file", io.BytesIO(lines), filename="events.ndjson")
    status, _ = await router.post("/api/v1/events/bulk?token=s2s.secret.1", data=form)
    assert status == 200
    form = aiohttp.FormData()
    gz = gzip.compress(lines.replace(b'"b', b'"g'))
    form.add_field("file", io.BytesIO(gz), filename="events.ndjson.gz")
    status, _ = await router.post("/api/v1/events/bulk?token=s2s.secret.1", data=form)
    assert status == 200
    await receiver.wait_for(20)
    assert sorted(receiver.ids()) == sorted([f"b{i}" for i in range(10)] + [f"g{i}" for i in range(10)])
    status, body = await router.post("/api/v1/events/bulk?token=js.secret.1", data=lines)
    assert status == 401


async def test_a_repeated_event_id_is_acknowledged_but_delivered_once(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    for _ in range(3):
        status, _ = await router.post("/api/v1/event?token=js.secret.1", {**TRACK, "event_id": "same-1"})
        assert status == 200
    await receiver.wait_for(1)
    await router.drain()
    assert receiver.ids() == ["same-1"]
    assert await router.metric("router_events_duplicate_total") == 2


async def test_tracking_pixel(start_router, receiver, tmp_path):
    import base64

    import orjson

    router = await start_router(webhook_config(tmp_path, receiver.url))
    data = base64.urlsafe_b64encode(orjson.dumps({**TRACK, "event_id": "px1"})).decode().rstrip("=")
    assert router.session is not None
    async with router.session.get(f"{router.url}/api/v1/p.gif?data={data}&token=js.secret.1") as resp:
        assert resp.status == 200
        assert resp.content_type == "image/gif"
    await receiver.wait_for(1)
    assert receiver.ids() == ["px1"]


async def test_the_pixel_answers_503_when_the_event_was_not_stored(start_router, receiver, tmp_path):
    import base64

    import orjson

    receiver.always_status = 503  # nothing leaves the queue
    config = webhook_config(tmp_path, receiver.url).replace(
        f"path: {tmp_path}/data\n", f"path: {tmp_path}/data\n  max_depth: 1\n"
    )
    router = await start_router(config)
    assert router.session is not None
    answers = []
    for n in range(2):
        data = base64.urlsafe_b64encode(orjson.dumps({**TRACK, "event_id": f"full{n}"})).decode().rstrip("=")
        async with router.session.get(f"{router.url}/api/v1/p.gif?data={data}&token=js.secret.1") as resp:
            answers.append((resp.status, resp.headers.get("Retry-After")))
    # the first fills the queue; the second is refused, and says so instead of a GIF
    assert answers == [(200, None), (503, "5")]
    assert router.router.queue.depth("hook") == 1


async def test_a_gzip_upload_of_several_members_keeps_every_event(start_router, receiver, tmp_path):
    router = await start_router(webhook_config(tmp_path, receiver.url))
    first = gzip.compress(b'{"event_type":"bulk","event_id":"m1"}\n')
    second = gzip.compress(b'{"event_type":"bulk","event_id":"m2"}\n')
    status, _ = await router.post("/api/v1/events/bulk?token=s2s.secret.1", data=first + second,
                                  headers={"Content-Encoding": "gzip"})
    assert status == 200
    await receiver.wait_for(2)
    assert sorted(receiver.ids()) == ["m1", "m2"]
