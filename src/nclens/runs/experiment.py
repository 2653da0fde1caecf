"""The one Experiment contract, the registry of kinds, shipped configs and the one runner.

Every research system registers its experiments here by ``kind``. An experiment is a class with

* ``kind`` — its registered name (the ``kind:`` of its YAML configs);
* ``config_class`` — a frozen dataclass tree with a top-level ``name`` field (built with
  :func:`nclens.runs.config.build_config`: unknown keys are errors listing the valid ones, values are
  type-checked, floats must be finite);
* ``description`` — one line for ``nclens configs``;
* ``resume_ignores`` — config keys that may change on ``--resume`` (e.g. ``progress``);
* ``timing_fields`` — keys of its result files that hold wall-clock times (all else is reproducible);
* ``check(config)`` — every check that needs more than the config's own types (layer names against
  the model, data files present), run *before* the run folder is created;
* ``run(config, run, *, resume, progress, log) -> dict`` — does the work in the :class:`RunFolder`
  ``run`` and returns the results for ``summary.json`` (the runner writes it last);
* ``figures(run) -> dict[str, Path]`` — draws the figures from the run folder's files alone;
* ``report(run) -> ReportContent`` — headline rows and tables for ``report.html``.

Kinds are found by name (a resolver, as PyG's): :data:`KIND_MODULES` says which module registers
which kind, so ``nclens run`` imports only the system it runs. Shipped configs live in each system's
``configs/`` folder inside the package (``nclens configs`` lists them); a config is a YAML mapping
with ``kind:``, ``description:``, ``cpu_time:`` and the config tree.

Example:
    >>> from nclens.runs.experiment import shipped_configs
    >>> any(c.name == "intermediate_smoke" for c in shipped_configs())
    True
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.resources
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nclens.runs.config import build_config, config_as_dict, override_config, read_yaml_mapping
from nclens.runs.folder import RunFolder

__all__ = [
    "Experiment",
    "ReportContent",
    "register_experiment",
    "get_experiment",
    "experiment_kinds",
    "KIND_MODULES",
    "SYSTEMS",
    "ShippedConfig",
    "shipped_configs",
    "find_config",
    "load_run_config",
    "RunConfig",
    "run",
    "default_run_dir",
    "validate_run_name",
]

#: research system -> its package (each has ``configs/*.yaml``)
SYSTEMS: dict[str, str] = {
    "intermediate": "nclens.intermediate",
    "multilabel": "nclens.multilabel",
    "graph": "nclens.graph",
    "ood": "nclens.ood",
    "privacy": "nclens.privacy",
    "bounds": "nclens.bounds",
}

#: kind -> the module whose import registers it
KIND_MODULES: dict[str, str] = {
    "intermediate": "nclens.intermediate.experiment",
    "intermediate-fixed-etf": "nclens.intermediate.experiment",
    "multilabel": "nclens.multilabel.experiment",
    "multilabel-ufm": "nclens.multilabel.experiment",
    "ood": "nclens.ood.experiment",
    "bounds-sweep": "nclens.bounds.experiment",
    "gnn": "nclens.graph.experiment",
    "gufm": "nclens.graph.experiment",
    "dp-dimension": "nclens.privacy.experiment",
    "dp-threshold": "nclens.privacy.experiment",
    "dp-features": "nclens.privacy.experiment",
}

#: the keys of a config file that describe it rather than configure it
META_KEYS = ("kind", "description", "cpu_time")


@dataclass
class ReportContent:
    """What a kind adds to ``report.html``: a headline table and named tables of rows."""

    title: str = ""
    headline: list[dict[str, Any]] = field(default_factory=list)
    tables: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


class Experiment(abc.ABC):
    """Base class of every registered experiment (see the module docstring); a kind implements :meth:`run`."""

    kind: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    description: ClassVar[str] = ""
    resume_ignores: ClassVar[tuple[str, ...]] = ("progress",)
    #: result-file keys that hold wall-clock times (the only fields a resumed run may change)
    timing_fields: ClassVar[tuple[str, ...]] = ("seconds",)

    def check(self, config: Any) -> None:  # noqa: B027 - an optional hook: the default checks nothing
        """Checks that need more than the config's types; raise ValueError/FileNotFoundError. Default: none."""

    @abc.abstractmethod
    def run(self, config: Any, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        """Do the work in ``run``; return the results for ``summary.json``."""

    def figures(self, run: RunFolder) -> dict[str, Path]:
        """Draw the figures from the run folder's files; default: none."""
        return {}

    def summary_text(self, run: RunFolder) -> str:
        """What ``nclens run`` prints when the run is done; default: the headline of :meth:`report`."""
        content = self.report(run)
        lines = [f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}" for row in content.headline
                 for k, v in row.items() if not isinstance(v, (dict, list))]
        return "\n".join(lines)

    def report(self, run: RunFolder) -> ReportContent:
        """Headline and tables for report.html; default: the results of summary.json."""
        summary = run.summary() or {}
        results = summary.get("results", {})
        flat = {k: v for k, v in results.items() if not isinstance(v, (dict, list))}
        return ReportContent(title=f"{self.kind} run", headline=[flat] if flat else [])


_REGISTRY: dict[str, type[Experiment]] = {}


