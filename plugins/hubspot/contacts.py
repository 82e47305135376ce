"""Identifies -> HubSpot contacts: merged per email, batch-upserted (v3) or created-or-updated (v1).

v3: ``POST /crm/v3/objects/contacts/batch/upsert`` with ``idProperty: email``, up to 100 inputs.
Identifies of one email (case-insensitive) in a batch are merged in event-time order (later values
win) into one input, whose outcome applies to all of its events. A 207 rejects the inputs its
errors name; when an error names no input, only inputs HubSpot returned a result for are delivered.
A 400 that names inputs rejects them and resends the rest; a 400 that names a property refreshes
the catalog, leaves the property out and resends; a 400 that names nothing (or a 413) is split in
halves until the bad inputs are found (a bounded number of requests per send).

v1: ``POST /contacts/v1/contact/createOrUpdate/email/<email>/``, one request per merged contact.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import attrs
import orjson

from plugins.hubspot.client import HubSpotClient, HubSpotError, RequestBudget
from plugins.hubspot.filter import email_of, event_time, user_properties
from plugins.hubspot.outcomes import OUT_OF_TIME, BatchPlan, SendClock, keep_decided
from plugins.hubspot.properties import READ_ONLY, UNKNOWN, PropertyCatalog
from router.destination import (
    Delivered,
    Delivery,
    Outcome,
    Rejected,
    Retry,
    Sender,
    Skipped,
)

log = logging.getLogger(__name__)

UPSERT_PATH = "/crm/v3/objects/contacts/batch/upsert"
V1_PATH = "/contacts/v1/contact/createOrUpdate/email/{email}/"
#: v1 makes one request per contact; keep a send() short enough for the core's timeout
V1_MAX_BATCH = 10
#: rounds of "leave the refused property out and resend" per send
MAX_PROPERTY_ROUNDS = 5
#: HubSpot's validation codes meaning "this property cannot be written at all"
_UNWRITABLE = {"PROPERTY_DOESNT_EXIST": UNKNOWN, "READ_ONLY_VALUE": READ_ONLY}
#: categories of a 207's errors that mean "try again later" rather than "this input is bad"
TRANSIENT_CATEGORIES = frozenset(
    {"RATE_LIMITS", "LOCKED", "MIGRATION_IN_PROGRESS", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE"}
)


@attrs.define
class Contact:
    """One upsert input: the merged properties of every identify of one email in the batch."""

    email: str
    properties: dict[str, str]
    #: positions in the batch of the events merged into it
    members: list[int]


class ContactUpsertSender(Sender):
    """Sends identifies as contact upserts, one outcome per event."""

    name = "contacts"

    def __init__(
        self,
        client: HubSpotClient,
        catalog: PropertyCatalog,
        *,
        batch_size: int,
        legacy: bool,
        destination: str,
    ) -> None:
        self.client = client
        self.catalog = catalog
        self.legacy = legacy
        self.destination = destination
        self.max_batch = min(batch_size, V1_MAX_BATCH) if legacy else batch_size

    async def send(self, batch: Sequence[Delivery]) -> Sequence[Outcome]:
        budget = RequestBudget(self.client.limiter)
        await self.catalog.ensure_fresh(budget)
        outcomes: list[Outcome | None] = [None] * len(batch)
        contacts = self.merge(batch, outcomes)
        results: dict[int, Outcome] = {}
        sending = self._send_v1 if self.legacy else self._send_v3
        await keep_decided(sending(contacts, budget, results), results, range(len(contacts)))
        for index, contact in enumerate(contacts):
            for member in contact.members:
                outcomes[member] = results.get(index, Retry("not sent"))
        return [o if o is not None else Retry("not sent") for o in outcomes]

    # -- merging --------------------------------------------------------------------------

    def merge(self, batch: Sequence[Delivery], outcomes: list[Outcome | None]) -> list[Contact]:
        """One Contact per email (case-insensitive), properties merged in event-time order."""
        def when(position: int) -> tuple[float, int]:
            moment = event_time(batch[position].event)
            return (moment.timestamp() if moment else batch[position].received_at, position)

        by_email: dict[str, Contact] = {}
        for position in sorted(range(len(batch)), key=when):
            event = batch[position].event
            email = email_of(event)
            if email is None:
                outcomes[position] = Skipped("no email")
                continue
            properties = self.catalog.contact_properties(user_properties(event))
            properties["email"] = email
            contact = by_email.get(email.lower())
            if contact is None:
                by_email[email.lower()] = Contact(email, properties, [position])
            else:
                contact.email = email
                contact.properties.update(properties)
                contact.members.append(position)
        return list(by_email.values())

    def _leave_out(self, contacts: list[Contact], group: list[int], refused: dict[str, str]) -> bool:
        """Remove refused properties from the group's inputs; True when any was there."""
        removed = False
        for index in group:
            for name, reason in refused.items():
                if name != "email" and contacts[index].properties.pop(name, None) is not None:
                    self.catalog.count_drop(name, reason)
                    removed = True
        return removed

    # -- v3 -------------------------------------------------------------------------------

    async def _send_v3(self, contacts: list[Contact], budget: RequestBudget, results: dict[int, Outcome]) -> None:
        plan = BatchPlan(list(range(len(contacts))), results, what="contacts", destination=self.destination)
        property_rounds = 0
        while (group := plan.next()) is not None:
            inputs = [
                {"idProperty": "email", "id": contacts[i].email, "properties": contacts[i].properties} for i in group
            ]
            try:
                response = await self.client.call(
                    "POST", UPSERT_PATH, operation="contact upsert", budget=budget, body={"inputs": inputs}
                )
            except HubSpotError as err:
                refused = {
                    p["name"]: _UNWRITABLE[p["error"]] for p in err.property_problems() if p["error"] in _UNWRITABLE
                }
                if refused and not err.ids() and property_rounds < MAX_PROPERTY_ROUNDS:
                    property_rounds += 1
                    log.info("destination %s: HubSpot refused properties %s; refreshing the catalog and resending",
                             self.destination, sorted(refused))
                    await self.catalog.refused(refused, budget)
                    if self._leave_out(contacts, group, refused):
                        plan.resend(group)
                        continue
                named = {i.lower() for i in err.ids()}
                bad = [i for i in group if contacts[i].email.lower() in named]
                if bad:
                    for index in bad:
                        results[index] = Rejected(err.message, response=err.text)
                    plan.resend(group)
                    continue
                plan.refused(group, err)
                continue
            self._apply_upsert(response.status, response.body, contacts, group, results)

    def _apply_upsert(
        self, status: int, body: Any, contacts: list[Contact], group: list[int], results: dict[int, Outcome]
    ) -> None:
        """A 200 or 207: inputs its errors name are rejected. When an error names no input, only the
        inputs HubSpot returned a result for (by email) are delivered; the others get that error."""
        envelope = body if isinstance(body, dict) else {}
        by_id = {contacts[i].email.lower(): i for i in group}
        unnamed: list[dict[str, Any]] = []
        errors = envelope.get("errors")
        for error in errors if isinstance(errors, list) else []:
            if not isinstance(error, dict):
                continue
            context = error.get("context")
            ids = context.get("ids") if isinstance(context, dict) else None
            matched = [by_id[str(i).lower()] for i in ids if str(i).lower() in by_id] if isinstance(ids, list) else []
            if not matched:
                unnamed.append(error)
            for index in matched:
                results[index] = Rejected(str(error.get("message") or f"HubSpot {status}"),
                                          response=orjson.dumps(error).decode())
        if not unnamed:
            for index in group:
                results.setdefault(index, Delivered())
            return
        upserted = envelope.get("results")
        confirmed = {
            str(result["properties"].get("email", "")).lower()
            for result in (upserted if isinstance(upserted, list) else [])
            if isinstance(result, dict) and isinstance(result.get("properties"), dict)
        }
        failed = _unnamed_failure(status, unnamed)
        left = [i for i in group if i not in results and contacts[i].email.lower() not in confirmed]
        log.warning("destination %s: HubSpot's %d answer had %d errors naming no input; %d contacts it returned "
                    "no result for are %s", self.destination, status, len(unnamed), len(left),
                    "retried" if isinstance(failed, Retry) else "rejected")
        for index in group:
            results.setdefault(index, failed if index in left else Delivered())

    # -- v1 -------------------------------------------------------------------------------

    async def _send_v1(self, contacts: list[Contact], budget: RequestBudget, results: dict[int, Outcome]) -> None:
        clock = SendClock()
        for index, contact in enumerate(contacts):
            if clock.out_of_time():
                for rest in range(index, len(contacts)):
                    results.setdefault(rest, Retry(OUT_OF_TIME))
                return
            path = V1_PATH.format(email=quote(contact.email, safe="@"))
            for attempt in range(MAX_PROPERTY_ROUNDS + 1):
                body = {
                    "properties": [
                        {"property": name, "value": value}
                        for name, value in contact.properties.items()
                        if name != "email"
                    ]
                }
                try:
                    await self.client.call("POST", path, operation="contact upsert", budget=budget, body=body)
                except HubSpotError as err:
                    problems = err.property_problems()
                    refused = {p["name"]: _UNWRITABLE[p["error"]] for p in problems if p["error"] in _UNWRITABLE}
                    if refused and attempt < MAX_PROPERTY_ROUNDS:
                        await self.catalog.refused(refused, budget)
                        if self._leave_out(contacts, [index], refused):
                            continue
                    messages = [p["message"] for p in problems if p["message"]]
                    reason = "; ".join(messages) if messages else err.describe()
                    results[index] = Rejected(reason, response=err.text)
                    break
                results[index] = Delivered()
                break


def _unnamed_failure(status: int, errors: list[dict[str, Any]]) -> Outcome:
    """What a contact gets from errors that name no input when HubSpot returned no result for it:
    a retry when any error is transient, else a rejection with HubSpot's messages."""
    messages = list(dict.fromkeys(str(e.get("message") or "") for e in errors if e.get("message")))
    reason = "; ".join(messages) or f"HubSpot {status} without a result for this contact"
    if any(str(e.get("category") or "") in TRANSIENT_CATEGORIES for e in errors):
        return Retry(f"HubSpot {status}: {reason}")
    return Rejected(reason, response=orjson.dumps(errors).decode())
