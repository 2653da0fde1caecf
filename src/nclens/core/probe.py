"""Forward-hook capture of named layers' inputs or outputs, reduced to (samples, D) features.

Hooks are registered on modules found by ``named_modules()`` (the same names ``print(model)``
shows), every handle is kept, and all are removed in ``finally`` — also when the forward pass
raises. A captured activation is detached, passed through the layer's ``output_fn`` (if any) and
reduced to (N, D) by its rank — never silently:

* rank 2 (B, D): taken as it is;
* rank 3 (B, T, H) — a token sequence (transformers, ViT blocks, any ``nn.Linear`` on a sequence):
  needs a token reduction ``tokens=``: ``"cls"`` (position 0, BERT's [CLS]), ``"first"`` / ``"last"``
  (the first / last position whose attention mask is 1; positions 0 / T−1 without a mask),
  ``"mean"`` (the mean over positions whose attention mask is 1), or ``"all"`` (every unmasked
  token is a sample: N = number of tokens, D = H). Without one it is an error naming the layer, its
  shape and the options. A rank-3 activation of a channel-first 1-D module (``Conv1d``,
  ``BatchNorm1d``, 1-D pooling, ...) is a (B, C, L) map and is pooled instead, as is any layer whose
  :class:`LayerSpec` sets ``pool`` explicitly;
* rank ≥ 4 (B, C, H, W, ...) — channel-first conv maps (PyTorch's layout): ``pool="avg"`` (default:
  global average over the spatial dims → (B, C)) or ``pool="flatten"`` (→ (B, C·H·W), row-major).
  Channel-last maps (e.g. Swin stages) need an ``output_fn`` that permutes them.

Outputs that are not tensors (a tuple, a Hugging Face ``ModelOutput``, a dataclass, a dict) need an
``output_fn`` (e.g. ``lambda o: o[0]`` or ``lambda o: o.last_hidden_state``); without one the error
lists the fields that exist.

``layers=`` accepts module names, glob patterns over dotted names (``*`` matches within one name
component, ``**`` any number of components: ``"bert.encoder.layer.*.output"``), a predicate
``(name, module) -> bool``, :class:`LayerSpec` objects (per-layer mode / pool / tokens / output_fn /
scatter), or a list mixing them.

Default layer set (:func:`default_layer_specs`, ``layers=None``), by architecture family:

* **transformers** — a ``ModuleList`` of repeated blocks holding an attention module, named ``layer``,
  ``layers``, ``h``, ``blocks`` or ``block`` (HF BERT ``encoder.layer.N``, GPT-2 ``transformer.h.N``,
  Llama ``model.layers.N``, T5 ``block.N``, timm ViT ``blocks.N``): the *output* of every block (the
  hidden states after block N), plus the input of the last ``nn.Linear`` outside the blocks (the
  classifier / LM head), not every q/k/v projection;
* **everything else** (MLPs, CNNs, ResNets): the input of every ``nn.Linear`` / ``nn.ConvNd`` module —
  the per-layer setting of Rangamani et al. (2023). ResNet stages are ``layers="layer?"`` (torchvision
  / timm names ``layer1`` … ``layer4``) with ``mode="output"``.

(Hooks as Opacus' GradSampleModule and TransformerLens' HookPoints do them.)

Example:
    >>> import torch, torch.nn as nn
    >>> from nclens.core.probe import Probe
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> with Probe(net, ["0", "2"], mode="input") as probe:
    ...     _ = net(torch.randn(5, 4))
    >>> {k: tuple(v.shape) for k, v in probe.features.items()}
    {'0': (5, 4), '2': (5, 8)}
    >>> seq = nn.Sequential(nn.Linear(4, 6))            # a (B, T, H) sequence needs tokens=
    >>> with Probe(seq, [LayerSpec("0", mode="output", tokens="mean")]) as probe:
    ...     _ = seq(torch.randn(2, 5, 4))
    >>> tuple(probe.features["0"].shape)
    (2, 6)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from torch import Tensor, nn

__all__ = [
    "Probe",
    "LayerSpec",
    "resolve_layers",
    "resolve_layer_specs",
    "default_layers",
    "default_layer_specs",
    "linear_conv_layers",
    "transformer_blocks",
    "to_features",
    "reduce_activation",
    "MODES",
    "POOLS",
    "TOKENS",
]

MODES = ("input", "output")
POOLS = ("flatten", "avg")
TOKENS = ("cls", "first", "last", "mean", "all")
_MODES, _POOLS = MODES, POOLS  # kept for callers of the 0.1 names

#: Modules whose rank-3 activations are channel-first (B, C, L) maps, pooled like conv maps.
_CHANNEL_FIRST_1D = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
)
#: Last name components of the ModuleLists that hold transformer blocks.
_BLOCK_LISTS = ("layer", "layers", "h", "blocks", "block")


@dataclass(frozen=True)
class LayerSpec:
    """How to measure one layer; fields left ``None`` take :func:`~nclens.core.measure.measure`'s values.

    Attributes:
        name: the module name (``named_modules()``), or a glob pattern expanded to one spec per match.
        mode: ``"input"`` (the module's first positional input) or ``"output"``.
        pool: ``"avg"`` / ``"flatten"`` for channel-first maps; set explicitly, it also declares a
            rank-3 activation a channel-first (B, C, L) map.
        tokens: ``"cls"`` | ``"first"`` | ``"last"`` | ``"mean"`` | ``"all"`` for (B, T, H) sequences.
        output_fn: maps the captured value (output, or input in ``"input"`` mode) to a tensor, e.g.
            ``lambda o: o.last_hidden_state``.
        scatter: ``"full"`` or ``"trace"`` statistics for this layer.
    """

    name: str
    mode: str | None = None
    pool: str | None = None
    tokens: str | None = None
    output_fn: Callable[[Any], Any] | None = None
    scatter: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"LayerSpec.name must be a non-empty module name, got {self.name!r}")
        for field, value, allowed in (("mode", self.mode, MODES), ("pool", self.pool, POOLS),
                                      ("tokens", self.tokens, TOKENS), ("scatter", self.scatter, ("full", "trace"))):
            if value is not None and value not in allowed:
                raise ValueError(f"LayerSpec({self.name!r}).{field} must be one of {allowed}, got {value!r}")
        if self.output_fn is not None and not callable(self.output_fn):
            raise TypeError(f"LayerSpec({self.name!r}).output_fn must be callable, got {type(self.output_fn).__name__}")

    def filled(self, **defaults: Any) -> LayerSpec:
        """This spec with its ``None`` fields replaced by ``defaults`` (``pool`` keeps ``None``: see ``pool``)."""
        updates = {k: v for k, v in defaults.items() if getattr(self, k) is None and v is not None and k != "pool"}
        return dataclasses.replace(self, **updates) if updates else self


LayerSelector = Union[str, LayerSpec, Callable[[str, nn.Module], bool]]


# --------------------------------------------------------------------------- default layer sets
def linear_conv_layers(model: nn.Module) -> list[str]:
    """Names of every Linear and Conv module, in registration order."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [name for name, module in model.named_modules() if name and isinstance(module, kinds)]


def _has_attention(module: nn.Module) -> bool:
    return any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower()
               or type(m).__name__.lower().endswith("attn") for m in module.modules())


