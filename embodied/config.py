"""Typed configs: dataclasses filled from YAML recipes and dotted command-line overrides.

    cfg = load_config(TrainConfig, "configs/ppo_pickcube_state.yaml", ["algo.lr=3e-4", "env.num_envs=256"])

Every key is checked against the dataclass fields before anything runs: an unknown key
names the closest valid ones, a value of the wrong type names the expected type. Values in
overrides are parsed as YAML (`3e-4`, `true`, `[front, wrist]`, `null`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sims.core import closest

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class ConfigError(ValueError):
    """A config key or value that does not fit the config classes."""


def load_config[T: DataclassInstance](cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> T:
    """`cls` filled from the YAML file at `path` (if any), then from `key.sub=value` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist.")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file {str(path)!r} must hold a mapping at the top level.")
        data = loaded
    for override in overrides:
        apply_override(data, override)
    return from_dict(cls, data)


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in a nested dict (in place)."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"Override {override!r} must look like key.sub=value.")
    value = yaml.safe_load(raw) if raw.strip() else ""
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Override {override!r}: {part!r} is a value, not a section.")
        node = child
    node[parts[-1]] = value


def from_dict[T: DataclassInstance](cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from a nested dict, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping of {cls.__name__} fields; got {data!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise ConfigError(
                f"Unknown config key {path!r}.{closest(key, list(fields))} "
                f"Valid keys{' of ' + where if where else ''}: {', '.join(fields)}."
            )
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


def _variant(hint: Any, value: Any, path: str) -> Any:
    """For a config family (a class with `variants()` and `variant_key`, like AlgoConfig by
    `name`), the member class that `value[variant_key]` names; otherwise `hint` itself."""
    variants = getattr(hint, "variants", None)
    if variants is None or not isinstance(value, dict):
        return hint
    choices = variants()
    name = value.get(hint.variant_key, hint.default_variant)
    if name not in choices:
        raise ConfigError(
            f"{path}.{hint.variant_key}: unknown {name!r}.{closest(str(name), list(choices))} Valid: {', '.join(choices)}."
        )
    return choices[name]


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(_variant(hint, value, path), value, path)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, path)
            except ConfigError:
                pass
        raise ConfigError(f"{path}: {value!r} is not a {_name(hint)}.")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {', '.join(map(repr, args))}.{closest(str(value), [str(a) for a in args])}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list ({_name(hint)}); got {value!r}.")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} items ({_name(hint)}); got {value!r}.")
            return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping; got {value!r}.")
        return {k: _convert(v, args[1], f"{path}.{k}") for k, v in value.items()} if args else dict(value)
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a float; got {value!r}.")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an int; got {value!r}.")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false; got {value!r}.")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string; got {value!r}.")
        return value
    if isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{path}: cannot read {value!r} as {_name(hint)}.")


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def plain(value: Any) -> Any:
    """A config value as YAML holds it: dataclasses as dicts, tuples as lists, nested."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (tuples as lists) of a config dataclass, for YAML."""
    return plain(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML; `load_config(type(cfg), path)` reads it back."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
