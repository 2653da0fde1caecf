"""The intermediate-NC experiments: train a classifier and measure NC layer by layer, epoch by epoch;
the fixed-ETF-layers sweep (Rangamani, Lindegaard, Galanti & Poggio, ICML 2023).

Kinds:

* ``intermediate`` — train ``model`` on ``data`` with the one :class:`~nclens.train.Trainer` and, at
  the measured epochs (epoch 0 = initialisation), measure every requested layer on the training
  and test data (:func:`nclens.intermediate.layers.measure_layers`, a callback). With
  ``fixed_etf.enabled`` the fixed-ETF sweep follows.
* ``intermediate-fixed-etf`` — only the sweep: for each L in ``fixed_etf.num_fixed`` the last L
  Linear layers of the MLP are frozen to ETF-like matrices — √(d/(d−1))(I − 11ᵀ/d) for square d×d
  layers, a unit-row simplex ETF for the K×d classifier — with zero biases, and the rest trained.

Run folder: ``config.yaml``, ``versions.json``, ``history.jsonl`` (per epoch: lr, running training
loss, train/test loss and accuracy), ``layers.jsonl`` (per epoch × split × layer: the registry's NC
metrics, ``ncc_accuracy``, and on the training split ``subspace_alignment`` /
``assoc_memory_alignment``), ``spectra.jsonl``, ``checkpoint.pt``; for the sweep ``fixed_etf.json`` /
``fixed_etf.csv`` and one sub-run per setting in ``fixed_etf/L<L>/``; ``summary.json`` last.

Example:
    >>> import tempfile
    >>> from nclens.runs.config import replace
    >>> from nclens.intermediate.config import IntermediateConfig
    >>> cfg = replace(IntermediateConfig(), model={"depth": 2, "width": 32},
    ...               train={"epochs": 1, "measure_every": 1, "progress": False})
    >>> out = run_intermediate(cfg, tempfile.mkdtemp() + "/run")
    >>> sorted(p.name for p in out.iterdir() if not p.name.startswith("."))[:4]
    ['checkpoint.pt', 'config.yaml', 'history.jsonl', 'layers.jsonl']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nclens.core.env import resolve_device, seed_everything
from nclens.core.probe import resolve_layers
from nclens.intermediate.config import IntermediateConfig, ModelConfig
from nclens.intermediate.data import DataBundle, load_data
from nclens.intermediate.layers import measure_layers
from nclens.runs.config import replace
from nclens.runs.experiment import Experiment, ReportContent, RunConfig, register_experiment, run
from nclens.runs.folder import RunFolder
from nclens.train import Callback, TensorData, Trainer, TrainResult, augment_batch, eval_batches

__all__ = [
    "build_model",
    "freeze_last_layers_etf",
    "MeasureCallback",
    "train_intermediate",
    "run_fixed_etf",
    "run_intermediate",
    "IntermediateExperiment",
    "FixedETFExperiment",
    "LAYERS",
    "SPECTRA",
    "FIXED_ETF_TABLE",
]

LAYERS = "layers.jsonl"
SPECTRA = "spectra.jsonl"
FIXED_ETF_TABLE = "fixed_etf.json"


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the architecture of ``cfg`` for inputs of ``input_shape`` and K classes."""
    from nclens.models import CNN, MLP, build_resnet

    if cfg.arch == "mlp":
        return MLP(
            int(np.prod(input_shape)), num_classes, cfg.depth, cfg.width,
            batchnorm=cfg.batchnorm, bias=cfg.bias, activation=cfg.activation,
        )
    if len(input_shape) != 3:
        raise ValueError(f"model.arch={cfg.arch!r} needs image inputs (C, H, W), got shape {input_shape}")
    if cfg.arch == "cnn":
        return CNN(
            num_classes, input_shape, cfg.depth, cfg.width,
            batchnorm=cfg.batchnorm, bias=cfg.bias, activation=cfg.activation,
        )
    return build_resnet(
        int(cfg.arch.removeprefix("resnet")), num_classes, in_channels=input_shape[0], width=cfg.width,
        input_shape=input_shape, impl=cfg.impl,
    )


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


