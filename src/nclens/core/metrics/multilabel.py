"""Multi-label neural-collapse (MLab NC) metrics of Li, Li, Wang & Qu (ICML 2024), registered in the metric registry.

Pure functions of :class:`~nclens.core.multilabel.MultiLabelStats` (and the classifier W, K×D, row k = tag
k). Notation: S ⊆ {1..K} a label set with multiplicity m = |S|; μ_k the mean of the single-label
samples of tag k; μ_G¹ = (1/K) Σ_k μ_k; μ_S the mean of the samples whose label set is S.

* ``nc1``: Tr(Σ_W¹ Σ_B⁺)/K over singleton samples (Σ_B from the singleton means).
* ``nc1_sets``: Tr(Σ_W^sets Σ_B⁺)/K, Σ_W^sets pooled over *all* samples around their own set mean.
* ``nc2_etf``, ``nc2_equinorm``, ``nc2_equiangular`` (and ``_w`` on W), ``nc3_duality``,
  ``nc3_etf``: the multi-class metrics on the centred singleton means μ_k − μ_G¹.
* tag-wise average (per multiplicity m ≥ 2): a_S = (1/m) Σ_{k∈S} (μ_k − μ_G¹),
  c_S = ⟨μ_S − μ_G¹, a_S⟩/‖a_S‖². ``tagwise_scale_m{m}`` = mean of c_S over sets of size m
  (``tagwise_scale_m{m}_std`` its population std), ``tagwise_residual_m{m}`` = mean over S of
  ‖(μ_S − μ_G¹) − c_S a_S‖/‖μ_S − μ_G¹‖ (0 = exact scaled tag-wise average).
* ``tagwise_angle_ratio`` (pairs S = {i, j}): mean_S ∠(μ_S − μ_G¹, ā_S) / mean_{S, k∈S} ∠(ā_S, μ_k − μ_G¹)
  with ā_S = Σ_{k∈S}(μ_k − μ_G¹): the angle of the pair mean to its tag-wise average direction,
  relative to the angle between that direction and the pair's own tags (0 = perfect tag-wise average,
  ~1 = the pair mean is as far from the average direction as a single tag is).

* ``tagwise_angle_li`` — the angle metric of Li et al.'s official code (``angle_metric`` in
  ``utility.py`` of github.com/Heimine/NC_MLab), on *uncentred* means: with μ_i the mean of the
  samples whose label set is exactly {i} and μ_S the mean of pair set S = {i, j},

      numerator   = mean over observed pair sets S = {i, j} of ∠(μ_i + μ_j, μ_S)   (degrees),
      denominator = mean over all tag pairs i < j and all observed pair sets S of ∠(μ_i + μ_j, μ_S),

  ``tagwise_angle_li`` = numerator / denominator (0 = every pair mean on the sum of its tags' means;
  ≈ 1 when the pair means bear no relation to their tags: the denominator is a random-match
  baseline). ``tagwise_angle_li_deg`` is the numerator itself, the mean pair angle in degrees (the
  ``np.mean(cur_angle_list)`` the official ``calculate_nc_stats`` also returns). It differs from
  ``tagwise_angle_ratio`` (centred at μ_G¹, the pair's own tags as the reference); the two are not
  interchangeable.

Under exact MLab NC (the PAL UFM optimum, see :mod:`nclens.multilabel.ufm`) every metric is 0 except
``tagwise_scale_m{m}`` = c_m, the scale of multiplicity m.

Example:
    >>> import torch
    >>> from nclens.data.multilabel import multilabel_gaussian
    >>> from nclens.core.metrics.multilabel import compute_multilabel_metrics
    >>> g = multilabel_gaussian(num_tags=4, dim=6, per_set=(5, 3), scales=(0.7,), sigma=0.0, seed=0)
    >>> m = compute_multilabel_metrics(g.features, g.labels)
    >>> round(m["tagwise_scale_m2"], 6), m["nc1_sets"] < 1e-12
    (0.7, True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from nclens.core.errors import UndefinedMetricError
from nclens.core.metrics import registry
from nclens.core.metrics.multiclass import (
    nc1 as _mc_nc1,
)
from nclens.core.metrics.multiclass import (
    nc1_from_moments,
    nc2_equiangular,
    nc2_equiangular_w,
    nc2_equinorm,
    nc2_equinorm_w,
    nc2_etf,
    nc2_etf_w,
    nc3_duality,
    nc3_etf,
)
from nclens.core.metrics.registry import register_metric
from nclens.core.multilabel import MultiLabelStats
from nclens.core.stats import validate_features

__all__ = [
    "MULTILABEL_METRIC_NAMES",
    "singleton_centred_means",
    "ml_nc1",
    "nc1_sets",
    "ml_nc2_etf",
    "ml_nc2_equinorm",
    "ml_nc2_equiangular",
    "ml_nc3_duality",
    "tagwise_scales",
    "tagwise_scale",
    "tagwise_residual",
    "tagwise_angle_ratio",
    "tagwise_angle_li",
    "tagwise_angle_li_deg",
    "multilabel_metrics",
    "compute_multilabel_metrics",
]

#: Fixed metric names (per-multiplicity names ``tagwise_scale_m{m}``, ``tagwise_scale_m{m}_std`` and
#: ``tagwise_residual_m{m}`` are added for each multiplicity m ≥ 2 present).
MULTILABEL_METRIC_NAMES: tuple[str, ...] = (
    "nc1",
    "nc1_sets",
    "nc2_equinorm",
    "nc2_equiangular",
    "nc2_etf",
    "nc2_equinorm_w",
    "nc2_equiangular_w",
    "nc2_etf_w",
    "nc3_duality",
    "nc3_etf",
    "tagwise_angle_ratio",
    "tagwise_angle_li",
    "tagwise_angle_li_deg",
)


def _checked(stats: MultiLabelStats) -> MultiLabelStats:
    if not isinstance(stats, MultiLabelStats):
        raise TypeError(f"expected MultiLabelStats, got {type(stats).__name__}")
    if not stats.initialized:
        raise RuntimeError("MultiLabelStats is empty: call update() with at least one batch first")
    if not stats.singles.initialized or bool((stats.singles.counts == 0).any()):
        missing = [] if not stats.singles.initialized else (stats.singles.counts == 0).nonzero().flatten().tolist()
        raise ValueError(
            f"MLab NC metrics need single-label samples of every tag (the singleton means define the "
            f"ETF and the tag-wise averages); tags without singletons: {missing or 'all'}"
        )
    if stats.num_tags < 2:
        raise UndefinedMetricError(f"MLab NC metrics need at least 2 tags, got K={stats.num_tags}")
    return stats


def singleton_centred_means(stats: MultiLabelStats) -> Tensor:
    """(K, D) μ_k − μ_G¹: the singleton means centred at their mean."""
    means = _checked(stats).singles.means
    return means - means.mean(0)


def _pinv_trace(sw: Tensor, centred: Tensor) -> float:
    """Tr(Σ_W Σ_B⁺)/K with Σ_B = M̄ᵀM̄/K, in the nonzero eigenspace of Σ_B (no D×D inverse)."""
    if float(centred.abs().max()) == 0.0:
        raise UndefinedMetricError("all singleton means coincide: Σ_B = 0, NC1 is undefined")
    return nc1_from_moments(sw, centred)


def ml_nc1(stats: MultiLabelStats) -> float:
    """NC1 over single-label samples: Tr(Σ_W¹ Σ_B⁺)/K (Li et al. 2024; Papyan et al. 2020)."""
    return _mc_nc1(_checked(stats).singles)


def nc1_sets(stats: MultiLabelStats) -> float:
    """Tr(Σ_W^sets Σ_B⁺)/K: within-label-set variability of *all* samples vs singleton between-class spread.

    Σ_W^sets = (1/N) Σ_i (h_i − μ_{S_i})(h_i − μ_{S_i})ᵀ, Σ_B = (1/K) Σ_k (μ_k − μ_G¹)(μ_k − μ_G¹)ᵀ.
    """
    stats = _checked(stats)
    if stats.sets.scatter_w is None:
        raise UndefinedMetricError("nc1_sets needs the full scatter; these statistics were kept with scatter='trace'")
    sw = stats.sets.scatter_w / stats.sets.total
    return _pinv_trace(sw, singleton_centred_means(stats))


def ml_nc2_etf(stats: MultiLabelStats) -> float:
    """ETFdist of the Gram of the centred singleton means (Zhu et al. 2021; Li et al. 2024)."""
    return nc2_etf(_checked(stats).singles)


def ml_nc2_equinorm(stats: MultiLabelStats) -> float:
    """std/mean of ‖μ_k − μ_G¹‖ over tags."""
    return nc2_equinorm(_checked(stats).singles)


def ml_nc2_equiangular(stats: MultiLabelStats) -> float:
    """mean over k≠k′ of |cos(μ̄_k, μ̄_k′) + 1/(K−1)| on the centred singleton means."""
    return nc2_equiangular(_checked(stats).singles)


def ml_nc3_duality(stats: MultiLabelStats, weight: Tensor) -> float:
    """‖Wᵀ/‖W‖_F − M̄₁ᵀ/‖M̄₁‖_F‖_F², M̄₁ the centred singleton means (self-duality)."""
    return nc3_duality(_checked(stats).singles, weight)


def tagwise_scales(stats: MultiLabelStats) -> dict[int, dict[str, Tensor]]:
    """Per multiplicity m ≥ 2 (m < K): the codes, c_S and residuals of every label set of size m.

    a_S = (1/m) Σ_{k∈S} (μ_k − μ_G¹) (computed for all sets at once as B M̄₁/m, B the S×K
    membership matrix), c_S = ⟨μ_S − μ_G¹, a_S⟩/‖a_S‖², r_S = ‖(μ_S − μ_G¹) − c_S a_S‖/‖μ_S − μ_G¹‖.
    Sets with m = K are skipped: their tag-wise average is μ_G¹ itself (a_S = 0).

    Returns:
        ``{m: {"codes": (n_m,), "scale": (n_m,), "residual": (n_m,)}}``.
    """
    stats = _checked(stats)
    centred = singleton_centred_means(stats)  # (K, D)
    mu_g1 = stats.singles.means.mean(0)  # (D,)
    members = stats.set_labels.to(centred.device, torch.float64)  # (S, K)
    mult = members.sum(1)  # (S,)
    keep = (mult >= 2) & (mult < stats.num_tags)
    members, mult = members[keep], mult[keep]
    codes = stats.set_codes[keep.to(stats.set_codes.device)]
    v = stats.sets.means[keep.to(stats.sets.means.device)].to(centred.device) - mu_g1  # (S', D)
    a = members @ centred / mult[:, None]  # (S', D) tag-wise averages
    a_sq = a.square().sum(1)
    tiny = torch.finfo(torch.float64).tiny
    if bool((a_sq <= tiny).any()):
        raise UndefinedMetricError("a tag-wise average a_S is zero: the singleton means are degenerate")
    c = (v * a).sum(1) / a_sq  # (S',)
    v_norm = v.norm(dim=1)
    resid = (v - c[:, None] * a).norm(dim=1) / v_norm.clamp_min(tiny)
    out: dict[int, dict[str, Tensor]] = {}
    for m in torch.unique(mult).tolist():  # loop over multiplicities (a handful), not sets
        sel = mult == m
        out[int(m)] = {"codes": codes[sel.to(codes.device)], "scale": c[sel], "residual": resid[sel]}
    return out


def tagwise_scale(stats: MultiLabelStats, m: int) -> tuple[float, float]:
    """(mean, population std) of c_S over label sets of multiplicity m."""
    per = tagwise_scales(stats)
    if m not in per:
        raise ValueError(f"no label sets of multiplicity m={m}; present: {sorted(per)}")
    c = per[m]["scale"]
    return float(c.mean()), float(c.std(correction=0))


def tagwise_residual(stats: MultiLabelStats, m: int) -> float:
    """mean over |S| = m of ‖(μ_S − μ_G¹) − c_S a_S‖/‖μ_S − μ_G¹‖ (0 = exact scaled tag-wise average)."""
    per = tagwise_scales(stats)
    if m not in per:
        raise ValueError(f"no label sets of multiplicity m={m}; present: {sorted(per)}")
    return float(per[m]["residual"].mean())


def _angle(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise angle between a and b (radians), stable near 0 via atan2(‖a×b‖, a·b)."""
    an = a / a.norm(dim=-1, keepdim=True)
    bn = b / b.norm(dim=-1, keepdim=True)
    return 2.0 * torch.atan2((an - bn).norm(dim=-1), (an + bn).norm(dim=-1))


