"""Bad input, generated: whatever clients send, the router answers - never a 5xx, never a crash, each
4xx with a JSON body carrying a "reason" - and stays healthy: afterwards /health is 200 and a good
event still reaches the receiver. Plus: random values at config paths give a config or a ConfigError
whose every line is "<config>: <path>: <problem>", never another exception.

The router runs once per test function (its own aiohttp server on a loopback port and a receiver,
on an event loop in a background thread); Hypothesis drives it through synchronous calls.
"""

from __future__ import annotations

import base64
import copy
import gzip
import itertools
import json
import math
import re
import string
import uuid
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from router.app import Router
from router.config import ConfigError, Duration, parse_config
from router.registry import PluginManager
from tests.reliability_helpers import (
    CLIENT,
    SERVER,
    Answer,
    ThreadedRouter,
    assert_error_answer,
    router_config,
)

MAX_BODY = 1_000_000

FUZZ = settings(
    max_examples=150,
    deadline=None,
    database=None,  # no .hypothesis directory in the repository
    # no "explain" phase: its line tracing makes replaying a failure minutes slower
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@pytest.fixture
def fuzz_router(tmp_path):
    router = ThreadedRouter(
        lambda url: router_config(tmp_path, url, server={"max_body_bytes": MAX_BODY, "trusted_proxies": ["127.0.0.0/8"]},
                                  webhook={"batch_size": 100}, delivery={"batch_size": 500}),
        env={},
    ).start()
    yield router
    router.stop()


def assert_still_healthy(router: ThreadedRouter) -> None:
    """/health is 200 and a good event still flows to the receiver."""
    assert router.get("/health").status == 200
    event_id = f"good-{uuid.uuid4()}"
    answer = router.post(f"/api/v1/event?token={CLIENT}", orjson.dumps({"event_type": "good", "event_id": event_id}))
    assert answer.status == 200, answer
    delivered, dead = router.settle({event_id}, timeout=60)
    assert delivered, f"a good event did not reach the receiver: dead-lettered with {dead[event_id]!r}"


# -- strategies -----------------------------------------------------------------------------

JSON_LEAVES = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),  # beyond 64 bits too
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.sampled_from(["", " ", "\u0000", "\ud7ff\ue000", "null", "false", "{{ 7 * 7 }}", "0", "-1"]),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)),
    max_leaves=15,
)
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3(", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\x80"]


def dumps(value: Any) -> bytes:
    """Any JSON value as text (the stdlib: big integers, and NaN which is not JSON at all)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@st.composite
def invalid_utf8(draw: st.DrawFn) -> bytes:
    text = dumps(draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, min_size=1, max_size=4)))
    at = draw(st.integers(0, len(text)))
    return text[:at] + draw(st.sampled_from(INVALID_UTF8)) + text[at:]


@st.composite
def mutated_json(draw: st.DrawFn) -> bytes:
    text = dumps(draw(JSON_VALUES))
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, len(text)))
    return text[:start] + draw(st.binary(max_size=8)) + text[end:]


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    depth = draw(st.integers(1, 10_000))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'[{"a":', b"}]")]))
    inner = draw(st.sampled_from([b"1", b"{}", b"[]", b'"x"']))
    closed = draw(st.booleans())
    body = opener * depth + inner + (closer * depth if closed else b"")
    return body if draw(st.booleans()) else b'{"event_type":"deep","v":' + body + (b"}" if closed else b"")


BODIES = st.one_of(
    st.binary(max_size=500),
    JSON_VALUES.map(dumps),
    st.lists(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4), max_size=5).map(dumps),
    mutated_json(),
    invalid_utf8(),
    deep_nesting(),
    st.text(alphabet=" \t\r\n\x0b\x0c", max_size=50).map(str.encode),
    st.just(b""),
    st.sampled_from([b"NaN", b'{"a": NaN}', b'{"a": Infinity}', b"\xef\xbb\xbf{}", '{"a":1}'.encode("utf-16"),
                     b'{"a":"\\ud800"}', b'{"a":1}{"b":2}', b'{"a":1', b"[{}", b"[{},]", b"{'a': 1}"]),
)
CONTENT_TYPES = st.one_of(
    st.sampled_from([
        None, "application/json", "application/json; charset=utf-8", "text/plain", "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded", "multipart/form-data", "multipart/form-data; boundary=zz",
        "multipart/mixed", "application/gzip", "application/octet-stream", "", "*/*", "text/html; charset=utf-16",
        "application/json; charset=latin-1", ";;;", "a/b; c",
    ]),
    st.text(alphabet=string.ascii_letters + string.digits + "/;=-+. ", max_size=40),
)
EVENT_ENDPOINTS = ["/api/v1/event", "/api/v1/events", "/api/v1/s2s/event", "/api/v1/s2s/events", "/api.r4nd0m"]
HEADER_TEXT = st.text(alphabet=string.printable.strip("\r\n\x0b\x0c") + " ", max_size=40)


def post_raw(router: ThreadedRouter, path: str, body: bytes, content_type: str | None,
             headers: dict[str, str] | None = None, params: Any = None) -> Answer:
    headers = dict(headers or {})
    if content_type is not None:
        headers["Content-Type"] = content_type
    return router.post(path, body, headers=headers, params=params,
                       skip_auto_headers=("Content-Type",) if content_type is None else ())


def token_for(path: str, server: bool) -> str:
    return SERVER if server or "s2s" in path or "bulk" in path else CLIENT


def parsed_events(body: bytes) -> list[Any] | None:
    """What a correct router accepts: one object or a non-empty array of objects (None if not)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and data and all(isinstance(e, dict) for e in data):
        return data
    return None


# -- the ingest API -------------------------------------------------------------------------


