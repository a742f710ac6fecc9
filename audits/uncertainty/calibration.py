"""Calibration: do the classifier's probabilities mean what they say, and would recalibrating help?

On labelled current data (and on the reference, for comparison):

- the top-label ECE (the confidence of the predicted class, argmax of the probabilities, against
  whether it is right) with equal-width and equal-mass bins, the MCE (largest bin gap), the
  class-wise ECE (binary: the ECE of P(positive class); multiclass: the mean over classes of each
  class's one-vs-rest ECE), the Brier score and the log loss (``sklearn.metrics``);
- a noise floor by consistency resampling (Broecker & Smith, 2007): labels drawn from the model's
  own confidences give the ECE a perfectly calibrated model would show on this many rows with
  these bins. ``ece_excess`` = ECE - its 95th percentile is the miscalibration sampling cannot
  explain; the default thresholds sit on it, so a small batch does not warn on noise alone;
- suggested recalibrations fitted on the reference (or on half of the labelled current rows) and
  evaluated on current: temperature scaling and isotonic regression, both scikit-learn's own
  ``CalibratedClassifierCV(FrozenEstimator(...), method=...)``.

The binning follows the ``uncertainty-calibration`` package (Kumar et al., 2019) exactly: bins are
closed on the right, ``(lower, upper]`` (the first one includes 0); equal-width upper edges are
``k / bins``; equal-mass bins split the sorted confidences into ``bins`` nearly equal parts
(``np.array_split``), cut halfway between neighbouring parts, merge cuts that coincide, and end at 1.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field
from sklearn import metrics as skm
from sklearn.base import BaseEstimator, ClassifierMixin

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.context import Dataset
from audits.uncertainty.scores import confidence as top_confidence

Strategy = Literal["uniform", "quantile"]  # equal width, equal mass (scikit-learn's names)
RECALIBRATIONS = ("temperature", "isotonic")


class CalibrationConfig(AuditConfig):
    bins: int = Field(15, ge=2, le=100)  # bins for the ECE, the MCE and the reliability diagrams
    null_resamples: int = Field(200, ge=20, le=5000)  # consistency resamples for the ECE noise floor
    null_quantile: float = Field(0.95, gt=0.5, lt=1)  # ece_excess = ECE - this quantile of the noise floor
    recalibration_data: Literal["reference", "current_split"] = "reference"


# ---------------------------------------------------------------------------------------------
# Pure calibration maths


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
    counts = np.bincount(index, minlength=len(edges))
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weights=confidence, minlength=len(edges)) / counts
        accuracy = np.bincount(index, weights=correct, minlength=len(edges)) / counts
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


def class_indices(y: pd.Series, classes: tuple) -> np.ndarray:
    """Position of each label in the model's classes; -1 for a missing label or a class the model never saw."""
    return pd.Index(list(classes)).get_indexer(pd.Series(y).to_numpy())


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


# ---------------------------------------------------------------------------------------------
# Recalibration with scikit-learn's CalibratedClassifierCV, on probabilities already computed


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


def fit_recalibration(method: str, proba: np.ndarray, index: np.ndarray) -> Any:
    """A fitted ``CalibratedClassifierCV`` mapping probabilities to recalibrated probabilities."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    frozen = FrozenEstimator(ProbabilityPassthrough(proba.shape[1]))
    return CalibratedClassifierCV(frozen, method=method).fit(proba, index)


def fitted_temperature(calibrated: Any) -> float:
    """T in softmax(log p / T) from a temperature-scaling CalibratedClassifierCV (scikit-learn stores 1/T)."""
    return float(1.0 / calibrated.calibrated_classifiers_[0].calibrators[0].beta_)


# ---------------------------------------------------------------------------------------------


def labelled_probabilities(ds: Dataset, classes: tuple) -> tuple[np.ndarray, np.ndarray, int]:
    """(probabilities, class indices) of the rows whose label is one of the model's classes; rows dropped."""
    index = class_indices(ds.y, classes)
    keep = index >= 0
    return ds.predictions.proba[keep], index[keep], int((~keep).sum())


