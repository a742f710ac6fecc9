"""Performance estimated without labels, from what the model says about its own rows.

**Classifiers: confidence-based performance estimation (CBPE).** With probabilities that are calibrated, row i's true
class is a draw from its probability vector p_i, so the expected confusion matrix of m rows is
C[a, b] = sum_i p_i[a] [prediction_i = b] (true a, predicted b), and accuracy, precision, recall and F1 follow from C
as scikit-learn computes them from a confusion matrix (binary: positive class = index 1; multiclass: macro averages of
the per-class figures). ROC-AUC is the ratio of two expectations over pairs of rows ranked by the model's own score
s: sum_{i != j} p_i (1 - p_j) ([s_i > s_j] + [s_i = s_j] / 2) / sum_{i != j} p_i (1 - p_j) (multiclass: each class
against the rest, macro), with the scores in ``AUC_BINS`` bins of [0, 1] (rows of one bin count as ties: the
result is within ``roc_auc_bound`` of the pairwise figure, reported). The probabilities are the model's, recalibrated
on labelled rows it did not train on (scikit-learn's ``CalibratedClassifierCV`` on the probabilities; isotonic by
default, NannyML's choice).

Every figure comes from sums that add over partitions (``classification_sums``, ``add_sums``): the expected confusion
matrix, per predicted class the sum of p_i p_i^T (the covariance of the realised confusion column is
diag(sum p_i) - sum p_i p_i^T: each row's class is one multinomial draw), and per class the binned sums of p, 1 - p and
p (1 - p). The band is the central ``level`` of the realised figure over ``rounds`` simulated batches, each adding two
kinds of error: what a finite batch leaves to chance (a confusion matrix drawn from the normal law with the moments
above; the positives of each score bin drawn likewise), and what a finite calibration set leaves unknown (the figure
under a calibrator refitted on a bootstrap of the held-out rows, less the figure under the calibrator used, measured on
``shift_rows``: the rows the context holds). It covers the truth only under the method's two assumptions, which the
audit checks separately: the current rows lie where the calibrator learned (no shift into unseen regions), and
P(y | x) is what it was on the held-out rows. A change of P(y | x) (concept drift) leaves every probability, and so
the estimate and its checks, unchanged: only labels reveal it.

**Regressors: direct loss estimation (DLE)**, as NannyML names it: a model of each row's loss (|y - prediction| for
MAE, (y - prediction)^2 for RMSE) from the features and the prediction, ``HistGradientBoostingRegressor``s fitted on
bootstraps of the held-out rows; the estimate is their mean predicted loss over the current rows (RMSE: the root of
the mean squared loss). Its band: the sampling error of a mean of m losses around their predictions (their spread
measured out of bag on the held-out rows) and the spread of the estimate over the bootstrap models, added in
quadrature, with Student's t for the few refits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from audits.methods.metrics import auc_from_bins, score_bins
from audits.methods.reliability import fit_recalibration

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
REGRESSION_METRICS = ("mae", "rmse")
AUC_BINS = 4096
MIN_CLASS_ROWS = 5  # held-out rows of each class a calibrator needs (scikit-learn's CalibratedClassifierCV: 5 folds)
State = dict[str, Any]


# ---------------------------------------------------------------------------------------------- classifiers


def confusion_metrics(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy, precision, recall and F1 from a (possibly expected, fractional) confusion matrix, true classes on
    rows, predicted on columns, as scikit-learn computes them: binary for the class of index 1, else macro; a class
    never predicted (or never true) has precision (recall) 0, scikit-learn's ``zero_division`` default."""
    confusion = np.asarray(confusion, dtype=float)
    total = confusion.sum()
    diagonal = np.diag(confusion)
    predicted, true = confusion.sum(axis=0), confusion.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, diagonal / np.where(predicted > 0, predicted, 1), 0.0)
        recall = np.where(true > 0, diagonal / np.where(true > 0, true, 1), 0.0)
        f1 = np.where(predicted + true > 0, 2 * diagonal / np.where(predicted + true > 0, predicted + true, 1), 0.0)
    pick = (lambda v: float(v[1])) if len(diagonal) == 2 else (lambda v: float(v.mean()))
    return {"accuracy": float(diagonal.sum() / total) if total else float("nan"),
            "precision": pick(precision), "recall": pick(recall), "f1": pick(f1)}


def auc_columns(k: int) -> list[int]:
    """The classes whose one-against-the-rest AUC is averaged: the positive class (binary), else every class."""
    return [1] if k == 2 else list(range(k))