@FUZZ
@given(body=BODIES, path=st.sampled_from(EVENT_ENDPOINTS), content_type=CONTENT_TYPES, server_key=st.booleans())
@example(body=b"[" * 10_000, path="/api/v1/event", content_type=None, server_key=False)
@example(body=b'{"event_type":"deep","v":' + b"[" * 300 + b"]" * 300 + b"}", path="/api/v1/event",
         content_type="application/json", server_key=False)
@example(body=b"\xff\xfe{}", path="/api/v1/s2s/event", content_type="text/plain", server_key=True)
@example(body=b" \n\t ", path="/api/v1/events", content_type="multipart/form-data", server_key=False)
def any_body_on_the_event_endpoints(router, body, path, content_type, server_key):
    answer = post_raw(router, f"{path}?token={token_for(path, server_key)}", body, content_type)
    assert_error_answer(answer, (path, content_type, body[:200]))
    events = parsed_events(body)
    if answer.status == 200:
        assert answer.json() == {"status": "ok"}
        assert events is not None, f"accepted {body[:200]!r}"
    elif events is None:
        assert answer.status == 400, (answer, body[:200])


def test_any_body_on_the_event_endpoints(fuzz_router):
    any_body_on_the_event_endpoints(fuzz_router)
    assert_still_healthy(fuzz_router)


KNOWN_PATHS = [
    ("user",), ("user", "email"), ("user", "anonymous_id"), ("user", "id"), ("event_type",), ("eventn_ctx",),
    ("eventn_ctx", "event_id"), ("eventn_ctx", "user"), ("eventn_ctx", "user", "email"), ("eventn_ctx", "user_agent"),
    ("event_id",), ("eventn_ctx_event_id",), ("_timestamp",), ("source_ip",), ("api_key",), ("src",),
    ("user_agent",), ("ids",), ("utm",), ("click_id",), ("url",), ("local_tz_offset",), ("utc_time",),
    ("page_title",), ("doc_path",), ("referer",),
]
WRONG_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from([{}, [], [{}], {"a": {"b": [1]}}, True, False, 0, -1, 1.5, 2**64, -(2**63) - 1, "", "   ", None]),
)
_probes = itertools.count()


def jitsu_event(compat: bool) -> dict[str, Any]:
    context = {
        "event_id": "", "user": {"anonymous_id": "anon-1", "email": "jane@example.com"}, "ids": {},
        "utc_time": "2026-01-01T00:00:00.000000Z", "local_tz_offset": 0, "url": "https://example.com/",
        "page_title": "t", "doc_path": "/", "referer": "", "utm": {}, "click_id": {}, "user_agent": "ua",
    }
    if compat:
        return {"eventn_ctx": context, "api_key": CLIENT, "src": "eventn", "event_type": "page_view"}
    return {**context, "api_key": CLIENT, "src": "jitsu", "event_type": "page_view"}


