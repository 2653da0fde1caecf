"""Feature files: features computed anywhere (another framework, a cluster job), measured here.

A feature file is ``.npz`` (read with ``allow_pickle=False``), ``.safetensors``, or ``.pt`` (a dict of
tensors, read with ``torch.load(weights_only=True)``) holding ``features`` (N×D float), ``labels`` (N
integers, or N×K 0/1 for multi-label, K ≥ 2), and optionally ``weight`` (K×D) and ``bias`` (K) of the
classifier. Several layers in one file: ``features/<layer>`` keys (what ``nclens extract`` writes,
with its provenance in the safetensors metadata), all sharing ``labels``.

Without ``weight``, labels may be any integers (e.g. 3, 7, 42): the classes are the distinct values,
in ascending order. With ``weight``, label k is row k of ``weight`` (0 <= k < K).

Every file is checked before its arrays are loaded: a zero-byte file, a file that is not the format
its suffix says, an empty archive, a truncated or corrupt one, arrays that need pickle, and a
measurement whose memory estimate exceeds the limit (:func:`estimate_measure_bytes`, from the arrays'
headers — a 2 MB compressed ``.npz`` that would expand to 2 GiB is refused before it expands) are
clear errors.

Example:
    >>> import numpy as np, tempfile, os
    >>> from nclens.core.features import load_feature_file, measure_features
    >>> path = os.path.join(tempfile.mkdtemp(), "f.npz")
    >>> rng = np.random.default_rng(0)
    >>> np.savez(path, features=rng.normal(size=(60, 4)), labels=np.arange(60) % 3 * 7)
    >>> sorted(measure_features(load_feature_file(path)))[:3]
    ['cdnv', 'effective_rank', 'nc1']
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nclens.core.metrics import mismatch_count
from nclens.core.stats import ClassStats, validate_features, validate_labels

__all__ = [
    "FeatureFile",
    "ArrayHeader",
    "load_feature_file",
    "read_feature_file",
    "feature_layers",
    "read_headers",
    "save_feature_file",
    "measure_features",
    "measure_feature_file",
    "estimate_measure_bytes",
    "default_max_bytes",
    "file_sha256",
    "SUFFIXES",
]

_KEYS = ("features", "labels", "weight", "bias")
SUFFIXES = (".npz", ".safetensors", ".pt")
_LAYER_PREFIX = "features/"


@dataclass(frozen=True)
class FeatureFile:
    """Contents of a feature file (tensors on the CPU) for one layer.

    Attributes:
        features: (N, D) floating features.
        labels: (N,) integer labels or (N, K) multi-hot.
        weight, bias: the classifier, if the file has one.
        layer: the layer name (``features/<layer>`` key), ``None`` for the plain ``features`` key.
        provenance: where the numbers came from (path, SHA-256, size, N, D, K, dtype, file metadata).
    """

    features: Tensor
    labels: Tensor
    weight: Tensor | None = None
    bias: Tensor | None = None
    layer: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def multilabel(self) -> bool:
        """Whether labels are an N×K 0/1 matrix (multi-label)."""
        return self.labels.ndim == 2


@dataclass(frozen=True)
class ArrayHeader:
    """Shape and dtype of one stored array, read without loading it."""

    shape: tuple[int, ...]
    dtype: str
    itemsize: int

    @property
    def nbytes(self) -> int:
        """Bytes of the array once loaded."""
        return int(np.prod(self.shape, dtype=np.int64)) * self.itemsize if self.shape else self.itemsize


# --------------------------------------------------------------------------- checks before loading
def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"feature file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a feature file")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"unsupported feature file {path.name!r}: expected a .npz, .safetensors or .pt file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a {path.suffix} feature file")


def _npy_header(handle: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    else:
        shape, _, dtype = np.lib.format._read_array_header(handle, version)  # noqa: SLF001 - version 3.0
    return tuple(int(s) for s in shape), np.dtype(dtype)


def read_headers(path: str | os.PathLike[str]) -> dict[str, ArrayHeader]:
    """``{key: ArrayHeader}`` of a feature file's arrays, read from the headers only (nothing is loaded).

    Raises:
        ValueError: an empty, truncated, corrupt or mislabelled file, or an array that needs pickle.
    """
    path = Path(path)
    _check_file(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is not a .npz archive (not a zip file; a text or .npy file renamed?)")
        out: dict[str, ArrayHeader] = {}
        try:
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.filename.endswith(".npy"):
                        continue
                    key = info.filename[: -len(".npy")]
                    with archive.open(info) as handle:
                        try:
                            shape, dtype = _npy_header(handle)
                        except ValueError as exc:
                            raise ValueError(f"{path}: member {info.filename!r} is not a .npy array ({exc})") from exc
                    if dtype.hasobject:
                        raise ValueError(
                            f"{path}: array {key!r} holds Python objects (dtype {dtype}) that need pickle to load; "
                            f"pickle is refused for safety. Save plain numeric arrays "
                            f"(np.savez(path, features=..., labels=...))"
                        )
                    out[key] = ArrayHeader(shape, dtype.str, dtype.itemsize)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ValueError(f"{path} is truncated or corrupt: {exc}") from exc
        if not out:
            raise ValueError(f"{path} holds no arrays (an empty .npz); expected keys {list(_KEYS)}")
        return out
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                heads = {}
                for key in handle.keys():
                    part = handle.get_slice(key)
                    dtype = str(part.get_dtype())
                    shape = tuple(int(s) for s in part.get_shape())
                    heads[key] = ArrayHeader(shape, dtype, _safetensors_itemsize(dtype))
                return heads
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"cannot read {path} as .safetensors (truncated, corrupt or another format): {exc}") \
                from exc
    return {}  # .pt: a pickle container; its tensors are only known after the weights-only load


def _safetensors_itemsize(dtype: str) -> int:
    digits = "".join(ch for ch in dtype if ch.isdigit())
    return max(1, int(digits) // 8) if digits else 1


def default_max_bytes() -> int:
    """The memory limit of a feature-file measurement: ``NCLENS_MAX_BYTES`` or 80 % of physical memory."""
    raw = os.environ.get("NCLENS_MAX_BYTES")
    if raw:
        try:
            value = int(float(raw))
        except ValueError as exc:
            raise ValueError(f"NCLENS_MAX_BYTES must be a number of bytes, got {raw!r}") from exc
        if value <= 0:
            raise ValueError(f"NCLENS_MAX_BYTES must be positive, got {raw!r}")
        return value
    try:
        return int(0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 16 * 2**30


def estimate_measure_bytes(
    n: int, d: int, k: int, itemsize: int, *, scatter: str = "full", batch_size: int = 65536, arrays: int = 0
) -> dict[str, int]:
    """Peak-memory estimate of measuring an N×D feature array with K classes, in bytes.

    ``arrays`` (the loaded arrays) + the float64 batch workspace (2·min(N, B)·D·8) + the per-class
    state (4·K·D·8: shifts, shifted sums, means, sums) + with ``scatter="full"`` three D×D float64
    matrices (the scatter, its centred view and the eigen-decomposition of the metrics).
    """
    batch = min(n, batch_size)
    parts = {
        "arrays": int(arrays),
        "batch workspace": 2 * batch * d * 8,
        "class statistics": 4 * max(k, 1) * d * 8,
        "D×D statistics": 3 * d * d * 8 if scatter == "full" else 0,
    }
    parts["total"] = sum(parts.values())
    return parts


def _check_memory(path: Path, heads: dict[str, ArrayHeader], max_bytes: int, scatter: str, batch_size: int) -> None:
    feats = [h for key, h in heads.items() if key == "features" or key.startswith(_LAYER_PREFIX)]
    if not feats:
        return
    arrays = sum(h.nbytes for h in heads.values())
    widest = max(feats, key=lambda h: h.shape[-1] if h.shape else 0)
    if len(widest.shape) != 2:
        return  # the shape error comes with the validation after loading (cheap: a bad shape is small)
    n, d = widest.shape
    labels = heads.get("labels")
    k = heads["weight"].shape[0] if "weight" in heads and heads["weight"].shape else (
        labels.shape[1] if labels is not None and len(labels.shape) == 2 else min(n, 2**16))
    est = estimate_measure_bytes(n, d, k, widest.itemsize, scatter=scatter, batch_size=batch_size, arrays=arrays)
    if est["total"] > max_bytes:
        detail = ", ".join(f"{name} {value / 2**30:.2f} GiB" for name, value in est.items()
                           if name != "total" and value)
        raise MemoryError(
            f"measuring {path.name} (N={n}, D={d}) needs about {est['total'] / 2**30:.2f} GiB ({detail}), over the "
            f"limit of {max_bytes / 2**30:.2f} GiB; nothing was loaded. Use --trace-only (no D×D statistics), a "
            f"smaller --batch-size, pooled features, or raise the limit (--max-memory GiB or NCLENS_MAX_BYTES)"
        )


# --------------------------------------------------------------------------- loading
def _read_arrays(path: Path, wanted: set[str] | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The arrays (and file metadata) of a checked feature file."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files if wanted is None or key in wanted}, {}
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise ValueError(f"{path} holds arrays that need pickle to load; pickle is refused for safety") from exc
            raise ValueError(f"cannot read {path} as .npz: {exc}") from exc
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise ValueError(f"{path} is truncated or corrupt: {exc}") from exc
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = dict(handle.metadata() or {})
                return {key: handle.get_tensor(key) for key in handle.keys() if wanted is None or key in wanted}, meta
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise ValueError(f"cannot read {path} as .safetensors: {exc}") from exc
    import pickle

    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a .pt file saved by torch.save (not a zip archive: truncated, or another "
                         f"format renamed?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} holds objects beyond tensors, which a weights-only load refuses (for safety); save a dict of "
            f"tensors: torch.save({{'features': f, 'labels': y}}, path)"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a readable .pt file (truncated or corrupt?): {str(exc).splitlines()[0]}") \
            from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ValueError(f"{path} must hold a dict of tensors with keys {list(_KEYS)}, got {type(obj).__name__}")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    arrays = {k: v for k, v in obj.items() if isinstance(v, Tensor) and (wanted is None or k in wanted)}
    return arrays, {str(k): str(v) for k, v in meta.items()}


def _layer_key(layer: str | None) -> str:
    return "features" if layer in (None, "") else f"{_LAYER_PREFIX}{layer}"


def feature_layers(path: str | os.PathLike[str]) -> list[str | None]:
    """Layers of a feature file: ``None`` for ``features``, then each ``features/<layer>`` name."""
    path = Path(path)
    heads = read_headers(path)
    keys = list(heads) if heads else list(_read_arrays(path, None)[0])
    layers: list[str | None] = [None] if "features" in keys else []
    layers += [k[len(_LAYER_PREFIX):] for k in keys if k.startswith(_LAYER_PREFIX)]
    return layers or [None]  # no features at all: loading says which keys are missing


def _validate(path: Path, arrays: dict[str, Any], layer: str | None, provenance: dict[str, Any]) -> FeatureFile:
    key = _layer_key(layer)
    missing = [k for k in (key, "labels") if k not in arrays]
    if missing:
        raise ValueError(
            f"{path.name} lacks {missing}; it has {sorted(arrays)} (expected keys {list(_KEYS)}, several layers as "
            f"'features/<layer>')"
        )
    tensors = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v for k, v in arrays.items()}
    features = validate_features(tensors[key], name=key if layer else "features")
    n, d = features.shape
    raw_labels = tensors["labels"]
    if raw_labels.ndim == 2:
        if raw_labels.shape[0] != n:
            raise ValueError(f"labels has {raw_labels.shape[0]} rows but features have {n}")
        if raw_labels.shape[1] == 1:
            raise ValueError(
                f"labels has shape ({n}, 1): one column is not a multi-label set (that needs N×K 0/1 with K >= 2). "
                f"Save class labels as a 1-D array of N integers (labels.squeeze(1)); nothing was assumed"
            )
        if not bool(((raw_labels == 0) | (raw_labels == 1)).all()):
            raise ValueError("2-D labels must be a multi-hot 0/1 matrix (N×K)")
        labels = raw_labels.to(torch.long)
    else:
        labels = validate_labels(raw_labels, n)
    weight = tensors.get("weight")
    bias = tensors.get("bias")
    if weight is not None:
        weight = torch.as_tensor(weight)
        if weight.ndim != 2 or weight.shape[1] != d:
            raise ValueError(f"weight must be K×D with D={d}, got shape {tuple(weight.shape)}")
        if not weight.is_floating_point() or not bool(torch.isfinite(weight).all()):
            raise ValueError("weight must be a finite floating-point matrix")
        k = weight.shape[0]
        if labels.ndim == 1 and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= k):
            raise ValueError(
                f"with weight of K={k} rows, labels must lie in [0, {k - 1}]; got [{int(labels.min())}, "
                f"{int(labels.max())}]"
            )
        if labels.ndim == 2 and labels.shape[1] != k:
            raise ValueError(f"multi-hot labels have {labels.shape[1]} columns but weight has K={k} rows")
    if bias is not None:
        if weight is None:
            raise ValueError("bias given without weight")
        bias = torch.as_tensor(bias)
        if bias.shape != (weight.shape[0],) or not bool(torch.isfinite(bias).all()):
            raise ValueError(f"bias must be a finite vector of shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    k = int(weight.shape[0]) if weight is not None else (
        int(labels.shape[1]) if labels.ndim == 2 else int(torch.unique(labels).numel()))
    prov = {**provenance, "layer": layer, "n": int(n), "d": int(d), "k": k, "dtype": str(features.dtype).replace(
        "torch.", "")}
    return FeatureFile(features, labels, weight, bias, layer, prov)


def _nclens_version() -> str:
    """The running nclens's version (the package root is loaded whenever core is; no import upwards)."""
    import sys

    root = sys.modules.get("nclens")
    if root is not None and hasattr(root, "__version__"):
        return str(root.__version__)
    from importlib import metadata

    return metadata.version("nclens")