def transformer_blocks(model: nn.Module) -> list[str]:
    """Names of transformer blocks: children of ModuleLists named ``layer``/``layers``/``h``/``blocks``/``block``
    whose children are all of one class and contain an attention module (``[]`` for other models)."""
    blocks: list[str] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or name.rsplit(".", 1)[-1] not in _BLOCK_LISTS or not len(module):
            continue
        children = list(module.named_children())
        if len({type(m) for _, m in children}) != 1 or not _has_attention(children[0][1]):
            continue
        if any(name.startswith(b + ".") for b in blocks):  # a block list nested in a block
            continue
        blocks += [f"{name}.{child}" for child, _ in children]
    return blocks


def default_layer_specs(model: nn.Module) -> list[LayerSpec]:
    """The default layer set of ``model``'s architecture family (see the module docstring)."""
    blocks = transformer_blocks(model)
    if not blocks:
        return [LayerSpec(name) for name in linear_conv_layers(model)]
    specs = [LayerSpec(name, mode="output") for name in blocks]
    prefixes = tuple(b + "." for b in blocks)
    heads = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not n.startswith(prefixes)
             and n not in blocks]
    if heads:
        specs.append(LayerSpec(heads[-1], mode="input"))
    return specs


def default_layers(model: nn.Module) -> list[str]:
    """Names of :func:`default_layer_specs` (every Linear/Conv module for non-transformer models)."""
    return [spec.name for spec in default_layer_specs(model)]