def set_path(event: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = event
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


@FUZZ
@given(
    changes=st.lists(st.tuples(st.sampled_from(KNOWN_PATHS), WRONG_VALUES), min_size=1, max_size=4),
    compat=st.booleans(), as_array=st.booleans(), path=st.sampled_from(EVENT_ENDPOINTS),
)
@example(changes=[(("user",), "a string")], compat=False, as_array=False, path="/api/v1/event")
@example(changes=[(("event_type",), 7)], compat=False, as_array=True, path="/api/v1/events")
@example(changes=[(("user", "email"), ["a@b.c"])], compat=False, as_array=False, path="/api/v1/event")
@example(changes=[(("eventn_ctx",), ["x"])], compat=True, as_array=False, path="/api/v1/event")
@example(changes=[(("event_id",), {"id": 1})], compat=False, as_array=False, path="/api/v1/s2s/event")
@example(changes=[(("event_id",), True)], compat=False, as_array=False, path="/api/v1/event")
@example(changes=[(("_timestamp",), 1700000000)], compat=False, as_array=False, path="/api/v1/event")
@example(changes=[(("source_ip",), ["1.2.3.4"])], compat=False, as_array=False, path="/api/v1/event")
def wrong_types_at_known_paths(router, acked, changes, compat, as_array, path):
    event = jitsu_event(compat)
    for where, value in changes:
        set_path(event, where, copy.deepcopy(value))
    probe = f"probe-{next(_probes)}"
    event["probe"] = probe
    body = dumps([event, {"event_type": "companion", "probe": f"{probe}-companion"}] if as_array else event)
    answer = post_raw(router, f"{path}?token={token_for(path, False)}", body, "application/json")
    assert_error_answer(answer, event)
    # any JSON object is an event: the router enriches what it can and delivers it
    assert answer.status == 200, (answer, event)
    acked.append(probe)


def test_wrong_types_at_every_known_path(fuzz_router):
    """Accepted, and delivered with the router's own fields right."""
    acked: list[str] = []
    wrong_types_at_known_paths(fuzz_router, acked)
    fuzz_router.drain()
    delivered = {e.get("probe"): e for e in fuzz_router.received()}
    missing = [p for p in acked if p not in delivered]
    duplicates = fuzz_router.metric("router_events_duplicate_total")
    # a client id that repeats (e.g. event_id 0 twice) is acknowledged and dropped as a duplicate
    assert len(missing) <= duplicates, f"{len(missing)} acknowledged events never arrived: {missing[:10]}"
    for probe, event in delivered.items():
        if probe is None:
            continue
        assert event["api_key"] == "web", event  # the key id, never the secret the client wrote there
        assert isinstance(event["eventn_ctx_event_id"], str) and event["eventn_ctx_event_id"].strip(), event
        assert event.get("_timestamp") and event.get("src"), event
    assert_still_healthy(fuzz_router)


@settings(FUZZ, max_examples=30)
@given(
    kind=st.sampled_from(["huge_string", "huge_array", "deep_value", "over_the_limit"]),
    size=st.floats(0.0, 1.0),
    char=st.sampled_from(["x", "é", "€", "😀", "\\n", "\\u00e9"]),
)
@example(kind="deep_value", size=0.0254, char="x")
@example(kind="huge_string", size=1.0, char="😀")
def huge_and_deep_bodies(router, kind, size, char):
    if kind == "huge_string":
        room = MAX_BODY - 200
        text = char * int((0.5 + 0.5 * size) * room / len(char.encode()))
        body = b'{"event_type":"huge","s":"' + text.encode() + b'"}'
        expect = {200}
    elif kind == "huge_array":
        body = dumps([{"i": i} for i in range(1 + int(size * 5000))])
        expect = {200}
    elif kind == "deep_value":
        depth = 1 + int(size * 10_000)
        body = b'{"event_type":"deep","v":' + b"[" * depth + b"]" * depth + b"}"
        expect = {200, 400}  # refusing to store what is nested too deeply is fine; failing is not
    else:
        body = b'{"s":"' + b"x" * int(MAX_BODY * (1 + size)) + b'"}'
        expect = {413}
    assert len(body) <= MAX_BODY or kind == "over_the_limit"
    answer = post_raw(router, f"/api/v1/events?token={CLIENT}", body, "application/json")
    assert_error_answer(answer, (kind, size, char))
    assert answer.status in expect, (kind, size, answer.status, answer.body[:200])


def test_huge_and_deep_bodies(fuzz_router):
    huge_and_deep_bodies(fuzz_router)
    assert_still_healthy(fuzz_router)


def test_events_that_fit_the_receiver_alone_are_not_dead_lettered_for_their_batch(fuzz_router):
    """Each event is under max_body_bytes and the receiver takes 1 MB requests; webhook batch_size is
    100. A batch of several large events is too big for the receiver (413) - that must not send to
    dead letters every event of the batch, small ones included, when each alone would be accepted."""
    assert fuzz_router.receiver is not None
    fuzz_router.receiver.always_status = 503  # down while the events queue up, so they share a batch
    ids = [f"big{i}" for i in range(3)] + ["small"]
    for event_id in ids[:3]:
        body = b'{"event_type":"big","event_id":"%s","s":"%s"}' % (event_id.encode(), b"x" * 600_000)
        assert fuzz_router.post(f"/api/v1/event?token={CLIENT}", body).status == 200
    assert fuzz_router.post(f"/api/v1/event?token={CLIENT}", orjson.dumps({"event_id": "small"})).status == 200
    fuzz_router.receiver.always_status = None
    delivered, dead = fuzz_router.settle(set(ids))
    assert not dead, f"dead-lettered although each fits the receiver alone: {dead}; delivered: {sorted(delivered)}"


TOKEN_VALUES = st.one_of(
    st.sampled_from([CLIENT, SERVER, "", " ", CLIENT + " ", CLIENT.upper(), SERVER[:-1], "null", "web"]),
    st.text(alphabet=string.ascii_letters + string.digits + "._-", max_size=30),
)


@st.composite
def token_placements(draw: st.DrawFn) -> tuple[list[tuple[str, str]], dict[str, str], list[str]]:
    """Query parameters, headers, and the values the router may read a token from (Jitsu's order:
    the first ?token=, X-Auth-Token, api_key, any ?p_*, the basic-auth user name)."""
    params = draw(st.lists(st.tuples(st.sampled_from(["token", "token", "p_x", "p_", "p_k8s", "tok"]), TOKEN_VALUES),
                           max_size=3))
    headers: dict[str, str] = {}
    basic_user: list[str] = []
    for name in draw(st.sets(st.sampled_from(["X-Auth-Token", "api_key", "Api-Key", "Authorization"]))):
        value = draw(TOKEN_VALUES)
        if name == "Authorization":
            form = draw(st.sampled_from(["basic_user_pass", "basic_user", "basic_raw", "bearer", "junk"]))
            if form == "basic_user_pass":
                headers[name] = f"Basic {base64.b64encode(f'{value}:x'.encode()).decode()}"
                basic_user.append(value)
            elif form == "basic_user":
                headers[name] = f"Basic {base64.b64encode(value.encode()).decode()}"
                basic_user.append(value)
            elif form == "basic_raw":
                headers[name] = f"Basic {value}"
            elif form == "bearer":
                headers[name] = f"Bearer {value}"
            else:
                headers[name] = draw(st.sampled_from(["Basic ////", "Basic \u00e9\u00e9", "Basic", "Basic =", "x"]))
        else:
            headers[name] = value
    candidates = [v for k, v in params if k == "token" or k.startswith("p_")]
    # HTTP trims the whitespace around header values
    candidates += [v.strip(" \t") for k, v in headers.items() if k != "Authorization"] + basic_user
    return params, headers, candidates


@FUZZ
@given(placement=token_placements(),
       path=st.sampled_from(EVENT_ENDPOINTS + ["/api/v1/events/bulk", "/api/v1/p.gif"]))
@example(placement=([("token", CLIENT), ("token", "wrong")], {}, [CLIENT, "wrong"]), path="/api/v1/event")
@example(placement=([("token", "wrong")], {"X-Auth-Token": CLIENT}, ["wrong", CLIENT]), path="/api/v1/event")
@example(placement=([("token", CLIENT)], {"X-Auth-Token": SERVER}, [CLIENT, SERVER]), path="/api/v1/s2s/event")
@example(placement=([("token", "")], {"Authorization": "Basic \u00e9\u00e9"}, [""]), path="/api/v1/event")
def wrong_and_duplicate_tokens(router, placement, path):
    params, headers, candidates = placement
    event = {"event_type": "token_test"}
    if path == "/api/v1/p.gif":
        params = [*params, ("data", base64.urlsafe_b64encode(orjson.dumps(event)).decode())]
        answer = router.get(path, params=params, headers=headers)
    else:
        answer = router.post(path, orjson.dumps(event), params=params, headers=headers)
    assert_error_answer(answer, (path, params, headers))
    valid = {CLIENT, SERVER} & set(candidates)
    if answer.status == 200:
        assert valid, ("accepted without a valid token", path, params, headers)
        if "s2s" in path or "bulk" in path:
            assert SERVER in valid, ("a server endpoint accepted without the server key", path, params, headers)
    if not valid:
        assert answer.status == 401, (answer, path, params, headers)


def test_wrong_and_duplicate_tokens(fuzz_router):
    wrong_and_duplicate_tokens(fuzz_router)
    assert_still_healthy(fuzz_router)


#: 60 MB of NDJSON in about 60 KB of gzip: over the 50x max_body_bytes an upload may inflate to
GZIP_BOMB = gzip.compress(b"{}\n" * 20_000_000, compresslevel=9)
NDJSON = b'{"event_type":"bulk","event_id":"b1"}\n{"event_type":"bulk","event_id":"b2"}\n'


def multipart(parts: list[tuple[dict[str, str], bytes]], boundary: str = "b0und", end: bool = True) -> bytes:
    out = b""
    for headers, content in parts:
        out += f"--{boundary}\r\n".encode()
        out += b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n" + content + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if end else b"")


@st.composite
def bulk_uploads(draw: st.DrawFn) -> tuple[bytes, dict[str, str], str]:
    kind = draw(st.sampled_from([
        "raw", "claims_gzip_header", "gzip_filename_not_gzip", "truncated_gzip", "gzip_of_garbage",
        "multipart_without_file", "multipart_garbage", "multipart_no_boundary", "multipart_wrong_boundary",
        "multipart_unterminated", "multipart_transfer_encoding", "multipart_part_encoding", "zlib_bomb",
    ]))
    garbage = draw(st.one_of(st.binary(max_size=300), BODIES))
    disposition = 'form-data; name="file"; filename="events.ndjson.gz"'
    headers: dict[str, str] = {}
    if kind == "raw":
        return garbage, {"Content-Type": draw(CONTENT_TYPES) or "application/x-ndjson"}, kind
    if kind == "claims_gzip_header":
        headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "x-gzip", "gzip, deflate"]))
        return garbage, headers, kind
    if kind == "truncated_gzip":
        whole = gzip.compress(NDJSON * draw(st.integers(1, 50)))
        cut = draw(st.integers(0, len(whole) - 1))
        body, ctype = whole[:cut], "application/gzip"
        if draw(st.booleans()):
            return multipart([({"Content-Disposition": disposition}, body)]), \
                {"Content-Type": "multipart/form-data; boundary=b0und"}, kind
        return body, {"Content-Type": ctype}, kind
    if kind == "gzip_of_garbage":
        return gzip.compress(garbage), {"Content-Type": "application/gzip"}, kind
    if kind == "zlib_bomb":
        # small on the wire, far over the limit once inflated
        return GZIP_BOMB, {"Content-Type": "application/gzip"}, kind
    if kind == "gzip_filename_not_gzip":
        return multipart([({"Content-Disposition": disposition}, b"\x1f\x8b" + garbage)]), \
            {"Content-Type": "multipart/form-data; boundary=b0und"}, kind
    ctype = "multipart/form-data; boundary=b0und"
    if kind == "multipart_without_file":
        names = draw(st.lists(st.text(alphabet=string.ascii_letters, min_size=1, max_size=8)
                              .filter(lambda n: n not in ("file", "events")), max_size=3))
        body = multipart([({"Content-Disposition": f'form-data; name="{n}"'}, garbage) for n in names])
    elif kind == "multipart_garbage":
        body = multipart([({"Content-Disposition": disposition}, garbage)])
    elif kind == "multipart_no_boundary":
        body, ctype = multipart([({"Content-Disposition": disposition}, NDJSON)]), "multipart/form-data"
    elif kind == "multipart_wrong_boundary":
        body = multipart([({"Content-Disposition": disposition}, NDJSON)], boundary="other")
    elif kind == "multipart_unterminated":
        body = multipart([({"Content-Disposition": disposition}, NDJSON)], end=False)[: draw(st.integers(0, 200))]
    elif kind == "multipart_transfer_encoding":
        cte = draw(st.sampled_from(["base64", "quoted-printable", "binary", "8bit", "x-unknown", "gzip"]))
        body = multipart([({"Content-Disposition": disposition, "Content-Transfer-Encoding": cte}, garbage)])
    else:  # multipart_part_encoding
        ce = draw(st.sampled_from(["gzip", "deflate", "identity", "br", "x-unknown"]))
        body = multipart([({"Content-Disposition": disposition, "Content-Encoding": ce}, garbage)])
    return body, {"Content-Type": ctype}, kind


