"""Typed, frozen configs of the graph experiments: ``gnn`` (:class:`GNNRunConfig`), ``gufm`` (:class:`GUFMRunConfig`).

Every range is checked when the config is built — before a run folder is created (``train_graphs: 0``,
``model.num_layers: 0``, an unknown loss or block order are refused with the key and the expected value).

Example:
    >>> from nclens.runs.config import override_config
    >>> cfg = override_config(GNNRunConfig(), ["model.num_layers=4", "train.loss=mse_half"])
    >>> cfg.model.num_layers, cfg.train.loss, cfg.optim.name
    (4, 'mse_half', 'adam')
    >>> override_config(GNNRunConfig(), ["train_graphs=0"])
    Traceback (most recent call last):
    ...
    ValueError: train_graphs must be > 0, got 0
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nclens.graph.gnn import BLOCK_ORDERS, PERMUTATION_LOSSES
from nclens.graph.gufm import GUFMConfig
from nclens.graph.sbm import SBMSpec
from nclens.runs.config import check_choice, check_nonempty, check_positive
from nclens.train.optim import OptimConfig

__all__ = ["ModelConfig", "TrainConfig", "MeasureConfig", "SpectralConfig", "GNNRunConfig", "GUFMRunConfig",
           "SBMSpec", "GUFMConfig", "OptimConfig", "SPECTRAL_METHODS"]

SPECTRAL_METHODS = ("bethe", "laplacian")


@dataclass(frozen=True)
class ModelConfig:
    """The GNN (:class:`nclens.graph.gnn.GNNConfig`; input width = ``graph.feature_dim``, C = ``graph.num_classes``).

    ``block_order``: conv-bn-relu (nclens 0.1) | conv-relu-bn (official); ``projection``: an extra first
    block d → hidden (the official ``proj_layer``); ``num_layers`` hidden blocks follow.
    """

    hidden: int = 16
    num_layers: int = 8
    use_w1: bool = True
    batch_norm: bool = True
    block_order: str = "conv-bn-relu"
    projection: bool = False

    def __post_init__(self) -> None:
        check_positive("model.hidden", self.hidden)
        check_positive("model.num_layers", self.num_layers)
        check_choice("model.block_order", self.block_order, BLOCK_ORDERS)


@dataclass(frozen=True)
class TrainConfig:
    """Training: ``epochs`` passes over the training graphs, one graph per optimiser step (the one Trainer).

    ``loss``: the permutation-invariant loss, by its name in the loss registry — mse (``nn.MSELoss``: mean
    over N·C, the official code's) | mse_half (½‖o − e_k‖² per node, nclens 0.1's GNN "mse") | mse_sum | ce.
    """

    epochs: int = 4
    loss: str = "mse"
    device: str = "cpu"
    checkpoint_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        check_positive("train.epochs", self.epochs)
        check_positive("train.checkpoint_every", self.checkpoint_every)
        check_choice("train.loss", self.loss, PERMUTATION_LOSSES)
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda[:i]', got {self.device!r}")


@dataclass(frozen=True)
class MeasureConfig:
    """What is measured after training: per-layer node NC on every test graph and on the first
    ``train_graphs`` training graphs (0: none), at the block ``stages`` named (conv, bn, relu; the
    block output is always measured as stage ``out``)."""

    train_graphs: int = 0
    stages: tuple[str, ...] = ("conv",)

    def __post_init__(self) -> None:
        check_positive("measure.train_graphs", self.train_graphs, zero_ok=True)
        bad = [s for s in self.stages if s not in ("conv", "bn", "relu")]
        if bad:
            raise ValueError(f"measure.stages must be among conv, bn, relu; got {bad}")


@dataclass(frozen=True)
class SpectralConfig:
    """Spectral baselines on the first ``graphs`` test graphs: nclens's projected subspace iteration
    (``methods``, ``iterations``, scored every ``every``) and, with ``official``, the official deflated
    power iteration for C = 2 (``official_iterations``)."""

    methods: tuple[str, ...] = SPECTRAL_METHODS
    iterations: int = 40
    every: int = 2
    graphs: int = 4
    official: bool = False
    official_iterations: int = 32

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in SPECTRAL_METHODS]
        if bad:
            raise ValueError(f"spectral.methods must be among {', '.join(SPECTRAL_METHODS)}; got {bad}")
        check_positive("spectral.iterations", self.iterations, zero_ok=True)
        check_positive("spectral.every", self.every)
        check_positive("spectral.graphs", self.graphs, zero_ok=True)
        check_positive("spectral.official_iterations", self.official_iterations)


@dataclass(frozen=True)
class GNNRunConfig:
    """A GNN-NC experiment (kind ``gnn``): one sub-run per seed in ``seeds`` (data, initialisation, order).

    Seed s draws its training graphs from dataset seed 2s + 1 and its test graphs from 2s + 2 (so
    seeds never share a graph) and initialises the model with s.
    """

    name: str = "gnn"
    seeds: tuple[int, ...] = (0,)
    graph: SBMSpec = field(default_factory=SBMSpec)
    train_graphs: int = 48
    test_graphs: int = 8
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(name="adam", lr=0.01, weight_decay=5e-4,
                                                                   schedule="constant", momentum=0.0))
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    spectral: SpectralConfig = field(default_factory=SpectralConfig)

    def __post_init__(self) -> None:
        check_nonempty("seeds", self.seeds)
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        check_positive("train_graphs", self.train_graphs)
        check_positive("test_graphs", self.test_graphs)
        if self.measure.train_graphs > self.train_graphs:
            raise ValueError(f"measure.train_graphs ({self.measure.train_graphs}) exceeds train_graphs "
                             f"({self.train_graphs})")
        if self.spectral.graphs > self.test_graphs:
            raise ValueError(f"spectral.graphs ({self.spectral.graphs}) exceeds test_graphs ({self.test_graphs})")
        if self.spectral.official and self.graph.num_classes != 2:
            raise ValueError(f"spectral.official (sign prediction) needs graph.num_classes = 2, got "
                             f"{self.graph.num_classes}")
        if self.graph.num_classes > 8:
            raise ValueError(f"the permutation-invariant loss enumerates C! relabellings: graph.num_classes must be "
                             f"<= 8, got {self.graph.num_classes}")


@dataclass(frozen=True)
class GUFMRunConfig:
    """A gUFM experiment (kind ``gufm``): the solver on ``graphs`` graphs of each family in ``families``
    (sbm-regular and/or sbm, with ``graph``'s N, C, p, q and samplers), logged every ``solver.log_every``
    epochs, checkpointed every ``checkpoint_every`` epochs; ``report_epochs`` are the epochs of the
    plateau table (NC1 and gradient norm; each must be a logged epoch)."""

    name: str = "gufm"
    graph: SBMSpec = field(default_factory=SBMSpec)
    families: tuple[str, ...] = ("sbm-regular", "sbm")
    graphs: int = 2
    solver: GUFMConfig = field(default_factory=lambda: GUFMConfig(epochs=300, log_every=3))
    checkpoint_every: int = 100
    report_epochs: tuple[int, ...] = ()
    progress: bool = True

    def __post_init__(self) -> None:
        check_nonempty("families", self.families)
        bad = [f for f in self.families if f not in ("sbm-regular", "sbm")]
        if bad:
            raise ValueError(f"families must be among sbm-regular, sbm; got {bad}")
        check_positive("graphs", self.graphs)
        check_positive("checkpoint_every", self.checkpoint_every)
        s = self.solver
        bad = [e for e in self.report_epochs if not (0 < e <= s.epochs and (e % s.log_every == 0 or e == s.epochs))]
        if bad:
            raise ValueError(f"report_epochs must be logged epochs in (0, solver.epochs={s.epochs}] (multiples of "
                             f"solver.log_every={s.log_every}); got {bad}")
