"""``nclens extract``: features of a pretrained network (or an nclens checkpoint) on a dataset split.

Example:
    $ nclens extract --model efficientnet-lite0 --data fashion-mnist --split test --per-class 100 \\
        --out F.safetensors
    $ nclens measure F.safetensors
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer

__all__ = ["register"]


def _layers(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    return names or None


def fail(message: str, code: int = 2) -> None:
    """``error: message`` on stderr, unwrapped (the not-found messages are multi-line instructions)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _inputs_of(data, extra: list[Path]) -> list[Path]:  # noqa: ANN001 - ImageSet or TensorSource
    paths = list(extra)
    source = getattr(data, "source", None)
    if source:
        src = Path(source)
        paths += [p for p in src.iterdir() if p.is_file()] if src.is_dir() else [src]
    return paths


class _Reporter:
    """A rich progress bar on a terminal; plain log lines (one per chunk) otherwise."""

    def __init__(self, description: str, total: int, quiet: bool) -> None:
        self.description, self.total, self.quiet = description, total, quiet
        self.tty = sys.stdout.isatty()
        self._progress = None
        self._task = None
        self._started = time.perf_counter()

    def __enter__(self) -> _Reporter:
        if not self.quiet and self.tty:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=self.total, rate="")
        return self

    def __call__(self, p) -> None:  # noqa: ANN001 - ExtractProgress
        rate = f"{p.computed / p.seconds:.1f} img/s" if p.seconds > 0 else "resumed"
        if self._progress is not None:
            self._progress.update(self._task, completed=p.done, rate=rate)
        elif not self.quiet:
            state = "found on disk" if p.resumed else rate
            typer.echo(f"{self.description}: chunk {p.chunk}/{p.chunks}, {p.done}/{p.total} samples ({state}, "
                       f"{time.perf_counter() - self._started:.0f} s)", file=sys.stdout)
            sys.stdout.flush()

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def _pretrained_job(model_name: str, data_name: str, split: str, root: Path | None, per_class: int | None,
                    seed: int, crop: bool):  # noqa: ANN202
    from nclens.data.images import load_images
    from nclens.models.pretrained import Preprocess, pretrained

    data = load_images(data_name, split, root=root, per_class=per_class, seed=seed)
    model = pretrained(model_name)
    prep = Preprocess(model.resolution, crop=crop)
    info = {
        "model": model_name,
        "weights": Path(model.weights_path).name,
        "dataset": data_name,
        "split": split,
        "classes": list(data.classes),
        "preprocessing": prep.describe(),
    }
    return model, data, prep, ["pool"], model.feature_layers(), "output", info, [Path(model.weights_path)]


def _checkpoint_job(checkpoint: Path, config: Path | None, split: str, per_class: int | None, seed: int):  # noqa: ANN202
    """Model and data of an ``intermediate`` / ``fixed_etf`` run, rebuilt from its ``config.yaml``.

    Other kinds build their models in their own code; rebuilding them needs a hook on
    :class:`nclens.runs.experiment.Experiment` (left for the platform).
    """
    import torch

    from nclens.core.probe import default_layers
    from nclens.data.extract import TensorSource
    from nclens.data.images import class_balanced_indices
    from nclens.runs.experiment import load_run_config

    config = config if config is not None else checkpoint.parent / "config.yaml"
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    if not config.is_file():
        raise FileNotFoundError(f"config not found: {config} (pass --config RUN_DIR/config.yaml)")
    if split not in ("train", "test"):
        raise ValueError(f"a checkpoint's data has splits 'train' and 'test', got --split {split!r}")
    spec = load_run_config(config)
    kind = spec.experiment.kind
    if kind not in ("intermediate", "fixed_etf"):
        raise ValueError(f"--checkpoint rebuilds the model of 'intermediate' and 'fixed_etf' runs; {config} is a "
                         f"{kind!r} run")
    from nclens.intermediate.data import load_data
    from nclens.intermediate.experiment import build_model

    cfg = spec.config
    bundle = load_data(cfg.data)
    model = build_model(cfg.model, bundle.input_shape, bundle.num_classes)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"] if isinstance(state, dict) and "model" in state else state, strict=True)
    x, y = (bundle.x_train, bundle.y_train) if split == "train" else (bundle.x_test, bundle.y_test)
    rows = torch.arange(y.shape[0])
    if per_class is not None:
        rows = torch.from_numpy(class_balanced_indices(y.numpy(), per_class, seed))
    source = TensorSource(x[rows], y[rows], rows)
    names = default_layers(model)
    info = {
        "model": f"checkpoint:{checkpoint.name}",
        "run_kind": kind,
        "architecture": cfg.model.arch,
        "checkpoint_epoch": int(state.get("epoch", -1)) if isinstance(state, dict) else -1,
        "dataset": cfg.data.name,
        "split": split,
        "preprocessing": "the run's own (nclens.intermediate.data.load_data of its config)",
    }
    return model, source, None, names[-1:], names, "input", info, [checkpoint, config]