class MeasureCallback(Callback):
    """Measure NC per layer at ``epochs`` (0 = initialisation) on the training and test data.

    Appends to ``layers.jsonl`` and ``spectra.jsonl`` of the trainer's run folder (rank 0).
    """

    logs = (LAYERS, SPECTRA)

    def __init__(self, data: DataBundle, epochs: Sequence[int], *, layers: Sequence[str] | None, mode: str,
                 pool: str, measure_test: bool, eval_batch_size: int, prefix: str = "") -> None:
        self.data, self.epochs = data, set(epochs)
        self.layers = list(layers) if layers else None
        self.mode, self.pool, self.measure_test = mode, pool, measure_test
        self.eval_batch_size = eval_batch_size
        self.logs = (f"{prefix}{LAYERS}", f"{prefix}{SPECTRA}")
        self._batches: tuple[Any, Any] | None = None

    def _measure(self, trainer: Trainer, epoch: int) -> None:
        train, test = self._batches
        records, spectra = measure_layers(
            trainer.model, train, test if self.measure_test else None, layers=self.layers, mode=self.mode,
            pool=self.pool, num_classes=self.data.num_classes, device=trainer.device, epoch=epoch,
        )
        if trainer.writes:
            trainer.run.append_jsonl(self.logs[0], records)
            trainer.run.append_jsonl(self.logs[1], spectra)

    def on_fit_start(self, trainer: Trainer, start_epoch: int) -> None:
        d, dev = self.data, trainer.device
        self._batches = (
            eval_batches(d.x_train.to(dev), d.y_train.to(dev), self.eval_batch_size, trainer.rank, trainer.world_size),
            eval_batches(d.x_test.to(dev), d.y_test.to(dev), self.eval_batch_size, trainer.rank, trainer.world_size),
        )
        if start_epoch == 0 and 0 in self.epochs:
            self._measure(trainer, 0)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if epoch in self.epochs:
            self._measure(trainer, epoch)


