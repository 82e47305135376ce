"""The HubSpot destination end to end: the router in-process against the HubSpot emulator on loopback."""

from __future__ import annotations

import logging
import re
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from plugins.hubspot.emulator import Emulator, serve
from plugins.hubspot.events import occurrence_uuid
from tests.conftest import RunningRouter, poll_until

TOKEN = "pat-na1-5ec4e7-70ken-never-logged"
WRONG_TOKEN = "pat-na1-wr0ng-70ken-never-logged"
HUB_ID = "20546336"
ADMIN = {"Authorization": "Bearer admin-secret-1"}
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
SEND = "/events/v3/send/batch"

CUSTOM_PROPERTIES: list[dict[str, Any]] = [
    {"name": "favorite_color", "label": "Favorite Color", "type": "string", "fieldType": "text"},
    {"name": "plan", "label": "Plan", "type": "enumeration", "fieldType": "select",
     "options": [{"label": "Free", "value": "free"}, {"label": "Pro", "value": "pro"}]},
    {"name": "interests", "label": "Interests", "type": "enumeration", "fieldType": "checkbox",
     "options": [{"label": "Sports", "value": "sports"}, {"label": "Music", "value": "music"},
                 {"label": "Travel", "value": "travel"}]},
    {"name": "signup_date", "label": "Signup date", "type": "date", "fieldType": "date"},
    {"name": "last_seen", "label": "Last seen", "type": "datetime", "fieldType": "date"},
    {"name": "vip", "label": "VIP", "type": "bool", "fieldType": "booleancheckbox",
     "options": [{"label": "Yes", "value": "true"}, {"label": "No", "value": "false"}]},
    {"name": "score", "label": "Score", "type": "number", "fieldType": "number"},
    {"name": "preferences", "label": "Preferences", "type": "string", "fieldType": "textarea"},
]


class HubSpot:
    """The emulator served on a loopback port, and its URL."""

    def __init__(self, emulator: Emulator, url: str) -> None:
        self.emulator = emulator
        self.url = url

    def requests_to(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.emulator.requests if r["path"].startswith(path)]

    async def set_faults(self, *faults: dict[str, Any]) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{self.url}/_emulator/faults", json={"faults": list(faults)}) as resp,
        ):
            assert resp.status == 200, await resp.text()


@pytest.fixture
async def hubspot() -> AsyncIterator[HubSpot]:
    # a 10 s window compressed to 0.2 s, so waiting out a 429 takes no time
    emulator = Emulator(TOKEN, HUB_ID, properties=CUSTOM_PROPERTIES, rate_limit=100, rate_window=0.2, seed=1)
    runner = await serve(emulator, "127.0.0.1", 0)
    yield HubSpot(emulator, f"http://127.0.0.1:{runner.addresses[0][1]}")
    await runner.cleanup()


def hubspot_config(
    tmp_path: Any, url: str, *, token: str = TOKEN, settings: str = "", dest_extra: str = "", server_extra: str = "",
    delivery: str = "",
) -> str:
    """One api key and one HubSpot destination ``hs`` on the emulator, with fast retries;
    ``delivery`` overrides or adds ``delivery:`` settings (``"batch_size: 1, pause_probe: 0.3s"``)."""
    config = textwrap.dedent(
        f"""
        server:
          listen: 127.0.0.1:0
          admin_token: admin-secret-1
          shutdown_grace: 0.5s
        storage:
          path: {tmp_path}/data
        api_keys:
          - id: web
            client_secret: js.secret.1
            server_secret: s2s.secret.1
        destinations:
          hs:
            type: hubspot
            hubspot:
              access_token: {token}
              hub_id: "{HUB_ID}"
              api_base: {url}
              track_base: {url}
        """
    )
    config += textwrap.indent(textwrap.dedent(settings).strip("\n"), " " * 6) + "\n" if settings else ""
    config += textwrap.indent(textwrap.dedent(
        """
        delivery:
          batch_size: 500
          linger: 0
          initial_backoff: 0.01
          max_backoff: 0.05
        """
    ).strip("\n"), " " * 4) + "\n"
    head, block = config.split("    delivery:\n")
    for setting in filter(None, (d.strip() for d in delivery.split(","))):
        key = setting.split(":")[0]
        block, found = re.subn(rf"^      {key}: .*$", f"      {setting}", block, count=1, flags=re.M)
        block += "" if found else f"      {setting}\n"
    config = head + "    delivery:\n" + block
    config += textwrap.indent(textwrap.dedent(dest_extra).strip("\n"), " " * 4) + "\n" if dest_extra else ""
    if server_extra:
        config = config.replace("  shutdown_grace: 0.5s\n", "  shutdown_grace: 0.5s\n" + server_extra)
    return config


async def post(router: RunningRouter, events: list[dict[str, Any]]) -> None:
    status, body = await router.post("/api/v1/events?token=s2s.secret.1", events)
    assert status == 200, body


async def all_delivered(router: RunningRouter, name: str = "hs", timeout: float = 20) -> None:
    """Until nothing of the destination is left in the queue, retries included."""

    async def queue_empty() -> bool:
        await router.drain()
        return router.router.queue.depth(name) == 0

    await poll_until(queue_empty, timeout)


