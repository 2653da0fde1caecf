"""Probe hooks and measure(): same features as a manual forward, hooks always removed, errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nclens.core.measure import CollapseReport, measure
from nclens.core.probe import LayerSpec, Probe, default_layers
from reference import reference_metrics


class SmallCNN(nn.Module):
    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc1 = nn.Linear(4, 8)
        self.head = nn.Linear(8, k)

    def forward(self, x):
        z = self.act(self.conv(x)).mean(dim=(2, 3))
        return self.head(torch.relu(self.fc1(z)))


def _data(n=96, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.arange(n) % k


def test_hooks_capture_manual_forward():
    torch.manual_seed(0)
    net = SmallCNN()
    x, _ = _data()
    with Probe(net, ["conv", "fc1", "head"], mode="output", pool="flatten") as probe:
        net(x)
    conv_out = net.conv(x)
    torch.testing.assert_close(probe.features["conv"], conv_out.flatten(1))
    hidden = net.fc1(net.act(conv_out).mean(dim=(2, 3)))
    torch.testing.assert_close(probe.features["fc1"], hidden)
    torch.testing.assert_close(probe.features["head"], net(x))
    with Probe(net, ["conv", "head"], mode="input", pool="avg") as probe:
        net(x)
    torch.testing.assert_close(probe.features["conv"], x.mean(dim=(2, 3)))
    torch.testing.assert_close(probe.features["head"], torch.relu(hidden))
    assert not probe.features["head"].requires_grad


def test_hooks_removed_even_when_forward_raises():
    net = SmallCNN()
    with pytest.raises(RuntimeError):
        with Probe(net, ["fc1"]):
            net(torch.randn(2, 3, 5, 5))  # wrong channel count
    assert all(not m._forward_hooks for m in net.modules())
    probe = Probe(net, ["fc1"]).attach().attach()  # no double registration
    assert len(net.fc1._forward_hooks) == 1
    probe.detach()
    assert not net.fc1._forward_hooks


def test_unknown_layer_lists_valid_names():
    with pytest.raises(KeyError, match=r"valid names are: \['conv', 'act', 'fc1', 'head'\]"):
        Probe(SmallCNN(), ["fc2"])
    with pytest.raises(ValueError, match="more than once"):
        Probe(SmallCNN(), ["fc1", "fc1"])
    assert default_layers(SmallCNN()) == ["conv", "fc1", "head"]


def test_measure_equals_reference_on_captured_features():
    torch.manual_seed(1)
    net = SmallCNN().double()
    x, y = _data()
    x = x.double()
    loader = DataLoader(TensorDataset(x, y), batch_size=17)
    report = measure(net, loader, nc4=True, progress=False)
    assert isinstance(report, CollapseReport) and report.layers == ["conv", "fc1", "head"]
    with torch.no_grad():
        h = torch.relu(net.fc1(net.act(net.conv(x)).mean(dim=(2, 3))))
    ref = reference_metrics(h.numpy(), y.numpy(), net.head.weight.detach().numpy(), net.head.bias.detach().numpy())
    for name, value in ref.items():
        assert math.isclose(report.metrics["head"][name], value, rel_tol=1e-7, abs_tol=1e-12), name
    assert "nc3_duality" not in report.metrics["fc1"]  # fc1 has 8 outputs, not K=3
    frame = report.to_dataframe()
    assert list(frame.index) == ["conv", "fc1", "head"] and "nc1" in frame.columns
    assert report.to_dict()["info"]["samples"] == 96


def test_measure_restores_training_mode_and_handles_errors():
    net = SmallCNN()
    net.train()
    x, y = _data()
    with pytest.raises(TypeError, match=r"\(inputs, labels\)"):
        measure(net, [x], progress=False)
    assert net.training and all(not m._forward_hooks for m in net.modules())
    with pytest.raises(ValueError, match="no samples"):
        measure(net, [], progress=False)


def test_measure_nc4_with_reference_means(tmp_path):
    net = SmallCNN()
    x, y = _data()
    train = measure(net, [(x[:64], y[:64])], layers=["head"], nc4=True, progress=False)
    test = measure(net, [(x[64:], y[64:])], layers=["head"], nc4=True, reference=train, progress=False)
    from nclens.core.metrics import nc4_ncc_mismatch

    with Probe(net, ["head"]) as probe:
        net(x[64:])
    expected = nc4_ncc_mismatch(probe.features["head"], net.head.weight.detach(), net.head.bias.detach(),
                                train.stats["head"].means)
    assert test.metrics["head"]["nc4_ncc_mismatch"] == pytest.approx(expected)
    test.to_json(tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text().startswith("{")


def test_hooks_removed_when_the_statistics_reject_a_batch():
    """An error raised while consuming captured features (NaN features) still removes every hook."""
    net = SmallCNN()
    x, y = _data()
    x[3] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        measure(net, [(x, y)], progress=False)
    assert all(not m._forward_hooks for m in net.modules())


def test_top_level_api_measure_is_callable_and_still_a_module():
    import nclens
    import nclens.core.measure as measure_module

    net = SmallCNN()
    x, y = _data()
    report = nclens.measure(net, [(x, y)], layers=["head"], progress=False)
    assert isinstance(report, nclens.CollapseReport) and report.layers == ["head"]
    assert measure_module.CollapseReport is nclens.CollapseReport
    assert nclens.ClassStats is not None and callable(nclens.compute_metrics)


# ---------------------------------------------------------------- activations of any rank, layer specs
class SeqNet(nn.Module):
    """A tiny sequence model: embedding → two Linear 'blocks' on (B, T, H) → mean-pool → head."""

    def __init__(self, vocab: int = 11, h: int = 6, k: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, h)
        self.block = nn.Linear(h, h)
        self.conv = nn.Conv1d(h, 4, 3, padding=1)
        self.head = nn.Linear(h, k)

    def forward(self, input_ids, attention_mask=None):
        z = torch.tanh(self.block(self.emb(input_ids)))  # (B, T, H)
        self.conv(z.transpose(1, 2))  # (B, C, T): a channel-first map
        return self.head(z.mean(1))


def _seq_batches(n=48, t=7, k=3, b=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 11, (n, t), generator=g)
    lengths = torch.randint(2, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    y = torch.arange(n) % k
    return [{"input_ids": ids[i:i + b], "attention_mask": mask[i:i + b], "labels": y[i:i + b]} for i in range(0, n, b)]


def test_three_d_activation_without_tokens_is_an_error_naming_layer_shape_options():
    net = SeqNet().double()
    with pytest.raises(ValueError) as err:
        measure(net, _seq_batches(), layers=["block"], mode="output", progress=False)
    text = str(err.value)
    assert "'block'" in text and "(16, 7, 6)" in text and "tokens='cls' | 'first' | 'last' | 'mean' | 'all'" in text
    assert all(not m._forward_hooks for m in net.modules())


@pytest.mark.parametrize("tokens", ["cls", "first", "last", "mean", "all"])
def test_token_reductions_respect_the_attention_mask(tokens):
    torch.manual_seed(2)
    net = SeqNet().double()
    batches = _seq_batches()
    report = measure(net, batches, layers=[LayerSpec("block", mode="output", tokens=tokens)], progress=False)
    feats, labels = [], []
    with torch.no_grad():
        for b in batches:
            h = net.block(net.emb(b["input_ids"]))  # (B, T, H): the block output
            m = b["attention_mask"].bool()
            pos = torch.arange(h.shape[1])
            if tokens == "cls":
                f, y = h[:, 0], b["labels"]
            elif tokens == "first":
                f, y = h[torch.arange(len(h)), torch.where(m, pos, 99).amin(1)], b["labels"]
            elif tokens == "last":
                f, y = h[torch.arange(len(h)), torch.where(m, pos, -1).amax(1)], b["labels"]
            elif tokens == "mean":
                f, y = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True), b["labels"]
            else:
                f, y = h[m], b["labels"][:, None].expand_as(m)[m]
            feats.append(f)
            labels.append(y)
    x, y = torch.cat(feats), torch.cat(labels)
    assert report.info["dims"]["block"] == 6 and report.info["samples"] == len(y)
    ref = reference_metrics(x.numpy(), y.numpy())
    for name, value in ref.items():
        assert math.isclose(report.metrics["block"][name], value, rel_tol=1e-9, abs_tol=1e-12), (tokens, name)


def test_channel_first_modules_pool_and_globs_predicates_specs():
    net = SeqNet().double()
    report = measure(net, _seq_batches(), layers=[LayerSpec("conv", mode="output"), "head"], progress=False)
    assert report.info["dims"] == {"conv": 4, "head": 6}  # Conv1d (B, C, T) pooled over T; head input (B, H)
    flat = measure(net, _seq_batches(), layers=[LayerSpec("conv", mode="output", pool="flatten")], progress=False)
    assert flat.info["dims"]["conv"] == 4 * 7
    from nclens.core.probe import resolve_layers

    assert resolve_layers(net, ["*"]) == ["emb", "block", "conv", "head"]
    assert resolve_layers(net, [lambda name, m: isinstance(m, nn.Linear)]) == ["block", "head"]
    assert resolve_layers(net, "b*") == ["block"]
    with pytest.raises(KeyError, match="matches no module"):
        resolve_layers(net, ["nope.*"])
    with pytest.raises(ValueError, match="LayerSpec\\('x'\\).tokens must be one of"):
        LayerSpec("x", tokens="middle")


def test_non_tensor_outputs_need_an_output_fn_that_the_error_suggests():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Linear(4, 3)

        def forward(self, x):
            return self.inner(x), x.sum()

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = Wrapper()

        def forward(self, x):
            return self.body(x)[0]

    net = Outer()
    x, y = torch.randn(30, 4), torch.arange(30) % 3
    with pytest.raises(TypeError, match=r"'body' output is a tuple of 2: \[Tensor\(30, 3\), Tensor\(\)\].*output_fn"):
        measure(net, [(x, y)], layers=[LayerSpec("body", mode="output")], progress=False)
    report = measure(net, [(x, y)], layers=[LayerSpec("body", mode="output", output_fn=lambda o: o[0])], progress=False)
    assert report.info["dims"]["body"] == 3
    from dataclasses import dataclass

    @dataclass
    class Out:
        hidden: torch.Tensor

    with pytest.raises(TypeError, match=r"Out with fields hidden: Tensor\(30, 3\).*o\.hidden"):
        measure(net, [(x, y)], layers=[LayerSpec("body", mode="output", output_fn=lambda o: Out(o[0]))],
                progress=False)


def test_dict_batches_with_labels_or_label_and_adapters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x, y = torch.randn(60, 5, dtype=torch.float64), torch.arange(60) % 3
    plain = measure(net, [(x, y)], layers=["2"], progress=False).metrics

    class Kw(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return self.inner(pixel_values)

    kw = Kw(net)
    for key in ("labels", "label"):
        got = measure(kw, [{"pixel_values": x, key: y}], layers=["inner.2"], progress=False).metrics["inner.2"]
        assert got == pytest.approx(plain["2"], rel=1e-12)
    custom = measure(net, [{"x": x, "target": y}], layers=["2"], batch_fn=lambda b: (b["x"], b["target"]),
                     forward_fn=lambda m, inp: m(inp), progress=False).metrics["2"]
    assert custom == pytest.approx(plain["2"], rel=1e-12)
    with pytest.raises(TypeError, match=r"keys \['target', 'x'\].*batch_fn"):
        measure(net, [{"x": x, "target": y}], layers=["2"], progress=False)
    with pytest.raises(ValueError, match=r"labels must have shape \(60,\), got \(60, 1\).*squeeze"):
        measure(net, [(x, y[:, None])], layers=["2"], progress=False)


def test_default_layer_sets_per_family():
    from nclens.core.probe import default_layer_specs, default_layers

    assert default_layers(SmallCNN()) == ["conv", "fc1", "head"]  # MLP/CNN: every Linear/Conv input

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 2, batch_first=True)
            self.q = nn.Linear(4, 4)

        def forward(self, x):
            return x + self.attention(x, x, x)[0]

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])
            self.classifier = nn.Linear(4, 3)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.classifier(x[:, 0])

    specs = default_layer_specs(Tiny())
    assert [(s.name, s.mode) for s in specs] == [("blocks.0", "output"), ("blocks.1", "output"),
                                                 ("classifier", "input")]
    x, y = torch.randn(24, 5, 4), torch.arange(24) % 3
    report = measure(Tiny(), [(x, y)], tokens="cls", progress=False)
    assert report.layers == ["blocks.0", "blocks.1", "classifier"] and set(report.info["dims"].values()) == {4}


# ---------------------------------------------------------------- rare classes, nc4, records
def test_rare_class_policy_and_large_k_note():
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.arange(60) % 4, torch.tensor([7])])  # class 7: one sample
    x = torch.randn(61, 3, generator=g, dtype=torch.float64) + 2.0 * torch.randn(8, 3, generator=g,
                                                                                 dtype=torch.float64)[y]
    net = nn.Sequential(nn.Identity())
    report = measure(net, [(x, y)], layers=["0"], progress=False)
    assert report.info["excluded"] == {"0": {"cdnv": [7]}}
    keep = y != 7
    ref = reference_metrics(x[keep].numpy(), y[keep].numpy())
    assert math.isclose(report.metrics["0"]["cdnv"], ref["cdnv"], rel_tol=1e-10)
    full = reference_metrics(x.numpy(), y.numpy())
    assert math.isclose(report.metrics["0"]["nc1"], full["nc1"], rel_tol=1e-8)
    strict = measure(net, [(x, y)], layers=["0"], min_class_count=2, progress=False)
    assert strict.info["excluded"] == {"0": {"all": [7]}} and strict.info["classes_used"] == {"0": 4}
    assert math.isclose(strict.metrics["0"]["nc1"], ref["nc1"], rel_tol=1e-8)  # singletons: S_W exact
    assert any("K=5 classes in D=3" in note for note in report.info["notes"])


def test_nc4_one_shot_iterators_and_cache():
    torch.manual_seed(3)
    net = SmallCNN().double()
    x, y = _data()
    x = x.double()
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 96, 32)]
    twice = measure(net, batches, nc4=True, progress=False)
    with pytest.raises(ValueError, match="one-shot iterator"):
        measure(net, iter(batches), nc4=True, progress=False)

    class Once:
        def __init__(self):
            self.used = False

        def __iter__(self):
            if self.used:
                return iter(())
            self.used = True
            return iter(batches)

    with pytest.raises(ValueError, match="yielded nothing the second time"):
        measure(net, Once(), nc4=True, progress=False)
    cached = measure(net, iter(batches), nc4="cache", progress=False)
    assert cached.metrics["head"]["nc4_ncc_mismatch"] == twice.metrics["head"]["nc4_ncc_mismatch"]
    with pytest.raises(ValueError, match="nc4 must be False, True or 'cache'"):
        measure(net, batches, nc4="twice", progress=False)


def test_to_records_long_format():
    net = SmallCNN()
    x, y = _data()
    report = measure(net, [(x, y)], layers=["fc1", "head"], progress=False)
    records = report.to_records(epoch=3, split="train")
    assert {tuple(sorted(r)) for r in records} == {("epoch", "layer", "metric", "split", "value")}
    assert len(records) == sum(len(row) for row in report.metrics.values())
    assert {(r["layer"], r["metric"]): r["value"] for r in records}[("head", "nc1")] == report.metrics["head"]["nc1"]
    with pytest.raises(ValueError, match="would overwrite"):
        report.to_records(layer="x")


def test_extra_metrics_and_nc5_through_measure():
    from nclens.core.metrics.extra import hyperspherical_uniformity, nc5_ood_orthogonality

    torch.manual_seed(4)
    net = SmallCNN().double()
    x, y = _data()
    x = x.double()
    ood = [(torch.randn(40, 1, 5, 5, dtype=torch.float64) * 3,)]
    report = measure(net, [(x, y)], layers=["head"], metrics=["nc1", "gnc2_log", "unc3_uniform_duality"],
                     ood=[(o[0], torch.zeros(40, dtype=torch.long)) for o in ood], progress=False)
    row = report.metrics["head"]
    assert set(row) == {"nc1", "gnc2_log", "unc3_uniform_duality", "nc5_ood_orthogonality"}
    assert row["gnc2_log"] == hyperspherical_uniformity(report.stats["head"], "log")
    with Probe(net, ["head"]) as probe, torch.no_grad():
        net(ood[0][0])
    expected = nc5_ood_orthogonality(report.stats["head"], probe.features["head"].mean(0))
    assert math.isclose(row["nc5_ood_orthogonality"], expected, rel_tol=1e-12)
