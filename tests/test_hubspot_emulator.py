"""The HubSpot emulator holds clients to docs' API contract: each rule a client can break is refused here."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient as _TestClient

from plugins.hubspot.emulator import Emulator, add_cli, load_properties_file, parse_rate, serve

logger = logging.getLogger(__name__)

TestClient = _TestClient[web.Request, web.Application]

TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
HUB_ID = "20546336"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
UPSERT = "/crm/v3/objects/contacts/batch/upsert"
REPO = Path(__file__).resolve().parent.parent

CUSTOM_PROPERTIES: list[dict[str, Any]] = [
    {"name": "plan", "label": "Plan", "type": "enumeration", "fieldType": "select",
     "options": [{"label": "Free", "value": "free"}, {"label": "Pro", "value": "pro"}]},
    {"name": "signup_source", "label": "Signup source", "type": "string", "fieldType": "text"},
]


class FakeClock:
    """A monotonic clock the test moves by hand, so rate windows pass without sleeping."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def emulator(clock: FakeClock) -> Emulator:
    return Emulator(TOKEN, HUB_ID, properties=CUSTOM_PROPERTIES, clock=clock, seed=7)


@pytest.fixture
async def client(aiohttp_client: Any, emulator: Emulator) -> TestClient:
    test_client: TestClient = await aiohttp_client(emulator.app())
    return test_client


def contact_input(email: str, **properties: str) -> dict[str, Any]:
    return {"idProperty": "email", "id": email, "properties": {"email": email, **properties}}


async def upsert(client: TestClient, *inputs: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = await client.post(UPSERT, json={"inputs": list(inputs)}, headers=AUTH)
    return response.status, await response.json()


def embedded_results(message: str) -> list[dict[str, Any]]:
    """The validation results HubSpot embeds as JSON in an error message."""
    prefix = "Property values were not valid: "
    assert message.startswith(prefix), message
    results: list[dict[str, Any]] = json.loads(message[len(prefix):])
    return results


def assert_envelope(body: dict[str, Any], category: str) -> None:
    assert body["status"] == "error"
    assert body["category"] == category
    assert isinstance(body["message"], str) and body["message"]
    assert len(body["correlationId"]) == 36


async def define(client: TestClient, name: str = "signed_up") -> dict[str, Any]:
    response = await client.post(
        "/events/v3/event-definitions",
        json={"label": "Signed up", "name": name, "primaryObject": "CONTACT",
              "propertyDefinitions": [{"name": "plan", "label": "Plan", "type": "string"}]},
        headers=AUTH,
    )
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


# --- auth -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}],
    ids=["missing", "wrong-token", "no-scheme", "basic"],
)
@pytest.mark.parametrize("method,path", [("GET", "/crm/v3/properties/contacts"), ("POST", UPSERT),
                                         ("POST", "/events/v3/send"), ("GET", "/properties/v1/contacts/properties")])
async def test_a_missing_or_wrong_token_is_401(client: TestClient, emulator: Emulator, headers: dict[str, str],
                                               method: str, path: str) -> None:
    response = await client.request(method, path, headers=headers, json={"inputs": []})
    assert response.status == 401
    body = await response.json()
    assert_envelope(body, "INVALID_AUTHENTICATION")
    assert body["message"].startswith("Authentication credentials not found.")
    assert emulator.contacts == {} and emulator.events == []


async def test_hapikey_is_refused_even_when_it_matches(client: TestClient) -> None:
    response = await client.get("/crm/v3/properties/contacts", params={"hapikey": TOKEN})
    assert response.status == 401
    assert_envelope(await response.json(), "INVALID_AUTHENTICATION")


# --- properties -----------------------------------------------------------------------------


async def test_properties_list_standard_and_custom_definitions(client: TestClient) -> None:
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 200
    definitions = {d["name"]: d for d in (await response.json())["results"]}
    for name in ("email", "firstname", "lastname", "phone", "mobilephone", "company", "address", "city", "state",
                 "zip", "country", "website", "jobtitle", "lifecyclestage", "date_of_birth", "hs_object_id",
                 "createdate", "lastmodifieddate", "num_employees", "annualrevenue", "hs_email_optout",
                 "hs_analytics_num_visits", "industry", "plan", "signup_source"):
        definition = definitions[name]
        for field in ("label", "type", "fieldType", "groupName", "description", "options", "hidden",
                      "hasUniqueValue", "calculated", "modificationMetadata"):
            assert field in definition, (name, field)
    assert [o["value"] for o in definitions["lifecyclestage"]["options"]] == [
        "subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer",
        "evangelist", "other"]
    assert definitions["date_of_birth"]["type"] == "date"
    assert definitions["createdate"]["type"] == "datetime"
    assert definitions["hs_object_id"]["modificationMetadata"]["readOnlyValue"] is True
    assert definitions["hs_analytics_num_visits"]["calculated"] is True
    assert definitions["hs_email_optout"]["type"] == "bool"
    assert definitions["hs_email_optout"]["modificationMetadata"]["readOnlyValue"] is False
    assert definitions["industry"]["type"] == "enumeration"
    assert definitions["plan"]["modificationMetadata"]["readOnlyValue"] is False

    legacy = await client.get("/properties/v1/contacts/properties", headers=AUTH)
    assert legacy.status == 200
    bare = await legacy.json()
    assert isinstance(bare, list)
    assert {d["name"] for d in bare} == set(definitions)


