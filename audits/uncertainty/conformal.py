"""Conformal prediction with MAPIE: do the model's prediction sets (classifiers) or intervals
(regressors) reach their stated coverage on current data, overall and per segment?

Split conformal prediction (MAPIE's ``SplitConformalClassifier`` / ``SplitConformalRegressor`` with
``prefit=True``) guarantees coverage >= the confidence level on rows exchangeable with the rows it
was conformalized on. Where those rows come from decides what the audit measures:

- ``held_out`` (default): the holdout (``data.holdout``, labelled rows the model did not train on)
  conformalizes and all labelled current rows are evaluated: whether the uncertainty the model showed on
  unseen rows of its own distribution carries over to current data (undercoverage = shift). Without a
  holdout, ``current_split``, and the result says so.
- ``current_split``: a seeded fraction of the labelled current rows conformalizes, the rest
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

Every row (a *hybrid* audit, ``audits.core.partial``). ``fit`` conformalizes once, on the sample the context
holds, on exactly the rows a one-frame run calibrates on: the seeded ``calibration_fraction`` of the sample's
labelled current rows (``current_split``) or the sample's labelled reference (``reference``). The fitted MAPIE
object then gives each labelled current row of every partition its set or interval (a row's set depends only on
its own probabilities and the fitted threshold, so it equals MAPIE's on the whole frame), and ``update`` adds up
counts: current rows, unlabelled rows, evaluated rows, covered rows, the sum of set sizes or interval widths, the
set-size histogram (empty sets and singletons are its bins 0 and 1), the interval widths' distribution, and the
same counts per segment value. Every figure in the metrics is a ratio of these counts, exact on every row.

In ``current_split`` the evaluation rows are "every labelled current row but the calibration rows". A partition
cannot tell which of its rows the sample drew (its rows carry no global id, and the split is a seeded permutation
of the sample, not a function of the row), so every labelled current row is tallied and ``finalize`` subtracts the
calibration rows' own tallies, which ``fit`` computed on the sample with the same fitted object. The sample's rows
are rows of the data, so the difference is exactly the tally of every other row; on data that fits one frame it is
today's evaluation half, to the last digit of the counts. The calibration rows stay a sample (a few thousand):
their number is what ``coverage_se``'s 1/(n_cal + 2) term counts, and with millions of evaluated rows that term
dominates the standard error.

Segments: the values counted per column are the ``tracked_segment_values`` most frequent on the sample's current
rows (grouped by the value as it appears in metric keys, as before); rows of any other value are pooled in one
"other" slot of the state (counted, not reported). The ``max_segment_values`` most frequent of the counted values,
by their every-row evaluated count, are reported. ``median_width`` is exact while the data has at most
``exact_width_values`` distinct widths (always, for the ``absolute`` score: one width), beyond that from log-spaced
bins within ``WIDTH_RELATIVE_ERROR`` relative error. What stays on the sample: the conformalization itself, the
table of example rows and, for regressors, the scatter of intervals (both drawn from the sample's evaluation rows);
the coverage-per-segment figure and the set-size histogram come from the every-row counts.
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
from audits.methods.conformal_sets import (
    conformalized_classifier,
    conformalized_regressor,
    coverage_se,
    predicted_intervals,
    predicted_sets,
    usable_labels,
)
from audits.methods.segments import labels_of

OTHER = "(other)"  # the state's slot for segment values not tracked (not reported)
WIDTH_RELATIVE_ERROR = 5e-4  # of median_width, once the widths are binned
_LOG_GAMMA = float(np.log((1 + WIDTH_RELATIVE_ERROR) / (1 - WIDTH_RELATIVE_ERROR)))
_ZERO_BIN = int(np.iinfo(np.int64).min)  # the bin of zero widths


class ConformalConfig(AuditConfig):
    confidence_level: float = Field(0.9, gt=0, lt=1)
    classification_score: Literal["lac", "aps", "raps", "top_k"] = "lac"  # MAPIE conformity score for classifiers
    regression_score: Literal["absolute", "gamma"] = "absolute"  # for regressors (both need only the predictions)
    # held_out: the holdout (data.holdout: labelled rows the model did not train on) conformalizes and every labelled
    # current row is evaluated, which tests whether the model's uncertainty carries over to current data; without a
    # holdout, current_split (said so). current_split or reference: those, whatever else there is
    calibration_data: Literal["held_out", "current_split", "reference"] = "held_out"
    calibration_fraction: float = Field(0.5, gt=0, lt=1)  # current_split: share of labelled current rows that conformalize
    max_segment_values: int = Field(20, ge=1, le=200)  # most frequent values per segment column
    sample_rows: int = Field(20, ge=1, le=1000)  # rows shown with their sets or intervals
    # every row: values per segment column counted in the state (the most frequent on the sample), the rest pooled
    tracked_segment_values: int = Field(1000, ge=1, le=100_000)
    # every row: distinct interval widths kept exactly for median_width; beyond, log bins (WIDTH_RELATIVE_ERROR)
    exact_width_values: int = Field(20_000, ge=1, le=1_000_000)


class ConformalAudit(PartialAudit):
    """Split conformal prediction sets or intervals (MAPIE): coverage, size, per segment.

    Hybrid: conformalized on the sample, every labelled current row's set or interval tallied (see the module)."""

    name = "conformal"
    imports = ("mapie.classification", "mapie.regression")  # imported when it runs (audits.core.audit)
    question = "certainty"
    metric_keys = (
        "coverage", "coverage_gap", "coverage_lower_tolerance", "coverage_shortfall_z", "calibration_rows",
        "evaluation_rows", "mean_set_size", "singleton_rate", "empty_set_rate", "mean_width", "median_width",
        "segment.*.*.{coverage,mean_set_size,mean_width,rows}",
    )
    mode = "hybrid"
    Config = ConformalConfig
    requires = Requirements(labels="current", probabilities=True, modalities=("tabular", "image", "text"))
    # Undercoverage beyond 3 standard errors of sampling noise: evidence that current rows are not
    # exchangeable with the calibration rows (shift, or a reference that trained the model).
    default_thresholds = (Threshold(metric="coverage_shortfall_z", min=-3.0, severity="warn"),)
    description = "Coverage and size of MAPIE split-conformal prediction sets or intervals, overall and per segment."

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        cfg = self.config
        mode = self.calibration_mode(context)
        if mode == "reference" and not context.reference.labelled:
            return "calibration_data: reference needs labels on the reference data"
        labelled = int(context.current.y.notna().sum())
        n_cal = (int(context.dataset(mode).y.notna().sum()) if mode != "current_split"
                 else int(cfg.calibration_fraction * labelled))
        needed = int(np.ceil(max(1 / (1 - cfg.confidence_level), 1 / cfg.confidence_level)))
        if n_cal < needed or labelled - (0 if mode != "current_split" else n_cal) < 1:
            return f"too few labelled rows: {n_cal} calibration row(s), MAPIE needs {needed} at confidence level {cfg.confidence_level:g}"
        return None

    def calibration_mode(self, context: AuditContext) -> str:
        """The rows that conformalize: held_out means the holdout when there is one, else a split of current."""
        mode = self.config.calibration_data
        if mode == "held_out":
            holdout = context.holdout
            return "holdout" if holdout is not None and holdout.labelled and len(holdout) else "current_split"
        return mode

    # -----------------------------------------------------------------------------------------
    # On the sample

    def fit(self, context: AuditContext) -> dict[str, Any]:
        """Conformalize on the rows a one-frame run calibrates on; in ``current_split``, also tally the calibration rows
        themselves (``finalize`` takes them out of the every-row tally); the segment values to count."""
        cfg, level = self.config, self.config.confidence_level
        classification = context.task == "classification"
        current = context.current
        cur_rows, cur_target = usable_labels(context, current)
        mode = self.calibration_mode(context)
        if mode == "current_split":
            order = context.rng("conformal.calibration_split").permutation(len(cur_rows))
            n_cal = int(cfg.calibration_fraction * len(cur_rows))
            cal_idx, eval_idx = np.sort(order[:n_cal]), np.sort(order[n_cal:])
            cal_ds, cal_pos, cal_target = current, cur_rows[cal_idx], cur_target[cal_idx]
            eval_pos, eval_target = cur_rows[eval_idx], cur_target[eval_idx]
        else:
            cal_ds = context.dataset(mode)
            cal_pos, cal_target = usable_labels(context, cal_ds)
            eval_pos, eval_target = cur_rows, cur_target
        if classification:
            mapie = conformalized_classifier(cal_ds.predictions.proba[cal_pos], cal_target, level, cfg.classification_score,
                                             context.random_state("conformal.mapie"))
        else:
            mapie = conformalized_regressor(cal_ds.predictions.labels.astype(float)[cal_pos], cal_target, level,
                                            cfg.regression_score)
        segments = current.segments
        columns = [] if segments is None else list(segments.columns)
        keep = max(cfg.tracked_segment_values, cfg.max_segment_values)
        tracked = []
        for column in columns:
            # grouped by the value as it appears in metric keys (values that key_part maps alike are merged)
            counts = pd.Series(_segment_values(segments[column]), dtype=object).map(key_part).value_counts()
            tracked.append(pd.Index(sorted(counts.index, key=lambda v, c=counts: (-c[v], v))[:keep], dtype=object))
        fitted = {"mapie": mapie, "classification": classification, "n_cal": len(cal_pos),
                  "n_classes": len(context.model.classes) if classification else 0, "columns": columns, "tracked": tracked,
                  "sample_eval": (eval_pos, eval_target), "calibration_tally": None, "mode": mode}
        if mode == "current_split":
            fitted["calibration_tally"] = self._tally(self.init(context, fitted), current, cal_pos, cal_target, fitted)
        return fitted

    # -----------------------------------------------------------------------------------------
    # Every row

    def init(self, context: AuditContext, fitted: dict[str, Any]) -> State:
        segments = [{"rows": np.zeros(len(values) + 1, dtype=np.int64), "covered": np.zeros(len(values) + 1, dtype=np.int64),
                     "empty": np.zeros(len(values) + 1, dtype=np.int64), "size_sum": np.zeros(len(values) + 1)}
                    for values in fitted["tracked"]]
        state: State = {"rows": 0, "unlabelled": 0, "evaluated": 0, "covered": 0, "size_sum": 0.0, "segments": segments}
        if fitted["classification"]:
            state["sizes"] = np.zeros(fitted["n_classes"] + 1, dtype=np.int64)
        else:
            state["widths"] = _width_sketch(np.zeros(0), self.config.exact_width_values)
        return state

    def update(self, state: State, partition: Dataset, context: AuditContext, fitted: dict[str, Any]) -> State:
        if partition.name != "current" or len(partition) == 0:
            return state
        if partition.y is None:
            positions, target = np.zeros(0, dtype=np.int64), np.zeros(0)
        else:
            positions, target = usable_labels(context, partition)
        part = self._tally(self.init(context, fitted), partition, positions, target, fitted)
        part["rows"], part["unlabelled"] = len(partition), len(partition) - len(positions)
        return self.merge(state, part)

    def _tally(self, state: State, ds: Dataset, positions: np.ndarray, target: np.ndarray, fitted: dict[str, Any]) -> State:
        """``state`` (empty) with the rows at ``positions`` of ``ds`` (labels ``target``) evaluated: covered or not, the
        size of their set or the width of their interval, per segment value."""
        if len(positions) == 0:
            return state
        if fitted["classification"]:
            sets = predicted_sets(fitted["mapie"], ds.predictions.proba[positions])
            covered = sets[np.arange(len(positions)), target]
            size = sets.sum(axis=1).astype(np.int64)
            state["sizes"] = np.bincount(size, minlength=fitted["n_classes"] + 1).astype(np.int64)
        else:
            intervals = predicted_intervals(fitted["mapie"], ds.predictions.labels.astype(float)[positions])
            covered = (intervals[:, 0] <= target) & (target <= intervals[:, 1])
            size = intervals[:, 1] - intervals[:, 0]
            state["widths"] = _width_sketch(size, self.config.exact_width_values)
        state["evaluated"], state["covered"] = len(positions), int(covered.sum())
        state["size_sum"] = float(size.sum())
        size = size.astype(float)
        if fitted["columns"] and ds.segments is None:
            raise ValueError(f"the sample has segment columns {fitted['columns']}; these {ds.name} rows have none")
        for j, column in enumerate(fitted["columns"]):
            slots = _segment_slots(ds.segments[column].iloc[positions], fitted["tracked"][j])
            length = len(fitted["tracked"][j]) + 1
            state["segments"][j] = {"rows": np.bincount(slots, minlength=length).astype(np.int64),
                                    "covered": np.bincount(slots[covered], minlength=length).astype(np.int64),
                                    "empty": np.bincount(slots[size == 0], minlength=length).astype(np.int64),
                                    "size_sum": np.bincount(slots, weights=size, minlength=length)}
        return state

    def merge(self, a: State, b: State) -> State:
        return _combined(a, b, 1, self.config.exact_width_values)

    # -----------------------------------------------------------------------------------------
    # The result

    def finalize(self, state: State, context: AuditContext, fitted: dict[str, Any], population: dict[str, int]) -> AuditResult:
        cfg, level = self.config, self.config.confidence_level
        classification = fitted["classification"]
        n_cal, (sample_pos, sample_target) = fitted["n_cal"], fitted["sample_eval"]
        everything = population.get("current", len(context.current)) == len(context.current)
        seen = f"{state['rows']:,} current rows, {state['rows'] - state['unlabelled']:,} with a usable label"
        mode = fitted["mode"]
        if mode == "current_split":
            calibration = fitted["calibration_tally"]
            if state["evaluated"] < calibration["evaluated"]:
                raise ValueError(f"the {calibration['evaluated']} calibration rows of the sample were not among the "
                                 f"{state['evaluated']} labelled current rows reduced: the sample is not a sample of these rows")
            state = _combined(state, calibration, -1, cfg.exact_width_values)
            of = "" if everything else " of the sample"
            info = {"calibration_data": (
                f"conformalized on a seeded {cfg.calibration_fraction:g} of the labelled current rows{of} ({n_cal}), "
                f"evaluated on the other {state['evaluated']}"
                + ("" if everything else f" (every labelled current row but those: {seen}; each row tallied, the "
                   "calibration rows' own tallies subtracted)")
                + ": coverage holds by construction up to sampling error; the sizes say how uncertain the model is on "
                "current data and the segments whether coverage is even")}
        elif mode == "holdout":
            info = {"calibration_data": (
                f"conformalized on the holdout ({n_cal} labelled rows the model did not train on), evaluated on all "
                f"labelled current rows ({state['evaluated']}" + ("" if everything else f", every one: {seen}")
                + "): undercoverage means the model's uncertainty on the holdout does not carry over to current data")}
        else:
            info = {"calibration_data": (
                f"conformalized on the labelled reference{'' if everything else ' of the sample'} ({n_cal} rows), "
                f"evaluated on all labelled current rows ({state['evaluated']}"
                + ("" if everything else f", every one: {seen}") + "). Valid only if the reference rows did not train "
                "the model: on training rows residuals are too small, so sets are too small and coverage falls short "
                "even without shift")}
        if mode == "current_split" and cfg.calibration_data == "held_out":
            info["calibration_data"] += ("; there is no holdout (data.holdout): with one, it would conformalize and every "
                                         "labelled current row would be evaluated")
        info = {"confidence_level": f"{level:g}",
                "conformity_score": cfg.classification_score if classification else cfg.regression_score, **info}

        n_eval = state["evaluated"]
        se = coverage_se(level, n_eval, n_cal)
        coverage = state["covered"] / n_eval
        size_name = "mean_set_size" if classification else "mean_width"
        mean_size = state["size_sum"] / n_eval
        metrics = {
            "coverage": coverage,
            "coverage_gap": coverage - level,
            "coverage_shortfall_z": (coverage - level) / se,
            "coverage_lower_tolerance": -3 * se,
            size_name: mean_size,
            "calibration_rows": float(n_cal),
            "evaluation_rows": float(n_eval),
        }
        if classification:
            metrics["singleton_rate"] = float(state["sizes"][1] / n_eval)
            metrics["empty_set_rate"] = float(state["sizes"][0] / n_eval)
        else:
            metrics["median_width"] = _sketch_median(state["widths"])
            if not state["widths"]["exact"]:
                info["median_width"] = (f"more than {cfg.exact_width_values:,} distinct widths: the median of log-spaced "
                                        f"bins, within {WIDTH_RELATIVE_ERROR:g} relative error")
        info["coverage_shortfall_z"] = (
            "(coverage - level) / sqrt(level (1 - level) (1/evaluation_rows + 1/(calibration_rows + 2))): "
            "binomial noise on the evaluated rows plus the Beta-distributed coverage given the calibration rows"
        )
        segment_table = self._segments(state, fitted, size_name, n_cal, metrics, info)

        # The example rows and the intervals' scatter: drawn from the sample's evaluation rows
        current, n_sample = context.current, len(sample_pos)
        rng = context.rng("conformal.sample")
        shown = np.sort(rng.choice(n_sample, size=min(cfg.sample_rows, n_sample), replace=False))
        pos, target = sample_pos[shown], sample_target[shown]
        sample = pd.DataFrame({"row": [str(i) for i in current.X.index[pos]]})
        if classification:
            classes = [str(c) for c in context.model.classes]
            sets = predicted_sets(fitted["mapie"], current.predictions.proba[pos])
            sample["predicted"] = [str(v) for v in current.predictions.labels[pos]]
            sample["set"] = [", ".join(c for c, inside in zip(classes, row, strict=True) if inside) for row in sets]
            sample["label"] = [classes[i] for i in target]
            sample["covered"] = sets[np.arange(len(pos)), target]
        else:
            predicted = current.predictions.labels.astype(float)[pos]
            intervals = predicted_intervals(fitted["mapie"], predicted)
            sample["predicted"] = predicted
            sample["lower"], sample["upper"] = intervals[:, 0], intervals[:, 1]
            sample["label"] = target
            sample["covered"] = (intervals[:, 0] <= target) & (target <= intervals[:, 1])
        if current.segments is not None:
            for column in current.segments.columns:
                sample[str(column)] = _segment_values(current.segments[column].iloc[pos])
        if classification:
            right = state["sizes"]
        else:
            shown = np.sort(context.rng("conformal.figure").choice(n_sample, size=min(1000, n_sample), replace=False))
            pred = current.predictions.labels.astype(float)[sample_pos[shown]]
            right = (pred, predicted_intervals(fitted["mapie"], pred), sample_target[shown])
        figure = _figure(segment_table, level, right, mean_size)
        where = "" if everything else " (every row)" if classification else (
            f" (every row; the intervals drawn for {min(1000, n_sample)} rows of the sample)")
        if not everything:
            info["every_row"] = (f"sets or intervals of every labelled current row ({seen}) from the conformalization on "
                                 "the sample; the coverage figure and the set-size histogram count every row, the example "
                                 "rows" + ("" if classification else " and the intervals' scatter") + " are drawn from the "
                                 "sample's evaluation rows")
        artifacts = (
            Artifact.figure("coverage", figure, "Coverage per segment against the target, and set sizes or intervals" + where),
            Artifact.table("segments", segment_table, "Coverage and size per segment value"),
            Artifact.table("sample", sample, "A sample of evaluated current rows with their sets or intervals"),
        )
        return AuditResult(audit=self.name, metrics=metrics, artifacts=artifacts, info=info)

    def _segments(self, state: State, fitted: dict[str, Any], size_name: str, n_cal: int, metrics: dict[str, float],
                  info: dict[str, str]) -> pd.DataFrame:
        level, classification = self.config.confidence_level, fitted["classification"]
        rows = []
        if not fitted["columns"]:
            info["segments"] = "no segment columns configured"
        for column, values, counts in zip(fitted["columns"], fitted["tracked"], state["segments"], strict=True):
            present = [v for i, v in enumerate(values) if counts["rows"][i] > 0]
            where = {v: i for i, v in enumerate(values)}
            top = sorted(present, key=lambda v: (-counts["rows"][where[v]], v))[: self.config.max_segment_values]
            pooled = int(counts["rows"][-1])
            if pooled:
                info[f"segments.{key_part(column)}"] = (
                    f"{len(top)} most frequent of more than {len(present)} values reported; {pooled:,} evaluated rows of "
                    f"values beyond the {len(values)} most frequent on the sample are pooled, not reported")
            elif len(present) > len(top):
                info[f"segments.{key_part(column)}"] = f"{len(top)} most frequent of {len(present)} values reported"
            for value in top:
                i = where[value]
                row = _segment_row(str(column), value, int(counts["rows"][i]), int(counts["covered"][i]),
                                   float(counts["size_sum"][i]), size_name, level, n_cal,
                                   int(counts["empty"][i]) if classification else None)
                prefix = f"segment.{key_part(column)}.{value}"
                metrics.update({f"{prefix}.{k}": float(row[k]) for k in ("coverage", size_name, "rows")})
                rows.append(row)
        overall = _segment_row("(all)", "(all)", state["evaluated"], state["covered"], state["size_sum"], size_name, level,
                               n_cal, int(state["sizes"][0]) if classification else None)
        return pd.DataFrame([overall, *rows])


