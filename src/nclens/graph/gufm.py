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
from typing import Any

import torch
from torch import Tensor

from nclens.core.metrics import nc1
from nclens.core.stats import ClassStats
from nclens.graph.sbm import degrees_per_class

__all__ = ["StructuralCondition", "structural_condition", "GUFMConfig", "GUFMResult", "GUFMSolver", "gufm_grads",
           "solve_gufm"]


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
    """Hyper-parameters of :func:`solve_gufm` / :class:`GUFMSolver`.

    The official settings (``configs/final/ufm/*.json``, ``gufm.py``): d = 8 (C = 2) or 16 (C = 4),
    λ_W1 = λ_W2 = λ_H = 0.005, lr = 0.1, W1, W2, H ~ N(0, 1) (``init_std=1``), 50,000 epochs over
    10 graphs. nclens 0.1's ``nclens gufm``: lr = 10, ``init_std=0.1``, 300 epochs on 2 graphs.

    Attributes:
        dim: d, the feature dimension.
        wd_w1, wd_w2, wd_h: λ_W1, λ_W2, λ_H.
        lr: gradient-descent step size.
        epochs: passes over the graphs (one step per graph each).
        use_w1: include the root weight W1 (``False``: W1 ≡ 0, the model H ↦ W2 H Â).
        init_std: std of the N(0, σ²) initialisation of W1, W2, H.
        seed: seed of the initialisation.
        log_every: record loss, NC1 and the gradient norm every this many epochs (and at the last one).
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
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"gufm dim must be an integer >= 1, got {self.dim!r}")
        for name in ("wd_w1", "wd_w2", "wd_h"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name in ("lr", "init_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if self.epochs < 1 or self.log_every < 1:
            raise ValueError(f"epochs and log_every must be >= 1, got {self.epochs}, {self.log_every}")


@dataclass
class GUFMResult:
    """Solution and trajectory of :func:`solve_gufm`.

    Attributes:
        w1_: (C, d) root weight (zeros when ``use_w1`` is False).
        w2_: (C, d) neighbour weight.
        h_: per graph, the (N_g, d) node features (rows = nodes, i.e. H_gᵀ).
        history_: the :meth:`GUFMSolver.record` of every logged epoch.
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
    inv_deg = 1.0 / deg.clamp_min(1.0)
    m = torch.sparse.mm(adj.t(), x) * inv_deg[:, None]  # (N, d): mean of neighbours = Âᵀ X
    back = lambda v: torch.sparse.mm(adj, v * inv_deg[:, None])  # noqa: E731  (N, d): Â v
    return _grads(x, m, back, w1, w2, y_onehot, wd)


def _grads(x: Tensor, m: Tensor, back: Callable[[Tensor], Tensor], w1: Tensor, w2: Tensor, y_onehot: Tensor,
           wd: tuple[float, float, float]) -> tuple[float, Tensor, Tensor, Tensor]:
    n = x.shape[0]
    r = x @ w1.T + m @ w2.T - y_onehot  # (N, C)
    lw1, lw2, lh = wd
    loss = 0.5 * float(r.square().sum()) / n + 0.5 * (
        lw1 * float(w1.square().sum()) + lw2 * float(w2.square().sum()) + lh * float(x.square().sum())
    )
    g_w1 = r.T @ x / n + lw1 * w1
    g_w2 = r.T @ m / n + lw2 * w2
    g_x = (r @ w1 + back(r @ w2)) / n + lh * x
    return loss, g_x, g_w1, g_w2


