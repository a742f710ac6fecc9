"""Models that misbehave in the ways deployed models do, for the bad-input corpus.

Each wraps a real fitted Pipeline and breaks one promise. They are saved with cloudpickle *by value* (the class travels
inside the model file), so the CLI process loads them without this test package on its path, as it would a user's model.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class Faulty(ClassifierMixin, BaseEstimator):
    """A classifier whose ``fault`` is one of: raises, nan_proba, wrong_shape, unknown_class, not_probabilities,
    hangs (predict never returns), hangs_when_refitted (fit never returns: audits that retrain clones hang)."""

    def __init__(self, inner=None, fault: str = "raises") -> None:
        self.inner = inner
        self.fault = fault

    def fit(self, X, y):
        if self.fault == "hangs_when_refitted":
            time.sleep(3600)
        self.inner.fit(X, y)
        self.classes_ = self.inner.classes_
        return self

    def _labels(self, X):
        if self.fault == "raises":
            raise RuntimeError("the feature store behind this model is down")
        if self.fault == "hangs":
            time.sleep(3600)
        labels = np.asarray(self.inner.predict(X), dtype=object)
        if self.fault == "wrong_shape":
            return np.column_stack([labels, labels])
        if self.fault == "unknown_class":
            labels[len(labels) // 2] = "maybe"
        return labels

    def predict(self, X):
        return self._labels(X)

    def predict_proba(self, X):
        self._labels(X)
        proba = self.inner.predict_proba(X)
        if self.fault == "nan_proba":
            proba[::7] = np.nan
        if self.fault == "not_probabilities":
            proba = proba * 3
        return proba


def fitted(inner, fault: str) -> Faulty:
    model = Faulty(inner, fault)
    model.classes_ = inner.classes_
    return model