async def status_of(router: RunningRouter, name: str = "hs") -> dict[str, Any]:
    status, body = await router.get("/api/v1/destinations", headers=ADMIN)
    assert status == 200
    return dict(body["destinations"][name])


def identify(email: str | None, **user: Any) -> dict[str, Any]:
    if email is not None:
        user["email"] = email
    return {"event_type": "user_identify", "user": user}


# -- identifies -> contacts ----------------------------------------------------------------------


RICH_USER = {
    "anonymous_id": "anon-1",                   # unknown to HubSpot: dropped
    "firstname": "Jane",
    "Favorite Color": "blue",                   # -> favorite_color
    "plan": "Pro",                              # label -> option value "pro"
    "interests": ["Music", "travel"],           # checkbox -> "music;travel"
    "signup_date": "2026-01-20T21:14:16Z",      # ISO datetime -> its UTC date at midnight
    "last_seen": 1768943656,                    # epoch seconds -> epoch ms
    "vip": "yes",                               # -> "true"
    "score": 42.0,                              # -> "42"
    "preferences": {"newsletter": True},        # object -> JSON text
    "hs_email_domain": "example.com",           # calculated: dropped
    "createdate": "2020-01-01",                 # read-only: dropped
    "lastname": None,                           # null: skipped
}


@pytest.mark.parametrize("contacts_api", ["v3", "v1"])
async def test_identify_becomes_a_contact_with_converted_normalised_filtered_properties(
    start_router, hubspot, tmp_path, contacts_api
):
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings=f"contacts_api: {contacts_api}"))
    await post(router, [
        identify("jane@example.com", **RICH_USER),
        # the SDK's compat mode: the user under eventn_ctx
        {"event_type": "user_identify", "eventn_ctx": {"user": {"email": "Bob@Example.com", "Favorite Color": "red",
                                                                "plan": "Gold"}}},
    ])
    await all_delivered(router)

    jane = hubspot.emulator.contacts["jane@example.com"]["properties"]
    assert jane["firstname"] == "Jane"
    assert jane["favorite_color"] == "blue"
    assert jane["plan"] == "pro"
    assert jane["interests"] == "music;travel"
    assert jane["signup_date"] == "2026-01-20"
    assert jane["last_seen"] == "2026-01-20T21:14:16.000Z"
    assert jane["vip"] == "true"
    assert jane["score"] == "42"
    assert orjson.loads(jane["preferences"]) == {"newsletter": True}
    assert "anonymous_id" not in jane and "hs_email_domain" not in jane and "lastname" not in jane
    assert jane["createdate"] != "2020-01-01"
    bob = hubspot.emulator.contacts["bob@example.com"]["properties"]
    assert bob["favorite_color"] == "red"
    assert "plan" not in bob  # "Gold" is no option: left out, the rest sent

    dropped = {reason: await router.metric("router_hubspot_properties_dropped_total", destination="hs", reason=reason)
               for reason in ("unknown", "calculated", "read_only", "invalid_value")}
    assert dropped == {"unknown": 1, "calculated": 1, "read_only": 1, "invalid_value": 1}
    assert await router.metric("router_events_delivered_total", destination="hs") == 2
    paths = {r["path"] for r in hubspot.emulator.requests}
    if contacts_api == "v3":
        assert paths == {"/crm/v3/properties/contacts", UPSERT}
    else:
        assert paths == {"/properties/v1/contacts/properties", "/contacts/v1/contact/createOrUpdate/email/jane@example.com/",
                         "/contacts/v1/contact/createOrUpdate/email/Bob@Example.com/"}
    status = await status_of(router)
    assert status["contacts_api"] == contacts_api and status["properties_known"] > 40
    assert status["state"] == "running" and status["daily_limit_reached"] is False


async def test_150_identifies_go_in_batches_of_at_most_100_with_duplicates_merged(start_router, hubspot, tmp_path):
    router = await start_router(hubspot_config(tmp_path, hubspot.url))
    events = []
    for i in range(130):
        events.append({**identify(f"user{i}@example.com", firstname=f"First{i}"), "utc_time": "2026-01-01T00:00:00Z"})
        if i < 20:
            # the same person again, differently cased, with an earlier event time but arriving later:
            # the merge follows event time, so these values lose where they clash
            older = identify(f"USER{i}@example.com", firstname="Older", lastname=f"Last{i}")
            events.append({**older, "utc_time": "2025-12-31T00:00:00Z"})
    await post(router, events)
    await all_delivered(router)

    upserts = hubspot.requests_to(UPSERT)
    assert [r["status"] for r in upserts] == [200, 200]  # 150 events: 2 requests, HubSpot's 100 cap respected
    assert len(hubspot.emulator.contacts) == 130
    assert hubspot.emulator.contacts["user7@example.com"]["properties"]["firstname"] == "First7"
    assert hubspot.emulator.contacts["user7@example.com"]["properties"]["lastname"] == "Last7"
    assert await router.metric("router_events_delivered_total", destination="hs") == 150


