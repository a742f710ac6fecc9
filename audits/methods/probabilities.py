"""Predicted probabilities: confidence bins, class positions, a pass-through classifier for calibrators."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin


def bin_edges(confidence: np.ndarray, bins: int, strategy: Strategy = "uniform") -> np.ndarray:
    """Upper edges of the bins, the last one 1.0; a value v falls in the first bin whose edge >= v."""
    if strategy == "uniform":
        return np.arange(1, bins + 1) / bins
    ordered = np.sort(np.asarray(confidence, dtype=float))
    parts = np.array_split(ordered, min(bins, len(ordered)))
    cuts = [(left[-1] + right[0]) / 2.0 for left, right in zip(parts[:-1], parts[1:], strict=True)]
    return np.array(sorted(set(cuts + [1.0])))


def assign_bins(confidence: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each value: bins are (lower, upper], values beyond 1 (rounding) go to the last."""
    return np.minimum(np.searchsorted(edges, confidence, side="left"), len(edges) - 1)


def class_indices(y: pd.Series, classes: tuple) -> np.ndarray:
    """Position of each label in the model's classes; -1 for a missing label or a class the model never saw."""
    return pd.Index(list(classes)).get_indexer(pd.Series(y).to_numpy())


class ProbabilityPassthrough(ClassifierMixin, BaseEstimator):
    """A 'classifier' whose input is a probability matrix and whose predict_proba returns it.

    Lets scikit-learn's and MAPIE's calibrators work on the probabilities the context computed once,
    for any model flavour (native or pyfunc), without calling the model again. Classes are 0..k-1:
    callers pass class indices as labels. Always fitted.
    """

    def __init__(self, n_classes: int = 2) -> None:
        self.n_classes = n_classes
        self.classes_ = np.arange(n_classes)

    def fit(self, X: Any = None, y: Any = None) -> ProbabilityPassthrough:
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        return np.asarray(X, dtype=float)

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[np.asarray(X, dtype=float).argmax(axis=1)]


Strategy = Literal["uniform", "quantile"]  # equal width, equal mass (scikit-learn's names)