# --- batch upsert ---------------------------------------------------------------------------


async def test_upsert_creates_then_updates_and_an_empty_string_clears(client: TestClient, emulator: Emulator) -> None:
    status, body = await upsert(client, contact_input("Jane@Example.com", firstname="Jane", lifecyclestage="lead"),
                                contact_input("bob@example.com", date_of_birth="1990-05-17"))
    assert status == 200
    assert body["status"] == "COMPLETE" and "startedAt" in body and "completedAt" in body
    jane, bob = body["results"]
    assert (jane["new"], bob["new"]) == (True, True)
    assert int(bob["id"]) == int(jane["id"]) + 1
    assert jane["properties"]["email"] == "jane@example.com"
    assert jane["archived"] is False
    assert set(emulator.contacts) == {"jane@example.com", "bob@example.com"}

    status, body = await upsert(client, contact_input("jane@example.com", firstname="", lastname="Doe",
                                                      date_of_birth="1430438400000"))
    assert status == 200
    (again,) = body["results"]
    assert again["new"] is False and again["id"] == jane["id"]
    stored = emulator.contacts["jane@example.com"]["properties"]
    assert "firstname" not in stored
    assert stored["lastname"] == "Doe"
    assert stored["lifecyclestage"] == "lead"
    assert stored["date_of_birth"] == "2015-05-01"
    assert all(isinstance(v, str) for v in stored.values())


async def test_upsert_accepts_every_documented_value_format(client: TestClient, emulator: Emulator) -> None:
    status, body = await upsert(client, contact_input(
        "ok@example.com", date_of_birth="2015-05-01", closedate="2026-01-20T21:14:16.512Z",
        num_employees="-12", annualrevenue="1000.50", hs_email_optout="true", phone="+49 30 1234567",
        hs_buying_role="CHAMPION;END_USER", plan="pro", industry="INTERNET", signup_source="x" * 65_536),
        contact_input("epoch@example.com", date_of_birth="1430438400000", closedate="1768943656512"))
    assert status == 200, body
    stored = emulator.contacts["ok@example.com"]["properties"]
    assert stored["closedate"] == "2026-01-20T21:14:16.512Z"
    assert stored["hs_buying_role"] == "CHAMPION;END_USER"
    assert stored["num_employees"] == "-12"
    epoch = emulator.contacts["epoch@example.com"]["properties"]
    assert (epoch["date_of_birth"], epoch["closedate"]) == ("2015-05-01", "2026-01-20T21:14:16.512Z")


async def test_upsert_over_100_inputs_is_refused(client: TestClient, emulator: Emulator) -> None:
    status, body = await upsert(client, *(contact_input(f"u{i}@example.com") for i in range(101)))
    assert status == 400
    assert_envelope(body, "VALIDATION_ERROR")
    assert body["message"].startswith("The maximum number of inputs supported in a batch is 100")
    assert emulator.contacts == {}
    status, _ = await upsert(client, *(contact_input(f"u{i}@example.com") for i in range(100)))
    assert status == 200


async def test_upsert_duplicate_ids_are_refused_case_insensitively(client: TestClient, emulator: Emulator) -> None:
    status, body = await upsert(client, contact_input("a@example.com"), contact_input("A@Example.com"),
                                contact_input("b@example.com"))
    assert status == 400
    assert_envelope(body, "VALIDATION_ERROR")
    assert body["message"] == "Duplicate IDs found in batch input: [a@example.com]. IDs must be unique"
    assert body["context"] == {"ids": ["a@example.com"]}
    assert emulator.contacts == {}


@pytest.mark.parametrize("name,error", [
    ("favourite_colour", "PROPERTY_DOESNT_EXIST"),
    ("hs_object_id", "READ_ONLY_VALUE"),
    ("createdate", "READ_ONLY_VALUE"),
    ("hs_analytics_num_visits", "READ_ONLY_VALUE"),
])
async def test_an_unknown_or_read_only_property_fails_the_whole_request(
        client: TestClient, emulator: Emulator, name: str, error: str) -> None:
    status, body = await upsert(client, contact_input("good@example.com", firstname="Good"),
                                contact_input("bad@example.com", **{name: "1"}))
    assert status == 400
    assert_envelope(body, "VALIDATION_ERROR")
    (result,) = embedded_results(body["message"])
    assert (result["isValid"], result["error"], result["name"]) == (False, error, name)
    if error == "PROPERTY_DOESNT_EXIST":
        assert result["message"] == f'Property "{name}" does not exist'
        assert '"message":"Property \\"favourite_colour\\" does not exist"' in body["message"]
    assert "context" not in body
    assert emulator.contacts == {}