async def test_no_email_and_template_skips_are_counted_not_sent(start_router, hubspot, tmp_path):
    config = hubspot_config(tmp_path, hubspot.url, dest_extra="""
        data_layout:
          table_name_template: "{% if event_type != 'internal' %}{{ event_type }}{% endif %}"
    """)
    router = await start_router(config)
    await post(router, [
        identify(None, firstname="Nobody"),
        {"event_type": "purchase", "user": {"email": "  "}},
        {"event_type": "purchase", "user": {"email": 42}},
        {"event_type": "internal", "user": {"email": "jane@example.com"}},
        identify("jane@example.com", firstname="Jane"),
    ])
    await all_delivered(router)
    assert await router.metric("router_events_skipped_total", destination="hs", reason="no email") == 3
    assert await router.metric("router_events_skipped_total", destination="hs", reason="table_name_template") == 1
    assert await router.metric("router_events_failed_total", destination="hs", reason="rejected") == 0
    assert list(hubspot.emulator.contacts) == ["jane@example.com"]
    assert hubspot.emulator.events == []


# -- other events -> HubSpot events ----------------------------------------------------------------


TRACKS = [
    {"event_type": "purchase", "user": {"email": "jane@example.com", "firstname": "Jane"}, "revenue": 49.9,
     "product": "T-shirt", "utc_time": "2026-01-20T21:14:16.512Z"},
    {"event_type": "purchase", "eventn_ctx": {"user": {"email": "bob@example.com"}}, "conversion": {"revenue": "1e3"},
     "utc_time": "2026-01-21T08:00:00Z"},
    {"event_type": "Plan Upgraded", "user": {"email": "jane@example.com"}, "to": "pro",
     "comment": "x" * 80, "url": "https://shop.example.com/upgrade"},
]


async def test_legacy_events_use_the_tracker_with_revenue_from_both_paths(start_router, hubspot, tmp_path):
    router = await start_router(hubspot_config(tmp_path, hubspot.url))
    await post(router, TRACKS)
    await all_delivered(router)

    events = sorted(hubspot.emulator.events, key=lambda e: (e["eventName"], e["email"]))
    assert [(e["source"], e["eventName"], e["email"], e["properties"]) for e in events] == [
        ("legacy", "Plan Upgraded", "jane@example.com", {}),
        ("legacy", "purchase", "bob@example.com", {"revenue": "1000"}),
        ("legacy", "purchase", "jane@example.com", {"revenue": "49.9"}),
    ]
    # known contact properties ride along in the query and update the contact
    assert hubspot.emulator.contacts["jane@example.com"]["properties"]["firstname"] == "Jane"
    # the tracker is not an API call: only the catalog went through the API
    assert [r["path"] for r in hubspot.emulator.requests if r["path"] != "/v1/event"] == ["/crm/v3/properties/contacts"]
    assert all("hapikey" not in r["query"] for r in hubspot.emulator.requests)


async def test_v3_events_are_batched_idempotent_and_define_themselves(start_router, hubspot, tmp_path):
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings="events_api: v3"))
    await post(router, [{**TRACKS[0], "event_id": "00000000-0000-4000-8000-000000000001"}, *TRACKS[1:]])
    await all_delivered(router)

    fqn = f"pe{HUB_ID}_"
    assert sorted(hubspot.emulator.definitions) == [fqn + "plan_upgraded", fqn + "purchase"]
    assert len(hubspot.requests_to("/events/v3/event-definitions")) == 2
    assert [r["status"] for r in hubspot.requests_to("/events/v3/send")] == [204]  # one request for all three
    by_email = {(e["eventName"], e["email"]): e for e in hubspot.emulator.events}
    jane = by_email[(fqn + "purchase", "jane@example.com")]
    assert jane["properties"] == {"revenue": "49.9", "product": "T-shirt"}
    assert jane["occurredAt"] == "2026-01-20T21:14:16.512Z"
    assert by_email[(fqn + "purchase", "bob@example.com")]["properties"] == {"revenue": "1000"}
    upgraded = by_email[(fqn + "plan_upgraded", "jane@example.com")]
    assert upgraded["properties"] == {"to": "pro", "comment": "x" * 50}  # values cut to 50 characters
    assert all(e["source"] == "v3" for e in hubspot.emulator.events)

    # the uuid is derived from the api key and the event id, so HubSpot refuses a resent occurrence
    # instead of counting it twice
    ids = {(e["eventName"], e["email"]): e["uuid"] for e in hubspot.emulator.events}
    assert ids[(fqn + "purchase", "jane@example.com")] == occurrence_uuid("web", "00000000-0000-4000-8000-000000000001")


