"""Per-row uncertainty from a classifier's own probabilities."""

from __future__ import annotations

import numpy as np

EPS = 1e-12


def entropy(proba: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) of each row of a probability matrix."""
    proba = np.clip(np.asarray(proba, dtype=float), EPS, 1.0)
    return -(proba * np.log(proba)).sum(axis=-1)


def confidence(proba: np.ndarray) -> np.ndarray:
    """The top-label probability of each row."""
    return np.asarray(proba, dtype=float).max(axis=-1)
