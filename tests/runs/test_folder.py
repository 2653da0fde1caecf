"""RunFolder: the one rule set for existing folders, resume, temporaries, summaries and checkpoints."""

from __future__ import annotations

import pytest
import torch

from nclens.core.io import RunFolderBusy
from nclens.runs.folder import RunFolder, config_diff


def test_fresh_resume_refusals_and_differences(tmp_path):
    d = tmp_path / "r"
    with RunFolder.open(d, kind="k", config={"name": "a", "train": {"epochs": 2, "progress": True}}) as run:
        assert run.config_record()["kind"] == "k" and (d / "versions.json").is_file()
        with pytest.raises(RunFolderBusy, match="in use by another nclens process"):
            RunFolder.open(d, kind="k", config={"name": "a"})  # a second writer, while the first holds it
    with pytest.raises(FileExistsError, match="already holds a run .* --resume"):
        RunFolder.open(d, kind="k", config={"name": "a", "train": {"epochs": 2, "progress": True}})
    with pytest.raises(ValueError, match="train.epochs: 2 -> 3"):
        RunFolder.open(d, kind="k", config={"name": "a", "train": {"epochs": 3, "progress": True}}, resume=True)
    with pytest.raises(ValueError, match="holds a 'k' run, not 'other'"):
        RunFolder.open(d, kind="other", config={"name": "a"}, resume=True)
    RunFolder.open(d, kind="k", config={"name": "a", "train": {"epochs": 2, "progress": False}}, resume=True,
                   ignore_on_resume=("train.progress",)).close()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "my_thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not empty and holds no run .*my_thesis.tex"):
        RunFolder.open(foreign, kind="k", config={"name": "a"})
    assert (foreign / "my_thesis.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a folder"):
        RunFolder.open(tmp_path / "file", kind="k", config={"name": "a"})


def test_resume_of_a_run_killed_before_its_config_starts_fresh_and_temporaries_go(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / ".config.yaml.abc.tmp").write_text("half")
    (d / "sub").mkdir()
    (d / "sub" / ".checkpoint.pt.xyz.tmp").write_bytes(b"half")
    with RunFolder.open(d, kind="k", config={"name": "a"}, resume=True) as run:
        assert run.config_record()["name"] == "a"
    assert not list(d.rglob("*.tmp"))


def test_writers_summary_and_read_only_ranks(tmp_path):
    with RunFolder.open(tmp_path / "r", kind="k", config={"name": "a"}) as run:
        run.append_jsonl("log.jsonl", [{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
        assert run.keep_jsonl("log.jsonl", lambda r: r["epoch"] <= 2) == 1
        run.write_csv("t.csv", [{"a": 1, "b": None}, {"a": 2.5, "c": [1, 2]}])
        assert run.file("t.csv").read_text() == "a,b,c\n1,,\n2.5,,\"[1, 2]\"\n"
        run.save_checkpoint({"w": torch.ones(2)})
        assert torch.equal(run.load_checkpoint()["w"], torch.ones(2))
        assert not run.is_complete()
        run.write_summary({"x": 1.0})
        assert run.summary() == {"kind": "k", "name": "a", "complete": True, "results": {"x": 1.0}}
        with pytest.raises(ValueError, match="stay inside the folder"):
            run.file("../escape.json")
    other = RunFolder(tmp_path / "r", writer=False)
    other.write_json("never.json", {})
    assert not other.exists("never.json") and other.is_complete()


def test_config_diff_lists_every_dotted_key():
    assert config_diff({"a": {"b": 1}, "c": 2}, {"a": {"b": 2}, "d": 3}) == [
        "a.b: 1 -> 2", "c: 2 -> <absent>", "d: <absent> -> 3"]
    assert config_diff({"a": {"progress": 1}}, {"a": {"progress": 2}}, ignore=("progress",)) == []