@FUZZ
@given(upload=bulk_uploads())
@example(upload=(b"not gzip at all", {"Content-Encoding": "gzip"}, "claims_gzip_header"))
@example(upload=(multipart([({"Content-Disposition": 'form-data; name="file"; filename="e"'}, NDJSON)]),
                 {"Content-Type": "multipart/form-data"}, "multipart_no_boundary"))
@example(upload=(b"--b0und\r\nContent-Disposition: form-data; name=\"file\"; filename=\"e\"\r\n\r\n{}",
                 {"Content-Type": "multipart/form-data; boundary=b0und"}, "multipart_unterminated"))
@example(upload=(multipart([({"Content-Disposition": 'form-data; name="file"; filename="e"',
                              "Content-Transfer-Encoding": "x-unknown"}, NDJSON)]),
                 {"Content-Type": "multipart/form-data; boundary=b0und"}, "multipart_transfer_encoding"))
@example(upload=(gzip.compress(NDJSON)[:20], {"Content-Type": "application/gzip"}, "truncated_gzip"))
@example(upload=(multipart([({"Content-Disposition": 'form-data; name="other"'}, NDJSON)]),
                 {"Content-Type": "multipart/form-data; boundary=b0und"}, "multipart_without_file"))
def bulk_garbage(router, upload):
    body, headers, kind = upload
    answer = router.post(f"/api/v1/events/bulk?token={SERVER}", body, headers=headers,
                              skip_auto_headers=("Content-Type",))
    assert_error_answer(answer, (kind, headers, body[:200]))
    if kind in ("multipart_without_file", "gzip_filename_not_gzip", "zlib_bomb"):
        assert answer.status != 200, (kind, answer, body[:100])


