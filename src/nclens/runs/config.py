"""The config machinery for every experiment: frozen dataclass trees from YAML, ``--set key=value``, clear errors.

* :func:`build_config` builds a (nested) frozen dataclass from a mapping: unknown keys are errors that
  list the valid keys, values are coerced to the field types (``"5"`` → 5 for an int, ``[1, 2]`` →
  (1, 2) for a tuple, ``null`` for optional fields), floats must be finite, and the dataclasses'
  own ``__post_init__`` checks ranges;
* :func:`override_config` applies dotted ``section.key=value`` overrides (values parsed as YAML);
* :func:`read_yaml_mapping` / :func:`parse_yaml` read YAML with duplicate keys refused and an empty
  file an error; :func:`load_yaml_config` = read + build + override;
* :func:`config_as_dict` / :func:`config_to_yaml` give back plain data (saved with every run);
* :func:`check_choice`, :func:`check_positive`, :func:`check_nonempty` — the validators configs use.

Example:
    >>> from dataclasses import field, make_dataclass
    >>> Train = make_dataclass("Train", [("epochs", int, 10), ("lr", float, 0.1)], frozen=True)
    >>> Config = make_dataclass("Config", [("name", str, "demo"), ("train", Train, field(default_factory=Train))],
    ...                         frozen=True)
    >>> cfg = override_config(Config(), ["train.epochs=3"])
    >>> cfg.train.epochs
    3
    >>> override_config(cfg, ["train.epochz=3"])
    Traceback (most recent call last):
    ...
    ValueError: unknown key 'epochz' in section 'train'; valid keys: epochs, lr
    >>> override_config(cfg, ["train.lr=nan"])
    Traceback (most recent call last):
    ...
    ValueError: train.lr must be a finite number, got nan
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

_C = TypeVar("_C")

__all__ = [
    "build_config",
    "config_as_dict",
    "config_to_yaml",
    "dotted_keys",
    "override_config",
    "load_yaml_config",
    "read_yaml_mapping",
    "parse_yaml",
    "replace",
    "check_choice",
    "check_positive",
    "check_nonempty",
]

def check_choice(where: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{where} must be one of {list(allowed)}, got {value!r}")


def check_positive(where: str, value: float, *, zero_ok: bool = False) -> None:
    """Raise ``ValueError`` naming ``where`` unless ``value`` > 0 (or ≥ 0 with ``zero_ok``)."""
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{where} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


def check_nonempty(where: str, values: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming ``where`` when ``values`` is empty."""
    if not list(values):
        raise ValueError(f"{where} must not be empty")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Coerce a YAML-parsed value to a field annotation (int, float, bool, str, tuple[T, ...], Optional)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):  # a nested section, also as the element of a tuple
        return build_config(annotation, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        elem = args[0] if args else Any
        if value is None:
            return ()
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(items))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise TypeError(f"{where} must be a boolean (true/false), got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"{where} must be an integer, got {value!r}")
        try:
            as_float = float(value)
        except ValueError as exc:
            raise TypeError(f"{where} must be an integer, got {value!r}") from exc
        if not as_float.is_integer():
            raise TypeError(f"{where} must be an integer, got {value!r}")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise TypeError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{where} must be a number, got {value!r}") from exc
        if not math.isfinite(number):
            raise ValueError(f"{where} must be a finite number, got {number}")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)) or value is None:
            raise TypeError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


