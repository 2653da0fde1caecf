"""Official variants of Rangamani et al.'s intermediate-NC measurements, under their own names.

Rangamani, Lindegaard, Galanti & Poggio, "Feature learning in deep classifiers through Intermediate
Neural Collapse" (ICML 2023); official code ``mariuslindegaard/Intermediate_Neural_Collapse``, branch
ICML2023, ``src/Measurer.py`` (cited per function). Where the official definition differs from
nclens's canonical one (:mod:`nclens.core.metrics.multiclass`, :mod:`nclens.core.metrics.layers`),
both exist:

* ``within_share_classavg`` — the ``Traces`` measure (the paper's NC1 figure): within trace
  W = (1/K) Σ_c (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖² (class-averaged), between trace B = (1/K) Σ_c ‖μ_c − μ_G‖²
  with the *sample-weighted* μ_G = Σ_c n_c μ_c / N; value W / (W + B). The canonical ``within_share``
  uses Tr Σ_W = (1/N) Σ_i ‖h_i − μ_{y_i}‖² and μ_G = mean of class means; equal for balanced classes.
* ``nc1_official`` — the ``NC1`` measure: Tr(S_W S_B⁺) with S_W = (1/K) Σ_c (n_c/N) Σ_c = Σ_W/K and
  S_B = M̄ᵀM̄/K around the sample-weighted μ_G, i.e. Tr(Σ_W Σ_B⁺)/K with that μ_G (the canonical
  ``nc1`` centres on the mean of class means; equal for balanced classes).
* ``subspace_alignment_ranks`` — ``AngleBetweenSubspaces``: Linear layers at rank K; conv layers swept
  over ranks 1 … 99, then 100, 100 + K, … up to min(C_in, K·H·W) (:func:`official_alignment_ranks`),
  each the mean principal cosine between the top-r left singular vectors of the weight as
  C_in × (C_out·kh·kw) and of the class-mean maps as C_in × (K·H·W) (the canonical conv alignment is
  the rank-K entry). ``subspace_alignment_random`` is the baseline: the same mean cosine between
  independent uniformly random r-dimensional subspaces of R^d (:func:`random_subspace_alignment`).
* ``within_stable_rank`` — mean over classes of ‖A_c‖_F² / ‖A_c‖₂² for A_c = [h_i − μ_c]_{i∈c}
  (= tr Σ_c / λ_max(Σ_c)), computed exactly from the per-class covariances. The official
  ``ActivationStableRank`` reports, per class, n_c times this value (its Frobenius sum is not divided
  by n_c while its power-iteration eigenvalue is that of Σ_c, 20 iterations at most):
  ``activation_stable_rank_official`` = mean_c n_c ‖A_c‖_F²/‖A_c‖₂², with the exact top eigenvalue.
* ``within_cov_stable_rank`` — ``ActivationCovSVs`` as plotted ("within class covariance stable
  rank"): mean over classes of Σ_j λ_j(Σ_c)² / λ_max(Σ_c)² (the stable rank of Σ_c itself).
* :func:`between_cov_spectrum` — the ``ActivationCovSVs`` between spectrum: eigenvalues of
  M̄ᵀM̄/K around the sample-weighted μ_G.
* :func:`weight_singular_values_official` — ``WeightSVs``: singular values of the weight with conv
  weights flattened as C_out × (C_in·kh·kw) (``weights.flatten(start_dim=1)``; nclens's
  ``weight_spectrum`` uses C_in × (C_out·kh·kw)), relative σ_i/Σσ and cumulative; ``weight_rank_99``
  is the official "approximate rank": the fewest singular values whose cumulative share reaches 0.99.

Example:
    >>> import torch
    >>> from nclens.core.stats import ClassStats
    >>> from nclens.core.metrics.official import within_share_classavg
    >>> g = torch.Generator().manual_seed(0)
    >>> x, y = torch.randn(60, 4, generator=g), torch.arange(60) % 3
    >>> from nclens.core.metrics import within_share
    >>> s = ClassStats(3).update(x, y)   # balanced classes: the two definitions agree
    >>> abs(within_share_classavg(s) - within_share(s)) < 1e-12
    True
"""

from __future__ import annotations

import torch
from torch import Tensor

from nclens.core.errors import UndefinedMetricError
from nclens.core.metrics.layers import _as64, _principal_cosines, conv_means_matrix, conv_weight_matrix
from nclens.core.metrics.multiclass import _checked, centred_means, nc1
from nclens.core.metrics.registry import register_metric
from nclens.core.stats import ClassStats

