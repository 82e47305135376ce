"""The core's own filter: ``data_layout.table_name_template``, in a sandboxed Jinja2 with strict undefined.

Registered as a built-in plugin so it runs through the same ``router_filter_event`` hook as every
plugin's filter, first.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2
import jinja2.sandbox

from router.config import DestinationConfig
from router.hookspecs import hookimpl

_env = jinja2.sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)

#: what a template may render to in order to skip an event
SKIP_RESULTS = frozenset({"", "null", "false", "none"})


class TemplateRejected(Exception):
    """The template could not be evaluated for this event (e.g. an undefined field)."""


@functools.lru_cache(maxsize=256)
def compile_template(source: str) -> jinja2.Template:
    """Compile once per distinct template; a syntax error raises with a readable message."""
    try:
        return _env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ValueError(f"template syntax error on line {exc.lineno}: {exc.message}") from None


def table_name(template: str, event: dict[str, Any]) -> str | None:
    """The table name for an event, or None when the template says skip."""
    try:
        result = compile_template(template).render(event)
    except jinja2.UndefinedError as exc:
        raise TemplateRejected(f"table_name_template: {exc.message}") from None
    except Exception as exc:  # a sandbox violation or a type error inside the template
        raise TemplateRejected(f"table_name_template: {type(exc).__name__}: {exc}") from None
    result = result.strip()
    return None if result.lower() in SKIP_RESULTS else result


@hookimpl(tryfirst=True)
def router_filter_event(destination: DestinationConfig, event: dict[str, Any]) -> str | None:
    template = destination.data_layout.table_name_template
    if template is None:
        return None
    if table_name(template, event) is None:
        return "table_name_template"
    return None