class GUFMSolver:
    """Cyclic float64 gradient descent on the gUFM, one step per graph in turn — checkpointable.

    The step for graph g uses that graph's term (with the weight decays), and W1, W2, H_g are updated
    from gradients at the same point (the official ``gufm.py`` ``train_loop``). ``state_dict()`` /
    ``load_state_dict()`` hold the epoch and every parameter, so a resumed solve continues exactly.

    The reported ``grad_norm`` is the norm of the gradient of the objective Σ_g L_g (each L_g with its
    weight decays, the sum the cyclic steps descend) at the current point:
    √(‖Σ_g ∇_W1 L_g‖² + ‖Σ_g ∇_W2 L_g‖² + Σ_g ‖∇_{H_g} L_g‖²) — 0 exactly at a stationary point, so an
    NC1 that stays flat while ``grad_norm`` → 0 is a plateau (a non-collapsed stationary point), and
    one that still falls while ``grad_norm`` is not small is slow convergence.
    """

    def __init__(self, graphs: Sequence[tuple[Tensor, Tensor]], num_classes: int, config: GUFMConfig = GUFMConfig(),
                 *, device: torch.device | str | None = None) -> None:
        from nclens.graph.gnn import mean_operator

        if not graphs:
            raise ValueError("the gUFM needs at least one graph")
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.config = config
        self.num_classes = c = num_classes
        gen = torch.Generator().manual_seed(config.seed)
        self.graphs = [(ei, torch.as_tensor(y).long()) for ei, y in graphs]
        self.ops, self.targets, self.hs = [], [], []
        for ei, y in self.graphs:
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
                raise ValueError(f"labels must lie in [0, {c - 1}], got [{int(y.min())}, {int(y.max())}]")
            n = y.numel()
            p, p_t = mean_operator(ei.to(self.device), n, dtype=torch.float64)
            self.ops.append((p, p_t))
            self.targets.append(torch.nn.functional.one_hot(y, c).to(self.device, torch.float64))
            self.hs.append((config.init_std * torch.randn(n, config.dim, generator=gen, dtype=torch.float64))
                           .to(self.device))
        self.w1 = (config.init_std * torch.randn(c, config.dim, generator=gen, dtype=torch.float64)).to(self.device)
        self.w2 = (config.init_std * torch.randn(c, config.dim, generator=gen, dtype=torch.float64)).to(self.device)
        if not config.use_w1:
            self.w1.zero_()
        self.wd = (config.wd_w1 if config.use_w1 else 0.0, config.wd_w2, config.wd_h)
        self.epoch = 0
        self.last_loss = math.nan

    def _grads(self, g: int) -> tuple[float, Tensor, Tensor, Tensor]:
        p, p_t = self.ops[g]
        x = self.hs[g]
        return _grads(x, p @ x, lambda v: p_t @ v, self.w1, self.w2, self.targets[g], self.wd)

    def run_epoch(self) -> float:
        """One pass over the graphs (one step each); returns the mean of the graphs' losses before their steps.

        Raises:
            FloatingPointError: the loss is not finite (the message names the epoch and ``lr``).
        """
        lr = self.config.lr
        total = 0.0
        for g in range(len(self.hs)):
            loss, g_x, g_w1, g_w2 = self._grads(g)
            if not math.isfinite(loss):
                raise FloatingPointError(
                    f"gUFM diverged at epoch {self.epoch + 1}, graph {g} (loss {loss}); lower solver.lr (now {lr:g})"
                )
            total += loss
            self.hs[g] = self.hs[g] - lr * g_x
            if self.config.use_w1:
                self.w1 = self.w1 - lr * g_w1
            self.w2 = self.w2 - lr * g_w2
        self.epoch += 1
        self.last_loss = total / len(self.hs)
        return self.last_loss

    def objective_and_grad_norm(self) -> tuple[float, float]:
        """(Σ_g L_g / G, ‖∇ Σ_g L_g‖) at the current point (see the class docstring)."""
        total, sq_h = 0.0, 0.0
        g_w1 = torch.zeros_like(self.w1)
        g_w2 = torch.zeros_like(self.w2)
        for g in range(len(self.hs)):
            loss, gx, gw1, gw2 = self._grads(g)
            total += loss
            sq_h += float(gx.square().sum())
            g_w1 += gw1
            g_w2 += gw2
        sq = sq_h + float(g_w2.square().sum()) + (float(g_w1.square().sum()) if self.config.use_w1 else 0.0)
        return total / len(self.hs), math.sqrt(sq)

    def stats(self) -> tuple[ClassStats, ClassStats]:
        """ClassStats of H and of H Â pooled over the graphs."""
        s_h, s_ha = ClassStats(num_classes=self.num_classes), ClassStats(num_classes=self.num_classes)
        for x, (p, _), (_, y) in zip(self.hs, self.ops, self.graphs):
            s_h.update(x, y.to(x.device))
            s_ha.update(p @ x, y.to(x.device))
        return s_h, s_ha

    def record(self) -> dict[str, float]:
        """``{epoch, loss, objective, grad_norm, nc1, nc1_ha, nc1_graph_mean}`` + the head NC set of :func:`head_nc`.

        ``nc1``/``nc1_ha`` are of H and H Â pooled over the graphs (nclens); ``nc1_graph_mean`` the mean
        over graphs of each graph's NC1 of H (the official tracker's ``plot_NC1_H`` averages per graph).
        """
        from nclens.graph.nc import head_nc

        objective, grad_norm = self.objective_and_grad_norm()
        s_h, s_ha = self.stats()
        per_graph = []
        for x, (_, y) in zip(self.hs, self.graphs):
            per_graph.append(_nan_metric(nc1, ClassStats(num_classes=self.num_classes).update(x, y.to(x.device))))
        finite = [v for v in per_graph if math.isfinite(v)]
        rec = {"epoch": self.epoch, "loss": self.last_loss, "objective": objective, "grad_norm": grad_norm,
               "nc1": _nan_metric(nc1, s_h), "nc1_ha": _nan_metric(nc1, s_ha),
               "nc1_graph_mean": sum(finite) / len(finite) if finite else math.nan}
        rec.update(head_nc(s_h, s_ha, self.w1 if self.config.use_w1 else None, self.w2))
        return rec

    def state_dict(self) -> dict[str, Any]:
        """The epoch and every parameter (tensors on the CPU)."""
        return {"epoch": self.epoch, "last_loss": self.last_loss, "w1": self.w1.cpu(), "w2": self.w2.cpu(),
                "h": [x.cpu() for x in self.hs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (shapes are checked)."""
        hs = list(state["h"])
        if len(hs) != len(self.hs) or any(a.shape != b.shape for a, b in zip(hs, self.hs)) or \
                state["w1"].shape != self.w1.shape or state["w2"].shape != self.w2.shape:
            raise ValueError("the gUFM checkpoint does not fit these graphs and dimensions (was the config changed?)")
        self.epoch = int(state["epoch"])
        self.last_loss = float(state["last_loss"])
        self.w1, self.w2 = state["w1"].to(self.device, torch.float64), state["w2"].to(self.device, torch.float64)
        self.hs = [x.to(self.device, torch.float64) for x in hs]


def _nan_metric(fn: Callable[[ClassStats], float], s: ClassStats) -> float:
    try:
        return float(fn(s))
    except ValueError:  # all class means coincide (e.g. the trivial minimiser H = 0)
        return math.nan


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
        progress: show a progress bar.
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
    from nclens.core.console import progress_bar

    solver = GUFMSolver(graphs, num_classes, config, device=device)
    history: list[dict[str, float]] = []
    with progress_bar(progress, "gUFM", config.epochs) as advance:
        while solver.epoch < config.epochs:
            solver.run_epoch()
            if solver.epoch % config.log_every == 0 or solver.epoch == config.epochs:
                record = solver.record()
                history.append(record)
                if callback is not None:
                    callback(record)
            advance()
    return GUFMResult(w1_=solver.w1, w2_=solver.w2, h_=solver.hs, history_=history)
