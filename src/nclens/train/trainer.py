"""The one Trainer of nclens: any model, loss and data; exact resume; exact DDP; callbacks; a divergence detector.

Every research system that trains (intermediate NC, multi-label NC, OOD control, GNNs, the privacy
pre-training) trains through :class:`Trainer`; measurement during training is a callback
(:mod:`nclens.train.callbacks`).

Exact resume. The data order of epoch e is a pure function of (seed, e) (:func:`~nclens.train.batches.epoch_order`),
the learning rate a pure function of the position (:func:`~nclens.train.optim.lr_factor`), and the
checkpoint (``checkpoint.pt`` in the run folder, one format for every system) holds the model, the
optimiser, every RNG state of every rank, the callbacks' states and the trainer's own, so a run
interrupted at any point loses at most the epoch in progress and then produces the same numbers,
bit for bit on the same machine, as one that was never interrupted. Log records beyond the
checkpoint are dropped on resume; a fresh start starts clean logs.

Exact DDP (under ``torchrun``; the process group is initialised from the environment if needed). The
run is the one-process run up to floating-point round-off: every rank draws the same seeded order,
cuts it into the one-process global batches and takes its contiguous share of each
(:class:`~nclens.train.batches.BatchShares`; augmentation is applied to the global batch first);
rank r's loss is (R/B)·Σ_{i∈share r} ℓ_i, so DDP's mean of the ranks' gradients is the gradient of
the global batch mean; BatchNorm layers use the statistics of the global batch
(:func:`~nclens.train.distributed.convert_sync_batchnorm`); evaluation deals whole batches to the
ranks; only rank 0 writes. What is left is the order of float32 sums (≈1e-7 relative per step).

Divergence. A non-finite loss, or a loss more than ``divergence_factor`` times the first step's, stops
the run with a :class:`FloatingPointError` that names the epoch, the step, the loss and the knob to
turn (``lr_key``, e.g. ``optim.lr``) — before a checkpoint of the diverged model is written.

The caller seeds (:func:`nclens.core.env.seed_everything`) *before* building the model, so the
initial weights are a function of the seed; the Trainer does not reseed.

Example:
    >>> import torch
    >>> from nclens.train import Trainer, TensorData, OptimConfig
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(64, 5, generator=g), torch.arange(64) % 2
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> result = Trainer(net, TensorData(x, y, 16), loss="ce", optim=OptimConfig(lr=0.1), epochs=3,
    ...                  evaluate={"train": (x, y)}, progress=False).fit()
    >>> [r["epoch"] for r in result.history], result.history[-1]["train_accuracy"] > 0.5
    ([1, 2, 3], True)
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from nclens.core.console import progress_bar
from nclens.core.env import resolve_device, rng_state, set_rng_state
from nclens.nn.losses import get_loss
from nclens.runs.folder import CHECKPOINT, RunFolder
from nclens.train.batches import eval_batches
from nclens.train.callbacks import Callback
from nclens.train.optim import OptimConfig, build_optimizer, lr_factor

__all__ = ["Trainer", "TrainResult", "HISTORY", "dist_info", "all_reduce_", "maybe_init_distributed"]

HISTORY = "history.jsonl"

StepFn = Callable[[nn.Module, Any, Any, str], tuple[Tensor, int]]


def dist_info() -> tuple[bool, int, int]:
    """(distributed?, rank, world size) of the current process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return True, dist.get_rank(), dist.get_world_size()
    return False, 0, 1


def all_reduce_(t: Tensor) -> Tensor:
    """Sum ``t`` over ranks in place (no-op outside a process group)."""
    if dist_info()[0]:
        import torch.distributed as dist

        dist.all_reduce(t)
    return t


