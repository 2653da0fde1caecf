"""Neural collapse meets differential privacy (Wang, Zhu, Su & Wang, ICML 2024).

- :mod:`~nclens.privacy.shift` — feature shift: distance of (normalised) features to their
  aligned ideal simplex-ETF positions, from ClassStats (any layer) or from samples;
- :mod:`~nclens.privacy.accounting` — RDP accounting of full-batch NoisyGD (α/(2σ²) per step);
- :mod:`~nclens.privacy.simulate` — the layer-peeled simulator: ETF features in dimension p with
  shift/perturbation, NoisyGD on top, Monte Carlo beside the closed form;
- :mod:`~nclens.privacy.heads` — NoisyGD / DP-SGD linear heads on frozen features through Opacus
  (imported lazily: ``pip install nclens[privacy]``), and the normalisation / PCA remedies;
- :mod:`~nclens.privacy.experiment` — accuracy vs dimension, and private fine-tuning of real
  features from checkpoints with different collapse levels.

Example:
    >>> from nclens.privacy import SimulationConfig, simulate_noisy_gd
    >>> r = simulate_noisy_gd(SimulationConfig(num_classes=4, dim=10, samples=40, trials=200))
    >>> 0.0 <= r.error <= 1.0 and r.epsilon > 0
    True
"""

from nclens.privacy.accounting import DEFAULT_ORDERS, gaussian_rdp, noisy_gd_epsilon, rdp_to_epsilon
from nclens.privacy.heads import (
    FeaturePreprocessor,
    PrivateHeadConfig,
    PrivateHeadResult,
    PrivateLinearHead,
    l2_normalise,
    pca_basis,
    train_private_head,
)
from nclens.privacy.shift import (
    FeatureShift,
    etf_alignment,
    feature_shift,
    feature_shift_from_stats,
    ideal_etf,
    layer_feature_shift,
)
from nclens.privacy.simulate import (
    LayerPeeledModel,
    SimulationConfig,
    SimulationResult,
    closed_form_error,
    layer_peeled_model,
    noisy_gd_linear,
    one_step_threshold,
    simulate_noisy_gd,
)

__all__ = [
    "DEFAULT_ORDERS",
    "gaussian_rdp",
    "noisy_gd_epsilon",
    "rdp_to_epsilon",
    "FeaturePreprocessor",
    "PrivateHeadConfig",
    "PrivateHeadResult",
    "PrivateLinearHead",
    "l2_normalise",
    "pca_basis",
    "train_private_head",
    "FeatureShift",
    "etf_alignment",
    "feature_shift",
    "feature_shift_from_stats",
    "ideal_etf",
    "layer_feature_shift",
    "LayerPeeledModel",
    "SimulationConfig",
    "SimulationResult",
    "closed_form_error",
    "layer_peeled_model",
    "noisy_gd_linear",
    "one_step_threshold",
    "simulate_noisy_gd",
]
