"""The YAML config: attrs classes, one cattrs converter, ``${VAR}`` substitution, errors with paths.

``load_config(path, plugins)`` returns a :class:`RouterConfig` or raises :class:`ConfigError`
carrying every problem at once, one line each: ``<file>: <yaml.path>: <problem>``.
Validation is separate from starting: ``router check`` only calls ``load_config``.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, get_origin

import attrs
import cattrs
import yaml
from cattrs.cols import list_structure_factory

if TYPE_CHECKING:
    from router.registry import PluginManager


class ConfigError(Exception):
    """Every problem found in a config, one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Secret:
    """A string whose repr and str hide it, so it cannot leak into logs, errors or status output."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


class Duration(float):
    """Seconds; the YAML may say ``30``, ``1.5``, ``250ms``, ``10s``, ``5m``, ``24h`` or ``7d``."""

    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    _RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")

    @classmethod
    def parse(cls, value: Any) -> Duration:
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 30s, 5m or 24h")
        if isinstance(value, int | float):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"expected a duration such as 30s, 5m or 24h, got {value!r}")
            return cls(value)
        match = cls._RE.match(str(value))
        if not match:
            raise ValueError(f"expected a duration such as 30s, 5m or 24h, got {value!r}")
        return cls(float(match.group(1)) * cls._UNITS[match.group(2) or "s"])


class PositiveInt(int):
    """A whole number greater than 0."""

    @classmethod
    def parse(cls, value: Any) -> PositiveInt:
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
            raise ValueError(f"expected a whole number greater than 0, got {value!r}")
        if int(value) <= 0:
            raise ValueError(f"must be greater than 0, got {value}")
        return cls(int(value))


class Count(int):
    """A whole number, 0 or more."""

    @classmethod
    def parse(cls, value: Any) -> Count:
        if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
            raise ValueError(f"expected a whole number (0 or more), got {value!r}")
        return cls(int(value))


class IpNetwork(str):
    """An IP address or network (``10.0.0.0/8``)."""

    @classmethod
    def parse(cls, value: Any) -> IpNetwork:
        try:
            ipaddress.ip_network(str(value), strict=False)
        except ValueError:
            raise ValueError(f"expected an IP address or network such as 10.0.0.0/8, got {value!r}") from None
        if not isinstance(value, str):
            raise ValueError(f"expected an IP address or network as a string, got {value!r}")
        return cls(value)


class HostPort(str):
    """``HOST:PORT``; port 0 picks a free port."""

    @classmethod
    def parse(cls, value: Any) -> HostPort:
        host, _, port = str(value).rpartition(":")
        if not isinstance(value, str) or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {value!r}")
        return cls(value)


class HttpUrl(str):
    """An absolute ``http://`` or ``https://`` URL."""

    @classmethod
    def parse(cls, value: Any) -> HttpUrl:
        from urllib.parse import urlsplit

        parts = urlsplit(str(value)) if isinstance(value, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return cls(value)


@attrs.define
class ServerConfig:
    listen: HostPort = HostPort("127.0.0.1:8001")
    max_body_bytes: PositiveInt = PositiveInt(1_000_000)
    #: bearer token for the admin endpoints (/api/v1/destinations); empty = admin endpoints off
    admin_token: Secret | None = None
    #: addresses of reverse proxies whose X-Forwarded-For / X-Real-IP headers are believed
    trusted_proxies: list[IpNetwork] = attrs.Factory(list)
    #: an event whose id was accepted within this window is acknowledged but not enqueued again
    dedup_window: Duration = Duration(3600)
    #: how long in-flight sends may take to finish after SIGTERM
    shutdown_grace: Duration = Duration(10)


@attrs.define
class StorageConfig:
    #: the SQLite queue lives in this directory
    path: str = "./data"
    #: how long the group-commit writer waits for company before committing
    group_commit_window: Duration = Duration(0.0)
    #: ingest answers 503 above this many undelivered records (0 = no limit)
    max_depth: Count = Count(0)
    #: the queue file may grow to this many bytes (0 = as far as the disk allows); past it ingest
    #: answers 503 until delivered records free space
    max_bytes: Count = Count(0)


@attrs.define
class ApiKey:
    id: str
    client_secret: Secret | None = None
    server_secret: Secret | None = None
    origins: list[str] = attrs.Factory(list)


@attrs.define
class DataLayout:
    #: Jinja2, evaluated per event; an empty / null / false result skips the event
    table_name_template: str | None = None


@attrs.define
class DeliveryConfig:
    """How the core delivers to one destination; every destination may tune it."""

    #: the most events leased and sent together (a sender may cap it lower)
    batch_size: PositiveInt = PositiveInt(100)
    #: how long to wait for a batch to fill before sending what there is
    linger: Duration = Duration(0.05)
    #: batches in flight at once
    concurrency: PositiveInt = PositiveInt(2)
    #: per attempt
    timeout: Duration = Duration(30)
    initial_backoff: Duration = Duration(1)
    max_backoff: Duration = Duration(300)
    #: an event still failing this long after it was received goes to dead letters
    max_retry_age: Duration = Duration(86400)
    #: while paused (bad credentials), try one batch again this often
    pause_probe: Duration = Duration(60)
    #: a leased record not acked within this long is handed out again
    lease_timeout: Duration = Duration(300)


@attrs.define
class DestinationConfig:
    name: str
    type: str
    mode: str
    #: token ids or values; empty = every token
    only_tokens: list[str]
    #: the type's own block, an instance of the config class its plugin registered
    config: Any
    data_layout: DataLayout
    delivery: DeliveryConfig


@attrs.define
class RouterConfig:
    server: ServerConfig = attrs.Factory(ServerConfig)
    storage: StorageConfig = attrs.Factory(StorageConfig)
    api_keys: list[ApiKey] = attrs.Factory(list)
    destinations: dict[str, DestinationConfig] = attrs.Factory(dict)
    #: where the config came from (for messages)
    source: str = "<config>"


@attrs.define
class _TopLevel:
    server: ServerConfig = attrs.Factory(ServerConfig)
    storage: StorageConfig = attrs.Factory(StorageConfig)
    api_keys: list[ApiKey] = attrs.Factory(list)
    destinations: dict[str, dict[str, Any]] = attrs.Factory(dict)


@attrs.define
class _DestinationCommon:
    type: str
    mode: str | None = None
    only_tokens: list[str] = attrs.Factory(list)
    data_layout: DataLayout = attrs.Factory(DataLayout)
    delivery: DeliveryConfig = attrs.Factory(DeliveryConfig)


def make_converter() -> cattrs.Converter:
    """The one converter: unknown keys are errors; secrets and durations have their own types."""
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)

    def structure_secret(value: Any, _: type) -> Secret:
        if not isinstance(value, str | int):
            raise ValueError("expected a string")
        return Secret(str(value))

    def structure_str(value: Any, _: type) -> str:
        if isinstance(value, dict | list) or value is None:
            raise ValueError("expected a string")
        return str(value)

    def structure_int(value: Any, _: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError("expected a whole number")
        return int(value)

    conv.register_structure_hook(Secret, structure_secret)
    # these types validate themselves: a ValueError from ``parse`` becomes "path: message"
    for parsed in (Duration, PositiveInt, Count, HostPort, HttpUrl, IpNetwork):
        conv.register_structure_hook(parsed, lambda value, t: t.parse(value))

    def strict_list(type_: Any) -> Any:
        """Lists stay lists: a lone string must not become a list of its characters."""
        structure_items = list_structure_factory(type_, conv)

        def structure(value: Any, t: Any) -> Any:
            if not isinstance(value, list):
                raise ValueError(f"expected a list, got {type(value).__name__}")
            return structure_items(value, t)

        return structure

    conv.register_structure_hook_factory(lambda t: get_origin(t) is list, strict_list)
    conv.register_structure_hook(str, structure_str)
    conv.register_structure_hook(int, structure_int)
    conv.register_unstructure_hook(Secret, lambda s: "***")
    return conv


converter = make_converter()

_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def substitute_env(node: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of a YAML tree."""
    if isinstance(node, dict):
        return {k: substitute_env(v, env, _join(path, str(k)), problems) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute_env(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _ENV_RE.sub(replace, node)


def _join(path: str, key: str) -> str:
    if not key:
        return path
    return f"{path}.{key}" if path else key


_PATH_PART = re.compile(r"\['([^']*)'\]|\[(\d+)\]")


def _tidy_path(path: str) -> str:
    """``$.destinations['x'].hub_id`` -> ``destinations.x.hub_id``."""
    path = _PATH_PART.sub(lambda m: f".{m.group(1)}" if m.group(1) is not None else f"[{m.group(2)}]", path)
    return path.lstrip("$").lstrip(".")


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, KeyError):
        return "required"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return "unknown key"
    if isinstance(exc, ValueError | TypeError) and str(exc) and type_ not in (int, float):
        return str(exc)
    name = getattr(type_, "__name__", None) or str(type_)
    return {"int": "expected a whole number", "float": "expected a number", "bool": "expected true or false"}.get(
        name, f"invalid value, expected {name}"
    )


def _problems_from(exc: Exception, prefix: str) -> list[str]:
    """One ``path: problem`` line per leaf of a cattrs exception group."""
    out = []
    for line in cattrs.transform_error(exc, path="$", format_exception=_format_exception):
        message, _, where = line.rpartition(" @ ")
        path = _join(prefix, _tidy_path(where))
        if message.startswith("unknown key"):
            out.extend(_unknown_keys(exc, prefix) or [f"{path}: unknown key"])
            continue
        out.append(f"{path}: {message}")
    return list(dict.fromkeys(out))


def _unknown_keys(exc: BaseException, prefix: str) -> list[str]:
    """Name each unknown key with its full path (cattrs reports them on the parent)."""
    found: list[str] = []

    def walk(e: BaseException, path: str) -> None:
        if isinstance(e, cattrs.ForbiddenExtraKeysError):
            found.extend(f"{_join(path, str(k))}: unknown key" for k in sorted(e.extra_fields, key=str))
        for sub in getattr(e, "exceptions", ()):
            note = next((n for n in getattr(sub, "__notes__", ()) if hasattr(n, "name")), None)
            sub_path = path
            if note is not None and hasattr(note, "name"):
                sub_path = _join(path, str(note.name)) if not isinstance(note.name, int) else f"{path}[{note.name}]"
            walk(sub, sub_path)

    walk(exc, prefix)
    return found


def load_config(path: str, plugins: PluginManager, env: Mapping[str, str] | None = None) -> RouterConfig:
    """Read, substitute, validate and structure a config file. Raises ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    return parse_config(text, plugins, env=env, source=path)


def parse_config(
    text: str, plugins: PluginManager, *, env: Mapping[str, str] | None = None, source: str = "<config>"
) -> RouterConfig:
    try:
        return _parse_config(text, plugins, env=env, source=source)
    except RecursionError:
        raise ConfigError([f"{source}: the YAML nests too deeply or an alias refers to itself"]) from None


def _parse_config(
    text: str, plugins: PluginManager, *, env: Mapping[str, str] | None, source: str
) -> RouterConfig:
    problems: list[str] = []
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{source}: {where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    raw = substitute_env(raw, os.environ if env is None else env, "", problems)

    try:
        top = converter.structure(raw, _TopLevel)
    except Exception as exc:  # cattrs' exception group
        problems.extend(_problems_from(exc, ""))
        top = None

    destinations: dict[str, DestinationConfig] = {}
    raw_dests = raw.get("destinations") or {}
    if isinstance(raw_dests, dict):
        key_ids = _known_tokens(raw.get("api_keys"))
        for name, body in raw_dests.items():
            dest = _load_destination(str(name), body, plugins, key_ids, problems)
            if dest is not None:
                destinations[str(name)] = dest
    if top is not None:
        problems.extend(_check_api_keys(top.api_keys))
    if problems:
        # a value left empty by a missing variable would only repeat that problem
        unset = {p.partition(": environment variable")[0] for p in problems if ": environment variable " in p}
        problems = [p for p in problems if ": environment variable " in p or p.partition(":")[0] not in unset]
        raise ConfigError([f"{source}: {p}" for p in problems])
    assert top is not None
    return RouterConfig(
        server=top.server, storage=top.storage, api_keys=top.api_keys, destinations=destinations, source=source
    )


def _known_tokens(raw_keys: Any) -> set[str] | None:
    """Ids and secrets of the api keys as written (so a broken key elsewhere hides nothing here)."""
    if not isinstance(raw_keys, list):
        return None if raw_keys else set()
    return {
        str(key[field])
        for key in raw_keys
        if isinstance(key, dict)
        for field in ("id", "client_secret", "server_secret")
        if key.get(field) is not None
    }


def _check_api_keys(keys: list[ApiKey]) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key.id in seen:
            problems.append(f"api_keys[{i}].id: {key.id!r} is already used by api_keys[{seen[key.id]}]")
        seen[key.id] = i
        if not key.client_secret and not key.server_secret:
            problems.append(f"api_keys[{i}]: needs a client_secret or a server_secret")
    return problems


def _load_destination(
    name: str, body: Any, plugins: PluginManager, known_tokens: set[str] | None, problems: list[str]
) -> DestinationConfig | None:
    path = f"destinations.{name}"
    if not isinstance(body, dict):
        problems.append(f"{path}: expected a mapping")
        return None
    types = plugins.destination_types()
    dtype_name = body.get("type")
    if dtype_name is None:
        problems.append(f"{path}.type: required")
        return None
    if not isinstance(dtype_name, str):
        problems.append(f"{path}.type: expected the name of a destination type, got {dtype_name!r}")
        return None
    if dtype_name not in types:
        known = ", ".join(sorted(types)) or "none installed"
        problems.append(f"{path}.type: unknown destination type {dtype_name!r} (installed: {known})")
        return None
    dtype = types[dtype_name][0]

    body = dict(body)
    block_keys = [k for k in ("config", dtype_name) if k in body]
    if len(block_keys) > 1:
        problems.append(f"{path}: give the {dtype_name} settings under config: or under {dtype_name}:, not both")
        return None
    block_key = block_keys[0] if block_keys else "config"
    block = body.pop(block_key, None)
    if block is None:
        block = {}
    ok = True
    try:
        common = converter.structure(body, _DestinationCommon)
    except Exception as exc:
        problems.extend(_problems_from(exc, path))
        common, ok = None, False
    try:
        typed = converter.structure(block, dtype.config_class)
    except Exception as exc:
        problems.extend(_problems_from(exc, f"{path}.{block_key}"))
        typed, ok = None, False
    if common is None:
        return None

    mode = common.mode or dtype.modes[0]
    if mode not in dtype.modes:
        allowed = ", ".join(dtype.modes)
        problems.append(f"{path}.mode: {dtype_name} destinations support mode {allowed} only, got {mode!r}")
    if known_tokens is not None:
        for i, token in enumerate(common.only_tokens):
            if token not in known_tokens:
                problems.append(f"{path}.only_tokens[{i}]: no api_keys entry has this id or secret")
    if common.delivery.lease_timeout <= common.delivery.timeout:
        problems.append(
            f"{path}.delivery.lease_timeout: must be longer than delivery.timeout "
            f"({common.delivery.lease_timeout:g}s <= {common.delivery.timeout:g}s)"
        )
    template = common.data_layout.table_name_template
    if template is not None:
        from router.filters import compile_template

        try:
            compile_template(template)
        except Exception as exc:
            problems.append(f"{path}.data_layout.table_name_template: {exc}")
    if not ok:
        return None
    return DestinationConfig(
        name=name,
        type=dtype_name,
        mode=mode,
        only_tokens=common.only_tokens,
        config=typed,
        data_layout=common.data_layout,
        delivery=common.delivery,
    )