@pytest.mark.filterwarnings("ignore::aiohttp.multipart.BadContentDispositionHeader")
def test_bulk_garbage(fuzz_router):
    bulk_garbage(fuzz_router)
    assert_still_healthy(fuzz_router)


@st.composite
def pixel_data(draw: st.DrawFn) -> str:
    """Broken pixel data, short enough for a request line (8 KB) - longer ones are a separate test."""
    good = base64.urlsafe_b64encode(orjson.dumps({"event_type": "pixel"})).decode()
    kind = draw(st.sampled_from(["random", "bytes", "truncated", "junk_inside", "not_an_object", "padding"]))
    if kind == "random":
        return draw(st.text(max_size=80))
    if kind == "bytes":
        encode = draw(st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]))
        return encode(draw(st.one_of(st.binary(max_size=100), BODIES))[:1000]).decode()
    if kind == "truncated":
        return good[: draw(st.integers(0, len(good)))]
    if kind == "junk_inside":
        at = draw(st.integers(0, len(good)))
        return good[:at] + draw(st.text(alphabet="!@#$%^&*() +/=_-é\u0000", min_size=1, max_size=5)) + good[at:]
    if kind == "not_an_object":
        return base64.b64encode(dumps(draw(JSON_VALUES))).decode()
    return good.rstrip("=") + "=" * draw(st.integers(0, 6))


@FUZZ
@given(data=pixel_data().filter(lambda d: len(d.encode()) < 2000), token=st.sampled_from([CLIENT, SERVER, None, "wrong", ""]))
@example(data="!!!!", token=CLIENT)
@example(data="é", token=CLIENT)
@example(data="eyJ", token=None)
def pixel_with_broken_base64(router, data, token):
    params = [("data", data)] + ([("token", token)] if token is not None else [])
    answer = router.get("/api/v1/p.gif", params=params)
    assert_error_answer(answer, params)
    if answer.status == 200:
        assert answer.content_type == "image/gif"


def test_pixel_with_broken_base64(fuzz_router):
    pixel_with_broken_base64(fuzz_router)
    assert_still_healthy(fuzz_router)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    path=st.one_of(
        st.sampled_from(EVENT_ENDPOINTS + ["/api/v1/events/bulk", "/api/v1/p.gif", "/health", "/metrics",
                                           "/api/v1/destinations", "/api.", "/api./x", "/", "/api/v1/../health"]),
        st.text(alphabet=string.ascii_letters + string.digits + "/._-~%", max_size=40).map(lambda p: "/" + p),
    ),
    body=st.one_of(st.none(), BODIES),
)
def any_method_and_path(router, method, path, body):
    answer = router.request(method, path + f"?token={CLIENT}", data=body)
    assert_error_answer(answer, (method, path))


def test_any_method_and_path(fuzz_router):
    any_method_and_path(fuzz_router)
    assert_still_healthy(fuzz_router)


RAW_HEADER_NAMES = [
    "User-Agent", "Origin", "X-Auth-Token", "api_key", "Authorization", "X-Admin-Token", "X-Forwarded-For",
    "X-Real-IP", "Content-Type", "Referer", "Accept-Language", "Access-Control-Request-Headers",
]
#: header values as bytes: visible ASCII, space and obs-text (0x80-0xff), which HTTP allows
HEADER_BYTES = st.one_of(
    st.binary(max_size=60).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)),
    st.sampled_from([b"http://[", b"http://[::1", b"https://[x].example.com", b"Mozilla/5.0 (caf\xe9)",
                     b"Bearer \xff\xfe", b"Basic \xff", b"\xff, 10.0.0.1", b"", b" "]),
)
#: headers that only describe the client: whatever they hold, the event is accepted
DESCRIPTIVE = ("User-Agent", "X-Forwarded-For", "X-Real-IP", "Referer", "Accept-Language")
RAW_TARGETS = [
    ("POST", f"/api/v1/event?token={CLIENT}"), ("POST", f"/api/v1/s2s/event?token={SERVER}"),
    ("POST", f"/api/v1/events/bulk?token={SERVER}"), ("POST", "/api/v1/event"),
    ("OPTIONS", f"/api/v1/event?token={CLIENT}"), ("OPTIONS", "/api/v1/events"), ("GET", "/api/v1/destinations"),
]


