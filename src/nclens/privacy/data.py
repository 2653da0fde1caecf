"""Real features for private fine-tuning: public / private / test splits, pre-training checkpoints, feature files.

* :func:`load_public_private` — the embedded digits (or MNIST-1D) training split cut into a public
  part (pre-training, remedy fitting) and a private part (the private head), beside the test split;
* :func:`pretrain` — an MLP trained on the public part by the one :class:`~nclens.train.Trainer`
  (exact resume), keeping the weights at chosen epochs (:class:`KeepWeights`), each a collapse level;
* :func:`penultimate_features` — the input of the ``classifier`` layer (through the shared
  :class:`~nclens.core.probe.Probe`);
* :func:`split_feature_file` — a feature file (``nclens extract``) cut per class into public /
  private / test.

Example:
    >>> public, private, test = load_public_private("digits", public_fraction=0.5, seed=0)
    >>> public.x.shape[1], len(set(public.y.tolist())), public.x.shape[0] + private.x.shape[0] > test.x.shape[0]
    (64, 10, True)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from nclens.runs.folder import RunFolder
from nclens.train import Callback, TensorData, Trainer

__all__ = ["Part", "load_public_private", "split_feature_file", "file_indices", "common_indices", "perturb_parts",
           "KeepWeights", "pretrain", "build_mlp",
           "penultimate_features", "weights_name"]


@dataclass(frozen=True)
class Part:
    """One part of the data: inputs or features (n, D) and labels (n,)."""

    x: Tensor
    y: Tensor


def perturb_parts(parts: tuple[Part, ...], shift_norm: float, seed: int | Sequence[int]) -> tuple[Part, ...]:
    """Copies of ``parts`` (public, private, test) with Gaussian feature noise of norm ≈ β r (β = ``shift_norm``).

    δ_i ~ N(0, s² I_D), s = β r/√D, independently for every sample of every part; r is the RMS
    distance of the *private* part (``parts[1]``) from its mean, so β is in units of the features'
    own spread. The copies are float64.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(4000, 50, generator=g, dtype=torch.float64)
        >>> parts = tuple(Part(x, torch.zeros(4000, dtype=torch.long)) for _ in range(3))
        >>> out = perturb_parts(parts, 0.5, seed=1)
        >>> r = (x - x.mean(0)).square().sum(1).mean().sqrt()
        >>> round(float((out[1].x - x).square().sum(1).mean().sqrt() / r), 2)
        0.5
    """
    private = parts[1].x.double()
    radius = float((private - private.mean(0)).square().sum(1).mean().sqrt())
    std = shift_norm * radius / math.sqrt(private.shape[1])
    state = np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state) & (2**63 - 1))
    return tuple(Part(part.x.double() + std * torch.randn(part.x.shape, generator=gen, dtype=torch.float64), part.y)
                 for part in parts)


def _stratified(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from nclens.data import stratified_split

    return stratified_split(y, fraction, seed)


def _keep_per_class(part: Part, per_class: int | None, seed: int) -> Part:
    """At most ``per_class`` samples of every class (a seeded choice, original order kept)."""
    if per_class is None:
        return part
    gen = np.random.default_rng(seed)
    y = part.y.numpy()
    keep = np.sort(np.concatenate([gen.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]))
    index = torch.from_numpy(keep)
    return Part(part.x[index], part.y[index])


def load_public_private(dataset: str, *, public_fraction: float, seed: int, mnist1d_samples: int = 4000,
                        private_per_class: int | None = None) -> tuple[Part, Part, Part]:
    """(public, private, test) of an embedded dataset: the training split cut per class, seeded.

    ``digits``: scikit-learn's bundled digits, per-pixel standardised on the training split;
    ``mnist1d``: MNIST-1D (``mnist1d_samples``), standardised likewise.
    """
    from nclens.data import load_digits, load_mnist1d

    if dataset == "digits":
        split = load_digits(seed=seed)
    elif dataset == "mnist1d":
        split = load_mnist1d(num_samples=mnist1d_samples, seed=seed)
        mean, std = split.x_train.mean(0), split.x_train.std(0).clamp_min(1e-6)
        split = type(split)((split.x_train - mean) / std, split.y_train, (split.x_test - mean) / std, split.y_test)
    else:
        raise ValueError(f"dataset must be 'digits' or 'mnist1d', got {dataset!r}")
    pub, priv = _stratified(split.y_train.numpy(), 1.0 - public_fraction, seed)
    pub_t, priv_t = torch.from_numpy(pub), torch.from_numpy(priv)
    private = _keep_per_class(Part(split.x_train[priv_t], split.y_train[priv_t]), private_per_class, seed + 2)
    return Part(split.x_train[pub_t], split.y_train[pub_t]), private, Part(split.x_test, split.y_test)


def file_indices(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The ``indices`` array of a feature file (the dataset index of each sample, as ``nclens extract``
    writes it), or ``None`` when the file holds none. Reads only that array."""
    from pathlib import Path

    target = Path(path)
    if target.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(target), "np") as f:
            return np.asarray(f.get_tensor("indices")) if "indices" in f.keys() else None
    with np.load(target, allow_pickle=False) as data:
        return np.asarray(data["indices"]) if "indices" in data.files else None


def common_indices(paths: Sequence[str | os.PathLike[str]]) -> np.ndarray | None:
    """The dataset indices held by every file (sorted), or ``None`` when a file holds no ``indices``."""
    common = None
    for path in paths:
        idx = file_indices(path)
        if idx is None:
            return None
        common = np.unique(idx) if common is None else np.intersect1d(common, idx)
    return common


