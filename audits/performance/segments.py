"""Where does the model fail? Performance, calibration and conformal coverage per segment, and the gaps
between segments: a fairness view when a segment column is a sensitive attribute. On every current row.

Segments are the values of the columns named in ``data.segments`` (features or not): per column, the
``max_values`` most frequent values, the rest grouped as '(other)', missing values as '(missing)'. Groups
smaller than ``min_rows`` are reported but left out of the gaps: a gap between two tiny groups is mostly noise.

Every row (a *hybrid* audit of ``audits.core.partial``). ``fit`` takes, per column, the ``tracked_values``
most frequent values of the current sample as candidates; each current partition is then counted into
additive statistics per candidate (rows of any other value into one 'untracked' slot):

- classifiers: per value and class, the rows of that true class, of that predicted class and of both (the
  confusion matrix's margins and diagonal: O(classes), not O(classes^2), per value; a label the model never
  saw, or a prediction outside its classes, has a class of its own that is never right). Per group:
  accuracy = hits / rows, selection rate = predicted-positive / rows, TPR = TP / positives and
  FPR = (predicted-positive - TP) / (rows - positives) (0 when the group has no positives / negatives, as
  fairlearn's ``normalize='true'`` confusion matrix gives; an unseen label is a negative), and any per-class
  recall, precision or F1 would follow the same way; and equal-width top-label calibration bins (rows, sum
  of confidences, rows right), from which ECE = sum_b (n_b / n) |mean confidence_b - accuracy_b|, exactly
  ``calibration.expected_calibration_error`` with ``strategy='uniform'``;
- regressors: sums of |p - y|, (p - y)^2 and p - y: MAE, RMSE = sqrt(mean square), mean residual.

``finalize`` pools the counts and keeps the ``max_values`` candidates with the most rows on every row (ties:
the smaller label first), every other row being '(other)'; groups are then the sums of their slots, so each
figure is exact over every row whatever the partitioning (ties broken by label, not by pandas' first-seen
order: deterministic in any merge order). A value outside the sample's candidates (absent from it, or past
its ``tracked_values`` most frequent) counts into '(other)' even if it would have been frequent enough on
every row: with a uniform sample of n rows, a value holding a share p of the rows is absent with probability
(1 - p)^n (p = 0.1 %, n = 20,000: 2e-9); the rows of such values are stated in ``info``. Demographic parity (difference: max - min selection rate, ratio: min / max) and the
equalized odds difference (the larger of the TPR and FPR spreads) are fairlearn's definitions applied to
the same counts, over all groups of a sensitive column (binary classifiers only).

Conformal coverage stays on the sample: MAPIE's split-conformal sets are calibrated on a seeded half of
the labelled current sample and checked on the other half, and a partition cannot tell the calibration rows
from the others, so ``fit`` computes the indicators and ``finalize`` averages them per group of the
sample's rows (``info`` says so when the sample is not every row). On data that fits one frame (sample =
every row) each figure equals fairlearn's ``MetricFrame`` on the same rows, as this audit computed it
before it ran on every row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, AuditConfig, AuditContext, AuditResult, Requirements
from audits.core.context import Dataset
from audits.core.partial import PartialAudit, State
from audits.core.result import key_part
from audits.methods.segments import labels_of

OTHER = "(other)"


class SegmentsConfig(AuditConfig):
    columns: list[str] | None = None  # default: every column in data.segments
    sensitive: list[str] = Field(default_factory=list)  # columns that are sensitive attributes: fairness metrics too
    max_values: int = Field(20, ge=2)  # most frequent values per column; the rest are grouped as '(other)'
    min_rows: int = Field(30, ge=1)  # smaller groups are reported but left out of the gaps
    bins: int = Field(10, ge=2)  # calibration bins (equal width, top-label)
    coverage: bool = True  # conformal coverage per segment (split conformal, calibrated on half the labelled rows)
    confidence_level: float = Field(0.9, gt=0, lt=1)
    # values per column taken from the current sample as candidates and counted on every row (at least max_values)
    tracked_values: int = Field(1000, ge=2, le=100_000)


def grouped(values: pd.Series, max_values: int) -> pd.Series:
    """Segment labels: the most frequent values, the rest '(other)', missing values '(missing)'."""
    labels = labels_of(values)
    keep = labels.value_counts().index[:max_values]
    return labels.where(labels.isin(keep), OTHER)


def most_frequent(labels: list[str], counts: np.ndarray, n: int) -> list[str]:
    """The ``n`` labels with the most rows (at least one), ties broken by the label: the same answer in any merge order."""
    order = sorted((-int(c), label) for label, c in zip(labels, counts, strict=True) if c > 0)
    return [label for _, label in order[:n]]


def _class_index(values: Any, classes: tuple) -> np.ndarray:
    """Each value's position among the model's classes; len(classes) for one the model does not have."""
    index = pd.Index(list(classes)).get_indexer(pd.Series(values).to_numpy())
    return np.where(index < 0, len(classes), index).astype(np.int64)


def _slots(partition: Dataset, column: str, candidates: pd.Index) -> np.ndarray:
    """Each row's candidate position; len(candidates) (the untracked slot) for any other value."""
    if partition.segments is None or column not in partition.segments.columns:
        raise ValueError(f"segment column {column!r} is missing from a {partition.name} partition")
    index = candidates.get_indexer(labels_of(partition.segments[column]).to_numpy())
    return np.where(index < 0, len(candidates), index).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Additive statistics per slot (candidate values, then the untracked slot)


