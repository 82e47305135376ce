"""Destination types registered by plugins, and the plugin manager that finds them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from router import hookspecs
from router.destination import Destination, DestinationContext

#: The factory a plugin registers: (typed config block, context) -> Destination
Factory = Callable[[Any, DestinationContext], Destination]


@attrs.frozen
class DestinationType:
    """One destination ``type`` a plugin contributes."""

    name: str
    #: the attrs class the destination's ``config:`` (or ``<type>:``) block loads into
    config_class: type
    factory: Factory
    #: allowed ``mode`` values; the first is the default
    modes: tuple[str, ...] = ("stream",)
    description: str = ""


class PluginManager:
    """A typed wrapper around pluggy's manager: built-ins and entry-point plugins, checked."""

    def __init__(self, extra_plugins: Iterable[object] = (), *, load_entrypoints: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        from router import filters

        self.pm.register(filters, name="router.filters")
        if load_entrypoints and not os.environ.get("ROUTER_NO_PLUGINS"):
            self.pm.load_setuptools_entrypoints(hookspecs.PROJECT)
        for plugin in extra_plugins:
            self.pm.register(plugin)
        # a misspelled hook implementation fails here instead of being silently ignored
        self.pm.check_pending()
        self._types: dict[str, tuple[DestinationType, str]] | None = None

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def destination_types(self) -> dict[str, tuple[DestinationType, str]]:
        """Every registered type, with the name of the distribution (package) that provides it."""
        if self._types is None:
            types: dict[str, tuple[DestinationType, str]] = {}
            for impl in self.pm.hook.router_destination_types.get_hookimpls():
                provider = self._provider(impl.plugin)
                for dtype in impl.function():
                    if dtype.name in types:
                        raise RuntimeError(
                            f"destination type {dtype.name!r} registered twice "
                            f"({types[dtype.name][1]} and {provider})"
                        )
                    types[dtype.name] = (dtype, provider)
            self._types = types
        return self._types

    def _provider(self, plugin: object) -> str:
        for p, dist in self.pm.list_plugin_distinfo():
            if p is plugin:
                return f"{dist.project_name} {dist.version}"
        return getattr(plugin, "__name__", repr(plugin))

