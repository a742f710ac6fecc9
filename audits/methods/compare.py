"""Comparing attributions: rank correlation and top-k overlap, per row and globally."""

from __future__ import annotations

import warnings

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (scipy); NaN when either side is constant."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def top_k(values: np.ndarray, k: int) -> set[int]:
    """Indices of the k largest |values| (ties broken by position, for determinism)."""
    order = np.argsort(-np.abs(np.asarray(values, dtype=float)), kind="stable")
    return set(order[:k].tolist())


def topk_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the k most important features (by absolute value) that both attributions agree on."""
    k = min(k, len(a))
    return len(top_k(a, k) & top_k(b, k)) / k


def rowwise(metric, A: np.ndarray, B: np.ndarray, **kwargs) -> np.ndarray:
    """``metric`` applied to matching rows of two (rows, features) attribution matrices."""
    return np.array([metric(a, b, **kwargs) for a, b in zip(A, B, strict=True)])