@pytest.mark.parametrize("email,properties,error,fragment", [
    ("not-an-email", {}, "INVALID_EMAIL", "Email address not-an-email is invalid"),
    ("a@b", {}, "INVALID_EMAIL", "is invalid"),
    ("x@example.com", {"email": "x@@example.com"}, "INVALID_EMAIL", "is invalid"),
    ("x@example.com", {"date_of_birth": "1430485260000"}, "INVALID_DATE",
     "1430485260000 is at 13:1:0.0 UTC, not midnight!"),
    ("x@example.com", {"date_of_birth": "05/01/2015"}, "INVALID_DATE", "05/01/2015"),
    ("x@example.com", {"date_of_birth": "2015-02-30"}, "INVALID_DATE", "2015-02-30"),
    ("x@example.com", {"closedate": "yesterday"}, "INVALID_DATE", "yesterday"),
    ("x@example.com", {"lifecyclestage": "Lead"}, "INVALID_OPTION", "Lead was not one of the allowed options"),
    ("x@example.com", {"hs_buying_role": "CHAMPION;KING"}, "INVALID_OPTION", "KING"),
    ("x@example.com", {"lifecyclestage": "lead;customer"}, "INVALID_OPTION", "lead;customer"),
    ("x@example.com", {"hs_email_optout": "yes"}, "INVALID_OPTION", "yes"),
    ("x@example.com", {"num_employees": "12 people"}, "INVALID_LONG", "12 people"),
    ("x@example.com", {"num_employees": "1,5"}, "INVALID_LONG", "1,5"),
    ("x@example.com", {"num_employees": "1.2.3"}, "INVALID_LONG", "1.2.3"),
    ("x@example.com", {"annualrevenue": "$100"}, "INVALID_DOUBLE", "$100"),
    ("x@example.com", {"signup_source": "x" * 65_537}, "INVALID_STRING_LENGTH", "65536"),
], ids=["id-email", "id-no-tld", "email-property", "date-not-midnight", "date-us-format", "date-impossible",
        "datetime", "option-case", "checkbox-part", "select-joined", "bool", "number-words", "number-comma",
        "number-dots", "double", "string-too-long"])
async def test_a_bad_value_fails_its_input(client: TestClient, emulator: Emulator, email: str,
                                           properties: dict[str, str], error: str, fragment: str) -> None:
    status, body = await upsert(client, {"idProperty": "email", "id": email, "properties": properties})
    assert status == 400
    assert_envelope(body, "VALIDATION_ERROR")
    assert body["context"] == {"ids": [email]}
    (result,) = embedded_results(body["message"])
    assert result["error"] == error
    assert fragment in result["message"]
    assert body["errors"][0]["code"] == error
    assert emulator.contacts == {}


async def test_some_bad_inputs_give_207_and_the_good_ones_are_applied(client: TestClient, emulator: Emulator) -> None:
    status, body = await upsert(client, contact_input("good@example.com", lifecyclestage="customer"),
                                contact_input("bad@example.com", lifecyclestage="VIP"),
                                contact_input("worse", firstname="W"))
    assert status == 207
    assert body["status"] == "COMPLETE"
    assert [r["properties"]["email"] for r in body["results"]] == ["good@example.com"]
    assert body["numErrors"] == 2
    bad, worse = body["errors"]
    assert bad["status"] == "error" and bad["category"] == "VALIDATION_ERROR"
    assert bad["context"] == {"ids": ["bad@example.com"]}
    assert embedded_results(bad["message"])[0]["error"] == "INVALID_OPTION"
    assert bad["errors"][0]["code"] == "INVALID_OPTION"
    assert worse["context"] == {"ids": ["worse"]}
    assert embedded_results(worse["message"])[0]["error"] == "INVALID_EMAIL"
    assert set(emulator.contacts) == {"good@example.com"}


@pytest.mark.parametrize("body", [
    {"inputs": [{"idProperty": "email", "id": "n@example.com", "properties": {"num_employees": 12}}]},
    {"inputs": [{"idProperty": "email", "id": "n@example.com", "properties": {"hs_email_optout": True}}]},
    {"inputs": [{"idProperty": "email", "id": "n@example.com", "properties": {"firstname": None}}]},
    {"inputs": [{"id": "n@example.com", "properties": {}}]},
    {"inputs": [{"idProperty": "hs_object_id", "id": "5", "properties": {}}]},
    {"inputs": [{"idProperty": "email", "properties": {}}]},
    {"inputs": "n@example.com"},
    [],
], ids=["number", "bool", "null", "no-idProperty", "other-idProperty", "no-id", "inputs-not-array", "not-object"])
async def test_a_malformed_upsert_body_is_400(client: TestClient, emulator: Emulator, body: Any) -> None:
    response = await client.post(UPSERT, json=body, headers=AUTH)
    assert response.status == 400
    assert_envelope(await response.json(), "VALIDATION_ERROR")
    assert emulator.contacts == {}


async def test_invalid_json_is_400(client: TestClient) -> None:
    response = await client.post(UPSERT, data=b'{"inputs": [', headers={**AUTH, "Content-Type": "application/json"})
    assert response.status == 400
    body = await response.json()
    assert_envelope(body, "VALIDATION_ERROR")
    assert body["message"].startswith("Invalid input JSON")


# --- legacy v1 create-or-update ---------------------------------------------------------------


async def test_v1_create_or_update_shares_the_contact_store(client: TestClient, emulator: Emulator) -> None:
    path = "/contacts/v1/contact/createOrUpdate/email/jane%2Btest%40example.com/"
    response = await client.post(path, json={"properties": [{"property": "firstname", "value": "Jane"}]}, headers=AUTH)
    assert response.status == 200
    created = await response.json()
    assert created["isNew"] is True and isinstance(created["vid"], int)
    assert emulator.contacts["jane+test@example.com"]["properties"]["firstname"] == "Jane"

    status, body = await upsert(client, contact_input("jane+test@example.com", lastname="Doe"))
    assert status == 200 and body["results"][0]["new"] is False
    assert body["results"][0]["id"] == str(created["vid"])

    response = await client.post(path, json={"properties": [{"property": "city", "value": "Berlin"}]}, headers=AUTH)
    assert await response.json() == {"vid": created["vid"], "isNew": False}
    assert emulator.contacts["jane+test@example.com"]["properties"]["lastname"] == "Doe"


