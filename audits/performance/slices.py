"""Weak slices found by search: readable conjunctions of conditions (``clinic = north and bmi > 31.2``) on which the
model does markedly worse than on the rest, each confirmed on rows the search never saw. On a sample.

The per-row figure searched (``figure: auto``): with labels on current data, the loss (classifiers: 0/1 error;
regressors: absolute error); without them, the uncertainty of a classifier with probabilities (1 - its largest
probability), or else the unfamiliarity of the row (mean distance to its 5 nearest reference rows in a standardised
space, ``audits.methods.ood``, fitted on the reference). Columns: the features and the segment columns
(``data.segments``, read as values even when numeric: a clinic id is a name). See ``audits.methods.slicing`` for the
readable bins and the search.

The guard (why nothing passes on exchangeable data). SliceLine looks at thousands of slices and returns the best
ones: their figure on the rows it searched is the maximum of many noisy means, biased upwards, and a test on those
rows would be meaningless. So the current rows are split in two with the seed:

1. discovery (half the rows): SliceLine searches them and returns its ``candidates`` best slices (at most
   ``max_conditions`` conditions, at least ``max(min_rows, min_share * rows)`` rows);
2. confirmation (the other half, never seen by the search): each candidate's mean figure, a percentile bootstrap
   interval on it, and a one-sided permutation test that the slice's mean is above the rest's (exact under
   exchangeability whatever the figure's distribution, 0/1 errors included: the p-value cannot be below
   1 / (permutations + 1)). The candidates were chosen on other rows, so each p-value is valid as it stands, and
   Holm's correction over all candidates tested keeps the chance that any slice passes when none is weaker than the
   rest below ``significance`` (family-wise).

A slice passes when its Holm-adjusted p-value is at most ``significance``, its figure is at least ``min_ratio`` times
the rest's (at scale every p-value is tiny: the effect must matter too), and it holds at least ``min_rows``
confirmation rows. Bin edges come from the features of all searched rows, never from the figure, so they do not
break the independence of the halves. The price of the split: each half has half the rows, and a slice must be
visible in both.

Metrics: ``found`` (slices passing), ``candidates`` (tested), the top passing slice as ``top.*`` (its share of the
confirmation rows, its figure, the rest's, the gap, the ratio to the rest (inf when the rest's figure is 0), the lift
over the mean of all confirmation rows (finite: the default threshold's metric), its number of conditions); with none passing, ``top.rows`` and ``top.share`` are 0, its figure and the rest's
the mean of all confirmation rows, the gap 0, the ratio and lift 1: no slice is known to be worse than the rest.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.methods import slicing

FigureKind = Literal["loss", "uncertainty", "unfamiliarity"]
SHOWN = 10  # slices drawn in the figure


class SlicesConfig(AuditConfig):
    figure: Literal["auto", "loss", "uncertainty", "unfamiliarity"] = "auto"  # auto: loss with labels, else see above
    columns: list[str] | None = None  # default: every feature and segment column
    bins: int = Field(4, ge=2, le=20)  # quantile bins per numeric column (quartiles: 'bmi > 31.2' is the top quarter)
    max_values: int = Field(10, ge=1, le=100)  # values kept per categorical column; rarer ones are '(other)'
    max_conditions: int = Field(3, ge=1, le=3)
    min_rows: int = Field(20, ge=5)  # smallest slice searched, and smallest that can pass (confirmation rows)
    min_share: float = Field(0.01, ge=0, lt=0.5)  # smallest slice searched, as a share of the discovery rows
    candidates: int = Field(10, ge=1, le=50)  # SliceLine's k: the slices confirmed, and Holm's family
    # SliceLine's alpha: the weight of a slice's figure against its size in its score (0.95, as in the paper's
    # experiments; its package's 0.6 drops every slice under ~15 % of rows unless its error is 8 times the mean)
    error_weight: float = Field(0.95, gt=0, le=1)
    max_columns: int = Field(8, ge=3, le=100)  # columns searched at three conditions (see audits.methods.slicing)
    significance: float = Field(0.05, gt=0, lt=1)  # family-wise error rate of the guard
    min_ratio: float = Field(1.25, ge=1)  # a passing slice's figure is at least this times the rest's
    confidence_level: float = Field(0.95, gt=0, lt=1)  # of the bootstrap intervals
    bootstrap: int = Field(1000, ge=100, le=100_000)
    permutations: int = Field(1999, ge=99, le=100_000)


FIGURE_NAMES = {("loss", "classification"): "error", ("loss", "regression"): "absolute error",
                ("uncertainty", "classification"): "uncertainty", ("unfamiliarity", "classification"): "unfamiliarity",
                ("unfamiliarity", "regression"): "unfamiliarity"}


def figure_kind(context: AuditContext, wanted: str) -> tuple[FigureKind | None, str]:
    """The per-row figure to search and why (or None and why not)."""
    proba = context.task == "classification" and context.model.predict_proba is not None
    if wanted == "auto":
        if context.current.labelled:
            return "loss", "labels are present on current data"
        if proba:
            return "uncertainty", "no labels on current data; the classifier has probabilities"
        why = "a regressor" if context.task == "regression" else "a classifier without predict_proba"
        return "unfamiliarity", f"no labels on current data, and the model is {why}"
    if wanted == "loss" and not context.current.labelled:
        return None, f"figure 'loss' needs labels on the current data; target column {context.target!r} is absent there"
    if wanted == "uncertainty" and not proba:
        return None, "figure 'uncertainty' needs a classifier with predict_proba"
    return wanted, "configured"  # type: ignore[return-value]


def per_row_figure(context: AuditContext, kind: FigureKind) -> np.ndarray:
    """The figure of each current row (NaN where it is undefined: a missing label)."""
    current = context.current
    if kind == "loss":
        y = current.y.reset_index(drop=True)
        if context.task == "classification":
            wrong = (y.to_numpy() != current.predictions.labels).astype(float)
            return np.where(y.notna().to_numpy(), wrong, np.nan)
        truth = pd.to_numeric(y, errors="coerce").to_numpy(dtype=float)
        return np.abs(current.predictions.labels.astype(float) - truth)
    if kind == "uncertainty":
        return 1.0 - np.asarray(current.predictions.proba, dtype=float).max(axis=1)
    from audits.methods.ood import fit_ood

    model = fit_ood(context.reference.X, context.categorical, context.random_state("slices.unfamiliarity"), scorers=("knn",))
    return model.scores(current.X)["knn"]


def searched_frame(context: AuditContext, columns: list[str] | None) -> tuple[pd.DataFrame, set[str]]:
    """The columns searched (features, then segment columns that are not features) and which are read as values."""
    frame = context.current.X.reset_index(drop=True)
    categorical = set(context.categorical)
    segments = context.current.segments
    if segments is not None:
        extra = [c for c in segments.columns if c not in frame.columns]
        frame = pd.concat([frame, segments[extra].reset_index(drop=True)], axis=1)
        categorical |= set(extra)
    if columns is not None:
        frame = frame[columns]
    return frame, categorical


class SlicesAudit(Audit):
    """Slices of at most three conditions where the per-row loss (or uncertainty, or unfamiliarity) is markedly higher,
    found by SliceLine on half of the current sample and confirmed, Holm-corrected, on the other half."""

    name = "slices"
    imports = ("sliceline.slicefinder",)  # imported when it runs (audits.core.audit)
    Config = SlicesConfig
    requires = Requirements(modalities=("tabular",))
    description = "Weak slices (up to three conditions) found by SliceLine and confirmed on held-out rows."
    metric_keys = (
        "found", "candidates", "labelled", "searched_rows", "discovery_rows", "confirmation_rows", "mean_figure",
        "min_p_value", "top.{rows,share,figure,rest_figure,gap,ratio,lift,conditions}",
    )
    # A confirmed slice (see the guard) on which the figure is at least twice its mean over all rows: SliceLine scores
    # slices by this same lift. Below 2, regions of the input that are somewhat harder are the rule in any model; at 2
    # the model is twice as bad there as on average, on a slice found by rules a person can read and act on.
    default_thresholds = (Threshold(metric="top.lift", max=2.0, severity="warn"),)
    question = "behaviour"
    typical_cost_s = 5.5  # 20,000 rows x 30 features, labelled: 5.6 s (SliceLine about 4 s of it)

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        cfg: SlicesConfig = self.config
        kind, why = figure_kind(context, cfg.figure)
        if kind is None:
            return why
        needed = 4 * cfg.min_rows
        if len(context.current) < needed:
            return (f"too few current rows to search and confirm slices: {len(context.current)} < {needed} "
                    f"(two halves of at least two slices of min_rows = {cfg.min_rows})")
        if kind == "unfamiliarity" and len(context.reference) < 20:
            return f"unfamiliarity is fitted on the reference data, which has {len(context.reference)} rows (< 20)"
        if cfg.columns is not None:
            segments = context.current.segments
            available = set(context.current.X.columns) | (set() if segments is None else set(segments.columns))
            missing = [c for c in cfg.columns if c not in available]
            if missing:
                return f"column(s) {missing} are neither features nor segment columns"
        return None

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: SlicesConfig = self.config
        kind, why = figure_kind(context, cfg.figure)
        figure_name = FIGURE_NAMES[(kind, context.task)]
        values = per_row_figure(context, kind)
        frame, categorical = searched_frame(context, cfg.columns)
        valid = np.flatnonzero(np.isfinite(values))
        values, frame = values[valid], frame.iloc[valid].reset_index(drop=True)

        order = context.rng("slices.split").permutation(len(values))
        half = len(values) // 2
        discovery, confirmation = np.sort(order[:half]), np.sort(order[half:])
        min_sup = slicing.min_slice_rows(len(discovery), cfg.min_rows, cfg.min_share)
        encoded = slicing.encode(frame, categorical, cfg.bins, cfg.max_values, min_sup)
        candidates = slicing.search(encoded.codes[discovery], values[discovery], max_conditions=cfg.max_conditions,
                                    min_sup=min_sup, k=cfg.candidates, alpha=cfg.error_weight, max_columns=cfg.max_columns)

        held = values[confirmation]
        masks = slicing.membership(encoded.codes[confirmation], candidates)
        table = self._table(held, masks, candidates, encoded, context, cfg)
        mean = float(held.mean())
        passing = table[table["passes"]]
        metrics = {
            "found": float(len(passing)), "candidates": float(len(candidates)),
            "labelled": float(context.current.labelled), "searched_rows": float(len(values)),
            "discovery_rows": float(len(discovery)), "confirmation_rows": float(len(confirmation)),
            "mean_figure": mean, "min_p_value": float(table["p_value_adjusted"].min()) if len(table) else 1.0,
        }
        if len(passing):
            top = passing.iloc[0]
            metrics.update({"top.rows": float(top["rows"]), "top.share": float(top["share"]), "top.figure": float(top["figure"]),
                            "top.rest_figure": float(top["rest_figure"]), "top.gap": float(top["gap"]),
                            "top.ratio": float(top["ratio"]), "top.lift": float(top["figure"] / mean),
                            "top.conditions": float(top["conditions"])})
        else:
            metrics.update({"top.rows": 0.0, "top.share": 0.0, "top.figure": mean, "top.rest_figure": mean, "top.gap": 0.0,
                            "top.ratio": 1.0, "top.lift": 1.0, "top.conditions": 0.0})

        dropped = len(context.current) - len(values)
        info = {
            "figure": f"{figure_name} ({kind}): {why}" + (f"; {dropped:,} row(s) without a figure left out" if dropped else ""),
            "searched": (f"a sample of {len(values):,} current rows, split with the seed into {len(discovery):,} rows "
                         f"searched by SliceLine and {len(confirmation):,} rows on which each slice is confirmed"),
            "columns": f"{encoded.codes.shape[1]} ({', '.join(encoded.columns[:20])}{', ...' if len(encoded.columns) > 20 else ''})",
            "search": (f"SliceLine (alpha {cfg.error_weight:g}), slices of at most {cfg.max_conditions} condition(s) and "
                       f"at least {min_sup:,} discovery rows; {len(candidates)} candidate(s)"
                       + (f"; three conditions only among the columns (at most {cfg.max_columns}) of the best one- and "
                          f"two-condition slices" if cfg.max_conditions == 3 and encoded.codes.shape[1] > cfg.max_columns else "")),
            "guard": (f"on the confirmation rows: one-sided permutation test ({cfg.permutations} permutations), Holm over "
                      f"{len(candidates)} candidate(s) at {cfg.significance:g}, figure >= {cfg.min_ratio:g} x the rest's, "
                      f">= {cfg.min_rows} rows; {int(cfg.confidence_level * 100)} % bootstrap intervals"),
        }
        for rank, (_, row) in enumerate(passing.head(5).iterrows(), start=1):
            info[f"slice_{rank}"] = summary(row, figure_name)
        if not len(passing):
            info["found"] = "no slice passes the guard: none is known to be worse than the rest"
        artifacts = [Artifact.table("slices", table, f"Slices by SliceLine, confirmed on held-out rows ({figure_name})")]
        if context.with_figures and len(table):
            artifacts.append(_figure(table.head(SHOWN), mean, figure_name, cfg.confidence_level))
        return AuditResult(audit=self.name, metrics=metrics, artifacts=tuple(artifacts), info=info)

    @staticmethod
    def _table(held: np.ndarray, masks: np.ndarray, candidates: list[slicing.Candidate], encoded: slicing.Encoded,
               context: AuditContext, cfg: SlicesConfig) -> pd.DataFrame:
        columns = ["slice", "conditions", "rows", "share", "figure", "interval_low", "interval_high", "rest_figure", "gap",
                   "ratio", "p_value", "p_value_adjusted", "passes", "discovery_rows", "discovery_figure", "score"]
        if not candidates:
            return pd.DataFrame({c: pd.Series(dtype=bool if c == "passes" else object if c == "slice" else float)
                                 for c in columns})
        sizes = masks.sum(axis=0)
        total = held.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            figure = (held @ masks) / sizes
            rest = (total - held @ masks) / (len(held) - sizes)
            ratio = np.where(rest > 0, figure / rest, np.where(figure > 0, np.inf, 1.0))
        p = slicing.permutation_p_values(held, masks, cfg.permutations, context.rng("slices.permutation"))
        adjusted = slicing.holm(p)
        intervals = slicing.bootstrap_intervals(held, masks, cfg.confidence_level, cfg.bootstrap, context.rng("slices.bootstrap"))
        passes = (adjusted <= cfg.significance) & (figure >= cfg.min_ratio * rest) & (sizes >= cfg.min_rows)
        table = pd.DataFrame({
            "slice": [slicing.predicate(encoded, c.conditions) for c in candidates],
            "conditions": [len(c.conditions) for c in candidates],
            "rows": sizes.astype(np.int64), "share": sizes / len(held), "figure": figure,
            "interval_low": intervals[:, 0], "interval_high": intervals[:, 1], "rest_figure": rest, "gap": figure - rest,
            "ratio": ratio, "p_value": p, "p_value_adjusted": adjusted, "passes": passes,
            "discovery_rows": [c.rows for c in candidates], "discovery_figure": [c.mean for c in candidates],
            "score": [c.score for c in candidates],
        })
        # passing slices first, each group in SliceLine's order (its score on the discovery rows)
        return table.iloc[np.lexsort((np.arange(len(table)), ~passes))].reset_index(drop=True)


def summary(row: pd.Series, figure_name: str) -> str:
    """One slice in a line: 'clinic = north and bmi > 31.2: 4.1 % of rows, error 0.38 vs 0.09'."""
    return f"{row['slice']}: {row['share'] * 100:.1f} % of rows, {figure_name} {row['figure']:.3g} vs {row['rest_figure']:.3g}"


def _figure(table: pd.DataFrame, mean: float, figure_name: str, level: float) -> Artifact:
    fig = Figure(figsize=(8, 0.45 * len(table) + 1.6), layout="constrained")
    ax = fig.subplots()
    positions = np.arange(len(table))[::-1]
    figure = table["figure"].to_numpy(dtype=float)
    low, high = table["interval_low"].to_numpy(dtype=float), table["interval_high"].to_numpy(dtype=float)
    colours = ["#d62728" if passes else "#7f7f7f" for passes in table["passes"].to_numpy(dtype=bool)]
    spans = np.clip(np.nan_to_num(np.vstack([figure - low, high - figure])), 0, None)
    for k, colour in enumerate(colours):
        ax.errorbar(figure[k], positions[k], xerr=spans[:, k:k + 1], fmt="o", color=colour, capsize=3)
    ax.scatter(table["rest_figure"].to_numpy(dtype=float), positions, marker="|", c="black", zorder=3, label="rest of the rows")
    ax.axvline(mean, color="#1f77b4", linestyle="--", linewidth=1, label=f"all rows ({mean:.3g})")
    labels = [f"{s if len(s) <= 60 else s[:57] + '...'} (n={int(n)})" for s, n in zip(table["slice"], table["rows"], strict=True)]
    ax.set_yticks(positions, labels, fontsize=8)
    ax.set_xlabel(f"{figure_name} on confirmation rows ({int(level * 100)} % bootstrap interval; red: passes the guard)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Weakest slices found by SliceLine")
    return Artifact.figure("slices", fig, f"Slices with their {figure_name} and intervals, against the rest")
