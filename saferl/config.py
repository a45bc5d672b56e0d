"""Configuration files and overrides: nested frozen dataclasses ⇄ plain dicts (JSON / TOML).

Every algorithm has one frozen dataclass configuration (``PPOLagConfig``, …). A run directory
stores the resolved configuration as ``config.json``; users may write a TOML or JSON file with
any subset of the fields (nested tables for nested parts, the shared settings under ``[run]``
or at top level) and override fields on the command line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or dict has an unknown field or a value of the wrong type."""


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (nested) configuration dataclass."""
    result: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        if not f.init:
            continue
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        result[f.name] = value
    return result


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _coerce(value, args[0], where)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of fields; got {value!r}.")
        return config_from_dict(annotation, value, prefix=f"{where}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: unexpected value {value!r}.")
    if origin is tuple:
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where} must be a list; got {value!r}.")
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table; got {value!r}.")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}; got {value!r}.")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number; got {value!r}.")
        return float(value)
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}.")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}.")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string; got {value!r}.")
        return value
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build ``cls`` from a (possibly partial) dict; missing fields keep their defaults.

    Raises:
        ConfigError: Unknown field (with the valid names) or a value of the wrong type.
        ValueError: A value out of its allowed range (from the dataclass' own validation).
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(_unknown_field_message(cls, prefix, unknown[0], sorted(fields)))
    kwargs = {name: _coerce(_over_default(fields[name], value), hints[name], f"{prefix}{name}")
              for name, value in data.items()}
    return cls(**kwargs)


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """A partial table for a nested configuration, laid over that field's own default.

    A section whose default is not its class's (``CVPOConfig.run`` is
    ``OffPolicyConfig(tau=0.05)``) keeps the fields the table leaves out at the section's
    default, not at the class's.
    """
    if not isinstance(value, dict) or f.default_factory is dataclasses.MISSING:
        return value
    default = f.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    return merge_tables(config_to_dict(default), value)


def merge_tables(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top``'s fields over ``base``'s, nested tables merged field by field (``env_kwargs`` is
    a value, the environment's keyword arguments, and is replaced whole)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "env_kwargs":
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def _unknown_field_message(cls: type, prefix: str, name: str, fields: list[str]) -> str:
    """One sentence for an unknown field: the nearest valid name, then every valid name.

    At the top level of a configuration with a ``run`` section, the shared settings are valid
    too (:func:`merge_shared` moves them into ``run``), so they are offered and listed.
    """
    shared = sorted(_run_fields(cls)) if not prefix else []
    close = difflib.get_close_matches(name, fields + shared, n=1)
    hint = f" Did you mean {prefix}{close[0]}?" if close else ""
    listed = f"sections {', '.join(fields)}" if shared else ", ".join(fields)
    if shared:
        listed += f"; shared settings {', '.join(shared)}"
    return f"Unknown configuration field {prefix}{name}.{hint} Valid here: {listed}."


def _run_fields(cls: type) -> set[str]:
    """Field names of ``cls``'s ``run`` section (empty when it has none)."""
    if "run" not in {f.name for f in dataclasses.fields(cls)}:
        return set()
    run_cls = typing.get_type_hints(cls, include_extras=True)["run"]
    if typing.get_origin(run_cls) is typing.Annotated:
        run_cls = typing.get_args(run_cls)[0]
    return {f.name for f in dataclasses.fields(run_cls) if f.init}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a ``.toml`` or ``.json`` configuration file into a dict.

    Raises:
        ConfigError: The file is missing, has another suffix, is not valid TOML/JSON (the
            message names the file and the parser's line and column), or is not a table.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Configuration file {str(path)!r} does not exist.")
    try:
        if path.suffix == ".toml":
            with path.open("rb") as handle:
                data = tomllib.load(handle)
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ConfigError(f"Configuration file {str(path)!r} must end in .toml or .json.")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"Configuration file {str(path)!r} is not valid "
                          f"{path.suffix[1:].upper()}: {error}.") from error
    if not isinstance(data, dict):
        raise ConfigError(f"Configuration file {str(path)!r} must hold a table of fields "
                          f"(a JSON object); got a {type(data).__name__}.")
    return data


def merge_shared(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """Move top-level keys that belong to the shared ``run`` part into ``data["run"]``.

    Lets a config file say ``env = "..."`` instead of ``[run] env = "..."``.
    """
    fields = {f.name for f in dataclasses.fields(cls)}
    run_fields = _run_fields(cls)
    if not run_fields:
        return data
    data = dict(data)
    run = dict(data.pop("run", {}))
    for key in list(data):
        if key in run_fields and key not in fields:
            run[key] = data.pop(key)
    if run:
        data["run"] = run
    return data