def read_feature_file(
    path: str | os.PathLike[str],
    layers: list[str | None] | None = None,
    *,
    max_bytes: int | None = None,
    scatter: str = "full",
    batch_size: int = 65536,
) -> dict[str | None, FeatureFile]:
    """Check, load and validate a feature file: ``{layer: FeatureFile}`` (``None`` = the ``features`` key).

    The headers are checked (format, pickle, the memory estimate against ``max_bytes``, default
    :func:`default_max_bytes`) before any array is loaded; the file is read once for all layers.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong format, an empty/zero-byte/truncated/corrupt file, pickled content, missing keys,
            bad shapes, NaN/Inf, non-integer labels, (N, 1) labels.
        MemoryError: the measurement would need more memory than ``max_bytes``.
    """
    path = Path(path)
    heads = read_headers(path)
    _check_memory(path, heads, default_max_bytes() if max_bytes is None else int(max_bytes), scatter, batch_size)
    wanted = None if layers is None else {_layer_key(layer) for layer in layers} | {"labels", "weight", "bias"}
    arrays, meta = _read_arrays(path, wanted)
    if layers is None:
        layers = [None] if "features" in arrays else []
        layers += [k[len(_LAYER_PREFIX):] for k in arrays if k.startswith(_LAYER_PREFIX)]
        if not layers:
            layers = [None]  # the error says which keys are missing
    provenance = {"file": str(path), "sha256": file_sha256(path), "bytes": path.stat().st_size,
                  "nclens": _nclens_version(), "metadata": meta}
    return {layer: _validate(path, arrays, layer, provenance) for layer in layers}


