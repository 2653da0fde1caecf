"""The statistics engine under hostile but realistic input (issue 21) and its rank-k update (issue 20).

Regression cases, each with what it did before:

* float32 features near 1e19 (finite): the float32 scatter products overflowed → nc1 = NaN silently,
  effective_rank crashed. Now the batch is redone in float64 and every metric is finite and right.
* tiny deviations (1e-22): float32 squares underflow to 0 → a zero scatter. Now float64.
* a tampered state (wrong scatter shape, unsorted / duplicate labels, negative or fractional counts,
  NaN, wrong version or dtype, inconsistent shapes, a non-orthonormal projection basis) loaded and
  gave wrong numbers. Now each is refused naming the key.
* the memory guard checked one D×D while the real peak was ~3.3×. Now the estimate is the peak of an
  update and of the metrics, measured here against the process's resident set.
* D = 0 features reported "class means coincide". Now "features have D=0 columns".
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import nclens.core.stats as stats_module
from nclens.core import metrics
from nclens.core.stats import ClassStats, estimate_memory
from reference import float32_scatter_bound, reference_metrics


def _data(k=4, d=6, n=200, seed=0, scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    centres = 3.0 * torch.randn(k, d, generator=g, dtype=torch.float64)
    x = centres[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x + offset) * scale, y


# ------------------------------------------------------------------------ overflow / underflow
@pytest.mark.parametrize("exact_sums", [False, True])
@pytest.mark.parametrize("scale", [1e19, 3e37, 1e-22])
def test_float32_products_out_of_range_are_computed_in_float64(scale, exact_sums):
    x64, y = _data(scale=scale)
    x32 = x64.float()
    assert bool(torch.isfinite(x32).all()) and bool((x32 != 0).all())
    stats = ClassStats(4, exact_sums=exact_sums)
    for i in range(0, 200, 64):
        stats.update(x32[i : i + 64], y[i : i + 64])
    ref = reference_metrics(x32.double().numpy(), y.numpy())
    out = metrics.compute_metrics(stats)
    for name in ("nc1", "nc1_trace", "within_share", "cdnv", "nc2_etf"):
        assert math.isfinite(out[name]), name
        assert abs(out[name] - ref[name]) <= 1e-5 * abs(ref[name]), name
    assert math.isfinite(out["effective_rank"]) and 1.0 <= out["effective_rank"] <= 6.0
    assert bool(torch.isfinite(stats.scatter_w).all())


def test_float64_overflow_is_a_clear_error():
    x, y = _data(scale=1e160)
    with pytest.raises(ValueError, match="too large for float64"):
        ClassStats(4).update(x, y)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused_and_leaves_no_trace(bad):
    x, y = _data()
    s = ClassStats(4).update(x[:100], y[:100])
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.state_dict().items()}
    x = x.clone()
    x[150, 2] = bad
    with pytest.raises(ValueError, match="NaN or Inf values \\(in 1 of 100 rows\\)"):
        s.update(x[100:], y[100:])
    after = s.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if isinstance(before[k], torch.Tensor))


def test_zero_columns_is_a_clear_error():
    with pytest.raises(ValueError, match="features have D=0 columns"):
        ClassStats(3).update(torch.ones(4, 0), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="D=0 columns"):
        stats_module.validate_features(np.zeros((5, 0), dtype=np.float32))


# ------------------------------------------------------------------------ rank-k update
def test_syrk_equals_gemm_path_to_float32_round_off(monkeypatch):
    """SciPy ?syrk (lower triangle, filled on read) against torch's cᵀc, both accumulated in float64."""
    x64, y = _data(k=7, d=40, n=3000, seed=1, offset=5.0)
    x = x64.float()

    def run() -> ClassStats:
        s = ClassStats(7)
        for i in range(0, 3000, 512):
            s.update(x[i : i + 512], y[i : i + 512])
        return s

    syrk = run()
    assert syrk._lower_only  # the upper triangle is filled only when read
    monkeypatch.setattr(stats_module, "_BLAS", {"libs": []})  # no SciPy BLAS: the GEMM path
    gemm = run()
    monkeypatch.undo()
    sw = syrk.scatter_w
    assert torch.equal(sw, sw.T) and not syrk._lower_only
    means = gemm.means.numpy()
    centred = x.double().numpy() - means[y.numpy()]
    bound = 2 * float32_scatter_bound(centred, means[y.numpy()], batch=512)
    assert (np.abs(sw.numpy() - gemm.scatter_w.numpy()) <= bound).all()
    assert not torch.equal(sw, gemm.scatter_w)  # two different float32 summations