__all__ = [
    "within_trace_classavg",
    "between_trace_weighted",
    "within_share_classavg",
    "nc1_official",
    "official_alignment_ranks",
    "subspace_alignment_ranks",
    "random_subspace_alignment",
    "class_covariance_spectra",
    "within_stable_rank",
    "within_cov_stable_rank",
    "activation_stable_rank_official",
    "between_cov_spectrum",
    "weight_singular_values_official",
    "weight_rank",
    "OFFICIAL_SOURCE",
]

OFFICIAL_SOURCE = "mariuslindegaard/Intermediate_Neural_Collapse@ICML2023 src/Measurer.py"


def within_trace_classavg(stats: ClassStats) -> float:
    """(1/K) Σ_c (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖²: the class-averaged within-class trace (official ``Traces``)."""
    stats = _checked(stats)
    return float((stats.class_sq / stats.counts).mean())


def between_trace_weighted(stats: ClassStats) -> float:
    """(1/K) Σ_c ‖μ_c − μ_G‖² with the sample-weighted μ_G = Σ_c n_c μ_c / N (official ``Traces``)."""
    stats = _checked(stats)
    return float(centred_means(stats, weighted=True).square().sum(1).mean())


def within_share_classavg(stats: ClassStats) -> float:
    """W / (W + B) with W = :func:`within_trace_classavg`, B = :func:`between_trace_weighted`.

    The official ``Traces`` measure as the paper plots it (relative within-class trace).

    Raises:
        UndefinedMetricError: W + B = 0 (every feature equal).
    """
    w, b = within_trace_classavg(stats), between_trace_weighted(stats)
    if w + b == 0.0:
        raise UndefinedMetricError("within_share_classavg is undefined: both traces are 0 (all features are equal)")
    return w / (w + b)


def nc1_official(stats: ClassStats) -> float:
    """Tr(Σ_W Σ_B⁺)/K around the sample-weighted μ_G: the official ``NC1`` measure (see the module docstring)."""
    return nc1(stats, weighted=True)


def official_alignment_ranks(max_rank: int, num_classes: int) -> list[int]:
    """The official conv rank sweep: 1 … min(99, max_rank), then 100, 100 + K, … ≤ max_rank.

    Example:
        >>> official_alignment_ranks(128, 10)[-4:]
        [99, 100, 110, 120]
    """
    if max_rank < 1 or num_classes < 1:
        raise ValueError(f"max_rank and num_classes must be >= 1, got {max_rank}, {num_classes}")
    return list(range(1, min(100, max_rank + 1))) + list(range(100, max_rank + 1, num_classes))


def subspace_alignment_ranks(weight: Tensor, means: Tensor, ranks: list[int] | None = None) -> dict[int, float]:
    """Mean principal cosine between top-r weight and class-mean subspaces, for each rank r.

    Linear (``weight`` (d_out, d_in), ``means`` (K, d_in) uncentred): V_W top-r right singular vectors,
    U_M top-r left singular vectors of Mᵀ; default ranks [K] (the official fc case). Conv (``weight``
    (C_out, C_in, kh, kw), ``means`` (K, C_in, H, W)): left singular vectors of the C_in × (C_out·kh·kw)
    and C_in × (K·H·W) reshapes; default ranks :func:`official_alignment_ranks` up to
    min(C_in, K·H·W, C_out·kh·kw) — the official code takes the full U (C_in columns) and stops at the
    smaller of the two, so ranks past a matrix's rank compare padding directions as it does.

    Returns:
        {rank: (1/r) Σ_j σ_j(V_rᵀ U_r)}, as ``AngleBetweenSubspaces`` (``np.sum(S) / rank``).
    """
    w = _as64(weight, "weight", weight.ndim)
    k = means.shape[0]
    if w.ndim == 2:
        m = _as64(means, "means", 2).to(w.device)
        if m.shape[1] != w.shape[1]:
            raise ValueError(f"means have dimension {m.shape[1]} but weight has d_in={w.shape[1]}")
        a = torch.linalg.svd(w, full_matrices=True)[2].T  # (d_in, d_in) right singular vectors
        b = torch.linalg.svd(m.T, full_matrices=True)[0]  # (d_in, d_in) left singular vectors of M
        ranks = [k] if ranks is None else ranks
    elif w.ndim == 4:
        wm, mm = conv_weight_matrix(w), conv_means_matrix(means).to(w.device)
        if mm.shape[0] != wm.shape[0]:
            raise ValueError(f"mean maps have {mm.shape[0]} channels but the weight has C_in={wm.shape[0]}")
        a = torch.linalg.svd(wm, full_matrices=True)[0]  # (C_in, C_in)
        b = torch.linalg.svd(mm, full_matrices=True)[0]
        ranks = official_alignment_ranks(min(a.shape[1], b.shape[1]), k) if ranks is None else ranks
    else:
        raise ValueError(f"weight must be a Linear (2-D) or Conv2d (4-D) weight, got shape {tuple(w.shape)}")
    limit = min(a.shape[1], b.shape[1])
    bad = [r for r in ranks if not 1 <= r <= limit]
    if bad:
        raise ValueError(f"ranks {bad} outside [1, {limit}]")
    return {int(r): float(_principal_cosines(a[:, :r], b[:, :r]).sum() / r) for r in ranks}


