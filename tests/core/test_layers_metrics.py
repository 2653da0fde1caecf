"""Layer metrics: subspace alignment against closed forms, scipy and random-subspace expectations;
conv reshape conventions on hand-made cases; associative-memory alignment against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

from nclens.core.metrics.layers import (
    assoc_memory_alignment,
    assoc_memory_alignment_conv,
    conv_means_matrix,
    conv_weight_matrix,
    layer_alignment,
    random_subspace_alignment_k1,
    subspace_alignment,
    subspace_alignment_conv,
    weight_spectrum,
)

f64 = torch.float64



def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_alignment_is_one_when_w_reads_the_span_of_the_means():
    g = _gen(0)
    means = torch.randn(5, 30, generator=g, dtype=f64)  # K=5 means in R^30
    w = torch.randn(12, 5, generator=g, dtype=f64) @ means  # row space of W = span of the means
    assert subspace_alignment(w, means) == pytest.approx(1.0, abs=1e-10)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=f64))
    # invariances: scaling W, rotating both spaces together
    assert subspace_alignment(7.0 * w, means) == pytest.approx(1.0, abs=1e-10)
    assert subspace_alignment(w @ q, means @ q) == pytest.approx(1.0, abs=1e-10)


def test_alignment_is_zero_for_orthogonal_subspaces():
    means = torch.zeros(3, 8, dtype=f64)
    means[:, :3] = torch.eye(3, dtype=f64) + 0.5
    w = torch.zeros(4, 8, dtype=f64)
    w[:, 3:7] = torch.eye(4, dtype=f64) * torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=f64)
    assert subspace_alignment(w, means) == pytest.approx(0.0, abs=1e-12)


def test_alignment_equals_scipy_principal_angles():
    g = _gen(1)
    for k, d in ((3, 10), (5, 40), (2, 5)):
        means = torch.randn(k, d, generator=g, dtype=f64)
        w = torch.randn(k, d, generator=g, dtype=f64)  # rank k: its top-k right space is its row space
        angles = scipy.linalg.subspace_angles(w.T.numpy(), means.T.numpy())
        assert subspace_alignment(w, means) == pytest.approx(float(np.cos(angles).mean()), abs=1e-10)


def test_random_directions_match_the_closed_form_k1():
    g = _gen(2)
    d, trials = 12, 2000
    values = []
    for _ in range(trials):
        w = torch.randn(1, d, generator=g, dtype=f64)
        m = torch.randn(1, d, generator=g, dtype=f64)
        values.append(subspace_alignment(w, m))
    values = np.asarray(values)
    expected = random_subspace_alignment_k1(d)  # Γ(d/2)/(√π Γ((d+1)/2))
    assert expected == pytest.approx(math.gamma(d / 2) / (math.sqrt(math.pi) * math.gamma((d + 1) / 2)))
    assert abs(values.mean() - expected) < 4 * values.std() / math.sqrt(trials)


def test_random_subspaces_match_the_expected_squared_cosines():
    # E Σ_j σ_j² = E ‖V_Wᵀ U_M‖_F² = k²/d for independent Haar-random k-dim subspaces of R^d.
    g = _gen(3)
    k, d, trials = 3, 20, 600
    sq = []
    for _ in range(trials):
        w = torch.randn(k, d, generator=g, dtype=f64)
        m = torch.randn(k, d, generator=g, dtype=f64)
        q_w, _ = torch.linalg.qr(w.T)
        q_m, _ = torch.linalg.qr(m.T)
        sv = torch.linalg.svdvals(q_w.T @ q_m)
        assert subspace_alignment(w, m) == pytest.approx(float(sv.mean()), abs=1e-10)
        sq.append(float(sv.square().sum()))
    sq = np.asarray(sq)
    assert abs(sq.mean() - k * k / d) < 4 * sq.std() / math.sqrt(trials)


def test_k_defaults_to_number_of_classes_and_is_clipped():
    g = _gen(4)
    means = torch.randn(4, 6, generator=g, dtype=f64)
    w = torch.randn(3, 6, generator=g, dtype=f64)  # d_out = 3 < K: k clipped to 3
    angles = scipy.linalg.subspace_angles(w.T.numpy(), means.T.numpy())  # 3 angles (dim min)
    u_m = torch.linalg.svd(means.T, full_matrices=False)[0][:, :3]
    q_w, _ = torch.linalg.qr(w.T)
    assert subspace_alignment(w, means) == pytest.approx(float(torch.linalg.svdvals(q_w.T @ u_m).mean()))
    assert len(angles) == 3
    with pytest.raises(ValueError, match="d_in"):
        subspace_alignment(w, torch.randn(4, 5, dtype=f64))
    with pytest.raises(ValueError, match="k must be"):
        subspace_alignment(w, means, k=0)


def test_conv_reshape_conventions_hand_made():
    weight = torch.arange(2 * 3 * 3 * 3, dtype=f64).reshape(2, 3, 3, 3)  # (C_out=2, C_in=3, 3, 3)
    wm = conv_weight_matrix(weight)
    assert wm.shape == (3, 2 * 9)
    for i in range(3):
        for o in range(2):
            for p in range(9):
                assert wm[i, o * 9 + p] == weight[o, i, p // 3, p % 3]
    maps = torch.arange(2 * 3 * 2 * 2, dtype=f64).reshape(2, 3, 2, 2)  # (K=2, C_in=3, H=2, W=2)
    mm = conv_means_matrix(maps)
    assert mm.shape == (3, 2 * 4)
    for c in range(3):
        for k in range(2):
            for h in range(2):
                for w in range(2):
                    assert mm[c, k * 4 + h * 2 + w] == maps[k, c, h, w]


def test_conv_alignment_hand_made_values():
    # Class-mean maps live in channel 0 only; the weight reads channel 0 + channel 2 equally.
    maps = torch.zeros(2, 3, 2, 2, dtype=f64)
    maps[0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    maps[1, 0] = torch.tensor([[-1.0, 0.5], [0.0, 2.0]])
    weight = torch.zeros(4, 3, 1, 1, dtype=f64)
    weight[0, 0, 0, 0] = weight[0, 2, 0, 0] = 1.0
    assert subspace_alignment_conv(weight, maps, k=1) == pytest.approx(1 / math.sqrt(2), abs=1e-12)
    exact = torch.zeros(4, 3, 3, 3, dtype=f64)
    exact[:, 0] = torch.randn(4, 3, 3, generator=_gen(5), dtype=f64)
    assert subspace_alignment_conv(exact, maps, k=1) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="channels"):
        subspace_alignment_conv(weight, torch.zeros(2, 4, 2, 2, dtype=f64) + 1)


def test_assoc_memory_alignment_linear():
    g = _gen(6)
    x = torch.randn(4, 9, generator=g, dtype=f64)  # input class means
    y = torch.randn(4, 5, generator=g, dtype=f64)  # output class means
    hebbian = y.T @ x  # Σ_c y_c x_cᵀ
    assert assoc_memory_alignment(hebbian, x, y) == pytest.approx(1.0, abs=1e-12)
    assert assoc_memory_alignment(-hebbian, x, y) == pytest.approx(-1.0, abs=1e-12)
    w = torch.randn(5, 9, generator=g, dtype=f64)
    b = torch.randn(5, generator=g, dtype=f64)
    memory = (x @ w.T + b).T @ x
    expected = float((w * memory).sum() / (w.norm() * memory.norm()))
    assert assoc_memory_alignment(w, x, bias=b) == pytest.approx(expected, abs=1e-12)
    assert assoc_memory_alignment(w, x, x @ w.T + b) == pytest.approx(expected, abs=1e-12)


def _brute_force_conv_memory(conv: nn.Conv2d, maps: np.ndarray) -> np.ndarray:
    """Σ_c Σ_p y_c[:, p] x_c[:, patch p]ᵀ with explicit loops (independent reference)."""
    w = conv.weight.detach().double().numpy()
    b = conv.bias.detach().double().numpy()
    c_out, c_in, kh, kw = w.shape
    pad, stride = conv.padding[0], conv.stride[0]
    xp = np.pad(maps, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h_out = (xp.shape[2] - kh) // stride + 1
    w_out = (xp.shape[3] - kw) // stride + 1
    memory = np.zeros((c_out, c_in * kh * kw))
    for c in range(maps.shape[0]):
        for i in range(h_out):
            for j in range(w_out):
                patch = xp[c, :, i * stride: i * stride + kh, j * stride: j * stride + kw].reshape(-1)
                y = w.reshape(c_out, -1) @ patch + b
                memory += np.outer(y, patch)
    return memory


def test_assoc_memory_alignment_conv_matches_brute_force():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1).double()
    maps = torch.randn(3, 3, 5, 5, generator=_gen(7), dtype=f64)
    memory = _brute_force_conv_memory(conv, maps.numpy())
    w = conv.weight.detach().reshape(4, -1).numpy()
    expected = float((w * memory).sum() / (np.linalg.norm(w) * np.linalg.norm(memory)))
    assert assoc_memory_alignment_conv(conv, maps) == pytest.approx(expected, abs=1e-12)
    out = F.conv2d(maps, conv.weight.double(), conv.bias.double(), 2, 1)
    assert assoc_memory_alignment_conv(conv, maps, out) == pytest.approx(expected, abs=1e-12)


def test_one_by_one_conv_on_one_pixel_equals_linear():
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 3, 1).double()
    lin_w = conv.weight.detach().reshape(3, 6)
    maps = torch.randn(4, 6, 1, 1, generator=_gen(8), dtype=f64)
    assert assoc_memory_alignment_conv(conv, maps) == pytest.approx(
        assoc_memory_alignment(lin_w, maps.reshape(4, 6), bias=conv.bias.detach()), abs=1e-12
    )
    assert subspace_alignment_conv(conv.weight, maps, k=3) == pytest.approx(
        subspace_alignment(lin_w, maps.reshape(4, 6), k=3), abs=1e-10
    )


def test_weight_spectrum_and_layer_alignment_dispatch():
    g = _gen(9)
    w = torch.randn(5, 7, generator=g, dtype=f64)
    assert np.allclose(weight_spectrum(w).numpy(), np.linalg.svd(w.numpy(), compute_uv=False))
    cw = torch.randn(4, 2, 3, 3, generator=g, dtype=f64)
    reshaped = cw.numpy().transpose(1, 0, 2, 3).reshape(2, 36)
    assert np.allclose(weight_spectrum(cw).numpy(), np.linalg.svd(reshaped, compute_uv=False))
    lin = nn.Linear(7, 3).double()
    out = layer_alignment(lin, torch.randn(3, 7, generator=g, dtype=f64))
    assert set(out) == {"subspace_alignment", "assoc_memory_alignment"}
    assert 0.0 <= out["subspace_alignment"] <= 1.0
    with pytest.raises(TypeError, match="nn.Linear or nn.Conv2d"):
        layer_alignment(nn.ReLU(), torch.zeros(3, 7))
    with pytest.raises(ValueError, match="NaN"):
        subspace_alignment(torch.full((2, 3), float("nan")), torch.ones(2, 3))
