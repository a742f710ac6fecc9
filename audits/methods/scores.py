"""Per-row uncertainty from a classifier's own probabilities."""

from __future__ import annotations

import numpy as np


def entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of a probability matrix (0 log 0 = 0: scipy.special.entr, which keeps
    entropy concave, so total = aleatoric + epistemic holds exactly in the ensemble decomposition)."""
    from scipy.special import entr

    return entr(np.clip(np.asarray(proba, dtype=float), 0.0, 1.0)).sum(axis=-1)


def confidence(proba: np.ndarray) -> np.ndarray:
    """The top-label probability of each row."""
    return np.asarray(proba, dtype=float).max(axis=-1)