def split_feature_file(path: str | os.PathLike[str], *, public_fraction: float, test_fraction: float,
                       seed: int, private_per_class: int | None = None,
                       keep: np.ndarray | None = None) -> tuple[Part, Part, Part]:
    """(public, private, test) of a single-label feature file, cut per class (seeded).

    ``test_fraction`` of each class goes to the test part, then ``public_fraction`` of the rest to the
    public part (``private_per_class``: keep that many of the private rest per class); labels are
    remapped to 0..K−1 in ascending order. ``keep``: use only the samples whose dataset index (the
    file's ``indices``) is in ``keep``, ordered by that index — so files of different networks over the
    same images are split into the same images.

    Raises:
        FileNotFoundError, ValueError: the file is missing or not a valid single-label feature file.
    """
    from nclens.core.features import load_feature_file

    data = load_feature_file(path)
    if data.labels.ndim != 1:
        raise ValueError(f"{os.fspath(path)!r} holds multi-label features; dp-features needs one label per sample")
    features, labels = data.features, data.labels
    if keep is not None:
        index = file_indices(path)
        if index is None:
            raise ValueError(f"{os.fspath(path)!r} holds no 'indices' to select common samples by")
        order = np.argsort(index, kind="stable")
        chosen = torch.from_numpy(order[np.isin(index[order], keep)])
        features, labels = features[chosen], labels[chosen]
    _, y = torch.unique(labels, return_inverse=True)
    counts = torch.bincount(y)
    if int(counts.min()) < 4:
        raise ValueError(f"{os.fspath(path)!r}: every class needs at least 4 samples to split into "
                         f"public/private/test, the smallest has {int(counts.min())}")
    rest, test = _stratified(y.numpy(), test_fraction, seed)
    priv_rel, pub_rel = _stratified(y.numpy()[rest], public_fraction, seed + 1)
    x = features.to(torch.float32)
    parts = []
    for idx in (rest[pub_rel], rest[priv_rel], test):
        index = torch.from_numpy(np.sort(idx))
        parts.append(Part(x[index], y[index]))
    return parts[0], _keep_per_class(parts[1], private_per_class, seed + 2), parts[2]


def weights_name(epoch: int) -> str:
    """The file (inside the pre-training sub-run) that keeps the weights of ``epoch``."""
    return f"weights/epoch_{epoch:04d}.pt"


class KeepWeights(Callback):
    """Keep the model's weights at ``epochs`` (0 = at the start of a fresh fit) in the trainer's run folder."""

    def __init__(self, epochs: Sequence[int]) -> None:
        self.epochs = set(int(e) for e in epochs)

    def _keep(self, trainer: Trainer, epoch: int) -> None:
        if trainer.writes:
            state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
            trainer.run.save_checkpoint({"model": state, "epoch": epoch}, weights_name(epoch))

    def on_fit_start(self, trainer: Trainer, start_epoch: int) -> None:
        if start_epoch == 0 and 0 in self.epochs:
            self._keep(trainer, 0)

    def on_epoch_end(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        if epoch in self.epochs:
            self._keep(trainer, epoch)


def build_mlp(input_dim: int, num_classes: int, cfg: Any) -> nn.Module:
    """The pre-trained MLP of a :class:`~nclens.privacy.config.PretrainConfig`."""
    from nclens.models import MLP

    return MLP(input_dim, num_classes, depth=cfg.depth, width=cfg.width, batchnorm=cfg.batchnorm)


def pretrain(cfg: Any, public: Part, test: Part, run: RunFolder | None, *, resume: bool,
             progress: bool) -> dict[int, dict[str, Tensor]]:
    """Train the MLP of ``cfg`` (:class:`~nclens.privacy.config.PretrainConfig`) on ``public``; the kept weights.

    The model is seeded by ``cfg.seed`` (:func:`~nclens.core.env.seed_everything`) and trained by the
    one Trainer (history, checkpoint and ``weights/`` in ``run``; exact resume); a non-finite or
    exploding loss stops it with an error naming ``pretrain.optim.lr``.

    Returns:
        ``{epoch: state_dict}`` for every epoch of ``cfg.checkpoints``.
    """
    from nclens.core.env import seed_everything

    k = int(torch.unique(public.y).numel())
    if cfg.batchnorm and public.x.shape[0] % cfg.batch_size == 1:
        raise ValueError(f"pretrain.batch_size={cfg.batch_size} leaves a last batch of one sample of the "
                         f"{public.x.shape[0]} public samples, which BatchNorm cannot train on; choose another")
    seed_everything(cfg.seed)
    model = build_mlp(public.x.shape[1], k, cfg)
    trainer = Trainer(
        model, TensorData(public.x, public.y, cfg.batch_size), loss=cfg.loss, optim=cfg.optim, epochs=cfg.epochs,
        seed=cfg.seed, run=run, callbacks=[KeepWeights(cfg.checkpoints)], device="cpu",
        evaluate={"public": (public.x, public.y), "test": (test.x, test.y)}, progress=progress,
        name="pre-training (public split)", lr_key="pretrain.optim.lr",
    )
    trainer.fit(resume=resume and run is not None and run.has_checkpoint())
    if run is None:
        raise ValueError("pretrain needs a run folder to keep its weights")
    return {e: run.load_checkpoint(weights_name(e))["model"] for e in cfg.checkpoints}


@torch.no_grad()
def penultimate_features(model: nn.Module, x: Tensor, batch_size: int = 4096) -> Tensor:
    """The input of ``model``'s ``classifier`` layer for ``x`` (eval mode), float32 (n, D)."""
    from nclens.core.probe import Probe

    model.eval()
    out = []
    with Probe(model, ["classifier"], mode="input") as probe:
        for start in range(0, x.shape[0], batch_size):
            model(x[start : start + batch_size])
            out.append(probe.features["classifier"].to(torch.float32))
    return torch.cat(out)