def _empty_column(task: str, slots: int, n_classes: int, bins: int, proba: bool) -> State:
    out: State = {"rows": np.zeros(slots, dtype=np.int64)}
    if task == "classification":
        out["true"] = np.zeros((slots, n_classes + 1), dtype=np.int64)  # the model's classes, then anything else
        out["predicted"] = np.zeros((slots, n_classes + 1), dtype=np.int64)
        out["hits"] = np.zeros((slots, n_classes), dtype=np.int64)  # rows of class k predicted as k
        if proba:
            out["bin_rows"] = np.zeros((slots, bins), dtype=np.int64)
            out["bin_confidence"] = np.zeros((slots, bins), dtype=np.float64)
            out["bin_correct"] = np.zeros((slots, bins), dtype=np.int64)
    else:
        for name in ("abs_sum", "sq_sum", "residual_sum"):
            out[name] = np.zeros(slots, dtype=np.float64)
    return out


def _column_statistics(slot: np.ndarray, partition: Dataset, context: AuditContext, slots: int, bins: int) -> State:
    """The statistics of one partition's rows, by slot."""
    out: State = {"rows": np.bincount(slot, minlength=slots).astype(np.int64)}
    if context.task == "classification":
        classes = context.model.classes
        k = len(classes) + 1
        truth = _class_index(partition.y, classes)
        predicted = _class_index(partition.predictions.labels, classes)
        out["true"] = np.bincount(slot * k + truth, minlength=slots * k).reshape(slots, k).astype(np.int64)
        out["predicted"] = np.bincount(slot * k + predicted, minlength=slots * k).reshape(slots, k).astype(np.int64)
        hit = (truth == predicted) & (truth < len(classes))
        out["hits"] = np.bincount(slot[hit] * k + truth[hit], minlength=slots * k).reshape(slots, k)[:, :-1].astype(np.int64)
        proba = partition.predictions.proba
        if proba is not None:
            from audits.methods.probabilities import assign_bins, bin_edges

            confidence = np.asarray(proba.max(axis=1), dtype=float)
            correct = (proba.argmax(axis=1) == truth).astype(np.int64)  # top label = classes[argmax]
            cell = slot * bins + assign_bins(confidence, bin_edges(confidence, bins, "uniform"))
            out["bin_rows"] = np.bincount(cell, minlength=slots * bins).reshape(slots, bins).astype(np.int64)
            out["bin_confidence"] = np.bincount(cell, weights=confidence, minlength=slots * bins).reshape(slots, bins)
            out["bin_correct"] = np.bincount(cell, weights=correct, minlength=slots * bins).reshape(slots, bins).astype(np.int64)
    else:
        residual = partition.predictions.labels.astype(float) - partition.y.to_numpy(dtype=float)
        out["abs_sum"] = np.bincount(slot, weights=np.abs(residual), minlength=slots)
        out["sq_sum"] = np.bincount(slot, weights=residual ** 2, minlength=slots)
        out["residual_sum"] = np.bincount(slot, weights=residual, minlength=slots)
    return out


def _add(a: State, b: State) -> State:
    return {name: a[name] + b[name] for name in a}


def _group_statistics(column: State, groups: list[list[int]]) -> list[State]:
    """The statistics of each group: the sums of its slots."""
    return [{name: values[slots].sum(axis=0) for name, values in column.items()} for slots in groups]