def train_intermediate(
    config: IntermediateConfig,
    run: RunFolder | str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    data: DataBundle | None = None,
    prepare_model: Callable[[nn.Module], None] | None = None,
    callbacks: Sequence[Callback] = (),
    measure_epochs: Sequence[int] | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``config``'s model on its data and measure NC per layer (the ``intermediate`` kind's work).

    Args:
        config: the experiment.
        run: the run folder (a path is opened as a plain folder without the runner's checks; ``None``
            writes nothing).
        resume: continue from the run folder's checkpoint when there is one.
        data: pre-loaded data (default: :func:`~nclens.intermediate.data.load_data` of ``config.data``).
        prepare_model: called on the freshly built (seeded) model before the optimiser is built (to
            freeze layers).
        callbacks: extra trainer callbacks (after the measurement).
        measure_epochs: override ``config.train.measured_epochs()``.
        progress: override ``config.train.progress``.
    """
    cfg = config.train
    if run is not None and not isinstance(run, RunFolder):
        from nclens.train.trainer import dist_info

        run = RunFolder(run, writer=dist_info()[1] == 0 and int(os.environ.get("RANK", "0")) == 0)
        if run.writer:
            run.path.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    data = data if data is not None else load_data(config.data)
    model = build_model(config.model, data.input_shape, data.num_classes)
    if prepare_model is not None:
        prepare_model(model)
    augment = augment_batch if (config.data.augment and data.x_train.ndim == 4) else None
    measured = sorted(set(measure_epochs)) if measure_epochs is not None else cfg.measured_epochs()
    measure_cb = MeasureCallback(data, measured, layers=cfg.layers, mode=cfg.mode, pool=cfg.pool,
                                 measure_test=cfg.measure_test, eval_batch_size=config.data.eval_batch_size)
    evaluate = {"train": (data.x_train, data.y_train)} if cfg.eval_train else {}
    evaluate["test"] = (data.x_test, data.y_test)
    trainer = Trainer(
        model, TensorData(data.x_train, data.y_train, config.data.batch_size, augment=augment),
        loss=cfg.loss, label_smoothing=cfg.label_smoothing, optim=config.optim, epochs=cfg.epochs, seed=cfg.seed,
        run=run, callbacks=[measure_cb, *callbacks], device=cfg.device, evaluate=evaluate,
        eval_batch_size=config.data.eval_batch_size, checkpoint_every=cfg.checkpoint_every,
        progress=cfg.progress if progress is None else progress, name=f"training {config.name}",
    )
    return trainer.fit(resume=resume)


def _final_layers(records: list[dict[str, Any]], split: str) -> dict[str, dict[str, Any]]:
    recs = [r for r in records if r["split"] == split]
    if not recs:
        return {}
    last = max(r["epoch"] for r in recs)
    return {r["layer"]: r for r in recs if r["epoch"] == last}


def run_fixed_etf(
    config: IntermediateConfig, run: RunFolder, *, resume: bool = False, progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Train the MLP once per L in ``config.fixed_etf.num_fixed`` with its last L layers fixed to ETFs.

    Returns (and writes to ``fixed_etf.json`` / ``.csv``) rows ``{num_fixed, num_trained, train_accuracy,
    test_accuracy, within_share_last, frozen}``; each setting is a resumable sub-run in
    ``fixed_etf/L<L>/``, measured at its last epoch only.
    """
    from nclens.models import linear_layer_names

    epochs = config.fixed_etf.epochs or config.train.epochs
    sub_cfg = replace(config, train={"epochs": epochs, "measure_epochs": [epochs], "measure_test": True})
    data = load_data(config.data)
    rows: list[dict[str, Any]] = []
    for num_fixed in config.fixed_etf.num_fixed:
        sub = run.subfolder(f"fixed_etf/L{num_fixed}")
        frozen: list[str] = []

        def prepare(model: nn.Module, n: int = num_fixed, out: list[str] = frozen) -> None:
            out[:] = freeze_last_layers_etf(model, n, seed=config.train.seed)

        result = train_intermediate(sub_cfg, sub, resume=resume and sub.has_checkpoint(), data=data,
                                    prepare_model=prepare, progress=progress and config.train.progress)
        last = result.history[-1] if result.history else {}
        final = _final_layers(sub.read_jsonl(LAYERS), "train") if run.writer else {}
        last_layer = list(final)[-1] if final else None
        row = {
            "num_fixed": num_fixed,
            "num_trained": len(linear_layer_names(result.model)) - num_fixed,
            "train_accuracy": last.get("train_accuracy"),
            "test_accuracy": last.get("test_accuracy"),
            "within_share_last": final[last_layer]["within_share"] if last_layer else None,
            "frozen": frozen,
        }
        rows.append(row)
        if log is not None and run.writer:
            log(f"fixed {num_fixed} / trained {row['num_trained']}: train acc {row['train_accuracy']:.4f}, "
                f"test acc {row['test_accuracy']:.4f}")
    run.write_json(FIXED_ETF_TABLE, {"epochs": epochs, "rows": rows})
    run.write_csv("fixed_etf.csv", rows, ["num_fixed", "num_trained", "train_accuracy", "test_accuracy",
                                          "within_share_last"])
    return rows


def _check(config: IntermediateConfig) -> None:
    """Layer names against the model and the data source, before any file is written."""
    if config.data.root and not Path(config.data.root).exists():
        raise FileNotFoundError(f"data.root {config.data.root!r} does not exist (nclens never downloads data)")
    resolve_device(config.train.device)
    shapes = {"digits": (1, 8, 8), "mnist1d": (1, 1, 40), "mnist": (1, 28, 28), "fashionmnist": (1, 28, 28),
              "cifar10": (3, 32, 32)}
    model = build_model(config.model, shapes[config.data.name], 10)
    if config.train.layers:
        try:
            resolve_layers(model, config.train.layers)
        except KeyError as exc:
            raise ValueError(f"train.layers: {exc.args[0]}") from None