# ------------------------------------------------------------------ generic: any frozen dataclass tree
def build_config(cls: type[_C], raw: Mapping[str, Any] | None, where: str = "") -> _C:
    """Build a (nested) frozen dataclass from a YAML-parsed mapping; missing keys keep their defaults.

    Fields whose annotation is a dataclass are sections, built recursively. Values are coerced to the
    field types (:func:`_coerce`). An unknown key is an error that lists the valid keys; the
    dataclasses' own ``__post_init__`` checks the values.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        what = f"section {where!r}" if where else "the config"
        raise TypeError(f"{what} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        if where:
            raise ValueError(
                f"unknown key {unknown[0]!r} in section {where!r}; valid keys: {', '.join(sorted(names))}"
            )
        sectioned = any(dataclasses.is_dataclass(hints[n]) for n in names)
        where_text = "top-level key" if sectioned else "key"
        raise ValueError(f"unknown {where_text} {unknown[0]!r}; valid keys: {', '.join(names)}")
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = build_config(annotation, value, path)
        else:
            kwargs[key] = _coerce(value, annotation, path)
    return cls(**kwargs)


def config_as_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a dataclass tree (tuples as lists): the inverse of :func:`build_config`."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def dotted_keys(cls: type) -> list[str]:
    """Every dotted key of a dataclass tree that an override may set, e.g. ``train.epochs``."""
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += [f"{f.name}.{k}" for k in dotted_keys(hints[f.name])]
        else:
            keys.append(f.name)
    return keys


def override_config(config: _C, overrides: Iterable[str]) -> _C:
    """Apply dotted ``key=value`` / ``section.key=value`` overrides to a dataclass tree.

    Values are parsed as YAML (``5``, ``1e-3``, ``[1, 2]``, ``null``, ``true``) and coerced to the
    field's type; an unknown key is an error that lists the valid ones.
    """

    cls = type(config)
    raw = config_as_dict(config)
    valid = dotted_keys(cls)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.epochs=5)")
        key, text = item.split("=", 1)
        key = key.strip()
        value = parse_yaml(text, f"override {item!r}") if text.strip() else ""
        if key not in valid:
            section, _, name = key.rpartition(".")
            siblings = sorted(k.rpartition(".")[2] for k in valid if k.rpartition(".")[0] == section)
            if section and siblings:
                raise ValueError(f"unknown key {name!r} in section {section!r}; valid keys: {', '.join(siblings)}")
            raise ValueError(f"unknown key {key!r}; valid keys: {', '.join(valid)}")
        *path, name = key.split(".")
        node = raw
        for part in path:
            node = node[part]
        node[name] = value
    return build_config(cls, raw)


def _unique_key_loader():  # noqa: ANN202 - a yaml Loader class
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(loader, node, deep=False):  # noqa: ANN001, ANN202
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValueError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} (first at line {seen[key]}); "
                    f"each key may appear once"
                )
            seen[key] = key_node.start_mark.line + 1
        return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    return UniqueKeyLoader


def parse_yaml(text: str, where: str = "the config") -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (errors name ``where`` and the line)."""
    import yaml

    try:
        return yaml.load(text, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where} is not valid YAML: {exc}") from None


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML file that must hold a non-empty mapping (duplicate keys refused).

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid YAML, a duplicate key, an empty file or not a mapping.
    """
    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"config file {str(target)!r} does not exist")
    raw = parse_yaml(target.read_text(encoding="utf-8"), f"config file {str(target)!r}")
    if raw is None:
        raise ValueError(f"config file {str(target)!r} is empty; it must hold a mapping such as 'kind: ...'")
    if not isinstance(raw, Mapping):
        raise ValueError(f"config file {str(target)!r} must hold a mapping, got {type(raw).__name__}")
    return dict(raw)


def load_yaml_config(cls: type[_C], path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> _C:
    """Read a YAML file into the dataclass tree ``cls`` and apply ``--set``-style overrides.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping, unknown keys (valid ones listed), invalid values, malformed overrides.
        TypeError: a value of the wrong type.
    """
    raw = read_yaml_mapping(path)
    raw.pop("description", None)
    raw.pop("cpu_time", None)
    return override_config(build_config(cls, raw), overrides)


def config_to_yaml(config: Any) -> str:
    """The resolved config (any dataclass tree) as YAML text."""
    import yaml

    return yaml.safe_dump(config_as_dict(config), sort_keys=False)


def replace(config: _C, **sections: Any) -> _C:
    """A copy with some fields replaced: a section's fields by a mapping (merged), or a top-level value.

    Example: ``replace(cfg, train={"epochs": 2}, name="quick")``.
    """
    raw = config_as_dict(config)
    for key, values in sections.items():
        if key not in raw:
            raise ValueError(f"unknown key {key!r}; valid keys: {', '.join(raw)}")
        if isinstance(raw[key], dict):
            if not isinstance(values, Mapping):
                raise TypeError(f"section {key!r} must be replaced by a mapping, got {values!r}")
            raw[key].update(values)
        else:
            raw[key] = values
    return build_config(type(config), raw)