def test_float64_and_small_batches_use_the_float64_update_exactly():
    x, y = _data(d=9, n=300, seed=2)
    whole = ClassStats(4).update(x, y)  # float64 input: dsyrk straight into the accumulator
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    c = x - means[y]
    torch.testing.assert_close(whole.scatter_w, c.T @ c, rtol=1e-12, atol=1e-12)
    small = ClassStats(4)
    x32 = x.float()
    for i in range(0, 300, 10):  # 10-row float32 batches: float64 rank-k update (no D×D float32 workspace)
        small.update(x32[i : i + 10], y[i : i + 10])
    assert "_ws_syrk" not in small.__dict__
    ref_means = np.stack([x32.double().numpy()[y.numpy() == c].mean(0) for c in range(4)])
    c32 = x32.double().numpy() - ref_means[y.numpy()]
    bound = float32_scatter_bound(c32, ref_means[y.numpy()], batch=10)  # the centring's rounding only
    assert (np.abs(small.scatter_w.numpy() - c32.T @ c32) <= bound).all()


def test_blas_thread_count_follows_torch_and_is_restored():
    blas = stats_module._scipy_blas()
    if not blas.get("libs"):
        pytest.skip("threadpoolctl sees no BLAS library")
    before = [lib.num_threads for lib in blas["libs"]]
    seen: list[int] = []
    real = blas[torch.float32]

    def spy(*args, **kwargs):
        seen.append(blas["libs"][0].num_threads)
        return real(*args, **kwargs)

    blas[torch.float32] = spy
    try:
        x, y = _data(d=50, n=256)
        ClassStats(4).update(x.float(), y)
    finally:
        blas[torch.float32] = real
    assert seen == [torch.get_num_threads()]
    assert [lib.num_threads for lib in blas["libs"]] == before


def test_merge_and_state_after_lower_triangle_updates():
    x, y = _data(d=30, n=400, seed=3)
    x = x.float()
    a, b = ClassStats(4).update(x[:200], y[:200]), ClassStats(4).update(x[200:], y[200:])
    whole = ClassStats(4).update(x, y)
    merged = a.clone().merge(b)
    torch.testing.assert_close(merged.scatter_w, whole.scatter_w, rtol=1e-5, atol=1e-4)
    state = a.state_dict()
    assert torch.equal(state["shifted_scatter"], state["shifted_scatter"].T)


# ------------------------------------------------------------------------- tampered states
def _state(**kwargs):
    x, y = _data()
    return ClassStats(**kwargs).update(x, y * 3 if kwargs.get("num_classes", 0) is None else y).state_dict()


def _tamper(state, key, value):
    out = dict(state)
    if value is _DROP:
        out.pop(key)
    else:
        out[key] = value
    return out


