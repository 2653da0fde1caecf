"""Label-set encoding, MultiLabelStats, MLab NC metrics (vs exact geometry and float64 references),
multi-label data and the fixed ETF head."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from nclens.core.metrics.multilabel import compute_multilabel_metrics, multilabel_metrics, tagwise_scales
from nclens.core.multilabel import MAX_TAGS, MultiLabelStats, decode_label_sets, encode_label_sets
from nclens.core.stats import ClassStats
from nclens.data.multilabel import (
    compose_multilabel,
    label_sets,
    load_ml_mnist,
    load_multilabel_digits,
    multilabel_gaussian,
)
from nclens.nn.heads import FixedETFClassifier


# ------------------------------------------------------------------ encoding
def test_encode_decode_round_trip_and_limits():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(200, MAX_TAGS, generator=g) < 0.1).long()
    y[:, 5] = 1
    codes = encode_label_sets(y)
    assert codes.dtype == torch.int64 and bool((codes > 0).all())
    assert torch.equal(decode_label_sets(codes, MAX_TAGS), y)
    top = torch.zeros(1, MAX_TAGS, dtype=torch.long)
    top[0, -1] = 1
    assert int(encode_label_sets(top)) == 2 ** (MAX_TAGS - 1)
    with pytest.raises(ValueError, match="at most K=62"):
        encode_label_sets(torch.ones(3, 63))
    with pytest.raises(ValueError, match="empty label set"):
        encode_label_sets(torch.tensor([[0, 0, 0], [1, 0, 0]]))
    with pytest.raises(ValueError, match="0/1"):
        encode_label_sets(torch.tensor([[2, 0, 0]]))


def _sets_equal(a: ClassStats, b: ClassStats) -> None:
    assert torch.equal(a.label_values, b.label_values)
    assert torch.equal(a.counts, b.counts)
    assert torch.allclose(a.sums, b.sums, rtol=1e-12, atol=1e-12)
    assert torch.allclose(a.scatter_w, b.scatter_w, rtol=1e-10, atol=1e-10)


def test_label_set_index_is_invariant_to_batching_and_sharding():
    data = multilabel_gaussian(5, 7, (6, 3, 2), scales=(0.8, 0.6), sigma=0.3, seed=1, dtype=torch.float64)
    x, y = data.features, data.labels
    n = x.shape[0]
    one = MultiLabelStats(5).update(x, y)
    g = torch.Generator().manual_seed(2)
    perm = torch.randperm(n, generator=g)
    batched = MultiLabelStats(5)
    for chunk in torch.split(perm, 7):  # small shuffled batches, new sets appear in any order
        batched.update(x[chunk], y[chunk])
    cuts = sorted(torch.randperm(n - 1, generator=g)[:3].add(1).tolist())
    shards = [MultiLabelStats(5).update(x[perm[a:b]], y[perm[a:b]]) for a, b in zip([0, *cuts], [*cuts, n])]
    merged = MultiLabelStats(5)
    for s in reversed(shards):  # merged in another order
        merged.merge(s)
    buf = io.BytesIO()
    torch.save(merged.state_dict(), buf)
    buf.seek(0)
    restored = MultiLabelStats(5).load_state_dict(torch.load(buf, weights_only=True))
    for other in (batched, merged, restored):
        _sets_equal(one.sets, other.sets)
        _sets_equal(one.singles, other.singles)
    assert torch.equal(one.set_codes, torch.sort(encode_label_sets(data.set_labels)).values)
    # the singleton statistics equal plain ClassStats on the single-label samples
    single = y.sum(1) == 1
    ref = ClassStats(num_classes=5).update(x[single], y[single].argmax(1))
    _sets_equal(ref, one.singles)


# ------------------------------------------------------------------ metrics
def test_exact_mlab_nc_features_score_zero_and_recover_planted_scales():
    data = multilabel_gaussian(5, 9, (4, 3, 2), scales=(0.7, 1.9), sigma=0.0, offset=3.0, seed=3,
                               dtype=torch.float64)
    centred = data.singleton_means - data.singleton_means.mean(0)
    weight = 2.5 * centred  # self-dual classifier
    m = compute_multilabel_metrics(data.features, data.labels, weight)
    for key in ("nc1", "nc1_sets", "nc2_etf", "nc2_equinorm", "nc2_equiangular", "nc2_etf_w", "nc3_duality",
                "nc3_etf", "tagwise_residual_m2", "tagwise_residual_m3", "tagwise_scale_m2_std",
                "tagwise_scale_m3_std", "tagwise_angle_ratio"):
        assert abs(m[key]) < 1e-10, (key, m[key])
    assert m["tagwise_scale_m2"] == pytest.approx(0.7, abs=1e-12)
    assert m["tagwise_scale_m3"] == pytest.approx(1.9, abs=1e-12)


def _reference_metrics(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Independent float64 numpy implementation of the registry's multi-label definitions."""
    k = y.shape[1]
    keys = [tuple(row) for row in y]
    sets = sorted(set(keys))
    means = {s: x[[i for i, kk in enumerate(keys) if kk == s]].mean(0) for s in sets}
    single = [tuple(int(j == t) for j in range(k)) for t in range(k)]
    mu = np.stack([means[s] for s in single])
    mu_g = mu.mean(0)
    mbar = mu - mu_g
    idx1 = [i for i, kk in enumerate(keys) if sum(kk) == 1]
    dev1 = np.stack([x[i] - means[keys[i]] for i in idx1])
    sw1 = dev1.T @ dev1 / len(idx1)
    devs = np.stack([x[i] - means[keys[i]] for i in range(len(keys))])
    sws = devs.T @ devs / len(keys)
    sb_pinv = np.linalg.pinv(mbar.T @ mbar / k, rcond=1e-10)
    out = {"nc1": np.trace(sw1 @ sb_pinv) / k, "nc1_sets": np.trace(sws @ sb_pinv) / k}
    by_m: dict[int, list[tuple[float, float]]] = {}
    num, den = [], []
    for s in sets:
        mm = sum(s)
        if mm < 2:
            continue
        tags = [j for j in range(k) if s[j]]
        a = mbar[tags].mean(0)
        v = means[s] - mu_g
        c = v @ a / (a @ a)
        by_m.setdefault(mm, []).append((c, np.linalg.norm(v - c * a) / np.linalg.norm(v)))
        if mm == 2:
            def ang(p, q):
                return math.acos(np.clip(p @ q / np.linalg.norm(p) / np.linalg.norm(q), -1, 1))
            abar = mbar[tags].sum(0)
            num.append(ang(v, abar))
            den += [ang(abar, mbar[t]) for t in tags]
    for mm, vals in by_m.items():
        cs = np.array([c for c, _ in vals])
        out[f"tagwise_scale_m{mm}"] = cs.mean()
        out[f"tagwise_scale_m{mm}_std"] = cs.std()
        out[f"tagwise_residual_m{mm}"] = np.mean([r for _, r in vals])
    out["tagwise_angle_ratio"] = np.mean(num) / np.mean(den)
    return out


