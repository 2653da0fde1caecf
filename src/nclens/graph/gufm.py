"""The graph unconstrained feature model (gUFM) and the structural condition for exact collapse.

gUFM (Kothapalli, Tirer & Bruna, NeurIPS 2023, eq. 3): the deepest node features H_g (d × N) of
every training graph g are free variables, shared with one GraphConv head (W1, W2 : C × d)::

    min  Σ_g [ (1/2N) ‖W1 H_g + W2 H_g Â_g − Y_g‖²_F + λ_H/2 ‖H_g‖²_F ] + λ_W1/2 ‖W1‖²_F + λ_W2/2 ‖W2‖²_F

with Y_g one-hot (C × N) and Â_g = A_g D_g⁻¹. It is solved in float64 by gradient descent, one
step per graph in turn per epoch (the step for graph g uses that graph's term plus the weight
decays). In node-major form X = H_gᵀ (N × d), M = Âᵀ X (neighbour means), R = X W1ᵀ + M W2ᵀ − Yᵀ::

    ∇W1 = Rᵀ X / N + λ_W1 W1,   ∇W2 = Rᵀ M / N + λ_W2 W2,
    ∇X  = (R W1 + Â (R W2)) / N + λ_H X,   Â (R W2) = A D⁻¹ (R W2) (rows: Σ_i A_ji r_i/D_i).

Structural condition (the paper's Theorem 3.1): a collapsed minimiser (H_g = class means) exists
only when every node's fraction of neighbours in each class depends on the node's own class alone:
|N(i) ∩ class c| / |N(i)| = F[y_i, c] for all i, c. The regular SBM satisfies it exactly (F = k_in/k,
k_out/k); a plain SBM does not (degrees fluctuate), and heterophilic regular graphs do too.

Example:
    >>> from nclens.graph.sbm import sbm_regular_graph, sbm_graph
    >>> from nclens.graph.gufm import structural_condition
    >>> structural_condition(*sbm_regular_graph(60, 2, 4, 1, seed=0)).holds
    True
    >>> structural_condition(*sbm_graph(60, 2, 0.3, 0.05, seed=0)).holds
    False
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from nclens.core.metrics import nc1
from nclens.core.stats import ClassStats
from nclens.graph.gnn import mean_aggregate
from nclens.graph.sbm import degrees_per_class

__all__ = ["StructuralCondition", "structural_condition", "GUFMConfig", "GUFMResult", "gufm_grads", "solve_gufm"]


@dataclass(frozen=True)
class StructuralCondition:
    """Outcome of :func:`structural_condition`.

    Attributes:
        holds: whether every node's class-fraction row equals that of its class (within ``tol``).
        gap: max over classes k, c of (max − min) over nodes i of class k of F_i[c] (0 when it holds).
        fractions: (C, C) mean over nodes of class k of their fraction of neighbours in class c.
        isolated: number of nodes without neighbours (their fraction row is all zero).
    """

    holds: bool
    gap: float
    fractions: Tensor
    isolated: int


def structural_condition(
    edge_index: Tensor, labels: Tensor, num_classes: int | None = None, *, tol: float = 1e-12
) -> StructuralCondition:
    """Check that |N(i) ∩ class c| / |N(i)| depends only on y_i, and by how much it fails.

    F_i[c] = |N(i) ∩ c| / |N(i)| (0 for isolated nodes). The condition holds when, for each class k,
    F_i is the same row for all nodes i of class k; ``gap`` = max_{k,c} (max_{i∈k} F_i[c] − min_{i∈k} F_i[c]).
    For several graphs pass their disjoint union (e.g. a torch_geometric ``Batch``): the condition
    must then hold with the same fractions in every graph, as the shared head W1, W2 requires.

    Args:
        edge_index: (2, E) directed pairs (both directions for undirected graphs).
        labels: (N,) int class of every node.
        num_classes: C (default: max label + 1).
        tol: largest gap still counted as holding (floating-point slack).
    """
    labels = torch.as_tensor(labels).long()
    if labels.ndim != 1 or labels.numel() == 0:
        raise ValueError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    c = int(labels.max()) + 1 if num_classes is None else num_classes
    counts = degrees_per_class(edge_index, labels, c).to(torch.float64)  # (N, C)
    deg = counts.sum(1, keepdim=True)
    frac = counts / deg.clamp_min(1.0)  # (N, C)
    big = torch.full((c, c), -math.inf, dtype=torch.float64)
    small = torch.full((c, c), math.inf, dtype=torch.float64)
    idx = labels[:, None].expand(-1, c)
    big = big.scatter_reduce(0, idx, frac, reduce="amax")
    small = small.scatter_reduce(0, idx, frac, reduce="amin")
    present = torch.bincount(labels, minlength=c) > 0
    gap = float((big - small)[present].max())
    sums = torch.zeros(c, c, dtype=torch.float64).index_add_(0, labels, frac)
    fractions = sums / torch.bincount(labels, minlength=c).clamp_min(1)[:, None]
    return StructuralCondition(
        holds=gap <= tol, gap=gap, fractions=fractions, isolated=int((deg == 0).sum())
    )


@dataclass(frozen=True)
class GUFMConfig:
    """Hyper-parameters of :func:`solve_gufm`.

    Attributes:
        dim: d, the feature dimension.
        wd_w1, wd_w2, wd_h: λ_W1, λ_W2, λ_H.
        lr: gradient-descent step size.
        epochs: passes over the graphs (one step per graph each).
        use_w1: include the root weight W1 (``False``: W1 ≡ 0, the model H ↦ W2 H Â).
        init_std: std of the N(0, σ²) initialisation of W1, W2, H.
        seed: seed of the initialisation.
        log_every: record loss and NC1 every this many epochs (and at the last one).
    """

    dim: int = 8
    wd_w1: float = 5e-3
    wd_w2: float = 5e-3
    wd_h: float = 5e-3
    lr: float = 10.0
    epochs: int = 2000
    use_w1: bool = True
    init_std: float = 0.1
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        for name in ("wd_w1", "wd_w2", "wd_h"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.epochs < 1 or self.log_every < 1:
            raise ValueError(f"epochs and log_every must be >= 1, got {self.epochs}, {self.log_every}")


@dataclass
class GUFMResult:
    """Solution and trajectory of :func:`solve_gufm`.

    Attributes:
        w1_: (C, d) root weight (zeros when ``use_w1`` is False).
        w2_: (C, d) neighbour weight.
        h_: per graph, the (N_g, d) node features (rows = nodes, i.e. H_gᵀ).
        history_: records ``{"epoch", "loss", "nc1", "nc1_ha"}`` (NC1 of H and H Â pooled over graphs).
    """

    w1_: Tensor
    w2_: Tensor
    h_: list[Tensor]
    history_: list[dict[str, float]] = field(default_factory=list)


def _adjacency(edge_index: Tensor, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
    src, dst = edge_index[0].to(device), edge_index[1].to(device)
    a = torch.sparse_coo_tensor(
        torch.stack([src, dst]), torch.ones(src.numel(), dtype=torch.float64, device=device), (n, n),
        check_invariants=False,
    ).coalesce()
    deg = torch.zeros(n, dtype=torch.float64, device=device).index_add_(
        0, dst, torch.ones(dst.numel(), dtype=torch.float64, device=device)
    )
    return a, deg


def gufm_grads(
    x: Tensor, w1: Tensor, w2: Tensor, y_onehot: Tensor, adj: Tensor, deg: Tensor, wd: tuple[float, float, float]
) -> tuple[float, Tensor, Tensor, Tensor]:
    """Loss of one graph's gUFM term and its gradients (float64; closed form of the module docstring).

    Args:
        x: (N, d) node features (H_gᵀ).
        w1, w2: (C, d) head weights.
        y_onehot: (N, C) targets.
        adj: sparse (N, N) A with A[j, i] = 1 for an edge j → i (symmetric for undirected graphs).
        deg: (N,) in-degrees D_i.
        wd: (λ_W1, λ_W2, λ_H).

    Returns:
        ``(loss, ∇X, ∇W1, ∇W2)`` with loss = (1/2N)‖R‖² + λ_W1/2‖W1‖² + λ_W2/2‖W2‖² + λ_H/2‖X‖².
    """
    n = x.shape[0]
    inv_deg = 1.0 / deg.clamp_min(1.0)
    m = torch.sparse.mm(adj.t(), x) * inv_deg[:, None]  # (N, d): mean of neighbours = Âᵀ X
    r = x @ w1.T + m @ w2.T - y_onehot  # (N, C)
    lw1, lw2, lh = wd
    loss = 0.5 * float(r.square().sum()) / n + 0.5 * (
        lw1 * float(w1.square().sum()) + lw2 * float(w2.square().sum()) + lh * float(x.square().sum())
    )
    g_w1 = r.T @ x / n + lw1 * w1
    g_w2 = r.T @ m / n + lw2 * w2
    back = torch.sparse.mm(adj, (r @ w2) * inv_deg[:, None])  # (N, d): Â (R W2)
    g_x = (r @ w1 + back) / n + lh * x
    return loss, g_x, g_w1, g_w2


def _pooled_nc1(xs: Sequence[Tensor], graphs: Sequence[tuple[Tensor, Tensor]], c: int) -> tuple[float, float]:
    s_h, s_ha = ClassStats(num_classes=c), ClassStats(num_classes=c)
    for x, (ei, y) in zip(xs, graphs):
        s_h.update(x, y.to(x.device))
        s_ha.update(mean_aggregate(x, ei.to(x.device), x.shape[0]), y.to(x.device))
    out = []
    for s in (s_h, s_ha):
        try:
            out.append(nc1(s))
        except ValueError:  # all class means coincide (e.g. the trivial minimiser H = 0)
            out.append(math.nan)
    return out[0], out[1]


def solve_gufm(
    graphs: Sequence[tuple[Tensor, Tensor]],
    num_classes: int,
    config: GUFMConfig = GUFMConfig(),
    *,
    device: torch.device | str | None = None,
    progress: bool = True,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> GUFMResult:
    """Minimise the gUFM over ``graphs`` by float64 gradient descent, recording NC1 of H and H Â.

    Args:
        graphs: ``(edge_index, labels)`` per graph (labels in 0..C−1).
        num_classes: C.
        config: :class:`GUFMConfig`.
        device: where to compute (default CPU).
        progress: show a rich progress bar.
        callback: called with every history record.

    Returns:
        :class:`GUFMResult`; ``history_[-1]["nc1"]`` is the final NC1 of H pooled over all graphs.

    Example:
        >>> from nclens.graph.sbm import sbm_regular_graph
        >>> res = solve_gufm([sbm_regular_graph(40, 2, 4, 1, seed=0)], 2,
        ...                  GUFMConfig(dim=4, lr=5.0, epochs=50, log_every=50), progress=False)
        >>> len(res.history_)
        1
    """
    if not graphs:
        raise ValueError("solve_gufm needs at least one graph")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(config.seed)
    c, d = num_classes, config.dim
    prepared = []
    xs = []
    for ei, y in graphs:
        y = torch.as_tensor(y).long()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
            raise ValueError(f"labels must lie in [0, {c - 1}], got [{int(y.min())}, {int(y.max())}]")
        n = y.numel()
        adj, deg = _adjacency(ei, n, dev)
        onehot = torch.nn.functional.one_hot(y, c).to(dev, torch.float64)
        prepared.append((adj, deg, onehot))
        xs.append((config.init_std * torch.randn(n, d, generator=gen, dtype=torch.float64)).to(dev))
    w1 = (config.init_std * torch.randn(c, d, generator=gen, dtype=torch.float64)).to(dev)
    w2 = (config.init_std * torch.randn(c, d, generator=gen, dtype=torch.float64)).to(dev)
    if not config.use_w1:
        w1.zero_()
    wd = (config.wd_w1 if config.use_w1 else 0.0, config.wd_w2, config.wd_h)
    history: list[dict[str, float]] = []
    lr = config.lr

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (TextColumn("gUFM"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("gufm", total=config.epochs, info="")
        for epoch in range(1, config.epochs + 1):
            total = 0.0
            for g, (adj, deg, onehot) in enumerate(prepared):
                loss, g_x, g_w1, g_w2 = gufm_grads(xs[g], w1, w2, onehot, adj, deg, wd)
                total += loss
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"gUFM diverged at epoch {epoch} (loss {loss}); lower the learning rate (lr={lr})"
                    )
                xs[g] = xs[g] - lr * g_x
                if config.use_w1:
                    w1 = w1 - lr * g_w1
                w2 = w2 - lr * g_w2
            if epoch % config.log_every == 0 or epoch == config.epochs:
                n1, n1a = _pooled_nc1(xs, graphs, c)
                record = {"epoch": epoch, "loss": total / len(prepared), "nc1": n1, "nc1_ha": n1a}
                history.append(record)
                if callback is not None:
                    callback(record)
                bar.update(task, info=f"loss {record['loss']:.3e} nc1 {n1:.2e}")
            bar.advance(task)
    return GUFMResult(w1_=w1, w2_=w2, h_=xs, history_=history)
