"""Feature files: features computed anywhere (another framework, a cluster job), measured here.

A feature file is ``.npz`` (read with ``allow_pickle=False``) or ``.safetensors`` holding
``features`` (N×D float), ``labels`` (N integers, or N×K 0/1 for multi-label), and optionally
``weight`` (K×D) and ``bias`` (K) of the classifier.

Without ``weight``, labels may be any integers (e.g. 3, 7, 42): the classes are the distinct values,
in ascending order. With ``weight``, label k is row k of ``weight`` (0 <= k < K).

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

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from nclens.core.metrics import MULTICLASS_METRIC_NAMES, compute_metrics, mismatch_count
from nclens.core.stats import ClassStats, validate_features, validate_labels

__all__ = ["FeatureFile", "load_feature_file", "save_feature_file", "measure_features"]

_KEYS = ("features", "labels", "weight", "bias")


@dataclass(frozen=True)
class FeatureFile:
    """Contents of a feature file (tensors on the CPU)."""

    features: Tensor
    labels: Tensor
    weight: Tensor | None = None
    bias: Tensor | None = None

    @property
    def multilabel(self) -> bool:
        """Whether labels are an N×K 0/1 matrix (multi-label)."""
        return self.labels.ndim == 2


def _read_arrays(path: Path) -> dict[str, np.ndarray | Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise ValueError(
                    f"{path} holds object arrays that need pickle to load; pickle is refused for safety. "
                    f"Save plain numeric arrays (np.savez(path, features=..., labels=...))."
                ) from exc
            raise ValueError(f"cannot read {path} as .npz: {exc}") from exc
        except (zipfile.BadZipFile, OSError) as exc:
            raise ValueError(f"cannot read {path} as .npz: {exc}") from exc
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"cannot read {path} as .safetensors: {exc}") from exc
    raise ValueError(f"unsupported feature file {path.name!r}: expected a .npz or .safetensors file")


def load_feature_file(path: str | os.PathLike[str]) -> FeatureFile:
    """Load and validate a feature file.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: wrong format, pickled content, missing keys, bad shapes, NaN/Inf, non-integer labels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    arrays = _read_arrays(path)
    missing = [k for k in ("features", "labels") if k not in arrays]
    if missing:
        raise ValueError(f"{path.name} lacks {missing}; it has {sorted(arrays)} (expected keys {list(_KEYS)})")
    tensors = {k: torch.as_tensor(np.asarray(v)) if not isinstance(v, Tensor) else v for k, v in arrays.items()}
    features = validate_features(tensors["features"])
    n, d = features.shape
    raw_labels = tensors["labels"]
    if raw_labels.ndim == 2:
        if raw_labels.shape[0] != n:
            raise ValueError(f"labels has {raw_labels.shape[0]} rows but features have {n}")
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
    return FeatureFile(features, labels, weight, bias)


def save_feature_file(
    path: str | os.PathLike[str],
    features: Tensor | np.ndarray,
    labels: Tensor | np.ndarray,
    weight: Tensor | np.ndarray | None = None,
    bias: Tensor | np.ndarray | None = None,
) -> Path:
    """Write a feature file (``.npz`` or ``.safetensors``) atomically."""
    import io

    from nclens.core.io import atomic_write_bytes

    path = Path(path)
    arrays = {"features": features, "labels": labels, "weight": weight, "bias": bias}
    arrays = {k: (v.detach().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v))
              for k, v in arrays.items() if v is not None}
    if path.suffix.lower() == ".npz":
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write_bytes(path, buffer.getvalue())
    if path.suffix.lower() == ".safetensors":
        from safetensors.numpy import save

        return atomic_write_bytes(path, save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
    raise ValueError(f"unsupported feature file {path.name!r}: expected .npz or .safetensors")


def measure_features(
    data: FeatureFile,
    *,
    batch_size: int = 65536,
    scatter: str = "full",
) -> dict[str, float]:
    """All NC metrics of a feature file, streamed through :class:`ClassStats` in batches.

    Returns a flat ``{metric: value}`` whose keys are the metric names of the registry (classifier
    metrics and nc4 only when ``weight`` is present). Multi-label files (N×K labels) give the
    multi-label metrics of :mod:`nclens.core.metrics.multilabel`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if data.multilabel:
        from nclens.core.metrics.multilabel import compute_multilabel_metrics

        return compute_multilabel_metrics(data.features, data.labels, weight=data.weight)
    k = data.weight.shape[0] if data.weight is not None else None
    stats = ClassStats(num_classes=k, scatter=scatter)
    n = data.features.shape[0]
    for start in range(0, n, batch_size):
        stats.update(data.features[start : start + batch_size], data.labels[start : start + batch_size])
    metrics = compute_metrics(stats, data.weight)
    if data.weight is not None:
        bad = 0
        for start in range(0, n, batch_size):
            count, _ = mismatch_count(data.features[start : start + batch_size], data.weight, data.bias, stats.means)
            bad += count
        metrics["nc4_ncc_mismatch"] = bad / n
    return {name: metrics[name] for name in MULTICLASS_METRIC_NAMES if name in metrics}
