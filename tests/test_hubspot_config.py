"""The hubspot config block: defaults, every problem with its path, secrets hidden, the shipped configs."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest

from router.config import ConfigError, parse_config
from router.registry import PluginManager
from tests.conftest import ROUTER_BIN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(block: str) -> object:
    text = "destinations:\n  hs:\n    type: hubspot\n    hubspot:\n" + textwrap.indent(textwrap.dedent(block), " " * 6)
    return parse_config(text, PluginManager(), env={"TOKEN": "pat-na1-secret"}).destinations["hs"]


def problems(block: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        load(block)
    return exc.value.problems


def test_defaults_need_only_a_token_and_the_hub_id() -> None:
    dest = load("access_token: ${TOKEN}\nhub_id: 20546336\n")
    config = dest.config  # type: ignore[attr-defined]
    assert (config.hub_id, config.api_base, config.track_base) == (
        "20546336", "https://api.hubapi.com", "https://track.hubspot.com")
    assert (config.contacts_api, config.events_api) == ("v3", "legacy")
    assert (config.rate_limit, config.rate_window, config.daily_limit) == (100, 10.0, 250_000)
    assert (config.contacts_batch_size, config.events_batch_size, config.property_refresh) == (100, 500, 3600.0)
    assert dest.mode == "stream"  # type: ignore[attr-defined]
    assert "pat-na1-secret" not in repr(config)
    assert config.access_token.get() == "pat-na1-secret"


def test_every_problem_is_named_with_its_path() -> None:
    found = problems(
        """
        hub_id: portal-1
        contacts_api: v2
        events_api: v4
        rate_window: soon
        contacts_batch_size: 250
        events_batch_size: 0
        daily_reset: "25:00"
        api_base: ftp://x
        colour: blue
        """
    )
    where = "<config>: destinations.hs.hubspot"
    assert f"{where}.hub_id: expected the account's numeric portal id (digits only), got 'portal-1'" in found
    assert f"{where}.contacts_api: expected one of v3, v1, got 'v2'" in found
    assert f"{where}.events_api: expected one of legacy, v3, got 'v4'" in found
    assert f"{where}.rate_window: expected a duration such as 30s, 5m or 24h, got 'soon'" in found
    assert f"{where}.events_batch_size: must be greater than 0, got 0" in found
    assert f"{where}.daily_reset: expected a UTC time of day such as 00:00 or 05:30, got '25:00'" in found
    assert f"{where}.api_base: expected an http:// or https:// URL, got 'ftp://x'" in found
    assert f"{where}.colour: unknown key" in found


def test_a_credential_and_sane_batch_sizes_are_required() -> None:
    assert problems("hub_id: 1\n") == [
        (
            "<config>: destinations.hs.hubspot: access_token: required (a private app's access token, "
            "e.g. access_token: ${HUBSPOT_ACCESS_TOKEN})"
        )
    ]
    assert problems("hub_id: 1\naccess_token: x\ncontacts_batch_size: 250\n") == [
        "<config>: destinations.hs.hubspot: contacts_batch_size: HubSpot takes at most 100 per request, got 250"
    ]
    # the deprecated api_key alone is accepted (with a warning at start)
    assert load("hub_id: 1\napi_key: k\n").config.uses_api_key  # type: ignore[attr-defined]


def test_batch_mode_is_refused() -> None:
    text = "destinations:\n  hs:\n    type: hubspot\n    mode: batch\n    config: {access_token: x, hub_id: 1}\n"
    with pytest.raises(ConfigError) as exc:
        parse_config(text, PluginManager(), env={})
    assert exc.value.problems == ["<config>: destinations.hs.mode: hubspot destinations support mode stream only, got 'batch'"]


def test_the_shipped_hubspot_config_passes_router_check_with_two_variables() -> None:
    env = {**os.environ, "HUBSPOT_ACCESS_TOKEN": "pat-na1-real-looking", "HUBSPOT_HUB_ID": "20546336"}
    result = subprocess.run([ROUTER_BIN, "check", "-c", "configs/hubspot.yaml"], capture_output=True, text=True,
                            timeout=30, env=env, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    env.pop("HUBSPOT_ACCESS_TOKEN")
    result = subprocess.run([ROUTER_BIN, "check", "-c", "configs/hubspot.yaml"], capture_output=True, text=True,
                            timeout=30, env=env, cwd=REPO, check=False)
    assert result.returncode == 2
    assert "access_token: environment variable HUBSPOT_ACCESS_TOKEN is not set" in result.stderr