async def test_a_resent_v3_event_is_delivered_once(start_router, hubspot, tmp_path):
    """HubSpot already has the occurrence (an earlier attempt got through but its answer was lost)."""
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings="events_api: v3"))
    event_id = "6c3e2a10-7a1b-4c1e-9a57-6f1d2a3b4c5d"
    key = occurrence_uuid("web", event_id)
    hubspot.emulator.define_event("purchase")
    async with aiohttp.ClientSession() as session:
        occurrence = {"eventName": f"pe{HUB_ID}_purchase", "email": "jane@example.com", "uuid": key}
        async with session.post(f"{hubspot.url}/events/v3/send", json=occurrence,
                                headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 204
    await post(router, [{**TRACKS[0], "event_id": event_id}, {**TRACKS[1], "event_id": "another"}])
    await all_delivered(router)
    assert [e["uuid"] for e in hubspot.emulator.events].count(key) == 1
    assert len(hubspot.emulator.events) == 2
    assert await router.metric("router_events_delivered_total", destination="hs") == 2
    assert await router.router.queue.dead_letters("hs") == []


async def test_two_api_keys_sending_the_same_event_id_are_two_hubspot_events(start_router, hubspot, tmp_path):
    """Ingest keeps both (it dedups per key), so HubSpot must get both: the uuid includes the key."""
    config = hubspot_config(tmp_path, hubspot.url, settings="events_api: v3").replace(
        "destinations:\n", "  - id: app\n    server_secret: s2s.secret.2\ndestinations:\n", 1
    )
    router = await start_router(config)
    for token, email in (("s2s.secret.1", "jane@example.com"), ("s2s.secret.2", "bob@example.com")):
        status, body = await router.post(f"/api/v1/event?token={token}",
                                         {"event_type": "purchase", "user": {"email": email}, "event_id": "42"})
        assert status == 200, body
    await all_delivered(router)
    assert sorted(e["email"] for e in hubspot.emulator.events) == ["bob@example.com", "jane@example.com"]
    assert len({e["uuid"] for e in hubspot.emulator.events}) == 2
    assert await router.metric("router_events_delivered_total", destination="hs") == 2
    assert await router.router.queue.dead_letters("hs") == []


async def test_a_400_saying_duplicate_about_something_else_is_not_counted_delivered(start_router, hubspot, tmp_path):
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings="events_api: v3"))
    await all_delivered(router)
    message = "inputs[0]: Duplicate property names in the occurrence: revenue"
    await hubspot.set_faults({"path": SEND, "status": 400, "count": 1,
                              "body": {"status": "error", "message": message, "category": "VALIDATION_ERROR"}})
    await post(router, [{"event_type": "purchase", "user": {"email": "jane@example.com"}, "revenue": 5}])
    await all_delivered(router)
    assert hubspot.emulator.events == []
    [letter] = await router.router.queue.dead_letters("hs")
    assert letter.reason == message
    assert await router.metric("router_events_delivered_total", destination="hs") == 0


# -- partial failures ------------------------------------------------------------------------------


async def test_207_and_400_reject_only_the_bad_events_with_hubspots_reason(start_router, hubspot, tmp_path):
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings="events_api: v3"))
    # 207: one invalid email among good ones
    await post(router, [identify("good1@example.com"), identify("not-an-email"), identify("good2@example.com")])
    await all_delivered(router)
    assert sorted(hubspot.emulator.contacts) == ["good1@example.com", "good2@example.com"]
    assert [r["status"] for r in hubspot.requests_to(UPSERT)] == [207]
    [letter] = await router.router.queue.dead_letters("hs")
    assert orjson.loads(letter.payload)["user"]["email"] == "not-an-email"
    assert "Email address not-an-email is invalid" in letter.reason
    assert "INVALID_EMAIL" in (letter.last_response or "")

    # 400 naming the input: a batch where every input is bad, and a v3 event with a bad email
    await post(router, [identify("also bad@"), {"event_type": "purchase", "user": {"email": "bad@"}},
                        {"event_type": "purchase", "user": {"email": "fine@example.com"}}])
    await all_delivered(router)
    letters = await router.router.queue.dead_letters("hs")
    reasons = {orjson.loads(dl.payload)["user"]["email"]: dl.reason for dl in letters}
    assert set(reasons) == {"not-an-email", "also bad@", "bad@"}
    assert "Email address also bad@ is invalid" in reasons["also bad@"]
    assert "Email address bad@ is invalid" in reasons["bad@"]
    assert [e["email"] for e in hubspot.emulator.events] == ["fine@example.com"]

    # 400 naming nothing: the batch is split in halves; only the bad input is rejected
    await hubspot.set_faults({"path": UPSERT, "status": 400, "count": 1})
    await post(router, [identify(f"split{i}@example.com") for i in range(6)] + [identify("split-bad")])
    await all_delivered(router)
    assert all(f"split{i}@example.com" in hubspot.emulator.contacts for i in range(6))
    assert len(await router.router.queue.dead_letters("hs")) == 4
    assert await router.metric("router_events_delivered_total", destination="hs") == 9


