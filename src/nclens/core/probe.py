"""Forward-hook capture of named layers' inputs or outputs.

Hooks are registered on modules found by ``named_modules()`` (the same names ``print(model)``
shows), every handle is kept, and all are removed in ``finally`` — also when the forward pass
raises. Captured tensors are detached and reshaped to (B, D):

* ``pool="flatten"``: (B, C, H, W) → (B, C·H·W)  (row-major, channel-first);
* ``pool="avg"``: global average over every dimension after the second: (B, C, ...) → (B, C).

(Hooks as Opacus' GradSampleModule and TransformerLens' HookPoints do them.)

Example:
    >>> import torch, torch.nn as nn
    >>> from nclens.core.probe import Probe
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> with Probe(net, ["0", "2"], mode="input") as probe:
    ...     _ = net(torch.randn(5, 4))
    >>> {k: tuple(v.shape) for k, v in probe.features.items()}
    {'0': (5, 4), '2': (5, 8)}
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Probe", "resolve_layers", "default_layers", "to_features"]

_MODES = ("input", "output")
_POOLS = ("flatten", "avg")


def default_layers(model: nn.Module) -> list[str]:
    """Names of every Linear and Conv module, in registration order (the layers NC is usually measured on)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [name for name, module in model.named_modules() if name and isinstance(module, kinds)]


def resolve_layers(model: nn.Module, layers: Iterable[str] | None) -> list[str]:
    """Validate layer names against ``model.named_modules()``; ``None`` means :func:`default_layers`.

    Raises:
        KeyError: an unknown name, with the valid names listed.
        ValueError: a duplicate name (no double registration) or an empty selection.
    """
    names = default_layers(model) if layers is None else list(layers)
    valid = [name for name, _ in model.named_modules() if name]
    known = set(valid)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KeyError(f"unknown layer name(s) {unknown}; valid names are: {valid}")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"layer name(s) {duplicates} requested more than once")
    if not names:
        raise ValueError("no layers to measure: the model has no Linear/Conv modules; pass layers=[...]")
    return names


def to_features(tensor: Tensor, pool: str) -> Tensor:
    """Reshape a captured activation to (B, D): flatten, or average over dims ≥ 2 (``pool="avg"``)."""
    if pool not in _POOLS:
        raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
    if tensor.ndim < 2:
        raise ValueError(f"cannot turn an activation of shape {tuple(tensor.shape)} into (B, D) features")
    if tensor.ndim == 2:
        return tensor
    if pool == "avg":
        return tensor.flatten(2).mean(dim=2)  # (B, C, *spatial) -> (B, C)
    return tensor.flatten(1)  # (B, C, *spatial) -> (B, C·prod(spatial))


class Probe:
    """Context manager capturing the inputs or outputs of named modules on every forward pass.

    Args:
        model: any ``nn.Module``.
        layers: module names (``named_modules()``); ``None`` for every Linear/Conv module.
        mode: ``"input"`` (the first positional input, as Rangamani et al. 2023 take each layer's
            input) or ``"output"``.
        pool: ``"flatten"`` or ``"avg"`` for activations with more than two dimensions.

    After each forward, ``features[name]`` holds that layer's detached (B, D) tensor of the latest
    call (a module called several times in one forward keeps the last call).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | None = None,
        *,
        mode: str = "input",
        pool: str = "avg",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {_POOLS}, got {pool!r}")
        self.model = model
        self.layers = resolve_layers(model, layers)
        self.mode = mode
        self.pool = pool
        self.features: dict[str, Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}  # per-sample shape of each captured activation, before pooling
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def capture(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            value = args[0] if self.mode == "input" else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            if not isinstance(value, Tensor):
                raise TypeError(f"layer {name!r} {self.mode} is {type(value).__name__}, not a tensor")
            self.shapes[name] = tuple(value.shape[1:])
            self.features[name] = to_features(value.detach(), self.pool)

        return capture

    def attach(self) -> Probe:
        """Register the hooks (idempotent: a second call does not register twice)."""
        if self._handles:
            return self
        modules = dict(self.model.named_modules())
        try:
            for name in self.layers:
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove every hook handle."""
        while self._handles:
            self._handles.pop().remove()

    def clear(self) -> None:
        """Forget the captured features."""
        self.features = {}

    def __enter__(self) -> Probe:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()
