"""Performance without labels: what the model's accuracy (or error) on current data probably is, before labels arrive.

Classifiers: confidence-based performance estimation (CBPE); regressors: direct loss estimation (DLE); both are in
``audits.methods.estimation``, with their bands. What they are fitted on decides what they are worth: labelled rows the
model did not train on (``data.holdout``). Without a holdout they fall back to the reference, the training data, on
which a model's probabilities and errors are in-sample: the estimate is then reported as not to be trusted.

Each estimate is checked against its own assumptions with what auditlens computes anyway, and past a configured bound
it is reported as not to be trusted (``trusted`` = 0, and the reasons), never silently:

- **no shift into unseen regions**: the share of current rows a k-NN scorer fitted on the reference flags as
  unfamiliar (``audits.methods.ood``, its threshold the ``unfamiliar_percentile`` of held-out reference rows, so an
  unshifted batch shows about 100 - that percentile %), at most ``max_unfamiliar_share``;
- **calibrated probabilities** (classifiers): the probability of the predicted class after recalibration, against
  whether it was right, on the calibration rows out of fold (each fold recalibrated on the others): its ECE beyond
  the noise floor of a perfectly calibrated model on as many rows (``calibration``'s ``ece_excess``), at most
  ``max_calibration_ece_excess``; regressors: the loss model's out-of-fold bias on the holdout, at most
  ``max_loss_model_bias`` of the mean loss.

A third assumption cannot be checked without labels: that P(y | x) is what it was on the held-out rows. A change there
(concept drift) leaves every probability unchanged, and so the estimate and both checks: the report says so every
time. When current labels are present the audit reports the estimate beside the realised figure (scikit-learn's) and
the estimation error, and names a miss.

Every row (a *hybrid* audit, ``audits.core.partial``): the calibrators, loss models and unfamiliarity scorer are
fitted on the sample (and the holdout); each current partition then adds its sums (expected confusion matrix and its
moments, binned scores, predicted losses, flagged rows, per-segment sums, and with labels the realised confusion and
errors), so every figure covers every current row. The calibrators' own uncertainty in the band is measured on the
sample (``audits.methods.estimation.calibrator_shifts``).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.context import Dataset
from audits.core.partial import PartialAudit, State
from audits.core.result import key_part
from audits.methods.estimation import (
    AUC_BINS,
    MIN_CLASS_ROWS,
    CLASSIFICATION_METRICS,
    REGRESSION_METRICS,
    add_sums,
    calibrator_shifts,
    classification_band,
    classification_sums,
    confusion_metrics,
    empty_classification_sums,
    empty_regression_sums,
    fit_calibrators,
    fit_loss_models,
    point_estimates,
    realised_classification,
    realised_regression,
    regression_estimates,
    regression_sums,
)
from audits.methods.metrics import (
    _empty_side,
    _Exact,
    _merge_classification,
    _merge_regression,
    _update_classification,
    _update_regression,
    classification_figures,
    regression_figures,
)
from audits.methods.probabilities import class_indices
from audits.methods.reliability import consistency_ece, expected_calibration_error, fit_recalibration, labelled_probabilities
from audits.methods.segments import labels_of

OTHER = "(other)"
# the realised figures, with labels: the performance audit's own reduction (ROC-AUC exact up to these rows, then from
# score bins within a stated bound)
REALISED_SCORES = _Exact(exact_auc_rows=200_000, auc_bins=AUC_BINS)
CONCEPT_DRIFT = (
    "a change in how the label follows from the features (concept drift) is invisible without labels: it leaves the "
    "model's probabilities, and so this estimate and both checks, unchanged. Only labels reveal it (performance, or "
    "realised.* here once they arrive)"
)


class PerformanceEstimationConfig(AuditConfig):
    level: float = Field(0.95, gt=0.5, lt=1)  # the band's coverage
    calibration: Literal["isotonic", "sigmoid", "temperature"] = "isotonic"  # classifiers' recalibration (NannyML: isotonic)
    resamples: int = Field(50, ge=0, le=1000)  # calibrators refitted on bootstraps of the calibration rows (the band)
    rounds: int = Field(400, ge=50, le=20_000)  # simulated batches for the band
    folds: int = Field(5, ge=2, le=20)  # classifiers: folds of the out-of-fold calibration check
    loss_models: int = Field(10, ge=2, le=200)  # regressors: loss models on bootstraps of the held-out rows (the band)
    calibration_bins: int = Field(15, ge=2, le=100)  # the calibration check's ECE bins
    null_resamples: int = Field(200, ge=20, le=5000)  # its noise floor's consistency resamples
    unfamiliar_percentile: float = Field(99.0, gt=50, lt=100)
    max_unfamiliar_share: float = Field(0.05, ge=0, le=1)
    max_calibration_ece_excess: float = Field(0.02, ge=0, le=1)
    max_loss_model_bias: float = Field(0.10, ge=0, le=10)
    max_segment_values: int = Field(20, ge=1, le=200)  # most frequent values per segment column (the rest: '(other)')
    segment_min_rows: int = Field(30, ge=1)  # smaller groups are reported without a band


class PerformanceEstimationAudit(PartialAudit):
    """Estimated accuracy, precision, recall, F1 and ROC-AUC (classifiers) or MAE and RMSE (regressors) without labels,
    with bands and the checks of their assumptions; beside the realised figures when labels are present."""

    name = "performance_estimation"
    question = "behaviour"
    metric_keys = (
        "estimated.{accuracy,precision,recall,f1,roc_auc,mae,rmse}", "estimated.{accuracy,precision,recall,f1,roc_auc,mae,rmse}_{low,high}",
        "held_out.{accuracy,precision,recall,f1,roc_auc,mae,rmse}", "realised.{accuracy,precision,recall,f1,roc_auc,mae,rmse}",
        "error.{accuracy,precision,recall,f1,roc_auc,mae,rmse}", "covered.{accuracy,precision,recall,f1,roc_auc,mae,rmse}",
        "degradation", "trusted", "holdout", "rows", "labelled_rows", "calibration_rows", "roc_auc_bound",
        "check.{unfamiliar_share,calibration_ece_excess,loss_model_bias}",
        "segment.*.*.{accuracy,accuracy_low,accuracy_high,mae,mae_low,mae_high,realised_accuracy,realised_mae,rows}",
    )
    mode = "hybrid"
    Config = PerformanceEstimationConfig
    requires = Requirements(probabilities=True, modalities=("tabular", "image", "text"))
    typical_cost_s = 2.0
    # degradation: how much worse the figure is than on the held-out rows, relative, at the band's optimistic end
    # (accuracy: 1 - high / held-out; MAE: low / held-out - 1). Above 0.02, even the optimistic end of the band is 2 %
    # worse: the model has probably degraded; labels will tell by how much.
    default_thresholds = (
        Threshold(metric="degradation", max=0.02, severity="warn"),
        Threshold(metric="trusted", min=1, severity="warn"),
    )
    description = "Performance estimated without labels (CBPE, DLE) with its band and the checks of its assumptions."

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        held, _ = context.held_out()
        if not held.labelled:
            return ("needs labelled rows the model did not train on to fit on (data.holdout), or at least a labelled "
                    f"reference; target column {context.target!r} is absent from the reference")
        if context.task == "classification":
            _, index, _ = labelled_probabilities(held, context.model.classes)
            counts = np.bincount(index, minlength=len(context.model.classes))
            if (counts < MIN_CLASS_ROWS * self.config.folds).any():
                short = [str(c) for c, n in zip(context.model.classes, counts, strict=True) if n < MIN_CLASS_ROWS * self.config.folds]
                return (f"CBPE recalibrates every class's probability, checked out of {self.config.folds} folds: the "
                        f"{held.name} has fewer than {MIN_CLASS_ROWS * self.config.folds} labelled rows of class(es) "
                        f"{', '.join(short[:10])}")
        elif len(held) < 20:
            return f"too few labelled {held.name} rows ({len(held)}) to fit a model of the loss on (at least 20)"
        return None

    # ----------------------------------------------------------------------------------------- on the sample

    def fit(self, context: AuditContext) -> dict[str, Any]:
        cfg = self.config
        held, note = context.held_out()
        fitted: dict[str, Any] = {"source": held.name, "note": note, "classification": context.task == "classification"}
        if fitted["classification"]:
            classes = context.model.classes
            proba, index, _ = labelled_probabilities(held, classes)
            fitted["calibrators"] = fit_calibrators(proba, index, cfg.calibration, cfg.resamples,
                                                    context.rng("performance_estimation.calibrators"))
            predicted = _predicted_index(held, classes)[held_known(held, classes)]
            fitted["held_out"] = realised_classification(index, predicted, proba)
            fitted["calibration_rows"] = len(index)
            fitted["ece_excess"] = self._calibration_check(proba, index, predicted, context)
        else:
            y = held.y.to_numpy(dtype=float)
            prediction = held.predictions.labels.astype(float)
            fitted["losses"] = fit_loss_models(held.X, y, prediction, context.random_state("performance_estimation.loss"),
                                               cfg.loss_models)
            fitted["held_out"] = realised_regression(y, prediction)
            fitted["calibration_rows"] = len(y)
        fitted["ood"] = None
        if context.modality in ("tabular", "image") and len(context.reference) >= 20:
            from audits.methods.ood import fit_ood

            fitted["ood"] = fit_ood(context.reference.X, context.categorical, context.random_state("performance_estimation.ood"),
                                    scorers=("knn",), percentile=cfg.unfamiliar_percentile)
        segments = context.current.segments
        fitted["segments"] = {}
        if segments is not None:
            for column in segments.columns:
                counts = pd.Series(labels_of(segments[column])).value_counts()
                fitted["segments"][column] = sorted(counts.index, key=lambda v, c=counts: (-c[v], v))[: cfg.max_segment_values]
        if fitted["classification"]:
            # the calibration's own uncertainty, measured on the sample: in the whole's figures and in each segment's
            current = context.current
            groups = [(_group_codes(values, current.segments[column]), len(values) + 1)
                      for column, values in fitted["segments"].items()]
            fitted["shifts"], spreads = calibrator_shifts(fitted["calibrators"], current.predictions.proba,
                                                          _predicted_index(current, context.model.classes), AUC_BINS, groups)
            fitted["group_shift_sd"] = dict(zip(fitted["segments"], spreads, strict=True))
        return fitted

    def _calibration_check(self, proba: np.ndarray, index: np.ndarray, predicted: np.ndarray, context: AuditContext) -> float:
        """ECE beyond its noise floor of the recalibrated probability of the predicted class, out of fold."""
        cfg = self.config
        from sklearn.model_selection import StratifiedKFold

        folds = StratifiedKFold(cfg.folds, shuffle=True, random_state=context.random_state("performance_estimation.folds"))
        confidence = np.zeros(len(index))
        for fit, held in folds.split(proba, index):  # every fold holds a share of every class
            calibrated = fit_recalibration(cfg.calibration, proba[fit], index[fit]).predict_proba(proba[held])
            confidence[held] = calibrated[np.arange(len(held)), predicted[held]]
        correct = predicted == index
        ece = expected_calibration_error(confidence, correct, cfg.calibration_bins, "uniform")[0]
        null, _ = consistency_ece(confidence, cfg.calibration_bins, "uniform", context.rng("performance_estimation.calibration_check"),
                                  cfg.null_resamples)
        return float(ece - np.quantile(null, 0.95))

    # ----------------------------------------------------------------------------------------- every row

    def init(self, context: AuditContext, fitted: dict[str, Any]) -> State:
        models = 0 if fitted["classification"] else len(fitted["losses"].boots["mae"])
        groups = {column: _empty_groups(len(values) + 1, models) for column, values in fitted["segments"].items()}
        state: State = {"rows": 0, "unfamiliar": 0, "scored": 0, "groups": groups, "labelled": 0,
                        "realised": _empty_side(context.task, len(context.model.classes or ()))}
        if fitted["classification"]:
            state["sums"] = empty_classification_sums(len(context.model.classes))
        else:
            state["sums"] = empty_regression_sums(len(fitted["losses"].boots["mae"]))
        return state

    def update(self, state: State, partition: Dataset, context: AuditContext, fitted: dict[str, Any]) -> State:
        if partition.name != "current" or len(partition) == 0:
            return state
        classes = context.model.classes
        part = self.init(context, fitted)
        part["rows"] = len(partition)
        if fitted["classification"]:
            raw = partition.predictions.proba
            predicted = _predicted_index(partition, classes)
            calibrated = fitted["calibrators"].apply(raw)
            part["sums"] = classification_sums(calibrated, raw, predicted, AUC_BINS)
            right = calibrated[np.arange(len(predicted)), predicted]
            per_row = {"estimate": right, "variance": right * (1 - right)}
            if partition.labelled:
                truth = class_indices(partition.y, classes)
                known = truth >= 0
                part["realised"] = _update_classification(part["realised"], partition, classes, REALISED_SCORES)
                part["labelled"] = int(known.sum())
                per_row["truth"] = np.where(known, (truth == predicted).astype(float), np.nan)
        else:
            prediction = partition.predictions.labels.astype(float)
            losses = fitted["losses"].predict(partition.X, prediction)  # once: the sums and the segments read them
            part["sums"] = regression_sums(losses)
            per_row = {"estimate": losses["mae"].mean(axis=0), "variance": np.zeros(len(partition)), "models": losses["mae"]}
            if partition.labelled:
                part["realised"] = _update_regression(part["realised"], partition)
                part["labelled"] = len(partition)
                per_row["truth"] = np.abs(partition.y.to_numpy(dtype=float) - prediction)
        if fitted["ood"] is not None:
            flags = fitted["ood"].flags(fitted["ood"].scores(partition.X))["knn"]
            part["unfamiliar"], part["scored"] = int(flags.sum()), len(flags)
        if partition.segments is not None:
            for column, values in fitted["segments"].items():
                part["groups"][column] = _group_sums(_group_codes(values, partition.segments[column]), len(values) + 1,
                                                     per_row)
        return self.merge(state, part)

    def merge(self, a: State, b: State) -> State:
        out = {key: a[key] + b[key] for key in ("rows", "unfamiliar", "scored", "labelled")}
        out["sums"] = add_sums(a["sums"], b["sums"])
        out["realised"] = (_merge_classification(a["realised"], b["realised"], REALISED_SCORES) if "confusion" in a["realised"]
                           else _merge_regression(a["realised"], b["realised"]))
        out["groups"] = {column: {key: a["groups"][column][key] + b["groups"][column][key] for key in a["groups"][column]}
                         for column in a["groups"]}
        return out

    # ----------------------------------------------------------------------------------------- the result

    def finalize(self, state: State, context: AuditContext, fitted: dict[str, Any], population: dict[str, int]) -> AuditResult:
        cfg = self.config
        if state["rows"] == 0:
            raise ValueError("no current rows to estimate on")
        classification = fitted["classification"]
        rng = context.rng("performance_estimation.band")
        names = CLASSIFICATION_METRICS if classification else REGRESSION_METRICS
        metrics: dict[str, float] = {"rows": float(state["rows"]), "calibration_rows": float(fitted["calibration_rows"]),
                                     "holdout": float(fitted["source"] == "holdout")}
        if classification:
            point = point_estimates(state["sums"])
            metrics["roc_auc_bound"] = point.pop("roc_auc_bound")
            band = classification_band(state["sums"], fitted["shifts"], rng, cfg.level, cfg.rounds)
            estimates = {n: {"estimate": point[n], "low": band[n][0], "high": band[n][1]} for n in names}
        else:
            estimates = regression_estimates(state["sums"], fitted["losses"], cfg.level)
        for name in names:
            metrics[f"estimated.{name}"] = estimates[name]["estimate"]
            metrics[f"estimated.{name}_low"] = estimates[name]["low"]
            metrics[f"estimated.{name}_high"] = estimates[name]["high"]
            metrics[f"held_out.{name}"] = fitted["held_out"][name]
        headline = "accuracy" if classification else "mae"
        held_figure = fitted["held_out"][headline]
        if classification:
            metrics["degradation"] = 1 - estimates[headline]["high"] / held_figure if held_figure > 0 else float("nan")
        else:
            metrics["degradation"] = estimates[headline]["low"] / held_figure - 1 if held_figure > 0 else float("nan")

        # the checks of the assumptions
        reasons, checks = [], {}
        if fitted["source"] != "holdout":
            reasons.append("fitted on the reference (the training data: in-sample figures are optimistic); give "
                           "labelled rows the model did not train on as data.holdout")
        share = state["unfamiliar"] / state["scored"] if state["scored"] else float("nan")
        metrics["check.unfamiliar_share"] = share
        if np.isfinite(share):
            checks["unfamiliar"] = (f"{share:.1%} of current rows are unfamiliar to a k-NN scorer fitted on the reference "
                                    f"(an unshifted batch: about {100 - cfg.unfamiliar_percentile:g} %; bound "
                                    f"{cfg.max_unfamiliar_share:.0%})")
            if share > cfg.max_unfamiliar_share:
                reasons.append(f"{share:.1%} of current rows lie where the {fitted['source']} has no rows like them "
                               f"(bound {cfg.max_unfamiliar_share:.0%}): the estimate extrapolates there")
        else:
            checks["unfamiliar"] = f"not checked: no k-NN scorer for {context.modality} inputs"
        if classification:
            excess = fitted["ece_excess"]
            metrics["check.calibration_ece_excess"] = excess
            checks["calibration"] = (f"recalibrated probability of the predicted class, out of fold on the {fitted['source']}: "
                                     f"ECE {excess:+.3f} beyond its noise floor (bound {cfg.max_calibration_ece_excess:g})")
            if not np.isfinite(excess) or excess > cfg.max_calibration_ece_excess:
                reasons.append("the recalibrated probabilities are not calibrated on held-out rows (ECE excess "
                               f"{excess:.3f} > {cfg.max_calibration_ece_excess:g}): the estimate rests on them")
        else:
            bias = fitted["losses"].bias["mae"]
            metrics["check.loss_model_bias"] = bias
            checks["loss_model"] = (f"the loss model's out-of-bag mean on the {fitted['source']} is {bias:+.1%} off the "
                                    f"mean absolute error (bound ±{cfg.max_loss_model_bias:.0%})")
            if abs(bias) > cfg.max_loss_model_bias:
                reasons.append(f"the loss model is {bias:+.1%} off on held-out rows (bound ±{cfg.max_loss_model_bias:.0%})")
        metrics["trusted"] = float(not reasons)

        # with labels: estimated beside realised
        realised = self._realised(state, context, classification)
        info: dict[str, str] = {
            "method": ("CBPE: the expected confusion matrix of the model's probabilities, recalibrated "
                       f"({cfg.calibration}) on {fitted['note']}" if classification else
                       f"DLE: a gradient-boosting model of each row's loss, fitted on {fitted['note']}"),
            "band": f"{cfg.level:.0%} of the realised figure over simulated batches: chance in a batch of this size and "
                    "the calibration's own uncertainty" if classification else
                    f"{cfg.level:.0%}: the spread of the losses around their prediction and the folds' models",
            **{f"check_{k}": v for k, v in checks.items()},
            "trusted": "yes: both checks hold" if not reasons else "NO: " + "; ".join(reasons),
            "concept_drift": CONCEPT_DRIFT,
            "rows": f"every current row ({state['rows']:,})",
        }
        missed = []
        if realised:
            metrics["labelled_rows"] = float(state["labelled"])
            for name in names:
                metrics[f"realised.{name}"] = realised[name]
                metrics[f"error.{name}"] = estimates[name]["estimate"] - realised[name]
                covered = estimates[name]["low"] <= realised[name] <= estimates[name]["high"]
                metrics[f"covered.{name}"] = float(covered)
                if not covered and np.isfinite(realised[name]):
                    missed.append(name)
            info["realised"] = (f"labels on {state['labelled']:,} current rows: realised {headline} "
                                f"{realised[headline]:.4g}, estimated {estimates[headline]['estimate']:.4g} "
                                f"[{estimates[headline]['low']:.4g}, {estimates[headline]['high']:.4g}]")
            if missed:
                info["missed"] = (f"the realised {', '.join(missed)} fell outside the band"
                                  + (": with both checks holding, the mark of concept drift (P(y | x) changed) or of a "
                                     "calibration the held-out rows did not show" if not reasons else ""))

        table = pd.DataFrame([{"metric": n, "held_out": fitted["held_out"][n], "estimated": estimates[n]["estimate"],
                               "low": estimates[n]["low"], "high": estimates[n]["high"],
                               **({"realised": realised[n], "error": estimates[n]["estimate"] - realised[n]} if realised else {})}
                              for n in names])
        segment_rows = self._segments(state, fitted, classification, metrics, headline)
        artifacts = [Artifact.table("estimates", table, "Estimated performance, its band, the held-out figure and (with "
                                                         "labels) the realised one")]
        if segment_rows:
            artifacts.append(Artifact.table("segments", pd.DataFrame(segment_rows), f"Estimated {headline} per segment"))
        if context.with_figures:
            artifacts.append(Artifact.figure("estimates", _figure(table, headline, metrics["trusted"] == 1),
                                             "Estimated performance with its band"))
        return AuditResult(audit=self.name, metrics=metrics, artifacts=tuple(artifacts), info=info)

    def _realised(self, state: State, context: AuditContext, classification: bool) -> dict[str, float] | None:
        """The realised figures as the performance audit reports them (accuracy, F1, ROC-AUC; MAE, RMSE), with precision
        and recall from the same confusion matrix of the rows whose label is one of the model's classes."""
        if state["labelled"] == 0:
            return None
        if classification:
            side = state["realised"]
            figures = classification_figures(side, context.model.classes, True)
            known = confusion_metrics(side["confusion"])
            return {"accuracy": figures["accuracy"], "precision": known["precision"], "recall": known["recall"],
                    "f1": figures["f1"], "roc_auc": figures["roc_auc"]}
        figures = regression_figures(state["realised"])
        return {"mae": figures["mae"], "rmse": figures["rmse"]}

    def _segments(self, state: State, fitted: dict[str, Any], classification: bool, metrics: dict[str, float],
                  headline: str) -> list[dict[str, Any]]:
        """Per segment value: the estimated headline figure, with a band from chance in the group's rows and the fit's
        own uncertainty there (classifiers: the group's figure's spread over the bootstrap calibrators, on the sample's
        rows of the group; regressors: over the bootstrap loss models, on every row of the group)."""
        from scipy.stats import norm

        cfg = self.config
        z = float(norm.ppf((1 + cfg.level) / 2))
        rows = []
        for column, values in fitted["segments"].items():
            sums = state["groups"][column]
            for code, value in enumerate([*values, OTHER]):
                n = sums["rows"][code]
                if n == 0:
                    continue
                estimate = sums["estimate"][code] / n
                if classification:
                    # chance in the group's rows, and the calibration's uncertainty in the group (its figure's spread
                    # over the bootstrap calibrators, measured on the sample's rows of the group)
                    chance = np.sqrt(sums["variance"][code]) / n
                    sd = float(np.sqrt(chance ** 2 + fitted["group_shift_sd"][column][code] ** 2))
                else:
                    fitting = float(np.var(sums["models"][code] / n, ddof=1)) if sums["models"].shape[1] > 1 else 0.0
                    sd = float(np.sqrt(fitted["losses"].spread["mae"] ** 2 / n + fitting))
                low, high = (estimate - z * sd, estimate + z * sd) if n >= cfg.segment_min_rows else (np.nan, np.nan)
                if classification:
                    low, high = max(low, 0.0), min(high, 1.0)
                else:
                    low = max(low, 0.0)
                key = f"segment.{key_part(column)}.{key_part(value)}"
                metrics[f"{key}.{headline}"] = float(estimate)
                metrics[f"{key}.{headline}_low"] = float(low)
                metrics[f"{key}.{headline}_high"] = float(high)
                metrics[f"{key}.rows"] = float(n)
                row = {"column": column, "value": value, "rows": int(n), f"estimated_{headline}": float(estimate),
                       "low": float(low), "high": float(high)}
                if sums["labelled"][code] > 0:
                    truth = sums["truth"][code] / sums["labelled"][code]
                    metrics[f"{key}.realised_{headline}"] = float(truth)
                    row[f"realised_{headline}"] = float(truth)
                rows.append(row)
        return rows