def random_subspace_alignment(dim: int, rank: int, *, draws: int = 256, seed: int = 0) -> tuple[float, float]:
    """Mean and sd of the mean principal cosine between independent uniformly random rank-r subspaces of R^dim.

    The baseline of ``subspace_alignment``: what a weight subspace unrelated to the class means scores.
    By rotation invariance one subspace can be fixed to the first r coordinates; the other is the span
    of a Gaussian dim×r matrix (Q of its QR factorisation), so the cosines are the singular values of
    Q's first r rows. Monte Carlo over ``draws`` seeded draws (float64). For r = 1 the mean is
    Γ(d/2)/(√π Γ((d+1)/2)) (:func:`nclens.core.metrics.layers.random_subspace_alignment_k1`); r = dim gives 1.
    """
    if not 1 <= rank <= dim:
        raise ValueError(f"rank must lie in [1, dim={dim}], got {rank}")
    if draws < 2:
        raise ValueError(f"draws must be >= 2, got {draws}")
    g = torch.Generator().manual_seed(seed)
    values = []
    for start in range(0, draws, 32):  # chunks of 32 draws: (b, dim, r) at a time
        b = min(32, draws - start)
        q, _ = torch.linalg.qr(torch.randn(b, dim, rank, generator=g, dtype=torch.float64))
        values.append(torch.linalg.svdvals(q[:, :rank, :]).clamp(0.0, 1.0).mean(dim=1))  # (b,)
    v = torch.cat(values)
    return float(v.mean()), float(v.std(correction=0))


def class_covariance_spectra(class_scatter: Tensor, counts: Tensor) -> Tensor:
    """Eigenvalues (K, D), descending, of the per-class covariances Σ_c = S_c / n_c (float64).

    Args:
        class_scatter: (K, D, D) per-class scatters S_c = Σ_{i∈c} (h_i − μ_c)(h_i − μ_c)ᵀ.
        counts: (K,) n_c.
    """
    s = _as64(class_scatter, "class_scatter", 3)
    n = torch.as_tensor(counts, dtype=torch.float64, device=s.device)
    if n.shape != (s.shape[0],) or bool((n <= 0).any()):
        raise ValueError(f"counts must be (K,) = ({s.shape[0]},) positive counts, got {tuple(n.shape)}")
    sym = 0.5 * (s + s.transpose(1, 2)) / n[:, None, None]
    return torch.linalg.eigvalsh(sym).flip(-1).clamp_min(0.0)  # (K, D) descending


def _top(spectra: Tensor) -> Tensor:
    top = spectra[:, 0]
    if bool((top <= 0).any()):
        raise UndefinedMetricError("a class has zero within-class covariance (all its features are equal)")
    return top


def within_stable_rank(spectra: Tensor) -> float:
    """mean_c ‖A_c‖_F²/‖A_c‖₂² = mean_c Σ_j λ_j(Σ_c)/λ_max(Σ_c), from :func:`class_covariance_spectra`."""
    return float((spectra.sum(1) / _top(spectra)).mean())


def within_cov_stable_rank(spectra: Tensor) -> float:
    """mean_c Σ_j λ_j(Σ_c)²/λ_max(Σ_c)² (the official ``ActivationCovSVs`` stable-rank plot)."""
    return float((spectra.square().sum(1) / _top(spectra).square()).mean())


def activation_stable_rank_official(spectra: Tensor, counts: Tensor) -> float:
    """mean_c n_c Σ_j λ_j(Σ_c)/λ_max(Σ_c): the value the official ``ActivationStableRank`` reports per class."""
    n = torch.as_tensor(counts, dtype=torch.float64, device=spectra.device)
    return float((n * spectra.sum(1) / _top(spectra)).mean())