def tagwise_angle_ratio(stats: MultiLabelStats) -> float:
    """Li et al.'s angle metric over pairs S = {i, j}, centred at μ_G¹ (ā_S = μ̄_i + μ̄_j):

        mean_S ∠(μ_S − μ_G¹, ā_S)  /  mean_{S, k∈S} ∠(ā_S, μ̄_k).

    0 when every pair mean lies on its tag-wise average direction.
    """
    stats = _checked(stats)
    centred = singleton_centred_means(stats)
    members = stats.set_labels.to(centred.device, torch.float64)
    pairs = members.sum(1) == 2
    if not bool(pairs.any()):
        raise UndefinedMetricError("tagwise_angle_ratio needs label sets of multiplicity 2 (pairs); none present")
    v = stats.sets.means[pairs.to(stats.sets.means.device)].to(centred.device) - stats.singles.means.mean(0)
    pm = members[pairs]  # (P, K)
    abar = pm @ centred  # (P, D)
    tags = pm.nonzero()[:, 1].reshape(-1, 2)  # (P, 2) the two tags of each pair
    num = _angle(v, abar).mean()
    den = _angle(abar[:, None, :].expand(-1, 2, -1), centred[tags]).mean()  # (P, 2) angles
    if float(den) == 0.0:
        raise UndefinedMetricError("tagwise_angle_ratio is undefined: tag-wise averages coincide with their tags")
    return float(num / den)


