"""The one Trainer: schedules against closed forms, batches, exact resume of any data source, the
divergence detector, checkpoint errors, callbacks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nclens.core.env import seed_everything
from nclens.runs.folder import RunFolder
from nclens.train import (
    Callback,
    ItemData,
    OptimConfig,
    TensorBatches,
    TensorData,
    Trainer,
    augment_batch,
    epoch_order,
    lr_factor,
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


@pytest.mark.parametrize("key, value, match", [
    ("lr", float("nan"), "optim.lr must be a finite number"),
    ("lr", 0.0, "optim.lr must be > 0"),
    ("weight_decay", float("inf"), "optim.weight_decay must be a finite number"),
    ("warmup_epochs", float("nan"), "optim.warmup_epochs must be a finite number"),
    ("gamma", float("nan"), "optim.gamma must be a finite number"),
    ("momentum", 1.0, r"optim.momentum must lie in \[0, 1\)"),
    ("name", "lbfgs", "optim.name must be one of"),
])
def test_optim_config_refuses_bad_values(key, value, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig(**{key: value})


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
    data = TensorData(torch.arange(10.0)[:, None], torch.arange(10), 0)  # 0 = full batch
    assert len(data) == 1
    (xb, yb, n), = data.epoch(seed=1, epoch=3)
    assert n == 10 and torch.equal(yb, epoch_order(10, 1, 3))
    assert not torch.equal(epoch_order(10, 1, 3), epoch_order(10, 1, 4))


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 6, generator=g)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    return x, y


def _net(seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 4))


class _Crash(Callback):
    def __init__(self, at: tuple[int, int]) -> None:
        self.at = at

    def on_step_end(self, trainer, epoch, step):
        if (epoch, step) == self.at:
            raise KeyboardInterrupt


def _strip(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.mark.parametrize("loss", ["ce", "mse", "mse_sum"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, loss):
    x, y = _data()

    def trainer(run, *callbacks):
        return Trainer(_net(), TensorData(x, y, 32), loss=loss, optim=OptimConfig(lr=0.05), epochs=4, seed=3,
                       run=RunFolder(run), evaluate={"train": (x, y)}, progress=False, callbacks=callbacks)

    (tmp_path / "full").mkdir()
    (tmp_path / "cut").mkdir()
    full = trainer(tmp_path / "full").fit()
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "cut", _Crash((3, 1))).fit()
    assert len(RunFolder(tmp_path / "cut").read_jsonl("history.jsonl")) == 2
    resumed = trainer(tmp_path / "cut").fit(resume=True)
    assert _strip(resumed.history) == _strip(full.history)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_item_data_with_a_step_fn_resumes_exactly(tmp_path):
    """Any data source: a list of ready batches (one 'graph' per step) visited in a seeded order."""
    x, y = _data()
    items = [(x[i:i + 20], y[i:i + 20]) for i in range(0, 120, 20)]

    def step(model, item, _none, reduction):
        xb, yb = item
        return nn.functional.cross_entropy(model(xb), yb, reduction=reduction), int(yb.shape[0])

    def trainer(run, *callbacks):
        return Trainer(_net(), ItemData(items), step_fn=step, optim=OptimConfig(name="adam", lr=1e-2), epochs=3,
                       run=RunFolder(run), progress=False, callbacks=callbacks)

    for d in ("full", "cut"):
        (tmp_path / d).mkdir()
    full = trainer(tmp_path / "full").fit()
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "cut", _Crash((2, 4))).fit()
    resumed = trainer(tmp_path / "cut").fit(resume=True)
    assert _strip(resumed.history) == _strip(full.history) and len(full.history) == 3
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in full.model.state_dict().items())


def test_divergence_is_detected_with_the_step_and_the_knob(tmp_path):
    x, y = _data()
    (tmp_path / "r").mkdir()
    run = RunFolder(tmp_path / "r")
    t = Trainer(_net(), TensorData(x * 1e3, y, 32), loss="mse_sum", optim=OptimConfig(lr=5.0, momentum=0.0),
                epochs=5, run=run, progress=False, lr_key="train.lr")
    with pytest.raises(FloatingPointError, match=r"training diverged: .* at epoch 1, step \d+; lower train.lr"):
        t.fit()
    assert not run.has_checkpoint()  # nothing of the diverged model is kept


def test_damaged_checkpoints_are_clear_errors(tmp_path):
    x, y = _data()
    (tmp_path / "r").mkdir()
    run = RunFolder(tmp_path / "r")
    t = Trainer(_net(), TensorData(x, y, 32), optim=OptimConfig(lr=0.05), epochs=1, run=run, progress=False)
    t.fit()
    data = run.file("checkpoint.pt").read_bytes()
    for damaged, match in [(b"", "is empty"), (data[: len(data) // 2], "truncated, corrupt"),
                           (b"not a checkpoint at all", "truncated, corrupt")]:
        run.file("checkpoint.pt").write_bytes(damaged)
        with pytest.raises(ValueError, match=match) as info:
            Trainer(_net(), TensorData(x, y, 32), epochs=2, run=run, progress=False).fit(resume=True)
        assert "weights_only=False" not in str(info.value)
    torch.save({"epoch": 1}, run.file("checkpoint.pt"))
    with pytest.raises(ValueError, match="not an nclens trainer checkpoint"):
        Trainer(_net(), TensorData(x, y, 32), epochs=2, run=run, progress=False).fit(resume=True)


def test_bad_trainer_arguments():
    x, y = _data()
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        Trainer(_net(), TensorData(x, y, 32), epochs=0)
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        Trainer(_net(), TensorData(x, y, 32), epochs=1, loss="hinge")
    with pytest.raises(ValueError, match="batch_size must be a non-negative integer"):
        TensorData(x, y, -1)
    with pytest.raises(ValueError, match="empty"):
        ItemData([])
