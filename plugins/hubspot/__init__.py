"""The ``hubspot`` destination plugin: registers the type, its email filter and the ``demo`` and
``hubspot-emulator`` commands."""

from __future__ import annotations

import argparse
from typing import Any

from plugins.hubspot.config import HubSpotConfig
from plugins.hubspot.destination import HubSpotDestination
from plugins.hubspot.filter import skip_reason
from router import hookimpl
from router.config import DestinationConfig
from router.registry import DestinationType


@hookimpl
def router_destination_types() -> list[DestinationType]:
    return [
        DestinationType(
            name="hubspot",
            config_class=HubSpotConfig,
            factory=HubSpotDestination,
            modes=("stream",),
            description="identifies as HubSpot contacts, other events as HubSpot events",
        )
    ]


@hookimpl
def router_filter_event(destination: DestinationConfig, event: dict[str, Any]) -> str | None:
    if destination.type != "hubspot":
        return None
    return skip_reason(event)


@hookimpl
def router_add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from plugins.hubspot import demo, emulator

    emulator.add_cli(subparsers)
    demo.add_cli(subparsers)
