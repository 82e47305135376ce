"""The ``hubspot`` destination: one client, property catalog and rate limiter shared by its two senders."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from plugins.hubspot.client import HubSpotClient, HubSpotError
from plugins.hubspot.config import HubSpotConfig
from plugins.hubspot.contacts import ContactUpsertSender
from plugins.hubspot.events import EventSender
from plugins.hubspot.filter import is_identify
from plugins.hubspot.properties import PropertyCatalog
from router.destination import Destination, DestinationContext, Event, Sender
from router.ratelimit import RateLimiter

log = logging.getLogger(__name__)


class HubSpotDestination(Destination):
    """Identifies become contact upserts; every other event a HubSpot event."""

    def __init__(self, config: HubSpotConfig, context: DestinationContext) -> None:
        self.config = config
        self.name = context.name
        self.limiter = RateLimiter(config.rate_limit, config.rate_window)
        self.client = HubSpotClient(context.http, config, self.limiter, destination=context.name)
        self.catalog = PropertyCatalog(
            self.client,
            legacy=config.contacts_api == "v1",
            refresh_every=config.property_refresh,
            destination=context.name,
            registry=context.metrics_registry,
        )
        self.contacts = ContactUpsertSender(
            self.client,
            self.catalog,
            batch_size=config.contacts_batch_size,
            legacy=config.contacts_api == "v1",
            destination=context.name,
        )
        self.events = EventSender(
            self.client,
            self.catalog,
            hub_id=config.hub_id,
            api=config.events_api,
            batch_size=config.events_batch_size,
            destination=context.name,
        )

        if context.delivery is not None:
            self._check_delivery(context.delivery)

    def _check_delivery(self, delivery: Any) -> None:
        """Say so at start when the core's delivery settings undercut this destination's."""
        if self.config.events_api == "v3" and delivery.batch_size < self.config.events_batch_size:
            log.warning(
                "destination %s: delivery.batch_size %d caps v3 event requests below events_batch_size %d; "
                "set delivery.batch_size: %d for the fewest requests",
                self.name, delivery.batch_size, self.config.events_batch_size, self.config.events_batch_size,
            )
        if self.config.timeout >= delivery.timeout:
            log.warning(
                "destination %s: hubspot.timeout (%gs) is not shorter than delivery.timeout (%gs): a send cut "
                "off by the core loses the answers HubSpot already gave, and resends cost requests",
                self.name, self.config.timeout, delivery.timeout,
            )

    def sender_for(self, event: Event) -> Sender:
        return self.contacts if is_identify(event) else self.events

    async def start(self) -> None:
        """Load the property catalog. Unreachable HubSpot raises (the core retries while events
        queue); a refused credential pauses the destination."""
        if self.config.uses_api_key:
            log.warning(
                "destination %s: api_key (hapikey) is deprecated and HubSpot switched API keys off on "
                "2022-11-30; create a private app and set access_token instead", self.name,
            )
        elif self.config.api_key:
            log.warning("destination %s: api_key is ignored because access_token is set", self.name)
        try:
            await self.catalog.load()
        except HubSpotError as err:
            # e.g. a wrong api_base: say what HubSpot answered (the core shows only the error type)
            log.warning("destination %s: loading the property catalog failed: %s", self.name, err.describe())
            raise

    def rate_limiter(self) -> RateLimiter:
        return self.limiter

    def status(self) -> Mapping[str, Any]:
        return {
            "contacts_api": str(self.config.contacts_api),
            "events_api": str(self.config.events_api),
            "rate_limit_paused_for": round(self.limiter.paused_for, 3),
            "properties_known": len(self.catalog),
            "daily_limit_reached": self.client.daily_limit_reached,
        }
