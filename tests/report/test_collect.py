"""nclens.collect (run folders → long DataFrame) and the four-panel NC1–NC4 figure."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import nclens
from nclens.core.io import append_jsonl, atomic_write_text, write_json
from nclens.report.nc_figures import fig_nc_over_epochs


def _run(root, name, kind="train", epochs=(0, 5), nc1=1.0):
    run = root / name
    records = [{"epoch": e, "split": s, "layer": layer, "index": i, "kind": "Linear", "dim": 8,
                "nc1": nc1 / (1 + e + i), "nc2_equinorm": 0.2, "nc2_equiangular": 0.1, "nc3_duality": None,
                "nc4_ncc_mismatch": 0.05, "ncc_accuracy": 0.9}
               for e in epochs for s in ("train", "test") for i, layer in enumerate(["fc1", "classifier"])]
    append_jsonl(run / "layers.jsonl", records)
    atomic_write_text(run / "config.yaml", f"kind: {kind}\nname: {name}-cfg\nseed: 0\n")
    write_json(run / "summary.json", {"final": 1})
    return run, records


def test_collect_long_frame_from_run_folders(tmp_path):
    a, recs = _run(tmp_path, "a")
    _run(tmp_path, "b", kind="fixed_etf", nc1=2.0)
    frame = nclens.collect([a, tmp_path / "b"])
    assert list(frame.columns[:4]) == ["run", "kind", "name", "epoch"] and {"metric", "value", "module"} <= set(
        frame.columns)
    assert len(frame) == 2 * len(recs) * 6  # 6 metric columns per record
    row = frame[(frame.run == "b") & (frame.epoch == 5) & (frame.split == "train") & (frame.layer == "classifier")
                & (frame.metric == "nc1")]
    assert row.value.item() == pytest.approx(2.0 / 7) and row.kind.item() == "fixed_etf"
    assert row.name.item() == "b-cfg" and row.module.item() == "Linear" and row.dim.item() == 8
    assert frame[frame.metric == "nc3_duality"].value.isna().all()  # null stays missing
    assert len(nclens.collect(str(tmp_path / "*"))) == len(frame)  # glob patterns
    table = frame[frame.split == "train"].pivot_table(index=["run", "epoch"], columns="metric", values="value")
    assert table.shape == (4, 5)  # nc3_duality is all-missing: pivot_table drops it


def test_collect_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        nclens.collect([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no layers.jsonl"):
        nclens.collect([tmp_path / "empty"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "layers.jsonl").write_text("{not json\n")
    with pytest.raises(ValueError, match="not valid JSONL"):
        nclens.collect([tmp_path / "bad"])
    with pytest.raises(FileNotFoundError, match="no run folder matches"):
        nclens.collect(str(tmp_path / "zz*"))


def test_records_of_measure_feed_the_four_panel_figure(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(60, 4, generator=g), torch.arange(60) % 3
    records = []
    for epoch in range(3):
        report = nclens.measure(net, [(x, y)], layers=["2"], nc4=True, progress=False)
        records += report.to_records(epoch=epoch, split="train")
        with torch.no_grad():
            net[2].weight.mul_(1.1)
    fig = fig_nc_over_epochs(records)
    axes = fig.axes[:4]
    assert [len(ax.lines) for ax in axes] == [1, 2, 1, 1]
    assert list(axes[0].lines[0].get_xdata()) == [0, 1, 2]
    nc1 = [r["value"] for r in records if r["metric"] == "nc1"]
    assert list(axes[0].lines[0].get_ydata()) == pytest.approx(nc1) and axes[0].get_yscale() == "log"
    # wide layers.jsonl records and collect()'s DataFrame work too
    run, _ = _run(tmp_path, "w")
    wide = fig_nc_over_epochs([r for r in __import__("nclens").core.io.read_jsonl(run / "layers.jsonl")])
    assert len(wide.axes[0].lines) == 2
    framed = fig_nc_over_epochs(nclens.collect([run]))
    assert [len(ax.lines) for ax in framed.axes[:4]] == [2, 4, 0, 2]
    assert not math.isnan(framed.axes[3].lines[0].get_ydata()[0])
    with pytest.raises(ValueError, match="no records with epoch"):
        fig_nc_over_epochs([{"epoch": 0, "layer": "x", "metric": "cdnv", "value": 1.0}])
