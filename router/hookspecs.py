"""Every hook the router calls. Plugins implement them with ``@router.hookimpl``.

Hooks are for registration and pure decisions. Sending is async code on the Destination object a
registered factory builds (see ``router/destination.py``). The contract of each hook, with an
example, is in ``docs/plugin_hooks.md``; a test fails when a hook here is not described there.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from router.config import DestinationConfig
    from router.registry import DestinationType

PROJECT = "router"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def router_destination_types() -> list[DestinationType]:
    """Register destination types.

    Called once when the plugin manager is built, before the config is loaded.

    :returns: a list of :class:`router.registry.DestinationType`, each naming a ``type`` usable in
        the YAML config, the attrs class its ``config:`` block loads into, and the factory that
        builds a :class:`router.destination.Destination` from it.

    Every implementation's list is used; two plugins registering the same type name is an error.
    """


@hookspec(firstresult=True)
def router_filter_event(destination: DestinationConfig, event: dict[str, Any]) -> str | None:
    """Decide whether an event goes to a destination, before it is sent.

    Called by the destination's dispatcher for every leased event, in plugin order; the core's own
    ``data_layout.table_name_template`` filter runs first.

    :param destination: the destination's loaded config (``name``, ``type``, ``config``,
        ``data_layout``, ...). Check ``destination.type`` and return None for other types.
    :param event: the enriched event. Do not modify it.
    :returns: a short skip reason (counted in metrics, e.g. ``"no email"``), or None to let the
        event through.

    First result applies: the first non-None reason skips the event.
    """


@hookspec
def router_add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add sub-commands to the ``router`` command line.

    Called once when the command line is built.

    :param subparsers: the ``argparse`` sub-parser collection of ``router``. Add a parser and set
        its ``func`` default to a callable taking the parsed ``argparse.Namespace`` and returning
        an exit code.
    :returns: nothing.
    """