@pytest.mark.parametrize("email,prop,value,error", [
    ("x%40y", "firstname", "X", "INVALID_EMAIL"),
    ("ok%40example.com", "favourite_colour", "red", "PROPERTY_DOESNT_EXIST"),
    ("ok%40example.com", "date_of_birth", "1430485260000", "INVALID_DATE"),
    ("ok%40example.com", "lifecyclestage", "prospect", "INVALID_OPTION"),
    ("ok%40example.com", "num_employees", "many", "INVALID_LONG"),
    ("ok%40example.com", "hs_object_id", "7", "READ_ONLY_VALUE"),
])
async def test_v1_validation_errors(client: TestClient, emulator: Emulator, email: str, prop: str, value: str,
                                    error: str) -> None:
    response = await client.post(f"/contacts/v1/contact/createOrUpdate/email/{email}/",
                                 json={"properties": [{"property": prop, "value": value}]}, headers=AUTH)
    assert response.status == 400
    body = await response.json()
    assert body["status"] == "error"
    assert body["message"] == "Property values were not valid"
    assert len(body["correlationId"]) == 36
    assert body["validationResults"][0]["isValid"] is False
    assert body["validationResults"][0]["error"] == error
    assert emulator.contacts == {}


async def test_v1_invalid_email_message_matches_hubspot(client: TestClient) -> None:
    response = await client.post("/contacts/v1/contact/createOrUpdate/email/x%40y/", json={"properties": []},
                                 headers=AUTH)
    body = await response.json()
    assert body["validationResults"] == [
        {"isValid": False, "message": "Email address x@y is invalid", "error": "INVALID_EMAIL", "name": "email"}]


async def test_v1_taking_another_contacts_email_is_409(client: TestClient, emulator: Emulator) -> None:
    await upsert(client, contact_input("a@example.com"), contact_input("b@example.com"))
    response = await client.post("/contacts/v1/contact/createOrUpdate/email/a%40example.com/",
                                 json={"properties": [{"property": "email", "value": "b@example.com"}]}, headers=AUTH)
    assert response.status == 409
    assert (await response.json())["message"] == "Contact already exists"
    assert set(emulator.contacts) == {"a@example.com", "b@example.com"}


# --- event definitions ------------------------------------------------------------------------


async def test_event_definitions_create_get_and_conflict(client: TestClient, emulator: Emulator) -> None:
    created = await define(client)
    assert created["fullyQualifiedName"] == f"pe{HUB_ID}_signed_up"
    assert created["name"] == "signed_up"
    assert created["labels"]["singular"] == "Signed up"
    assert set(emulator.definitions) == {f"pe{HUB_ID}_signed_up"}
    for name in ("signed_up", f"pe{HUB_ID}_signed_up"):
        response = await client.get(f"/events/v3/event-definitions/{name}", headers=AUTH)
        assert response.status == 200
        assert (await response.json())["fullyQualifiedName"] == f"pe{HUB_ID}_signed_up"
    response = await client.get("/events/v3/event-definitions/never_defined", headers=AUTH)
    assert response.status == 404
    assert_envelope(await response.json(), "OBJECT_NOT_FOUND")
    again = await client.post("/events/v3/event-definitions",
                              json={"label": "Again", "name": "signed_up", "primaryObject": "CONTACT"}, headers=AUTH)
    assert again.status == 409
    assert_envelope(await again.json(), "CONFLICT")


@pytest.mark.parametrize("body", [
    {"label": "L", "name": "Signed_Up", "primaryObject": "CONTACT"},
    {"label": "L", "name": "1st", "primaryObject": "CONTACT"},
    {"label": "L", "name": "signed-up", "primaryObject": "CONTACT"},
    {"label": "L", "name": "", "primaryObject": "CONTACT"},
    {"label": "L", "name": "x" * 51, "primaryObject": "CONTACT"},
    {"label": "L", "name": "signed_up"},
    {"label": "L", "name": "signed_up", "primaryObject": "DEAL"},
    {"name": "signed_up", "primaryObject": "CONTACT"},
    {"label": "L", "name": "signed_up", "primaryObject": "CONTACT",
     "propertyDefinitions": [{"name": "Plan", "label": "Plan", "type": "string"}]},
    {"label": "L", "name": "signed_up", "primaryObject": "CONTACT",
     "propertyDefinitions": [{"name": "plan", "label": "Plan", "type": "money"}]},
], ids=["uppercase", "digit-first", "dash", "empty", "too-long", "no-primary-object", "deal", "no-label",
        "bad-property-name", "bad-property-type"])
async def test_a_malformed_event_definition_is_400(client: TestClient, emulator: Emulator,
                                                    body: dict[str, Any]) -> None:
    response = await client.post("/events/v3/event-definitions", json=body, headers=AUTH)
    assert response.status == 400
    assert_envelope(await response.json(), "VALIDATION_ERROR")
    assert emulator.definitions == {}


# --- events -----------------------------------------------------------------------------------


