"""Config: every problem at once with its YAML path, environment substitution, `router check`."""

from __future__ import annotations

import subprocess
import textwrap

from router.config import ConfigError, parse_config
from router.registry import PluginManager
from tests.conftest import ROUTER_BIN

BAD = """
server:
  listen: nowhere
  max_body_bytes: lots
  colour: blue
api_keys:
  - id: web
    client_secret: js.1
  - client_secret: js.2
destinations:
  hook:
    type: webhook
    mode: batch
    only_tokens: [mobile]
    config:
      url: ftp://x
      extra: 1
    data_layout:
      table_name_template: "{{ event_type "
  other:
    type: nosuch
  env:
    type: webhook
    webhook:
      url: ${HOOK_URL}
    delivery:
      timeout: soon
"""


def test_router_check_reports_every_problem_with_its_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = subprocess.run([ROUTER_BIN, "check", "-c", str(path)], capture_output=True, text=True, timeout=30,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = set(result.stderr.splitlines())
    expected = [
        "server.listen: expected HOST:PORT, got 'nowhere'",
        "server.max_body_bytes: expected a whole number greater than 0, got 'lots'",
        "server.colour: unknown key",
        "api_keys[1].id: required",
        "destinations.hook.mode: webhook destinations support mode stream only, got 'batch'",
        "destinations.hook.only_tokens[0]: no api_keys entry has this id or secret",
        "destinations.hook.config.url: expected an http:// or https:// URL, got 'ftp://x'",
        "destinations.hook.config.extra: unknown key",
        "destinations.env.webhook.url: environment variable HOOK_URL is not set",
        "destinations.env.delivery.timeout: expected a duration such as 30s, 5m or 24h, got 'soon'",
    ]
    for line in expected:
        assert f"{path}: {line}" in lines
    assert any("table_name_template: template syntax error" in line for line in lines)
    assert any("destinations.other.type: unknown destination type 'nosuch' (installed: " in line
               and "webhook" in line for line in lines)
    assert result.stderr.strip().endswith(f"problem(s) in {path}")


def test_environment_values_and_defaults_fill_the_config():
    text = textwrap.dedent(
        """
        server: {listen: "${HOST:-127.0.0.1}:${PORT}"}
        api_keys: [{id: web, server_secret: "${SECRET}"}]
        destinations:
          hook:
            type: webhook
            webhook: {url: "https://${HOOK_HOST}/in", headers: {X-Key: "${HOOK_KEY:-none}"}}
        """
    )
    config = parse_config(text, PluginManager(), env={"PORT": "9001", "SECRET": "s3", "HOOK_HOST": "h.example"})
    assert config.server.listen == "127.0.0.1:9001"
    assert config.api_keys[0].server_secret.get() == "s3"
    assert "s3" not in repr(config)  # secrets hide from repr
    hook = config.destinations["hook"]
    assert hook.config.url == "https://h.example/in"
    assert hook.config.headers["X-Key"].get() == "none"
    assert hook.mode == "stream"


def test_both_config_and_type_blocks_is_an_error():
    text = "destinations: {h: {type: webhook, config: {url: 'http://a'}, webhook: {url: 'http://b'}}}"
    try:
        parse_config(text, PluginManager(), env={})
    except ConfigError as exc:
        assert exc.problems == ["<config>: destinations.h: give the webhook settings under config: or under webhook:, not both"]
    else:
        raise AssertionError("accepted a destination with two settings blocks")


def test_the_example_configs_pass_router_check():
    for name in ("configs/router.yaml",):
        result = subprocess.run([ROUTER_BIN, "check", "-c", name], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout
