"""Pure decisions about one Jitsu event: is it an identify, whose user is it, which email, when did it happen."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

IDENTIFY = "user_identify"


def is_identify(event: Mapping[str, Any]) -> bool:
    """An identify (``jitsu.id(...)``) becomes a contact upsert; everything else a custom event."""
    return event.get("event_type") == IDENTIFY


def user_properties(event: Mapping[str, Any]) -> dict[str, Any]:
    """The user object: ``/user``, else ``/eventn_ctx/user`` (the SDK's compat mode)."""
    user = event.get("user")
    if not isinstance(user, dict):
        context = event.get("eventn_ctx")
        user = context.get("user") if isinstance(context, dict) else None
    return user if isinstance(user, dict) else {}


def email_of(event: Mapping[str, Any]) -> str | None:
    """The user's email, stripped, or None when missing or not a non-empty string."""
    email = user_properties(event).get("email")
    if not isinstance(email, str) or not email.strip():
        return None
    return email.strip()


def skip_reason(event: Mapping[str, Any]) -> str | None:
    """Why HubSpot cannot take this event (counted as a skip), or None to send it."""
    if email_of(event) is None:
        return "no email"
    return None


def event_time(event: Mapping[str, Any]) -> dt.datetime | None:
    """When the event happened: the client's ``utc_time``, else the router's ``_timestamp`` (UTC)."""
    for field in ("utc_time", "_timestamp"):
        moment = parse_instant(event.get(field))
        if moment is not None:
            return moment
    context = event.get("eventn_ctx")
    if isinstance(context, dict):
        return parse_instant(context.get("utc_time"))
    return None


def parse_instant(value: Any) -> dt.datetime | None:
    """An ISO 8601 timestamp as an aware UTC datetime (naive means UTC), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)
