"""Run-folder I/O: atomic writes, JSON/JSONL, recorded versions.

Every file nclens writes goes through :func:`atomic_write_bytes`: the bytes go to a temporary file
in the same folder, are flushed and fsync'ed, then renamed over the target, so a reader never sees
a half-written file and a crash leaves the previous version intact.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = write_json(d / "m.json", {"nc1": 0.5})
    >>> read_json(d / "m.json")["nc1"]
    0.5
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "check_output_path",
    "atomic_write_text",
    "write_json",
    "read_json",
    "append_jsonl",
    "read_jsonl",
    "to_jsonable",
    "package_versions",
    "run_folder_lock",
    "RunFolderBusy",
    "write_png",
    "write_csv",
    "csv_text",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + rename).

    Overwriting an existing file keeps its permission bits; a new file gets the usual ``0o666 & ~umask``.
    A failure (read-only folder, ``path`` is a directory, a full disk) removes the temporary file,
    leaves any previous version intact and raises an ``OSError`` that names ``path``.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file to write", str(target))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _named(exc, target) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            mode = stat.S_IMODE(os.stat(target).st_mode)  # keep the permissions of the file we replace
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask  # mkstemp makes 0600; give the usual permissions of a new file
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise _named(exc, target) from None
        raise
    return target


def _named(exc: OSError, target: Path) -> OSError:
    """``exc`` with the target path as its filename (so the message says which file could not be written)."""
    if exc.filename is not None and str(exc.filename) == str(target) and str(exc.strerror or "").startswith("cannot"):
        return exc
    return type(exc)(exc.errno, f"cannot write {target}: {exc.strerror or exc}", str(target))


def check_output_path(out: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]] = (), *,
                      option: str = "output") -> Path:
    """Refuse an output path that is an input (it would be overwritten) or an existing directory.

    Example:
        >>> check_output_path("m.json", ["f.npz"]).name
        'm.json'
        >>> check_output_path("f.npz", ["./f.npz"])
        Traceback (most recent call last):
        ...
        ValueError: output path f.npz is also an input; writing it would replace the input. Choose another path
    """
    target = Path(out)
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{option} path is a directory; give a file path", str(target))
    resolved = target.resolve()
    for item in inputs:
        source = Path(item)
        same = source.resolve() == resolved
        if not same and source.exists() and target.exists():
            same = os.path.samefile(source, target)
        if same:
            raise ValueError(f"{option} path {target} is also an input; writing it would replace the input. "
                             f"Choose another path")
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Convert tensors, numpy values, paths and dataclasses to JSON-ready Python objects.

    Non-finite floats become ``None`` (JSON has no NaN); everything else keeps its value.
    """
    import dataclasses

    import numpy as np

    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()] if value.ndim else to_jsonable(value.item())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return str(value)


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (tensors/arrays converted, NaN written as null)."""
    return atomic_write_text(path, json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n")


def write_png(fig: Any, path: str | os.PathLike[str], *, dpi: int = 120, tight: bool = True) -> Path:
    """Render a matplotlib figure to PNG, close it, and write the bytes atomically."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Iterable[str] | None = None) -> str:
    """Rows as CSV text: ``columns`` (default: every key, in first-seen order); ``None``/NaN as empty cells,
    lists and dicts as JSON."""
    import csv
    import io

    rows = list(rows)
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    columns = list(columns)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        cells = []
        for col in columns:
            value = to_jsonable(row.get(col))
            cells.append("" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else value)
        writer.writerow(cells)
    return buf.getvalue()


def write_csv(
    path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], columns: Iterable[str] | None = None
) -> Path:
    """Write rows as CSV atomically (see :func:`csv_text`)."""
    return atomic_write_text(path, csv_text(rows, columns))


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def append_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> Path:
    """Append records to a JSONL file atomically (the whole file is rewritten via rename)."""
    target = Path(path)
    old = target.read_bytes() if target.exists() else b""
    new = "".join(json.dumps(to_jsonable(r), allow_nan=False) + "\n" for r in records).encode("utf-8")
    return atomic_write_bytes(target, old + new)


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read all records of a JSONL file (an empty list when it does not exist)."""
    target = Path(path)
    if not target.exists():
        return []
    return [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines() if line.strip()]


def package_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Versions of Python, the platform and the packages a run depends on (for reproducibility)."""
    names = ["nclens", "torch", "numpy", "scipy", "scikit-learn", "torch-geometric", "opacus", *extra]
    versions: dict[str, str] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


def run_folder_lock(path: str | os.PathLike[str]):
    """Context manager: an exclusive, non-blocking lock on ``path/.lock`` (fcntl, released on exit or
    when the process dies), so two runs can never write into one run folder at once.

    Raises:
        RunFolderBusy: another live process holds the lock.
    """
    from contextlib import contextmanager

    @contextmanager
    def _lock():
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - non-POSIX: no locking
            yield
            return
        with open(folder / ".lock", "a+") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise RunFolderBusy(
                    f"run folder {str(folder)!r} is in use by another nclens process; wait for it to finish "
                    f"or choose another --out"
                ) from exc
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    return _lock()