def _group_codes(values: list, column: pd.Series) -> np.ndarray:
    """Each row's group: the index of its value among ``values``, or len(values) for '(other)'."""
    codes = pd.Index(values).get_indexer(labels_of(column))
    return np.where(codes < 0, len(values), codes)


def held_known(ds: Dataset, classes: tuple) -> np.ndarray:
    return class_indices(ds.y, classes) >= 0


def _predicted_index(ds: Dataset, classes: tuple) -> np.ndarray:
    """Each row's predicted class as an index into the model's classes (labels are always among them: checked)."""
    return class_indices(pd.Series(ds.predictions.labels), classes)


def _empty_groups(n: int, models: int) -> dict[str, np.ndarray]:
    return {**{key: np.zeros(n) for key in ("rows", "estimate", "variance", "truth", "labelled")},
            "models": np.zeros((n, models))}


def _group_sums(codes: np.ndarray, n: int, per_row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    models = per_row.get("models")
    out = {"models": np.zeros((n, 0)) if models is None else
           np.column_stack([np.bincount(codes, weights=row, minlength=n) for row in models]),
           "rows": np.bincount(codes, minlength=n).astype(float),
           "estimate": np.bincount(codes, weights=per_row["estimate"], minlength=n),
           "variance": np.bincount(codes, weights=per_row["variance"], minlength=n)}
    truth = per_row.get("truth")
    if truth is None:
        out["truth"], out["labelled"] = np.zeros(n), np.zeros(n)
    else:
        known = np.isfinite(truth)
        out["truth"] = np.bincount(codes[known], weights=truth[known], minlength=n)
        out["labelled"] = np.bincount(codes[known], minlength=n).astype(float)
    return out


def _figure(table: pd.DataFrame, headline: str, trusted: bool) -> Figure:
    fig = Figure(figsize=(7, 0.6 * len(table) + 1.6), layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(table))[::-1]
    colour = "C0" if trusted else "C3"
    # the band and the estimate drawn each as computed: the band is the central share of simulated batches (shifted by
    # the calibrators' spread), and a skewed or shifted simulation can leave the point estimate outside it, where an
    # error bar (lengths from the estimate) cannot be drawn
    ax.hlines(y, table["low"], table["high"], color=colour, linewidth=2, label="its band")
    ax.plot(table["low"], y, "|", table["high"], y, "|", color=colour, markersize=10)
    ax.plot(table["estimated"], y, "o", color=colour, label="estimated")
    ax.scatter(table["held_out"], y, marker="|", s=300, color="0.3", label="on the held-out rows")
    if "realised" in table:
        ax.scatter(table["realised"], y, marker="x", s=60, color="C2", label="realised (labels)")
    ax.set_yticks(y, table["metric"])
    ax.set_title("Estimated performance" + ("" if trusted else " (NOT to be trusted: see the checks)"))
    ax.legend(loc="best", fontsize="small")
    return fig
