"""Transformers built from configs (random weights, float64, no download): measure at every layer.

* a BERT-style encoder: ``tokens="cls"`` and ``"mean"`` (with padding) at every block, D = hidden size,
  equal to a manual computation on the hidden states the model returns (``output_hidden_states``);
  no ``tokens=`` is an error naming the layer and its shape;
* a GPT-2 causal LM with ``labels_fn=next_token()``: K = distinct next tokens, the rare-class policy
  reported, equal to a manual ClassStats computation on the last hidden states.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from nclens.labels import next_token  # noqa: E402

from nclens.core.measure import measure  # noqa: E402
from nclens.core.metrics import compute_metrics  # noqa: E402
from nclens.core.probe import LayerSpec  # noqa: E402
from nclens.core.stats import ClassStats  # noqa: E402
from reference import reference_metrics  # noqa: E402

N, T, K, B = 48, 9, 3, 16


def _batches(vocab: int, seed: int = 0, with_labels: bool = True):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (N, T), generator=g)
    lengths = torch.randint(3, T + 1, (N,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ids = ids * mask  # padding id 0
    y = torch.arange(N) % K
    out = []
    for i in range(0, N, B):
        batch = {"input_ids": ids[i:i + B], "attention_mask": mask[i:i + B]}
        if with_labels:
            batch["labels"] = y[i:i + B]
        out.append(batch)
    return out


@pytest.fixture(scope="module")
def bert():
    config = transformers.BertConfig(vocab_size=30, hidden_size=12, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16)
    torch.manual_seed(0)
    return transformers.BertModel(config).double().eval()


def _hidden(model, batches):
    with torch.no_grad():
        outs = [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
                for b in batches]
    return [torch.cat([o.hidden_states[i] for o in outs]) for i in range(len(outs[0].hidden_states))]


@pytest.mark.parametrize("tokens", ["cls", "mean"])
def test_bert_every_layer_equals_manual_hidden_states(bert, tokens):
    batches = _batches(30)
    report = measure(bert, batches, tokens=tokens, progress=False)
    blocks = [f"encoder.layer.{i}" for i in range(3)]
    assert report.layers == [*blocks, "pooler.dense"]  # the default set: every block and the head's input
    assert all(report.info["dims"][b] == bert.config.hidden_size for b in blocks)
    hidden = _hidden(bert, batches)
    mask = torch.cat([b["attention_mask"] for b in batches]).double()
    y = torch.cat([b["labels"] for b in batches])
    for i, name in enumerate(blocks):
        h = hidden[i + 1]  # (N, T, H): the output of block i
        x = h[:, 0] if tokens == "cls" else (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        manual = compute_metrics(ClassStats(K).update(x, y))
        for metric, value in manual.items():
            assert math.isclose(report.metrics[name][metric], value, rel_tol=1e-10, abs_tol=1e-12), (name, metric)
        ref = reference_metrics(x.numpy(), y.numpy())
        for metric, value in ref.items():
            assert math.isclose(report.metrics[name][metric], value, rel_tol=1e-7), (name, metric)


def test_bert_without_tokens_raises(bert):
    hooks = sum(len(m._forward_hooks) for m in bert.modules())
    with pytest.raises(ValueError) as err:
        measure(bert, _batches(30), progress=False)
    message = str(err.value)
    assert "layer 'encoder.layer.0' output has shape (16, 9, 12)" in message
    assert "tokens='cls' | 'first' | 'last' | 'mean' | 'all'" in message
    assert sum(len(m._forward_hooks) for m in bert.modules()) == hooks  # ours are removed


def test_bert_glob_layers_and_token_specs(bert):
    report = measure(bert, _batches(30), layers=[LayerSpec("encoder.layer.*", mode="output", tokens="cls"),
                                                 LayerSpec("encoder.layer.0.output.dense", mode="output",
                                                           tokens="mean")], progress=False)
    assert report.layers == ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2", "encoder.layer.0.output.dense"]
    with pytest.raises(TypeError, match="BaseModelOutput.*last_hidden_state: Tensor"):
        measure(bert, _batches(30), layers=[LayerSpec("encoder", mode="output")], progress=False)
    enc = measure(bert, _batches(30), layers=[LayerSpec("encoder", mode="output", tokens="cls",
                                                        output_fn=lambda o: o.last_hidden_state)], progress=False)
    assert enc.metrics["encoder"] == pytest.approx(report.metrics["encoder.layer.2"], rel=1e-12)


def test_gpt2_next_token_classes_equal_manual_class_stats():
    config = transformers.GPT2Config(vocab_size=200, n_embd=16, n_layer=2, n_head=2, n_positions=16,
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(1)
    model = transformers.GPT2LMHeadModel(config).double().eval()
    batches = _batches(200, seed=2, with_labels=False)
    for b in batches:
        b["labels"] = b["input_ids"].clone()  # the HF convention; next_token() decides the classes
    report = measure(model, batches, layers=[LayerSpec("lm_head", tokens="all")], labels_fn=next_token(),
                     num_classes=config.vocab_size, progress=False)
    with torch.no_grad():
        outs = [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
                for b in batches]
    h = torch.cat([o.hidden_states[-1] for o in outs])  # (N, T, H): the input of lm_head
    ids = torch.cat([b["input_ids"] for b in batches])
    mask = torch.cat([b["attention_mask"] for b in batches]).bool()
    valid = mask[:, :-1] & mask[:, 1:]
    x, y = h[:, :-1][valid], ids[:, 1:][valid]
    counts = torch.bincount(y, minlength=200)
    assert report.info["classes"] == int((counts > 0).sum()) and report.info["samples"] == int(valid.sum())
    rare = sorted(torch.nonzero(counts == 1).flatten().tolist())
    assert rare and report.info["excluded"]["lm_head"] == {"cdnv": rare}
    assert report.info["classifier_layers"] == ["lm_head"]
    assert any("lm_head: K=" in note and "in D=16 dimensions" in note for note in report.info["notes"])
    stats = ClassStats(200).update(x, y).present()
    w = model.lm_head.weight.detach().double()[stats.label_values]
    manual = compute_metrics(stats, w)
    common = sorted(set(manual) - {"cdnv"})
    for metric in common:
        assert math.isclose(report.metrics["lm_head"][metric], manual[metric], rel_tol=1e-10, abs_tol=1e-12), metric
    keep = torch.isin(y, torch.nonzero(counts >= 2).flatten())
    cdnv = compute_metrics(ClassStats().update(x[keep], y[keep]), names=["cdnv"])["cdnv"]
    assert math.isclose(report.metrics["lm_head"]["cdnv"], cdnv, rel_tol=1e-10)
