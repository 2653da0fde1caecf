"""Stochastic block model graphs for node-wise neural-collapse experiments (Kothapalli et al. 2023).

Two generators, both pure functions of their arguments and a seed:

* :func:`sbm_graph` — the stochastic block model: C blocks of n = N/C nodes, every pair of distinct
  nodes joined independently inside a block and across blocks (homophilic p > q, heterophilic
  p < q), no self-loops, undirected. Two samplers (``symmetrize``):

  - ``"none"`` (nclens's): each unordered pair is drawn once, so an edge appears with probability
    exactly p (q);
  - ``"max"`` (the official code's, ``gnn_collapse/data/sbm.py``, ``SBM.generate_single_graph``): the
    full N×N Bernoulli matrix is drawn and symmetrised with max(A, Aᵀ), so an edge appears with
    probability 1 − (1 − p)² = 2p − p² ≈ 2p (likewise for q): twice the nominal density.

  Both are O(N + E) (``method="sparse"``: binomial edge counts per block pair, uniform edge subsets;
  for ``"max"`` the pairs are independent with probability 1 − (1 − p)², which *is* the
  distribution of max(A, Aᵀ)). ``method="dense"`` draws the full N×N matrix as the official code
  does (O(N²), a reference), ``method="pyg"`` uses torch_geometric's ``stochastic_blockmodel_graph``
  (O(N²)); all under a private seeded random state.
* :func:`sbm_regular_graph` — the regular SBM: every node has *exactly* k_in neighbours in its own
  block and k_out neighbours in every other block. Built as a relabelled circulant (k_in-regular
  inside a block, k_out-regular bipartite between two blocks) and then randomised with rounds of
  degree- and block-preserving double-edge swaps (a vectorised version of the classical
  switch chain), so degrees stay exact while the wiring is random. The degrees matching SBM(p, q)
  are :func:`regular_degrees`: nclens's rule k = round(p(n − 1)), or the official rule
  (``SBMRegular.generate_single_graph``) k = ⌈p N / C⌉.

Node features are i.i.d. N(0, 1) of dimension d (:func:`gaussian_node_features`), and
:class:`SBMDataset` is a thin, seeded list of :class:`SBMGraph` (x, edge_index, y; no torch_geometric needed).

Labels are the block indices 0..C−1, node i of block c = i // n (nodes are ordered by block).

Example:
    >>> from nclens.graph.sbm import sbm_graph, sbm_regular_graph, degrees_per_class
    >>> ei, y = sbm_regular_graph(100, 2, k_in=6, k_out=2, seed=0)
    >>> degrees_per_class(ei, y, 2).unique(dim=0).tolist()
    [[2, 6], [6, 2]]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "SBMSpec",
    "sbm_graph",
    "sbm_regular_graph",
    "regular_degrees",
    "block_labels",
    "gaussian_node_features",
    "degrees_per_class",
    "edge_probability",
    "edge_counts",
    "expected_edge_counts",
    "SYMMETRIZE",
    "DEGREE_RULES",
    "make_graph",
    "SBMGraph",
    "SBMDataset",
]


#: The SBM samplers: "none" — each unordered pair once with probability p; "max" — max(A, Aᵀ) of a full
#: Bernoulli(p) matrix, as the official code (edge probability 1 − (1 − p)²).
SYMMETRIZE = ("none", "max")
#: Degrees of the regular SBM matching SBM(p, q): "round" — round(p(n−1)), round(q n); "ceil" — the
#: official ⌈p N/C⌉, ⌈q N/C⌉ (lowered to even when n·k is odd and k > 2, as the official code does).
DEGREE_RULES = ("round", "ceil")


def _check_sizes(num_nodes: int, num_classes: int) -> int:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if not isinstance(num_nodes, int) or num_nodes < 2 * num_classes:
        raise ValueError(f"num_nodes must be an integer >= 2*num_classes={2 * num_classes}, got {num_nodes!r}")
    if num_nodes % num_classes:
        raise ValueError(f"num_nodes={num_nodes} must be divisible by num_classes={num_classes} (equal blocks)")
    return num_nodes // num_classes


def _check_prob(name: str, value: float) -> float:
    value = float(value)
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return value


def edge_probability(prob: float, symmetrize: str = "none") -> float:
    """Probability that a given pair of distinct nodes is joined, for nominal probability ``prob``.

    ``"none"``: prob. ``"max"``: 1 − (1 − prob)² — A_ij and A_ji are independent Bernoulli(prob) and
    the edge is present when either is (max(A, Aᵀ), ``gnn_collapse/data/sbm.py``).

    Example:
        >>> round(edge_probability(0.025, "max"), 12)
        0.049375
    """
    prob = _check_prob("probability", prob)
    if symmetrize == "none":
        return prob
    if symmetrize == "max":
        return 1.0 - (1.0 - prob) ** 2
    raise ValueError(f"symmetrize must be one of {SYMMETRIZE}, got {symmetrize!r}")


def block_labels(num_nodes: int, num_classes: int, device: torch.device | str | None = None) -> Tensor:
    """Block index of every node, nodes ordered by block: y_i = i // (N/C) (int64, (N,))."""
    n = _check_sizes(num_nodes, num_classes)
    return torch.arange(num_nodes, device=device) // n


