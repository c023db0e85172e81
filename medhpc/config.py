"""Typed configs: frozen dataclasses loaded from YAML or TOML, validated on load, hashed.

Every job of a sweep is named by the hash of its config, so a finished job is recognised on
rerun. Loading is strict because a typo in a cluster config costs a queue slot: an unknown
key, a wrong type or an impossible value raises :class:`ConfigError` naming the key and file.

A config class is a ``@dataclass(frozen=True)`` whose fields are plain types (bool, int,
float, str, Literal, Optional, tuple, dict with str keys) or nested config classes. It may define
``_check(self)`` to reject impossible combinations (raise :func:`bad`). Fields declared with
``field(metadata={"hash": False})`` (output folders, worker counts) do not change the hash;
fields declared with :func:`hashed_when_set` change it only when set (settings added later).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from medhpc.errors import MedhpcError

T = TypeVar("T")


class ConfigError(MedhpcError):
    """A config file or dict that cannot be loaded: the message names the key and the file."""


class _Bad(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key, self.message = key, message


def bad(key: str, message: str) -> _Bad:
    """An error about ``key`` (relative to the config class raising it), for ``_check``."""
    return _Bad(key, message)


def read_mapping(path: Path | str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a dict, then apply
    dotted-key ``overrides`` (``{"optim.lr": 1e-3}``, what ``--set`` gives)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file does not exist: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data: Any = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text)
        else:
            raise ConfigError(f"{path}: config files must end in .yaml, .yml, .toml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return data


def load(cls: type[T], path: Path | str, overrides: dict[str, Any] | None = None) -> T:
    """Load config class ``cls`` from a file, with optional dotted-key ``overrides``."""
    return from_dict(cls, read_mapping(path, overrides), source=str(path))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``set_dotted(d, "model.vib.beta", 1e-3)`` sets ``d["model"]["vib"]["beta"]``."""
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def from_dict(cls: type[T], data: Any, source: str = "<dict>", prefix: str = "") -> T:
    """Build and validate ``cls`` from a mapping; errors name ``prefix.key`` and ``source``."""
    try:
        return _build(cls, data, prefix)
    except _Bad as exc:
        raise ConfigError(f"{source}: {exc.key}: {exc.message}") from None


def _build(cls: type[T], data: Any, prefix: str) -> T:
    where = prefix.rstrip(".") or "<top level>"
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise _Bad(where, f"expected a mapping of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else f"; known keys: {', '.join(fields)}"
            raise _Bad(f"{prefix}{key}", f"unknown key{hint}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], f"{prefix}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _Bad(f"{prefix}{name}", "missing (required)")
    try:
        obj = cls(**kwargs)
    except _Bad as exc:  # raised by a __post_init__: name the key from the top
        raise _Bad(f"{prefix}{exc.key}", exc.message) from None
    check = getattr(obj, "_check", None)
    if check is not None:
        try:
            check()
        except _Bad as exc:
            raise _Bad(f"{prefix}{exc.key}", exc.message) from None
    return obj


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")  # type: ignore[arg-type]
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:  # Optional[X]: X's own error, with its own key
            return _convert(options[0], value, key)
        errors = []
        for arg in options:
            try:
                return _convert(arg, value, key)
            except _Bad as exc:
                errors.append(exc.message)
        raise _Bad(key, " or ".join(errors))
    if origin is typing.Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise _Bad(key, f"must be one of {', '.join(repr(a) for a in args)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _Bad(key, f"expected a list, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Bad(key, f"expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Bad(key, f"expected a mapping, got {_show(value)}")
        kt, vt = args
        return {_convert(kt, k, f"{key}.{k}"): _convert(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad(key, f"expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad(key, f"expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _Bad(key, f"expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad(key, f"expected a string, got {_show(value)}")
    if tp is typing.Any:
        return value
    raise TypeError(f"config field {key}: unsupported type {tp!r}")  # a bug in the config class


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that :func:`from_dict` reads back to an equal config."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _hashed(f: dataclasses.Field[Any], value: Any) -> bool:
    rule = f.metadata.get("hash", True)
    return value is not None if rule == WHEN_SET else bool(rule)


def _hashable(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg):
        return {
            f.name: _hashable(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if _hashed(f, getattr(cfg, f.name))
        }
    if isinstance(cfg, (list, tuple)):
        return [_hashable(v) for v in cfg]
    return cfg


def config_hash(cfg: Any, length: int = 12) -> str:
    """Hex digest naming a config's outputs: fields marked ``hash=False`` are left out."""
    blob = json.dumps(_hashable(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def dump_yaml(cfg: Any, path: Path | str) -> None:
    """Write the resolved config (every default filled in) next to a job's outputs."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


WHEN_SET = "when_set"


def hashed_when_set(default: Any = None) -> Any:
    """A field that enters :func:`config_hash` only while it is not None.

    For settings added after outputs exist (a new attack's parameter, a new head's section):
    every config that leaves them unset keeps the hash, and so the outputs, it had before.
    """
    return dataclasses.field(default=default, metadata={"hash": WHEN_SET})


def nohash(default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field left out of :func:`config_hash` (where outputs go, how many workers)."""
    return dataclasses.field(default=default, metadata={"hash": False}, **kw)
