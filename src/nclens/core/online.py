"""``OnlineCollapse``: neural collapse measured from the training forward passes themselves.

:func:`nclens.measure` takes an extra pass over the data with fixed weights. During training the
features of every batch are computed anyway; :class:`OnlineCollapse` hooks the same layers, and each
``update(labels)`` after a training forward adds that batch's features to per-layer
:class:`~nclens.core.stats.ClassStats` — no extra forward, O(K·D + D²) memory per layer.

**What it estimates.** Every ``every_n_steps`` updates (a *window*), the metrics of the window's
features are computed and passed to ``on_result(step, report)``. These are the running statistics
of a *moving* model: batch t's features come from the weights θ_t of step t, so the window mixes
features of slightly different networks (and of the training mode: dropout active, BatchNorm on
batch statistics, augmented inputs). They equal :func:`nclens.measure` exactly when the weights do
not change over the window and the forward is the same (no dropout/BatchNorm/augmentation, or
``model.eval()``): e.g. a frozen network, lr = 0, or a window covering one pass at the end of
training with the optimiser stopped. With a small learning rate they approximate the fixed-weights
value at the window's middle; the gap shrinks with the weight change over the window (measure it
with ``measure`` at a checkpoint when it matters). ``window="cumulative"`` keeps accumulating over
the whole run instead of resetting after each result.

Under torch.distributed every rank must call ``update`` the same number of times (as DDP training
does); the statistics are all-reduced at each result and every rank gets the global metrics.

Example:
    >>> import torch, torch.nn as nn
    >>> from nclens.core.online import OnlineCollapse
    >>> net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> g = torch.Generator().manual_seed(0)
    >>> results = []
    >>> with OnlineCollapse(net, ["2"], every_n_steps=4, on_result=lambda step, r: results.append(step)) as online:
    ...     for _ in range(8):
    ...         x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    ...         loss = nn.functional.cross_entropy(net(x), y)
    ...         _ = online.update(y)
    ...         opt.zero_grad(); loss.backward(); opt.step()
    >>> results
    [4, 8]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from nclens.core.labels import IGNORE_INDEX
from nclens.core.measure import CollapseReport, _Accumulator, _heads, layer_metrics
from nclens.core.probe import Probe, specs_summary

__all__ = ["OnlineCollapse", "WINDOWS"]

WINDOWS = ("reset", "cumulative")


class OnlineCollapse:
    """Context manager accumulating NC statistics from the training forwards of ``model``.

    Args:
        model: the model being trained (hooks are attached on ``__enter__``, removed on ``__exit__``).
        layers, mode, pool, tokens, output_fn: as :func:`nclens.measure` (a (B, T, H) layer needs
            ``tokens``; an ``attention_mask`` keyword of the model's forward is respected).
        num_classes: K for labels ``0..K−1`` (``None``: the distinct labels seen).
        every_n_steps: compute the metrics after this many ``update`` calls.
        on_result: called as ``on_result(step, report)`` with a :class:`CollapseReport`.
        window: ``"reset"`` (each result covers the last ``every_n_steps`` steps) or ``"cumulative"``.
        min_class_count, metrics, ignore_index, on_undefined: as :func:`nclens.measure`.
        distributed, timeout_s: as :func:`nclens.measure`.

    Call :meth:`update` with the batch's labels after each training forward; :meth:`result` gives the
    report of the current window at any time.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Any = None,
        *,
        mode: str = "input",
        pool: str | None = None,
        tokens: str | None = None,
        output_fn: Callable[[Any], Any] | None = None,
        num_classes: int | None = None,
        every_n_steps: int = 100,
        on_result: Callable[[int, CollapseReport], Any] | None = None,
        window: str = "reset",
        min_class_count: int = 1,
        metrics: Sequence[str] | None = None,
        ignore_index: int | None = IGNORE_INDEX,
        on_undefined: str = "nan",
        distributed: Any = "auto",
        timeout_s: float = 300.0,
    ) -> None:
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {window!r}")
        if on_result is not None and not callable(on_result):
            raise TypeError(f"on_result must be callable, got {type(on_result).__name__}")
        self.model = model
        self.probe = Probe(model, layers, mode=mode, pool=pool, tokens=tokens, output_fn=output_fn)
        self.specs = list(self.probe.specs)
        self.num_classes, self.every_n_steps = num_classes, every_n_steps
        self.on_result, self.window = on_result, window
        self.min_class_count, self.metrics, self.on_undefined = min_class_count, metrics, on_undefined
        self.distributed, self.timeout_s = distributed, timeout_s
        self.mode = mode
        self.step = 0
        self.window_start = 0
        self._acc = _Accumulator(self.specs, num_classes, None, ignore_index)
        self._fresh = False
        self._handles: list[Any] = []
        self.results: list[tuple[int, CollapseReport]] = []

    # ------------------------------------------------------------------ hooks
    def _pre_forward(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        self.probe.mask = mask if isinstance(mask, Tensor) else None

    def _post_forward(self, module: nn.Module, args: Any, output: Any) -> None:
        self._fresh = True

    def __enter__(self) -> OnlineCollapse:
        self.probe.attach()
        self._handles = [
            self.model.register_forward_pre_hook(self._pre_forward, with_kwargs=True),
            self.model.register_forward_hook(self._post_forward),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        self.probe.detach()
        while self._handles:
            self._handles.pop().remove()

    # ------------------------------------------------------------------ API
    @torch.no_grad()
    def update(self, labels: Tensor) -> CollapseReport | None:
        """Add the features of the latest forward with their ``labels`` (B,) or (B, T).

        Returns the report when this step completes a window (after calling ``on_result``), else ``None``.

        Raises:
            RuntimeError: no forward of the model since the last update (or the context is not entered).
        """
        if not self._handles:
            raise RuntimeError("OnlineCollapse is not active: use it as `with OnlineCollapse(...) as online:`")
        if not self._fresh:
            raise RuntimeError("update(labels) needs a forward of the model since the last update: call it right "
                               "after the training forward of the batch the labels belong to")
        labels = torch.as_tensor(labels)
        first = self.probe.features[self.probe.layers[0]]
        batch = self.probe.batch_sizes[self.probe.layers[0]]
        self._acc.add(self.probe, labels.to(first.device), batch)
        self._fresh = False
        self.step += 1
        if self.step % self.every_n_steps:
            return None
        report = self.result()
        self.results.append((self.step, report))
        if self.on_result is not None:
            self.on_result(self.step, report)
        if self.window == "reset":
            self._acc.reset()
            self.window_start = self.step
        return report

    def result(self) -> CollapseReport:
        """The report of the statistics accumulated so far in this window (all-reduced under distributed)."""
        from nclens.core.distributed import resolve_group, sync_measurement

        acc = self._acc
        names = [s.name for s in self.specs]
        info_group = resolve_group(self.distributed)
        stats = {n: acc.stats[n].clone() if acc.stats[n].initialized else acc.stats[n] for n in names}
        samples = dict(acc.samples)
        if info_group is not None:
            sync_measurement(stats, samples, acc.fingerprint, names, info_group, self.timeout_s, "OnlineCollapse")
        empty = [n for n in names if not stats[n].initialized or stats[n].total == 0]
        if empty:
            raise ValueError(f"OnlineCollapse: layers {empty} have no samples yet (call update after each forward)")
        heads = _heads(self.model, self.specs, stats[names[0]].n_classes)
        metrics: dict[str, dict[str, float]] = {}
        excluded: dict[str, Any] = {}
        notes: list[str] = []
        for name in names:
            weight = heads[name].weight.detach().to(torch.float64) if name in heads else None
            row, info = layer_metrics(stats[name], weight, fixed_classes=self.num_classes is not None,
                                      min_class_count=self.min_class_count, names=self.metrics,
                                      on_undefined=self.on_undefined)
            metrics[name] = row
            if info["excluded"]:
                excluded[name] = info["excluded"]
            notes += [f"{name}: {note}" for note in info["notes"]]
        info = {
            "online": True,
            "window": self.window,
            "steps": [self.window_start + 1, self.step],
            "layers": specs_summary(self.specs),
            "samples": int(stats[names[0]].total),
            "classes": int((stats[names[0]].counts > 0).sum()),
            "dims": {n: stats[n].dim for n in names},
            "classifier_layers": sorted(heads),
            "excluded": excluded,
            "notes": notes,
            "world_size": 1 if info_group is None else info_group.world_size,
        }
        return CollapseReport(metrics=metrics, stats=stats, info=info)
