"""The multi-label experiment kinds: scores against scikit-learn and the official formulas, the official ETF head,
parameter counts, the feature penalty, the ML-MNIST composition, config errors before any file, divergence,
resume, the UFM study and the thin CLI alias."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score
from typer.testing import CliRunner

from nclens.multilabel.config import MultiLabelConfig, UFMStudyConfig
from nclens.multilabel.data import compose_li, place_and_roll
from nclens.multilabel.experiment import aggregate, feature_decay_step, theory_references
from nclens.multilabel.models import build_model, count_trainable, li_etf_weight
from nclens.multilabel.scores import iou_li, multilabel_scores, singleton_logit_gap
from nclens.runs.config import override_config
from nclens.runs.experiment import RunConfig, get_experiment, load_run_config, run


def _tiny(**train) -> MultiLabelConfig:
    return override_config(MultiLabelConfig(), [
        "data.classes=[0, 1, 2, 3]", "data.per_set=[6, 1]", "data.test_per_set=[2, 1]",
        "model.channels=[4, 8]", "model.hidden=32", "model.feature_dim=16", "train.eval_every=1",
        *[f"train.{k}={v}" for k, v in {"epochs": 2, "progress": "false", **train}.items()],
    ])


def _run(cfg, out, kind="multilabel", resume=False):
    return run(RunConfig(get_experiment(kind), cfg, out, {}), out=out, resume=resume, progress=False,
               log=lambda s: None)


def test_scores_against_sklearn_and_the_official_iou():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.45, 0.45, 0.1], [0.05, 0.35, 0.6]]))
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    s = multilabel_scores(logits, y, f1_ratio=0.5)
    probs = torch.softmax(logits.double(), 1)
    assert s["map"] == pytest.approx(average_precision_score(y.numpy(), probs.numpy(), average="macro"))
    assert s["iou"] == pytest.approx((0.7 + 0.9 + 0.95) / 3, rel=1e-6)  # softmax mass on the true set
    assert s["f1"] == pytest.approx(1.0)  # predicted sets {0}, {0,1}, {1,2}
    # iou_measure of utility.py on the paper's 0.5/0.5 rows and on 0/1 rows: the same numbers
    half = y.double() / y.sum(1, keepdim=True)
    assert torch.allclose(iou_li(logits, half), iou_li(logits, y), rtol=1e-14)
    official = (torch.softmax(logits.double(), 1) * half).sum(1) / 2 * (half != 0).sum(1) * 2
    assert torch.allclose(iou_li(logits, y), official, rtol=1e-14)
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 2.0, 0.0]])
    yy = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0]])
    assert singleton_logit_gap(z, yy) == pytest.approx(3.0 - 0.0)  # only the singleton counts


def test_official_etf_head_and_parameter_counts():
    w = li_etf_weight(10, 128)
    ref = math.sqrt(10 / 9) * (torch.eye(10) - 0.1)  # models/resnet.py: the frame, unit rows, W @ eye(K, D)
    assert torch.allclose(w[:, :10], ref, atol=1e-7) and bool((w[:, 10:] == 0).all())
    assert torch.allclose(w.norm(dim=1), torch.ones(10))
    kw = dict(num_tags=4, in_channels=1, image_size=16, channels=(4, 8), hidden=32, feature_dim=24)
    learned, fixed, dimk = (build_model(v, **kw) for v in ("learned", "fixed_etf", "fixed_etf_dimk"))
    assert count_trainable(learned) - count_trainable(fixed) == 4 * 24  # the frozen K×D head weight
    assert count_trainable(fixed) - count_trainable(dimk) == (32 + 1) * (24 - 4)  # the last block shrinks to K
    assert not fixed.head.weight.requires_grad and fixed.head.bias.requires_grad
    logits, feats = dimk(torch.zeros(2, 1, 16, 16), return_features=True)
    assert logits.shape == (2, 4) and feats.shape == (2, 4)


def test_feature_penalty_is_the_official_batch_frobenius_norm():
    torch.manual_seed(0)
    net = build_model("learned", num_tags=3, in_channels=1, image_size=8, channels=(2,), hidden=6, feature_dim=5,
                      batch_norm=False)  # BatchNorm would give each share its own statistics
    x, y = torch.randn(7, 1, 8, 8), torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]] + [[0, 1, 1]] * 3)
    step = feature_decay_step("pal_normalized", 1e-3, batch_size=7)
    value, n = step(net, x, y, "mean")
    pred, feature = net(x, return_features=True)
    official = (torch.nn.CrossEntropyLoss()(pred, y.float() / y.sum(1, keepdim=True))
                + 1e-3 * torch.linalg.norm(feature) ** 2)
    assert n == 7 and torch.allclose(value, official, rtol=1e-6)
    # the DDP form: two shares' sums, rescaled by R/B and averaged over ranks, give the same objective
    s1, _ = step(net, x[:3], y[:3], "sum")
    s2, _ = step(net, x[3:], y[3:], "sum")
    assert torch.allclose((s1 * 2 / 7 + s2 * 2 / 7) / 2, value, rtol=1e-6)


def test_li_composition_places_and_rolls_as_the_notebook():
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 5, 9] = 1.0
    # F.pad(image, (28, 0, 28, 0)) then torch.roll(shifts=(down, right)), as pad_then_shift(left=True)
    for left, shift in ((True, (3, 6)), (False, (0, 2)), (True, (6, 6))):
        pad = (28, 0, 28, 0) if left else (0, 28, 0, 28)
        expected = torch.roll(F.pad(img[0, 0], pad), shifts=shift, dims=(0, 1))
        got = place_and_roll(img, torch.tensor([left]), torch.tensor([shift]))[0, 0]
        assert torch.equal(got, expected)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(40, 1, 28, 28, generator=gen)
    labels = torch.arange(40) % 4
    x, y = compose_li(images, labels, 4, (3, 2), seed=1)
    assert x.shape == (4 * 3 + 6 * 2, 1, 56, 56) and y.sum(0).tolist() == [3 + 3 * 2] * 4
    again, _ = compose_li(images, labels, 4, (3, 2), seed=1)
    assert torch.equal(x, again)  # seeded
    # a pair is the pixelwise max of two placed items: every pixel equals some source pixel or 0
    pair = x[-1, 0]
    assert float(pair.max()) <= 1.0 and int((pair > 0).sum()) > 28 * 28  # two items, disjoint quadrants
    with pytest.raises(ValueError, match="singletons and pairs only"):
        compose_li(images, labels, 4, (1, 1, 1))
    with pytest.raises(ValueError, match="fewer than 20 source images"):
        compose_li(images, labels, 4, (20, 1))


def test_bad_values_are_refused_before_a_folder_is_created(tmp_path):
    path = tmp_path / "mlab_x.yaml"
    for override, message in (("data.per_set=[0]", "data.per_set must start with a positive number"),
                              ("data.per_set=[]", "data.per_set must not be empty"),
                              ("data.test_per_set=[3, -1]", "non-negative"),
                              ("train.seeds=[]", "train.seeds must not be empty"),
                              ("train.losses=[ce]", "train.losses[] must be one of ['pal', 'pal_normalized']"),
                              ("train.variants=[mlp]", "train.variants[] must be one of"),
                              ("train.feature_decay=nan", "must be a finite number"),
                              ("optim.lr=inf", "must be a finite number"),
                              ("data.pool=3", "data.pool applies"),
                              ("model.feature_dim=5", "feature_dim must be >= K = 10"),
                              ("train.batch_size=569", "last batch of 1")):
        path.write_text("kind: multilabel\nname: x\n")
        with pytest.raises((ValueError, TypeError), match=message.replace("[", r"\[").replace("]", r"\]")):
            load_run_config(path, [override])
    from nclens.cli import app

    out = tmp_path / "never"
    res = CliRunner().invoke(app, ["run", "mlab_smoke", "--out", str(out), "--set", "data.per_set=[0]"])
    assert res.exit_code == 2 and "data.per_set" in res.output and not out.exists()
    missing = CliRunner().invoke(app, ["run", "mlab_smoke", "--out", str(out), "--set", "data.dataset=ml-mnist",
                                       "--set", f"data.root={tmp_path / 'nothing'}"])
    assert missing.exit_code == 2 and "does not exist" in missing.output and not out.exists()


def test_divergence_is_reported_by_the_trainer(tmp_path):
    from nclens.cli import app

    res = CliRunner().invoke(app, ["run", "mlab_smoke", "--out", str(tmp_path / "d"), "--no-progress",
                                   "--set", "optim.lr=1e8", "--set", "train.seeds=[0]", "--set", "train.losses=[pal]"])
    assert res.exit_code == 2, res.output
    assert "training diverged" in res.output and "optim.lr" in res.output
    assert "features contain NaN" not in res.output and "Traceback" not in res.output


def test_run_files_resume_and_aggregate(tmp_path):
    cfg = _tiny(losses="[pal_normalized]", seeds="[0, 1]", variants="[learned, fixed_etf_dimk]",
                feature_decay=0.001)
    out = _run(cfg, tmp_path / "run")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] and summary["kind"] == "multilabel"
    res = summary["results"]
    assert len(res["runs"]) == 4 and len(res["table"]) == 2 and len(res["comparison"]) == 1
    nc = [json.loads(line) for line in (out / "pal_normalized/learned/seed0/nc.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in nc] == [0, 1, 2]
    assert {"tagwise_angle_li", "tagwise_angle_li_deg", "tagwise_scale_m2", "test_iou", "c2_gap_implied"} <= set(nc[-1])
    # table = mean / sd over the two seeds of runs.csv
    rows = [r for r in res["runs"] if r["variant"] == "learned"]
    row = next(t for t in res["table"] if t["variant"] == "learned")
    vals = [r["test_iou"] for r in rows]
    assert row["test_iou_mean"] == pytest.approx(np.mean(vals))
    assert row["test_iou_sd"] == pytest.approx(np.std(vals, ddof=1))
    (comp,) = res["comparison"]
    diffs = [next(r for r in res["runs"] if r["variant"] == "fixed_etf_dimk" and r["seed"] == s)["test_map"]
             - next(r for r in rows if r["seed"] == s)["test_map"] for s in (0, 1)]
    assert comp["test_map_diff_mean"] == pytest.approx(np.mean(diffs))
    theory = json.loads((out / "theory.json").read_text())
    assert theory["lambda_h"] == pytest.approx(2e-3)  # full batch: λ_H = 2 λ_h
    assert theory == theory_references(cfg)
    # killed after its last checkpoint but before result.json: the resumed run rebuilds the same results
    # (a SIGKILL mid-training is the contract test's job, tests/runs/test_contract.py)
    sub = out / "pal_normalized/fixed_etf_dimk/seed1"
    before = {p: (sub / p).read_text() for p in ("nc.jsonl", "result.json")}
    (sub / "result.json").unlink()
    (out / "summary.json").unlink()
    resumed = _run(cfg, out, resume=True)
    assert json.loads((resumed / "summary.json").read_text())["results"]["table"] == res["table"]
    assert (sub / "nc.jsonl").read_text() == before["nc.jsonl"]
    assert json.loads((sub / "result.json").read_text())["final"] == json.loads(before["result.json"])["final"]
    with pytest.raises(ValueError, match="different config"):
        _run(_tiny(losses="[pal]", seeds="[0, 1]", variants="[learned, fixed_etf_dimk]", feature_decay=0.001), out,
             resume=True)
    # the figures and the report render from the files
    from nclens.report import make_report

    assert make_report(out).stat().st_size > 1000
    assert {p.name for p in (out / "figures").iterdir()} == {"mlab_nc.png", "tagwise_scale.png", "scores.png"}


def test_aggregate_verdicts():
    def r(variant, seed, score):
        fin = {"test_map": score, "test_f1": score, "test_iou": score}
        return {"loss": "pal", "variant": variant, "seed": seed, "feature_dim": 4, "trainable_params": 10,
                "final": fin, "nc_fall": {}, "time_per_epoch_s": 0.1}

    results = [r("learned", s, 0.5) for s in range(3)] + [r("fixed_etf_dimk", s, v) for s, v in
                                                          enumerate((0.6, 0.62, 0.58))]
    comp = aggregate(results)["comparison"][0]
    assert comp["test_map_verdict"] == "better" and comp["test_map_diff_mean"] == pytest.approx(0.1)
    results[3:] = [r("fixed_etf_dimk", s, v) for s, v in enumerate((0.45, 0.55, 0.5))]
    assert aggregate(results)["comparison"][0]["test_iou_verdict"] == "equal within the spread"


def test_ufm_study_restarts_reach_one_optimum(tmp_path):
    cfg = override_config(UFMStudyConfig(), ["ufm.num_classes=3", "ufm.dim=4", "ufm.per_set=[3, 2]",
                                              "ufm.init_scale=1.0", "restarts=3", "losses=[pal]"])
    out = _run(cfg, tmp_path / "ufm", kind="multilabel-ufm")
    (row,) = json.loads((out / "summary.json").read_text())["results"]["rows"]
    assert row["restarts"] == 3 and row["converged_all"]
    assert row["objective_spread"] < 1e-12 and row["gram_w_max_diff"] < 1e-8 and row["gram_sets_max_diff"] < 1e-8
    assert row["tagwise_scale_m2_abs_err_max"] < 1e-9 and row["tagwise_angle_li_max"] < 1e-7
    assert [c["key"] for c in cfg.cases()] == [f"pal/lambda=ufm/restart={i}" for i in range(3)]
    with pytest.raises(ValueError, match="tol"):
        override_config(cfg, ["ufm.tol=nan"])
    with pytest.raises(ValueError, match="restarts"):
        override_config(cfg, ["restarts=0"])


def test_mlab_alias_is_thin(tmp_path):
    from nclens.cli import app

    res = CliRunner().invoke(app, ["mlab", "mlab_ufm_smoke", "--out", str(tmp_path / "a"), "--no-progress",
                                   "--no-report", "--set", "restarts=1", "--set", "losses=[pal]"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["kind"] == "multilabel-ufm"
    bad = CliRunner().invoke(app, ["mlab", "mlab_smoke", "--out", str(tmp_path / "b"), "--set", "train.epochz=1"])
    assert bad.exit_code == 2 and "unknown key 'epochz' in section 'train'" in bad.output