def between_cov_spectrum(stats: ClassStats) -> Tensor:
    """Eigenvalues (descending, min(K, D)) of M̄ᵀM̄/K around the sample-weighted μ_G (official ``ActivationCovSVs``)."""
    stats = _checked(stats)
    m = centred_means(stats, weighted=True)
    return torch.linalg.svdvals(m).square() / m.shape[0]


def weight_singular_values_official(weight: Tensor) -> dict[str, list[float]]:
    """``WeightSVs``: singular values of W (conv: ``W.flatten(1)``, C_out × C_in·kh·kw), relative and cumulative.

    Returns:
        ``{"singular_values": σ, "relative": σ_i/Σσ, "cumulative": Σ_{j≤i} σ_j / Σσ}``.
    """
    w = torch.as_tensor(weight).detach()
    if w.ndim < 2:
        raise ValueError(f"weight must be at least 2-D, got shape {tuple(w.shape)}")
    s = torch.linalg.svdvals(_as64(w.flatten(1), "weight", 2))
    total = float(s.sum())
    if total == 0.0:
        raise UndefinedMetricError("the weight is zero: relative singular values are undefined")
    return {"singular_values": s.tolist(), "relative": (s / total).tolist(),
            "cumulative": (s.cumsum(0) / total).tolist()}


def weight_rank(weight: Tensor, cutoff: float = 0.99) -> int:
    """The official approximate rank: the fewest singular values whose cumulative share reaches ``cutoff``."""
    if not 0.0 < cutoff <= 1.0:
        raise ValueError(f"cutoff must lie in (0, 1], got {cutoff}")
    cum = torch.tensor(weight_singular_values_official(weight)["cumulative"])
    return int((cum < cutoff - 1e-12).sum()) + 1


_SRC = OFFICIAL_SOURCE
register_metric("within_share_classavg", lambda s, w: within_share_classavg(s), family="NC1", default=False,
                definition="W/(W+B), W = (1/K) Σ_c (1/n_c) Σ_{i∈c} ‖h_i − μ_c‖², B = (1/K) Σ_c ‖μ_c − μ_G‖², "
                           "μ_G = Σ_c n_c μ_c/N (class-averaged traces, sample-weighted μ_G)",
                source=f"Rangamani et al. 2023, official Traces ({_SRC})")
register_metric("nc1_official", lambda s, w: nc1_official(s), needs={"scatter"}, family="NC1", default=False,
                definition="Tr(Σ_W Σ_B⁺)/K with Σ_B around the sample-weighted μ_G",
                source=f"Rangamani et al. 2023, official NC1 ({_SRC})")
register_metric("subspace_alignment_ranks", None, needs={"layer"}, family="alignment", default=False,
                definition="{r: (1/r) Σ_j σ_j(V_rᵀ U_r)}: Linear at r = K; conv over r = 1..99, 100, 100+K, … "
                           "(C_in × (C_out·k·k) weight vs C_in × (K·H·W) class-mean maps)",
                source=f"Rangamani et al. 2023, official AngleBetweenSubspaces ({_SRC})")
register_metric("subspace_alignment_random", None, needs={"layer"}, family="alignment", default=False,
                definition="mean (± sd) of (1/r) Σ_j σ_j(Q_1ᵀ Q_2) for independent uniform random r-subspaces "
                           "of R^d: the baseline of subspace_alignment (Monte Carlo, seeded)",
                source="nclens (baseline for Rangamani et al. 2023)")
register_metric("within_stable_rank", None, needs={"samples"}, family="spread", default=False,
                definition="mean_c ‖A_c‖_F²/‖A_c‖₂², A_c = [h_i − μ_c]_{i∈c} (exact, per-class covariances)",
                source="Rangamani et al. 2023 (ActivationStableRank, without its n_c factor)")
register_metric("activation_stable_rank_official", None, needs={"samples"}, family="spread", default=False,
                definition="mean_c n_c ‖A_c‖_F²/‖A_c‖₂² (what the official power-iteration measure returns)",
                source=f"Rangamani et al. 2023, official ActivationStableRank ({_SRC})")
register_metric("within_cov_stable_rank", None, needs={"samples"}, family="spread", default=False,
                definition="mean_c Σ_j λ_j(Σ_c)²/λ_max(Σ_c)², Σ_c the class-c covariance",
                source=f"Rangamani et al. 2023, official ActivationCovSVs ({_SRC})")
register_metric("weight_rank_99", None, needs={"layer"}, family="alignment", default=False,
                definition="fewest singular values of W (conv: C_out × C_in·k·k) with cumulative share ≥ 0.99",
                source=f"Rangamani et al. 2023, official WeightSVs / approximate rank ({_SRC}, src/Plotting.py)")