def _li_pair_angles(stats: MultiLabelStats) -> tuple[Tensor, Tensor]:
    """(matched, all) pair angles in degrees of :func:`tagwise_angle_li` (float64).

    matched: (P,) ∠(μ_i + μ_j, μ_S) for each observed pair set S = {i, j}; all: (Q, P) the same angle for
    every tag pair q = (i < j) against every observed pair set, Q = K(K−1)/2. The matched angles use
    the stable 2·atan2(‖â − b̂‖, ‖â + b̂‖); the (Q, P) matrix uses arccos of the clamped cosine, with its
    matched entries replaced by the stable values.
    """
    stats = _checked(stats)
    mu = stats.singles.means.to(torch.float64)  # (K, D) uncentred singleton means
    members = stats.set_labels.to(mu.device, torch.float64)  # (S, K)
    pairs = members.sum(1) == 2
    if not bool(pairs.any()):
        raise UndefinedMetricError("tagwise_angle_li needs label sets of multiplicity 2 (pairs); none present")
    pair_means = stats.sets.means[pairs.to(stats.sets.means.device)].to(mu.device, torch.float64)  # (P, D)
    k = stats.num_tags
    qi, qj = torch.triu_indices(k, k, offset=1, device=mu.device)  # (Q,) all tag pairs i < j
    sums = mu[qi] + mu[qj]  # (Q, D)
    tiny = torch.finfo(torch.float64).tiny
    if bool((sums.norm(dim=1) <= tiny).any()) or bool((pair_means.norm(dim=1) <= tiny).any()):
        raise UndefinedMetricError("tagwise_angle_li is undefined: a pair mean or a sum of two singleton means is 0")
    a = sums / sums.norm(dim=1, keepdim=True)
    b = pair_means / pair_means.norm(dim=1, keepdim=True)
    tags = members[pairs].nonzero()[:, 1].reshape(-1, 2)  # (P, 2) the tags i < j of each pair set
    q_of_pair = tags[:, 0] * k - tags[:, 0] * (tags[:, 0] + 1) // 2 + (tags[:, 1] - tags[:, 0] - 1)  # (P,) row in Q
    matched = torch.rad2deg(_angle(a[q_of_pair], b))  # (P,)
    every = torch.rad2deg(torch.arccos((a @ b.T).clamp(-1.0, 1.0)))  # (Q, P)
    every[q_of_pair, torch.arange(b.shape[0], device=mu.device)] = matched
    return matched, every


