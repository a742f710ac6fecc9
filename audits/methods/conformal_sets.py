"""Split conformal prediction (MAPIE): sets, intervals, and whether they cover the labels."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin

from audits.core import AuditContext
from audits.methods.probabilities import ProbabilityPassthrough, class_indices


class PredictionPassthrough(RegressorMixin, BaseEstimator):
    """A 'regressor' whose input is a column of predictions and which returns it. Always fitted."""

    def __init__(self) -> None:
        self.n_features_in_ = 1

    def fit(self, X: Any = None, y: Any = None) -> PredictionPassthrough:
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(X, dtype=float)[:, 0]


def conformalized_classifier(proba_cal: np.ndarray, index_cal: np.ndarray, level: float, score: str = "lac",
                              random_state: int | None = None) -> Any:
    """MAPIE's SplitConformalClassifier, conformalized on probabilities ``proba_cal`` and class indices ``index_cal``;
    its ``predict_set`` takes probability rows."""
    from mapie.classification import SplitConformalClassifier

    mapie = SplitConformalClassifier(ProbabilityPassthrough(proba_cal.shape[1]), confidence_level=level,
                                     conformity_score=score, prefit=True, random_state=random_state)
    return mapie.conformalize(proba_cal, index_cal)


def conformalized_regressor(pred_cal: np.ndarray, y_cal: np.ndarray, level: float, score: str = "absolute") -> Any:
    """MAPIE's SplitConformalRegressor, conformalized on predictions ``pred_cal`` against ``y_cal``; its
    ``predict_interval`` takes a column of predictions."""
    from mapie.regression import SplitConformalRegressor

    mapie = SplitConformalRegressor(PredictionPassthrough(), confidence_level=level, conformity_score=score, prefit=True)
    return mapie.conformalize(pred_cal[:, None], y_cal)


def conformal_sets(proba_cal: np.ndarray, index_cal: np.ndarray, proba_eval: np.ndarray, level: float,
                   score: str = "lac", random_state: int | None = None) -> np.ndarray:
    """Boolean prediction sets (rows, classes) from MAPIE, conformalized on class indices ``index_cal``."""
    return predicted_sets(conformalized_classifier(proba_cal, index_cal, level, score, random_state), proba_eval)


def conformal_intervals(pred_cal: np.ndarray, y_cal: np.ndarray, pred_eval: np.ndarray, level: float,
                        score: str = "absolute") -> np.ndarray:
    """Intervals (rows, 2) from MAPIE, conformalized on predictions ``pred_cal`` against ``y_cal``."""
    return predicted_intervals(conformalized_regressor(pred_cal, y_cal, level, score), pred_eval)


def predicted_sets(mapie: Any, proba: np.ndarray) -> np.ndarray:
    """Boolean sets (rows, classes) of a conformalized classifier. Each row's set depends on that row alone (the
    threshold was fixed by conformalize; the last label is always included, never drawn at random)."""
    return mapie.predict_set(proba)[1][:, :, 0]


def predicted_intervals(mapie: Any, pred: np.ndarray) -> np.ndarray:
    """Intervals (rows, 2) of a conformalized regressor, row by row."""
    return mapie.predict_interval(pred[:, None])[1][:, :, 0]


def coverage_se(level: float, n_eval: int, n_cal: int) -> float:
    """Standard error of empirical split-conformal coverage: binomial on the evaluation rows plus the
    Beta-distributed coverage given the calibration set (variance ~ a(1-a)/(n_cal+2))."""
    return float(np.sqrt(level * (1 - level) * (1 / n_eval + 1 / (n_cal + 2))))


def usable_labels(context: AuditContext, ds: Any) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the rows with a usable label, and the label (a class index for classifiers)."""
    if context.task == "classification":
        target = class_indices(ds.y, context.model.classes)
        rows = np.flatnonzero(target >= 0)  # a label the model has no class for cannot be in any set: dropped
        return rows, target[rows]
    y = ds.y.to_numpy(dtype=float)
    rows = np.flatnonzero(np.isfinite(y))
    return rows, y[rows]


def coverage_indicator(context: AuditContext, level: float, rng: np.random.Generator, fraction: float = 0.5) -> pd.Series:
    """Per current row: 1.0 when its conformal set or interval covers its label, NaN for the rows used to
    conformalize (a seeded ``fraction`` of the labelled current rows) and unlabelled ones."""
    current = context.current
    rows, target = usable_labels(context, current)
    order = rng.permutation(len(rows))
    n_cal = int(fraction * len(rows))
    cal, evaluated = np.sort(order[:n_cal]), np.sort(order[n_cal:])
    if context.task == "classification":
        proba = current.predictions.proba
        sets = conformal_sets(proba[rows[cal]], target[cal], proba[rows[evaluated]], level,
                              random_state=int(rng.integers(2**31 - 1)))
        covered = sets[np.arange(len(evaluated)), target[evaluated]]
    else:
        predicted = current.predictions.labels.astype(float)
        intervals = conformal_intervals(predicted[rows[cal]], target[cal], predicted[rows[evaluated]], level)
        covered = (intervals[:, 0] <= target[evaluated]) & (target[evaluated] <= intervals[:, 1])
    indicator = np.full(len(current), np.nan)
    indicator[rows[evaluated]] = covered.astype(float)
    return pd.Series(indicator, index=current.X.index)
