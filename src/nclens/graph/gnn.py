"""GraphConv GNNs for community detection, permutation-invariant losses and the overlap score.

The layer (Kothapalli, Tirer & Bruna 2023, eq. 1), with node features as rows::

    h_i' = W2 · mean_{j∈N(i)} h_j + W1 · h_i          (no bias; W1 optional)

i.e. H' = W1 H + W2 H Â with features as columns and Â = A D⁻¹ (an isolated node's neighbour mean
is 0). It is torch_geometric's ``SAGEConv(aggr="mean", root_weight=W1, bias=False)``: ``lin_r``
is W1 (root) and ``lin_l`` is W2 (neighbours). :class:`GraphConvGNN` stacks L such layers, each
followed by BatchNorm and ReLU, and ends with a GraphConv layer to C outputs (the classifier whose
W1, W2 the gUFM of :mod:`nclens.graph.gufm` models).

Communities carry no names, so the loss is minimised over the C! relabellings of the targets,
per graph, and accuracy is the best-permutation accuracy; overlap = (acc − 1/C)/(1 − 1/C)
(Decelle et al. 2011; Chen, Li & Bruna 2019).

Example:
    >>> import torch
    >>> from nclens.graph.gnn import permutation_invariant_loss, overlap
    >>> y = torch.tensor([0, 0, 1, 1])
    >>> out = torch.tensor([[0., 1.], [0., 1.], [1., 0.], [1., 0.]])   # perfect, with labels swapped
    >>> float(permutation_invariant_loss(out, y, 2, kind="mse")), overlap(out.argmax(1), y, 2)
    (0.0, 1.0)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "GNNConfig",
    "GraphConvGNN",
    "mean_aggregate",
    "normalized_adjacency",
    "permutations",
    "permutation_invariant_loss",
    "best_permutation_accuracy",
    "overlap",
]

#: Largest C whose C! permutations are enumerated by the loss (8! = 40,320).
MAX_PERMUTATION_CLASSES = 8


def mean_aggregate(x: Tensor, edge_index: Tensor, num_nodes: int | None = None) -> Tensor:
    """Neighbour means (Âᵀ X in node-major form): row i = mean_{j∈N(i)} x_j, 0 for isolated nodes.

    ``edge_index`` holds directed pairs (source j, target i); an undirected graph lists both.
    With H = Xᵀ (features as columns) this is H Â, Â = A D⁻¹.
    """
    n = x.shape[0] if num_nodes is None else num_nodes
    src, dst = edge_index[0], edge_index[1]
    out = torch.zeros(n, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, dst, x[src])
    deg = torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(
        0, dst, torch.ones_like(dst, dtype=x.dtype)
    )
    return out / deg.clamp_min(1.0)[:, None]


def normalized_adjacency(edge_index: Tensor, num_nodes: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Â = A D⁻¹ as a sparse (N, N) COO tensor: Â_{ji} = A_{ji}/D_i (column i sums to 1, or 0 if isolated)."""
    dst = edge_index[1]
    deg = torch.zeros(num_nodes, dtype=dtype, device=edge_index.device).index_add_(
        0, dst, torch.ones_like(dst, dtype=dtype)
    )
    values = 1.0 / deg[dst]
    return torch.sparse_coo_tensor(edge_index, values, (num_nodes, num_nodes), check_invariants=False).coalesce()


