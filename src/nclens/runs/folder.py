"""One run folder for every kind of experiment.

A run folder holds, whatever the kind:

* ``config.yaml`` — the fully resolved config, with its ``kind`` (written first);
* ``versions.json`` — Python, platform and package versions of the run;
* the kind's own result files (JSONL logs, CSV tables, ``figures/*.png``), every one written atomically;
* ``checkpoint.pt`` (and checkpoints of sub-runs) — loaded with ``torch.load(weights_only=True)``;
* ``summary.json`` — written **last**, with ``kind``, ``name``, ``complete: true`` and the results;
* ``report.html`` — from ``nclens report`` (any kind).

The rules, the same for every kind:

* an exclusive lock (``.lock``, released when the process ends, even by SIGKILL): a second writer is
  refused at once with :class:`~nclens.core.io.RunFolderBusy`;
* a folder that already holds a run is refused unless ``resume=True``; a resume with a config that
  differs from the saved one is refused, naming every differing key (keys the kind declares
  irrelevant, such as ``progress``, are ignored);
* a folder that exists and is not empty but holds no run is refused (nothing of the user's is
  overwritten); ``resume`` on a folder that holds no run yet (a run killed before it wrote its
  config) starts the run afresh;
* temporary files left by a writer that was killed mid-write are removed when the folder is opened.

Under ``torch.distributed`` only rank 0 writes: a :class:`RunFolder` opened with ``writer=False``
reads (config, checkpoints) and ignores every write.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with RunFolder.open(d, kind="demo", config={"name": "x", "epochs": 2}) as run:
    ...     _ = run.append_jsonl("log.jsonl", [{"epoch": 1, "loss": 0.5}])
    ...     _ = run.write_summary({"loss": 0.5})
    >>> RunFolder(d).summary()["complete"]
    True
    >>> RunFolder.open(d, kind="demo", config={"name": "x", "epochs": 3}, resume=True)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: cannot resume ... with a different config: epochs: 2 -> 3
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from nclens.core import io as fio

__all__ = ["RunFolder", "config_diff", "CONFIG", "VERSIONS", "SUMMARY", "CHECKPOINT"]

CONFIG = "config.yaml"
VERSIONS = "versions.json"
SUMMARY = "summary.json"
CHECKPOINT = "checkpoint.pt"
_OWN = {".lock", CONFIG, VERSIONS}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(saved: Mapping[str, Any], new: Mapping[str, Any], ignore: Iterable[str] = ()) -> list[str]:
    """``["key: old -> new", ...]`` for every dotted key whose value differs (``ignore``: dotted keys or suffixes).

    Example:
        >>> config_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}})
        ['a.c: 2 -> 3']
    """
    ignored = tuple(ignore)

    def skip(key: str) -> bool:
        return any(key == i or key.endswith("." + i) for i in ignored)

    a, b = _flatten(dict(saved)), _flatten(dict(new))
    out = []
    for key in dict.fromkeys([*a, *b]):
        if skip(key):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            out.append(f"{key}: {a.get(key, '<absent>')!r} -> {b.get(key, '<absent>')!r}".replace("'", ""))
    return out


class RunFolder:
    """A run folder (see the module docstring). Open it with :meth:`open` to run; plain construction reads.

    Args:
        path: the folder.
        writer: ``False`` makes every write a no-op (non-zero ranks under torch.distributed).
    """

    def __init__(self, path: str | os.PathLike[str], *, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = bool(writer)
        self._lock: contextlib.ExitStack | None = None

    # ---------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        kind: str,
        config: Mapping[str, Any],
        resume: bool = False,
        ignore_on_resume: Iterable[str] = (),
        writer: bool = True,
    ) -> RunFolder:
        """Lock ``path`` and record the run (or check the resumed one); use as a context manager.

        Raises:
            RunFolderBusy: another process holds the folder.
            FileExistsError: the folder holds a run and ``resume`` is False, or holds files but no run.
            ValueError: ``resume`` with a different kind or config (the differing keys listed).
        """
        folder = cls(path, writer=writer)
        record = {"kind": kind, **dict(config)}
        if not writer:  # a non-zero rank: read only, no lock (rank 0 holds it)
            return folder
        target = folder.path
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"run folder {str(target)!r} exists and is not a folder")
        stack = contextlib.ExitStack()
        stack.enter_context(fio.run_folder_lock(target))  # first: a second writer stops here, at once
        try:
            saved = folder.config_record()
            if saved is not None:
                if not resume:
                    raise FileExistsError(
                        f"run folder {str(target)!r} already holds a run ({saved.get('kind')!r}); pass --resume to "
                        f"continue it, or choose another --out"
                    )
                if saved.get("kind") != kind:
                    held = saved.get("kind")
                    raise ValueError(f"cannot resume {str(target)!r}: it holds a {held!r} run, not {kind!r}")
                diffs = config_diff(saved, record, ignore_on_resume)
                if diffs:
                    raise ValueError(f"cannot resume {str(target)!r} with a different config: {'; '.join(diffs)}")
            else:  # no run yet (with resume: stopped before its config was written — start it afresh)
                foreign = [str(p.relative_to(target)) for p in target.rglob("*")
                           if p.is_file() and p.name not in _OWN and not _is_temporary(p)]
                if foreign:
                    raise FileExistsError(
                        f"run folder {str(target)!r} is not empty and holds no run ({', '.join(sorted(foreign)[:5])}"
                        f"{' ...' if len(foreign) > 5 else ''}); choose a new or empty folder"
                    )
            folder.remove_temporary_files()
            if saved is None:
                import yaml

                fio.atomic_write_text(target / CONFIG, yaml.safe_dump(fio.to_jsonable(record), sort_keys=False))
                fio.write_json(target / VERSIONS, fio.package_versions())
        except BaseException:
            stack.close()
            raise
        folder._lock = stack
        return folder

    def close(self) -> None:
        """Release the lock (also done by ``with``)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ state
    def file(self, name: str | os.PathLike[str]) -> Path:
        """The path of ``name`` inside the folder (relative names only)."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"run-folder file names must be relative and stay inside the folder, got {str(name)!r}")
        return self.path / rel

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists in the folder."""
        return self.file(name).exists()

    def config_record(self) -> dict[str, Any] | None:
        """The saved ``config.yaml`` (with ``kind``), or ``None`` when the folder holds no run."""
        path = self.path / CONFIG
        if not path.is_file():
            return None
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"{str(path)!r} is not valid YAML: {exc}") from exc
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ValueError(f"{str(path)!r} is not an nclens run config (no 'kind')")
        return dict(data)

    @property
    def kind(self) -> str:
        """The kind of the run the folder holds."""
        record = self.config_record()
        if record is None:
            raise FileNotFoundError(f"{str(self.path)!r} holds no nclens run (no {CONFIG})")
        return str(record["kind"])

    def summary(self) -> dict[str, Any] | None:
        """``summary.json`` (``None`` while the run is incomplete)."""
        path = self.path / SUMMARY
        return fio.read_json(path) if path.is_file() else None

    def is_complete(self) -> bool:
        """Whether ``summary.json`` says ``complete: true``."""
        summary = self.summary()
        return bool(summary and summary.get("complete"))

    def remove_temporary_files(self) -> list[Path]:
        """Delete the temporary files a killed writer left behind (``.<name>.*.tmp``, at any depth)."""
        removed = []
        if self.writer and self.path.is_dir():
            for tmp in self.path.rglob(".*.tmp"):
                if _is_temporary(tmp) and tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
        return removed

    # ---------------------------------------------------------------- writing
    def _writes(self) -> bool:
        return self.writer

    def write_json(self, name: str, obj: Any) -> Path:
        """Write JSON atomically (NaN as null)."""
        return fio.write_json(self.file(name), obj) if self._writes() else self.file(name)

    def write_text(self, name: str, text: str) -> Path:
        """Write text atomically."""
        return fio.atomic_write_text(self.file(name), text) if self._writes() else self.file(name)

    def write_bytes(self, name: str, data: bytes) -> Path:
        """Write bytes atomically."""
        return fio.atomic_write_bytes(self.file(name), data) if self._writes() else self.file(name)

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]], columns: Iterable[str] | None = None) -> Path:
        """Write rows as CSV atomically (columns: every key in first-seen order)."""
        return fio.write_csv(self.file(name), rows, columns) if self._writes() else self.file(name)

    def write_png(self, name: str, fig: Any, **kwargs: Any) -> Path:
        """Render a matplotlib figure to PNG atomically (and close it)."""
        if not self._writes():
            import matplotlib.pyplot as plt

            plt.close(fig)
            return self.file(name)
        return fio.write_png(fig, self.file(name), **kwargs)

    def append_jsonl(self, name: str, records: Iterable[Mapping[str, Any]]) -> Path:
        """Append records to a JSONL file atomically."""
        return fio.append_jsonl(self.file(name), records) if self._writes() else self.file(name)

    def read_jsonl(self, name: str) -> list[dict[str, Any]]:
        """Every record of a JSONL file (``[]`` when absent)."""
        return fio.read_jsonl(self.file(name))

    def read_json(self, name: str) -> Any:
        """A JSON file of the folder."""
        return fio.read_json(self.file(name))

    def keep_jsonl(self, name: str, keep: Callable[[dict[str, Any]], bool]) -> int:
        """Rewrite a JSONL file with only the records ``keep`` accepts (resume: drop records past the checkpoint).

        Returns the number of records dropped.
        """
        records = self.read_jsonl(name)
        kept = [r for r in records if keep(r)]
        if len(kept) != len(records) and self._writes():
            import json

            fio.atomic_write_text(self.file(name), "".join(json.dumps(fio.to_jsonable(r)) + "\n" for r in kept))
        return len(records) - len(kept)

    def write_summary(self, results: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` — last — with ``kind``, ``name``, ``complete: true`` and ``results``."""
        record = self.config_record() or {}
        summary = {"kind": record.get("kind"), "name": record.get("name"), "complete": True, "results": dict(results)}
        return self.write_json(SUMMARY, summary)

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self, state: Mapping[str, Any], name: str = CHECKPOINT) -> Path:
        """``torch.save`` ``state`` to ``name`` atomically (tensors, numbers, strings, lists, dicts only)."""
        if not self._writes():
            return self.file(name)
        import torch

        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        return fio.atomic_write_bytes(self.file(name), buffer.getvalue())

    def has_checkpoint(self, name: str = CHECKPOINT) -> bool:
        """Whether the checkpoint ``name`` exists."""
        return self.file(name).is_file()

    def load_checkpoint(self, name: str = CHECKPOINT, map_location: Any = "cpu") -> dict[str, Any]:
        """Load a checkpoint with ``torch.load(weights_only=True)``; a damaged file is a clear error.

        Raises:
            FileNotFoundError: no such checkpoint.
            ValueError: the file is empty, truncated, corrupt or holds something other than weights.
        """
        import torch

        path = self.file(name)
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint {str(path)!r} to resume from")
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"checkpoint {str(path)!r} is empty (0 bytes); delete the run folder and start again")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, OSError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(
                f"checkpoint {str(path)!r} ({size} bytes) cannot be read as nclens weights — it is truncated, corrupt "
                f"or not an nclens checkpoint ({first[:200]}); delete the run folder and start again"
            ) from None
        if not isinstance(state, dict):
            raise ValueError(f"checkpoint {str(path)!r} holds {type(state).__name__}, not an nclens checkpoint")
        return state

    def subfolder(self, name: str) -> RunFolder:
        """A sub-run folder inside this one (same lock, same writer rule), e.g. one variant or seed."""
        sub = RunFolder(self.file(name), writer=self.writer)
        if self._writes():
            sub.path.mkdir(parents=True, exist_ok=True)
        return sub

    def iter_files(self) -> Iterator[Path]:
        """Every file of the run, sorted (the lock and temporaries excluded)."""
        for path in sorted(self.path.rglob("*")):
            if path.is_file() and path.name != ".lock" and not _is_temporary(path):
                yield path

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"


def _is_temporary(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")