def register(app: typer.Typer) -> None:
    @app.command("extract")
    def extract_command(
        out: Path = typer.Option(..., "--out", "-o", help="The .safetensors feature file to write."),
        model: str | None = typer.Option(
            None, help="A packaged pretrained network: efficientnet-lite0 | efficientnet-lite1 | efficientnet-lite2."
        ),
        checkpoint: Path | None = typer.Option(
            None, help="Instead of --model: the checkpoint.pt of an nclens 'intermediate' or 'fixed_etf' run (its "
            "model and data are rebuilt from the run's config)."
        ),
        config: Path | None = typer.Option(None, help="The run's config.yaml (default: beside --checkpoint)."),
        data: str | None = typer.Option(
            None, help="With --model: fashion-mnist | mnist | mnist-5k | cifar10 | cifar100 | imagefolder."
        ),
        split: str = typer.Option("test", help="train | test (all for mnist-5k; a sub-folder for imagefolder)."),
        root: Path | None = typer.Option(
            None, help="Folder holding the dataset files (default: $NCLENS_DATA, then the Debian location)."
        ),
        per_class: int | None = typer.Option(None, help="Keep a seeded class-balanced subset of this many per class."),
        seed: int = typer.Option(0, help="Seed of the --per-class subset."),
        layers: list[str] | None = typer.Option(
            None, "--layers", help="Layers to extract (comma-separated or repeated); 'all' for every named tap. "
            "Default: the pooled pre-logit feature 'pool' (a checkpoint: its classifier's input). The last is "
            "stored as 'features'.",
        ),
        batch_size: int = typer.Option(64, help="Images per forward pass."),
        chunk_size: int = typer.Option(1000, help="Images per resumable chunk."),
        threads: int | None = typer.Option(None, help="torch CPU threads (default: torch's)."),
        crop: bool = typer.Option(True, "--crop/--no-crop", help="The network's centre crop (official evaluation)."),
        device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
        overwrite: bool = typer.Option(False, help="Replace an existing --out."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
    ) -> None:
        """Extract features of named layers on a dataset split into one .safetensors file.

        Writes 'features' (N×D, the last requested layer), 'features/<layer>' for every layer, 'labels',
        'indices' (rows in the full split) and provenance metadata. Interrupted runs resume: rerun the same
        command; finished chunks in OUT.parts/ are kept.
        """
        import torch

        from nclens import __version__
        from nclens.data.extract import extract_features, parts_dir

        if (model is None) == (checkpoint is None):
            fail("pass exactly one of --model (a packaged pretrained network) or --checkpoint (an nclens run)")
        if threads is not None:
            if threads < 1:
                fail(f"--threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        try:
            if model is not None:
                if data is None:
                    fail("--model needs --data (e.g. --data fashion-mnist)")
                job = _pretrained_job(model, data, split, root, per_class, seed, crop)
            else:
                if data is not None:
                    fail("--checkpoint reads the data of its run's config; do not pass --data")
                job = _checkpoint_job(checkpoint, config, split, per_class, seed)
            net, source, prep, default, all_layers, mode, info, inputs = job
            chosen = _layers(layers)
            if chosen == ["all"]:
                chosen = all_layers
            chosen = chosen or default
            valid = {name for name, _ in net.named_modules() if name}
            unknown = [name for name in chosen if name not in valid]
            if unknown:
                fail(f"unknown layer(s) {unknown}; named layers: {all_layers} (any named_modules() name works)")
            for path in _inputs_of(source, inputs):
                if _same_file(out, path):
                    fail(f"--out {str(out)!r} is one of the inputs ({path}); choose another file")
            if out.suffix.lower() != ".safetensors":
                fail(f"--out must be a .safetensors file, got {str(out)!r}")
            if out.exists() and not parts_dir(out).is_dir() and not overwrite:
                fail(f"{out} exists; pass --overwrite to replace it (or --out another file)")
            net.to(device)
            metadata = {
                **info,
                "per_class": "all" if per_class is None else per_class,
                "seed": seed,
                "samples": len(source.labels),
                "nclens_version": __version__,
                "torch_version": torch.__version__,
            }
            with _Reporter(f"{info['model']} on {info['dataset']}/{split}", len(source.labels), quiet) as report:
                extract_features(
                    net, source, chosen, out, default_layer=chosen[-1], preprocess=prep, mode=mode,
                    batch_size=batch_size, chunk_size=chunk_size, metadata=metadata, device=device, progress=report,
                )
        except (FileNotFoundError, ImportError, ValueError, KeyError, RuntimeError) as exc:
            fail(str(exc))
        if not quiet:
            typer.echo(f"wrote {out}: {len(source.labels)} samples, layers {chosen} (features = {chosen[-1]})")