def maybe_init_distributed() -> bool:
    """Initialise torch.distributed from the torchrun environment (``WORLD_SIZE`` > 1) if not done yet."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return False
    from nclens.core.distributed import init_from_env

    init_from_env()
    return True


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns: the trained model and the history records (rank 0)."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    run: RunFolder | None = None


class Trainer:
    """Train ``model`` on ``data`` with a registered (or given) loss; see the module docstring.

    Args:
        model: the network (already seeded and built; moved to ``device`` here).
        data: :class:`~nclens.train.batches.TensorData` or :class:`~nclens.train.batches.ItemData`.
        loss: a name of :data:`nclens.nn.losses.LOSSES` or ``fn(outputs, targets, reduction)``.
        optim: the optimiser and schedule.
        epochs: epochs to train (the schedule's length).
        seed: seed of the data order (the model's initialisation is the caller's).
        run: the run folder (``None``: nothing written, no resume).
        checkpoint: checkpoint name inside ``run`` (sub-runs use ``<sub>/checkpoint.pt``).
        history: JSONL log name inside ``run``, one record per epoch.
        callbacks: :class:`~nclens.train.callbacks.Callback` objects, called in order.
        device: ``"auto"``, ``"cpu"``, ``"cuda[:i]"`` or a device.
        step_fn: ``step_fn(model, x, y, reduction) -> (loss, n)`` for losses that are not
            ``loss(model(x), y)`` (extra regularisers, several outputs, graphs); ``reduction`` is
            ``"mean"`` in one process and ``"sum"`` (over the share's samples) under DDP.
        evaluate: ``{split: (x, y)}`` evaluated after every epoch (loss and, for class labels,
            accuracy), or ``{split: batches}`` with ``eval_fn``.
        eval_fn: ``eval_fn(model, batches) -> {metric: value}`` replacing the default evaluation.
        eval_batch_size: batch size of the evaluation passes.
        label_smoothing: passed to the registered loss.
        checkpoint_every: epochs between checkpoints (the last epoch always checkpoints).
        progress: show a progress bar (rank 0).
        name: what the progress bar says.
        divergence_factor: a loss above this multiple of the first step's is divergence.
        lr_key: the config key named in a divergence error.
        sync_batchnorm: use global-batch BatchNorm under DDP.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        loss: str | Callable[..., Tensor] = "ce",
        optim: OptimConfig | None = None,
        epochs: int,
        seed: int = 0,
        run: RunFolder | None = None,
        checkpoint: str = CHECKPOINT,
        history: str = HISTORY,
        callbacks: Sequence[Callback] = (),
        device: str | torch.device = "auto",
        step_fn: StepFn | None = None,
        evaluate: Mapping[str, Any] | None = None,
        eval_fn: Callable[[nn.Module, Iterable[Any]], dict[str, float]] | None = None,
        eval_batch_size: int = 1024,
        label_smoothing: float = 0.0,
        checkpoint_every: int = 1,
        progress: bool = True,
        name: str = "training",
        divergence_factor: float = 1e6,
        lr_key: str = "optim.lr",
        sync_batchnorm: bool = True,
    ) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive integer, got {checkpoint_every!r}")
        if not (math.isfinite(divergence_factor) and divergence_factor > 1):
            raise ValueError(f"divergence_factor must be a finite number > 1, got {divergence_factor!r}")
        self.model = model
        self.data = data
        self.loss = get_loss(loss) if isinstance(loss, str) else loss
        self.optim = optim or OptimConfig()
        self.epochs = epochs
        self.seed = int(seed)
        self.run = run
        self.checkpoint = checkpoint
        self.history = history
        self.callbacks = list(callbacks)
        self.device = resolve_device(device)
        self.step_fn = step_fn
        self.evaluate_sets = dict(evaluate or {})
        self.eval_fn = eval_fn
        self.eval_batch_size = int(eval_batch_size)
        self.label_smoothing = float(label_smoothing)
        self.checkpoint_every = checkpoint_every
        self.progress = progress
        self.name = name
        self.divergence_factor = float(divergence_factor)
        self.lr_key = lr_key
        self.sync_batchnorm = sync_batchnorm
        self.rank, self.world_size, self.distributed = 0, 1, False
        self.epoch = 0
        self.eval_loaders: dict[str, Any] = {}
        self._loss0: float | None = None

    # ----------------------------------------------------------------- pieces
    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder (rank 0 with a run folder)."""
        return self.run is not None and self.rank == 0

    def _loss_of(self, net: nn.Module, x: Any, y: Any, reduction: str) -> tuple[Tensor, int]:
        if self.step_fn is not None:
            return self.step_fn(net, x, y, reduction)
        out = net(x)
        kwargs = {"label_smoothing": self.label_smoothing} if self.label_smoothing else {}
        return self.loss(out, y, reduction=reduction, **kwargs), int(y.shape[0])

    def _check(self, value: float, epoch: int, step: int, lr: float) -> None:
        hint = f"lower {self.lr_key} (now {self.optim.lr:g}; this step {lr:g})"
        if not math.isfinite(value):
            raise FloatingPointError(
                f"training diverged: the loss became {value} at epoch {epoch}, step {step}; {hint}"
            )
        if self._loss0 is None:
            self._loss0 = max(value, 1e-12)
        elif value > self.divergence_factor * self._loss0 and value > 1.0:
            raise FloatingPointError(
                f"training diverged: the loss grew from {self._loss0:.4g} (first step) to {value:.4g} at "
                f"epoch {epoch}, step {step}; {hint}"
            )

    def _logs(self) -> list[str]:
        return [self.history, *[name for cb in self.callbacks for name in cb.logs]]

    def _save(self, epoch: int, opt: torch.optim.Optimizer) -> None:
        rng = rng_state()
        if self.distributed:
            import torch.distributed as dist

            rngs: list[Any] = [None] * self.world_size
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if not self.writes:
            return
        state = {
            "format": "nclens-trainer-1",
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": rngs,
            "trainer": {"loss0": self._loss0},
            "callbacks": {str(i): cb.state_dict() for i, cb in enumerate(self.callbacks)},
        }
        self.run.save_checkpoint(state, self.checkpoint)

    def _restore(self, opt: torch.optim.Optimizer) -> int:
        state = self.run.load_checkpoint(self.checkpoint, map_location=self.device)
        missing = [k for k in ("epoch", "model", "optimizer", "rng") if k not in state]
        if missing:
            where = str(self.run.file(self.checkpoint))
            raise ValueError(f"checkpoint {where!r} lacks {missing}; it is not an nclens trainer checkpoint")
        try:
            self.model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(
                f"checkpoint {str(self.run.file(self.checkpoint))!r} does not fit this model/optimiser "
                f"(was the config changed?): {str(exc).splitlines()[0][:300]}"
            ) from None
        rngs = state["rng"]
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self._loss0 = (state.get("trainer") or {}).get("loss0")
        for i, cb in enumerate(self.callbacks):
            cb.load_state_dict((state.get("callbacks") or {}).get(str(i), {}))
        return int(state["epoch"])

    @torch.no_grad()
    def evaluate(self, batches: Iterable[Any]) -> dict[str, float]:
        """Loss and (class labels) accuracy of the model on ``batches``, summed over ranks."""
        model = self.model
        was = model.training
        model.eval()
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)  # [loss·n, correct, n]
        classes = True
        try:
            for xb, yb in batches:
                classes = classes and yb.ndim == 1
                out = model(xb)
                kwargs = {"label_smoothing": self.label_smoothing} if self.label_smoothing else {}
                loss = self.loss(out, yb, reduction="sum", **kwargs)
                correct = (out.argmax(1) == yb).sum() if yb.ndim == 1 else torch.zeros((), device=self.device)
                sums += torch.stack([loss.detach().to(torch.float64), correct.to(torch.float64),
                                     torch.tensor(float(yb.shape[0]), dtype=torch.float64, device=self.device)])
        finally:
            model.train(was)
        all_reduce_(sums)
        n = float(sums[2])
        out = {"loss": float(sums[0]) / n} if n else {}
        if n and classes:
            out["accuracy"] = float(sums[1]) / n
        return out

    # --------------------------------------------------------------------- fit
    def fit(self, resume: bool = False) -> TrainResult:
        """Train (or continue from the run folder's checkpoint when ``resume``); returns the model and history.

        Raises:
            FileNotFoundError: ``resume`` without a checkpoint.
            FloatingPointError: the loss diverged (see the module docstring).
        """
        initialised_here = maybe_init_distributed()
        try:
            return self._fit(resume)
        finally:
            if initialised_here:
                import torch.distributed as dist

                dist.destroy_process_group()

    def _fit(self, resume: bool) -> TrainResult:
        self.distributed, self.rank, self.world_size = dist_info()
        device = self.device
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.model.to(device)
        if self.distributed and self.sync_batchnorm:
            from nclens.train.distributed import convert_sync_batchnorm

            self.model = convert_sync_batchnorm(self.model, device)
        model = self.model
        opt = build_optimizer(model.parameters(), self.optim)
        start = 0
        if resume and self.run is not None and self.run.has_checkpoint(self.checkpoint):
            start = self._restore(opt)
            if self.writes:
                for name in self._logs():
                    self.run.keep_jsonl(name, lambda r, e=start: r.get("epoch", 0) <= e)
        elif self.writes:  # a fresh start (also after a kill before the first checkpoint) starts clean logs
            for name in self._logs():
                self.run.keep_jsonl(name, lambda r: False)
        data = self.data.to(device)
        self.eval_loaders = {}
        for split, value in self.evaluate_sets.items():
            if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], Tensor):
                x, y = value
                self.eval_loaders[split] = eval_batches(x.to(device), y.to(device), self.eval_batch_size,
                                                        self.rank, self.world_size)
            else:
                self.eval_loaders[split] = value
        net: nn.Module = model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        for cb in self.callbacks:
            cb.on_fit_start(self, start)
        steps = len(data)
        show = self.progress and self.rank == 0
        records: list[dict[str, Any]] = []
        lr = self.optim.lr
        with progress_bar(show, self.name, self.epochs - start) as advance:
            for epoch in range(start + 1, self.epochs + 1):
                self.epoch = epoch
                started = time.perf_counter()
                net.train()
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                seen = 0
                for step, (xb, yb, n_global) in enumerate(data.epoch(self.seed, epoch, self.rank, self.world_size)):
                    lr = self.optim.lr * lr_factor(epoch - 1 + step / steps, self.optim, self.epochs, steps)
                    for group in opt.param_groups:
                        group["lr"] = lr
                    if self.distributed:
                        share_sum, n = self._loss_of(net, xb, yb, "sum")
                        loss = share_sum * (self.world_size / n_global)
                        local = share_sum.detach().to(torch.float64)
                        check = float(all_reduce_(local.clone()) / n_global)  # the same verdict on every rank
                    else:
                        loss, n = self._loss_of(net, xb, yb, "mean")
                        local = loss.detach().to(torch.float64) * n
                        check = float(loss.detach())
                    self._check(check, epoch, step, lr)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    loss_sum += local
                    seen += n
                    for cb in self.callbacks:
                        cb.on_step_end(self, epoch, step)
                totals = all_reduce_(torch.stack([loss_sum, torch.tensor(float(seen), dtype=torch.float64,
                                                                          device=device)]))
                record: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss_running": float(totals[0] / totals[1])}
                for split, batches in self.eval_loaders.items():
                    values = self.eval_fn(model, batches) if self.eval_fn is not None else self.evaluate(batches)
                    record.update({f"{split}_{k}": v for k, v in values.items()})
                record["seconds"] = time.perf_counter() - started
                for cb in self.callbacks:
                    cb.on_epoch_end(self, epoch, record)
                records.append(record)
                if self.writes:
                    self.run.append_jsonl(self.history, [record])
                if self.run is not None and (epoch % self.checkpoint_every == 0 or epoch == self.epochs):
                    self._save(epoch, opt)
                advance()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        if self.distributed and self.sync_batchnorm:
            from nclens.train.distributed import revert_sync_batchnorm

            self.model = revert_sync_batchnorm(self.model)
        history = self.run.read_jsonl(self.history) if self.writes else records
        return TrainResult(model=self.model, history=history, run=self.run)
