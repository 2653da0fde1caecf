"""Experiment runner glue: run folders, the intermediate-NC experiment, the fixed-ETF-layers sweep.

A run folder holds ``config.yaml`` / ``config.json`` (the fully resolved config), ``versions.json``
(:func:`nclens.core.io.package_versions`), the trainer's logs (``history.jsonl``, ``layers.jsonl``,
``spectra.jsonl``, ``summary.json``, ``checkpoint.pt``) and, for the fixed-ETF sweep,
``fixed_etf.json`` / ``fixed_etf.csv`` plus one sub-run per setting under ``fixed_etf/``.

Fixed-ETF layers (Rangamani et al., ICML 2023): the last L Linear layers of an MLP are frozen to
ETF-like matrices — √(d/(d−1))(I − 11ᵀ/d) for square d×d layers, a unit-row simplex ETF for the
K×d classifier — with zero biases, and only the remaining layers are trained. If the top layers of
a trained network collapse to such a geometry anyway, freezing them costs little accuracy.

Example:
    >>> import tempfile
    >>> from nclens.runs.config import replace
    >>> from nclens.intermediate.experiment import default_config, run_experiment
    >>> cfg = replace(default_config(), model={"depth": 2, "width": 32},
    ...               train={"epochs": 1, "measure_every": 1, "progress": False})
    >>> out = run_experiment(cfg, tempfile.mkdtemp() + "/run")
    >>> sorted(p.name for p in out.iterdir() if not p.name.startswith("."))[:3]
    ['checkpoint.pt', 'config.json', 'config.yaml']
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nclens.core.io import atomic_write_text, package_versions, read_json, write_json
from nclens.runs.config import ExperimentConfig, config_from_dict, config_to_dict, config_to_yaml, replace

__all__ = [
    "default_config",
    "create_run_dir",
    "run_experiment",
    "freeze_last_layers_etf",
    "run_fixed_etf",
    "FIXED_ETF_TABLE",
]

FIXED_ETF_TABLE = "fixed_etf.json"
_IGNORED_ON_RESUME = {("train", "progress"), ("train", "device")}


def default_config() -> ExperimentConfig:
    """The default intermediate-NC experiment on the embedded ``digits`` (what ``nclens demo`` runs).

    A 6-hidden-layer, 128-wide MLP with BatchNorm, one-hot MSE loss, SGD (momentum 0.9, weight decay
    2e-2, cosine schedule), 100 epochs, measured every 20 epochs; the fixed-ETF sweep freezes 0–7 of
    its 7 Linear layers for 40 epochs each.
    """
    return config_from_dict({
        "name": "intermediate-digits",
        "data": {"name": "digits", "batch_size": 128},
        "model": {"arch": "mlp", "depth": 6, "width": 128, "batchnorm": True},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 2e-2, "schedule": "cosine"},
        "train": {"epochs": 100, "loss": "mse", "measure_every": 20},
        "fixed_etf": {"num_fixed": [0, 1, 2, 3, 4, 5, 6, 7], "epochs": 40},
    })


def _diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for section in a:
        if isinstance(a[section], dict):
            for key in a[section]:
                if (section, key) in _IGNORED_ON_RESUME:
                    continue
                if a[section][key] != b.get(section, {}).get(key):
                    out.append(f"{section}.{key}: {b.get(section, {}).get(key)!r} -> {a[section][key]!r}")
        elif a[section] != b.get(section):
            out.append(f"{section}: {b.get(section)!r} -> {a[section]!r}")
    return out


def create_run_dir(
    config: ExperimentConfig, out: str | os.PathLike[str] | None = None, *, resume: bool = False
) -> Path:
    """Create (or, with ``resume``, reopen) a run folder and record the resolved config and versions.

    Args:
        config: the resolved experiment config.
        out: the folder; default ``runs/<name>-<YYYYmmdd-HHMMSS>``.
        resume: reopen an existing folder; its saved config must match ``config`` (progress and
            device may differ).

    Raises:
        FileExistsError: ``out`` already holds a run and ``resume`` is False.
        FileNotFoundError: ``resume`` and there is no run in ``out``.
        ValueError: ``resume`` with a config that differs from the saved one (differences listed).
    """
    if out is None:
        if resume:
            raise ValueError("resume needs the run folder (--out DIR) of the run to continue")
        out = Path("runs") / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(out)
    saved = run_dir / "config.json"
    if resume:
        if not saved.is_file():
            raise FileNotFoundError(f"cannot resume: {str(run_dir)!r} holds no run (no config.json)")
        diffs = _diff(config_to_dict(config), read_json(saved))
        if diffs:
            raise ValueError(f"cannot resume {str(run_dir)!r} with a different config: {'; '.join(diffs)}")
    elif saved.exists():
        raise FileExistsError(
            f"run folder {str(run_dir)!r} already holds a run; pass --resume to continue it or another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(saved, config_to_dict(config))
    atomic_write_text(run_dir / "config.yaml", config_to_yaml(config))
    write_json(run_dir / "versions.json", package_versions())
    return run_dir


def freeze_last_layers_etf(model: nn.Module, num_fixed: int, *, seed: int = 0) -> list[str]:
    """Freeze the last ``num_fixed`` Linear layers of ``model`` to ETF-like weights (zero, frozen bias).

    Square d×d layers get √(d/(d−1))(I − 11ᵀ/d), the classifier (K×d) a unit-row simplex ETF
    (:func:`nclens.models.etf_like_matrix`). Returns the frozen layer names.
    """
    from nclens.models import etf_like_matrix, linear_layer_names

    names = linear_layer_names(model)
    if not 0 <= num_fixed <= len(names):
        raise ValueError(f"num_fixed must lie in [0, {len(names)}] (the model's Linear layers), got {num_fixed}")
    modules = dict(model.named_modules())
    frozen = names[len(names) - num_fixed:] if num_fixed else []
    with torch.no_grad():
        for name in frozen:
            layer: nn.Linear = modules[name]
            layer.weight.copy_(etf_like_matrix(layer.out_features, layer.in_features, seed=seed))
            layer.weight.requires_grad_(False)
            if layer.bias is not None:
                layer.bias.zero_()
                layer.bias.requires_grad_(False)
    return frozen


def run_fixed_etf(
    config: ExperimentConfig, run_dir: str | os.PathLike[str], *, resume: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train the MLP once per L in ``config.fixed_etf.num_fixed`` with its last L layers fixed to ETFs.

    Returns (and writes to ``fixed_etf.json`` / ``.csv``) rows ``{num_fixed, num_trained, train_accuracy,
    test_accuracy, within_share_last, frozen}``; each setting is a resumable sub-run in
    ``fixed_etf/L<L>/``, measured at its last epoch only.
    """
    from nclens.models import linear_layer_names
    from nclens.train import CHECKPOINT, Trainer, load_data

    run_dir = Path(run_dir)
    epochs = config.fixed_etf.epochs or config.train.epochs
    sub_cfg = replace(config, kind="train", train={"epochs": epochs, "measure_epochs": [epochs], "measure_test": True})
    data = load_data(config.data)
    rows: list[dict[str, Any]] = []
    for num_fixed in config.fixed_etf.num_fixed:
        sub = run_dir / "fixed_etf" / f"L{num_fixed}"
        frozen: list[str] = []

        def prepare(model: nn.Module, n: int = num_fixed, out: list[str] = frozen) -> None:
            out[:] = freeze_last_layers_etf(model, n, seed=config.train.seed)

        trainer = Trainer(sub_cfg, sub, data=data, prepare_model=prepare)
        result = trainer.fit(resume=resume and (sub / CHECKPOINT).is_file())
        last = result.history[-1]
        n_linear = len(linear_layer_names(result.model))
        final = result.final_layers("train")
        last_layer = list(final)[-1] if final else None
        row = {
            "num_fixed": num_fixed,
            "num_trained": n_linear - num_fixed,
            "train_accuracy": last.get("train_accuracy"),
            "test_accuracy": last.get("test_accuracy"),
            "within_share_last": final[last_layer]["within_share"] if last_layer else None,
            "frozen": frozen,
        }
        rows.append(row)
        if log is not None:
            log(f"fixed {num_fixed} / trained {row['num_trained']}: train acc {row['train_accuracy']:.4f}, "
                f"test acc {row['test_accuracy']:.4f}")
    write_json(run_dir / FIXED_ETF_TABLE, {"epochs": epochs, "rows": rows})
    header = "num_fixed,num_trained,train_accuracy,test_accuracy,within_share_last\n"
    lines = [f"{r['num_fixed']},{r['num_trained']},{r['train_accuracy']},{r['test_accuracy']},{r['within_share_last']}"
             for r in rows]
    atomic_write_text(run_dir / "fixed_etf.csv", header + "\n".join(lines) + "\n")
    return rows


def run_experiment(
    config: ExperimentConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    fixed_etf: bool | None = None,
    step_hook: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Run ``config`` into a run folder; returns the folder.

    ``kind="train"``: train and measure NC per layer (:class:`nclens.train.Trainer`), then, when
    ``fixed_etf`` is True, the fixed-ETF sweep as well. ``kind="fixed_etf"``: only the sweep.
    Only rank 0 writes under torch.distributed.
    """
    from nclens.train import Trainer

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and out is None:
        raise ValueError("under torchrun every rank must get the same run folder: pass --out DIR")
    run_dir = create_run_dir(config, out, resume=resume) if rank == 0 else Path(out)
    if config.kind == "train":
        Trainer(config, run_dir, step_hook=step_hook).fit(resume=resume and (run_dir / "checkpoint.pt").is_file())
    if config.kind == "fixed_etf" or fixed_etf:
        run_fixed_etf(config, run_dir, resume=resume, log=log)
    return run_dir
