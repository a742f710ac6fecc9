"""Permutation importance with its model calls batched: scikit-learn's ``permutation_importance`` shuffle for shuffle,
every feature's and repeat's copy predicted in a few large calls and scored at once (one ranking for every ROC-AUC)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from audits.core.context import ModelUnderAudit


def batched_output(f: Callable[[pd.DataFrame], np.ndarray], columns: dict, positions: Callable[[np.ndarray], dict],
                   total: int, max_call_values: int) -> np.ndarray:
    """``f`` on ``total`` rows assembled from ``columns`` (name -> Series to take values from), in calls of at most
    ``max_call_values`` values (one row at least); ``positions(flat)`` says, for the output rows ``flat``, which
    position of its Series each column takes."""
    step = max(1, max_call_values // max(1, len(columns)))
    parts = []
    for start in range(0, total, step):
        flat = np.arange(start, min(start + step, total))
        taken = positions(flat)
        frame = pd.DataFrame({name: series.take(taken[name]).reset_index(drop=True) for name, series in columns.items()})
        parts.append(np.asarray(f(frame)))
    return np.concatenate(parts)


def output_scorer(model: ModelUnderAudit):
    """(score(y, outputs), output(X), name): ROC-AUC (binary), negative log loss (multiclass), R^2 (regression), from
    the model's probabilities (classifiers) or predictions (regressors). ``score`` takes a stack of outputs (copies,
    rows[, classes]) and gives one score per copy, as scikit-learn's metric would on each."""
    from sklearn import metrics as skm

    if model.task == "regression":
        return r2_each, model.predict, "r2"
    if len(model.classes) == 2:
        positive = model.classes[1]
        return (lambda y, proba: auc_each(np.asarray(y) == positive, proba[..., 1])), model.predict_proba, "roc_auc"
    labels = list(model.classes)
    return (lambda y, proba: np.array([-skm.log_loss(y, p, labels=labels) for p in proba])), model.predict_proba, "neg_log_loss"


def auc_each(positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """roc_auc_score of each row of ``scores`` (copies, rows), as the Mann-Whitney statistic (ties share their mean
    rank, as the ROC curve's trapezoids share them): one ranking of every copy instead of one metric call each."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    positives, negatives = int(positive.sum()), int((~positive).sum())
    if not positives or not negatives:  # undefined: scikit-learn says so its own way
        return np.array([roc_auc_score(positive, s) for s in scores], dtype=float)
    ranks = rankdata(scores, axis=1)
    return (ranks[:, positive].sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)


def r2_each(y, predicted: np.ndarray) -> np.ndarray:
    """r2_score of each row of ``predicted`` (copies, rows) against ``y``."""
    from sklearn.metrics import r2_score

    y = np.asarray(y, dtype=float)
    predicted = np.asarray(predicted, dtype=float).reshape(len(predicted), -1)
    spread = ((y - y.mean()) ** 2).sum()
    if spread == 0:  # constant truth: scikit-learn's convention
        return np.array([r2_score(y, p) for p in predicted], dtype=float)
    return 1 - ((y - predicted) ** 2).sum(axis=1) / spread


def permutation_batch(model: ModelUnderAudit, X: pd.DataFrame, y: pd.Series, n_repeats: int, random_state: int,
                      max_call_values: int = 5_000_000) -> np.ndarray:
    """Importances (features, n_repeats): scikit-learn's ``permutation_importance(..., n_repeats, random_state)``
    (baseline score minus the score with the column shuffled, the shuffles it draws), its model calls batched.

    scikit-learn draws one seed from ``random_state`` and, for every feature, shuffles an index array in place once
    per repeat and re-indexes the already shuffled column with it: repeat k's column is the original taken at the
    composition of the first k shuffles. The same compositions are taken here, for all features and repeats at once."""
    score, output, _ = output_scorer(model)
    seed = np.random.RandomState(random_state).randint(np.iinfo(np.int32).max + 1)
    shuffler, shuffled, order = np.random.RandomState(seed), np.arange(len(X)), np.arange(len(X))
    orders = []
    for _ in range(n_repeats):
        shuffler.shuffle(shuffled)
        order = order[shuffled]
        orders.append(order)
    orders = np.stack(orders)  # (repeats, rows)
    n, names = len(X), list(X.columns)

    def positions(flat: np.ndarray) -> dict:
        copy, row = np.divmod(flat, n)
        feature, repeat = np.divmod(copy, n_repeats)
        permuted = orders[repeat, row]
        return {c: np.where(feature == j, permuted, row) for j, c in enumerate(names)}

    frames = len(names) * n_repeats
    out = batched_output(output, {c: X[c] for c in names}, positions, frames * n, max_call_values)
    out = out.reshape(frames, n, *out.shape[1:])
    baseline = score(np.asarray(y), np.asarray(output(X))[None])[0]
    return baseline - score(np.asarray(y), out).reshape(len(names), n_repeats)
