"""Typed, frozen experiment configurations: YAML in, ``--set key=value`` overrides, clear errors.

An :class:`ExperimentConfig` has five sections — ``data``, ``model``, ``optim``, ``train`` and
``fixed_etf`` — each a frozen dataclass with typed fields and defaults. :func:`load_config` reads a
YAML file (unknown keys are an error that lists the valid keys), :func:`apply_overrides` applies
dotted ``section.key=value`` overrides whose values are parsed as YAML scalars and coerced to the
field's type (``"5"`` → 5 for an int field, ``"[1, 2]"`` → (1, 2) for a tuple field, ``null`` for
optional fields), and :func:`config_to_dict` gives back a plain dict (saved with every run).

Example:
    >>> from nclens.runs.config import ExperimentConfig, apply_overrides
    >>> cfg = apply_overrides(ExperimentConfig(), ["train.epochs=3", "model.width=32"])
    >>> cfg.train.epochs, cfg.model.width
    (3, 32)
    >>> apply_overrides(cfg, ["train.epochz=3"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: unknown key 'epochz' in section 'train'; valid keys: checkpoint_every, device, epochs, ...
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

_C = TypeVar("_C")

__all__ = [
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "TrainConfig",
    "FixedETFConfig",
    "ExperimentConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
    "apply_overrides",
    "config_to_yaml",
    "valid_keys",
    "replace",
    "build_config",
    "config_as_dict",
    "dotted_keys",
    "override_config",
    "load_yaml_config",
]

DATASETS = ("digits", "mnist1d", "mnist", "fashionmnist", "cifar10")
ARCHS = ("mlp", "cnn", "resnet18", "resnet34")


def _choice(section: str, name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{section}.{name} must be one of {list(allowed)}, got {value!r}")


def _positive(section: str, name: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{section}.{name} must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split and batched.

    ``name``: digits | mnist1d (embedded) | mnist | fashionmnist | cifar10 (torchvision, from
    ``root``, never downloaded). ``train_subset``: keep this many training samples (stratified,
    seeded by ``split_seed``). ``augment``: random crop (padding 4) + horizontal flip for images.
    """

    name: str = "digits"
    root: str | None = None
    num_samples: int = 4000
    test_fraction: float = 0.25
    split_seed: int = 0
    train_subset: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 1024
    augment: bool = False

    def __post_init__(self) -> None:
        _choice("data", "name", self.name, DATASETS)
        if self.name in ("mnist", "fashionmnist", "cifar10") and not self.root:
            raise ValueError(f"data.name={self.name!r} is read from a local torchvision root: set data.root")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"data.test_fraction must lie in (0, 1), got {self.test_fraction}")
        _positive("data", "batch_size", self.batch_size)
        _positive("data", "eval_batch_size", self.eval_batch_size)
        _positive("data", "num_samples", self.num_samples)
        if self.train_subset is not None:
            _positive("data", "train_subset", self.train_subset)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: ``mlp`` (depth hidden layers of ``width``), ``cnn`` (depth convs of ``width``
    channels) or ``resnet18``/``resnet34`` (first-stage ``width``; ``impl`` own | torchvision)."""

    arch: str = "mlp"
    depth: int = 6
    width: int = 128
    batchnorm: bool = True
    bias: bool = True
    activation: str = "relu"
    impl: str = "own"

    def __post_init__(self) -> None:
        from nclens.models.mlp import ACTIVATIONS

        _choice("model", "arch", self.arch, ARCHS)
        _choice("model", "activation", self.activation, sorted(ACTIVATIONS))
        _choice("model", "impl", self.impl, ("own", "torchvision"))
        _positive("model", "width", self.width)
        _positive("model", "depth", self.depth, zero_ok=self.arch == "mlp")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule.

    ``schedule``: constant | step (× ``gamma`` at each epoch in ``milestones``) | cosine (to 0 at the
    last epoch); ``warmup_epochs`` of linear warm-up first. The LR is set every step from the
    (fractional) epoch, so the schedule is a pure function of the position and resumes exactly.
    """

    name: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1

    def __post_init__(self) -> None:
        _choice("optim", "name", self.name, ("sgd", "adamw"))
        _choice("optim", "schedule", self.schedule, ("constant", "step", "cosine"))
        _positive("optim", "lr", self.lr)
        _positive("optim", "weight_decay", self.weight_decay, zero_ok=True)
        _positive("optim", "warmup_epochs", self.warmup_epochs, zero_ok=True)
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"optim.momentum must lie in [0, 1), got {self.momentum}")
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError(f"optim.milestones must be increasing, got {list(self.milestones)}")


