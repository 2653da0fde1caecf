"""Neural collapse meets differential privacy (Wang, Zhu, Su & Wang, ICML 2024).

- :mod:`~nclens.privacy.shift` — feature shift: distance of (normalised) features to their
  aligned ideal simplex-ETF positions, from ClassStats (any layer) or from samples;
- :mod:`~nclens.privacy.accounting` — RDP accounting of full-batch NoisyGD (α/(2σ²) per step);
- :mod:`~nclens.privacy.simulate` — the layer-peeled simulator: ETF features in dimension p with
  shifts of fixed norm β or per-coordinate perturbations, class imbalance, the registry's CE / MSE
  losses, several steps, a fixed initial head W₀; NoisyGD on top, Monte Carlo beside the closed forms;
- :mod:`~nclens.privacy.heads` — NoisyGD / DP-SGD linear heads on frozen features through Opacus
  (or the fused closed-form per-sample gradients), and the normalisation / PCA remedies;
- :mod:`~nclens.privacy.data`, :mod:`~nclens.privacy.finetune` — real features (pre-training
  checkpoints through the one Trainer, feature files) and private fine-tuning of a head on them;
- :mod:`~nclens.privacy.experiment` — the kinds ``dp-dimension``, ``dp-threshold``, ``dp-features``
  (configs in ``nclens/privacy/configs``: ``nclens configs``, ``nclens run dp_threshold``).

Example:
    >>> from nclens.privacy import SimulationConfig, simulate_noisy_gd
    >>> r = simulate_noisy_gd(SimulationConfig(num_classes=4, dim=10, samples=40, trials=200))
    >>> 0.0 <= r.error <= 1.0 and r.epsilon > 0
    True
"""

from nclens.privacy.accounting import (
    DEFAULT_ORDERS,
    gaussian_rdp,
    noisy_gd_epsilon,
    noisy_gd_noise_multiplier,
    rdp_to_epsilon,
)
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
    SIM_LOSSES,
    LayerPeeledModel,
    SimulationConfig,
    SimulationResult,
    class_counts,
    closed_form_error,
    error_from_thresholds,
    layer_peeled_model,
    loss_residual,
    noisy_gd_linear,
    one_step_error,
    one_step_threshold,
    one_step_thresholds,
    simulate_noisy_gd,
)

__all__ = [
    "DEFAULT_ORDERS",
    "gaussian_rdp",
    "noisy_gd_epsilon",
    "noisy_gd_noise_multiplier",
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
    "SIM_LOSSES",
    "LayerPeeledModel",
    "SimulationConfig",
    "SimulationResult",
    "class_counts",
    "closed_form_error",
    "error_from_thresholds",
    "layer_peeled_model",
    "loss_residual",
    "noisy_gd_linear",
    "one_step_error",
    "one_step_threshold",
    "one_step_thresholds",
    "simulate_noisy_gd",
]