def test_metrics_match_independent_float64_reference_on_noisy_data():
    data = multilabel_gaussian(4, 6, (7, 4, 3), scales=(1.3, 1.6), sigma=0.25, offset=2.0, seed=4,
                               dtype=torch.float64)
    got = compute_multilabel_metrics(data.features, data.labels)
    ref = _reference_metrics(data.features.numpy(), data.labels.numpy().astype(int))
    for key, val in ref.items():
        assert got[key] == pytest.approx(val, rel=1e-9, abs=1e-12), key


def test_noisy_features_recover_planted_scale_and_nc1_ground_truth():
    k, r, sigma = 4, 2.0, 0.2
    data = multilabel_gaussian(k, 8, (400, 150), scales=(1.4,), radius=r, sigma=sigma, seed=5, dtype=torch.float64)
    m = compute_multilabel_metrics(data.features, data.labels)
    expected = sigma**2 * (k - 1) ** 2 / (k * r**2)  # σ²(K−1)²/(K r²), the closed form
    assert m["nc1"] == pytest.approx(expected, rel=0.15)
    assert m["nc1_sets"] == pytest.approx(expected, rel=0.15)
    assert m["tagwise_scale_m2"] == pytest.approx(1.4, abs=0.02)


def test_metrics_are_invariant_to_rotation_translation_and_scale():
    data = multilabel_gaussian(4, 6, (6, 3), scales=(0.9,), sigma=0.3, seed=6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64))
    base = compute_multilabel_metrics(data.features, data.labels)
    moved = compute_multilabel_metrics(3.0 * data.features @ q + 5.0, data.labels)
    rotated = compute_multilabel_metrics(3.0 * data.features @ q, data.labels)
    assert set(base) == set(moved)
    uncentred = ("tagwise_angle_li", "tagwise_angle_li_deg")  # Li et al.'s official metric: uncentred means
    for key in base:
        got = rotated[key] if key in uncentred else moved[key]
        assert got == pytest.approx(base[key], rel=1e-9, abs=1e-12), key
    assert abs(moved["tagwise_angle_li"] - base["tagwise_angle_li"]) > 1e-3  # a translation changes it


