"""The ``webhook`` destination's config block."""

from __future__ import annotations

import attrs

from router.config import HttpUrl, PositiveInt, Secret


def _method(instance: object, attribute: attrs.Attribute, value: str) -> None:  # type: ignore[type-arg]
    if value.upper() not in ("POST", "PUT", "PATCH"):
        raise ValueError(f"expected POST, PUT or PATCH, got {value!r}")


def _body_template(instance: object, attribute: attrs.Attribute, value: str | None) -> None:  # type: ignore[type-arg]
    if value is not None:
        from plugins.webhook.destination import compile_body

        compile_body(value)


@attrs.define
class WebhookConfig:
    url: HttpUrl
    method: str = attrs.field(default="POST", validator=_method)
    #: header values are secrets: they may carry credentials (use ${VAR})
    headers: dict[str, Secret] = attrs.Factory(dict)
    #: Jinja2 template of the request body, rendered per event; default: the event as JSON
    body: str | None = attrs.field(default=None, validator=_body_template)
    #: 1 = one event per request; more = a JSON array of up to this many events per request
    batch_size: PositiveInt = PositiveInt(1)