_DROP = object()
_FULL = _state(num_classes=4)
_ANY = _state(num_classes=None)
_TAMPERED = [
    ("version 1", _tamper(_FULL, "version", 1), "'version' is 1"),
    ("version missing", _tamper(_FULL, "version", _DROP), "'version' is None"),
    ("scatter shape", _tamper(_FULL, "shifted_scatter", torch.zeros(5, 5, dtype=torch.float64)), "shape \\(6, 6\\)"),
    ("scatter missing", _tamper(_FULL, "shifted_scatter", _DROP), "'shifted_scatter' is None"),
    ("scatter asymmetric", _tamper(_FULL, "shifted_scatter", torch.triu(_FULL["shifted_scatter"]) + 1.0), "symmetric"),
    ("scatter NaN", _tamper(_FULL, "shifted_scatter", _FULL["shifted_scatter"] * float("nan")), "finite"),
    ("scatter in trace mode", _tamper(_tamper(_FULL, "scatter", "trace"), "shifted_scatter", _FULL["shifted_scatter"]),
     "no D×D scatter"),
    ("unknown scatter mode", _tamper(_FULL, "scatter", "diag"), "'scatter' is 'diag'"),
    ("labels unsorted", _tamper(_ANY, "label_values", _ANY["label_values"].flip(0)), "sorted ascending and unique"),
    ("labels duplicate", _tamper(_ANY, "label_values", torch.tensor([0, 3, 3, 9])), "sorted ascending and unique"),
    ("labels float", _tamper(_ANY, "label_values", _ANY["label_values"].double()), "an integer tensor"),
    ("labels not 0..K-1", _tamper(_FULL, "label_values", torch.tensor([1, 2, 3, 4])), "0..3 for num_classes=4"),
    ("counts negative", _tamper(_FULL, "counts", -_FULL["counts"]), "non-negative whole numbers"),
    ("counts fractional", _tamper(_FULL, "counts", _FULL["counts"] + 0.5), "non-negative whole numbers"),
    ("counts NaN", _tamper(_FULL, "counts", _FULL["counts"] * float("nan")), "finite"),
    ("counts 2-D", _tamper(_FULL, "counts", _FULL["counts"][None]), "1-D tensor"),
    ("shift shape", _tamper(_FULL, "shift", _FULL["shift"][:, :3]), "shape \\(4, 6\\)"),
    ("shift integer", _tamper(_FULL, "shift", _FULL["shift"].long()), "floating tensor"),
    ("sum missing", _tamper(_FULL, "shifted_sum", _DROP), "'shifted_sum' is None"),
    ("sq negative", _tamper(_FULL, "shifted_sq", -_FULL["shifted_sq"]), "non-negative sums of squares"),
    ("num_classes vs rows", _tamper(_FULL, "num_classes", 5), "0..4 for num_classes=5"),
    ("dim vs columns", _tamper(_FULL, "dim", 7), "shape \\(4, 7\\)"),
    ("dim -1 with data", _tamper(_FULL, "dim", -1), "the feature dimension D"),
    ("exact64 not bool", _tamper(_FULL, "exact64", "yes"), "a bool"),
    ("phase without projection", _tamper(_FULL, "phase", "done"), "'phase' is 'done'"),
    ("not a tensor", _tamper(_FULL, "counts", [50.0, 50.0, 50.0, 50.0]), "a 1-D tensor"),
]


@pytest.mark.parametrize(("case", "state", "match"), _TAMPERED, ids=[c[0] for c in _TAMPERED])
def test_tampered_state_is_refused(case, state, match):
    target = ClassStats(4).update(*_data(seed=9))
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(state)
    assert torch.equal(target.state_dict()["shifted_scatter"], before["shifted_scatter"])  # unchanged


def test_tampered_projected_states_are_refused():
    x, y = _data(d=8, n=200, seed=4)
    s = ClassStats(4, scatter="projected").update(x, y).begin_projection().update(x, y)
    good = s.state_dict()
    assert ClassStats.from_state_dict(good).projection_phase == "projected"
    cases = [
        (_tamper(good, "projection_basis", good["projection_basis"] * 2), "orthonormal"),
        (_tamper(good, "projection_basis", torch.eye(8, dtype=torch.float64)), "at most K−1 = 3 columns"),
        (_tamper(good, "projected_counts", good["counts"] + 1), "between 0 and the pass-1 counts"),
        (_tamper(good, "projected_raw_scatter", torch.zeros(2, 2, dtype=torch.float64)), "shape \\(3, 3\\)"),
        (_tamper(good, "phase", "later"), "'phase' is 'later'"),
    ]
    half = ClassStats(4, scatter="projected").update(x, y).begin_projection().update(x[:50], y[:50]).state_dict()
    cases.append((_tamper(half, "phase", "done"), "the pass-1 counts \\(phase 'done'\\)"))
    for state, match in cases:
        with pytest.raises(ValueError, match=match):
            ClassStats.from_state_dict(state)


def test_version_2_states_still_load():
    x, y = _data()
    s = ClassStats(4, exact_sums=True).update(x.float(), y)
    state = s.state_dict()
    state["version"] = 2
    del state["phase"]
    restored = ClassStats.from_state_dict(state)
    torch.testing.assert_close(restored.scatter_w, s.scatter_w, rtol=0, atol=0)


# ------------------------------------------------------------------------------ memory guard
def test_memory_guard_refuses_the_true_peak_and_names_alternatives():
    est = estimate_memory(2000, 4, "full")
    assert est.state >= 2000 * 2000 * 8
    assert est.peak >= 2 * 2000 * 2000 * 8  # state + the metrics' D×D (effective_rank's covariance)
    limit = est.state + 2**20  # the scatter itself fits, its peak does not
    with pytest.raises(MemoryError, match=r"pool='avg'.*scatter='projected'.*scatter='trace'.*max_scatter_bytes"):
        ClassStats(4, max_scatter_bytes=limit).update(torch.randn(3, 2000), torch.tensor([0, 1, 2]))
    with pytest.raises(MemoryError, match="at peak"):
        ClassStats(4, 2000, max_scatter_bytes=limit)
    ClassStats(4, 2000, max_scatter_bytes=est.peak)  # exactly the peak is allowed
    # growing label sets are checked as they grow, before the state changes
    s = ClassStats(scatter="trace", max_scatter_bytes=estimate_memory(100, 3, "trace").peak)
    s.update(torch.randn(3, 100), torch.tensor([0, 1, 2]))
    with pytest.raises(MemoryError, match="K=4"):
        s.update(torch.randn(1, 100), torch.tensor([7]))
    assert s.label_values.tolist() == [0, 1, 2]