def occurrence(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"eventName": f"pe{HUB_ID}_signed_up", "email": "Jane@Example.com",
                             "occurredAt": "2026-01-20T21:14:16.512Z", "properties": {"plan": "pro"}}
    event.update(overrides)
    return event


async def test_an_event_is_recorded_and_creates_its_contact(client: TestClient, emulator: Emulator) -> None:
    await define(client)
    response = await client.post("/events/v3/send", json=occurrence(uuid="u-1"), headers=AUTH)
    assert response.status == 204
    assert await response.read() == b""
    (event,) = emulator.events
    assert event["eventName"] == f"pe{HUB_ID}_signed_up"
    assert event["email"] == "jane@example.com"
    assert event["occurredAt"] == "2026-01-20T21:14:16.512Z"
    assert event["uuid"] == "u-1"
    assert event["properties"] == {"plan": "pro"}
    assert event["objectId"] == emulator.contacts["jane@example.com"]["id"]

    batch = {"inputs": [occurrence(email=f"u{i}@example.com", uuid=f"b-{i}") for i in range(500)]}
    response = await client.post("/events/v3/send/batch", json=batch, headers=AUTH)
    assert response.status == 204
    assert len(emulator.events) == 501
    assert len(emulator.contacts) == 501


async def test_an_undefined_event_is_400(client: TestClient, emulator: Emulator) -> None:
    await define(client)
    for name in (f"pe{HUB_ID}_never_defined", "signed_up", "pe1_signed_up"):
        response = await client.post("/events/v3/send", json=occurrence(eventName=name), headers=AUTH)
        assert response.status == 400
        body = await response.json()
        assert_envelope(body, "VALIDATION_ERROR")
        assert "is not defined" in body["message"] and name in body["message"]
    assert emulator.events == []


@pytest.mark.parametrize("overrides,fragment", [
    ({"properties": {"Plan": "pro"}}, "Invalid property name 'Plan'"),
    ({"properties": {"plan-name": "pro"}}, "Invalid property name"),
    ({"properties": {"p" * 51: "pro"}}, "Invalid property name"),
    ({"properties": {f"p{i}": "x" for i in range(51)}}, "Too many properties"),
    ({"properties": {"plan": "x" * 51}}, "51 characters long; the maximum is 50"),
    ({"properties": {"page": "https://example.com/" + "x" * 181}}, "the maximum is 200"),
    ({"properties": {"plan": {"nested": 1}}}, "must have a string or number value"),
    ({"email": None}, "One of email, utk or objectId is required"),
    ({"email": "jane"}, "Email address jane is invalid"),
    ({"occurredAt": "yesterday"}, "is not an ISO 8601 timestamp"),
    ({"occurredAt": 1768943656512}, "is not an ISO 8601 timestamp"),
    ({"eventName": None}, "eventName is required"),
])
async def test_a_malformed_occurrence_fails_the_whole_batch(client: TestClient, emulator: Emulator,
                                                            overrides: dict[str, Any], fragment: str) -> None:
    await define(client)
    batch = {"inputs": [occurrence(email="first@example.com"), occurrence(**overrides)]}
    response = await client.post("/events/v3/send/batch", json=batch, headers=AUTH)
    assert response.status == 400
    body = await response.json()
    assert_envelope(body, "VALIDATION_ERROR")
    assert body["message"].startswith("inputs[1]: ")
    assert fragment in body["message"]
    assert emulator.events == [] and emulator.contacts == {}


async def test_long_url_values_and_other_identities_are_accepted(client: TestClient, emulator: Emulator) -> None:
    await define(client)
    inputs = [occurrence(properties={"page": "https://example.com/" + "x" * 180}),
              occurrence(email=None, utk="abc123"), occurrence(email=None, objectId="51")]
    response = await client.post("/events/v3/send/batch", json={"inputs": inputs}, headers=AUTH)
    assert response.status == 204
    assert len(emulator.events) == 3


async def test_more_than_500_occurrences_is_400(client: TestClient, emulator: Emulator) -> None:
    await define(client)
    batch = {"inputs": [occurrence(email=f"u{i}@example.com") for i in range(501)]}
    response = await client.post("/events/v3/send/batch", json=batch, headers=AUTH)
    assert response.status == 400
    body = await response.json()
    assert_envelope(body, "VALIDATION_ERROR")
    assert "500" in body["message"]
    assert emulator.events == []


async def test_a_uuid_seen_before_is_a_duplicate(client: TestClient, emulator: Emulator) -> None:
    await define(client)
    assert (await client.post("/events/v3/send", json=occurrence(uuid="same"), headers=AUTH)).status == 204
    response = await client.post("/events/v3/send", json=occurrence(uuid="same"), headers=AUTH)
    assert response.status == 400
    assert "Duplicate uuid same" in (await response.json())["message"]

    batch = {"inputs": [occurrence(uuid="new-1"), occurrence(uuid="new-2"), occurrence(uuid="new-1")]}
    response = await client.post("/events/v3/send/batch", json=batch, headers=AUTH)
    assert response.status == 400
    body = await response.json()
    assert body["message"].startswith("inputs[2]: Duplicate uuid new-1")
    assert [e["uuid"] for e in emulator.events] == ["same"]


# --- legacy tracker ---------------------------------------------------------------------------