def tagwise_angle_li(stats: MultiLabelStats) -> float:
    """The angle metric of Li et al.'s official code (``angle_metric``, Heimine/NC_MLab ``utility.py``).

    On uncentred means (μ_i: samples whose label set is exactly {i}; μ_S: pair set S = {i, j})::

        mean_S ∠(μ_i + μ_j, μ_S)  /  mean_{i<j, S} ∠(μ_i + μ_j, μ_S)

    the denominator running over *all* tag pairs i < j and *all* observed pair sets S (a random-match
    baseline). 0 when every pair mean points along the sum of its tags' means; ≈ 1 for pair means
    unrelated to their tags.

    Example:
        >>> import torch
        >>> from nclens.core.multilabel import MultiLabelStats
        >>> mu = torch.eye(3, dtype=torch.float64)                       # singleton means e_1, e_2, e_3
        >>> y = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1]])
        >>> h = torch.cat([mu, 3 * (mu[0] + mu[1])[None], (mu[1] + mu[2])[None]])  # pair means on e_i + e_j
        >>> tagwise_angle_li(MultiLabelStats(3).update(h, y))
        0.0
    """
    matched, every = _li_pair_angles(stats)
    den = every.mean()
    if float(den) == 0.0:
        raise UndefinedMetricError("tagwise_angle_li is undefined: every pair mean lies on every sum of two tags")
    return float(matched.mean() / den)


