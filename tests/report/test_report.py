"""Report: figures and a self-contained report.html from a real (tiny) run folder; CLI; errors."""

from __future__ import annotations

import base64
import json
import re

import pytest
import torch
from typer.testing import CliRunner

from nclens.cli import app
from nclens.intermediate.config import IntermediateConfig
from nclens.intermediate.experiment import run_intermediate
from nclens.intermediate.figures import headline, write_figures
from nclens.report import make_report
from nclens.report.figures import fig_within_share_depth
from nclens.report.html import html_table
from nclens.runs.config import replace
from nclens.runs.folder import RunFolder

PNG = b"\x89PNG\r\n\x1a\n"



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.set_num_threads(1)
    cfg = replace(
        IntermediateConfig(name="report-test"),
        data={"train_subset": 250, "batch_size": 64},
        model={"depth": 2, "width": 16},
        train={"epochs": 2, "measure_every": 1, "progress": False},
        fixed_etf={"enabled": True, "num_fixed": [0, 3], "epochs": 1},
    )
    run = run_intermediate(cfg, tmp_path_factory.mktemp("runs") / "r")
    make_report(run)
    return run


def test_figures_are_pngs(run_dir):
    for key in ("within_share_depth", "nc1_epochs", "alignment", "spectra", "training", "fixed_etf",
                "ncc_accuracy"):
        assert (run_dir / "figures" / f"{key}.png").read_bytes().startswith(PNG), key


def test_write_figures_returns_paths(tmp_path):
    (tmp_path / "layers.jsonl").write_text(
        '{"epoch": 0, "split": "train", "layer": "a", "index": 0, "within_share": 0.5, "nc1": 1.0}\n'
    )
    paths = write_figures(RunFolder(tmp_path))
    assert set(paths) == {"within_share_depth", "nc1_epochs", "nc_over_epochs", "ncc_accuracy"}
    assert all(p.read_bytes().startswith(PNG) for p in paths.values())


def test_report_html_is_self_contained(run_dir):
    path = run_dir / "report.html"
    text = path.read_text()
    assert path.name == "report.html"
    assert "report-test" in text and "fixed-ETF layers" in text and "Resolved config" in text
    assert not re.search(r"""(src|href)=["'](https?:|file:|/|\.\./|figures/)""", text)
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) >= 6 and all(base64.b64decode(img).startswith(PNG) for img in images)
    for layer in ("fc1", "fc2", "classifier"):
        assert f"<td>{layer}</td>" in text


def test_headline_numbers():
    recs = [{"epoch": 3, "split": "train", "layer": n, "index": i, "within_share": v, "subspace_alignment": a}
            for i, (n, v, a) in enumerate([("a", 0.8, 0.5), ("b", 0.04, 0.95)])]
    head = headline(recs, [{"epoch": 3, "train_accuracy": 1.0, "test_accuracy": 0.9}])
    assert head["within_share_ratio"] == pytest.approx(20.0)
    assert head["subspace_alignment_last"] == 0.95 and head["test_accuracy"] == 0.9
    assert "&lt;b&gt;" in html_table([{"x": "<b>"}], ["x"])
    fig = fig_within_share_depth(recs)
    assert len(fig.axes[0].lines) == 1


def test_cli_report_and_errors(run_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "does not exist" in result.output
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "holds no nclens run" in result.output


def test_report_escapes_everything_a_run_folder_supplies(run_dir, tmp_path):
    """A shared run folder must not be able to put markup or a script into report.html."""
    import shutil

    evil = tmp_path / "evil"
    shutil.copytree(run_dir, evil)
    fixed = json.loads((evil / "fixed_etf.json").read_text())
    fixed["epochs"] = "<script>alert(1)</script>"
    fixed["rows"][0]["train_accuracy"] = "<img src=x onerror=alert(2)>"
    (evil / "fixed_etf.json").write_text(json.dumps(fixed))
    with (evil / "layers.jsonl").open("a") as handle:
        handle.write(json.dumps({"epoch": 99, "split": "train", "layer": "<b>x</b>", "index": 9,
                                 "within_share": 0.5}) + "\n")
    config = (evil / "config.yaml").read_text().replace("name: report-test", "name: '<script>x</script>'")
    (evil / "config.yaml").write_text(config)
    text = make_report(evil).read_text()
    assert "<script>" not in text and "<img src=x" not in text and "<b>x</b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
