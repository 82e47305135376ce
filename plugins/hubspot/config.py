"""The ``hubspot`` destination's config block: credentials, endpoints, API versions and limits."""

from __future__ import annotations

import re
from typing import Any

import attrs

from router.config import Duration, HttpUrl, PositiveInt, Secret, converter

#: HubSpot's own ceilings: inputs per contact batch upsert, occurrences per event batch
MAX_CONTACTS_BATCH = 100
MAX_EVENTS_BATCH = 500


class HubId(str):
    """The account's numeric portal id (digits only)."""

    @classmethod
    def parse(cls, value: Any) -> HubId:
        text = str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
        if not text.isdigit():
            raise ValueError(f"expected the account's numeric portal id (digits only), got {value!r}")
        return cls(text)


class _Choice(str):
    """A string that must be one of ``choices``."""

    choices: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: Any) -> Any:
        if not isinstance(value, str) or value not in cls.choices:
            raise ValueError(f"expected one of {', '.join(cls.choices)}, got {value!r}")
        return cls(value)


class ContactsApi(_Choice):
    """``v3`` (batch upsert by email, 100 per request) or ``v1`` (legacy createOrUpdate, one per contact)."""

    choices = ("v3", "v1")


class EventsApi(_Choice):
    """``legacy`` (the tracker's GET /v1/event, one per event) or ``v3`` (custom behavioral events, batched)."""

    choices = ("legacy", "v3")


class TimeOfDay(str):
    """``HH:MM`` in UTC."""

    _RE = re.compile(r"^([01]?\d|2[0-3]):([0-5]\d)$")

    @classmethod
    def parse(cls, value: Any) -> TimeOfDay:
        if not isinstance(value, str) or not cls._RE.match(value.strip()):
            raise ValueError(f"expected a UTC time of day such as 00:00 or 05:30, got {value!r}")
        return cls(value.strip())

    @property
    def seconds(self) -> int:
        """Seconds after midnight UTC."""
        hours, minutes = self.split(":")
        return int(hours) * 3600 + int(minutes) * 60


# The plugin's own self-validating types, structured by the router's one converter like its own.
for _parsed in (HubId, ContactsApi, EventsApi, TimeOfDay):
    converter.register_structure_hook(_parsed, lambda value, t: t.parse(value))


def _at_most(limit: int) -> Any:
    def check(instance: object, attribute: attrs.Attribute, value: int) -> None:  # type: ignore[type-arg]
        if value > limit:
            raise ValueError(f"{attribute.name}: HubSpot takes at most {limit} per request, got {value}")

    return check


@attrs.define
class HubSpotConfig:
    """One HubSpot account. Every field but ``hub_id`` and a credential has a working default."""

    #: the account's numeric portal id: event names (pe<hub_id>_...) and the legacy tracker need it
    hub_id: HubId
    #: a private-app access token, sent as ``Authorization: Bearer``
    access_token: Secret | None = None
    #: deprecated: the old ``hapikey`` (HubSpot switched them off on 2022-11-30); used only without
    #: an access_token, with a warning at start
    api_key: Secret | None = None
    api_base: HttpUrl = HttpUrl("https://api.hubapi.com")
    #: the legacy events tracker (EU accounts: https://track-eu1.hubspot.com)
    track_base: HttpUrl = HttpUrl("https://track.hubspot.com")
    contacts_api: ContactsApi = ContactsApi("v3")
    events_api: EventsApi = EventsApi("legacy")
    #: how often the contact property catalog is fetched again
    property_refresh: Duration = Duration(3600)
    #: requests per rate_window this destination may make (HubSpot: 100 per 10 s on Free/Starter,
    #: 190 on Professional/Enterprise)
    rate_limit: PositiveInt = PositiveInt(100)
    rate_window: Duration = Duration(10)
    #: requests per day for the account
    daily_limit: PositiveInt = PositiveInt(250_000)
    #: when HubSpot's daily allowance starts again (midnight in the account's time zone), in UTC
    daily_reset: TimeOfDay = TimeOfDay("00:00")
    contacts_batch_size: PositiveInt = attrs.field(
        default=PositiveInt(MAX_CONTACTS_BATCH), validator=_at_most(MAX_CONTACTS_BATCH)
    )
    events_batch_size: PositiveInt = attrs.field(
        default=PositiveInt(MAX_EVENTS_BATCH), validator=_at_most(MAX_EVENTS_BATCH)
    )
    #: per HTTP request to HubSpot (the core's delivery.timeout bounds a whole send)
    timeout: Duration = Duration(20)

    def __attrs_post_init__(self) -> None:
        if not self.access_token and not self.api_key:
            raise ValueError(
                "access_token: required (a private app's access token, e.g. access_token: ${HUBSPOT_ACCESS_TOKEN})"
            )

    @property
    def uses_api_key(self) -> bool:
        """True in the deprecated hapikey mode (an api_key and no access_token)."""
        return not self.access_token and bool(self.api_key)