# --------------------------------------------------------------------------- layer selection
def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Regex of a dotted glob: ``*``/``?`` match within one name component, ``**`` any number of them."""
    pieces = []
    for component in pattern.split("."):
        if component == "**":
            pieces.append("<ANY>")
        else:
            pieces.append("".join("[^.]*" if ch == "*" else "[^.]" if ch == "?" else re.escape(ch) for ch in component))
    regex = r"\.".join(pieces)
    regex = regex.replace("<ANY>" + r"\.", r"(?:[^.]+\.)*").replace(r"\." + "<ANY>", r"(?:\.[^.]+)*")
    return re.compile(regex.replace("<ANY>", ".*") + "$")


def _is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def resolve_layer_specs(
    model: nn.Module,
    layers: LayerSelector | Iterable[LayerSelector] | None,
    **defaults: Any,
) -> list[LayerSpec]:
    """Expand ``layers`` (names, globs, predicates, specs) into one :class:`LayerSpec` per module.

    ``defaults`` (``mode``, ``tokens``, ``output_fn``, ``scatter``) fill the specs' ``None`` fields.

    Raises:
        KeyError: an unknown name (the valid names listed), or a pattern/predicate matching nothing.
        ValueError: a layer selected twice, or an empty selection.
    """
    modules = {name: module for name, module in model.named_modules() if name}
    valid = list(modules)
    if layers is None:
        selected = default_layer_specs(model)
        if not selected:
            raise ValueError("no layers to measure: the model has no Linear/Conv modules; pass layers=[...]")
    else:
        items = [layers] if isinstance(layers, (str, LayerSpec)) or callable(layers) else list(layers)
        selected = []
        for item in items:
            if isinstance(item, str):
                item = LayerSpec(item)
            if isinstance(item, LayerSpec):
                if _is_glob(item.name):
                    regex = _glob_regex(item.name)
                    hits = [n for n in valid if regex.match(n)]
                    if not hits:
                        raise KeyError(f"layer pattern {item.name!r} matches no module; valid names are: {valid}")
                    selected += [dataclasses.replace(item, name=n) for n in hits]
                elif item.name not in modules:
                    raise KeyError(f"unknown layer name(s) [{item.name!r}]; valid names are: {valid}")
                else:
                    selected.append(item)
            elif callable(item):
                hits = [n for n, m in modules.items() if item(n, m)]
                if not hits:
                    raise KeyError(f"the layer predicate {getattr(item, '__name__', item)!r} selects no module")
                selected += [LayerSpec(n) for n in hits]
            else:
                raise TypeError(f"layers must be names, glob patterns, LayerSpecs or predicates, got {item!r}")
        unknown = [s.name for s in selected if s.name not in modules]
        if unknown:
            raise KeyError(f"unknown layer name(s) {unknown}; valid names are: {valid}")
    names = [s.name for s in selected]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"layer name(s) {duplicates} requested more than once")
    if not selected:
        raise ValueError("no layers to measure: pass layers=[...]")
    return [s.filled(**defaults) for s in selected]


def resolve_layers(model: nn.Module, layers: Iterable[str] | None) -> list[str]:
    """Validate layer names (or patterns/specs) against ``model.named_modules()``; return the names.

    ``None`` means :func:`default_layers`.

    Raises:
        KeyError: an unknown name, with the valid names listed.
        ValueError: a duplicate name (no double registration) or an empty selection.
    """
    return [spec.name for spec in resolve_layer_specs(model, layers)]


# --------------------------------------------------------------------------- reduction
def _describe(value: Any) -> str:
    """The fields of a non-tensor value with their shapes, for error messages."""

    def shape(v: Any) -> str:
        return f"Tensor{tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__

    if isinstance(value, Mapping):  # HF ModelOutput is an OrderedDict
        return f"{type(value).__name__} with fields " + ", ".join(f"{k}: {shape(v)}" for k, v in value.items())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"{type(value).__name__} with fields " + ", ".join(
            f"{f.name}: {shape(getattr(value, f.name))}" for f in dataclasses.fields(value))
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of {len(value)}: [" + ", ".join(shape(v) for v in value) + "]"
    return type(value).__name__


def _example_fn(value: Any) -> str:
    if isinstance(value, Mapping) and value:
        return f"lambda o: o.{next(iter(value))}" if hasattr(value, next(iter(value))) else \
            f"lambda o: o[{next(iter(value))!r}]"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return f"lambda o: o.{dataclasses.fields(value)[0].name}"
    return "lambda o: o[0]"


def to_features(tensor: Tensor, pool: str) -> Tensor:
    """Reshape a channel-first activation to (B, D): flatten, or average over dims ≥ 2 (``pool="avg"``)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if tensor.ndim < 2:
        raise ValueError(f"cannot turn an activation of shape {tuple(tensor.shape)} into (B, D) features")
    if tensor.ndim == 2:
        return tensor
    if pool == "avg":
        return tensor.flatten(2).mean(dim=2)  # (B, C, *spatial) -> (B, C)
    return tensor.flatten(1)  # (B, C, *spatial) -> (B, C·prod(spatial))


