"""Run-folder I/O: atomic writes, JSON conversion, the run-folder lock."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from nclens.core.io import RunFolderBusy, append_jsonl, read_json, read_jsonl, run_folder_lock, write_json


def test_json_conversion_and_atomic_write(tmp_path):
    path = write_json(tmp_path / "sub" / "a.json", {"t": torch.tensor([1.5, 2.0]), "n": np.float32(0.25),
                                                    "nan": math.nan, "p": tmp_path})
    got = read_json(path)
    assert got == {"t": [1.5, 2.0], "n": 0.25, "nan": None, "p": str(tmp_path)}
    assert not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]  # no temporary left behind
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # ordinary permissions, not mkstemp's


def test_jsonl_append(tmp_path):
    append_jsonl(tmp_path / "l.jsonl", [{"a": 1}])
    append_jsonl(tmp_path / "l.jsonl", [{"a": 2}, {"a": 3}])
    assert [r["a"] for r in read_jsonl(tmp_path / "l.jsonl")] == [1, 2, 3]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_run_folder_lock_is_exclusive(tmp_path):
    with run_folder_lock(tmp_path):
        with pytest.raises(RunFolderBusy, match="in use by another nclens process"):
            with run_folder_lock(tmp_path):
                pass
    with run_folder_lock(tmp_path):  # released on exit
        pass