class CalibrationAudit(Audit):
    """ECE (equal width and equal mass), MCE, class-wise ECE, Brier, log loss, reliability diagrams, recalibration."""

    name = "calibration"
    Config = CalibrationConfig
    requires = Requirements(labels="current", probabilities=True, tasks=("classification",), modalities=("tabular", "image", "text"))
    # ece_excess = ECE beyond the 95th percentile of a perfectly calibrated model's ECE on as many rows.
    # WARN at 2 points beyond the noise (stated probabilities measurably off); FAIL at 10 points
    # beyond it (a stated 80 % means 70 % or less: probabilities unfit for decisions as they are).
    default_thresholds = (
        Threshold(metric="calibration.current.ece_excess", max=0.02, severity="warn"),
        Threshold(metric="calibration.current.ece_excess", max=0.10, severity="fail"),
    )
    description = "Calibration of predicted probabilities, reliability diagrams and a suggested recalibration."

    def compute(self, context: AuditContext) -> AuditResult:
        cfg, classes = self.config, context.model.classes
        info: dict[str, str] = {
            "ece": "top-label ECE: confidence of the argmax class against its accuracy; bins are (lower, upper]",
            "classwise_ece": "binary: ECE of P(positive class); multiclass: mean over classes of the one-vs-rest ECE",
            "ece_excess": f"ECE minus the {cfg.null_quantile:g} quantile of the ECE of a perfectly calibrated model "
                          f"with the same confidences and rows ({cfg.null_resamples} consistency resamples)",
        }
        metrics: dict[str, float] = {}
        data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        bin_tables, bands = [], {}
        for ds in (context.reference, context.current):
            if not ds.labelled:
                continue
            proba, index, dropped = labelled_probabilities(ds, classes)
            if dropped:
                info[f"{ds.name}_dropped_rows"] = f"{dropped} row(s) with a missing label or a class the model does not know"
            if len(index) == 0:
                continue
            data[ds.name] = (proba, index)
            values = probability_metrics(proba, index, cfg.bins)
            conf = top_confidence(proba)
            null_ece, null_accuracy = consistency_ece(conf, cfg.bins, "uniform", context.rng(f"calibration.null.{ds.name}"),
                                                      cfg.null_resamples)
            values["ece_null_quantile"] = float(np.quantile(null_ece, cfg.null_quantile))
            values["ece_excess"] = values["ece"] - values["ece_null_quantile"]
            metrics.update({f"{ds.name}.{k}": v for k, v in values.items()})
            for strategy in ("uniform", "quantile"):
                table = expected_calibration_error(conf, proba.argmax(axis=1) == index, cfg.bins, strategy)[2]
                bin_tables.append(table.assign(dataset=ds.name, binning="equal width" if strategy == "uniform" else "equal mass"))
            filled = ~np.isnan(null_accuracy[0])
            bands[ds.name] = np.full((2, null_accuracy.shape[1]), np.nan)
            bands[ds.name][:, filled] = np.quantile(null_accuracy[:, filled], [0.05, 0.95], axis=0)
        if "current" not in data:
            raise ValueError("no labelled current row has a label among the model's classes")

        recal_metrics, recal_table, recal_info = self._recalibrate(context, data)
        metrics.update(recal_metrics)
        info.update(recal_info)

        classwise = _classwise_table(data, classes, cfg.bins)
        artifacts = (
            Artifact.figure("reliability", _reliability_figure(bin_tables, bands, cfg.bins),
                            "Reliability diagrams (top label, equal-width bins) with bin counts"),
            Artifact.table("bins", pd.concat(bin_tables, ignore_index=True), "Per-bin confidence and accuracy"),
            Artifact.table("classwise", classwise, "One-vs-rest calibration error per class"),
            Artifact.table("recalibration", recal_table, "ECE, Brier and log loss after each recalibration"),
        )
        return AuditResult(audit=self.name, metrics=metrics, artifacts=artifacts, info=info)

    def _recalibrate(self, context: AuditContext, data: dict[str, tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[dict[str, float], pd.DataFrame, dict[str, str]]:
        cfg = self.config
        source = cfg.recalibration_data
        info: dict[str, str] = {}
        if source == "reference" and "reference" not in data:
            source = "current_split"
            info["recalibration_fallback"] = "the reference has no usable labels: fitted on half of the labelled current rows"
        cur_proba, cur_index = data["current"]
        if source == "reference":
            (fit_proba, fit_index), (eval_proba, eval_index) = data["reference"], data["current"]
            info["recalibration_data"] = (
                "fitted on the reference, evaluated on all labelled current rows. The reference is usually the "
                "training data, where a model looks better calibrated than on new data (an overfit model is "
                "overconfident only out of sample): the suggestion is then biased; prefer "
                "recalibration_data: current_split, or fit the chosen method on held-out data"
            )
        else:
            order = context.rng("calibration.recalibration_split").permutation(len(cur_index))
            half = len(order) // 2
            fit_rows, eval_rows = np.sort(order[:half]), np.sort(order[half:])
            fit_proba, fit_index = cur_proba[fit_rows], cur_index[fit_rows]
            eval_proba, eval_index = cur_proba[eval_rows], cur_index[eval_rows]
            info["recalibration_data"] = (
                f"fitted on a seeded half of the labelled current rows ({len(fit_rows)}), evaluated on the other "
                f"half ({len(eval_rows)}); recalibrated.none.* is the uncalibrated model on those same rows"
            )
        rows = {"none": probability_metrics(eval_proba, eval_index, cfg.bins)}
        temperature = float("nan")
        k = cur_proba.shape[1]
        missing = sorted(set(range(k)) - set(np.unique(fit_index).tolist()))
        for method in RECALIBRATIONS:
            try:
                if missing:
                    raise ValueError(f"class(es) {missing} absent from the fitting labels")
                calibrated = fit_recalibration(method, fit_proba, fit_index)
                rows[method] = probability_metrics(calibrated.predict_proba(eval_proba), eval_index, cfg.bins)
                if method == "temperature":
                    temperature = fitted_temperature(calibrated)
            except ValueError as exc:  # too few rows per class for scikit-learn's 5 folds, a class missing, ...
                rows[method] = {key: float("nan") for key in rows["none"]}
                info[f"recalibration_{method}"] = f"not fitted: {exc}"
        metrics = {f"recalibrated.{m}.{key}": values[key] for m, values in rows.items() for key in ("ece", "brier", "log_loss")}
        metrics["temperature"] = temperature
        finite = {m: v["ece"] for m, v in rows.items() if np.isfinite(v["ece"])}
        best = min(finite, key=lambda m: (finite[m], ("none", *RECALIBRATIONS).index(m)))
        info["suggested_recalibration"] = (
            "none: no recalibration lowers the ECE on the evaluation rows" if best == "none" else
            f"{best}: ECE {finite['none']:.4f} -> {finite[best]:.4f} on the evaluation rows"
            + (f" (T = {temperature:.3g}; T > 1 softens overconfident probabilities, T < 1 sharpens underconfident ones)"
               if best == "temperature" else "")
        )
        table = pd.DataFrame(rows).T.rename_axis("method").reset_index()
        return metrics, table, info


def _classwise_table(data: dict[str, tuple[np.ndarray, np.ndarray]], classes: tuple, bins: int) -> pd.DataFrame:
    rows = []
    for name, (proba, index) in data.items():
        for c, label in enumerate(classes):
            ece, mce, _ = expected_calibration_error(proba[:, c], index == c, bins, "uniform")
            rows.append({"dataset": name, "class": str(label), "ece": ece, "mce": mce,
                         "mean_probability": float(proba[:, c].mean()), "frequency": float((index == c).mean())})
    return pd.DataFrame(rows)


def _reliability_figure(bin_tables: list[pd.DataFrame], bands: dict[str, Any], bins: int) -> Figure:
    tables = [t for t in bin_tables if t["binning"].iat[0] == "equal width"]
    fig = Figure(figsize=(5 * len(tables), 6), layout="constrained")
    axes = fig.subplots(2, len(tables), squeeze=False, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    width = 1.0 / bins
    for j, table in enumerate(tables):
        name = table["dataset"].iat[0]
        top, bottom = axes[0, j], axes[1, j]
        centres = (table["lower"] + table["upper"]).to_numpy() / 2
        filled = table["count"].to_numpy() > 0
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        top.bar(centres[filled], table["accuracy"].to_numpy()[filled], width=width * 0.9, alpha=0.6, label="accuracy")
        top.plot(table["mean_confidence"].to_numpy()[filled], table["accuracy"].to_numpy()[filled], "o-", color="C1",
                 label="accuracy at mean confidence")
        band = bands.get(name)
        if band is not None:
            conf = table["mean_confidence"].to_numpy()[filled]
            top.vlines(conf, band[0][filled], band[1][filled], color="black", alpha=0.5, label="90% band if calibrated")
        n = int(table["count"].sum())
        ece = float(np.dot(table["count"][filled] / n, np.abs(table["overconfidence"][filled])))
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{name} (n={n}, ECE={ece:.3f})")
        top.legend(loc="upper left", fontsize=7)
        bottom.bar(centres, table["count"].to_numpy(), width=width * 0.9, color="C0")
        bottom.set(xlabel="confidence of the predicted class", ylabel="rows")
    return fig