def raw_request(method: str, path: str, name: str, value: bytes, body: bytes = b'{"event_type":"raw"}') -> bytes:
    body = body if method == "POST" else b""
    return (f"{method} {path} HTTP/1.1\r\nHost: router\r\n".encode() + name.encode() + b": " + value
            + f"\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)


@FUZZ
@given(name=st.sampled_from(RAW_HEADER_NAMES), value=HEADER_BYTES, target=st.sampled_from(RAW_TARGETS))
@example(name="User-Agent", value=b"Mozilla/5.0 (caf\xe9)", target=RAW_TARGETS[0])
@example(name="X-Forwarded-For", value=b"\xff", target=RAW_TARGETS[1])
@example(name="Origin", value=b"http://[", target=RAW_TARGETS[0])
@example(name="Origin", value=b"http://[", target=RAW_TARGETS[4])
@example(name="Authorization", value=b"Bearer \xff\xfe", target=RAW_TARGETS[6])
@example(name="X-Admin-Token", value=b"\xff", target=RAW_TARGETS[6])
def header_bytes(router, name, value, target):
    method, path = target
    answer = router.raw(raw_request(method, path, name, value))
    assert_error_answer(answer, (method, path, name, value))
    if method == "POST" and "token=" in path and name in DESCRIPTIVE:
        assert answer.status == 200, (f"a {name} header of {value!r} cost the event: "
                                      f"{answer.status} {answer.body[:200]!r}")


def test_any_header_bytes(fuzz_router):
    header_bytes(fuzz_router)
    assert_still_healthy(fuzz_router)


@pytest.mark.parametrize(
    ("method", "path", "name", "value", "status"),
    [
        pytest.param("POST", f"/api/v1/event?token={CLIENT}", "User-Agent", b"Mozilla/5.0 (caf\xe9)", 200,
                     id="a Latin-1 User-Agent"),
        pytest.param("POST", f"/api/v1/s2s/event?token={SERVER}", "X-Forwarded-For", b"10.0.0.\xb9", 200,
                     id="X-Forwarded-For with a non-UTF-8 byte, from a trusted proxy"),
        pytest.param("POST", f"/api/v1/event?token={CLIENT}", "Origin", b"http://[", 403,
                     id="an Origin that is not a URL"),
        pytest.param("OPTIONS", f"/api/v1/event?token={CLIENT}", "Origin", b"http://[::1", 403,
                     id="a preflight Origin that is not a URL"),
        pytest.param("GET", "/api/v1/destinations", "Authorization", b"Bearer \xff\xfe", 401,
                     id="an admin token that is not UTF-8"),
        pytest.param("GET", "/api/v1/destinations", "X-Admin-Token", b"\xe9", 401,
                     id="an X-Admin-Token that is not UTF-8"),
    ],
)
def test_header_values_that_are_not_utf8_or_not_urls(fuzz_router, method, path, name, value, status):
    event_id = f"hdr-{uuid.uuid4()}"
    answer = fuzz_router.raw(raw_request(method, path, name, value, orjson.dumps({"event_id": event_id})))
    assert_error_answer(answer, (name, value))
    assert answer.status == status, (answer.status, answer.body[:200])
    if status == 200:
        delivered, dead = fuzz_router.settle({event_id})
        assert delivered, dead
    assert_still_healthy(fuzz_router)


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        pytest.param("/api/v1/event", b'{"event_type":"deep","v":' + b"[" * 300 + b"]" * 300 + b"}", {},
                     id="event nested 300 levels deep (valid JSON)"),
        pytest.param("/api/v1/events/bulk", multipart([({"Content-Disposition": 'form-data; name="file"'}, NDJSON)]),
                     {"Content-Type": "multipart/form-data"}, id="bulk multipart without a boundary"),
        pytest.param("/api/v1/events/bulk", b"no boundary anywhere", {"Content-Type": "multipart/form-data; boundary=zz"},
                     id="bulk multipart body without its boundary"),
        pytest.param("/api/v1/events/bulk", b'--zz\r\nContent-Disposition: form-data; name="file"\r\n\r\n{}',
                     {"Content-Type": "multipart/form-data; boundary=zz"}, id="bulk multipart unterminated"),
        pytest.param("/api/v1/events/bulk",
                     multipart([({"Content-Disposition": 'form-data; name="file"', "Content-Transfer-Encoding": "x-y"},
                                 NDJSON)], boundary="zz"),
                     {"Content-Type": "multipart/form-data; boundary=zz"}, id="bulk part with unknown transfer encoding"),
        pytest.param("/api/v1/events/bulk", b"not gzip", {"Content-Encoding": "gzip"},
                     id="bulk Content-Encoding gzip, body not gzip"),
        pytest.param("/api/v1/events/bulk", b"not deflate", {"Content-Encoding": "deflate"},
                     id="bulk Content-Encoding deflate, body not deflate"),
        pytest.param("/api/v1/event", b"not gzip", {"Content-Encoding": "gzip"},
                     id="event Content-Encoding gzip, body not gzip"),
    ],
)
def test_known_bad_inputs_get_a_4xx_with_a_json_reason(fuzz_router, path, body, headers):
    answer = fuzz_router.post(f"{path}?token={SERVER}", body, headers=headers)
    assert_error_answer(answer, path)
    assert 400 <= answer.status < 500, answer
    assert_still_healthy(fuzz_router)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    [
        pytest.param("GET", "/api/v1/p.gif?data=" + base64.urlsafe_b64encode(
            orjson.dumps({"event_type": "pixel", "pad": "x" * 9000})).decode() + f"&token={CLIENT}", None, {},
            id="pixel URL over 8 KB"),
        pytest.param("POST", f"/api/v1/event?token={CLIENT}", b'{"a":1}', {"Content-Encoding": "br"},
                     id="Content-Encoding br"),
        pytest.param("POST", f"/api/v1/events/bulk?token={SERVER}", b"\x00", {"Content-Encoding": "deflate"},
                     id="Content-Encoding deflate, a 1-byte body"),
    ],
)
def test_refusals_at_the_http_level_are_json_too(fuzz_router, method, path, body, headers):
    """What aiohttp refuses before the router's handlers run (the request line is too long, a content
    encoding it cannot decode) is still answered the router's way: a 4xx with a JSON reason."""
    answer = fuzz_router.request(method, path, data=body, headers=headers)
    assert_error_answer(answer, path[:80])
    assert_still_healthy(fuzz_router)