def _triu_pair(k: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Map linear indices k of the strict upper triangle of an n×n matrix (row-major) to (i, j), i < j."""
    kf = k.to(torch.float64)
    i = n - 2 - torch.floor(torch.sqrt(-8.0 * kf + 4.0 * n * (n - 1) - 7.0) / 2.0 - 0.5).long()
    j = k + i + 1 - n * (n - 1) // 2 + (n - i) * ((n - i) - 1) // 2
    return i, j


def _distinct_uniform(total: int, count: int, gen: torch.Generator) -> Tensor:
    """``count`` distinct integers drawn uniformly from [0, total) (a uniform random subset), O(count)."""
    if count == 0:
        return torch.zeros(0, dtype=torch.long)
    if 2 * count >= total:
        return torch.randperm(total, generator=gen)[:count]
    picked = torch.zeros(0, dtype=torch.long)
    while picked.numel() < count:
        extra = torch.randint(0, total, (int(1.2 * (count - picked.numel())) + 16,), generator=gen)
        picked = torch.unique(torch.cat([picked, extra]))
    # A uniform random count-subset of a uniform random set of distinct values is a uniform count-subset.
    return picked[torch.randperm(picked.numel(), generator=gen)[:count]]


def sbm_graph(
    num_nodes: int,
    num_classes: int,
    p: float,
    q: float,
    *,
    seed: int = 0,
    method: str = "sparse",
    symmetrize: str = "none",
) -> tuple[Tensor, Tensor]:
    """Sample an undirected SBM with nominal probabilities p inside a block and q across; no self-loops.

    With p′ = :func:`edge_probability` (p, symmetrize) (p′ = p for ``"none"``, 1 − (1 − p)² for ``"max"``),
    E[#edges inside one block] = p′·n(n−1)/2 and E[#edges between two blocks] = q′·n², n = N/C.

    ``method="sparse"`` (the default, O(N + E)): for every pair of blocks the number of edges is
    Binomial(#pairs, p′) and the edges are a uniform random subset of that size. ``method="dense"``
    (O(N²), the official construction): a full N×N matrix of U(0, 1) draws is compared with the block
    probabilities, the diagonal zeroed, and then symmetrised — max(A, Aᵀ) for ``"max"``, the upper
    triangle mirrored for ``"none"``. ``method="pyg"`` calls torch_geometric's
    ``stochastic_blockmodel_graph`` at p′, q′ (O(N²)). The three draw the same distribution (not the same graphs).

    Args:
        num_nodes: N, divisible by ``num_classes``.
        num_classes: C >= 2 blocks of equal size.
        p: nominal within-block probability.
        q: nominal across-block probability.
        seed: seed of a private random state (the global torch RNG is left untouched).
        method: ``"sparse"``, ``"dense"`` or ``"pyg"``.
        symmetrize: ``"none"`` (each pair once, probability p) or ``"max"`` (the official max(A, Aᵀ)).

    Returns:
        ``(edge_index (2, 2E) int64, both directions, sorted; labels (N,) int64)``.

    Example:
        >>> ei, y = sbm_graph(200, 2, 0.1, 0.01, seed=1)
        >>> bool((ei[0] != ei[1]).all()), tuple(y.shape)
        (True, (200,))
    """
    n = _check_sizes(num_nodes, num_classes)
    p, q = _check_prob("p", p), _check_prob("q", q)
    p_eff, q_eff = edge_probability(p, symmetrize), edge_probability(q, symmetrize)
    labels = block_labels(num_nodes, num_classes)
    if method == "pyg":
        from torch_geometric.utils import stochastic_blockmodel_graph

        probs = torch.full((num_classes, num_classes), q_eff, dtype=torch.float64)
        probs.fill_diagonal_(p_eff)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            edge_index = stochastic_blockmodel_graph([n] * num_classes, probs, directed=False)
        return edge_index, labels
    gen = torch.Generator().manual_seed(int(seed))
    if method == "dense":
        probs = torch.where(labels[:, None] == labels[None, :], p, q)  # (N, N) nominal block probabilities
        adj = torch.rand(num_nodes, num_nodes, generator=gen, dtype=torch.float64) < probs
        adj.fill_diagonal_(False)
        adj = adj | adj.T if symmetrize == "max" else torch.triu(adj, 1) | torch.triu(adj, 1).T
        edge_index = adj.nonzero().T.contiguous()  # row-major: sorted by (source, target)
        return edge_index, labels
    if method != "sparse":
        raise ValueError(f"method must be 'sparse', 'dense' or 'pyg', got {method!r}")
    rows: list[Tensor] = []
    cols: list[Tensor] = []
    for c in range(num_classes):
        for c2 in range(c, num_classes):
            total = n * (n - 1) // 2 if c == c2 else n * n
            prob = p_eff if c == c2 else q_eff
            count = int(torch.binomial(torch.tensor(float(total)), torch.tensor(prob, dtype=torch.float32),
                                       generator=gen))
            k = _distinct_uniform(total, count, gen)
            if c == c2:
                i, j = _triu_pair(k, n)
            else:
                i, j = k // n, k % n
            rows.append(i + c * n)
            cols.append(j + c2 * n)
    a, b = torch.cat(rows), torch.cat(cols)
    edge_index = torch.stack([torch.cat([a, b]), torch.cat([b, a])])  # both directions
    order = torch.argsort(edge_index[0] * num_nodes + edge_index[1])
    return edge_index[:, order], labels


def edge_counts(edge_index: Tensor, labels: Tensor) -> tuple[int, int]:
    """(#undirected edges inside blocks, #undirected edges across blocks) of a graph listing both directions."""
    same = labels[edge_index[0]] == labels[edge_index[1]]
    return int(same.sum()) // 2, int((~same).sum()) // 2


def expected_edge_counts(
    num_nodes: int, num_classes: int, p: float, q: float, symmetrize: str = "none"
) -> dict[str, float]:
    """Mean and standard deviation of the within- and across-block edge counts of :func:`sbm_graph`.

    Within: Binomial(C·n(n−1)/2, p′); across: Binomial(C(C−1)/2·n², q′), p′, q′ = :func:`edge_probability`.

    Example:
        >>> expected_edge_counts(1000, 2, 0.025, 0.0017)["within_mean"]
        6237.5
    """
    n = _check_sizes(num_nodes, num_classes)
    p_eff, q_eff = edge_probability(p, symmetrize), edge_probability(q, symmetrize)
    within_pairs = num_classes * n * (n - 1) // 2
    across_pairs = num_classes * (num_classes - 1) // 2 * n * n
    return {
        "p_edge": p_eff, "q_edge": q_eff,
        "within_mean": within_pairs * p_eff, "within_sd": math.sqrt(within_pairs * p_eff * (1 - p_eff)),
        "across_mean": across_pairs * q_eff, "across_sd": math.sqrt(across_pairs * q_eff * (1 - q_eff)),
    }


def regular_degrees(num_nodes: int, num_classes: int, p: float, q: float, rule: str = "round") -> tuple[int, int]:
    """Degrees (k_in, k_out) of the regular SBM matching SBM(p, q).

    ``rule="round"`` (nclens): k_in = round(p (n − 1)), k_out = round(q n), n = N/C (an SBM node has
    p(n−1) expected neighbours in its own block and q n in each other block); when n·k_in is odd (no
    k_in-regular graph on n nodes exists) k_in is lowered by one.

    ``rule="ceil"`` (the official ``SBMRegular.generate_single_graph``, ``gnn_collapse/data/sbm.py``):
    k = ⌈p·N/C⌉ and ⌈q·N/C⌉, lowered to the even k − 1 when n·k is odd and k > 2.

    Example:
        >>> regular_degrees(1000, 2, 0.025, 0.0017), regular_degrees(1000, 2, 0.025, 0.0017, rule="ceil")
        ((12, 1), (13, 1))
    """
    n = _check_sizes(num_nodes, num_classes)
    p, q = _check_prob("p", p), _check_prob("q", q)
    if rule == "ceil":
        k_in, k_out = math.ceil(p * num_nodes / num_classes), math.ceil(q * num_nodes / num_classes)
        if (k_in * n) % 2 and k_in > 2:
            k_in = (k_in // 2) * 2
        return k_in, k_out
    if rule != "round":
        raise ValueError(f"degree rule must be one of {DEGREE_RULES}, got {rule!r}")
    k_in = int(round(p * (n - 1)))
    if (n * k_in) % 2:
        k_in -= 1
    return k_in, int(round(q * n))


def _pair_key(u: Tensor, v: Tensor, size: int) -> Tensor:
    return u * size + v


def _swap_rounds(a: Tensor, b: Tensor, size: int, rounds: int, gen: torch.Generator, bipartite: bool) -> tuple[
    Tensor, Tensor
]:
    """Randomise an edge list (a_e, b_e) with degree-preserving double-edge swaps.

    Each round pairs the edges at random and proposes (a1,b1),(a2,b2) → (a1,b2),(a2,b1). Proposals
    that would create a self-loop or a repeated edge are rejected, repeatedly, until the edge set is
    simple again (rejecting only ever restores edges of the previous simple graph, so this stops).
    Every endpoint keeps its degree, and in the bipartite case every edge keeps its (block, block)
    type.
    """
    m = a.numel()
    if m < 2:
        return a, b
    for _ in range(rounds):
        perm = torch.randperm(m, generator=gen)
        half = m // 2
        i, j = perm[:half], perm[half : 2 * half]
        if not bipartite:
            # Orient each edge at random so both rewirings (a1,b2),(a2,b1) and (a1,a2),(b1,b2) occur.
            flip = torch.rand(half, generator=gen) < 0.5
            a_j = torch.where(flip, b[j], a[j])
            b_j = torch.where(flip, a[j], b[j])
            a = a.clone()
            b = b.clone()
            a[j], b[j] = a_j, b_j
        new_a, new_b = a.clone(), b.clone()
        new_b[i], new_b[j] = b[j], b[i]
        accepted = torch.ones(half, dtype=torch.bool)
        while True:
            cand_a = torch.where(_expand(accepted, i, j, m), new_a, a)
            cand_b = torch.where(_expand(accepted, i, j, m), new_b, b)
            lo, hi = (cand_a, cand_b) if bipartite else (torch.minimum(cand_a, cand_b), torch.maximum(cand_a, cand_b))
            keys = _pair_key(lo, hi, size)
            _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
            bad_edge = counts[inverse] > 1
            if not bipartite:
                bad_edge |= cand_a == cand_b
            bad_pair = (bad_edge[i] | bad_edge[j]) & accepted
            if not bool(bad_pair.any()):
                break
            accepted &= ~bad_pair
        a, b = cand_a, cand_b
    return a, b


def _expand(accepted: Tensor, i: Tensor, j: Tensor, m: int) -> Tensor:
    mask = torch.zeros(m, dtype=torch.bool)
    mask[i] = accepted
    mask[j] = accepted
    return mask


def sbm_regular_graph(
    num_nodes: int, num_classes: int, k_in: int, k_out: int, *, seed: int = 0, swap_rounds: int = 20
) -> tuple[Tensor, Tensor]:
    """Sample a regular SBM: every node has exactly ``k_in`` neighbours in its block, ``k_out`` in each other.

    Construction (n = N/C nodes per block): inside a block, node π(t) is joined to π(t ± s),
    s = 1..⌊k_in/2⌋ (indices mod n) plus π(t + n/2) when k_in is odd (n even), for a random
    permutation π — a k_in-regular circulant; between blocks a and b, π_a(t) is joined to
    π_b(t + s mod n), s = 0..k_out−1 — a k_out-regular bipartite circulant. ``swap_rounds`` rounds
    of random double-edge swaps within each edge type then randomise the wiring without changing
    any node's per-block degrees.

    Args:
        num_nodes: N, divisible by ``num_classes``.
        num_classes: C >= 2.
        k_in: neighbours inside the own block, 0 <= k_in <= n − 1 with n·k_in even.
        k_out: neighbours in each other block, 0 <= k_out <= n.
        seed: random seed.
        swap_rounds: rounds of double-edge swaps (0 keeps the relabelled circulant).

    Returns:
        ``(edge_index (2, N(k_in + (C−1)k_out)) int64, labels (N,) int64)``.

    Example:
        >>> ei, y = sbm_regular_graph(40, 2, k_in=3, k_out=1, seed=0)
        >>> ei.shape[1] == 40 * (3 + 1)
        True
    """
    n = _check_sizes(num_nodes, num_classes)
    if not isinstance(k_in, int) or not 0 <= k_in <= n - 1:
        raise ValueError(f"k_in must be an integer in [0, n-1] = [0, {n - 1}], got {k_in!r}")
    if (n * k_in) % 2:
        raise ValueError(f"no {k_in}-regular graph on n={n} nodes exists (n*k_in must be even)")
    if not isinstance(k_out, int) or not 0 <= k_out <= n:
        raise ValueError(f"k_out must be an integer in [0, n] = [0, {n}], got {k_out!r}")
    gen = torch.Generator().manual_seed(int(seed))
    t = torch.arange(n)
    rows: list[Tensor] = []
    cols: list[Tensor] = []
    offsets = torch.arange(1, k_in // 2 + 1)
    for c in range(num_classes):
        perm = torch.randperm(n, generator=gen) + c * n
        a = perm[t].repeat_interleave(offsets.numel())  # (n * k_in//2,)
        b = perm[(t[:, None] + offsets[None, :]) % n].reshape(-1)
        if k_in % 2:
            a = torch.cat([a, perm[t[: n // 2]]])
            b = torch.cat([b, perm[t[: n // 2] + n // 2]])
        a, b = _swap_rounds(a, b, num_nodes, swap_rounds, gen, bipartite=False)
        rows.append(a)
        cols.append(b)
    shifts = torch.arange(k_out)
    for c in range(num_classes):
        for c2 in range(c + 1, num_classes):
            pa = torch.randperm(n, generator=gen) + c * n
            pb = torch.randperm(n, generator=gen) + c2 * n
            a = pa[t].repeat_interleave(k_out)  # (n * k_out,)
            b = pb[(t[:, None] + shifts[None, :]) % n].reshape(-1)
            a, b = _swap_rounds(a, b, num_nodes, swap_rounds, gen, bipartite=True)
            rows.append(a)
            cols.append(b)
    a, b = torch.cat(rows), torch.cat(cols)
    edge_index = torch.stack([torch.cat([a, b]), torch.cat([b, a])])  # both directions
    order = torch.argsort(edge_index[0] * num_nodes + edge_index[1])
    return edge_index[:, order], block_labels(num_nodes, num_classes)


def degrees_per_class(edge_index: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """(N, C) int64 counts: entry (i, c) = number of neighbours of node i in class c."""
    n = labels.shape[0]
    out = torch.zeros(n * num_classes, dtype=torch.long, device=labels.device)
    key = edge_index[1] * num_classes + labels[edge_index[0]]  # target node, class of the source
    out.index_add_(0, key, torch.ones_like(key))
    return out.view(n, num_classes)


def gaussian_node_features(num_nodes: int, dim: int, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """i.i.d. N(0, 1) node features (N, d) from a seeded generator."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"feature dim must be a positive integer, got {dim!r}")
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(num_nodes, dim, generator=gen, dtype=torch.float64).to(dtype)


@dataclass(frozen=True)
class SBMSpec:
    """Parameters of one family of SBM graphs.

    Attributes:
        kind: ``"sbm"`` or ``"sbm-regular"``.
        num_nodes: N per graph.
        num_classes: C.
        p: nominal within-block probability (``sbm-regular``: k_in from :func:`regular_degrees`).
        q: nominal across-block probability (``sbm-regular``: k_out from :func:`regular_degrees`).
        feature_dim: d of the N(0, 1) node features.
        symmetrize: the ``sbm`` sampler, ``"none"`` (edge probability p) or ``"max"`` (the official
            max(A, Aᵀ): edge probability 1 − (1 − p)² ≈ 2p).
        degree_rule: the ``sbm-regular`` degrees, ``"round"`` (nclens) or ``"ceil"`` (official).
    """

    kind: str = "sbm"
    num_nodes: int = 1000
    num_classes: int = 2
    p: float = 0.025
    q: float = 0.0017
    feature_dim: int = 8
    symmetrize: str = "none"
    degree_rule: str = "round"

    def __post_init__(self) -> None:
        if self.kind not in ("sbm", "sbm-regular"):
            raise ValueError(f"graph.kind must be 'sbm' or 'sbm-regular', got {self.kind!r}")
        if self.symmetrize not in SYMMETRIZE:
            raise ValueError(f"graph.symmetrize must be one of {list(SYMMETRIZE)}, got {self.symmetrize!r}")
        if self.degree_rule not in DEGREE_RULES:
            raise ValueError(f"graph.degree_rule must be one of {list(DEGREE_RULES)}, got {self.degree_rule!r}")
        _check_sizes(self.num_nodes, self.num_classes)
        _check_prob("graph.p", self.p)
        _check_prob("graph.q", self.q)
        if self.feature_dim < 1:
            raise ValueError(f"graph.feature_dim must be >= 1, got {self.feature_dim}")

    @property
    def block_size(self) -> int:
        """n = N/C."""
        return self.num_nodes // self.num_classes

    def degrees(self) -> tuple[int, int]:
        """(k_in, k_out) of the regular SBM of this spec (:func:`regular_degrees` with ``degree_rule``)."""
        return regular_degrees(self.num_nodes, self.num_classes, self.p, self.q, self.degree_rule)

    def effective_pq(self) -> tuple[float, float]:
        """Edge probabilities (p′, q′) of the graphs: :func:`edge_probability` of p, q for ``sbm``, or
        k_in/(n−1), k_out/n for the regular SBM."""
        if self.kind == "sbm":
            return edge_probability(self.p, self.symmetrize), edge_probability(self.q, self.symmetrize)
        k_in, k_out = self.degrees()
        return k_in / (self.block_size - 1), k_out / self.block_size


def make_graph(spec: SBMSpec, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """One graph of ``spec``: ``(x (N, d) float32, edge_index (2, 2E), y (N,))``, all from ``seed``."""
    if spec.kind == "sbm":
        edge_index, y = sbm_graph(spec.num_nodes, spec.num_classes, spec.p, spec.q, seed=seed,
                                  symmetrize=spec.symmetrize)
    else:
        k_in, k_out = spec.degrees()
        edge_index, y = sbm_regular_graph(spec.num_nodes, spec.num_classes, k_in, k_out, seed=seed)
    x = gaussian_node_features(spec.num_nodes, spec.feature_dim, seed=seed + 7919)
    return x, edge_index, y


@dataclass
class SBMGraph:
    """One graph: node features ``x`` (N, d), ``edge_index`` (2, 2E) both directions, labels ``y`` (N,).

    Attribute names follow ``torch_geometric.data.Data`` (``graph.x``, ``graph.edge_index``, ``graph.y``).
    """

    x: Tensor
    edge_index: Tensor
    y: Tensor

    @property
    def num_nodes(self) -> int:
        """N."""
        return int(self.y.shape[0])


class SBMDataset(torch.utils.data.Dataset):
    """A seeded list of SBM graphs (:class:`SBMGraph`: x, edge_index, y).

    Graph i is drawn from seed ``seed * 1_000_003 + i``, so train and test sets with different
    seeds never share a graph and a dataset is the same on every machine.

    Example:
        >>> ds = SBMDataset(SBMSpec(num_nodes=100, num_classes=2, p=0.1, q=0.01, feature_dim=4), 3, seed=0)
        >>> len(ds), ds[0].x.shape[1]
        (3, 4)
    """

    def __init__(self, spec: SBMSpec, num_graphs: int, *, seed: int = 0) -> None:
        if isinstance(num_graphs, bool) or not isinstance(num_graphs, int) or num_graphs < 1:
            raise ValueError(f"num_graphs must be a positive integer, got {num_graphs!r}")
        self.spec = spec
        self.seed = seed
        self.graphs = [SBMGraph(*make_graph(spec, seed * 1_000_003 + i)) for i in range(num_graphs)]

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> SBMGraph:
        return self.graphs[index]

    def edge_statistics(self) -> dict[str, float]:
        """Measured mean within/across-block edge counts over the graphs beside their expectations.

        For ``sbm`` graphs the expectations are those of :func:`expected_edge_counts` (the sampler's
        stated edge probabilities); for ``sbm-regular`` graphs the exact counts N·k_in/2 and
        C(C−1)/2·n·k_out.
        """
        counts = torch.tensor([edge_counts(g.edge_index, g.y) for g in self.graphs], dtype=torch.float64)
        spec = self.spec
        out: dict[str, float] = {"graphs": len(self.graphs), "within_measured": float(counts[:, 0].mean()),
                                 "across_measured": float(counts[:, 1].mean())}
        if spec.kind == "sbm":
            out.update(expected_edge_counts(spec.num_nodes, spec.num_classes, spec.p, spec.q, spec.symmetrize))
        else:
            k_in, k_out = spec.degrees()
            c, n = spec.num_classes, spec.block_size
            out.update({"k_in": k_in, "k_out": k_out, "within_mean": spec.num_nodes * k_in / 2, "within_sd": 0.0,
                        "across_mean": c * (c - 1) / 2 * n * k_out, "across_sd": 0.0})
        return out