@dataclass(frozen=True)
class GNNConfig:
    """Architecture of :class:`GraphConvGNN`.

    Attributes:
        in_dim: d of the input node features.
        hidden: width of every hidden layer.
        num_layers: L hidden GraphConv layers (each + BatchNorm + ReLU).
        num_classes: C outputs of the final GraphConv layer.
        use_w1: keep the root weight W1 (``False``: h' = W2 · mean of neighbours only).
        batch_norm: BatchNorm after each hidden convolution. It always normalises with the statistics
            of the nodes it is given (``track_running_stats=False``): graphs with random features
            differ in their per-channel means, and a test graph must be centred on its own nodes
            exactly as the training graphs were (train with one graph per step for the same reason).
    """

    in_dim: int = 8
    hidden: int = 16
    num_layers: int = 8
    num_classes: int = 2
    use_w1: bool = True
    batch_norm: bool = True

    def __post_init__(self) -> None:
        for name in ("in_dim", "hidden", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")


class GraphConvGNN(nn.Module):
    """L × (GraphConv → BatchNorm → ReLU) then GraphConv to C outputs; no biases in the convolutions.

    ``forward(x, edge_index, return_features=True)`` also returns the features of every depth:
    ``features[0]`` is the input and ``features[l]`` the output of hidden layer l (after ReLU);
    ``preact[l]`` is the convolution output of layer l before BatchNorm (the linear map the Tr Σ
    predictions of :mod:`nclens.graph.nc` describe).

    Example:
        >>> import torch
        >>> from nclens.graph.gnn import GNNConfig, GraphConvGNN
        >>> net = GraphConvGNN(GNNConfig(in_dim=4, hidden=8, num_layers=2, num_classes=2))
        >>> ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
        >>> net(torch.randn(3, 4), ei).shape
        torch.Size([3, 2])
    """

    def __init__(self, config: GNNConfig) -> None:
        from torch_geometric.nn import SAGEConv

        super().__init__()
        self.config = config
        dims = [config.in_dim] + [config.hidden] * config.num_layers
        self.convs = nn.ModuleList(
            SAGEConv(dims[i], dims[i + 1], aggr="mean", root_weight=config.use_w1, bias=False)
            for i in range(config.num_layers)
        )
        self.norms = nn.ModuleList(
            nn.BatchNorm1d(config.hidden, track_running_stats=False) if config.batch_norm else nn.Identity()
            for _ in range(config.num_layers)
        )
        self.head = SAGEConv(config.hidden, config.num_classes, aggr="mean", root_weight=config.use_w1, bias=False)

    @staticmethod
    def conv_weights(conv: nn.Module) -> tuple[Tensor | None, Tensor]:
        """(W1, W2) of one GraphConv layer (W1 is ``None`` without a root weight), each (out, in)."""
        w1 = conv.lin_r.weight if getattr(conv, "root_weight", False) else None
        return w1, conv.lin_l.weight

    def layer_weights(self) -> list[tuple[Tensor | None, Tensor]]:
        """(W1, W2) of every hidden layer, then of the head."""
        return [self.conv_weights(c) for c in self.convs] + [self.conv_weights(self.head)]

    def forward(self, x: Tensor, edge_index: Tensor, *, return_features: bool = False):  # noqa: ANN201
        features = [x]
        preact = []
        h = x
        for conv, norm in zip(self.convs, self.norms):
            z = conv(h, edge_index)
            preact.append(z)
            h = torch.relu(norm(z))
            features.append(h)
        out = self.head(h, edge_index)
        if return_features:
            return out, features, preact
        return out


def permutations(num_classes: int, device: torch.device | str | None = None) -> Tensor:
    """All C! permutations of 0..C−1 as a (C!, C) int64 tensor (C <= 8)."""
    if not 2 <= num_classes <= MAX_PERMUTATION_CLASSES:
        raise ValueError(
            f"permutation-invariant losses enumerate C! relabellings; need 2 <= C <= "
            f"{MAX_PERMUTATION_CLASSES}, got C={num_classes}"
        )
    return torch.tensor(list(itertools.permutations(range(num_classes))), dtype=torch.long, device=device)


def _check_outputs(outputs: Tensor, labels: Tensor, num_classes: int) -> None:
    if outputs.ndim != 2 or outputs.shape[1] != num_classes:
        raise ValueError(f"outputs must be (N, C={num_classes}), got shape {tuple(outputs.shape)}")
    if labels.shape != (outputs.shape[0],):
        raise ValueError(f"labels must be ({outputs.shape[0]},), got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes - 1}], got [{int(labels.min())}, {int(labels.max())}]")


def permutation_invariant_loss(
    outputs: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    kind: str = "mse",
    batch: Tensor | None = None,
) -> Tensor:
    """Mean over graphs of min over relabellings π of the graph's mean node loss.

    For graph g with nodes V_g: L_g = min_π (1/|V_g|) Σ_{i∈V_g} ℓ(o_i, π(y_i)) with
    ℓ = ½‖o − e_k‖² (one-hot MSE) or −log softmax(o)_k (CE); returns mean_g L_g.
    All C! relabellings are evaluated at once (a (C!, N) gather; no loop over nodes).

    Args:
        outputs: (N, C) network outputs.
        labels: (N,) int labels in 0..C−1.
        num_classes: C.
        kind: ``"mse"`` or ``"ce"``.
        batch: (N,) graph index of each node (torch_geometric ``Batch.batch``); ``None`` = one graph.
    """
    _check_outputs(outputs, labels, num_classes)
    if kind not in ("mse", "ce"):
        raise ValueError(f"loss kind must be 'mse' or 'ce', got {kind!r}")
    perms = permutations(num_classes, outputs.device)  # (P, C)
    if kind == "ce":  # −log softmax(o)_k
        score = torch.log_softmax(outputs, dim=1)  # (N, C)
        base = torch.zeros(outputs.shape[0], dtype=outputs.dtype, device=outputs.device)
    else:  # ½‖o − e_k‖² = ½‖o‖² + ½ − o_k
        score = outputs
        base = 0.5 * outputs.square().sum(1) + 0.5
    target = perms[:, labels]  # (P, N): π(y_i)
    per_node = base[None, :] - score.gather(1, target.T).T  # (P, N)
    if batch is None:
        return per_node.mean(1).min()
    num_graphs = int(batch.max()) + 1
    sums = torch.zeros(perms.shape[0], num_graphs, dtype=per_node.dtype, device=per_node.device)
    sums.index_add_(1, batch, per_node)
    sizes = torch.bincount(batch, minlength=num_graphs).to(per_node.dtype)
    return (sums / sizes).min(0).values.mean()


def best_permutation_accuracy(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """max over relabellings π of mean[π(pred_i) = y_i], by optimal assignment on the C×C confusion."""
    from scipy.optimize import linear_sum_assignment

    if pred.shape != labels.shape or pred.ndim != 1:
        raise ValueError(f"pred and labels must be 1-D of one shape, got {tuple(pred.shape)}, {tuple(labels.shape)}")
    if labels.numel() == 0:
        raise ValueError("accuracy of zero nodes is undefined")
    conf = torch.zeros(num_classes * num_classes, dtype=torch.long)
    conf.index_add_(0, (pred.cpu() * num_classes + labels.cpu()).long(), torch.ones(pred.numel(), dtype=torch.long))
    conf = conf.view(num_classes, num_classes).numpy()
    rows, cols = linear_sum_assignment(conf, maximize=True)
    return float(conf[rows, cols].sum() / labels.numel())


def overlap(pred: Tensor, labels: Tensor, num_classes: int) -> float:
    """Overlap (acc_π − 1/C)/(1 − 1/C) with acc_π the best-permutation accuracy (1 perfect, ≈0 chance)."""
    acc = best_permutation_accuracy(pred, labels, num_classes)
    chance = 1.0 / num_classes
    return (acc - chance) / (1.0 - chance)


def init_scale(module: nn.Module, gain: float = 1.0) -> None:
    """Re-initialise every linear weight with N(0, gain²/fan_in) (useful for deep, bias-free stacks)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
