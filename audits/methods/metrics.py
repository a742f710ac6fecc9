"""Performance metrics shared by audits: scikit-learn scores, ROC-AUC from score histograms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from audits.core.context import Dataset
from audits.core.partial import State


class ScoreSettings(Protocol):
    """How a side keeps its scores for ROC-AUC: exactly up to ``exact_auc_rows``, beyond that in ``auc_bins`` bins
    (the performance audit's configuration is one)."""

    exact_auc_rows: int
    auc_bins: int



def score_bins(scores: np.ndarray, bins: int) -> np.ndarray:
    """Each probability's bin among ``bins`` equal bins of [0, 1] (1 in the last)."""
    return np.clip((np.asarray(scores, dtype=float) * bins).astype(np.int64), 0, bins - 1)


def auc_from_bins(positive: np.ndarray, negative: np.ndarray, both: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """AUC of rows in ordered score bins, given each bin's (expected) positives and negatives, rows of a bin counted as
    ties; ``both``: each bin's sum of p (1 - p), the expected pairs of a row with itself, taken out (0 for counts).
    Returns (AUC, bound): bound = the share of pairs tied within a bin over two, the most the ties can move it (the
    Mann-Whitney convention; NaN without a positive or a negative). Vectorised over leading axes."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    own = np.zeros_like(positive) if both is None else np.asarray(both, float)
    below = np.cumsum(negative, axis=-1) - negative
    tied = positive * negative - own
    denominator = positive.sum(axis=-1) * negative.sum(axis=-1) - own.sum(axis=-1)
    numerator = (positive * below).sum(axis=-1) + 0.5 * tied.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)
        bound = np.where(denominator > 0, 0.5 * tied.sum(axis=-1) / np.where(denominator > 0, denominator, 1), np.nan)
    return auc, bound


def _histogram_auc(positives: np.ndarray, negatives: np.ndarray) -> tuple[float, float]:
    """``auc_from_bins`` of one pair of count histograms, as floats."""
    auc, bound = auc_from_bins(positives, negatives)
    return float(auc), float(bound)


def classification_metrics(ds: Dataset, classes: tuple) -> dict[str, float]:
    """The classification figures of one labelled dataset (every row; ROC-AUC exact)."""
    cfg = _Exact(exact_auc_rows=max(len(ds), 1))
    side = _update_classification(_empty_side("classification", len(classes)), ds, classes, cfg)
    figures = classification_figures(side, classes, ds.predictions.proba is not None)
    figures.pop("roc_auc_bound", None)
    return figures


def regression_metrics(ds: Dataset) -> dict[str, float]:
    return regression_figures(_update_regression(_empty_side("regression", 0), ds))


def _empty_side(task: str, n_classes: int) -> State:
    if task == "classification":
        return {"rows": 0, "confusion": np.zeros((n_classes, n_classes), dtype=np.int64), "unknown": {},
                "unknown_predicted": np.zeros(n_classes, dtype=np.int64),  # rows of unknown labels, by predicted class
                "log_loss_sum": 0.0, "scores": None, "histograms": None}
    return {"rows": 0, "abs_sum": 0.0, "sq_sum": 0.0, "y_mean": 0.0, "y_m2": 0.0}


def _class_index(y: pd.Series, classes: tuple) -> np.ndarray:
    """Each label's position among the model's classes; -1 for a label the model does not have."""
    index = pd.Index(list(classes)).get_indexer(pd.Series(y).to_numpy())
    return index.astype(np.int64)


def _histograms(index: np.ndarray, proba: np.ndarray, bins: int) -> np.ndarray:
    """(n_classes, 2, bins): per class, counts of that class's score among its positives and its negatives."""
    cells = score_bins(proba, bins)
    out = np.zeros((proba.shape[1], 2, bins), dtype=np.int64)
    for k in range(proba.shape[1]):
        positive = index == k
        out[k, 0] = np.bincount(cells[positive, k], minlength=bins)
        out[k, 1] = np.bincount(cells[~positive, k], minlength=bins)
    return out


def _update_classification(side: State, ds: Dataset, classes: tuple, cfg: ScoreSettings) -> State:
    index = _class_index(ds.y, classes)
    pred = _class_index(pd.Series(ds.predictions.labels), classes)  # predictions are checked to be model classes
    known = index >= 0
    confusion = side["confusion"] + np.bincount(index[known] * len(classes) + pred[known],
                                                minlength=len(classes) ** 2).reshape(len(classes), len(classes))
    unknown = dict(side["unknown"])
    for label, count in pd.Series(ds.y[~known].astype(str)).value_counts().items():  # labels the model never saw
        unknown[label] = unknown.get(label, 0) + int(count)
    unknown_predicted = side["unknown_predicted"] + np.bincount(pred[~known], minlength=len(classes))
    out = {**side, "rows": side["rows"] + len(ds), "confusion": confusion, "unknown": unknown, "unknown_predicted": unknown_predicted}
    proba = ds.predictions.proba
    if proba is not None:
        eps = np.finfo(proba.dtype).eps
        p_true = np.clip(proba[np.flatnonzero(known), index[known]], eps, 1 - eps)
        out["log_loss_sum"] = side["log_loss_sum"] - float(np.log(p_true).sum())
        scores = {"index": index, "proba": proba}
        out["scores"], out["histograms"] = side["scores"], side["histograms"]
        out = _merge_scores(out, {"scores": scores, "histograms": None}, cfg)
    return out


def _merge_scores(a: State, b: State, cfg: ScoreSettings) -> State:
    """Raw scores while both sides' rows fit exact_auc_rows, else histograms (raw scores binned on the way)."""
    out = dict(a)
    if a["scores"] is None and a["histograms"] is None:
        out["scores"], out["histograms"] = b["scores"], b["histograms"]
        if out["scores"] is not None and len(out["scores"]["index"]) > cfg.exact_auc_rows:
            out["histograms"], out["scores"] = _histograms(out["scores"]["index"], out["scores"]["proba"], cfg.auc_bins), None
        return out
    if b["scores"] is None and b["histograms"] is None:
        return out
    if a["scores"] is not None and b["scores"] is not None:
        index = np.concatenate([a["scores"]["index"], b["scores"]["index"]])
        proba = np.concatenate([a["scores"]["proba"], b["scores"]["proba"]])
        if len(index) <= cfg.exact_auc_rows:
            out["scores"], out["histograms"] = {"index": index, "proba": proba}, None
            return out
        out["scores"], out["histograms"] = None, _histograms(index, proba, cfg.auc_bins)
        return out
    total = np.zeros_like(a["histograms"] if a["histograms"] is not None else b["histograms"])
    for part in (a, b):
        if part["histograms"] is not None:
            total = total + part["histograms"]
        if part["scores"] is not None:
            total = total + _histograms(part["scores"]["index"], part["scores"]["proba"], cfg.auc_bins)
    out["scores"], out["histograms"] = None, total
    return out


def _update_regression(side: State, ds: Dataset) -> State:
    y, pred = ds.y.to_numpy(dtype=float), ds.predictions.labels.astype(float)
    err = y - pred
    return _merge_regression(side, {"rows": len(y), "abs_sum": float(np.abs(err).sum()), "sq_sum": float((err ** 2).sum()),
                                    "y_mean": float(y.mean()) if len(y) else 0.0,
                                    "y_m2": float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0})


def _merge_regression(a: State, b: State) -> State:
    """Sums, and the target's mean and sum of squared deviations merged as Chan et al. (stable at any row count)."""
    n = a["rows"] + b["rows"]
    if n == 0:
        return dict(a)
    delta = b["y_mean"] - a["y_mean"]
    return {"rows": n, "abs_sum": a["abs_sum"] + b["abs_sum"], "sq_sum": a["sq_sum"] + b["sq_sum"],
            "y_mean": a["y_mean"] + delta * b["rows"] / n,
            "y_m2": a["y_m2"] + b["y_m2"] + delta ** 2 * a["rows"] * b["rows"] / n}


def _merge_classification(a: State, b: State, cfg: ScoreSettings) -> State:
    unknown = dict(a["unknown"])
    for label, count in b["unknown"].items():
        unknown[label] = unknown.get(label, 0) + count
    out = {**a, "rows": a["rows"] + b["rows"], "confusion": a["confusion"] + b["confusion"], "unknown": unknown,
           "unknown_predicted": a["unknown_predicted"] + b["unknown_predicted"],
           "log_loss_sum": a["log_loss_sum"] + b["log_loss_sum"]}
    return _merge_scores(out, b, cfg)


def classification_figures(side: State, classes: tuple, has_proba: bool) -> dict[str, float]:
    """Accuracy, balanced accuracy, F1 (binary: of classes[1]; else macro), log loss and ROC-AUC, as scikit-learn
    defines them, from a reduced state. Labels the model never saw count as classes it always gets wrong."""
    confusion = side["confusion"].astype(float)
    unknown_rows = sum(side["unknown"].values())
    rows = confusion.sum() + unknown_rows
    true_rows = confusion.sum(axis=1)
    recalls = [confusion[i, i] / true_rows[i] for i in range(len(classes)) if true_rows[i] > 0] + [0.0] * len(side["unknown"])
    tp = np.diag(confusion)
    fp = confusion.sum(axis=0) - tp  # rows of unknown labels are counted below, by the class they were predicted as
    fn = true_rows - tp
    fp = fp + side["unknown_predicted"]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1_per_class = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    out = {
        "accuracy": float(tp.sum() / rows) if rows else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "f1": float(f1_per_class[1]) if len(classes) == 2 else float(f1_per_class.mean()),
    }
    if has_proba:
        present = int((true_rows > 0).sum()) + len(side["unknown"])
        out["log_loss"] = float(side["log_loss_sum"] / rows) if rows and not side["unknown"] else float("nan")
        out["roc_auc"], out["roc_auc_bound"] = _auc(side, classes, present)
    return out


def _auc(side: State, classes: tuple, present: int) -> tuple[float, float]:
    if present < 2:
        return float("nan"), float("nan")  # undefined with one class present; a threshold on it reports ERROR
    binary = len(classes) == 2
    if side["scores"] is not None:
        index, proba = side["scores"]["index"], side["scores"]["proba"]
        if binary:
            return float(skm.roc_auc_score(index == 1, proba[:, 1])), 0.0
        if (index < 0).any():
            return float("nan"), float("nan")
        return float(skm.roc_auc_score(index, proba, multi_class="ovr", average="macro", labels=list(range(len(classes))))), 0.0
    histograms = side["histograms"]
    if binary:
        return _histogram_auc(histograms[1, 0], histograms[1, 1])
    aucs = [_histogram_auc(histograms[k, 0], histograms[k, 1]) for k in range(len(classes))]
    return float(np.mean([a for a, _ in aucs])), float(np.mean([b for _, b in aucs]))


def regression_figures(side: State) -> dict[str, float]:
    n = side["rows"]
    sse, sst = side["sq_sum"], side["y_m2"]
    if sst == 0:  # scikit-learn's force_finite: a constant target
        r2 = 1.0 if sse == 0 else 0.0
    else:
        r2 = 1.0 - sse / sst
    return {"rmse": float(np.sqrt(sse / n)), "mae": float(side["abs_sum"] / n), "r2": float(r2)}


@dataclass(frozen=True)
class _Exact:
    exact_auc_rows: int
    auc_bins: int = 4096
