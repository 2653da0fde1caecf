"""Config of the bounds-vs-SNR sweep (kind ``bounds-sweep``).

Example:
    >>> SweepConfig(snr_db_min=-6, snr_db_max=6, snr_db_step=3).grid().tolist()
    [-6.0, -3.0, 0.0, 3.0, 6.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["SweepConfig"]


@dataclass(frozen=True)
class SweepConfig:
    """Frequency bounds of a complex sinusoid in white noise vs SNR, beside the MLE's Monte Carlo MSE.

    y_n = a exp(i(ω n + φ)) + w_n, n = 0..N−1, w ~ CN(0, σ²), SNR = a²/σ², a = 1; ω essential, a and φ
    nuisance. ``trials`` MLE records per SNR point (0: bounds only); ``per_bin`` Barankin test points per
    DFT bin; ``factor``: the threshold is the lowest SNR from which on a quantity stays ≤ factor × CRB.
    """

    name: str = "bounds-sweep"
    samples: int = 32
    snr_db_min: float = -20.0
    snr_db_max: float = 10.0
    snr_db_step: float = 1.0
    trials: int = 2000
    omega: float = 1.0
    phase: float = 0.5
    per_bin: int = 4
    factor: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 2:
            raise ValueError(f"samples must be >= 2, got {self.samples}")
        if self.snr_db_max < self.snr_db_min:
            raise ValueError(f"snr_db_max ({self.snr_db_max}) must be >= snr_db_min ({self.snr_db_min})")
        if self.snr_db_step <= 0:
            raise ValueError(f"snr_db_step must be > 0, got {self.snr_db_step}")
        points = math.floor((self.snr_db_max - self.snr_db_min) / self.snr_db_step + 1e-9) + 1
        if points > 10_000:
            raise ValueError(f"the SNR grid has {points} points; at most 10000 (raise snr_db_step)")
        if self.trials < 0:
            raise ValueError(f"trials must be >= 0, got {self.trials}")
        if self.per_bin < 1:
            raise ValueError(f"per_bin must be >= 1, got {self.per_bin}")
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        from nclens.bounds.quadratic import sinusoid_barankin_offsets

        sinusoid_barankin_offsets(self.samples, self.per_bin)  # refuses a test-point set too large to hold

    def grid(self) -> np.ndarray:
        """The SNR grid (dB), ``snr_db_min`` to ``snr_db_max`` in steps of ``snr_db_step``."""
        return np.round(np.arange(self.snr_db_min, self.snr_db_max + 1e-9, self.snr_db_step), 6)