@register_experiment
class IntermediateExperiment(Experiment):
    """Train and measure NC per layer and epoch (+ the fixed-ETF sweep with ``fixed_etf.enabled``)."""

    kind = "intermediate"
    config_class = IntermediateConfig
    description = "train a classifier, measure NC in every layer over epochs (Rangamani et al. 2023)"
    resume_ignores = ("train.progress", "train.device")

    def check(self, config: IntermediateConfig) -> None:
        _check(config)

    def run(self, config: IntermediateConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        result = train_intermediate(config, run, resume=resume and run.has_checkpoint(),
                                    progress=progress and config.train.progress)
        out = _results(config, result.history, run.read_jsonl(LAYERS) if run.writer else [])
        if config.fixed_etf.enabled:
            out["fixed_etf"] = run_fixed_etf(config, run, resume=resume, progress=progress, log=log)
        return out

    def figures(self, run: RunFolder) -> dict[str, Path]:
        from nclens.intermediate.figures import write_figures

        return write_figures(run)

    def report(self, run: RunFolder) -> ReportContent:
        from nclens.intermediate.figures import report_content

        return report_content(run)

    def summary_text(self, run: RunFolder) -> str:
        from nclens.core.console import format_table
        from nclens.intermediate.figures import headline

        records = run.read_jsonl(LAYERS)
        lines = []
        train = [r for r in records if r["split"] == "train"]
        if train:
            last = max(r["epoch"] for r in train)
            cols = ("within_share", "nc1", "cdnv", "ncc_accuracy", "subspace_alignment", "assoc_memory_alignment")
            table = {r["layer"]: {c: r.get(c) for c in cols} for r in train if r["epoch"] == last}
            lines.append(format_table(table, title=f"train data, epoch {last}").rstrip())
            head = headline(records, run.read_jsonl("history.jsonl"))
            lines.append(f"test accuracy {head.get('test_accuracy') or float('nan'):.4f}; within_share falls "
                         f"{head.get('within_share_ratio') or float('nan'):.1f}x from the first to the last layer")
        if run.exists(FIXED_ETF_TABLE):
            for row in run.read_json(FIXED_ETF_TABLE)["rows"]:
                lines.append(f"fixed {row['num_fixed']} / trained {row['num_trained']}: train accuracy "
                             f"{row['train_accuracy']:.4f}, test accuracy {row['test_accuracy']:.4f}")
        return "\n".join(lines)


@register_experiment
class FixedETFExperiment(IntermediateExperiment):
    """Only the fixed-ETF-layers sweep."""

    kind = "intermediate-fixed-etf"
    description = "freeze the last L layers of an MLP to ETFs, train the rest, for each L (Rangamani et al. 2023)"

    def check(self, config: IntermediateConfig) -> None:
        config.check_fixed_etf()
        _check(config)

    def run(self, config: IntermediateConfig, run: RunFolder, *, resume: bool, progress: bool,
            log: Callable[[str], None]) -> dict[str, Any]:
        return {"fixed_etf": run_fixed_etf(config, run, resume=resume, progress=progress, log=log)}


def _results(config: IntermediateConfig, history: list[dict[str, Any]], layers: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1] if history else {}
    return {
        "epochs": last.get("epoch"),
        "train_accuracy": last.get("train_accuracy"),
        "test_accuracy": last.get("test_accuracy"),
        "final_layers_train": _final_layers(layers, "train"),
        "final_layers_test": _final_layers(layers, "test"),
    }


def run_intermediate(
    config: IntermediateConfig, out: str | os.PathLike[str] | None = None, *, resume: bool = False,
    kind: str = "intermediate", progress: bool = True,
) -> Path:
    """Run ``config`` through the one runner (run-folder rules, ``summary.json``); returns the folder."""
    from nclens.runs.experiment import get_experiment

    spec = RunConfig(get_experiment(kind), config, Path("<python>"), {})
    return run(spec, out=out, resume=resume, progress=progress, log=lambda s: None)
