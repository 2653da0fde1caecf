"""Trainer: losses and schedules against closed forms, measured records against independent
references, exact interrupted-then-resumed runs, fixed-ETF freezing, run folders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.neighbors import NearestCentroid

from nclens.core.probe import Probe
from nclens.core.stats import ClassStats
from nclens.intermediate.experiment import create_run_dir, freeze_last_layers_etf, run_experiment, run_fixed_etf
from nclens.models import MLP
from nclens.runs.config import ExperimentConfig, OptimConfig, replace
from nclens.train import (
    TensorBatches,
    Trainer,
    augment_batch,
    classification_loss,
    load_data,
    lr_factor,
)


def tiny(**train) -> ExperimentConfig:
    values = {"epochs": 4, "measure_every": 2, "progress": False}
    values.update(train)
    return replace(
        ExperimentConfig(name="tiny"),
        data={"train_subset": 300, "batch_size": 64},
        model={"depth": 2, "width": 24},
        optim={"lr": 0.05, "weight_decay": 5e-3},
        train=values,
    )


def test_lr_schedules_closed_forms():
    cos = OptimConfig(schedule="cosine")
    assert lr_factor(0.0, cos, 10) == pytest.approx(1.0)
    assert lr_factor(5.0, cos, 10) == pytest.approx(0.5)
    assert lr_factor(10.0, cos, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(2.5, cos, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    warm = OptimConfig(schedule="cosine", warmup_epochs=2.0)
    assert lr_factor(0.0, warm, 10, steps_per_epoch=4) == pytest.approx(0.25 / 2)
    assert lr_factor(6.0, warm, 10) == pytest.approx(0.5)
    step = OptimConfig(schedule="step", milestones=(3, 6), gamma=0.1)
    assert [lr_factor(e, step, 10) for e in (0, 2.9, 3, 5, 6, 9)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert lr_factor(7.0, OptimConfig(schedule="constant"), 10) == 1.0


def test_losses_closed_forms():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    t = F.one_hot(y, 4).float()
    assert classification_loss(z, y, "mse") == pytest.approx(float(((z - t) ** 2).sum(1).mean()), rel=1e-6)
    ts = t * 0.8 + 0.2 / 4
    assert classification_loss(z, y, "mse", 0.2) == pytest.approx(float(((z - ts) ** 2).sum(1).mean()), rel=1e-6)
    logp = torch.log_softmax(z, 1)
    ce = -(ts * logp).sum(1).mean()
    assert classification_loss(z, y, "ce", 0.2) == pytest.approx(float(ce), rel=1e-6)
    with pytest.raises(ValueError, match="'ce' or 'mse'"):
        classification_loss(z, y, "hinge")


def test_augment_and_batches():
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    out = augment_batch(x, pad=0)  # no crop offset possible: identity or horizontal flip
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    assert augment_batch(x).shape == x.shape
    batches = TensorBatches(torch.arange(10.0)[:, None], torch.arange(10), 4, torch.arange(9, -1, -1))
    assert len(batches) == 3
    assert [b[1].tolist() for b in batches] == [[9, 8, 7, 6], [5, 4, 3, 2], [1, 0]]


def test_measured_records_match_independent_references(tmp_path):
    cfg = tiny()
    result = Trainer(cfg, tmp_path / "run").fit()
    epochs = sorted({r["epoch"] for r in result.layers})
    assert epochs == [0, 2, 4]
    assert {r["split"] for r in result.layers} == {"train", "test"}
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    final = result.final_layers("train")
    assert list(final) == ["fc1", "fc2", "classifier"]
    data = load_data(cfg.data)
    model = result.model.eval()
    with Probe(model, ["fc2", "classifier"], mode="input") as probe, torch.no_grad():
        model(data.x_train)
        feats = {k: v.double() for k, v in probe.features.items()}
    for name, h in feats.items():
        y = data.y_train
        # within_share from scratch: Tr Σ_W / (Tr Σ_W + Tr Σ_B)
        means = torch.stack([h[y == c].mean(0) for c in range(10)])
        tw = ((h - means[y]) ** 2).sum() / h.shape[0]
        tb = ((means - means.mean(0)) ** 2).sum() / 10
        assert final[name]["within_share"] == pytest.approx(float(tw / (tw + tb)), rel=1e-6)
        ncc = NearestCentroid().fit(h.numpy(), y.numpy())
        assert final[name]["ncc_accuracy"] == pytest.approx(ncc.score(h.numpy(), y.numpy()), abs=1e-12)
    # alignment of the classifier from the same statistics
    from nclens.core.metrics.layers import subspace_alignment

    means_cls = ClassStats(10).update(feats["classifier"], data.y_train).means
    expected = subspace_alignment(model.classifier.weight.detach(), means_cls)
    assert final["classifier"]["subspace_alignment"] == pytest.approx(expected, abs=1e-9)
    spectra = [r for r in result.spectra if r["epoch"] == 4 and r["layer"] == "fc2"]
    assert np.allclose(spectra[0]["singular_values"],
                       np.linalg.svd(model.fc2.weight.detach().double().numpy(), compute_uv=False))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] == result.history[-1]["test_accuracy"]


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path):
    cfg = tiny(epochs=5, measure_every=1)
    full = Trainer(cfg, tmp_path / "full").fit()

    def crash(epoch: int, step: int) -> None:
        if epoch == 4 and step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "cut", step_hook=crash).fit()
    lines = (tmp_path / "cut" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 3  # epochs 1–3 done, epoch 4 lost
    resumed = Trainer(cfg, tmp_path / "cut").fit(resume=True)
    assert _strip(resumed.history) == _strip(full.history)
    assert resumed.layers == full.layers
    assert resumed.spectra == full.spectra
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_drops_records_written_after_the_checkpoint(tmp_path):
    cfg = tiny(epochs=3, measure_every=1, checkpoint_every=2)
    full = Trainer(cfg, tmp_path / "full").fit()

    def crash(epoch: int, step: int) -> None:
        if epoch == 3 and step == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(replace(cfg, train={"epochs": 3}), tmp_path / "cut", step_hook=crash).fit()
    # epoch 2 was checkpointed; pretend logs of a later epoch were written before a crash
    with open(tmp_path / "cut" / "history.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 3, "lr": 0.0}) + "\n")
    resumed = Trainer(cfg, tmp_path / "cut").fit(resume=True)
    assert _strip(resumed.history) == _strip(full.history) and resumed.layers == full.layers


def test_resume_without_checkpoint_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        Trainer(tiny(), tmp_path).fit(resume=True)


def test_ce_adamw_step_schedule_and_output_mode_train(tmp_path):
    cfg = replace(tiny(epochs=2, loss="ce", label_smoothing=0.1, mode="output", measure_test=False),
                  optim={"name": "adamw", "lr": 1e-3, "schedule": "step", "milestones": [1], "warmup_epochs": 0.5})
    result = Trainer(cfg, None).fit()
    assert result.history == [] and result.model.training
    cnn = replace(tiny(epochs=1, measure_every=1), model={"arch": "cnn", "depth": 2, "width": 4})
    res = Trainer(cnn, tmp_path / "cnn").fit()
    conv = [r for r in res.layers if r["layer"] == "conv2" and r["split"] == "train" and r["epoch"] == 1][0]
    assert 0.0 <= conv["subspace_alignment"] <= 1.0 and conv["dim"] == 4


def test_freeze_last_layers_etf_keeps_weights_fixed(tmp_path):
    model = MLP(64, 10, depth=2, width=16)
    frozen = freeze_last_layers_etf(model, 2)
    assert frozen == ["fc2", "classifier"]
    w = model.fc2.weight.detach().double()
    assert torch.allclose(w @ w.T, (torch.eye(16) * (1 + 1 / 15) - 1 / 15).double(), atol=1e-6)
    assert not model.classifier.weight.requires_grad and float(model.classifier.bias.abs().sum()) == 0
    with pytest.raises(ValueError, match="num_fixed"):
        freeze_last_layers_etf(model, 4)
    cfg = replace(tiny(epochs=2), kind="fixed_etf", fixed_etf={"num_fixed": [0, 3], "epochs": 1})
    rows = run_fixed_etf(cfg, tmp_path)
    assert [r["num_trained"] for r in rows] == [3, 0]
    assert rows[1]["frozen"] == ["fc1", "fc2", "classifier"]
    assert (tmp_path / "fixed_etf.csv").read_text().startswith("num_fixed,num_trained")


def test_frozen_layers_do_not_change_during_training(tmp_path):
    snapshot = {}

    def prepare(model):
        freeze_last_layers_etf(model, 1)
        snapshot["w"] = model.classifier.weight.detach().clone()

    result = Trainer(tiny(epochs=1, measure_epochs=[1]), None, prepare_model=prepare).fit()
    assert torch.equal(result.model.classifier.weight, snapshot["w"])


def test_run_folder_records_config_and_refuses_reuse(tmp_path):
    cfg = tiny(epochs=1, measure_every=1)
    out = run_experiment(cfg, tmp_path / "r")
    for name in ("config.yaml", "config.json", "versions.json", "history.jsonl", "layers.jsonl", "checkpoint.pt"):
        assert (out / name).is_file(), name
    assert "torch" in json.loads((out / "versions.json").read_text())
    with pytest.raises(FileExistsError, match="--resume"):
        create_run_dir(cfg, out)
    with pytest.raises(ValueError, match=r"model.width: 24 -> 8"):
        create_run_dir(replace(cfg, model={"width": 8}), out, resume=True)
    assert create_run_dir(replace(cfg, train={"progress": True}), out, resume=True) == out


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        Trainer(tiny(epochs=2, measure_every=1), out).fit()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.distributed
def test_torch_distributed_two_ranks_match_single_process_measurement(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path / "ddp")), nprocs=2, join=True)
    single = Trainer(tiny(epochs=2, measure_every=1), tmp_path / "one").fit()
    from nclens.core.io import read_jsonl

    ddp_layers = read_jsonl(tmp_path / "ddp" / "layers.jsonl")
    # epoch 0 (same seeded initialisation): sharded + all-reduced statistics equal one process
    for a, b in zip([r for r in ddp_layers if r["epoch"] == 0], [r for r in single.layers if r["epoch"] == 0]):
        assert a["layer"] == b["layer"] and a["split"] == b["split"]
        for key in ("within_share", "nc1", "ncc_accuracy", "subspace_alignment"):
            if b.get(key) is not None:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["layer"], key)
    history = read_jsonl(tmp_path / "ddp" / "history.jsonl")
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["train_accuracy"] > 0.3
    assert (tmp_path / "ddp" / "checkpoint.pt").is_file()


def test_degenerate_layer_is_recorded_not_fatal(tmp_path):
    # fc2 frozen to zero: the classifier's input is the same for every class (identical class means),
    # so cdnv / nc1 are undefined there; training goes on and those metrics are logged as None.
    def prepare(model):
        with torch.no_grad():
            model.fc2.weight.zero_()
            model.fc2.bias.zero_()
        model.fc2.weight.requires_grad_(False)
        model.fc2.bias.requires_grad_(False)

    cfg = replace(tiny(epochs=1, measure_every=1), model={"batchnorm": False})
    result = Trainer(cfg, tmp_path / "r", prepare_model=prepare).fit()
    final = result.final_layers("train")
    assert final["classifier"]["cdnv"] is None and final["fc2"]["cdnv"] is not None
    assert final["classifier"]["ncc_accuracy"] == pytest.approx(0.1, abs=0.02)  # all tied: one class wins


def test_restart_before_first_checkpoint_starts_clean_logs(tmp_path):
    cfg = tiny(epochs=2, measure_every=1)

    def crash(epoch: int, step: int) -> None:
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "r", step_hook=crash).fit()
    assert (tmp_path / "r" / "layers.jsonl").is_file()  # epoch-0 measurement was logged
    again = Trainer(cfg, tmp_path / "r").fit()
    full = Trainer(cfg, tmp_path / "full").fit()
    assert again.layers == full.layers and _strip(again.history) == _strip(full.history)