def _token_positions(mask: Tensor, last: bool) -> Tensor:
    """(B,) index of the first / last position with mask 1 in each row."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device).expand_as(mask)
    if last:
        return torch.where(mask, pos, -1).amax(dim=1)
    return torch.where(mask, pos, t).amin(dim=1)


def reduce_activation(
    value: Tensor,
    *,
    name: str,
    mode: str,
    tokens: str | None,
    pool: str | None,
    channels_first: bool,
    mask: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Reduce one captured activation to (N, D) features; see the module docstring.

    Args:
        value: the captured tensor (B, ...).
        name, mode: for error messages.
        tokens: the token reduction for (B, T, H) sequences.
        pool: ``"avg"`` / ``"flatten"`` (``None``: ``"avg"``) for channel-first maps.
        channels_first: whether a rank-3 activation is a (B, C, L) map (its module is a 1-D conv-type
            module, or the spec set ``pool`` explicitly).
        mask: (B, T) attention mask (1 = real token) or ``None``.

    Returns:
        ``(features, token_valid)``: features (B, D), or for ``tokens="all"`` (B·T, D) with
        ``token_valid`` the (B·T,) boolean mask of unmasked tokens (``None`` otherwise).
    """
    if value.ndim < 2:
        raise ValueError(f"layer {name!r} {mode} has shape {tuple(value.shape)}: cannot make (samples, D) features")
    if value.ndim == 2:
        return value, None
    if value.ndim == 3 and not channels_first:
        b, t, _ = value.shape
        if tokens is None:
            raise ValueError(
                f"layer {name!r} {mode} has shape {tuple(value.shape)}: a (batch, tokens, hidden) sequence needs "
                f"a token reduction; pass tokens='cls' | 'first' | 'last' | 'mean' | 'all' (to measure, or for this "
                f"layer: LayerSpec({name!r}, tokens=...)); for a channel-first (batch, channels, length) map pass "
                f"LayerSpec({name!r}, pool='avg' | 'flatten')"
            )
        if mask is not None:
            mask = torch.as_tensor(mask, device=value.device)
            if mask.shape != (b, t):
                raise ValueError(
                    f"layer {name!r} {mode} has {t} tokens per sample (shape {tuple(value.shape)}) but the attention "
                    f"mask has shape {tuple(mask.shape)}; measure this layer with tokens='cls' or pass a batch_fn that "
                    f"drops 'attention_mask'"
                )
            mask = mask != 0
            if not bool(mask.any(dim=1).all()):
                raise ValueError(f"layer {name!r}: some samples have an all-zero attention mask (no token to measure)")
        rows = torch.arange(b, device=value.device)
        if tokens == "cls":
            return value[:, 0], None
        if tokens in ("first", "last"):
            if mask is None:
                return value[:, 0 if tokens == "first" else -1], None
            return value[rows, _token_positions(mask, tokens == "last")], None
        if tokens == "mean":
            if mask is None:
                return value.mean(dim=1), None
            w = mask.to(value.dtype)[:, :, None]  # (B, T, 1)
            return (value * w).sum(dim=1) / w.sum(dim=1), None
        # "all": every (unmasked) token is a sample
        valid = mask.reshape(-1) if mask is not None else None
        return value.reshape(b * t, value.shape[2]), valid
    return to_features(value, pool or "avg"), None