@dataclass(frozen=True)
class TrainConfig:
    """Training and measurement.

    ``loss``: ce | mse (one-hot targets, label smoothing applies to both). NC is measured at epoch 0
    (initialisation) and every ``measure_every`` epochs and at the last one, or exactly at
    ``measure_epochs`` when given, on the training data and (``measure_test``) the test data, for
    ``layers`` (empty: every Linear/Conv layer) in ``mode`` input | output with ``pool`` avg | flatten.
    """

    epochs: int = 40
    loss: str = "mse"
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    measure_every: int = 5
    measure_epochs: tuple[int, ...] = ()
    measure_test: bool = True
    eval_train: bool = True
    layers: tuple[str, ...] = ()
    mode: str = "input"
    pool: str = "avg"
    checkpoint_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        _choice("train", "loss", self.loss, ("ce", "mse"))
        _choice("train", "mode", self.mode, ("input", "output"))
        _choice("train", "pool", self.pool, ("avg", "flatten"))
        _positive("train", "epochs", self.epochs)
        _positive("train", "measure_every", self.measure_every)
        _positive("train", "checkpoint_every", self.checkpoint_every)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        bad = [e for e in self.measure_epochs if not 0 <= e <= self.epochs]
        if bad:
            raise ValueError(f"train.measure_epochs must lie in [0, {self.epochs}], got {bad}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")

    def measured_epochs(self) -> list[int]:
        """The epochs at which NC is measured (0 = at initialisation), ascending."""
        if self.measure_epochs:
            return sorted(set(self.measure_epochs))
        return sorted(set(range(0, self.epochs + 1, self.measure_every)) | {self.epochs})


@dataclass(frozen=True)
class FixedETFConfig:
    """Fixed-ETF-layers experiment: for each L in ``num_fixed``, freeze the last L Linear layers of
    the MLP to ETF-like matrices and train the rest (``epochs``: 0 = same as train.epochs)."""

    num_fixed: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    epochs: int = 0

    def __post_init__(self) -> None:
        if any(n < 0 for n in self.num_fixed):
            raise ValueError(f"fixed_etf.num_fixed must be >= 0, got {list(self.num_fixed)}")
        _positive("fixed_etf", "epochs", self.epochs, zero_ok=True)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment. ``kind``: train (intermediate NC) | fixed_etf (fixed-ETF-layers sweep)."""

    name: str = "intermediate"
    kind: str = "train"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fixed_etf: FixedETFConfig = field(default_factory=FixedETFConfig)

    def __post_init__(self) -> None:
        _choice("", "kind", self.kind, ("train", "fixed_etf"))
        if self.kind == "fixed_etf" and self.model.arch != "mlp":
            raise ValueError(f"kind='fixed_etf' needs model.arch='mlp', got {self.model.arch!r}")
        if self.kind == "fixed_etf" and max(self.fixed_etf.num_fixed, default=0) > self.model.depth + 1:
            raise ValueError(
                f"fixed_etf.num_fixed {list(self.fixed_etf.num_fixed)} exceeds the MLP's "
                f"{self.model.depth + 1} Linear layers"
            )


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
            return float(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{where} must be a number, got {value!r}") from exc
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
    import yaml

    cls = type(config)
    raw = config_as_dict(config)
    valid = dotted_keys(cls)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value (e.g. train.epochs=5)")
        key, text = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as exc:
            raise ValueError(f"cannot parse the value of override {item!r}: {exc}") from exc
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


def load_yaml_config(cls: type[_C], path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> _C:
    """Read a YAML file into the dataclass tree ``cls`` and apply ``--set``-style overrides.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a mapping, unknown keys (valid ones listed), invalid values, malformed overrides.
        TypeError: a value of the wrong type.
    """
    import yaml

    target = Path(path)
    if not target.is_file():
        raise FileNotFoundError(f"config file {str(target)!r} does not exist")
    try:
        raw = yaml.safe_load(target.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {str(target)!r} is not valid YAML: {exc}") from exc
    if raw is not None and not isinstance(raw, Mapping):
        raise ValueError(f"config file {str(target)!r} must hold a mapping, got {type(raw).__name__}")
    return override_config(build_config(cls, raw), overrides)


# ------------------------------------------------------------ the intermediate-NC experiment config
def config_from_dict(raw: Mapping[str, Any] | None) -> ExperimentConfig:
    """Build an :class:`ExperimentConfig` from a nested dict (sections may be missing: defaults)."""
    return build_config(ExperimentConfig, raw)


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """A plain nested dict (tuples as lists), the inverse of :func:`config_from_dict`."""
    return config_as_dict(config)


def config_to_yaml(config: Any) -> str:
    """The resolved config (any dataclass tree) as YAML text."""
    import yaml

    return yaml.safe_dump(config_as_dict(config), sort_keys=False)


def load_config(path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment config and apply ``section.key=value`` overrides (see :func:`load_yaml_config`)."""
    return load_yaml_config(ExperimentConfig, path, overrides)


def apply_overrides(config: ExperimentConfig, overrides: Iterable[str]) -> ExperimentConfig:
    """Apply dotted ``section.key=value`` overrides (values parsed as YAML, coerced to the field type)."""
    return override_config(config, overrides)


def valid_keys() -> list[str]:
    """Every dotted key an override may set, e.g. ``train.epochs``."""
    return dotted_keys(ExperimentConfig)


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