def register_experiment(cls: type[Experiment]) -> type[Experiment]:
    """Class decorator: register ``cls`` under ``cls.kind`` (a kind registered twice is an error)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} has no kind")
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise ValueError(f"experiment kind {cls.kind!r} is already registered by {_REGISTRY[cls.kind].__name__}")
    fields = dataclasses.fields(cls.config_class) if dataclasses.is_dataclass(cls.config_class) else ()
    if "name" not in {f.name for f in fields}:
        raise TypeError(f"{cls.__name__}.config_class must be a dataclass with a 'name' field")
    _REGISTRY[cls.kind] = cls
    return cls


def experiment_kinds() -> tuple[str, ...]:
    """Every kind nclens knows (registered or resolvable by name)."""
    return tuple(sorted(set(KIND_MODULES) | set(_REGISTRY)))


def get_experiment(kind: str) -> Experiment:
    """An instance of the experiment registered as ``kind`` (importing its module by name if needed)."""
    if kind not in _REGISTRY and kind in KIND_MODULES:
        importlib.import_module(KIND_MODULES[kind])
    try:
        return _REGISTRY[kind]()
    except KeyError:
        raise ValueError(f"unknown experiment kind {kind!r}; known kinds: {', '.join(experiment_kinds())}") from None


# ----------------------------------------------------------------- shipped configs
@dataclass(frozen=True)
class ShippedConfig:
    """A config file shipped inside the package."""

    name: str
    system: str
    kind: str
    description: str
    cpu_time: str
    path: Path


def shipped_configs() -> list[ShippedConfig]:
    """Every ``configs/*.yaml`` of every system, sorted by system and name (reads only the files)."""
    out = []
    for system, package in SYSTEMS.items():
        try:
            folder = importlib.resources.files(package) / "configs"
        except ModuleNotFoundError:  # pragma: no cover - a system whose optional extra is absent
            continue
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if not entry.name.endswith(".yaml"):
                continue
            path = Path(str(entry))
            raw = read_yaml_mapping(path)
            out.append(ShippedConfig(
                name=path.stem, system=system, kind=str(raw.get("kind", "")),
                description=str(raw.get("description", "")), cpu_time=str(raw.get("cpu_time", "")), path=path,
            ))
    return out


def find_config(name_or_path: str | os.PathLike[str]) -> Path:
    """A config file: an existing path, or the name of a shipped config (``nclens configs`` lists them).

    Raises:
        FileNotFoundError: neither a file nor a shipped config name (the shipped names are listed).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml")
    matches = [c for c in shipped_configs() if c.name == stem]
    if matches and (path.parent == Path(".") or str(name_or_path) == stem):
        return matches[0].path
    names = ", ".join(c.name for c in shipped_configs())
    raise FileNotFoundError(f"config {str(name_or_path)!r} is neither a file nor a shipped config; shipped: {names}")


@dataclass(frozen=True)
class RunConfig:
    """A resolved run: the experiment, its typed config and the file's metadata."""

    experiment: Experiment
    config: Any
    source: Path
    meta: dict[str, str]

    def record(self) -> dict[str, Any]:
        """What ``config.yaml`` records: description, cpu_time, source and the config tree (``kind`` is added)."""
        return {**self.meta, **config_as_dict(self.config)}


def load_run_config(name_or_path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> RunConfig:
    """Read a config (file or shipped name), dispatch on its ``kind``, build its typed config, apply ``--set``.

    Raises:
        FileNotFoundError, ValueError, TypeError: with the file, the key and the expected value.
    """
    source = find_config(name_or_path)
    raw = read_yaml_mapping(source)
    if "kind" not in raw:
        raise ValueError(f"config {str(source)!r} has no 'kind:'; known kinds: {', '.join(experiment_kinds())}")
    experiment = get_experiment(str(raw["kind"]))
    meta = {k: str(raw[k]) for k in META_KEYS[1:] if k in raw}
    body = {k: v for k, v in raw.items() if k not in META_KEYS}
    try:
        config = override_config(build_config(experiment.config_class, body), overrides)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{source.name}: {exc}") from None
    validate_run_name(config.name)
    return RunConfig(experiment, config, source, meta)


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def validate_run_name(name: str) -> str:
    """A config ``name`` is one plain folder name (it names the default run folder under ``runs/``).

    Raises:
        ValueError: a path, ``..``, an empty name or characters outside ``A-Z a-z 0-9 . _ -``.
    """
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise ValueError(
            f"name must be a plain folder name of letters, digits, '.', '_' and '-' (it names runs/<name>-<time>), "
            f"got {name!r}"
        )
    return name


def default_run_dir(name: str) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` (a new folder for every run, so variants never collide)."""
    return Path("runs") / f"{validate_run_name(name)}-{time.strftime('%Y%m%d-%H%M%S')}"


def run(
    name_or_path: str | os.PathLike[str] | RunConfig,
    *,
    overrides: Iterable[str] = (),
    out: str | os.PathLike[str] | None = None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Run any experiment: resolve the config, check it, open the run folder, run, write ``summary.json``.

    Under torchrun (``RANK``/``WORLD_SIZE`` set) every rank runs; rank 0 alone writes and every rank
    needs the same ``out``.

    Returns:
        The run folder.
    """
    spec = name_or_path if isinstance(name_or_path, RunConfig) else load_run_config(name_or_path, overrides)
    experiment, config = spec.experiment, spec.config
    experiment.check(config)  # before any file is written
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if out is None:
        if resume:
            raise ValueError("--resume needs the run folder of the run to continue (--out DIR)")
        if world > 1:
            raise ValueError("under torchrun every rank must write to the same run folder: pass --out DIR")
        out = default_run_dir(config.name)
    folder = RunFolder.open(
        out, kind=experiment.kind, config=spec.record(), resume=resume,
        ignore_on_resume=experiment.resume_ignores, writer=rank == 0,
    )
    with folder:
        results = experiment.run(config, folder, resume=resume, progress=progress, log=log)
        folder.write_summary(results)
    return folder.path