async def test_the_legacy_tracker_creates_the_contact_and_records_the_event(client: TestClient,
                                                                            emulator: Emulator) -> None:
    params = {"_a": HUB_ID, "_n": "000000001625", "email": "jane+x@example.com", "_m": "19.99",
              "firstname": "Jane", "lifecyclestage": "lead", "favourite_colour": "red", "hs_object_id": "9"}
    response = await client.get("/v1/event", params=params)
    assert response.status == 200
    assert response.content_type == "image/gif"
    assert await response.read() == b""
    stored = emulator.contacts["jane+x@example.com"]["properties"]
    assert stored["firstname"] == "Jane" and stored["lifecyclestage"] == "lead"
    assert "favourite_colour" not in stored and stored["hs_object_id"] != "9"
    (event,) = emulator.events
    assert event["eventName"] == "000000001625"
    assert event["email"] == "jane+x@example.com"
    assert event["uuid"] is None
    assert event["properties"] == {"revenue": "19.99"}
    assert "occurredAt" in event
    assert "X-HubSpot-RateLimit-Max" not in response.headers


@pytest.mark.parametrize("params", [
    {"_a": "999", "_n": "signup", "email": "a@example.com"},
    {"_n": "signup", "email": "a@example.com"},
    {"_a": HUB_ID, "email": "a@example.com"},
    {"_a": HUB_ID, "_n": "signup", "email": "not-an-email"},
], ids=["wrong-hub", "no-hub", "no-name", "bad-email"])
async def test_the_legacy_tracker_is_silent_about_bad_calls(client: TestClient, emulator: Emulator,
                                                            params: dict[str, str]) -> None:
    response = await client.get("/v1/event", params=params)
    assert response.status == 200
    assert response.content_type == "image/gif"
    assert emulator.events == [] and emulator.contacts == {}


# --- rate limits ------------------------------------------------------------------------------


async def test_the_rolling_window_gives_429_until_it_passes(aiohttp_client: Any, clock: FakeClock) -> None:
    emulator = Emulator(TOKEN, HUB_ID, rate_limit=3, rate_window=10.0, clock=clock)
    client = await aiohttp_client(emulator.app())
    remaining = []
    for _ in range(3):
        response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
        assert response.status == 200
        assert response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
        assert response.headers["X-HubSpot-RateLimit-Max"] == "3"
        assert response.headers["X-HubSpot-RateLimit-Daily"] == "250000"
        remaining.append(response.headers["X-HubSpot-RateLimit-Remaining"])
        clock.advance(1)
    assert remaining == ["2", "1", "0"]

    response = await client.post(UPSERT, json={"inputs": [contact_input("a@example.com")]}, headers=AUTH)
    assert response.status == 429
    body = await response.json()
    assert body["status"] == "error"
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    assert body["errorType"] == "RATE_LIMIT"
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert len(body["correlationId"]) == 36
    assert response.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert emulator.contacts == {}

    clock.advance(7.5)  # the first request (t=0) has left the 10 s window
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 200
    assert response.headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert response.headers["X-HubSpot-RateLimit-Daily-Remaining"] == str(250_000 - 4)
    assert [r["status"] for r in emulator.requests] == [200, 200, 200, 429, 200]


async def test_the_daily_limit_gives_429_until_the_day_passes(aiohttp_client: Any, clock: FakeClock) -> None:
    emulator = Emulator(TOKEN, HUB_ID, rate_limit=100, daily_limit=2, clock=clock)
    client = await aiohttp_client(emulator.app())
    for expected in ("1", "0"):
        response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
        assert response.headers["X-HubSpot-RateLimit-Daily-Remaining"] == expected
    clock.advance(60)
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 429
    body = await response.json()
    assert body["message"] == "You have reached your daily limit."
    assert body["policyName"] == "DAILY"
    clock.advance(86_400)
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 200


async def test_the_tracker_and_control_routes_are_not_rate_limited(aiohttp_client: Any, clock: FakeClock) -> None:
    emulator = Emulator(TOKEN, HUB_ID, rate_limit=1, clock=clock)
    client = await aiohttp_client(emulator.app())
    for _ in range(3):
        assert (await client.get("/v1/event", params={"_a": HUB_ID, "_n": "e", "email": "a@example.com"})).status == 200
        assert (await client.get("/_emulator/contacts")).status == 200
    assert (await client.get("/crm/v3/properties/contacts", headers=AUTH)).status == 200


# --- faults -----------------------------------------------------------------------------------


async def set_faults(client: TestClient, *faults: dict[str, Any]) -> None:
    response = await client.post("/_emulator/faults", json={"faults": list(faults)})
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_a_status_fault_fires_count_times_on_matching_paths(client: TestClient, emulator: Emulator) -> None:
    await set_faults(client, {"path": UPSERT, "status": 503, "count": 2})
    statuses = []
    for _ in range(3):
        status, _ = await upsert(client, contact_input("a@example.com"))
        statuses.append(status)
    assert statuses == [503, 503, 200]
    assert (await client.get("/crm/v3/properties/contacts", headers=AUTH)).status == 200
    assert [r["status"] for r in emulator.requests] == [503, 503, 200, 200]