async def test_a_property_hubspot_no_longer_has_is_refreshed_and_left_out(start_router, hubspot, tmp_path):
    router = await start_router(hubspot_config(tmp_path, hubspot.url))
    await post(router, [identify("first@example.com", favorite_color="blue")])
    await all_delivered(router)
    catalog_fetches = len(hubspot.requests_to("/crm/v3/properties/contacts"))
    del hubspot.emulator.property_definitions["favorite_color"]  # someone deleted it in HubSpot
    await post(router, [identify("second@example.com", favorite_color="red", firstname="Sam")])
    await all_delivered(router)
    assert hubspot.emulator.contacts["second@example.com"]["properties"]["firstname"] == "Sam"
    assert [r["status"] for r in hubspot.requests_to(UPSERT)] == [200, 400, 200]
    assert len(hubspot.requests_to("/crm/v3/properties/contacts")) == catalog_fetches + 1
    assert await router.router.queue.dead_letters("hs") == []
    assert await router.metric("router_hubspot_properties_dropped_total", destination="hs", reason="unknown") == 1


@pytest.mark.parametrize("category", ["VALIDATION_ERROR", "INTERNAL_ERROR"])
async def test_a_207_error_naming_no_input_fails_the_contacts_hubspot_returned_no_result_for(
    start_router, hubspot, tmp_path, category
):
    router = await start_router(hubspot_config(tmp_path, hubspot.url))
    await all_delivered(router)
    answered = [{"id": str(100 + i), "new": True, "properties": {"email": email}, "archived": False}
                for i, email in enumerate(["kept1@example.com", "Kept2@Example.com"])]
    error = {"status": "error", "category": category, "message": "Something went wrong with one input", "context": {}}
    await hubspot.set_faults({"path": UPSERT, "status": 207, "count": 1, "body": {
        "status": "COMPLETE", "results": answered, "numErrors": 1, "errors": [error]}})
    await post(router, [identify("kept1@example.com"), identify("lost@example.com"), identify("kept2@example.com")])
    await all_delivered(router)

    letters = await router.router.queue.dead_letters("hs")
    if category == "VALIDATION_ERROR":  # permanent: the contact without a result is dead-lettered, not acked
        assert [orjson.loads(dl.payload)["user"]["email"] for dl in letters] == ["lost@example.com"]
        assert letters[0].reason == "Something went wrong with one input"
        assert await router.metric("router_events_delivered_total", destination="hs") == 2
    else:  # transient: it is sent again, and arrives
        assert letters == []
        assert list(hubspot.emulator.contacts) == ["lost@example.com"]
        assert [r["status"] for r in hubspot.requests_to(UPSERT)] == [207, 200]
        assert await router.metric("router_events_delivered_total", destination="hs") == 3


async def test_a_404_on_events_recreates_the_definitions_and_resends(start_router, hubspot, tmp_path):
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings="events_api: v3"))
    await post(router, [{"event_type": "purchase", "user": {"email": "a@example.com"}},
                        {"event_type": "signup", "user": {"email": "b@example.com"}}])
    await all_delivered(router)
    hubspot.emulator.definitions.clear()  # someone deleted them in HubSpot; the router still knows them
    await hubspot.set_faults({"path": SEND, "status": 404, "count": 1})
    await post(router, [{"event_type": "purchase", "user": {"email": "c@example.com"}},
                        {"event_type": "signup", "user": {"email": "d@example.com"}}])
    await all_delivered(router)

    assert sorted(e["email"] for e in hubspot.emulator.events) == [f"{c}@example.com" for c in "abcd"]
    assert sorted(hubspot.emulator.definitions) == [f"pe{HUB_ID}_purchase", f"pe{HUB_ID}_signup"]
    assert [r["status"] for r in hubspot.requests_to(SEND)] == [204, 404, 204]
    assert await router.router.queue.dead_letters("hs") == []


@pytest.mark.parametrize("sender", ["contacts", "events"])
async def test_a_413_splits_the_batch_instead_of_rejecting_it(start_router, hubspot, tmp_path, sender):
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings="events_api: v3"))
    await all_delivered(router)
    path, ok = (UPSERT, 200) if sender == "contacts" else (SEND, 204)
    await hubspot.set_faults({"path": path, "status": 413, "count": 1,
                              "body": "<html><body><h1>413 Request Entity Too Large</h1></body></html>"})
    if sender == "contacts":
        await post(router, [identify(f"big{i}@example.com") for i in range(10)])
    else:
        await post(router, [{"event_type": "click", "user": {"email": f"big{i}@example.com"}} for i in range(10)])
    await all_delivered(router)
    assert [r["status"] for r in hubspot.requests_to(path)] == [413, ok, ok]
    assert len(hubspot.emulator.contacts) == 10
    assert await router.router.queue.dead_letters("hs") == []
    assert await router.metric("router_events_delivered_total", destination="hs") == 10