class Probe:
    """Context manager capturing the inputs or outputs of named modules on every forward pass.

    Args:
        model: any ``nn.Module``.
        layers: names, glob patterns, predicates or :class:`LayerSpec` objects; ``None`` for the
            default layer set (:func:`default_layer_specs`).
        mode: ``"input"`` (the first positional input, as Rangamani et al. 2023 take each layer's
            input) or ``"output"``, for layers whose spec does not say.
        pool: ``"flatten"`` or ``"avg"`` for channel-first maps, for layers whose spec does not say.
        tokens: the token reduction for (B, T, H) sequences, for layers whose spec does not say.
        output_fn: maps a captured non-tensor value to a tensor, for layers whose spec does not say.

    After each forward, ``features[name]`` holds that layer's detached (N, D) tensor of the latest
    call (a module called several times in one forward keeps the last call) and, for
    ``tokens="all"`` layers, ``token_valid[name]`` the (N,) mask of unmasked tokens. Set
    :attr:`mask` (a (B, T) attention mask) before the forward to have the token reductions respect it.
    ``detach_features=False`` keeps the autograd graph (for regularisers that use the features).
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector | Iterable[LayerSelector] | None = None,
        *,
        mode: str = "input",
        pool: str | None = None,
        tokens: str | None = None,
        output_fn: Callable[[Any], Any] | None = None,
        detach_features: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if pool is not None and pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        if tokens is not None and tokens not in TOKENS:
            raise ValueError(f"tokens must be one of {TOKENS} or None, got {tokens!r}")
        self.model = model
        self.specs = resolve_layer_specs(model, layers, mode=mode, tokens=tokens, output_fn=output_fn)
        self.layers = [spec.name for spec in self.specs]
        self.mode = mode
        self.pool = pool
        self.tokens = tokens
        self.detach_features = detach_features
        self.mask: Tensor | None = None
        self.features: dict[str, Tensor] = {}
        self.token_valid: dict[str, Tensor | None] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}  # per-sample shape of each captured activation, before pooling
        self.batch_sizes: dict[str, int] = {}  # B of each captured activation (its first dimension)
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, spec: LayerSpec, module: nn.Module):
        name = spec.name
        channels_first = isinstance(module, _CHANNEL_FIRST_1D) or spec.pool is not None
        pool = spec.pool or self.pool

        def capture(mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            if spec.mode == "input":
                if args:
                    value = args[0]
                else:
                    tensors = [v for v in kwargs.values() if isinstance(v, Tensor)]
                    if not tensors:
                        raise TypeError(f"layer {name!r} was called without a tensor input; measure its output")
                    value = kwargs.get("hidden_states", kwargs.get("input", tensors[0]))
            else:
                value = output
            if spec.output_fn is not None:
                value = spec.output_fn(value)
            if not isinstance(value, Tensor):
                raise TypeError(
                    f"layer {name!r} {spec.mode} is a {_describe(value)}, not a tensor; pass an output_fn that picks "
                    f"the features, e.g. LayerSpec({name!r}, output_fn={_example_fn(value)})"
                )
            if self.detach_features:
                value = value.detach()
            self.shapes[name] = tuple(value.shape[1:])
            self.batch_sizes[name] = int(value.shape[0])
            feats, valid = reduce_activation(value, name=name, mode=spec.mode, tokens=spec.tokens, pool=pool,
                                             channels_first=channels_first, mask=self.mask)
            self.features[name] = feats
            self.token_valid[name] = valid

        return capture

    def attach(self) -> Probe:
        """Register the hooks (idempotent: a second call does not register twice)."""
        if self._handles:
            return self
        modules = dict(self.model.named_modules())
        try:
            for spec in self.specs:
                module = modules[spec.name]
                self._handles.append(module.register_forward_hook(self._hook(spec, module), with_kwargs=True))
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
        self.token_valid = {}

    def __enter__(self) -> Probe:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


def specs_summary(specs: Sequence[LayerSpec]) -> dict[str, dict[str, Any]]:
    """``{name: {mode, pool, tokens, output_fn}}`` for report info (callables by name)."""
    return {
        s.name: {"mode": s.mode, "pool": s.pool, "tokens": s.tokens,
                 "output_fn": None if s.output_fn is None else getattr(s.output_fn, "__name__", repr(s.output_fn))}
        for s in specs
    }