def load_feature_file(path: str | os.PathLike[str], layer: str | None = None, **kwargs: Any) -> FeatureFile:
    """Load and validate one layer of a feature file (``None``: the ``features`` key).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong format, pickled content, missing keys, bad shapes, NaN/Inf, non-integer labels.
        MemoryError: the measurement would need more memory than the limit.
    """
    return read_feature_file(path, [layer], **kwargs)[layer]


def save_feature_file(
    path: str | os.PathLike[str],
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    weight: Tensor | np.ndarray | None = None,
    bias: Tensor | np.ndarray | None = None,
    *,
    layers: dict[str, Tensor | np.ndarray] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write a feature file (``.npz``, ``.safetensors`` or ``.pt``) atomically.

    ``layers`` adds ``features/<layer>`` arrays; ``metadata`` (strings) goes into the safetensors header
    (or a ``metadata`` dict of a ``.pt``; ``.npz`` has no metadata).
    """
    import io

    from nclens.core.io import atomic_write_bytes

    path = Path(path)
    arrays: dict[str, Any] = {"features": features, "labels": labels, "weight": weight, "bias": bias}
    arrays.update({_layer_key(name): value for name, value in (layers or {}).items()})
    arrays = {k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v))
              for k, v in arrays.items() if v is not None}
    suffix = path.suffix.lower()
    if suffix == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write_bytes(path, buffer.getvalue())
    if suffix == ".safetensors":
        from safetensors.numpy import save

        return atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                             metadata=dict(metadata or {}) or None))
    if suffix == ".pt":
        buffer = io.BytesIO()
        obj: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        if metadata:
            obj["metadata"] = dict(metadata)
        torch.save(obj, buffer)
        return atomic_write_bytes(path, buffer.getvalue())
    raise ValueError(f"unsupported feature file {path.name!r}: expected .npz, .safetensors or .pt")


# --------------------------------------------------------------------------- measuring
def measure_feature_file(
    data: FeatureFile,
    *,
    batch_size: int = 65536,
    scatter: str = "full",
    min_class_count: int = 1,
    metrics: list[str] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """NC metrics of a feature file and how they were taken: ``(metrics, info)``.

    Streams the features through :class:`ClassStats` in batches; the rare-class policy of
    :func:`nclens.core.measure.layer_metrics` applies (``info["excluded"]``, ``info["notes"]``). Keys
    are the metric names of the registry (classifier metrics and nc4 only when ``weight`` is present).
    Multi-label files (N×K labels) give the multi-label metrics of :mod:`nclens.core.metrics.multilabel`.
    """
    from nclens.core.measure import layer_metrics

    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if data.multilabel:
        from nclens.core.metrics.multilabel import compute_multilabel_metrics

        return compute_multilabel_metrics(data.features, data.labels, weight=data.weight), {"excluded": {}, "notes": []}
    k = data.weight.shape[0] if data.weight is not None else None
    stats = ClassStats(num_classes=k, scatter=scatter)
    n = data.features.shape[0]
    for start in range(0, n, batch_size):
        stats.update(data.features[start : start + batch_size], data.labels[start : start + batch_size])
    weight = data.weight.to(torch.float64) if data.weight is not None else None
    out, info = layer_metrics(stats, weight, fixed_classes=k is not None, min_class_count=min_class_count,
                              names=metrics)
    if data.weight is not None:
        keep = (stats.counts > 0) & (stats.counts >= min_class_count)
        rows = stats.label_values[keep]
        w, b = data.weight.index_select(0, rows), None if data.bias is None else data.bias.index_select(0, rows)
        means = stats.means[keep]
        bad = seen = 0
        for start in range(0, n, batch_size):
            labels = data.labels[start : start + batch_size]
            sel = torch.isin(labels, rows)
            if bool(sel.any()):
                count, m = mismatch_count(data.features[start : start + batch_size][sel], w, b, means)
                bad, seen = bad + count, seen + m
        out["nc4_ncc_mismatch"] = bad / seen if seen else float("nan")
    from nclens.core.metrics.registry import order_columns

    return {name: out[name] for name in order_columns(out)}, info


def measure_features(data: FeatureFile, *, batch_size: int = 65536, scatter: str = "full", **kwargs: Any) -> dict[
        str, float]:
    """All NC metrics of a feature file as a flat ``{metric: value}`` (see :func:`measure_feature_file`)."""
    return measure_feature_file(data, batch_size=batch_size, scatter=scatter, **kwargs)[0]