def group_figures(stats: State, task: str, n_classes: int) -> dict[str, float]:
    """One group's metrics from its sums (see the module docstring); the same columns as the one-frame MetricFrame had."""
    rows = stats["rows"]
    if task == "regression":
        return {"rmse": float(np.sqrt(stats["sq_sum"] / rows)), "mae": float(stats["abs_sum"] / rows),
                "mean_residual": float(stats["residual_sum"] / rows)}
    out = {"accuracy": float(stats["hits"].sum() / rows)}
    if "bin_rows" in stats:
        counts = stats["bin_rows"]
        filled = counts > 0
        gap = np.abs(stats["bin_confidence"][filled] / counts[filled] - stats["bin_correct"][filled] / counts[filled])
        out["ece"] = float(np.dot(counts[filled] / counts.sum(), gap))
    if n_classes == 2:  # positive = classes[1]; a label the model never saw is a negative
        positives, selected, tp = stats["true"][1], stats["predicted"][1], stats["hits"][1]
        negatives = rows - positives
        out["selection_rate"] = float(selected / rows)
        out["tpr"] = float(tp / positives) if positives else 0.0
        out["fpr"] = float((selected - tp) / negatives) if negatives else 0.0
    return out


class SegmentsAudit(PartialAudit):
    """Per-segment performance, calibration and coverage, the gaps between segments, fairness metrics.

    Hybrid: the candidate values of each column and the conformal coverage come from the current sample; every
    current row is counted into its value's class counts, calibration bins or error sums.
    """

    name = "segments"
    question = "behaviour"
    metric_keys = (
        "*.*.{accuracy,coverage,ece,fpr,tpr,mae,mean_residual,rmse,rows,selection_rate}",
        "max_gap.{accuracy,coverage,ece,fpr,tpr,mae,mean_residual,rmse,selection_rate}",
        "fairness.*.{demographic_parity_difference,demographic_parity_ratio,equalized_odds_difference}",
    )
    mode = "hybrid"
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

    def _columns(self, context: AuditContext) -> list[str]:
        return self.config.columns if self.config.columns is not None else list(context.current.segments.columns)

    def fit(self, context: AuditContext) -> dict:
        """Per column: the candidate values (the sample's most frequent) and the sample's labels; the coverage indicators."""
        cfg: SegmentsConfig = self.config
        tracked = max(cfg.tracked_values, cfg.max_values)
        candidates, sample_labels = {}, {}
        for column in self._columns(context):
            labels = labels_of(context.current.segments[column])
            counts = labels.value_counts()
            candidates[column] = most_frequent(list(counts.index), counts.to_numpy(), tracked)
            sample_labels[column] = labels.to_numpy()
        return {"candidates": candidates, "sample_labels": sample_labels,
                "covered": self._coverage(context, cfg) if cfg.coverage else None}

    def init(self, context: AuditContext, fitted: dict) -> State:
        proba = context.current.predictions.proba is not None
        n_classes = len(context.model.classes or ())
        return {"rows": 0, "unlabelled_rows": 0, "columns": {
            column: {"values": list(values),
                     **_empty_column(context.task, len(values) + 1, n_classes, self.config.bins, proba)}
            for column, values in fitted["candidates"].items()}}

    def update(self, state: State, partition: Dataset, context: AuditContext, fitted: dict) -> State:
        if partition.name != "current" or len(partition) == 0:
            return state  # segments are audited on current data only
        if partition.y is None:
            return {**state, "unlabelled_rows": state["unlabelled_rows"] + len(partition)}
        columns = {}
        for column, values in fitted["candidates"].items():
            slot = _slots(partition, column, pd.Index(values))
            old = {k: v for k, v in state["columns"][column].items() if k != "values"}
            columns[column] = {"values": list(values),
                               **_add(old, _column_statistics(slot, partition, context, len(values) + 1, self.config.bins))}
        return {"rows": state["rows"] + len(partition), "unlabelled_rows": state["unlabelled_rows"], "columns": columns}

    def merge(self, a: State, b: State) -> State:
        columns = {}
        for column, x in a["columns"].items():
            y = b["columns"][column]
            if list(x["values"]) != list(y["values"]):
                raise ValueError(f"segment column {column!r}: states fitted on different candidate values")
            columns[column] = {"values": list(x["values"]),
                               **_add({k: v for k, v in x.items() if k != "values"}, {k: v for k, v in y.items() if k != "values"})}
        return {"rows": a["rows"] + b["rows"], "unlabelled_rows": a["unlabelled_rows"] + b["unlabelled_rows"], "columns": columns}

    def finalize(self, state: State, context: AuditContext, fitted: dict, population: dict[str, int]) -> AuditResult:
        cfg: SegmentsConfig = self.config
        if state["rows"] == 0:
            raise ValueError("no labelled current rows reached the segments audit")
        columns = self._columns(context)
        n_classes = len(context.model.classes or ())
        covered = fitted["covered"]

        metrics: dict[str, float] = {}
        tables, gap_rows, untracked = [], [], {}
        for column in columns:
            column_state = state["columns"][column]
            values = list(column_state["values"])
            statistics = {k: v for k, v in column_state.items() if k != "values"}
            keep = most_frequent(values, statistics["rows"][:-1], cfg.max_values)
            group_of = [value if value in keep else OTHER for value in values] + [OTHER]  # slot -> group
            names = sorted({g for g, rows in zip(group_of, statistics["rows"], strict=True) if rows > 0})
            stats = _group_statistics(statistics, [[i for i, g in enumerate(group_of) if g == name] for name in names])
            by_group = pd.DataFrame([group_figures(s, context.task, n_classes) for s in stats], index=pd.Index(names))
            by_group["rows"] = np.array([int(s["rows"]) for s in stats], dtype=np.int64)
            untracked[column] = int(statistics["rows"][-1])
            if covered is not None:  # mean over the evaluated sample rows of each group (NaN rows calibrated the sets)
                sample_groups = pd.Series(fitted["sample_labels"][column]).where(
                    lambda s: s.isin(keep), OTHER).to_numpy()
                by_group["coverage"] = covered.groupby(sample_groups).mean().reindex(by_group.index).to_numpy()
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
                metrics.update(_fairness(context, column, by_group))
            table = by_group.reset_index(names="segment")
            table.insert(0, "column", column)
            tables.append(table)

        per_group = pd.concat(tables, ignore_index=True)
        gaps = pd.DataFrame(gap_rows)
        primary = "accuracy" if context.task == "classification" else "rmse"
        metrics["max_gap." + primary] = float(np.nanmax(gaps.loc[gaps["metric"] == primary, "gap"])) \
            if (gaps["metric"] == primary).any() and gaps.loc[gaps["metric"] == primary, "gap"].notna().any() else float("nan")
        sample_rows, every_row = len(context.current), state["rows"] == len(context.current)
        info = {
            "columns": ", ".join(columns),
            "sensitive": ", ".join(cfg.sensitive) or "none",
            "rows": f"{state['rows']:,} labelled current row(s), every one: rows, class counts, calibration bins "
                    "and error sums per value, exact",
            "values": f"the {cfg.max_values} most frequent on every row, among the "
                      f"{max(cfg.tracked_values, cfg.max_values)} most frequent of the current sample; the rest '{OTHER}'",
            "coverage": ("split conformal (MAPIE) calibrated on a seeded half of the labelled current rows, "
                         "coverage on the other half" + ("" if every_row else f" (of the {sample_rows:,}-row sample)"))
                        if covered is not None else "off",
        }
        if any(untracked.values()):
            info["untracked"] = "rows of values absent from the sample's candidates, counted as '(other)': " + ", ".join(
                f"{c}: {n:,}" for c, n in untracked.items() if n)
        if state["unlabelled_rows"]:
            info["unlabelled"] = f"{state['unlabelled_rows']:,} current row(s) without labels, left out"
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("by_segment", per_group, "Metrics per segment (current data)"),
                Artifact.table("gaps", gaps, f"Largest gap between segments of at least {cfg.min_rows} rows"),
                _figure(per_group, primary, "coverage" if covered is not None else None, cfg.confidence_level),
            ),
            info=info,
        )

    @staticmethod
    def _coverage(context: AuditContext, cfg: SegmentsConfig) -> pd.Series | None:
        """Whether each evaluated current row's conformal set/interval covers its label (NaN for calibration rows)."""
        from audits.methods.conformal_sets import coverage_indicator

        return coverage_indicator(context, cfg.confidence_level, context.rng("segments.coverage"))


def _fairness(context: AuditContext, column: str, by_group: pd.DataFrame) -> dict[str, float]:
    """fairlearn's demographic parity difference and ratio and equalized odds difference ('between_groups',
    'worst_case'), over every group of the column, from the per-group selection rates, TPRs and FPRs."""
    if context.task != "classification" or len(context.model.classes) != 2:
        return {}
    rates, tpr, fpr = (by_group[m].to_numpy(dtype=float) for m in ("selection_rate", "tpr", "fpr"))
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.float64(rates.min()) / np.float64(rates.max())
    return {
        f"fairness.{key_part(column)}.demographic_parity_difference": float(rates.max() - rates.min()),
        f"fairness.{key_part(column)}.demographic_parity_ratio": float(ratio),
        f"fairness.{key_part(column)}.equalized_odds_difference": float(max(tpr.max() - tpr.min(), fpr.max() - fpr.min())),
    }


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