@dataclass(frozen=True)
class Calibrators:
    """The calibrator the estimate uses, and ``boots`` refitted on bootstraps of the same held-out rows."""

    main: Any
    boots: tuple[Any, ...]
    method: str
    rows: int

    def apply(self, proba: np.ndarray, which: int | None = None) -> np.ndarray:
        calibrator = self.main if which is None else self.boots[which]
        return calibrator.predict_proba(np.asarray(proba, dtype=float))


def fit_calibrators(proba: np.ndarray, index: np.ndarray, method: str = "isotonic", resamples: int = 50,
                    rng: np.random.Generator | None = None) -> Calibrators:
    """The calibrator on every held-out row, and ``resamples`` on bootstraps of them, class by class. Every class of
    ``proba``'s columns needs rows among them (``MIN_CLASS_ROWS``): a calibrator maps each class's probability."""
    proba, index = np.asarray(proba, float), np.asarray(index, int)
    present = np.arange(proba.shape[1])
    counts = np.bincount(index, minlength=proba.shape[1])
    if (counts < MIN_CLASS_ROWS).any():
        raise ValueError(f"the held-out rows hold {counts.min()} row(s) of a class; calibrating needs at least "
                         f"{MIN_CLASS_ROWS} of each")
    rng = rng if rng is not None else np.random.default_rng(0)
    main = fit_recalibration(method, proba, index)
    members = [np.flatnonzero(index == c) for c in present]
    boots = []
    for _ in range(resamples):  # stratified: each class keeps its count, so every calibrator sees every class
        rows = np.concatenate([rng.choice(rows_of, size=len(rows_of), replace=True) for rows_of in members])
        boots.append(fit_recalibration(method, proba[rows], index[rows]))
    return Calibrators(main, tuple(boots), method, len(index))


def empty_classification_sums(k: int, bins: int = AUC_BINS) -> State:
    return {"rows": 0, "confusion": np.zeros((k, k)), "moments": np.zeros((k, k, k)),
            "auc": np.zeros((len(auc_columns(k)), bins, 3))}


def classification_sums(calibrated: np.ndarray, raw: np.ndarray, predicted: np.ndarray, bins: int = AUC_BINS) -> State:
    """The sums of one partition's rows (module doc): ``calibrated`` and ``raw`` (m, k) probabilities, ``predicted``
    (m,) class indices."""
    calibrated, raw, predicted = np.asarray(calibrated, float), np.asarray(raw, float), np.asarray(predicted, int)
    m, k = calibrated.shape
    onehot = np.zeros((m, k))
    onehot[np.arange(m), predicted] = 1.0
    moments = np.einsum("ib,ia,ic->bac", onehot, calibrated, calibrated)
    auc = np.zeros((len(auc_columns(k)), bins, 3))
    for j, c in enumerate(auc_columns(k)):
        where = score_bins(raw[:, c], bins)
        p = calibrated[:, c]
        for field, values in enumerate((p, 1 - p, p * (1 - p))):
            auc[j, :, field] = np.bincount(where, weights=values, minlength=bins)
    return {"rows": m, "confusion": calibrated.T @ onehot, "moments": moments, "auc": auc}


def add_sums(a: State, b: State) -> State:
    return {key: a[key] + b[key] for key in a}


def point_estimates(sums: State) -> dict[str, float]:
    """The estimated figures from a side's sums, and ``roc_auc_bound`` (module doc)."""
    out = confusion_metrics(sums["confusion"])
    aucs, bounds = auc_from_bins(sums["auc"][:, :, 0], sums["auc"][:, :, 1], sums["auc"][:, :, 2])
    out["roc_auc"] = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    out["roc_auc_bound"] = float(np.nanmax(bounds)) if np.isfinite(bounds).any() else float("nan")
    return out