def test_metric_keys_float32_input_and_errors():
    data = multilabel_gaussian(4, 6, (5, 2), sigma=0.1, seed=8)  # float32 features
    m = compute_multilabel_metrics(data.features, data.labels)
    assert {"tagwise_scale_m2", "tagwise_residual_m2", "tagwise_scale_m2_std", "nc1", "nc1_sets"} <= set(m)
    per = tagwise_scales(MultiLabelStats(4).update(data.features, data.labels))
    assert sorted(per) == [2] and per[2]["scale"].shape == (6,)
    no_single = data.labels[data.labels.sum(1) > 1]
    with pytest.raises(ValueError, match="tags without singletons"):
        compute_multilabel_metrics(data.features[data.labels.sum(1) > 1], no_single)
    with pytest.raises(ValueError, match="N×K"):
        compute_multilabel_metrics(data.features, data.labels.argmax(1))
    with pytest.raises(ValueError, match="expected K=4"):
        MultiLabelStats(4).update(data.features, data.labels[:, :3])
    with pytest.raises(TypeError, match="MultiLabelStats"):
        multilabel_metrics(ClassStats(num_classes=4))


# --------------------------------------------------------------------- data
def test_label_sets_and_gaussian_counts():
    members, reps = label_sets(5, (3, 2, 1))
    assert members.shape == (5 + 10 + 10, 5) and reps.tolist() == [3] * 5 + [2] * 10 + [1] * 10
    data = multilabel_gaussian(5, 6, (3, 2, 1), seed=0)
    assert data.features.shape == (5 * 3 + 10 * 2 + 10, 6)


def test_compose_places_source_images_of_the_right_tags():
    g = torch.Generator().manual_seed(9)
    imgs = torch.randint(1, 255, (30, 4, 4), generator=g, dtype=torch.uint8)
    tags = torch.arange(30) % 3
    x, y = compose_multilabel(imgs, tags, 3, (4, 3), max_shift=0, seed=1)
    assert x.shape == (3 * 4 + 3 * 3, 1, 8, 8) and x.dtype == torch.uint8
    lookup = {bytes(img.numpy().tobytes()): int(t) for img, t in zip(imgs, tags)}
    for xi, yi in zip(x[:, 0], y):
        quads = [xi[:4, :4], xi[4:, 4:], xi[:4, 4:], xi[4:, :4]]
        found = sorted(lookup[bytes(q.numpy().tobytes())] for q in quads if bytes(q.numpy().tobytes()) in lookup)
        assert found == yi.nonzero().flatten().tolist()
        assert int((xi[:4, 4:] != 0).sum()) == 0 and int((xi[4:, :4] != 0).sum()) == 0  # m ≤ 2: TL / BR only
    with pytest.raises(ValueError, match="max_shift"):
        compose_multilabel(imgs, tags, 3, (1,), max_shift=2)
    with pytest.raises(ValueError, match="no source images"):
        compose_multilabel(imgs[tags != 1], tags[tags != 1], 3, (1, 1))


def test_multilabel_digits_and_missing_torchvision(tmp_path):
    split = load_multilabel_digits(per_set=(5, 1), test_per_set=(2, 1), classes=[1, 3, 7], seed=0)
    assert split.x_train.shape == (3 * 5 + 3, 1, 16, 16) and split.num_tags == 3
    assert split.x_test.shape[0] == 3 * 2 + 3
    assert float(split.x_train.min()) >= 0.0 and float(split.x_train.max()) <= 1.0
    assert sorted(split.y_train.sum(1).unique().tolist()) == [1.0, 2.0]
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_ml_mnist(tmp_path / "absent")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="torchvision"):
            load_ml_mnist(tmp_path)


# -------------------------------------------------------------------- heads
def test_fixed_etf_classifier_geometry_and_frozen_weight():
    k = 5
    head = FixedETFClassifier(k, k)
    expected = math.sqrt(k / (k - 1)) * (torch.eye(k) - 1.0 / k)  # rows √(K/(K−1))(e_k − 1/K)
    assert torch.allclose(head.weight, expected, atol=1e-6)
    wide = FixedETFClassifier(12, k, seed=3)
    gram = wide.weight.double() @ wide.weight.double().T
    assert torch.allclose(gram, (k / (k - 1)) * (torch.eye(k, dtype=torch.float64) - 1.0 / k), atol=1e-6)
    assert [n for n, p in wide.named_parameters()] == ["bias"] and "weight" in wide.state_dict()
    x = torch.randn(8, 12, requires_grad=True)
    wide(x).sum().backward()
    assert wide.bias.grad is not None and x.grad is not None
    assert torch.allclose(wide(x), x @ wide.weight.T + wide.bias)
    with pytest.raises(ValueError, match="K-1"):
        FixedETFClassifier(3, k)