def _segment_row(column: str, value: str, rows: int, covered: int, size_sum: float, size_name: str, level: float,
                 n_cal: int, empty: int | None = None) -> dict[str, Any]:
    coverage, se = covered / rows, coverage_se(level, rows, n_cal)
    row = {"column": column, "value": value, "rows": rows, "coverage": coverage, "coverage_gap": coverage - level,
           "coverage_se": se, "coverage_shortfall_z": (coverage - level) / se, size_name: size_sum / rows}
    if empty is not None:
        row["empty_set_rate"] = empty / rows
    return row


def _segment_slots(values: pd.Series, tracked: pd.Index) -> np.ndarray:
    """Each row's slot among the ``tracked`` segment values (by the value as in metric keys); len(tracked) for others.
    Each distinct value is mapped once, not each row."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    names = [key_part(v) for v in _segment_values(pd.Series(uniques))]
    slots = tracked.get_indexer(pd.Index(names, dtype=object)) if len(names) else np.zeros(0, dtype=np.int64)
    slots = np.where(slots < 0, len(tracked), slots).astype(np.int64)
    return slots[codes] if len(codes) else np.zeros(0, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Reducing states


def _combined(a: State, b: State, sign: int, exact_width_values: int) -> State:
    """``a`` plus ``b`` (sign 1: disjoint rows merged) or ``a`` minus ``b`` (sign -1: rows of ``b`` taken out of ``a``)."""
    out: State = {key: a[key] + sign * b[key] for key in ("rows", "unlabelled", "evaluated", "covered", "size_sum")}
    out["segments"] = [{k: x[k] + sign * y[k] for k in x} for x, y in zip(a["segments"], b["segments"], strict=True)]
    if "sizes" in a:
        out["sizes"] = a["sizes"] + sign * b["sizes"]
    if "widths" in a:
        out["widths"] = _combined_sketches(a["widths"], b["widths"], sign, exact_width_values)
    return out


def _width_sketch(widths: np.ndarray, exact_width_values: int) -> State:
    """The distribution of interval widths: each distinct width and its count while there are at most
    ``exact_width_values`` of them; beyond, counts in log-spaced bins. Bin i holds widths in (g^(i-1), g^i] with
    g = (1 + e) / (1 - e), and stands for 2 g^i / (g + 1), within relative error e of any width in it (zero widths:
    a bin of their own). Binning is a function of the width alone, so states merge exactly in any order."""
    keys, counts = np.unique(np.asarray(widths, dtype=float), return_counts=True)
    return _capped({"exact": True, "keys": keys, "counts": counts.astype(np.int64)}, exact_width_values)


def _capped(sketch: State, exact_width_values: int) -> State:
    return _binned(sketch) if sketch["exact"] and len(sketch["keys"]) > exact_width_values else sketch


def _binned(sketch: State) -> State:
    if not sketch["exact"]:
        return sketch
    widths = sketch["keys"]
    bins = np.full(len(widths), _ZERO_BIN, dtype=np.int64)
    positive = widths > 0
    bins[positive] = np.ceil(np.log(widths[positive]) / _LOG_GAMMA).astype(np.int64)
    return _summed(bins, sketch["counts"], exact=False)


def _summed(keys: np.ndarray, counts: np.ndarray, exact: bool) -> State:
    unique, inverse = np.unique(keys, return_inverse=True)
    total = np.zeros(len(unique), dtype=np.int64)
    np.add.at(total, inverse, counts)
    keep = total > 0  # a width subtracted that was not there (the sample's predictions differ in the last bit): dropped
    return {"exact": exact, "keys": unique[keep], "counts": total[keep]}


def _combined_sketches(a: State, b: State, sign: int, exact_width_values: int) -> State:
    if not (a["exact"] and b["exact"]):
        a, b = _binned(a), _binned(b)
    keys = np.concatenate([a["keys"], b["keys"]])
    return _capped(_summed(keys, np.concatenate([a["counts"], sign * b["counts"]]), a["exact"]), exact_width_values)


def _sketch_median(sketch: State) -> float:
    """The median width (the mean of the two middle ones for an even count, as ``np.median``)."""
    counts = sketch["counts"]
    if sketch["exact"]:
        values = sketch["keys"]
    else:
        gamma = np.exp(_LOG_GAMMA)
        values = np.where(sketch["keys"] == _ZERO_BIN, 0.0, 2 * gamma ** sketch["keys"].astype(float) / (gamma + 1))
    n = int(counts.sum())
    if n == 0:
        return float("nan")
    cumulative = np.cumsum(counts)
    low, high = values[np.searchsorted(cumulative, (n - 1) // 2 + 1)], values[np.searchsorted(cumulative, n // 2 + 1)]
    return float((low + high) / 2)


def _segment_values(series: pd.Series) -> list[str]:
    return labels_of(series).tolist()  # the segments audit's labels: the same names for the same values


def _figure(table: pd.DataFrame, level: float, right_panel: np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray],
            mean_size: float) -> Figure:
    """Coverage per segment (every row), and the set-size histogram (every row; an array of counts) or the intervals
    of some evaluated rows (a tuple of predictions, intervals and labels)."""
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
    if not isinstance(right_panel, tuple):
        counts = right_panel
        right.bar(np.arange(len(counts)), counts, color="C0")
        right.set(xlabel="prediction set size (classes)", ylabel="rows", title=f"Set sizes (mean {mean_size:.2f})")
        right.set_xticks(np.arange(len(counts)))
    else:
        pred, intervals, y = right_panel
        order = np.argsort(pred, kind="stable")
        right.fill_between(pred[order], intervals[order, 0], intervals[order, 1], color="C0", alpha=0.25, label="interval")
        inside = (intervals[order, 0] <= y[order]) & (y[order] <= intervals[order, 1])
        right.scatter(pred[order][inside], y[order][inside], s=6, color="C0", label="covered")
        right.scatter(pred[order][~inside], y[order][~inside], s=10, color="C3", label="not covered")
        right.set(xlabel="prediction", ylabel="actual", title=f"Intervals (mean width {mean_size:.3g})")
        right.legend(loc="upper left", fontsize=7)
    return fig
