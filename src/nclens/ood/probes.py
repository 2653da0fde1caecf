"""Linear probes on frozen features: scikit-learn logistic regression, and the paper's AdamW probe.

Both probes share one interface — ``fit(features, labels)``, ``logits``, ``predict``, ``score``, and the
learned map in the *raw* feature coordinates, ``weight_`` (K, D) and ``bias_`` (K,), float64, so that it
can serve as the layer's classifier for NC2_W–NC4 and the logit-based OOD scores:

* :class:`LinearProbe` — multinomial logistic regression (L-BFGS, L2 penalty 1/C) on standardised
  features (nclens's default before issue 18; deterministic);
* :class:`AdamWProbe` — the probe of the official code of Harun, Gallardo & Kanan (ICML 2025):
  ``nn.Linear`` initialised N(0, 0.01²) with a zero bias, AdamW (lr 1e-3, weight decay 0), 30 epochs
  of shuffled mini-batches of 256, cross-entropy with label smoothing 0.1 (``yousuf907/NC-OOD``,
  ``nc_eval/linear_probe_nc.py`` ``LinearClassifier`` and ``_probe``; hyper-parameters of
  ``nc_eval/nc_eval_resnet_nc.sh``: ``--lr 0.001 --weight_decay 0 --epochs 30 --batch_size 256``).
  Seeded by its own generator (initialisation and batch order), so a probe is a pure function of
  its inputs and seed. It records the test accuracy after every epoch when given ``eval_set``: the
  official transfer numbers are the *best* of those (``best_accuracy_``; ``ood_gen/linear_probe.py``).

:func:`make_probe` builds either from a name.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(90, 3, generator=g) + 4 * torch.eye(3)[torch.arange(90) % 3]
    >>> y = torch.arange(90) % 3
    >>> LinearProbe().fit(x, y).score(x, y), AdamWProbe(epochs=60, lr=0.05).fit(x, y).score(x, y)
    (1.0, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from nclens.core.stats import validate_features, validate_labels

__all__ = ["LinearProbe", "AdamWProbe", "make_probe", "PROBES"]

#: probe names accepted by :func:`make_probe`
PROBES = ("logistic", "adamw")


@dataclass(frozen=True)
class _ProbeData:
    x: np.ndarray
    y: np.ndarray | None


def _data(features: Any, labels: Any | None = None) -> _ProbeData:
    x = validate_features(features if isinstance(features, Tensor) else torch.as_tensor(features))
    y = None if labels is None else validate_labels(labels, x.shape[0]).cpu().numpy()
    return _ProbeData(x.detach().cpu().to(torch.float64).numpy(), y)


class _Probe:
    """Shared prediction code: logits h Wᵀ + b in raw coordinates."""

    classes_: np.ndarray
    weight_: Tensor
    bias_: Tensor

    def _check(self) -> None:
        if not hasattr(self, "weight_"):
            raise RuntimeError("the probe is not fitted: call fit(features, labels) first")

    def logits(self, features: Any) -> Tensor:
        """(N, K) float64 logits h Wᵀ + b."""
        self._check()
        x = torch.from_numpy(_data(features).x)
        if x.shape[1] != self.weight_.shape[1]:
            raise ValueError(f"features have dimension {x.shape[1]}, the probe was fitted on D={self.weight_.shape[1]}")
        return x @ self.weight_.T + self.bias_

    def predict(self, features: Any) -> np.ndarray:
        """(N,) predicted labels."""
        return self.classes_[self.logits(features).argmax(dim=1).numpy()]

    def score(self, features: Any, labels: Any) -> float:
        """Accuracy on (features, labels)."""
        data = _data(features, labels)
        return float((self.predict(features) == data.y).mean())


class LinearProbe(_Probe):
    """Multinomial logistic regression on frozen features (scikit-learn), standardised first.

    The learned map is returned in the *raw* feature coordinates: logits = h Wᵀ + b with
    W = coef / scale and b = intercept − W·mean.

    Args:
        C: inverse L2 regularisation strength of ``LogisticRegression``.
        max_iter: L-BFGS iterations.
        standardize: standardise features with the training mean/std before fitting.
        seed: ``random_state`` (L-BFGS is deterministic; kept for solvers that are not).

    Attributes:
        classes_: (K,) labels.  weight_: (K, D) float64 tensor.  bias_: (K,) float64 tensor.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(60, 3, generator=g) + 4 * torch.eye(3)[torch.arange(60) % 3]
        >>> probe = LinearProbe().fit(x, torch.arange(60) % 3)
        >>> probe.score(x, torch.arange(60) % 3)
        1.0
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000, standardize: bool = True, seed: int = 0) -> None:
        if not C > 0:
            raise ValueError(f"C must be > 0, got {C!r}")
        if not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize
        self.seed = seed

    def fit(self, features: Any, labels: Any) -> LinearProbe:
        """Fit on (N, D) features and (N,) integer labels (at least 2 classes)."""
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        data = _data(features, labels)
        if np.unique(data.y).size < 2:
            raise ValueError(f"a linear probe needs at least 2 classes, got labels {np.unique(data.y).tolist()}")
        mean = data.x.mean(0) if self.standardize else np.zeros(data.x.shape[1])
        std = data.x.std(0) if self.standardize else np.ones(data.x.shape[1])
        std = np.where(std > 1e-12, std, 1.0)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit((data.x - mean) / std, data.y)
        coef = model.coef_ / std  # (K, D) in raw coordinates
        intercept = model.intercept_ - coef @ mean
        if coef.shape[0] == 1:  # binary: sklearn keeps one row; expand to two logits [0, f]
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        self.classes_ = model.classes_
        self.weight_ = torch.from_numpy(coef.astype(np.float64))
        self.bias_ = torch.from_numpy(np.asarray(intercept, dtype=np.float64))
        return self


