"""The built-in ``webhook`` destination: each event (or a JSON array of them) POSTed to a URL."""

from __future__ import annotations

from router import hookimpl
from router.registry import DestinationType

from plugins.webhook.config import WebhookConfig
from plugins.webhook.destination import WebhookDestination


@hookimpl
def router_destination_types() -> list[DestinationType]:
    return [
        DestinationType(
            name="webhook",
            config_class=WebhookConfig,
            factory=WebhookDestination,
            description="POST events as JSON to a URL",
        )
    ]