async def test_fault_bodies_follow_hubspot(client: TestClient) -> None:
    await set_faults(client, {"status": 429, "policy": "DAILY", "count": 1},
                     {"status": 477, "count": 1},
                     {"status": 423, "count": 1, "retry_after": 2},
                     {"status": 502, "count": 1, "body": {"custom": True}})
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 429
    body = await response.json()
    assert body["policyName"] == "DAILY" and body["errorType"] == "RATE_LIMIT"
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 477 and response.headers["Retry-After"] == "1"
    assert_envelope(await response.json(), "MIGRATION_IN_PROGRESS")
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 423 and response.headers["Retry-After"] == "2"
    assert_envelope(await response.json(), "LOCKED")
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 502 and await response.json() == {"custom": True}
    assert (await client.get("/crm/v3/properties/contacts", headers=AUTH)).status == 200


async def test_a_reset_fault_drops_the_connection(client: TestClient, emulator: Emulator) -> None:
    await set_faults(client, {"path": "/crm/", "reset": True, "count": 1})
    with pytest.raises(aiohttp.ClientConnectionError):
        await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert (await client.get("/crm/v3/properties/contacts", headers=AUTH)).status == 200
    assert emulator.requests[0]["status"] == 0


async def test_a_latency_fault_delays_the_answer(client: TestClient) -> None:
    await set_faults(client, {"latency": 0.05, "count": 1})
    started = time.monotonic()
    response = await client.get("/crm/v3/properties/contacts", headers=AUTH)
    assert response.status == 200
    assert time.monotonic() - started >= 0.05


async def test_fault_rate_is_a_probability_and_faults_can_be_cleared(client: TestClient) -> None:
    await set_faults(client, {"status": 500, "rate": 0.0})
    assert (await client.get("/crm/v3/properties/contacts", headers=AUTH)).status == 200
    await set_faults(client, {"status": 500, "rate": 0.5})
    statuses = [(await client.get("/crm/v3/properties/contacts", headers=AUTH)).status for _ in range(40)]
    assert 0 < statuses.count(500) < 40 and set(statuses) == {200, 500}
    await set_faults(client)
    assert (await client.get("/crm/v3/properties/contacts", headers=AUTH)).status == 200


@pytest.mark.parametrize("fault", [{"status": 503, "rate": 2}, {"stauts": 503}, {"path": "/crm/"}, {"status": "503"}])
async def test_an_invalid_fault_is_refused(client: TestClient, fault: dict[str, Any]) -> None:
    response = await client.post("/_emulator/faults", json={"faults": [fault]})
    assert response.status == 400
    assert_envelope(await response.json(), "VALIDATION_ERROR")


# --- inspection, reset, routing ---------------------------------------------------------------


async def test_inspection_endpoints_and_reset(client: TestClient, emulator: Emulator) -> None:
    await define(client)
    await upsert(client, contact_input("a@example.com", firstname="A"))
    await client.post("/events/v3/send", json=occurrence(email="a@example.com", uuid="u"), headers=AUTH)
    await client.get("/crm/v3/properties/contacts", params={"archived": "false"}, headers=AUTH)

    contacts = (await (await client.get("/_emulator/contacts")).json())["results"]
    assert [(c["email"], c["properties"]["firstname"]) for c in contacts] == [("a@example.com", "A")]
    events = (await (await client.get("/_emulator/events")).json())["results"]
    assert [e["uuid"] for e in events] == ["u"]
    requests = (await (await client.get("/_emulator/requests")).json())["results"]
    assert [(r["method"], r["path"], r["status"]) for r in requests] == [
        ("POST", "/events/v3/event-definitions", 201), ("POST", UPSERT, 200), ("POST", "/events/v3/send", 204),
        ("GET", "/crm/v3/properties/contacts", 200)]
    assert requests[-1]["query"] == {"archived": "false"}
    assert all(isinstance(r["time"], float) for r in requests)

    await set_faults(client, {"status": 500})
    response = await client.post("/_emulator/reset")
    assert await response.json() == {"status": "ok"}
    assert (emulator.contacts, emulator.events, emulator.requests, emulator.definitions) == ({}, [], [], {})
    assert (await client.get("/crm/v3/properties/contacts", headers=AUTH)).status == 200
    # The uuid and the definition are forgotten too: the same event must be defined again.
    response = await client.post("/events/v3/send", json=occurrence(uuid="u"), headers=AUTH)
    assert response.status == 400


async def test_a_contact_can_be_read_back_by_id_or_email(client: TestClient) -> None:
    _, body = await upsert(client, contact_input("r@example.com", firstname="R"))
    contact_id = body["results"][0]["id"]
    for path, params in ((f"/crm/v3/objects/contacts/{contact_id}", {}),
                         ("/crm/v3/objects/contacts/R@example.com", {"idProperty": "email"})):
        response = await client.get(path, params=params, headers=AUTH)
        assert response.status == 200
        read = await response.json()
        assert (read["id"], read["properties"]["firstname"]) == (contact_id, "R")
    response = await client.get("/crm/v3/objects/contacts/999", headers=AUTH)
    assert response.status == 404
    assert_envelope(await response.json(), "OBJECT_NOT_FOUND")


async def test_unknown_routes_are_404_envelopes(client: TestClient) -> None:
    for path, headers in (("/nowhere", {}), ("/crm/v3/objects/widgets", AUTH)):
        response = await client.get(path, headers=headers)
        assert response.status == 404
        assert_envelope(await response.json(), "OBJECT_NOT_FOUND")


# --- serving, files, command line -------------------------------------------------------------