class AdamWProbe(_Probe):
    """The official linear probe of Harun et al. (ICML 2025): AdamW + label-smoothed cross-entropy.

    z = W h + b (``nn.Linear``, W ~ N(0, ``init_std``²), b = 0), trained for ``epochs`` epochs of
    shuffled mini-batches of ``batch_size`` with AdamW(lr, weight_decay) on
    CE(z, y; label smoothing ``label_smoothing``), in float32 on the CPU (the features are small),
    from a ``torch.Generator`` seeded with ``seed`` (initialisation, then one permutation per epoch).

    Args:
        lr, weight_decay, epochs, batch_size, label_smoothing: the official 1e-3, 0, 30, 256, 0.1.
        init_std: std of the weight initialisation (0.01 officially).
        seed: the probe's own seed.

    Attributes:
        classes_, weight_ (K, D) float64, bias_ (K,) float64; with ``eval_set``: ``accuracy_per_epoch_``
        and ``best_accuracy_`` (the official transfer number: the best epoch's test accuracy).

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> x = torch.randn(200, 4, generator=g) + 3 * torch.eye(4)[torch.arange(200) % 4]
        >>> p = AdamWProbe(epochs=5).fit(x, torch.arange(200) % 4, eval_set=(x, torch.arange(200) % 4))
        >>> len(p.accuracy_per_epoch_), p.best_accuracy_ >= p.accuracy_per_epoch_[-1]
        (5, True)
    """

    def __init__(self, lr: float = 1e-3, epochs: int = 30, batch_size: int = 256, weight_decay: float = 0.0,
                 label_smoothing: float = 0.1, init_std: float = 0.01, seed: int = 0) -> None:
        for name, value in (("lr", lr), ("init_std", init_std)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing!r}")
        self.lr, self.epochs, self.batch_size = float(lr), epochs, batch_size
        self.weight_decay, self.label_smoothing, self.init_std = float(weight_decay), float(label_smoothing), init_std
        self.seed = int(seed)

    def fit(self, features: Any, labels: Any, eval_set: tuple[Any, Any] | None = None) -> AdamWProbe:
        """Fit on (N, D) features and (N,) labels; ``eval_set=(x, y)`` records the accuracy after every epoch."""
        data = _data(features, labels)
        classes = np.unique(data.y)
        if classes.size < 2:
            raise ValueError(f"a linear probe needs at least 2 classes, got labels {classes.tolist()}")
        x = torch.from_numpy(data.x).float()  # (N, D)
        y = torch.from_numpy(np.searchsorted(classes, data.y)).long()  # (N,) class indices
        n, d = x.shape
        k = classes.size
        gen = torch.Generator().manual_seed(self.seed)
        weight = (torch.randn(k, d, generator=gen) * self.init_std).requires_grad_(True)
        bias = torch.zeros(k, requires_grad=True)
        opt = torch.optim.AdamW([weight, bias], lr=self.lr, weight_decay=self.weight_decay)
        if eval_set is not None:
            ev = _data(*eval_set)
            ev_x = torch.from_numpy(ev.x).float()
            ev_y = ev.y
        accs: list[float] = []
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=gen)
            for start in range(0, n, self.batch_size):
                idx = order[start:start + self.batch_size]
                loss = F.cross_entropy(F.linear(x[idx], weight, bias), y[idx], label_smoothing=self.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if eval_set is not None:
                with torch.no_grad():
                    pred = classes[F.linear(ev_x, weight, bias).argmax(1).numpy()]
                accs.append(float((pred == ev_y).mean()))
        self.classes_ = classes
        self.weight_ = weight.detach().to(torch.float64)
        self.bias_ = bias.detach().to(torch.float64)
        if eval_set is not None:
            self.accuracy_per_epoch_ = accs
            self.best_accuracy_ = max(accs)
        return self


def make_probe(name: str, *, seed: int = 0, C: float = 1.0, max_iter: int = 1000, lr: float = 1e-3,
               epochs: int = 30, batch_size: int = 256, weight_decay: float = 0.0,
               label_smoothing: float = 0.1) -> LinearProbe | AdamWProbe:
    """A probe by name: ``"logistic"`` (:class:`LinearProbe`) or ``"adamw"`` (:class:`AdamWProbe`).

    Example:
        >>> type(make_probe("adamw")).__name__
        'AdamWProbe'
    """
    if name == "logistic":
        return LinearProbe(C=C, max_iter=max_iter, seed=seed)
    if name == "adamw":
        return AdamWProbe(lr=lr, epochs=epochs, batch_size=batch_size, weight_decay=weight_decay,
                          label_smoothing=label_smoothing, seed=seed)
    raise ValueError(f"unknown probe {name!r}; valid: {list(PROBES)}")