def test_bulk_gzip_declared_with_content_encoding_is_accepted(fuzz_router):
    """A gzip upload that says so in Content-Encoding (as `curl --data-binary @x.gz -H
    'Content-Encoding: gzip'` does) is accepted like one that does not."""
    answer = fuzz_router.post(f"/api/v1/events/bulk?token={SERVER}", gzip.compress(NDJSON),
                              headers={"Content-Encoding": "gzip", "Content-Type": "application/x-ndjson"})
    assert answer.status == 200, answer
    assert not fuzz_router.wait_for_ids({"b1", "b2"}), "the bulk events did not arrive"


# -- config values --------------------------------------------------------------------------

PLUGINS = PluginManager()

BASE_CONFIG: dict[str, Any] = {
    "server": {"listen": "127.0.0.1:8001", "max_body_bytes": 1000000, "admin_token": "adm"},
    "storage": {"path": "/tmp/router-config-fuzz"},
    "api_keys": [{"id": "web", "client_secret": "js.1", "server_secret": "s2s.1", "origins": ["*.example.com"]}],
    "destinations": {
        "hook": {
            "type": "webhook", "mode": "stream", "only_tokens": ["web"],
            "config": {"url": "https://example.com/hook", "method": "POST", "batch_size": 1,
                       "headers": {"Authorization": "Bearer x"}},
            "data_layout": {"table_name_template": "{{ event_type }}"},
            "delivery": {"batch_size": 100, "linger": "50ms", "concurrency": 2, "timeout": "30s",
                         "initial_backoff": "1s", "max_backoff": "5m", "max_retry_age": "24h",
                         "pause_probe": "1m", "lease_timeout": "5m"},
        }
    },
}
DELIVERY_KEYS = list(BASE_CONFIG["destinations"]["hook"]["delivery"])
HOOK = ("destinations", "hook")
CONFIG_PATHS: list[tuple[Any, ...]] = [
    ("server",), ("server", "listen"), ("server", "max_body_bytes"), ("server", "admin_token"),
    ("server", "shutdown_grace"), ("server", "dedup_window"), ("server", "trusted_proxies"),
    ("storage",), ("storage", "path"), ("storage", "max_bytes"), ("storage", "max_depth"),
    ("storage", "group_commit_window"),
    ("api_keys",), ("api_keys", 0), ("api_keys", 0, "id"), ("api_keys", 0, "client_secret"),
    ("api_keys", 0, "server_secret"), ("api_keys", 0, "origins"), ("api_keys", 1),
    ("destinations",), (*HOOK,), (*HOOK, "type"), (*HOOK, "mode"), (*HOOK, "only_tokens"), (*HOOK, "config"),
    (*HOOK, "config", "url"), (*HOOK, "config", "method"), (*HOOK, "config", "batch_size"),
    (*HOOK, "config", "headers"), (*HOOK, "config", "body"), (*HOOK, "data_layout"),
    (*HOOK, "data_layout", "table_name_template"), (*HOOK, "delivery"),
    *[(*HOOK, "delivery", key) for key in DELIVERY_KEYS],
    (*HOOK, "webhook"), (*HOOK, "unknown_key"),
]
DELETE = object()
YAML_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(), st.text(max_size=30),
    st.sampled_from([
        "${UNSET}", "${UNSET:-5}", "${UNSET:-}", "$${X}", "${}", "127.0.0.1:8001", "[::1]:0", ":80", "host:",
        "http://x/y", "https://", "ftp://x", "10s", "250ms", "-1", "0", "1e9", "5 m", "9" * 400 + "s", "POST",
        "get", "DELETE", "{{ event_type }}", "{% if %}", "{{", "{{ x | nope }}", "web", "*", "²", "٣", "\u0000",
        "a @ b", "@ $", "x: y", "- a",
    ]),
)
YAML_VALUES = st.recursive(
    YAML_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=10), st.integers(-5, 5)), children, max_size=4),
    ),
    max_leaves=10,
)
MUTATIONS = st.lists(
    st.tuples(st.sampled_from(CONFIG_PATHS), st.one_of(YAML_VALUES, st.just(DELETE))), min_size=1, max_size=3
)
TOP = ("server", "storage", "api_keys", "destinations")


def mutate(changes: list[tuple[tuple[Any, ...], Any]]) -> dict[str, Any]:
    config = copy.deepcopy(BASE_CONFIG)
    for path, value in changes:
        node: Any = config
        for key in path[:-1]:
            if isinstance(node, dict) and key in node or isinstance(node, list) and isinstance(key, int) \
                    and key < len(node):
                node = node[key]
            else:
                node = None
                break
        last = path[-1]
        if isinstance(node, dict):
            if value is DELETE:
                node.pop(last, None)
            else:
                node[last] = value
        elif isinstance(node, list) and isinstance(last, int):
            if value is DELETE:
                if last < len(node):
                    del node[last]
            elif last < len(node):
                node[last] = value
            else:
                node.append(value)
    return config


def check_config_problems(exc: ConfigError) -> None:
    assert exc.problems, "a ConfigError without problems"
    for problem in exc.problems:
        assert problem.startswith("<config>: "), problem
        rest = problem.removeprefix("<config>: ")
        assert re.match(r"(server|storage|api_keys|destinations)([.\[:]|$)", rest), f"names no path: {problem!r}"
        assert ": " in rest, f"no problem after the path: {problem!r}"
        assert "Traceback" not in rest and "object at 0x" not in rest, problem


@settings(FUZZ, max_examples=300)
@given(changes=MUTATIONS)
@example(changes=[((*HOOK, "type"), ["webhook"])])
@example(changes=[((*HOOK, "type"), {"a": 1})])
@example(changes=[((*HOOK, "config", "method"), 5)])
@example(changes=[(("api_keys",), 5)])
@example(changes=[(("server",), None)])
@example(changes=[((*HOOK, "delivery", "timeout"), 10**400)])
@example(changes=[((*HOOK, "config", "url"), DELETE)])
@example(changes=[(("server",), {1: "a", "b": "c"})])
def test_config_values_give_a_config_or_a_config_error(changes):
    text = yaml.safe_dump(mutate(changes), sort_keys=False, allow_unicode=True)
    try:
        parse_config(text, PLUGINS, env={})
    except ConfigError as exc:
        check_config_problems(exc)