async def test_serve_listens_on_a_free_port() -> None:
    emulator = Emulator(TOKEN, HUB_ID)
    runner = await serve(emulator, "127.0.0.1", 0)
    try:
        port = runner.addresses[0][1]
        assert port != 0
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as session:
            async with session.post(UPSERT, json={"inputs": [contact_input("s@example.com")]}, headers=AUTH) as r:
                assert r.status == 200
            async with session.get("/v1/event", params={"_a": HUB_ID, "_n": "e", "email": "s@example.com"}) as r:
                assert r.status == 200
        assert set(emulator.contacts) == {"s@example.com"}
        assert len(emulator.events) == 1
    finally:
        await runner.cleanup()


def test_load_properties_file_reads_yaml_and_json(tmp_path: Path) -> None:
    yaml_file = tmp_path / "props.yaml"
    yaml_file.write_text("- name: plan\n  type: enumeration\n  fieldType: select\n  options:\n    - value: pro\n")
    json_file = tmp_path / "props.json"
    json_file.write_text(json.dumps({"results": [{"name": "score", "type": "number", "fieldType": "number"}]}))
    assert load_properties_file(str(yaml_file))[0]["name"] == "plan"
    assert load_properties_file(str(json_file)) == [{"name": "score", "type": "number", "fieldType": "number"}]
    bad = tmp_path / "bad.yaml"
    bad.write_text("plan: 1\n")
    with pytest.raises(ValueError):
        load_properties_file(str(bad))


async def test_properties_from_a_file_are_validated(aiohttp_client: Any, tmp_path: Path) -> None:
    path = tmp_path / "props.yaml"
    path.write_text("- name: score\n  type: number\n  fieldType: number\n"
                    "- name: tier_locked\n  modificationMetadata: {readOnlyValue: true}\n")
    client = await aiohttp_client(Emulator(TOKEN, HUB_ID, properties=load_properties_file(str(path))).app())
    assert (await upsert(client, contact_input("a@example.com", score="10")))[0] == 200
    status, body = await upsert(client, contact_input("a@example.com", score="ten"))
    assert status == 400 and embedded_results(body["message"])[0]["error"] == "INVALID_LONG"
    status, body = await upsert(client, contact_input("a@example.com", tier_locked="x"))
    assert status == 400 and embedded_results(body["message"])[0]["error"] == "READ_ONLY_VALUE"


@pytest.mark.parametrize("text,expected", [("100/10s", (100, 10.0)), ("190/10s", (190, 10.0)), ("5/1s", (5, 1.0)),
                                           ("250/10", (250, 10.0)), ("20/500ms", (20, 0.5))])
def test_parse_rate(text: str, expected: tuple[int, float]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["100", "ten/10s", "100/10x", "0/10s", "100/0s"])
def test_parse_rate_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="router")
    add_cli(parser.add_subparsers())
    return parser


def test_add_cli_parses_the_subcommand() -> None:
    args = make_parser().parse_args(["hubspot-emulator", "--token", "t", "--hub-id", "42"])
    assert (args.listen, args.token, args.hub_id) == (("127.0.0.1", 8002), "t", "42")
    assert (args.rate_limit, args.daily_limit, args.properties) == ((100, 10.0), 250_000, None)
    assert callable(args.func)
    args = make_parser().parse_args(["hubspot-emulator", "--listen", "0.0.0.0:9000", "--token", "t", "--hub-id", "42",
                                     "--rate-limit", "190/10s", "--daily-limit", "625000", "--properties", "p.yaml"])
    assert (args.listen, args.rate_limit, args.daily_limit, args.properties) == (
        ("0.0.0.0", 9000), (190, 10.0), 625_000, "p.yaml")


@pytest.mark.parametrize("argv", [["hubspot-emulator", "--hub-id", "42"],
                                  ["hubspot-emulator", "--token", "t"],
                                  ["hubspot-emulator", "--token", "t", "--hub-id", "42", "--rate-limit", "fast"],
                                  ["hubspot-emulator", "--token", "t", "--hub-id", "42", "--listen", "localhost"]])
def test_add_cli_refuses_bad_arguments(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        make_parser().parse_args(argv)
    assert exited.value.code == 2


def test_the_command_refuses_a_non_numeric_hub_id(capsys: pytest.CaptureFixture[str]) -> None:
    args = make_parser().parse_args(["hubspot-emulator", "--token", "t", "--hub-id", "acme", "--listen", "127.0.0.1:0"])
    assert args.func(args) == 2
    assert "hub_id" in capsys.readouterr().err


async def test_the_command_serves_until_sigterm() -> None:
    script = ("import argparse, sys\n"
              "from plugins.hubspot.emulator import add_cli\n"
              "parser = argparse.ArgumentParser(); add_cli(parser.add_subparsers())\n"
              "args = parser.parse_args(sys.argv[1:]); sys.exit(args.func(args))\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, "hubspot-emulator", "--listen", "127.0.0.1:0", "--token", TOKEN,
        "--hub-id", HUB_ID, stdout=asyncio.subprocess.PIPE, cwd=str(REPO),
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode().strip()
        assert line.startswith("HubSpot emulator on http://127.0.0.1:") and line.endswith(f"(hub_id {HUB_ID})")
        url = line.split()[3]
        async with aiohttp.ClientSession() as session, session.get(
                f"{url}/crm/v3/properties/contacts", headers=AUTH) as response:
            assert response.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0
