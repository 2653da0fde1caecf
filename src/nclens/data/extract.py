"""Features of named layers on a dataset, written to one ``.safetensors`` file — resumable by chunk.

The samples are cut into chunks of ``chunk_size`` rows and every chunk into batches of
``batch_size`` rows (batch boundaries fixed inside each chunk), so the features of a chunk do not
depend on which chunks were computed before. Each finished chunk is written atomically to
``<out>.parts/chunk-NNNNN.safetensors`` beside the output, after a ``manifest.json`` that pins what
is being extracted; a run that is interrupted (Ctrl-C, SIGKILL, a full disk) and started again with
the same arguments skips the chunks on disk and ends with the same file, byte for byte on the same
machine and thread count, as a run that was never interrupted. The parts folder is removed once the
output is written.

The output (:func:`read_extracted` reads it back; ``nclens measure`` reads ``features``):

* ``features`` — (N, D) float32 features of the default layer;
* ``features/<layer>`` — (N, D_layer) float32 for every extracted layer (the default included);
* ``labels`` — (N,) int64; ``indices`` — (N,) int64 rows of the samples in the full split;
* metadata (strings): ``format``, ``default_layer``, ``layers`` (JSON list) and the provenance the
  caller passes (model, dataset, split, per_class, seed, preprocessing, versions, ...).

Example:
    >>> import tempfile, torch
    >>> from torch import nn
    >>> from nclens.data.extract import TensorSource, extract_features, read_extracted
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> src = TensorSource(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)), torch.arange(50) % 5)
    >>> out = extract_features(net, src, ["1", "2"], tempfile.mkdtemp() + "/f.safetensors",
    ...                        default_layer="1", chunk_size=16, batch_size=8)
    >>> f = read_extracted(out)
    >>> tuple(f["features"].shape), sorted(f["layers"]), f["metadata"]["default_layer"]
    ((50, 8), ['1', '2'], '1')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

__all__ = [
    "FORMAT",
    "ExtractProgress",
    "Source",
    "TensorSource",
    "extract_features",
    "parts_dir",
    "read_extracted",
    "safetensors_bytes",
]

FORMAT = "nclens-features/1"
_MANIFEST = "manifest.json"


class Source(Protocol):
    """What :func:`extract_features` reads: labels and row batches (e.g. :class:`nclens.data.images.ImageSet`)."""

    labels: Tensor
    indices: Tensor

    def batch(self, rows: slice) -> Any: ...


@dataclass(frozen=True)
class TensorSource:
    """In-memory inputs (N, ...) and labels (N,) as a :class:`Source`; ``indices`` default 0..N−1."""

    inputs: Tensor
    labels: Tensor
    indices: Tensor | None = None

    def __post_init__(self) -> None:
        if self.inputs.shape[0] != self.labels.shape[0]:
            raise ValueError(f"inputs have {self.inputs.shape[0]} rows but labels {self.labels.shape[0]}")
        if self.indices is None:
            object.__setattr__(self, "indices", torch.arange(self.labels.shape[0]))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, rows: slice) -> Tensor:
        """Inputs of ``rows``."""
        return self.inputs[rows]


@dataclass(frozen=True)
class ExtractProgress:
    """Passed to the progress callback after every chunk."""

    done: int  # samples whose features exist (computed now or found on disk)
    total: int
    computed: int  # samples computed in this call
    seconds: float  # time spent computing them
    chunk: int
    chunks: int
    resumed: bool  # this chunk was found on disk


def parts_dir(out: str | os.PathLike[str]) -> Path:
    """The folder beside ``out`` holding its finished chunks while an extraction runs."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


