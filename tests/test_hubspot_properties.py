"""Property names and values as HubSpot takes them: the pure conversion rules, one case per rule."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.hubspot.emulator import check_property_value
from plugins.hubspot.events import event_name, occurrence_uuid
from plugins.hubspot.properties import (
    InvalidValue,
    PropertyDef,
    convert,
    normalise_name,
    plain_number,
)

STRING = PropertyDef("notes", "string", "text")
NUMBER = PropertyDef("score", "number", "number")
BOOL = PropertyDef("vip", "bool", "booleancheckbox", (("true", "Yes"), ("false", "No")))
DATE = PropertyDef("signup_date", "date", "date")
DATETIME = PropertyDef("last_seen", "datetime", "date")
SELECT = PropertyDef("plan", "enumeration", "select", (("free", "Free"), ("pro", "Pro plan")))
CHECKBOX = PropertyDef("interests", "enumeration", "checkbox", (("sports", "Sports"), ("music", "Music")))


@pytest.mark.parametrize(
    ("raw", "name"),
    [("Favorite Color", "favorite_color"), ("firstName", "firstname"), ("  --Last   Name!! ", "last_name"),
     ("utm.source", "utm_source"), ("Größe", "gr_e"), ("___", "")],
)
def test_names_are_normalised(raw: str, name: str) -> None:
    assert normalise_name(raw) == name


@pytest.mark.parametrize(
    ("prop", "value", "expected"),
    [
        (DATE, "2015-05-01", "1430438400000"),
        (DATE, "2015-05-01T23:30:00+00:00", "1430438400000"),
        (DATE, "2015-05-01T23:30:00-05:00", "1430524800000"),  # 04:30 UTC on the 2nd
        (DATE, 1430500000, "1430438400000"),  # epoch seconds
        (DATE, 1430500000000, "1430438400000"),  # epoch milliseconds
        (DATE, "1430500000000", "1430438400000"),
        (DATETIME, "2026-01-20T21:14:16.512Z", "1768943656512"),
        (DATETIME, "2026-01-20T21:14:16", "1768943656000"),  # naive means UTC
        (DATETIME, 1768943656, "1768943656000"),
        (DATETIME, "2026-01-20", "1768867200000"),
        (BOOL, True, "true"), (BOOL, "Yes", "true"), (BOOL, "off", "false"), (BOOL, 0, "false"), (BOOL, "1", "true"),
        (NUMBER, 42.0, "42"), (NUMBER, 1e-7, "0.0000001"), (NUMBER, 1.5e21, "1500000000000000000000"),
        (NUMBER, "3.50", "3.5"), (NUMBER, -7, "-7"), (NUMBER, "1e3", "1000"),
        (SELECT, "PRO", "pro"), (SELECT, "pro plan", "pro"), (SELECT, "free", "free"),
        (CHECKBOX, ["Music", "sports"], "music;sports"), (CHECKBOX, "music;Sports", "music;sports"),
        (STRING, {"a": [1, 2]}, '{"a":[1,2]}'), (STRING, [1, "x"], '[1,"x"]'), (STRING, 12.0, "12"),
        (STRING, False, "false"), (STRING, "", ""), (NUMBER, "", ""),
    ],
)
def test_values_are_converted_by_type(prop: PropertyDef, value: Any, expected: str) -> None:
    assert convert(prop, value) == expected


@pytest.mark.parametrize(
    ("prop", "value"),
    [
        (DATE, "next tuesday"), (DATE, True), (DATETIME, {"at": 1}), (BOOL, "maybe"), (BOOL, 2),
        (NUMBER, "12 apples"), (NUMBER, True), (NUMBER, float("nan")), (NUMBER, float("inf")),
        (SELECT, "Gold"), (SELECT, ["free", "pro"]), (CHECKBOX, ["music", "knitting"]), (STRING, "x" * 65_537),
    ],
)
def test_values_that_cannot_be_converted_are_refused(prop: PropertyDef, value: Any) -> None:
    with pytest.raises(InvalidValue):
        convert(prop, value)


@given(st.one_of(st.integers(min_value=-(10**30), max_value=10**30), st.floats(allow_nan=False, allow_infinity=False)))
def test_every_number_becomes_text_hubspot_accepts(value: float) -> None:
    text = plain_number(value)
    _, problem = check_property_value({"name": "score", "type": "number"}, text)
    assert problem is None, text
    assert float(text) == pytest.approx(float(value), rel=1e-15)


@given(st.one_of(st.integers(min_value=0, max_value=4_000_000_000_000), st.datetimes().map(lambda d: d.isoformat())))
def test_every_date_lands_on_midnight_utc(value: int | str) -> None:
    _, problem = check_property_value({"name": "d", "type": "date"}, convert(DATE, value))
    assert problem is None


@pytest.mark.parametrize(
    ("event_type", "name"),
    [("purchase", "purchase"), ("Plan Upgraded", "plan_upgraded"), ("404 page", "e_404_page"),
     ("x" * 80, "x" * 50)],
)
def test_event_names_follow_hubspot_rules(event_type: str, name: str) -> None:
    assert event_name(event_type) == name


def test_event_ids_become_stable_uuids_per_api_key() -> None:
    assert occurrence_uuid("web", "order-1") == occurrence_uuid("web", "order-1") != occurrence_uuid("web", "order-2")
    # ingest dedups per key: the same client event id from two keys is two events, so two uuids
    assert occurrence_uuid("web", "42") != occurrence_uuid("app", "42")
    # a client's own UUID is derived too: another key may send the same one
    assert uuid.UUID(occurrence_uuid("web", "6c3e2a10-7a1b-4c1e-9a57-6f1d2a3b4c5d") or "").version == 5
    assert occurrence_uuid("web", "") is None
