"""Identifies -> HubSpot contacts: merged per email, batch-upserted (v3) or created-or-updated (v1).

v3: ``POST /crm/v3/objects/contacts/batch/upsert`` with ``idProperty: email``, up to 100 inputs.
Identifies of one email (case-insensitive) in a batch are merged in event-time order (later values
win) into one input, whose outcome applies to all of its events. A 207 rejects the inputs its
errors name; a 400 that names inputs rejects them and resends the rest; a 400 that names a property
refreshes the catalog, leaves the property out and resends; a 400 that names nothing is split in
halves until the bad inputs are found (a bounded number of requests per send).

v1: ``POST /contacts/v1/contact/createOrUpdate/email/<email>/``, one request per merged contact.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp
import attrs
import orjson

from plugins.hubspot.client import HubSpotClient, HubSpotError, RequestBudget
from plugins.hubspot.filter import email_of, event_time, user_properties
from plugins.hubspot.properties import READ_ONLY, UNKNOWN, PropertyCatalog
from router.destination import (
    Delivered,
    Delivery,
    Outcome,
    Rejected,
    Retry,
    RetryBatch,
    Sender,
    Skipped,
)
from router.destination import describe_error

log = logging.getLogger(__name__)

UPSERT_PATH = "/crm/v3/objects/contacts/batch/upsert"
V1_PATH = "/contacts/v1/contact/createOrUpdate/email/{email}/"
#: v1 makes one request per contact; keep a send() short enough for the core's timeout
V1_MAX_BATCH = 10
#: requests one send() may make to isolate inputs HubSpot refused without naming them
MAX_REQUESTS_PER_SEND = 24
#: rounds of "leave the refused property out and resend" per send
MAX_PROPERTY_ROUNDS = 5
#: HubSpot's validation codes meaning "this property cannot be written at all"
_UNWRITABLE = {"PROPERTY_DOESNT_EXIST": UNKNOWN, "READ_ONLY_VALUE": READ_ONLY}
#: failures in the middle of a send that make the unresolved events retry (resolved ones keep theirs)
_TRANSIENT = (RetryBatch, aiohttp.ClientError, asyncio.TimeoutError, OSError)


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
        try:
            if self.legacy:
                await self._send_v1(contacts, budget, results)
            else:
                await self._send_v3(contacts, budget, results)
        except _TRANSIENT as exc:
            if not results:
                raise  # nothing decided: a whole-batch failure, so the core holds the destination back
            # what was decided stays decided; the rest is retried
            reason = exc.reason if isinstance(exc, RetryBatch) else describe_error(exc)
            not_before = exc.not_before if isinstance(exc, RetryBatch) else None
            for index in range(len(contacts)):
                results.setdefault(index, Retry(reason, not_before))
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
        groups: list[list[int]] = [list(range(len(contacts)))] if contacts else []
        requests = 0
        property_rounds = 0
        while groups:
            if requests >= MAX_REQUESTS_PER_SEND:
                for group in groups:
                    for index in group:
                        results[index] = Retry("HubSpot refused the batch without naming the input; isolating it")
                log.warning("destination %s: request budget of one send spent isolating refused contacts",
                            self.destination)
                return
            group = groups.pop(0)
            requests += 1
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
                        groups.insert(0, group)
                        continue
                named = {i.lower() for i in err.ids()}
                bad = [i for i in group if contacts[i].email.lower() in named]
                if bad:
                    for index in bad:
                        results[index] = Rejected(err.message, response=err.text)
                    rest = [i for i in group if i not in bad]
                    if rest:
                        groups.insert(0, rest)
                    continue
                if len(group) == 1 or err.status != 400:
                    for index in group:
                        results[index] = Rejected(err.describe(), response=err.text)
                    continue
                half = len(group) // 2
                groups[:0] = [group[:half], group[half:]]
                continue
            self._apply_upsert(response.status, response.body, contacts, group, results)

    def _apply_upsert(
        self, status: int, body: Any, contacts: list[Contact], group: list[int], results: dict[int, Outcome]
    ) -> None:
        by_id = {contacts[i].email.lower(): i for i in group}
        errors = body.get("errors") if isinstance(body, dict) else None
        unmatched = 0
        for error in errors if isinstance(errors, list) else []:
            if not isinstance(error, dict):
                continue
            ids = (error.get("context") or {}).get("ids") or []
            matched = [by_id[str(i).lower()] for i in ids if str(i).lower() in by_id]
            unmatched += not matched
            for index in matched:
                results[index] = Rejected(str(error.get("message") or f"HubSpot {status}"),
                                          response=orjson.dumps(error).decode())
        if unmatched:
            log.warning("destination %s: %d HubSpot errors named no input of the batch", self.destination, unmatched)
        for index in group:
            results.setdefault(index, Delivered())

    # -- v1 -------------------------------------------------------------------------------

    async def _send_v1(self, contacts: list[Contact], budget: RequestBudget, results: dict[int, Outcome]) -> None:
        for index, contact in enumerate(contacts):
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