@pytest.mark.parametrize("sender", ["contacts", "events"])
async def test_a_send_stops_at_its_request_limit_and_says_why_the_rest_waits(start_router, hubspot, tmp_path, sender):
    """HubSpot refuses everything without naming an input: halving is bounded, and the reason of
    what was left unsent says so (here the retry age is 0, so it shows in the dead letters)."""
    config = hubspot_config(tmp_path, hubspot.url, settings="events_api: v3").replace(
        "max_backoff: 0.05\n", "max_backoff: 0.05\n      max_retry_age: 0s\n")
    router = await start_router(config)
    await all_delivered(router)
    path = UPSERT if sender == "contacts" else SEND
    await hubspot.set_faults({"path": path, "status": 400})
    if sender == "contacts":
        await post(router, [identify(f"n{i}@example.com") for i in range(30)])
    else:
        await post(router, [{"event_type": "click", "user": {"email": f"n{i}@example.com"}} for i in range(30)])
    await all_delivered(router)

    api_requests = [r for r in hubspot.emulator.requests if r["path"] != "/crm/v3/properties/contacts"]
    assert len(api_requests) == 24  # (events: one definition and 23 sends)
    reasons = [dl.reason for dl in await router.router.queue.dead_letters("hs")]
    assert len(reasons) == 30
    isolated = [r for r in reasons if r == "HubSpot 400 VALIDATION_ERROR: Invalid input"]
    left = [r for r in reasons if r not in isolated]
    assert isolated and left
    limit_reason = ("gave up after 1 attempts: not sent in this attempt: it made its 24 HubSpot requests "
                    "resending parts of the batch HubSpot refused; retried later")
    assert set(left) == {limit_reason}


# -- transient trouble -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"status": 429, "count": 3}, id="429-storm"),
        pytest.param({"status": 423, "count": 1}, id="423-locked"),
        pytest.param({"status": 477, "count": 2, "retry_after": 0.1}, id="477-migrating"),
        pytest.param({"status": 503, "count": 4}, id="5xx"),
        pytest.param({"status": 521, "count": 1}, id="521"),
        pytest.param({"reset": True, "count": 3}, id="connection-reset"),
    ],
)
async def test_transient_errors_are_retried_until_everything_is_delivered(start_router, hubspot, tmp_path, fault):
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings="events_api: v3"))
    await all_delivered(router)  # started: the catalog is loaded before the faults begin
    await hubspot.set_faults({"path": "/crm/v3/objects", **fault}, {"path": "/events/v3/send", **fault})
    await post(router, [identify(f"u{i}@example.com") for i in range(30)]
               + [{"event_type": "click", "user": {"email": f"u{i}@example.com"}} for i in range(30)])
    await all_delivered(router)
    assert len(hubspot.emulator.contacts) == 30
    assert len(hubspot.emulator.events) == 30
    assert await router.router.queue.dead_letters("hs") == []
    assert await router.metric("router_events_retried_total", destination="hs") > 0
    failed = [r for r in hubspot.emulator.requests if r["status"] not in (200, 201, 204)]
    assert failed, "the fault should have hit"
    if fault.get("status") == 429:
        assert "429" in (await status_of(router))["last_error"]


async def test_tracker_failures_are_retried_until_everything_is_delivered(start_router, hubspot, tmp_path):
    router = await start_router(hubspot_config(tmp_path, hubspot.url))
    await all_delivered(router)
    await hubspot.set_faults({"path": "/v1/event", "status": 503, "count": 5},
                             {"path": "/v1/event", "reset": True, "count": 5})
    await post(router, [{"event_type": "click", "user": {"email": f"t{i}@example.com"}} for i in range(20)])
    await all_delivered(router)
    assert sorted(e["email"] for e in hubspot.emulator.events) == sorted(f"t{i}@example.com" for i in range(20))
    assert await router.router.queue.dead_letters("hs") == []
    assert [r["status"] for r in hubspot.requests_to("/v1/event")].count(503) == 5


async def test_the_rate_limiter_keeps_429s_away(start_router, hubspot, tmp_path):
    """v1 makes one request per contact: 150 contacts at 100 requests per (compressed) window."""
    router = await start_router(hubspot_config(tmp_path, hubspot.url, settings="""
        contacts_api: v1
        rate_limit: 100
        rate_window: 200ms
    """))
    await post(router, [identify(f"r{i}@example.com") for i in range(150)])
    await all_delivered(router)
    assert len(hubspot.emulator.contacts) == 150
    statuses = [r["status"] for r in hubspot.emulator.requests]
    # the two rolling windows can disagree by a request's transit time at the window's edge
    assert statuses.count(429) <= 3, statuses.count(429)


@pytest.mark.parametrize("hubspot_timeout", ["0.5s", "5s"])  # 5s: longer than the send may take
async def test_a_slow_hubspot_gets_each_contact_once_within_the_send_timeout(
    start_router, hubspot, tmp_path, hubspot_timeout
):
    """v1 makes one request per contact; 10 of them at 0.3 s each do not fit a 1.2 s send. The send
    stops starting requests it could not finish and reports what it has: each contact is sent
    once, over several attempts, rather than the core cutting the send off and resending them all."""
    config = hubspot_config(tmp_path, hubspot.url, settings=f"""
        contacts_api: v1
        timeout: {hubspot_timeout}
    """, delivery="timeout: 1.2s")
    router = await start_router(config)
    await all_delivered(router)  # the catalog is loaded before the answers slow down
    await hubspot.set_faults({"path": "/contacts/v1/contact/createOrUpdate/", "latency": 0.3})
    await post(router, [identify(f"slow{i}@example.com") for i in range(10)])
    await all_delivered(router)
    assert sorted(hubspot.emulator.contacts) == sorted(f"slow{i}@example.com" for i in range(10))
    sent = [r["path"] for r in hubspot.requests_to("/contacts/v1/contact/createOrUpdate/")]
    assert len(sent) == len(set(sent)) == 10, sent
    assert await router.router.queue.dead_letters("hs") == []