def tagwise_angle_li_deg(stats: MultiLabelStats) -> float:
    """The mean pair angle in degrees, mean_S ∠(μ_i + μ_j, μ_S): the numerator of :func:`tagwise_angle_li`."""
    return float(_li_pair_angles(stats)[0].mean())


def _tagwise_scale_family(stats: MultiLabelStats, weight: Tensor | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for m, per in sorted(tagwise_scales(stats).items()):
        out[f"tagwise_scale_m{m}"] = float(per["scale"].mean())
        out[f"tagwise_scale_m{m}_std"] = float(per["scale"].std(correction=0))
    return out


def _tagwise_residual_family(stats: MultiLabelStats, weight: Tensor | None) -> dict[str, float]:
    return {f"tagwise_residual_m{m}": float(per["residual"].mean()) for m, per in sorted(tagwise_scales(stats).items())}


def _angle_ratio_if_pairs(stats: MultiLabelStats, weight: Tensor | None) -> dict[str, float]:
    if not bool((_checked(stats).multiplicities == 2).any()):
        return {}  # no pairs: the metric does not apply (left out, not undefined)
    return {"tagwise_angle_ratio": tagwise_angle_ratio(stats)}


def _if_pairs(fn):  # noqa: ANN001, ANN202 - a metric that applies only when pairs are present
    def metric(stats: MultiLabelStats, weight: Tensor | None) -> dict[str, float]:
        if not bool((_checked(stats).multiplicities == 2).any()):
            return {}  # no pairs: the metric does not apply (left out, not undefined)
        return {fn.__name__: fn(stats)}

    return metric


def _w64(weight: Tensor) -> Tensor:
    return torch.as_tensor(weight).detach().to(torch.float64)


_LI = "Li, Li, Wang & Qu 2024"
_ML = dict(kind="multilabel")
register_metric("nc1", lambda s, w: ml_nc1(s), needs={"scatter"}, family="NC1", source=_LI,
                definition="nc1 over singleton samples, Σ_B from the singleton means", **_ML)
register_metric("nc1_sets", lambda s, w: nc1_sets(s), needs={"scatter"}, family="NC1", source=_LI,
                definition="Tr(Σ_W^sets Σ_B⁺)/K, Σ_W^sets pooled over all samples around their own label-set mean",
                **_ML)
register_metric("nc2_equinorm", lambda s, w: ml_nc2_equinorm(s), family="NC2", source=_LI,
                definition="nc2_equinorm of the singleton means centred at μ_G¹", **_ML)
register_metric("nc2_equiangular", lambda s, w: ml_nc2_equiangular(s), family="NC2", source=_LI,
                definition="nc2_equiangular of the singleton means centred at μ_G¹", **_ML)
register_metric("nc2_etf", lambda s, w: ml_nc2_etf(s), family="NC2", source=_LI,
                definition="nc2_etf of the singleton means centred at μ_G¹", **_ML)
register_metric("nc2_equinorm_w", lambda s, w: nc2_equinorm_w(_w64(w)), needs={"weight"}, family="NC2", source=_LI,
                definition="std_k ‖w_k‖ / mean_k ‖w_k‖", **_ML)
register_metric("nc2_equiangular_w", lambda s, w: nc2_equiangular_w(_w64(w)), needs={"weight"}, family="NC2",
                source=_LI, definition="mean over k≠k′ of |cos(w_k, w_k′) + 1/(K−1)|", **_ML)
register_metric("nc2_etf_w", lambda s, w: nc2_etf_w(_w64(w)), needs={"weight"}, family="NC2", source=_LI,
                definition="ETFdist(WWᵀ)", **_ML)
register_metric("nc3_duality", lambda s, w: nc3_duality(_checked(s).singles, _w64(w)), needs={"weight"},
                family="NC3", source=_LI, definition="nc3_duality of W and the centred singleton means", **_ML)
register_metric("nc3_etf", lambda s, w: nc3_etf(_checked(s).singles, _w64(w)), needs={"weight"}, family="NC3",
                source=_LI, definition="ETFdist(W M̄₁ᵀ), M̄₁ the centred singleton means", **_ML)
register_metric("tagwise_scale_m{m}", _tagwise_scale_family, family="tag-wise", source=_LI,
                definition="for |S| = m ≥ 2: mean (and `_std`) over S of c_S = ⟨μ_S − μ_G¹, a_S⟩/‖a_S‖², "
                "a_S = (1/m) Σ_{k∈S} (μ_k − μ_G¹)", **_ML)
register_metric("tagwise_residual_m{m}", _tagwise_residual_family, family="tag-wise", source=_LI,
                definition="mean over |S| = m of ‖(μ_S − μ_G¹) − c_S a_S‖/‖μ_S − μ_G¹‖ (0 = exact tag-wise average)",
                **_ML)
register_metric("tagwise_angle_ratio", _angle_ratio_if_pairs, family="tag-wise", source="nclens (centred variant)",
                definition="pairs S = {i, j}: mean_S ∠(μ_S − μ_G¹, μ̄_i + μ̄_j) / mean_{S, k∈S} ∠(μ̄_i + μ̄_j, μ̄_k); "
                "not comparable with Li et al.'s numbers", **_ML)
_LI_CODE = "Li et al. 2024, official code github.com/Heimine/NC_MLab utility.py angle_metric"
register_metric("tagwise_angle_li", _if_pairs(tagwise_angle_li), family="tag-wise", source=_LI_CODE,
                definition="uncentred means, pairs S = {i, j}: mean_S ∠(μ_i + μ_j, μ_S) / mean over all tag pairs "
                "i<j and all pair sets S of ∠(μ_i + μ_j, μ_S) (0 = tag-wise average, ≈ 1 = no structure)", **_ML)
register_metric("tagwise_angle_li_deg", _if_pairs(tagwise_angle_li_deg), family="tag-wise", source=_LI_CODE,
                definition="mean over pair sets S = {i, j} of ∠(μ_i + μ_j, μ_S) in degrees (the numerator of "
                "tagwise_angle_li)", **_ML)


def multilabel_metrics(
    stats: MultiLabelStats, weight: Tensor | None = None, *, names: Any = None, on_undefined: str = "nan"
) -> dict[str, float]:
    """Every applicable registered MLab NC metric of ``stats`` (and of the classifier ``weight`` (K×D)).

    Keys: ``nc1``, ``nc1_sets`` (full scatter only), ``nc2_etf``, ``nc2_equinorm``, ``nc2_equiangular``,
    ``tagwise_scale_m{m}``, ``tagwise_scale_m{m}_std``, ``tagwise_residual_m{m}`` for each m ≥ 2
    present, ``tagwise_angle_ratio``, ``tagwise_angle_li`` and ``tagwise_angle_li_deg`` (when pairs exist);
    with ``weight`` also ``nc2_*_w``,
    ``nc3_duality`` and ``nc3_etf``. ``names`` and ``on_undefined`` as in
    :func:`~nclens.core.metrics.compute_metrics`.
    """
    stats = _checked(stats)
    have = ({"scatter", "full_scatter"} if stats.singles.scatter_w is not None else set()) | (
        {"weight"} if weight is not None else set()
    )
    return registry.evaluate(stats, weight, kind="multilabel", have=have, names=names, on_undefined=on_undefined)


def compute_multilabel_metrics(features: Any, labels: Any, weight: Tensor | None = None) -> dict[str, float]:
    """MLab NC metrics of features (N, D) with multi-hot labels (N, K) 0/1, optional classifier W (K, D).

    One streaming pass into :class:`~nclens.core.multilabel.MultiLabelStats` (float64), then
    :func:`multilabel_metrics`. Keys as there, e.g. ``nc1``, ``nc1_sets``, ``nc2_etf``,
    ``tagwise_scale_m2``, ``tagwise_residual_m2``, ``tagwise_angle_ratio``.

    Raises:
        ValueError: labels not N×K 0/1, an empty label set, K > 62, or a tag without single-label samples.
    """
    features = validate_features(features)
    labels = torch.as_tensor(labels)
    if labels.ndim != 2:
        raise ValueError(f"multi-label labels must be 2-D (N×K) 0/1, got shape {tuple(labels.shape)}")
    stats = MultiLabelStats(num_tags=int(labels.shape[1])).update(features, labels.to(features.device))
    return multilabel_metrics(stats, weight)