def calibrator_shifts(calibrators: Calibrators, raw: np.ndarray, predicted: np.ndarray, bins: int = AUC_BINS,
                      groups: Sequence[tuple[np.ndarray, int]] = ()) -> tuple[np.ndarray, list[np.ndarray]]:
    """(resamples, metrics): each figure under each bootstrap calibrator less its figure under the main one, on these
    rows (CLASSIFICATION_METRICS order); and for each of ``groups`` (each row's group code, and how many groups), the
    spread over the bootstrap calibrators of each group's estimated accuracy on these rows (0 for an empty group)."""
    main = point_estimates(classification_sums(calibrators.apply(raw), raw, predicted, bins))
    resamples, rows = len(calibrators.boots), np.arange(len(predicted))
    shifts = np.zeros((resamples, len(CLASSIFICATION_METRICS)))
    means = [np.zeros((resamples, n)) for _, n in groups]
    sizes = [np.maximum(np.bincount(codes, minlength=n), 1) for codes, n in groups]
    for b in range(resamples):
        calibrated = calibrators.apply(raw, b)  # once per calibrator: the whole's shift and every group's figure
        boot = point_estimates(classification_sums(calibrated, raw, predicted, bins))
        shifts[b] = [boot[name] - main[name] for name in CLASSIFICATION_METRICS]
        right = calibrated[rows, predicted]
        for g, (codes, n) in enumerate(groups):
            means[g][b] = np.bincount(codes, weights=right, minlength=n) / sizes[g]
    spreads = [np.std(m, axis=0, ddof=1) if resamples > 1 else np.zeros(m.shape[1]) for m in means]
    return shifts, spreads


def _draw_confusions(sums: State, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """(rounds, k, k) realised confusion matrices: each predicted column a normal draw with the multinomial moments."""
    confusion, moments = sums["confusion"], sums["moments"]
    k = confusion.shape[0]
    out = np.zeros((rounds, k, k))
    for b in range(k):
        mean = confusion[:, b]
        covariance = np.diag(mean) - moments[b]
        # the column's counts sum to its rows, so its covariance is singular: draw the first k - 1 counts with a
        # Cholesky factor (continuous in the sums: partitions merged in any order give the same draws to rounding,
        # where an eigen-decomposition may turn its vectors) and give the last what the column's rows leave
        lead = covariance[:-1, :-1]
        scale = max(float(np.trace(lead)), 1e-300)
        root = np.linalg.cholesky((lead + lead.T) / 2 + np.eye(k - 1) * scale * 1e-12)
        free = mean[:-1] + rng.standard_normal((rounds, k - 1)) @ root.T
        out[:, :-1, b] = free
        out[:, -1, b] = mean.sum() - free.sum(axis=1)
    return np.clip(out, 0, None)


def coarse_runs(count: np.ndarray, min_rows: int = 50) -> np.ndarray:
    """Start indices of runs of neighbouring bins holding at least ``min_rows`` rows each (the last run takes the rest);
    decided on rounded counts, so that sums merged in any order give the same runs."""
    rows = np.rint(count)
    starts, held = [0], 0.0
    for g, n in enumerate(rows):
        if held >= min_rows:
            starts.append(g)
            held = 0.0
        held += n
    if len(starts) > 1 and held < min_rows:
        starts.pop()
    return np.asarray(starts)


def _draw_aucs(sums: State, rounds: int, rng: np.random.Generator) -> np.ndarray:
    """(rounds,) deviations of the realised AUC from the expected one: each run of bins holding ``coarse_runs`` rows
    draws its positives from a normal law with the run's mean and variance (a single row's bin would need a Bernoulli
    draw: a fractional draw there counts a row as a tie with itself), and the AUC of the draws less the expected AUC of
    the same runs is the deviation a finite batch leaves to chance."""
    per_class = []
    for j in range(sums["auc"].shape[0]):
        starts = coarse_runs(sums["auc"][j, :, 0] + sums["auc"][j, :, 1])
        p, q, v = (np.add.reduceat(sums["auc"][j, :, f], starts) for f in range(3))
        count = p + q
        positives = np.clip(p + rng.standard_normal((rounds, len(p))) * np.sqrt(np.clip(v, 0, None)), 0, count)
        expected = auc_from_bins(p, q, v)[0]
        per_class.append(auc_from_bins(positives, count - positives)[0] - expected)
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.vstack(per_class), axis=0) if per_class else np.full(rounds, np.nan)


def classification_band(sums: State, shifts: np.ndarray, rng: np.random.Generator, level: float = 0.95,
                        rounds: int = 400) -> dict[str, tuple[float, float]]:
    """The central ``level`` of the realised figures over ``rounds`` simulated batches (module doc)."""
    confusions = _draw_confusions(sums, rounds, rng)
    drawn = np.array([[confusion_metrics(c)[name] for name in CLASSIFICATION_METRICS[:-1]] for c in confusions])
    drawn = np.column_stack([drawn, point_estimates(sums)["roc_auc"] + _draw_aucs(sums, rounds, rng)])
    if len(shifts):
        drawn = drawn + shifts[rng.integers(0, len(shifts), rounds)]
    out = {}
    for j, name in enumerate(CLASSIFICATION_METRICS):
        values = drawn[:, j][np.isfinite(drawn[:, j])]
        out[name] = ((float(np.quantile(values, (1 - level) / 2)), float(np.quantile(values, (1 + level) / 2)))
                     if len(values) else (float("nan"), float("nan")))
    return out


