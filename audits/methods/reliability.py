"""Calibration error from binned sums: ECE (equal width and equal mass), its null quantile, Brier score, recalibration."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from audits.core.context import Dataset
from audits.core.partial import State
from audits.methods.probabilities import ProbabilityPassthrough, Strategy, assign_bins, bin_edges, class_indices
from audits.methods.scores import confidence as top_confidence

CELL_FIELDS = ("rows", "confidence", "correct", "abs_gap")  # the columns of binned_sums


NULL_CELLS_PER_BIN = 64  # beyond exact_rows, the noise floor draws per run of grid cells, at most this many per bin


def calibration_from_sums(edges: np.ndarray, counts: np.ndarray, confidence_sums: np.ndarray, correct_sums: np.ndarray
                          ) -> tuple[float, float, pd.DataFrame]:
    """(ECE, MCE, per-bin table) from each bin's rows, sum of confidences and sum of outcomes.

    ECE = sum over bins of (rows in bin / rows) * |mean confidence - mean outcome|; MCE is the largest of those gaps
    over non-empty bins. The sums add up over any split of the rows, so this is also the every-row answer.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = confidence_sums / counts
        accuracy = correct_sums / counts
    gap = np.abs(mean_conf - accuracy)
    filled = counts > 0
    ece = float(np.dot(counts[filled] / counts.sum(), gap[filled]))
    mce = float(gap[filled].max())
    table = pd.DataFrame({
        "bin": np.arange(len(edges)),
        "lower": np.concatenate([[0.0], edges[:-1]]),
        "upper": edges,
        "count": counts,
        "mean_confidence": mean_conf,
        "accuracy": accuracy,
        "overconfidence": mean_conf - accuracy,  # > 0: the model claims more than it delivers
    })
    return ece, mce, table


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, bins: int = 15, strategy: Strategy = "uniform"
) -> tuple[float, float, pd.DataFrame]:
    """(ECE, MCE, per-bin table) of predicted probabilities ``confidence`` against 0/1 outcomes ``correct``.

    ECE = sum over bins of (rows in bin / rows) * |mean confidence - mean outcome|; MCE is the
    largest of those gaps over non-empty bins. Equals ``calibration.get_ece`` (uniform) and
    ``calibration.get_ece_em`` (quantile) of the uncertainty-calibration package on the same inputs.
    """
    confidence = np.asarray(confidence, dtype=float)
    correct = np.asarray(correct, dtype=float)
    if confidence.shape != correct.shape or confidence.ndim != 1 or len(confidence) == 0:
        raise ValueError("confidence and correct must be non-empty 1-d arrays of the same length")
    edges = bin_edges(confidence, bins, strategy)
    index = assign_bins(confidence, edges)
    return calibration_from_sums(edges, np.bincount(index, minlength=len(edges)),
                                 np.bincount(index, weights=confidence, minlength=len(edges)),
                                 np.bincount(index, weights=correct, minlength=len(edges)))