async def test_daily_limit_stops_sending_until_the_reset_and_says_so(start_router, tmp_path):
    emulator = Emulator(TOKEN, HUB_ID, daily_limit=2)
    runner = await serve(emulator, "127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        router = await start_router(hubspot_config(tmp_path, url))
        await post(router, [identify("a@example.com")])
        await all_delivered(router)  # catalog + one upsert: the allowance is spent
        assert (await status_of(router))["daily_limit_reached"] is True
        track = {"event_type": "signup", "user": {"email": "a@example.com"}}
        await post(router, [identify("b@example.com"), track])
        await router.drain()

        status = await status_of(router)
        assert status["rate_limit_paused_for"] > 0
        assert status["depth"] == 1  # the identify waits for the reset, not leased, no attempt counted
        assert status["in_flight"] == 0 and status["retried"] == 0
        assert list(emulator.contacts) == ["a@example.com"]
        api_calls = [r["status"] for r in emulator.requests if r["path"] != "/v1/event"]
        assert api_calls == [200, 200]  # no request hammered the limit
        # the legacy tracker is outside HubSpot's API limits: track events keep flowing
        assert [e["eventName"] for e in emulator.events] == ["signup"]
    finally:
        await runner.cleanup()


# -- credentials -----------------------------------------------------------------------------------


async def test_a_refused_token_pauses_keeps_every_event_and_a_fixed_one_delivers_them(
    start_router, hubspot, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    config = hubspot_config(tmp_path, hubspot.url, token=WRONG_TOKEN, settings="events_api: v3")
    router = await start_router(config)
    events = [identify(f"p{i}@example.com", firstname="P") for i in range(3)]
    events += [{"event_type": "purchase", "user": {"email": "p0@example.com"}, "revenue": 5}]

    async def paused() -> bool:
        return (await status_of(router))["state"] == "paused"

    await poll_until(paused, 10)
    await post(router, events)
    status = await status_of(router)
    assert status["paused_reason"] == "HubSpot access token was refused (401 INVALID_AUTHENTICATION)"
    assert status["depth"] == len(events) and status["dead_letters"] == 0
    assert await router.metric("router_destination_paused", destination="hs") == 1
    texts = [orjson.dumps(status).decode(), (await router.get("/metrics"))[1], caplog.text]
    await router.stop()

    fixed = await start_router(hubspot_config(tmp_path, hubspot.url, settings="events_api: v3"))
    await all_delivered(fixed)
    assert sorted(hubspot.emulator.contacts) == ["p0@example.com", "p1@example.com", "p2@example.com"]
    assert len(hubspot.emulator.events) == 1
    texts += [orjson.dumps(await status_of(fixed)).decode(), (await fixed.get("/metrics"))[1], caplog.text]
    for text in texts:
        assert WRONG_TOKEN not in text and TOKEN not in text


async def test_a_missing_scope_pauses_only_the_calls_that_need_it(start_router, hubspot, tmp_path):
    config = hubspot_config(tmp_path, hubspot.url, settings="events_api: v3", delivery="pause_probe: 0.3s")
    router = await start_router(config)
    await all_delivered(router)
    await hubspot.set_faults({"path": "/events/v3/", "status": 403})
    await post(router, [{"event_type": "purchase", "user": {"email": "jane@example.com"}}])

    async def events_paused() -> bool:
        return "events" in (await status_of(router))["paused_senders"]

    await poll_until(events_paused, 10)
    status = await status_of(router)
    reason = status["paused_senders"]["events"]
    assert "403" in reason and "behavioral_events.event_definitions.read_write" in reason
    assert status["state"] == "running" and status["depth"] == 1 and status["dead_letters"] == 0
    assert await router.metric("router_sender_paused", destination="hs", sender="events") == 1

    # contacts need another scope: identifies keep flowing while the event waits
    await post(router, [{"event_type": "user_identify", "user": {"email": "ann@example.com"}}])

    async def contact_arrived() -> bool:
        return "ann@example.com" in hubspot.emulator.contacts

    await poll_until(contact_arrived, 10)
    assert (await status_of(router))["depth"] == 1

    # the scope is granted: the next probe sends the waiting event
    await hubspot.set_faults()
    await all_delivered(router)
    assert len(hubspot.emulator.events) == 1
    assert (await status_of(router))["paused_senders"] == {}
    assert await router.metric("router_sender_paused", destination="hs", sender="events") == 0


async def test_a_paused_sender_is_probed_by_one_request_at_a_time(start_router, hubspot, tmp_path):
    # batches of one, two in flight: at each probe time only one of them may ask HubSpot
    config = hubspot_config(tmp_path, hubspot.url, settings="events_api: v3", delivery="batch_size: 1, pause_probe: 0.3s")
    router = await start_router(config)
    await all_delivered(router)
    await hubspot.set_faults({"path": "/events/v3/", "status": 403})
    await post(router, [{"event_type": "purchase", "user": {"email": f"p{i}@example.com"}} for i in range(6)])

    async def five_refusals() -> bool:
        return len(hubspot.requests_to("/events/v3/")) >= 5

    await poll_until(five_refusals, 10)
    times = [r["time"] for r in hubspot.requests_to("/events/v3/")]
    # the first pause may meet both batches in flight; after it, one request per 0.3 s probe
    assert times[4] - times[1] >= 3 * 0.3 * 0.9, [round(t - times[0], 3) for t in times]
    assert (await status_of(router))["depth"] == 6


async def test_batches_side_by_side_create_an_event_definition_once(start_router, hubspot, tmp_path):
    config = hubspot_config(tmp_path, hubspot.url, settings="events_api: v3", delivery="batch_size: 1, concurrency: 4")
    router = await start_router(config)
    await all_delivered(router)
    # a slow answer: the other batches reach the same new event type while it is being created
    await hubspot.set_faults({"path": "/events/v3/event-definitions", "latency": 0.2, "count": 1})
    await post(router, [{"event_type": "signup", "user": {"email": f"s{i}@example.com"}} for i in range(8)])
    await all_delivered(router)
    assert len(hubspot.emulator.events) == 8
    definitions = [r for r in hubspot.requests_to("/events/v3/event-definitions") if r["method"] == "POST"]
    assert [r["status"] for r in definitions] == [201]


async def test_a_deprecated_api_key_is_sent_as_hapikey_with_a_warning_and_never_shown(
    start_router, hubspot, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    api_key = "d3adbeef-0ld-hapikey-never-logged"
    config = hubspot_config(tmp_path, hubspot.url).replace(f"access_token: {TOKEN}", f"api_key: {api_key}")
    router = await start_router(config)

    async def paused() -> bool:
        return (await status_of(router))["state"] == "paused"

    await poll_until(paused, 10)
    status = await status_of(router)
    assert "API key (hapikey) was refused (401" in status["paused_reason"]
    assert "api_key (hapikey) is deprecated" in caplog.text
    assert hubspot.emulator.requests[0]["query"] == {"hapikey": api_key}  # it was sent, as HubSpot wanted it
    for text in (orjson.dumps(status).decode(), (await router.get("/metrics"))[1], caplog.text):
        assert api_key not in text


async def test_an_answer_echoing_the_credential_is_redacted_everywhere_it_is_kept(
    start_router, hubspot, tmp_path, caplog
):
    caplog.set_level(logging.DEBUG)
    router = await start_router(hubspot_config(tmp_path, hubspot.url))
    await all_delivered(router)
    old_key = "0ld-hap1key-never-shown"
    echo = (f"<html>404 Not Found: POST {UPSERT}?hapikey={old_key}&portalId={HUB_ID} "
            f"(Authorization: Bearer {TOKEN})</html>")  # a proxy that echoes the request
    await hubspot.set_faults({"path": UPSERT, "status": 404, "count": 1, "body": echo})
    await post(router, [identify("jane@example.com")])
    await all_delivered(router)

    [letter] = await router.router.queue.dead_letters("hs")
    assert f"hapikey=***&portalId={HUB_ID}" in letter.reason and "Bearer ***" in letter.reason
    status = await status_of(router)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name != "plugins.hubspot.emulator")
    for text in (letter.reason, letter.last_response or "", orjson.dumps(status).decode(), logged):
        assert TOKEN not in text and old_key not in text


async def test_an_unreachable_hubspot_at_start_keeps_events_queued_until_it_answers(start_router, tmp_path):
    holder = web.AppRunner(web.Application())
    await holder.setup()
    await web.TCPSite(holder, "127.0.0.1", 0).start()
    port = holder.addresses[0][1]
    await holder.cleanup()  # now nothing listens there
    router = await start_router(hubspot_config(tmp_path, f"http://127.0.0.1:{port}"))
    await post(router, [identify("late@example.com")])
    status = await status_of(router)
    assert status["state"] == "starting" and status["depth"] == 1
    assert "start failed: cannot connect" in status["last_error"]

    emulator = Emulator(TOKEN, HUB_ID)
    runner = await serve(emulator, "127.0.0.1", port)  # HubSpot is back
    try:
        await all_delivered(router)
        assert list(emulator.contacts) == ["late@example.com"]
    finally:
        await runner.cleanup()


async def test_delivery_settings_that_undercut_hubspot_are_named_at_start(start_router, hubspot, tmp_path, caplog):
    config = hubspot_config(tmp_path, hubspot.url, settings="events_api: v3\ntimeout: 30s")
    config = config.replace("batch_size: 500", "batch_size: 100")
    with caplog.at_level(logging.WARNING, logger="plugins.hubspot.destination"):
        await start_router(config)
    messages = [r.getMessage() for r in caplog.records if r.name == "plugins.hubspot.destination"]
    assert any("delivery.batch_size 100 caps v3 event requests below events_batch_size 500" in m for m in messages)
    assert any("hubspot.timeout (30s) is not shorter than delivery.timeout (30s)" in m for m in messages)