def estimate_classification(holdout_proba: np.ndarray, holdout_index: np.ndarray, current_proba: np.ndarray,
                            current_pred_index: np.ndarray, *, seed: int = 0, resamples: int = 50, level: float = 0.95,
                            method: str = "isotonic", rounds: int = 400) -> dict[str, dict[str, float]]:
    """CBPE on arrays (module doc), as the ``performance_estimation`` audit computes it on one frame:
    ``{metric: {"estimate", "low", "high"}}`` for accuracy, precision, recall, F1 and ROC-AUC.

    ``holdout_proba`` (n, k) and ``holdout_index`` (n,): labelled rows the model did not train on (the model's
    probabilities, columns in its class order, and the index of each row's true class); ``current_proba`` (m, k) and
    ``current_pred_index`` (m,): the rows to estimate on and the index of each one's predicted class."""
    rng = np.random.default_rng(seed)
    calibrators = fit_calibrators(holdout_proba, holdout_index, method, resamples, rng)
    sums = classification_sums(calibrators.apply(current_proba), current_proba, current_pred_index)
    point = point_estimates(sums)
    band = classification_band(sums, calibrator_shifts(calibrators, current_proba, current_pred_index)[0], rng, level, rounds)
    return {name: {"estimate": point[name], "low": band[name][0], "high": band[name][1]} for name in CLASSIFICATION_METRICS}