def consistency_ece(confidence: np.ndarray, bins: int, strategy: Strategy, rng: np.random.Generator,
                    resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """ECEs (resamples,) and per-bin accuracies (resamples, bins) if outcomes were drawn from the confidences.

    Consistency resampling (Broecker & Smith, 2007): what a perfectly calibrated model with exactly
    these confidences would show on this many rows, with the same bins.
    """
    confidence = np.asarray(confidence, dtype=float)
    edges = bin_edges(confidence, bins, strategy)
    index = assign_bins(confidence, edges)
    counts = np.bincount(index, minlength=len(edges))
    filled = np.flatnonzero(counts)
    order = np.argsort(index, kind="stable")
    starts = np.searchsorted(index[order], filled)
    conf_sum = np.bincount(index, weights=confidence, minlength=len(edges))[filled]
    eces, accuracy = np.empty(resamples), np.full((resamples, len(edges)), np.nan)
    for chunk in np.array_split(np.arange(resamples), min(resamples, max(1, resamples * len(confidence) // 2_000_000))):
        outcomes = (rng.random((len(chunk), len(confidence))) < confidence[order]).astype(np.int32)
        hits = np.add.reduceat(outcomes, starts, axis=1)
        eces[chunk] = np.abs(conf_sum - hits).sum(axis=1) / len(confidence)
        accuracy[np.ix_(chunk, filled)] = hits / counts[filled]
    return eces, accuracy


def brier_score(index: np.ndarray, proba: np.ndarray) -> float:
    """Binary: the usual Brier score of P(positive); multiclass: the mean squared error of the one-hot vector."""
    k = proba.shape[1]
    if k == 2:
        return float(skm.brier_score_loss(index == 1, proba[:, 1]))
    return float(skm.brier_score_loss(index, proba, labels=np.arange(k)))  # scale_by_half='auto': not halved


def probability_metrics(proba: np.ndarray, index: np.ndarray, bins: int) -> dict[str, float]:
    """ECE (both binnings), MCE, class-wise ECE, Brier and log loss of probabilities against class indices."""
    k = proba.shape[1]
    conf, correct = top_confidence(proba), (proba.argmax(axis=1) == index)
    ece, mce, _ = expected_calibration_error(conf, correct, bins, "uniform")
    ece_em, _, _ = expected_calibration_error(conf, correct, bins, "quantile")
    if k == 2:
        classwise = expected_calibration_error(proba[:, 1], index == 1, bins, "uniform")[0]
    else:
        classwise = float(np.mean([expected_calibration_error(proba[:, c], index == c, bins, "uniform")[0] for c in range(k)]))
    return {
        "ece": ece,
        "ece_equal_mass": ece_em,
        "mce": mce,
        "classwise_ece": classwise,
        "brier": brier_score(index, proba),
        "log_loss": float(skm.log_loss(index, proba, labels=np.arange(k))),
        "accuracy": float(correct.mean()),
        "mean_confidence": float(conf.mean()),
        "rows": float(len(index)),
    }


def grid_cells(histogram_bins: int, bins: int) -> int:
    """Cells of the fine confidence grid: ``histogram_bins`` rounded up to a multiple of ``bins``, so that every
    equal-width bin is a union of whole cells (upper edge ``k / bins`` is cell edge ``k m / (bins m)``: the same
    rational number, so the same correctly rounded float, and a value falls on the same side of it)."""
    return bins * -(-histogram_bins // bins)


def binned_sums(values: np.ndarray, outcome: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(len(edges), 4): per bin ``(lower, upper]``, its rows, sum of values, sum of outcomes, sum of |value - outcome|."""
    values, outcome = np.asarray(values, dtype=float), np.asarray(outcome, dtype=float)
    index, m = assign_bins(values, edges), len(edges)
    return np.stack([np.bincount(index, minlength=m).astype(float),
                     np.bincount(index, weights=values, minlength=m),
                     np.bincount(index, weights=outcome, minlength=m),
                     np.bincount(index, weights=np.abs(values - outcome), minlength=m)], axis=1)


def summarise(proba: np.ndarray, index: np.ndarray, bins: int, cells: int) -> State:
    """The additive summary of some labelled rows: top-label confidence cells, per-class equal-width bins, and the
    sums of the rows' Brier and log-loss terms (each as scikit-learn computes it for one row)."""
    n, k = proba.shape
    conf, correct = top_confidence(proba), proba.argmax(axis=1) == index
    one_hot = index[:, None] == np.arange(k)
    class_bins = assign_bins(np.asarray(proba, dtype=float), np.arange(1, bins + 1) / bins)  # (n, k)
    flat = (np.arange(k) * bins + class_bins).ravel()  # class c's bin b is cell c * bins + b
    classwise = np.stack([np.bincount(flat, minlength=k * bins).astype(float),
                          np.bincount(flat, weights=np.asarray(proba, dtype=float).ravel(), minlength=k * bins),
                          np.bincount(flat, weights=one_hot.ravel().astype(float), minlength=k * bins)], axis=1)
    if k == 2:  # (1[y = 1] - P(1))^2
        brier = float(np.sum((one_hot[:, 1] - np.asarray(proba[:, 1], dtype=float)) ** 2))
    else:  # sum over classes of (one-hot - P)^2
        brier = float(np.sum((one_hot - np.asarray(proba, dtype=float)) ** 2))
    eps = np.finfo(proba.dtype).eps if np.issubdtype(proba.dtype, np.floating) else np.finfo(float).eps
    p_true = np.clip(proba[np.arange(n), index], eps, 1 - eps).astype(float)
    grid = np.arange(1, cells + 1) / cells
    cell = assign_bins(conf, grid)
    extent = np.stack([np.full(cells, np.inf), np.full(cells, -np.inf)], axis=1)  # each cell's least and largest value
    np.minimum.at(extent[:, 0], cell, conf)
    np.maximum.at(extent[:, 1], cell, conf)
    return {"cells": binned_sums(conf, correct, grid), "extent": extent, "classwise": classwise.reshape(k, bins, 3),
            "brier_sum": brier, "log_loss_sum": float(-np.log(p_true).sum())}


def add_summaries(a: State, b: State) -> State:
    extent = np.stack([np.minimum(a["extent"][:, 0], b["extent"][:, 0]), np.maximum(a["extent"][:, 1], b["extent"][:, 1])], axis=1)
    return {"cells": a["cells"] + b["cells"], "extent": extent, "classwise": a["classwise"] + b["classwise"],
            "brier_sum": a["brier_sum"] + b["brier_sum"], "log_loss_sum": a["log_loss_sum"] + b["log_loss_sum"]}


def equal_mass_from_cells(cells: np.ndarray, bins: int, extent: np.ndarray | None = None
                          ) -> tuple[np.ndarray, np.ndarray, float]:
    """Equal-mass bins placed on the grid: (upper edges, the grid cells each bin ends at, the bound on the ECE error).

    The exact cuts split the sorted confidences after positions s = cumulative sizes of ``np.array_split`` into
    ``bins`` parts, halfway between the rows at s - 1 and s. If those rows lie in different cells a < b, the cells
    between are empty and cutting after cell a splits the rows exactly as the midpoint does. If both lie in one cell
    whose rows all have one value v (``extent``: each cell's least and largest value), the cut is v itself and the
    whole cell goes left, as bins are (lower, upper]: exact again (probabilities that take few values, as a tree
    model's do, are binned exactly). Otherwise the cut is somewhere inside the cell: the cell goes whole to the side
    holding most of its rows. Every row outside such straddled cells (D) is binned with the same rows as by the exact
    cuts, so the two ECEs differ by at most 2 / n * sum over D of |confidence - correct| (each bin's |sum of
    confidence - sum of correct| moves by at most the |confidence - correct| of the rows it gains or loses, and each
    such row is counted by two bins).
    """
    counts = np.rint(cells[:, 0]).astype(np.int64)
    n, size = int(counts.sum()), len(counts)
    parts = min(bins, n)
    sizes = np.full(parts, n // parts, dtype=np.int64)
    sizes[: n % parts] += 1  # np.array_split: the first n % parts parts have one more row
    splits = np.cumsum(sizes)[:-1]
    cumulative = np.cumsum(counts)
    left = np.searchsorted(cumulative, splits - 1, side="right")  # cell of the row at sorted position s - 1
    right = np.searchsorted(cumulative, splits, side="right")  # cell of the row at position s
    straddled = left == right
    if extent is not None:
        straddled &= extent[left, 0] != extent[left, 1]  # a cell of one value is split exactly: all of it goes left
    rows_before = splits - (cumulative[left] - counts[left])  # rows of the cell on the left of the cut
    rows_after = cumulative[left] - splits
    ends = np.where(straddled & (rows_after > rows_before), left - 1, left)
    ends = np.unique(np.concatenate([ends[ends >= 0], [size - 1]]))
    bound = 2.0 * float(cells[np.unique(left[straddled]), 3].sum()) / n if n else 0.0
    edges = (ends + 1) / size
    edges[-1] = 1.0
    return edges, ends, bound


def grouped(cells: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Rows of ``cells`` summed into the bins that end at cells ``ends`` (sorted, the last one the last cell)."""
    return np.add.reduceat(cells, np.concatenate([[0], ends[:-1] + 1]), axis=0)


def binned_consistency_ece(cells: np.ndarray, bins: int, rng: np.random.Generator, resamples: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """``consistency_ece`` with equal-width bins from the grid. Each bin's cells are pooled into at most
    ``NULL_CELLS_PER_BIN`` runs of neighbouring cells, and each run's correct count is drawn as Binomial(its rows, their
    mean confidence): the sum of its rows' Bernoulli draws when their confidences are equal, and otherwise of the same
    mean with a variance larger by their confidences' spread, at most rows / (4 (NULL_CELLS_PER_BIN bins)^2)."""
    size = len(cells)
    per_bin = size // bins
    runs = min(per_bin, NULL_CELLS_PER_BIN)
    cell = np.arange(size)
    run = (cell // per_bin) * runs + (cell % per_bin) * runs // per_bin  # runs nest in bins, in order
    counts = np.rint(np.bincount(run, weights=cells[:, 0], minlength=bins * runs)).astype(np.int64)
    conf = np.bincount(run, weights=cells[:, 1], minlength=bins * runs)
    filled = np.flatnonzero(counts)
    p = np.clip(conf[filled] / counts[filled], 0.0, 1.0)
    to_bin = np.zeros((len(filled), bins))
    to_bin[np.arange(len(filled)), filled // runs] = 1.0
    bin_rows, bin_conf = counts[filled] @ to_bin, conf[filled] @ to_bin
    n = counts.sum()
    eces, accuracy = np.empty(resamples), np.full((resamples, bins), np.nan)
    occupied = np.flatnonzero(bin_rows > 0)
    for chunk in np.array_split(np.arange(resamples), min(resamples, max(1, resamples * len(filled) // 2_000_000))):
        hits = rng.binomial(counts[filled], p, size=(len(chunk), len(filled))) @ to_bin
        eces[chunk] = np.abs(bin_conf - hits).sum(axis=1) / n
        accuracy[np.ix_(chunk, occupied)] = hits[:, occupied] / bin_rows[occupied]
    return eces, accuracy


def fit_recalibration(method: str, proba: np.ndarray, index: np.ndarray) -> Any:
    """A fitted ``CalibratedClassifierCV`` mapping probabilities to recalibrated probabilities."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    frozen = FrozenEstimator(ProbabilityPassthrough(proba.shape[1]))
    return CalibratedClassifierCV(frozen, method=method).fit(proba, index)


def fitted_temperature(calibrated: Any) -> float:
    """T in softmax(log p / T) from a temperature-scaling CalibratedClassifierCV (scikit-learn stores 1/T)."""
    return float(1.0 / calibrated.calibrated_classifiers_[0].calibrators[0].beta_)


def labelled_probabilities(ds: Dataset, classes: tuple) -> tuple[np.ndarray, np.ndarray, int]:
    """(probabilities, class indices) of the rows whose label is one of the model's classes; rows dropped."""
    index = class_indices(ds.y, classes)
    keep = index >= 0
    return ds.predictions.proba[keep], index[keep], int((~keep).sum())
