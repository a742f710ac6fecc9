"""Where does the model fail? Performance, calibration and conformal coverage per segment, and the gaps
between segments: a fairness view when a segment column is a sensitive attribute.

Segments are the values of the columns named in ``data.segments`` (features or not). Per-group metrics
come from fairlearn's ``MetricFrame``; the fairness summaries (demographic parity, equalized odds) are
fairlearn's own. Groups smaller than ``min_rows`` are reported but left out of the gaps: a gap between
two tiny groups is mostly noise.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements
from audits.core.result import key_part

OTHER = "(other)"
MISSING = "(missing)"


class SegmentsConfig(AuditConfig):
    columns: list[str] | None = None  # default: every column in data.segments
    sensitive: list[str] = Field(default_factory=list)  # columns that are sensitive attributes: fairness metrics too
    max_values: int = Field(20, ge=2)  # most frequent values per column; the rest are grouped as '(other)'
    min_rows: int = Field(30, ge=1)  # smaller groups are reported but left out of the gaps
    bins: int = Field(10, ge=2)  # calibration bins (equal width, top-label)
    coverage: bool = True  # conformal coverage per segment (split conformal, calibrated on half the labelled rows)
    confidence_level: float = Field(0.9, gt=0, lt=1)


def grouped(values: pd.Series, max_values: int) -> pd.Series:
    """Segment labels: the most frequent values, the rest '(other)', missing values '(missing)'."""
    labels = values.astype(object).where(values.notna(), MISSING).astype(str)
    keep = labels.value_counts().index[:max_values]
    return labels.where(labels.isin(keep), OTHER)


def _top_label_ece(y_true, y_pred, confidence=None, top_label=None, bins=10):
    """Top-label ECE of a group (fairlearn passes per-row arrays sliced to the group; they must be 1-D)."""
    from audits.uncertainty.calibration import expected_calibration_error

    correct = np.asarray(top_label, dtype=object) == np.asarray(y_true, dtype=object)
    return expected_calibration_error(np.asarray(confidence, dtype=float), correct.astype(float), bins, "uniform")[0]


class SegmentsAudit(Audit):
    """Per-segment performance, calibration and coverage, the gaps between segments, fairness metrics."""

    name = "segments"
    Config = SegmentsConfig
    requires = Requirements(labels="current", modalities=("tabular", "image", "text"))
    description = "Performance, calibration and conformal coverage per segment; gaps and fairness metrics."

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        available = [] if context.current.segments is None else list(context.current.segments.columns)
        wanted = self.config.columns if self.config.columns is not None else available
        if not wanted:
            return "no segment columns: name them in data.segments"
        missing = [c for c in wanted + list(self.config.sensitive) if c not in available]
        if missing:
            return f"segment column(s) {missing} are not in data.segments ({available})"
        return None

    def compute(self, context: AuditContext) -> AuditResult:
        from fairlearn.metrics import MetricFrame

        cfg: SegmentsConfig = self.config
        ds = context.current
        columns = cfg.columns if cfg.columns is not None else list(ds.segments.columns)
        y, pred = ds.y.to_numpy(), ds.predictions.labels
        metrics_fns, extra = self._metric_functions(context, cfg)
        covered = self._coverage(context, cfg) if cfg.coverage else None

        metrics: dict[str, float] = {}
        tables, gap_rows = [], []
        for column in columns:
            groups = grouped(ds.segments[column], cfg.max_values)
            frame = MetricFrame(metrics=metrics_fns, y_true=y, y_pred=pred, sensitive_features=groups.to_numpy(),
                                **extra)
            by_group = frame.by_group.copy()
            by_group["rows"] = groups.value_counts().reindex(by_group.index).to_numpy()
            if covered is not None:  # mean over the evaluated rows of each group (NaN rows calibrated the sets)
                by_group["coverage"] = covered.groupby(groups.to_numpy()).mean().reindex(by_group.index).to_numpy()
            large = by_group[by_group["rows"] >= cfg.min_rows]
            for metric in [c for c in by_group.columns if c != "rows"]:
                gap = float(large[metric].max() - large[metric].min()) if len(large) >= 2 else float("nan")
                metrics[f"{key_part(column)}.gap.{metric}"] = gap
                gap_rows.append({"column": column, "metric": metric, "gap": gap, "groups_compared": len(large),
                                 "worst_group": _worst(large[metric], metric) if len(large) >= 2 else ""})
            for group, row in by_group.iterrows():
                for metric, value in row.items():
                    metrics[f"{key_part(column)}.{key_part(group)}.{metric}"] = float(value)
            if column in cfg.sensitive:
                metrics.update(self._fairness(context, column, groups, y, pred))
            table = by_group.reset_index(names="segment")
            table.insert(0, "column", column)
            tables.append(table)

        per_group = pd.concat(tables, ignore_index=True)
        gaps = pd.DataFrame(gap_rows)
        primary = "accuracy" if context.task == "classification" else "rmse"
        metrics["max_gap." + primary] = float(np.nanmax(gaps.loc[gaps["metric"] == primary, "gap"])) \
            if (gaps["metric"] == primary).any() and gaps.loc[gaps["metric"] == primary, "gap"].notna().any() else float("nan")
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("by_segment", per_group, "Metrics per segment (current data)"),
                Artifact.table("gaps", gaps, f"Largest gap between segments of at least {cfg.min_rows} rows"),
                _figure(per_group, primary, "coverage" if covered is not None else None, cfg.confidence_level),
            ),
            info={
                "columns": ", ".join(columns),
                "sensitive": ", ".join(cfg.sensitive) or "none",
                "coverage": "split conformal (MAPIE) calibrated on a seeded half of the labelled current rows, "
                            "coverage on the other half" if covered is not None else "off",
            },
        )

    @staticmethod
    def _metric_functions(context: AuditContext, cfg: SegmentsConfig) -> tuple[dict, dict]:
        from sklearn import metrics as skm

        if context.task == "regression":
            return {
                "rmse": skm.root_mean_squared_error,
                "mae": skm.mean_absolute_error,
                "mean_residual": lambda y, p: float(np.mean(np.asarray(p, float) - np.asarray(y, float))),
            }, {}
        classes = context.model.classes
        functions = {"accuracy": skm.accuracy_score}
        params: dict = {}
        proba = context.current.predictions.proba
        if proba is not None:
            functions["ece"] = partial(_top_label_ece, bins=cfg.bins)
            top_label = np.asarray(classes, dtype=object)[proba.argmax(axis=1)]
            params = {"sample_params": {"ece": {"confidence": proba.max(axis=1), "top_label": top_label}}}
        if len(classes) == 2:
            from fairlearn.metrics import false_positive_rate, selection_rate, true_positive_rate

            positive = classes[1]
            functions["selection_rate"] = partial(selection_rate, pos_label=positive)
            functions["tpr"] = partial(true_positive_rate, pos_label=positive)
            functions["fpr"] = partial(false_positive_rate, pos_label=positive)
        return functions, params

    @staticmethod
    def _fairness(context: AuditContext, column: str, groups: pd.Series, y, pred) -> dict[str, float]:
        if context.task != "classification" or len(context.model.classes) != 2:
            return {}
        from fairlearn.metrics import (
            demographic_parity_difference,
            demographic_parity_ratio,
            equalized_odds_difference,
        )

        positive = context.model.classes[1]
        yb, pb = (np.asarray(y) == positive).astype(int), (np.asarray(pred) == positive).astype(int)
        g = groups.to_numpy()
        return {
            f"fairness.{key_part(column)}.demographic_parity_difference": float(demographic_parity_difference(yb, pb, sensitive_features=g)),
            f"fairness.{key_part(column)}.demographic_parity_ratio": float(demographic_parity_ratio(yb, pb, sensitive_features=g)),
            f"fairness.{key_part(column)}.equalized_odds_difference": float(equalized_odds_difference(yb, pb, sensitive_features=g)),
        }

    @staticmethod
    def _coverage(context: AuditContext, cfg: SegmentsConfig) -> pd.Series | None:
        """Whether each evaluated current row's conformal set/interval covers its label (NaN for calibration rows)."""
        from audits.uncertainty.conformal import coverage_indicator

        return coverage_indicator(context, cfg.confidence_level, context.rng("segments.coverage"))


def _worst(values: pd.Series, metric: str) -> str:
    lower_is_worse = metric in {"accuracy", "coverage", "tpr", "selection_rate"}
    return str(values.idxmin() if lower_is_worse else values.idxmax())


def _figure(per_group: pd.DataFrame, primary: str, coverage: str | None, level: float) -> Artifact:
    panels = [primary] + ([coverage] if coverage else [])
    fig = Figure(figsize=(6 * len(panels), 0.3 * len(per_group) + 1.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    labels = [f"{c}={s} (n={int(n)})" for c, s, n in zip(per_group["column"], per_group["segment"], per_group["rows"], strict=True)]
    positions = np.arange(len(per_group))[::-1]
    for ax, metric in zip(axes, panels, strict=True):
        ax.barh(positions, per_group[metric].to_numpy(dtype=float), color="#1f77b4")
        ax.set_yticks(positions, labels, fontsize=8)
        ax.set_xlabel(metric)
        if metric == "coverage":
            ax.axvline(level, color="red", linestyle="--", linewidth=1, label=f"target {level:g}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{metric} per segment")
    return Artifact.figure("segments", fig, "Per-segment metrics on current data")