_DTYPES = {torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL"}


def safetensors_bytes(tensors: Mapping[str, Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A ``.safetensors`` file as bytes, deterministically: the same tensors and metadata give the same bytes.

    (``safetensors.torch.save`` orders the metadata through a hash map, so its bytes vary from call to
    call.) Layout of the format: an 8-byte little-endian header length, a JSON header
    ``{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}`` padded
    with spaces to a multiple of 8 bytes, then the tensors' little-endian bytes back to back, here
    in sorted name order.
    """
    import json
    import struct

    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        if t.dtype not in _DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot hold")
        blob = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _digest(t: Tensor) -> str:
    return hashlib.sha256(t.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def _check_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    from nclens.core.io import write_json

    path = folder / _MANIFEST
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        diffs = sorted(k for k in set(saved) | set(manifest) if saved.get(k) != manifest.get(k))
        if diffs:
            detail = "; ".join(f"{k}: {saved.get(k)!r} -> {manifest.get(k)!r}" for k in diffs)
            raise ValueError(
                f"{folder} holds the chunks of a different extraction ({detail}); rerun with the same options to "
                f"resume it, or delete {folder} to start over"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    write_json(path, manifest)


def _read_chunk(path: Path, layers: Sequence[str], rows: int) -> dict[str, Tensor] | None:
    """A finished chunk, or ``None`` when it is absent or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
    except (SafetensorError, OSError):
        return None
    keys = [f"features/{name}" for name in layers]
    if any(k not in data or data[k].shape[0] != rows for k in keys):
        return None
    return {name: data[f"features/{name}"] for name in layers}


@torch.no_grad()
def extract_features(
    model: nn.Module,
    source: Source,
    layers: Sequence[str],
    out: str | os.PathLike[str],
    *,
    default_layer: str | None = None,
    preprocess: Callable[[Any], Tensor] | None = None,
    mode: str = "output",
    pool: str = "avg",
    batch_size: int = 64,
    chunk_size: int = 1000,
    metadata: Mapping[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[ExtractProgress], None] | None = None,
) -> Path:
    """Run ``model`` over ``source`` and write the features of ``layers`` to ``out`` (``.safetensors``).

    Args:
        model: any ``nn.Module`` (put in eval mode for the pass, then restored).
        source: labels and input batches (:class:`~nclens.data.images.ImageSet`, :class:`TensorSource`).
        layers: module names (``named_modules()``) whose ``mode`` (``"output"`` or ``"input"``) is kept;
            conv maps are averaged over space (``pool="avg"``) or flattened (``"flatten"``).
        out: the ``.safetensors`` file to write (atomically, at the end).
        default_layer: the layer stored as ``features`` (default: the last of ``layers``).
        preprocess: applied to every ``source.batch(rows)`` before the forward pass.
        batch_size, chunk_size: rows per forward pass and per resumable chunk.
        metadata: provenance stored as string metadata (non-strings JSON-encoded); part of the
            manifest, so a resume with different provenance is refused.
        device: where the model runs (default: the device of its first parameter).
        progress: called with an :class:`ExtractProgress` after every chunk.

    Returns:
        ``out``.

    Raises:
        ValueError: bad sizes or names, an ``out`` that is not ``.safetensors``, or a parts folder
            left by a different extraction.
    """
    from nclens.core.io import atomic_write_bytes
    from nclens.core.probe import Probe

    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise ValueError(f"the output must be a .safetensors file, got {out.name!r}")
    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be positive, got {batch_size} and {chunk_size}")
    layers = list(layers)
    default_layer = layers[-1] if default_layer is None and layers else default_layer
    if default_layer not in layers:
        raise ValueError(f"default_layer {default_layer!r} is not among the extracted layers {layers}")
    n = int(source.labels.shape[0])
    if n == 0:
        raise ValueError("the source holds no samples")
    labels = source.labels.to(torch.int64).cpu()
    indices = source.indices.to(torch.int64).cpu()
    meta = {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in (metadata or {}).items()}
    manifest = {
        "format": FORMAT, "layers": layers, "default_layer": default_layer, "mode": mode, "pool": pool,
        "batch_size": batch_size, "chunk_size": chunk_size, "samples": n,
        "labels_sha256": _digest(labels), "indices_sha256": _digest(indices), "metadata": meta,
    }
    folder = parts_dir(out)
    _check_manifest(folder, manifest)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    prep = preprocess if preprocess is not None else (lambda x: x)
    chunks = math.ceil(n / chunk_size)
    done = computed = 0
    seconds = 0.0
    was_training = model.training
    model.eval()
    try:
        with Probe(model, layers, mode=mode, pool=pool) as probe:
            for c in range(chunks):
                lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
                path = folder / f"chunk-{c:05d}.safetensors"
                resumed = _read_chunk(path, layers, hi - lo) is not None
                if not resumed:
                    start = time.perf_counter()
                    parts: dict[str, list[Tensor]] = {name: [] for name in layers}
                    for b in range(lo, hi, batch_size):
                        x = prep(source.batch(slice(b, min(hi, b + batch_size))))
                        probe.clear()
                        model(x.to(device) if isinstance(x, Tensor) else x)
                        for name in layers:
                            if name not in probe.features:
                                raise RuntimeError(f"layer {name!r} was not called in the forward pass")
                            parts[name].append(probe.features[name].to("cpu", torch.float32))
                    tensors = {f"features/{name}": torch.cat(parts[name]).contiguous() for name in layers}
                    atomic_write_bytes(path, safetensors_bytes(tensors))
                    seconds += time.perf_counter() - start
                    computed += hi - lo
                done += hi - lo
                if progress is not None:
                    progress(ExtractProgress(done, n, computed, seconds, c + 1, chunks, resumed))
    finally:
        model.train(was_training)
    merged: dict[str, list[Tensor]] = {name: [] for name in layers}
    for c in range(chunks):
        rows = min(n, (c + 1) * chunk_size) - c * chunk_size
        chunk = _read_chunk(folder / f"chunk-{c:05d}.safetensors", layers, rows)
        if chunk is None:
            raise RuntimeError(f"chunk {c} of {folder} disappeared or was damaged during the run; rerun to redo it")
        for name in layers:
            merged[name].append(chunk[name])
    tensors = {f"features/{name}": torch.cat(merged[name]).contiguous() for name in layers}
    tensors["features"] = tensors[f"features/{default_layer}"].clone()
    tensors["labels"] = labels.contiguous()
    tensors["indices"] = indices.contiguous()
    header = {"format": FORMAT, "default_layer": default_layer, "layers": json.dumps(layers), "mode": mode,
              "pool": pool, **meta}
    atomic_write_bytes(out, safetensors_bytes(tensors, header))
    shutil.rmtree(folder, ignore_errors=True)
    return out


def read_extracted(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An extracted feature file: ``{"features", "labels", "indices", "layers": {name: (N, D)}, "metadata"}``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    data = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    return {
        "features": data["features"],
        "labels": data["labels"],
        "indices": data.get("indices"),
        "layers": {k.split("/", 1)[1]: v for k, v in data.items() if k.startswith("features/")},
        "metadata": metadata,
    }