def realised_classification(true_index: np.ndarray, pred_index: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """The same figures on labels, by scikit-learn's own metrics (ROC-AUC exact, on the raw scores)."""
    from sklearn import metrics as skm

    k = proba.shape[1]
    labels = np.arange(k)
    average = "binary" if k == 2 else "macro"
    out = {
        "accuracy": float(skm.accuracy_score(true_index, pred_index)),
        "precision": float(skm.precision_score(true_index, pred_index, labels=labels, average=average, zero_division=0)),
        "recall": float(skm.recall_score(true_index, pred_index, labels=labels, average=average, zero_division=0)),
        "f1": float(skm.f1_score(true_index, pred_index, labels=labels, average=average, zero_division=0)),
    }
    present = np.unique(true_index)
    if len(present) < 2:
        out["roc_auc"] = float("nan")
    elif k == 2:
        out["roc_auc"] = float(skm.roc_auc_score(true_index, proba[:, 1]))
    else:
        out["roc_auc"] = float(np.mean([skm.roc_auc_score(true_index == c, proba[:, c]) for c in present]))
    return out


# ---------------------------------------------------------------------------------------------- regressors


def _loss_frame(X: pd.DataFrame, prediction: np.ndarray, categories: dict[str, list] | None = None) -> pd.DataFrame:
    """The loss model's inputs: the features (non-numeric ones as categories, those of the fit) and the prediction."""
    frame = X.reset_index(drop=True).copy()
    for column in frame.columns:
        if categories is not None and column in categories:
            frame[column] = pd.Categorical(frame[column].astype("string"), categories=categories[column])
        elif categories is None and (not pd.api.types.is_numeric_dtype(frame[column]) or frame[column].dtype == bool):
            frame[column] = frame[column].astype("string").astype("category")
    frame["__prediction__"] = np.asarray(prediction, dtype=float)
    return frame


def _loss_model(seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(max_iter=100, learning_rate=0.1, min_samples_leaf=20,
                                         categorical_features="from_dtype", random_state=seed)


@dataclass(frozen=True)
class LossModels:
    """Per loss ('mae': |error|, 'rmse': error^2): models fitted on bootstraps of the held-out rows (the estimate is
    their mean: bagging), the spread of the loss around its out-of-bag prediction, and the out-of-bag bias relative to
    the mean loss."""

    boots: dict[str, tuple[Any, ...]]
    spread: dict[str, float]
    bias: dict[str, float]
    categories: dict[str, list]
    rows: int

    def predict(self, X: pd.DataFrame, prediction: np.ndarray) -> dict[str, np.ndarray]:
        """Each row's predicted losses: ``{loss: (models, m)}`` (never below 0)."""
        frame = _loss_frame(X, prediction, self.categories)
        return {name: np.clip(np.vstack([m.predict(frame) for m in models]), 0, None) for name, models in self.boots.items()}


def fit_loss_models(X: pd.DataFrame, y: np.ndarray, prediction: np.ndarray, seed: int = 0, resamples: int = 10) -> LossModels:
    y, prediction = np.asarray(y, float), np.asarray(prediction, float)
    frame = _loss_frame(X, prediction)
    categories = {c: list(frame[c].cat.categories) for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)}
    residual = y - prediction
    targets = {"mae": np.abs(residual), "rmse": residual ** 2}
    rng = np.random.default_rng(seed)
    n = len(frame)
    draws = [rng.integers(0, n, n) for _ in range(max(2, resamples))]
    boots, spread, bias = {}, {}, {}
    for name, target in targets.items():
        models, oob_sum, oob_count = [], np.zeros(n), np.zeros(n)
        for b, rows in enumerate(draws):
            model = _loss_model(seed + 1 + b).fit(frame.iloc[rows], target[rows])
            out = np.ones(n, dtype=bool)
            out[rows] = False
            if out.any():
                oob_sum[out] += np.clip(model.predict(frame.iloc[np.flatnonzero(out)]), 0, None)
                oob_count[out] += 1
            models.append(model)
        seen = oob_count > 0
        out_of_bag = oob_sum[seen] / oob_count[seen]
        boots[name] = tuple(models)
        spread[name] = float(np.std(target[seen] - out_of_bag, ddof=1))
        mean = float(target[seen].mean())
        bias[name] = float((out_of_bag.mean() - mean) / mean) if mean > 0 else 0.0
    return LossModels(boots, spread, bias, categories, n)


def empty_regression_sums(models: int) -> State:
    return {"rows": 0, "mae": np.zeros(models), "rmse": np.zeros(models)}


def regression_sums(losses: dict[str, np.ndarray]) -> State:
    """The sums of one partition's predicted losses (``LossModels.predict``: each loss's (models, rows) array)."""
    return {"rows": losses["mae"].shape[1], **{name: values.sum(axis=1) for name, values in losses.items()}}


def regression_estimates(sums: State, models: LossModels, level: float = 0.95) -> dict[str, dict[str, float]]:
    """MAE and RMSE with their bands from a side's sums (module doc)."""
    from scipy.stats import t as student

    m = max(sums["rows"], 1)
    out = {}
    for name in REGRESSION_METRICS:
        per_model = sums[name] / m
        mean, b = float(per_model.mean()), len(per_model)
        fitting = float(per_model.var(ddof=1))
        chance = models.spread[name] ** 2 / m
        sd = float(np.sqrt(chance + fitting))
        # the bootstrap's variance rests on a handful of refits: Student's t with the Welch-Satterthwaite degrees of
        # freedom of the two parts (the chance part has about as many as the held-out rows)
        df = ((chance + fitting) ** 2 / (chance ** 2 / max(models.rows - 1, 1) + fitting ** 2 / (b - 1))
              if chance + fitting > 0 else float("inf"))
        z = float(student.ppf((1 + level) / 2, df))
        low, high = max(mean - z * sd, 0.0), mean + z * sd
        if name == "rmse":
            mean, low, high = np.sqrt(mean), np.sqrt(low), np.sqrt(high)
        out[name] = {"estimate": float(mean), "low": float(low), "high": float(high)}
    return out


def estimate_regression(holdout_X: pd.DataFrame, holdout_y: np.ndarray, holdout_pred: np.ndarray,
                        current_X: pd.DataFrame, current_pred: np.ndarray, *, seed: int = 0, resamples: int = 10,
                        level: float = 0.95) -> dict[str, dict[str, float]]:
    """DLE on frames (module doc), as the ``performance_estimation`` audit computes it on one frame:
    ``{"mae": {"estimate", "low", "high"}, "rmse": {...}}``."""
    models = fit_loss_models(holdout_X, holdout_y, holdout_pred, seed, resamples)
    return regression_estimates(regression_sums(models.predict(current_X, current_pred)), models, level)


def realised_regression(y: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    y, prediction = np.asarray(y, float), np.asarray(prediction, float)
    return {"mae": float(skm.mean_absolute_error(y, prediction)),
            "rmse": float(np.sqrt(skm.mean_squared_error(y, prediction)))}
