"""HF Trainer NeuralCollapseCallback: a tiny BERT classifier from a config (random weights, no download)
trained one epoch; the logged nc/<layer>/<metric> equal measure() on the same data and final weights."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from nclens.core.measure import measure  # noqa: E402
from nclens.core.probe import LayerSpec  # noqa: E402
from nclens.integrations.hf import NeuralCollapseCallback  # noqa: E402


class Tokens(Dataset):
    def __init__(self, n: int = 64, t: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        self.ids = torch.randint(1, 30, (n, t), generator=g)
        self.ids[:, 1] = 1 + self.labels  # a token that carries the class, so training has something to learn
        lengths = torch.randint(4, t + 1, (n,), generator=g)
        self.mask = (torch.arange(t)[None] < lengths[:, None]).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i] * self.mask[i], "attention_mask": self.mask[i], "labels": self.labels[i]}


def _trainer(tmp_path, callback: NeuralCollapseCallback):
    config = transformers.BertConfig(vocab_size=30, hidden_size=12, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=1, per_device_train_batch_size=16, per_device_eval_batch_size=16,
        learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no", logging_strategy="no",
        disable_tqdm=True, seed=0,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), eval_dataset=Tokens(32, seed=1))
    callback.attach(trainer)
    return trainer


def test_logged_metrics_equal_measure_on_the_same_data_and_weights(tmp_path):
    spec = [LayerSpec("bert.encoder.layer.*", mode="output", tokens="mean"), "classifier"]
    callback = NeuralCollapseCallback(layers=spec, dataloader="eval")
    trainer = _trainer(tmp_path, callback)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if any(k.startswith("nc/") for k in entry)]
    assert len(logged) == 1
    values = {k: v for k, v in logged[0].items() if k.startswith("nc/")}
    loader = DataLoader(Tokens(32, seed=1), batch_size=16, collate_fn=trainer.data_collator)
    report = measure(trainer.model, loader, spec, progress=False)
    expected = {f"nc/{layer}/{m}": v for layer, row in report.metrics.items() for m, v in row.items()}
    assert values.keys() == expected.keys() and "nc/classifier/nc3_duality" in values
    for key, value in expected.items():
        assert math.isclose(values[key], value, rel_tol=1e-10, abs_tol=1e-12), key
    assert callback.reports[1].info["samples"] == 32


def test_options_are_checked():
    with pytest.raises(ValueError, match="every_n_epochs must be a positive integer"):
        NeuralCollapseCallback(every_n_epochs=-1)
    with pytest.raises(ValueError, match="dataloader must be 'train', 'eval' or a callable"):
        NeuralCollapseCallback(dataloader="val")