def test_large_peak_is_stated_up_front(monkeypatch):
    monkeypatch.setattr(stats_module, "NOTE_BYTES", 10_000)
    with pytest.warns(ResourceWarning, match=r"allocating .* GiB of float64 statistics.*GiB at peak"):
        ClassStats(num_classes=2).update(torch.ones(2, 40), torch.tensor([0, 1]))


def test_estimated_peak_matches_the_measured_resident_set():
    """D = 3,000: the peak RSS rise of an update and of compute_metrics, in a fresh process, vs the estimate."""
    code = textwrap.dedent(
        """
        import ctypes, gc, json, torch
        torch.set_num_threads(1)
        from nclens.core.stats import ClassStats, estimate_memory
        from nclens.core.metrics import compute_metrics

        def kib(field):
            for line in open("/proc/self/status"):
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

        x, y = torch.randn(40, 3000), torch.arange(40) % 4
        compute_metrics(ClassStats(4).update(x[:, :50], y))  # load the code (SciPy, LAPACK) before measuring
        gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
        open("/proc/self/clear_refs", "w").write("5")
        base = kib("VmRSS")
        s = ClassStats(4).update(x, y)
        update = kib("VmHWM") - base
        compute_metrics(s)
        est = estimate_memory(3000, 4, batch_size=40)
        print(json.dumps({"update": update, "peak": kib("VmHWM") - base, "est": est}))
        """
    )
    import json

    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    except subprocess.CalledProcessError as exc:
        if "clear_refs" in exc.stderr:
            pytest.skip("needs a writable /proc/self/clear_refs (Linux)")
        raise
    got = json.loads(out.stdout.strip().splitlines()[-1])
    state, update, metrics_, peak = got["est"]
    slack = 24 * 2**20  # allocator and library arenas
    assert got["update"] <= state + update + slack
    assert got["peak"] <= peak + slack
    assert got["peak"] >= 0.8 * peak  # honest, not inflated


# ------------------------------------------------------------------------------------ CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("exact_sums", [False, True])
def test_cuda_statistics_equal_cpu(exact_sums):
    """The device-agnostic path (x.T @ x on CUDA) against the CPU rank-k update, both modes, projected too."""
    x64, y = _data(k=6, d=64, n=3000, seed=6, offset=4.0)
    x = x64.float()
    cpu, gpu = ClassStats(6, exact_sums=exact_sums), ClassStats(6, device="cuda", exact_sums=exact_sums)
    for i in range(0, 3000, 256):
        cpu.update(x[i : i + 256], y[i : i + 256])
        gpu.update(x[i : i + 256].cuda(), y[i : i + 256].cuda())
    assert gpu.scatter_w.device.type == "cuda"
    torch.testing.assert_close(gpu.counts.cpu(), cpu.counts, rtol=0, atol=0)
    torch.testing.assert_close(gpu.means.cpu(), cpu.means, rtol=1e-6, atol=1e-6)
    means = cpu.means.numpy()
    centred = x.double().numpy() - means[y.numpy()]
    bound = 2 * float32_scatter_bound(centred, means[y.numpy()], batch=256)
    assert (np.abs(gpu.scatter_w.cpu().numpy() - cpu.scatter_w.numpy()) <= bound).all()
    a, b = metrics.compute_metrics(gpu), metrics.compute_metrics(cpu)
    assert all(abs(a[m] - b[m]) <= 1e-5 * abs(b[m]) for m in b)
    proj = ClassStats(6, scatter="projected", device="cuda", exact_sums=exact_sums)
    for _ in range(2):
        for i in range(0, 3000, 256):
            proj.update(x[i : i + 256].cuda(), y[i : i + 256].cuda())
        if proj.projection_phase == "means":
            proj.begin_projection()
    proj.end_projection()
    assert abs(metrics.nc1(proj) - b["nc1"]) <= 1e-5 * b["nc1"]
