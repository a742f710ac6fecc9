"""Conformal prediction with MAPIE: do the model's prediction sets (classifiers) or intervals
(regressors) reach their stated coverage on current data, overall and per segment?

Split conformal prediction (MAPIE's ``SplitConformalClassifier`` / ``SplitConformalRegressor`` with
``prefit=True``) guarantees coverage >= the confidence level on rows exchangeable with the rows it
was conformalized on. Where those rows come from decides what the audit measures:

- ``current_split`` (default): a seeded fraction of the labelled current rows conformalizes, the rest
  are evaluated. Coverage then holds by construction up to sampling error; what the audit reports is
  how large the sets or intervals must be on today's data, and whether segments are covered equally.
- ``reference``: the reference conformalizes and all labelled current rows are evaluated. This tests
  whether the reference's uncertainty carries over to current data (undercoverage = shift). It is
  valid only when the reference rows were not used to train the model: on training rows the
  residuals are too small, so the sets are too small and coverage on current falls short even
  without any shift. The audit cannot know which rows trained the model; point the reference at
  held-out data for this mode.

MAPIE is given the probabilities or predictions the context computed once, through pass-through
estimators, so every model flavour (native or pyfunc) is handled alike and the model is not called
again; the sets equal MAPIE's on the native model (tested).

Undercoverage is judged against sampling error: the empirical coverage of n evaluation rows varies
by binomial noise around the (random) coverage given the calibration set, whose own variance is
about a(1-a)/(n_cal+2) (it follows a Beta law). ``coverage_shortfall_z`` = (coverage - a) / sqrt(a(1-a)
(1/n + 1/(n_cal+2))); the default check warns below -3 (one false alarm in ~740 exchangeable batches).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field
from sklearn.base import BaseEstimator, RegressorMixin

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.result import key_part
from audits.uncertainty.calibration import ProbabilityPassthrough, class_indices

MISSING = "(missing)"


class ConformalConfig(AuditConfig):
    confidence_level: float = Field(0.9, gt=0, lt=1)
    classification_score: Literal["lac", "aps", "raps", "top_k"] = "lac"  # MAPIE conformity score for classifiers
    regression_score: Literal["absolute", "gamma"] = "absolute"  # for regressors (both need only the predictions)
    calibration_data: Literal["current_split", "reference"] = "current_split"
    calibration_fraction: float = Field(0.5, gt=0, lt=1)  # current_split: share of labelled current rows that conformalize
    max_segment_values: int = Field(20, ge=1, le=200)  # most frequent values per segment column
    sample_rows: int = Field(20, ge=1, le=1000)  # rows shown with their sets or intervals


class PredictionPassthrough(RegressorMixin, BaseEstimator):
    """A 'regressor' whose input is a column of predictions and which returns it. Always fitted."""

    def __init__(self) -> None:
        self.n_features_in_ = 1

    def fit(self, X: Any = None, y: Any = None) -> PredictionPassthrough:
        return self

    def predict(self, X: Any) -> np.ndarray:
        return np.asarray(X, dtype=float)[:, 0]


def conformal_sets(proba_cal: np.ndarray, index_cal: np.ndarray, proba_eval: np.ndarray, level: float,
                   score: str = "lac", random_state: int | None = None) -> np.ndarray:
    """Boolean prediction sets (rows, classes) from MAPIE, conformalized on class indices ``index_cal``."""
    from mapie.classification import SplitConformalClassifier

    mapie = SplitConformalClassifier(ProbabilityPassthrough(proba_cal.shape[1]), confidence_level=level,
                                     conformity_score=score, prefit=True, random_state=random_state)
    return mapie.conformalize(proba_cal, index_cal).predict_set(proba_eval)[1][:, :, 0]


def conformal_intervals(pred_cal: np.ndarray, y_cal: np.ndarray, pred_eval: np.ndarray, level: float,
                        score: str = "absolute") -> np.ndarray:
    """Intervals (rows, 2) from MAPIE, conformalized on predictions ``pred_cal`` against ``y_cal``."""
    from mapie.regression import SplitConformalRegressor

    mapie = SplitConformalRegressor(PredictionPassthrough(), confidence_level=level, conformity_score=score, prefit=True)
    mapie.conformalize(pred_cal[:, None], y_cal)
    return mapie.predict_interval(pred_eval[:, None])[1][:, :, 0]


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


class ConformalAudit(Audit):
    """Split conformal prediction sets or intervals (MAPIE): coverage, size, per segment."""

    name = "conformal"
    Config = ConformalConfig
    requires = Requirements(labels="current", probabilities=True, modalities=("tabular", "image", "text"))
    # Undercoverage beyond 3 standard errors of sampling noise: evidence that current rows are not
    # exchangeable with the calibration rows (shift, or a reference that trained the model).
    default_thresholds = (Threshold(metric="conformal.coverage_shortfall_z", min=-3.0, severity="warn"),)
    description = "Coverage and size of MAPIE split-conformal prediction sets or intervals, overall and per segment."

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        cfg = self.config
        if cfg.calibration_data == "reference" and not context.reference.labelled:
            return "calibration_data: reference needs labels on the reference data"
        labelled = int(context.current.y.notna().sum())
        n_cal = int(context.reference.y.notna().sum()) if cfg.calibration_data == "reference" else int(cfg.calibration_fraction * labelled)
        needed = int(np.ceil(max(1 / (1 - cfg.confidence_level), 1 / cfg.confidence_level)))
        if n_cal < needed or labelled - (0 if cfg.calibration_data == "reference" else n_cal) < 1:
            return f"too few labelled rows: {n_cal} calibration row(s), MAPIE needs {needed} at confidence level {cfg.confidence_level:g}"
        return None

    def compute(self, context: AuditContext) -> AuditResult:
        cfg, level = self.config, self.config.confidence_level
        classification = context.task == "classification"
        cur_rows, cur_target = usable_labels(context, context.current)
        info: dict[str, str] = {"confidence_level": f"{level:g}",
                                "conformity_score": cfg.classification_score if classification else cfg.regression_score}
        if cfg.calibration_data == "current_split":
            order = context.rng("conformal.calibration_split").permutation(len(cur_rows))
            n_cal = int(cfg.calibration_fraction * len(cur_rows))
            cal_idx, eval_idx = np.sort(order[:n_cal]), np.sort(order[n_cal:])
            cal_ds, cal_pos, cal_target = context.current, cur_rows[cal_idx], cur_target[cal_idx]
            eval_pos, eval_target = cur_rows[eval_idx], cur_target[eval_idx]
            info["calibration_data"] = (
                f"conformalized on a seeded {cfg.calibration_fraction:g} of the labelled current rows ({len(cal_pos)}), "
                f"evaluated on the other {len(eval_pos)}: coverage holds by construction up to sampling error; the "
                "sizes say how uncertain the model is on current data and the segments whether coverage is even"
            )
        else:
            cal_pos, cal_target = usable_labels(context, context.reference)
            cal_ds, eval_pos, eval_target = context.reference, cur_rows, cur_target
            info["calibration_data"] = (
                f"conformalized on the labelled reference ({len(cal_pos)} rows), evaluated on all labelled current rows "
                f"({len(eval_pos)}). Valid only if the reference rows did not train the model: on training rows residuals "
                "are too small, so sets are too small and coverage falls short even without shift"
            )

        current = context.current
        if classification:
            sets = conformal_sets(cal_ds.predictions.proba[cal_pos], cal_target, current.predictions.proba[eval_pos], level,
                                  cfg.classification_score, context.random_state("conformal.mapie"))
            covered = sets[np.arange(len(eval_pos)), eval_target]
            size = sets.sum(axis=1).astype(float)
            size_name = "mean_set_size"
        else:
            pred_cal = cal_ds.predictions.labels.astype(float)[cal_pos]
            intervals = conformal_intervals(pred_cal, cal_target, current.predictions.labels.astype(float)[eval_pos],
                                            level, cfg.regression_score)
            covered = (intervals[:, 0] <= eval_target) & (eval_target <= intervals[:, 1])
            size = intervals[:, 1] - intervals[:, 0]
            size_name = "mean_width"

        n_eval, n_cal = len(eval_pos), len(cal_pos)
        se = coverage_se(level, n_eval, n_cal)
        coverage = float(covered.mean())
        metrics = {
            "coverage": coverage,
            "coverage_gap": coverage - level,
            "coverage_shortfall_z": (coverage - level) / se,
            "coverage_lower_tolerance": -3 * se,
            size_name: float(size.mean()),
            "calibration_rows": float(n_cal),
            "evaluation_rows": float(n_eval),
        }
        if classification:
            metrics["singleton_rate"] = float((size == 1).mean())
            metrics["empty_set_rate"] = float((size == 0).mean())
        else:
            metrics["median_width"] = float(np.median(size))
        info["coverage_shortfall_z"] = (
            "(coverage - level) / sqrt(level (1 - level) (1/evaluation_rows + 1/(calibration_rows + 2))): "
            "binomial noise on the evaluated rows plus the Beta-distributed coverage given the calibration rows"
        )

        segment_table = self._segments(context, eval_pos, covered, size, size_name, n_cal, metrics, info)
        rng = context.rng("conformal.sample")
        shown = np.sort(rng.choice(n_eval, size=min(cfg.sample_rows, n_eval), replace=False))
        sample = pd.DataFrame({"row": [str(i) for i in current.X.index[eval_pos[shown]]]})
        if classification:
            classes = [str(c) for c in context.model.classes]
            sample["predicted"] = [str(v) for v in current.predictions.labels[eval_pos[shown]]]
            sample["set"] = [", ".join(c for c, inside in zip(classes, row, strict=True) if inside) for row in sets[shown]]
            sample["label"] = [classes[i] for i in eval_target[shown]]
        else:
            sample["predicted"] = current.predictions.labels.astype(float)[eval_pos[shown]]
            sample["lower"], sample["upper"] = intervals[shown, 0], intervals[shown, 1]
            sample["label"] = eval_target[shown]
        sample["covered"] = covered[shown]
        if current.segments is not None:
            for column in current.segments.columns:
                sample[str(column)] = _segment_values(current.segments[column].iloc[eval_pos[shown]])

        figure = _figure(segment_table, level, size, size_name, context,
                         None if classification else (current.predictions.labels.astype(float)[eval_pos], intervals, eval_target))
        artifacts = (
            Artifact.figure("coverage", figure, "Coverage per segment against the target, and set sizes or intervals"),
            Artifact.table("segments", segment_table, "Coverage and size per segment value"),
            Artifact.table("sample", sample, "A sample of evaluated current rows with their sets or intervals"),
        )
        return AuditResult(audit=self.name, metrics=metrics, artifacts=artifacts, info=info)

    def _segments(self, context: AuditContext, eval_pos: np.ndarray, covered: np.ndarray, size: np.ndarray,
                  size_name: str, n_cal: int, metrics: dict[str, float], info: dict[str, str]) -> pd.DataFrame:
        segments, level = context.current.segments, self.config.confidence_level
        rows = []
        if segments is None or segments.shape[1] == 0:
            info["segments"] = "no segment columns configured"
        else:
            for column in segments.columns:
                # grouped by the value as it appears in metric keys (values that key_part maps alike are merged)
                values = pd.Series(_segment_values(segments[column].iloc[eval_pos]), dtype=object).map(key_part)
                counts = values.value_counts()
                top = sorted(counts.index, key=lambda v: (-counts[v], v))[: self.config.max_segment_values]
                if len(counts) > len(top):
                    info[f"segments.{key_part(column)}"] = f"{len(top)} most frequent of {len(counts)} values reported"
                for value in top:
                    mask = (values == value).to_numpy()
                    row = _segment_row(str(column), value, covered[mask], size[mask], size_name, level, n_cal)
                    prefix = f"segment.{key_part(column)}.{value}"
                    metrics.update({f"{prefix}.{k}": float(row[k]) for k in ("coverage", size_name, "rows")})
                    rows.append(row)
        overall = _segment_row("(all)", "(all)", covered, size, size_name, level, n_cal)
        return pd.DataFrame([overall, *rows])


def _segment_row(column: str, value: str, covered: np.ndarray, size: np.ndarray, size_name: str, level: float,
                 n_cal: int) -> dict[str, Any]:
    coverage, se = float(covered.mean()), coverage_se(level, len(covered), n_cal)
    return {"column": column, "value": value, "rows": len(covered), "coverage": coverage, "coverage_gap": coverage - level,
            "coverage_se": se, "coverage_shortfall_z": (coverage - level) / se, size_name: float(size.mean())}


def _segment_values(series: pd.Series) -> list[str]:
    return [MISSING if pd.isna(v) else str(v) for v in series.to_numpy(dtype=object)]


def _figure(table: pd.DataFrame, level: float, size: np.ndarray, size_name: str, context: AuditContext,
            regression: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> Figure:
    fig = Figure(figsize=(11, max(3.5, 0.3 * len(table) + 1.5)), layout="constrained")
    left, right = fig.subplots(1, 2)
    labels = [f"{c}={v}" if c != "(all)" else "all rows" for c, v in zip(table["column"], table["value"], strict=True)]
    positions = np.arange(len(table))[::-1]
    left.errorbar(table["coverage"], positions, xerr=2 * table["coverage_se"], fmt="o", color="C0", capsize=3, label="coverage ± 2 SE")
    left.axvline(level, color="C3", linestyle="--", label=f"target {level:g}")
    left.set_yticks(positions, labels)
    left.set(xlabel="empirical coverage", xlim=(max(0.0, min(table["coverage"].min(), level) - 0.15), 1.0),
             title="Coverage per segment")
    left.legend(loc="best", fontsize=7)
    if regression is None:
        counts = np.bincount(size.astype(int), minlength=len(context.model.classes) + 1)
        right.bar(np.arange(len(counts)), counts, color="C0")
        right.set(xlabel="prediction set size (classes)", ylabel="rows", title=f"Set sizes (mean {size.mean():.2f})")
        right.set_xticks(np.arange(len(counts)))
    else:
        pred, intervals, y = regression
        rng = context.rng("conformal.figure")
        shown = np.sort(rng.choice(len(pred), size=min(1000, len(pred)), replace=False))
        order = shown[np.argsort(pred[shown], kind="stable")]
        right.fill_between(pred[order], intervals[order, 0], intervals[order, 1], color="C0", alpha=0.25, label="interval")
        inside = (intervals[order, 0] <= y[order]) & (y[order] <= intervals[order, 1])
        right.scatter(pred[order][inside], y[order][inside], s=6, color="C0", label="covered")
        right.scatter(pred[order][~inside], y[order][~inside], s=10, color="C3", label="not covered")
        right.set(xlabel="prediction", ylabel="actual", title=f"Intervals (mean width {size.mean():.3g})")
        right.legend(loc="upper left", fontsize=7)
    return fig