@settings(FUZZ, max_examples=100)
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["!!python/object:os.system x", "a: !!binary x", "[", "- a\n- b", "a: *b",
                                       "server: &a [*a]", "a: &a [*a]", "? [a]\n: 1", "a: " + "[" * 2000, "\t", "null", "destinations: [1]"])))
def test_any_config_text_gives_a_config_or_a_config_error(text):
    try:
        parse_config(text, PLUGINS, env={})
    except ConfigError as exc:
        assert exc.problems and all(p.startswith("<config>: ") for p in exc.problems), exc.problems


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("api_keys: &keys [*keys]", id="a YAML alias that refers to itself"),
        pytest.param("server: " + "[" * 2000 + "]" * 2000, id="YAML nested 2000 levels deep"),
        pytest.param("server: {listen: '127.0.0.1:0', 1: a, b: c}", id="unknown keys of mixed types"),
        pytest.param("destinations: {hook: {type: [webhook], config: {url: 'http://x/'}}}", id="a list as the type"),
    ],
)
def test_config_texts_that_are_config_errors(text):
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PLUGINS, env={})
    assert all(p.startswith("<config>: ") for p in caught.value.problems), caught.value.problems


DURATION_PATHS = [("server", "shutdown_grace"), ("server", "dedup_window"), ("storage", "group_commit_window")] + [
    (*HOOK, "delivery", k) for k in ("linger", "timeout", "initial_backoff", "max_backoff", "max_retry_age",
                                     "pause_probe", "lease_timeout")
]
LIST_PATHS = [("server", "trusted_proxies"), ("api_keys", 0, "origins"), (*HOOK, "only_tokens")]


def raw_value(raw: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        if isinstance(raw, dict):
            raw = raw.get(key)
        elif isinstance(raw, list) and isinstance(key, int) and key < len(raw):
            raw = raw[key]
        else:
            return None
    return raw


def check_accepted(config: Any, raw: dict[str, Any]) -> None:
    """What an accepted config holds is usable and is what was written."""
    hook = config.destinations["hook"]
    for name in ("shutdown_grace", "dedup_window"):
        value = getattr(config.server, name)
        assert not math.isnan(value) and value >= 0, f"server.{name} accepted as {value}"
    value = config.storage.group_commit_window
    assert not math.isnan(value) and value >= 0, f"storage.group_commit_window accepted as {value}"
    for name in ("linger", "timeout", "initial_backoff", "max_backoff", "max_retry_age", "pause_probe",
                 "lease_timeout"):
        value = getattr(hook.delivery, name)
        assert isinstance(value, Duration) and not math.isnan(value) and value >= 0, \
            f"destinations.hook.delivery.{name} accepted as {value}"
    assert config.storage.max_bytes >= 0, f"storage.max_bytes accepted as {config.storage.max_bytes}"
    assert config.storage.max_depth >= 0, f"storage.max_depth accepted as {config.storage.max_depth}"
    for path in LIST_PATHS:
        written = raw_value(raw, path)
        assert written is None or isinstance(written, list), \
            f"{'.'.join(map(str, path))}: {written!r} was accepted as a list"
    Router(config, PLUGINS)  # an accepted config starts (`router check` ok means `router run` ok)


@settings(FUZZ, max_examples=300)
@given(changes=st.lists(st.tuples(st.sampled_from(DURATION_PATHS + LIST_PATHS + [("storage", "max_bytes"),
                                                                                   ("storage", "max_depth")]),
                                  YAML_VALUES), min_size=1, max_size=2))
@example(changes=[((*HOOK, "delivery", "timeout"), float("nan"))])
@example(changes=[(("storage", "max_depth"), -1)])
@example(changes=[(("api_keys", 0, "origins"), "*.example.com")])
@example(changes=[(("server", "trusted_proxies"), ["not-an-ip"])])
def test_accepted_config_values_are_usable(changes):
    raw = mutate(changes)
    try:
        config = parse_config(yaml.safe_dump(raw, sort_keys=False), PLUGINS, env={})
    except ConfigError as exc:
        check_config_problems(exc)
        return
    check_accepted(config, raw)


@pytest.mark.parametrize(
    ("path", "value", "why"),
    [
        ((*HOOK, "type"), ["webhook"], "a list as the type crashes parse_config with TypeError"),
        ((*HOOK, "delivery", "timeout"), float("nan"), "NaN is no duration"),
        ((*HOOK, "delivery", "initial_backoff"), float("nan"), "NaN is no duration"),
        (("storage", "max_depth"), -1, "a negative max_depth makes every ingest answer 503"),
        (("storage", "max_bytes"), -5, "a negative max_bytes silently caps the queue at 64 KB"),
        (("api_keys", 0, "origins"), "*.example.com", "a string is split into characters, '*' among them: any origin"),
        (("server", "trusted_proxies"), "10.0.0.1", "a string is split into characters"),
        (("server", "trusted_proxies"), ["not-an-ip"], "`router check` says ok, `router run` crashes"),
    ],
)
def test_config_mistakes_are_config_errors(path, value, why):
    text = yaml.safe_dump(mutate([(path, value)]), sort_keys=False)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, PLUGINS, env={})
    check_config_problems(caught.value)
    where = ".".join(str(p) for p in path).replace(".0.", "[0].")
    assert any(p.startswith(f"<config>: {where}") for p in caught.value.problems), (why, caught.value.problems)

