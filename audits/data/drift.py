"""Data drift between the reference and the current data: per feature, jointly, and in the model's output.

Per feature, a test suited to the type, corrected for testing many features at once:

- numeric: the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, on non-missing values)
  for significance, and the Wasserstein distance (``scipy.stats.wasserstein_distance``) divided by the
  reference's standard deviation (ddof=1; or its interquartile range, ``scale: iqr``) as the effect
  size: "how far, in reference standard deviations, the distribution moved". A mean shift of d sd
  has a normalised Wasserstein distance of exactly d. A change in a numeric column's missing rate
  shows in its PSI (which has a missing bin) and in the table's missing shares, not in the KS decision.
- categorical (``context.categorical``; missing values are a category of their own, "(missing)";
  categories beyond the ``max_categories`` most frequent are pooled into "(other)"): the chi-squared
  test of homogeneity on the 2 x K contingency table (``scipy.stats.chi2_contingency``, with its
  default Yates correction when the table has one degree of freedom) for significance, and the
  Population Stability Index as the effect size.

PSI = sum over bins i of (c_i - r_i) * ln(c_i / r_i), where r_i and c_i are the reference's and the
current's shares of rows in bin i, each floored at ``psi_epsilon`` (so that an empty bin gives a
large but finite term). Bins: the categories for categoricals; for numerics (PSI reported beside the
Wasserstein effect) the reference deciles (``numpy.quantile``, linear interpolation, repeated edges
merged), right-closed, open-ended at both ends, plus a "(missing)" bin when either side has missing
values. The usual reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift. For a normal
feature, a mean shift of d sd has PSI of about d^2, so the default floors (normalised Wasserstein 0.1,
PSI 0.1) flag numeric shifts from 0.1 sd and categorical mixes from a "moderate" shift.

Why significance alone is not enough: with 20,000 rows a side every shift a model would never notice
is "significant" (KS detects a 0.05-sd mean shift at p < 0.05). A feature is therefore *drifted* only
when its corrected p-value is below ``alpha`` AND its effect size exceeds ``min_effect`` for its
type. The p-values of all features are corrected together: Benjamini-Hochberg
(``scipy.stats.false_discovery_control``, the default: controls the share of false alarms among the
flagged features), Bonferroni (controls the chance of any false alarm) or none.

Jointly, a domain classifier (``HistGradientBoostingClassifier`` with native categorical support) is
trained to tell reference rows from current rows on a balanced sample; its cross-validated ROC-AUC
(``StratifiedKFold(5, shuffle=True)``) is 0.5 when the two are indistinguishable, and also sees shifts
in the joint distribution that no single feature shows. Its permutation importance (drop in held-out
AUC, ``sklearn.inspection.permutation_importance`` on each held-out fold, averaged) says where the
drift is.

In the model's output: predicted labels (PSI and chi-squared) and the predicted score (P(positive
class) for binary classifiers, the top-class probability for multiclass; KS and normalised
Wasserstein; the score decides ``prediction.drifted`` when there is one, else the labels), or the
predictions of a regressor (KS, normalised Wasserstein, decile PSI). When both
datasets are labelled, the same for the labels (class balance, target distribution).

Rows are capped at ``max_rows`` a side by a seeded sample.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from audits.core import Artifact, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.context import Dataset
from audits.core.partial import PartialAudit, State
from audits.core.result import key_part
from audits.methods.metrics import _histogram_auc

MISSING = "(missing)"
OTHER = "(other)"
MIN_ROWS = 10  # per side; fewer and the audit is skipped
REFERENCE_COLOUR, CURRENT_COLOUR, DRIFT_COLOUR = "#9aa0a6", "#1f77b4", "#d62728"


class MinEffect(BaseModel):
    """Effect-size floors below which a significant difference is not called drift."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    numeric: float = Field(0.1, ge=0)  # Wasserstein distance / reference scale
    categorical: float = Field(0.1, ge=0)  # PSI


class DriftConfig(AuditConfig):
    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Literal["bh", "bonferroni", "none"] = "bh"
    min_effect: MinEffect = MinEffect()
    scale: Literal["std", "iqr"] = "std"  # what the Wasserstein distance of a numeric feature is divided by
    psi_bins: int = Field(10, ge=2, le=100)  # quantile bins of the reference for a numeric PSI (10: deciles)
    psi_epsilon: float = Field(1e-4, gt=0, le=0.01)  # floor of a bin's share in the PSI
    max_categories: int = Field(50, ge=1, le=250)  # the rest of a categorical's values are pooled into "(other)"
    # rows per side up to which the values are kept and the tests are scipy's on them; beyond, every row is counted
    # into bins (numeric: ``bins`` reference-sample quantiles) and the tests read off the bins, with their error bounds
    max_rows: int = Field(20000, ge=MIN_ROWS)
    bins: int = Field(2000, ge=10, le=100_000)
    max_distinct: int = Field(10_000, ge=1, le=1_000_000)  # names a categorical column is counted by, exactly
    domain_bins: int = Field(4096, ge=16, le=1_000_000)  # bins of the domain classifier's score, beyond max_rows
    domain_classifier: bool = True
    domain_rows: int = Field(5000, ge=MIN_ROWS)  # rows per side for the domain classifier (balanced)
    domain_folds: int = Field(5, ge=2, le=10)
    importance_repeats: int = Field(3, ge=1, le=20)  # permutation repeats per held-out fold
    top: int = Field(6, ge=1, le=12)  # features in the distribution plots


# ---------------------------------------------------------------------------------------------- tests


def psi(reference_counts: np.ndarray, current_counts: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population Stability Index of two aligned count vectors (shares floored at ``epsilon``)."""
    r = np.maximum(np.asarray(reference_counts, dtype=float) / np.sum(reference_counts), epsilon)
    c = np.maximum(np.asarray(current_counts, dtype=float) / np.sum(current_counts), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (deciles for 10 bins), repeated edges merged."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def binned_counts(values: np.ndarray, edges: np.ndarray, with_missing: bool) -> np.ndarray:
    """Counts in the right-closed bins (-inf, e0], (e0, e1], ..., (e_last, inf), then missing when asked."""
    values = np.asarray(values, dtype=float)
    present = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    return np.append(counts, np.isnan(values).sum()) if with_missing else counts


def numeric_psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, epsilon: float = 1e-4) -> float:
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    present = reference[~np.isnan(reference)]
    if len(present) == 0:
        return float("nan")
    edges = quantile_edges(present, bins)
    with_missing = bool(np.isnan(reference).any() or np.isnan(current).any())
    return psi(binned_counts(reference, edges, with_missing), binned_counts(current, edges, with_missing), epsilon)


def reference_scale(reference: np.ndarray, current: np.ndarray, scale: str = "std") -> float:
    """The reference's sd (ddof=1) or IQR; the pooled one if the reference is constant; 1 if both are."""
    def spread(x: np.ndarray) -> float:
        if len(x) < 2:
            return 0.0
        if scale == "iqr":
            q1, q3 = np.quantile(x, [0.25, 0.75])
            return float(q3 - q1)
        return float(np.std(x, ddof=1))

    return spread(reference) or spread(np.concatenate([reference, current])) or 1.0


def numeric_drift(reference: np.ndarray, current: np.ndarray, scale: str = "std", bins: int = 10,
                  epsilon: float = 1e-4) -> dict[str, float]:
    """KS statistic and p-value, normalised Wasserstein effect and decile PSI of two numeric samples."""
    from scipy.stats import ks_2samp, wasserstein_distance

    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    r, c = reference[~np.isnan(reference)], current[~np.isnan(current)]
    out = {"psi": numeric_psi(reference, current, bins, epsilon)}
    if len(r) == 0 or len(c) == 0:  # nothing to compare: not testable
        return {**out, "statistic": float("nan"), "pvalue": float("nan"), "effect": float("nan")}
    ks = ks_2samp(r, c)
    return {
        **out,
        "statistic": float(ks.statistic),
        "pvalue": float(ks.pvalue),
        "effect": float(wasserstein_distance(r, c) / reference_scale(r, c, scale)),
    }


def as_categories(values: pd.Series | np.ndarray) -> pd.Series:
    """Values as category names: strings, numbers written without a trailing '.0', missing as "(missing)"."""
    series = pd.Series(values).reset_index(drop=True)
    missing = series.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        names = [np.format_float_positional(float(v), trim="-") if not m else MISSING
                 for v, m in zip(series.to_numpy(dtype=float, na_value=np.nan), missing, strict=True)]
    else:
        names = [MISSING if m else str(v) for v, m in zip(series.to_numpy(dtype=object), missing, strict=True)]
    return pd.Series(names, dtype=object)


def name_counts(values: pd.Series | np.ndarray) -> dict[str, int]:
    """Rows per category name (``as_categories``' names), named on the distinct values only: a million rows of a few
    categories cost one ``value_counts``."""
    series = pd.Series(values).reset_index(drop=True)
    counts = series.value_counts(dropna=False, sort=False)
    counts = counts[counts.to_numpy() > 0]  # a pandas Categorical lists its unused categories too
    out: dict[str, int] = {}
    names = as_categories(pd.Series(counts.index.to_numpy(), dtype=series.dtype)) if len(counts) else []
    for name, count in zip(names, counts.to_numpy(), strict=True):
        out[name] = out.get(name, 0) + int(count)
    return out


def counts_table(reference: dict[str, int], current: dict[str, int], max_categories: int = 50,
                 kept: list[str] | None = None) -> pd.DataFrame:
    """Contingency table (categories x [reference, current]) of two name counts: the ``max_categories`` most frequent
    names (pooled; ties by name) sorted, the others under "(other)", listed last; or the names of ``kept`` (which ends
    with "(other)"), categories with no row on either side left out."""
    if kept is None:
        pooled: dict[str, int] = {}
        for side in (reference, current):
            for name, count in side.items():
                pooled[name] = pooled.get(name, 0) + count
        ranked = sorted(pooled.items(), key=lambda item: (-item[1], item[0]))
        kept = sorted(name for name, _ in ranked[:max_categories]) + ([OTHER] if len(ranked) > max_categories else [])
    position = {name: i for i, name in enumerate(kept)}
    table = np.zeros((len(kept), 2), dtype=np.int64)
    for j, side in enumerate((reference, current)):
        for name, count in side.items():
            table[position[name] if name in position else position[OTHER], j] += count
    frame = pd.DataFrame(table, index=kept, columns=["reference", "current"])
    return frame[frame.sum(axis=1) > 0]


def category_counts(reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray,
                    max_categories: int = 50) -> pd.DataFrame:
    """Contingency table (categories x [reference, current]), categories sorted by name; values beyond the
    ``max_categories`` most frequent (pooled; ties by name) counted under "(other)", listed last."""
    return counts_table(name_counts(reference), name_counts(current), max_categories)


def kept_categories(names: pd.Series, max_categories: int) -> list[str]:
    """The ``max_categories`` most frequent names (ties by name), sorted, then "(other)" if any were left out."""
    ranked = sorted(names.value_counts().items(), key=lambda item: (-item[1], item[0]))
    return sorted(name for name, _ in ranked[:max_categories]) + ([OTHER] if len(ranked) > max_categories else [])


def lump(names: pd.Series, kept: list[str]) -> pd.Series:
    return names.where(names.isin(kept), OTHER)


def table_drift(table: pd.DataFrame, epsilon: float = 1e-4) -> dict[str, float]:
    """Chi-squared test of homogeneity and PSI of a contingency table (categories x [reference, current])."""
    from scipy.stats import chi2_contingency

    effect = psi(table["reference"].to_numpy(), table["current"].to_numpy(), epsilon)
    if len(table) < 2:  # one category on both sides: identical by construction
        return {"statistic": 0.0, "pvalue": 1.0, "effect": effect, "psi": effect}
    test = chi2_contingency(table.to_numpy().T)
    return {"statistic": float(test.statistic), "pvalue": float(test.pvalue), "effect": effect, "psi": effect}


def categorical_drift(reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray, max_categories: int = 50,
                      epsilon: float = 1e-4) -> dict[str, float]:
    """Chi-squared test of homogeneity and PSI over the categories (missing included)."""
    return table_drift(category_counts(reference, current, max_categories), epsilon)


def correct(pvalues: np.ndarray, method: str = "bh") -> np.ndarray:
    """Multiple-testing correction of the finite p-values (NaN stays NaN)."""
    from scipy.stats import false_discovery_control

    pvalues = np.asarray(pvalues, dtype=float)
    out = np.full(len(pvalues), np.nan)
    finite = np.isfinite(pvalues)
    if not finite.any():
        return out
    if method == "bh":
        out[finite] = false_discovery_control(pvalues[finite], method="bh")
    elif method == "bonferroni":
        out[finite] = np.minimum(pvalues[finite] * finite.sum(), 1.0)
    else:
        out[finite] = pvalues[finite]
    return out


# --------------------------------------------------------------------------------- domain classifier


def domain_matrix(frames: list[pd.DataFrame], categorical: tuple[str, ...], max_categories: int,
                  kept: dict[str, list[str]] | None = None) -> np.ndarray:
    """Numeric columns as floats (NaN kept), categorical columns as codes of their pooled categories (or of ``kept``'s
    categories for each column; a name outside them gets -1, which the classifier reads as missing)."""
    pooled = pd.concat(frames, ignore_index=True)
    columns = []
    for column in pooled.columns:
        if column in categorical:
            names = as_categories(pooled[column])
            chosen = kept[column] if kept is not None else kept_categories(names, max_categories)
            columns.append(pd.Index(chosen).get_indexer(lump(names, chosen)).astype(float))
        else:
            columns.append(pooled[column].to_numpy(dtype=float, na_value=np.nan))
    return np.column_stack(columns)


def domain_classifier(reference: pd.DataFrame, current: pd.DataFrame, categorical: tuple[str, ...], seed: int,
                      folds: int = 5, repeats: int = 3, max_categories: int = 50) -> dict:
    """Cross-validated ROC-AUC of a classifier telling current rows (1) from reference rows (0), and the
    permutation importance (drop in AUC) of each column on the held-out folds. ``model`` (the first fold's
    classifier), ``kept``, ``usable`` and ``trained`` let it score other rows: ``domain_scores``."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from threadpoolctl import threadpool_limits

    pooled = pd.concat([reference, current], ignore_index=True)
    kept = {c: kept_categories(as_categories(pooled[c]), max_categories) for c in reference.columns if c in categorical}
    X = domain_matrix([reference, current], categorical, max_categories, kept)
    usable = ~np.isnan(X).all(axis=0)  # a column with no values at all tells nothing (and breaks the binning)
    X = X[:, usable]
    y = np.r_[np.zeros(len(reference), dtype=int), np.ones(len(current), dtype=int)]
    model = HistGradientBoostingClassifier(
        categorical_features=np.array([c in categorical for c in reference.columns])[usable],
        # early stopping on a tenth of each fold's training rows: where the sides do not differ, the trees after the
        # first few fit noise, and every one of them is paid again on every row the classifier scores
        max_iter=100, max_leaf_nodes=15, early_stopping=True, validation_fraction=0.1, n_iter_no_change=10,
        random_state=seed,
    )
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    importances = []
    # One OpenMP thread (the limit applies to the calling thread only): on small data and busy machines,
    # HistGradientBoosting's per-split thread synchronisation costs more than it saves.
    with threadpool_limits(limits=1, user_api="openmp"):
        scores = cross_validate(model, X, y, cv=cv, scoring="roc_auc", return_estimator=True, return_indices=True)
        for k, (estimator, test) in enumerate(zip(scores["estimator"], scores["indices"]["test"], strict=True)):
            result = permutation_importance(estimator, X[test], y[test], scoring="roc_auc", n_repeats=repeats,
                                            random_state=seed + k)
            importances.append(result.importances_mean)
    importance, spread = np.zeros(len(usable)), np.zeros(len(usable))
    importance[usable], spread[usable] = np.mean(importances, axis=0), np.std(importances, axis=0)
    train = scores["indices"]["train"][0]
    return {
        "auc": float(np.mean(scores["test_score"])),
        "fold_auc": [float(v) for v in scores["test_score"]],
        "importance": importance,
        "importance_std": spread,
        "model": scores["estimator"][0], "kept": kept, "usable": usable, "columns": list(reference.columns),
        "trained": {"reference": int((train < len(reference)).sum()), "current": int((train >= len(reference)).sum())},
    }


def domain_scores(domain: dict, X: pd.DataFrame, categorical: tuple[str, ...]) -> np.ndarray:
    """P(current) of each row of ``X`` by the fitted domain classifier (``domain_classifier``'s first fold). On a
    partition's many rows its OpenMP threads pay (0.31 s against 0.57 s for 100,000 rows on two cores), unlike in
    the small cross-validation fits, which run on one thread."""
    matrix = domain_matrix([X[domain["columns"]]], categorical, 0, domain["kept"])[:, domain["usable"]]
    return domain["model"].predict_proba(matrix)[:, 1]


# ------------------------------------------------------------------------------------ every row, in bins


def bin_cells(values: np.ndarray, edges: np.ndarray, dense: int = 8) -> np.ndarray:
    """``np.searchsorted(edges, values, side='left')`` (how many edges lie below each value), about twice as fast on
    2,000 edges: a uniform grid of 4 cells per edge over the edges' range says, for each value, how many edges lie in
    the cells before its own (the same float arithmetic maps edges and values to cells, and it is monotone, so an edge
    in an earlier cell is below the value); the few edges in its own cell are then compared one step at a time. Values
    in a cell with more than ``dense`` edges (a heavy tail squeezes most edges into a few cells) are searched."""
    m = len(edges)
    if m < 64 or not edges[-1] > edges[0] or len(values) < 10 * m:
        return np.searchsorted(edges, values, side="left")
    cells = 4 * m
    start, scale = edges[0], cells / (edges[-1] - edges[0])
    before = np.searchsorted(np.clip((edges - start) * scale, 0, cells - 1).astype(np.intp), np.arange(cells + 1), side="left")
    inside = np.diff(before)  # edges in each cell
    cell = np.clip((values - start) * scale, 0, cells - 1).astype(np.intp)
    index = before[cell]
    crowded = inside[cell] > dense
    if crowded.any():
        index[crowded] = np.searchsorted(edges, values[crowded], side="left")
    pending = np.flatnonzero(~crowded & (inside[cell] > 0))
    bounded = np.append(edges, np.inf)
    while len(pending):  # at most `dense` steps: past each edge of its own cell that lies below the value
        pending = pending[bounded[index[pending]] < values[pending]]
        index[pending] += 1
    return index


def numeric_part(values: np.ndarray, edges: np.ndarray) -> dict:
    """The additive summary of some values of a numeric column: rows per fine bin and the sum of their values, missing
    values, and count, mean, sum of squared deviations, min and max of the values present."""
    values = np.asarray(values, dtype=float)
    present = values[~np.isnan(values)]
    cells = bin_cells(present, edges)  # right-closed bins, as binned_counts
    n = len(present)
    mean = float(present.mean()) if n else 0.0
    return {
        "counts": np.bincount(cells, minlength=len(edges) + 1).astype(np.int64),
        "sums": np.bincount(cells, weights=present, minlength=len(edges) + 1),
        "missing": int(len(values) - n), "n": int(n), "mean": mean,
        "m2": float(((present - mean) ** 2).sum()) if n else 0.0,
        "min": float(present.min()) if n else float("inf"), "max": float(present.max()) if n else float("-inf"),
    }


def merge_numeric(a: dict | None, b: dict | None) -> dict | None:
    """Two summaries of disjoint rows as one (moments by Chan et al.'s pairwise update)."""
    if a is None or b is None:
        return b if a is None else a
    n = a["n"] + b["n"]
    delta = b["mean"] - a["mean"]
    return {
        "counts": a["counts"] + b["counts"], "sums": a["sums"] + b["sums"],
        "missing": a["missing"] + b["missing"], "n": n,
        "mean": a["mean"] + delta * b["n"] / n if n else 0.0,
        "m2": a["m2"] + b["m2"] + (delta * delta * a["n"] * b["n"] / n if n else 0.0),
        "min": min(a["min"], b["min"]), "max": max(a["max"], b["max"]),
    }


def binned_quantile(part: dict, edges: np.ndarray, q: float) -> float:
    """The q-quantile read off the fine bins (linear within the bin; the outer bins end at the min and max)."""
    bounds = np.concatenate([[part["min"]], np.clip(edges, part["min"], part["max"]), [part["max"]]])
    cumulative = np.concatenate([[0.0], np.cumsum(part["counts"])]) / part["n"]
    return float(np.interp(q, cumulative, bounds))


def fine_edges(reference: np.ndarray, bins: int, psi_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """The fine bins' edges (``bins`` quantiles of the reference, the PSI bins' edges among them) and, for each fine bin,
    the PSI bin it lies in: PSI's counts are then sums of fine counts, and no row is binned twice."""
    psi_edges = quantile_edges(reference, psi_bins)
    edges = np.unique(np.concatenate([quantile_edges(reference, bins), psi_edges]))
    lower = np.concatenate([[-np.inf], edges])  # a fine bin (e_(i-1), e_i] lies in PSI bin #{psi edges <= e_(i-1)}
    return edges, np.searchsorted(psi_edges, lower, side="right")


def binned_numeric_drift(ref: dict, cur: dict, edges: np.ndarray, psi_cells: np.ndarray, scale: str = "std",
                         epsilon: float = 1e-4) -> dict[str, float]:
    """KS, normalised Wasserstein and PSI of two numeric columns summarised by ``numeric_part`` on the same bins, with
    the largest error binning can make in KS (``ks_bound``) and in the effect (``effect_bound``).

    At the bin edges both cumulative distributions are exact, so the KS statistic read there is a lower bound; inside
    bin i each distribution rises by its share of rows in it (r_i, c_i), which bounds how far the difference can go
    between two edges. The signed area between the two distributions over a bin is exact, from the bin's counts and
    the sum of its values (the integral of F over (a, b] is (b - a) F(a) + sum over the bin's values of (b - v) / n);
    the Wasserstein distance is the sum of the bins' absolute areas, exact where the difference keeps one sign within a
    bin; where it may change sign, the area it can add is bounded by the bin's width times r_i + c_i and by the
    distance of the bin's values from its edges. PSI is exact on its bins (the reference sample's quantiles)."""
    from scipy.stats import kstwo

    n_r, n_c = ref["n"], cur["n"]
    with_missing = bool(ref["missing"] or cur["missing"])
    width = int(psi_cells.max()) + 1
    psi_r, psi_c = (np.bincount(psi_cells, weights=part["counts"], minlength=width) for part in (ref, cur))
    if with_missing:
        psi_r, psi_c = np.append(psi_r, ref["missing"]), np.append(psi_c, cur["missing"])
    out = {"psi": psi(psi_r, psi_c, epsilon) if n_r else float("nan")}
    if n_r == 0 or n_c == 0:
        return {**out, "statistic": float("nan"), "pvalue": float("nan"), "effect": float("nan"),
                "ks_bound": 0.0, "effect_bound": 0.0}
    r, c = ref["counts"] / n_r, cur["counts"] / n_c
    d = np.cumsum(r) - np.cumsum(c)  # F_r - F_c at each bin's upper edge (the last: at the max, 0)
    before = np.concatenate([[0.0], d[:-1]])  # ... and at its lower edge
    statistic = float(np.abs(d).max())
    low_g, high_g = np.maximum(before - c, d - r), np.minimum(before + r, d + c)  # where F_r - F_c can go inside a bin
    ks_bound = max(0.0, float(np.maximum(np.abs(low_g), np.abs(high_g)).max()) - statistic)
    en = n_r * n_c / (n_r + n_c)
    pvalue = float(kstwo.sf(statistic, max(1, int(round(en)))))

    low, high = min(ref["min"], cur["min"]), max(ref["max"], cur["max"])
    bounds = np.concatenate([[low], np.clip(edges, low, high), [high]])
    width = np.diff(bounds)
    upper_edge = bounds[1:]
    lower_edge = bounds[:-1]

    def area(part: dict, share_before: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        counts, sums = part["counts"], part["sums"]
        below = (counts * upper_edge - sums) / n  # integral of F(x) - F(a) over the bin: (b - v) summed
        above = (sums - counts * lower_edge) / n  # integral of F(b) - F(x): (v - a) summed
        integral = width * share_before + below  # of F over the bin
        return integral, np.maximum(above, 0.0), np.maximum(below, 0.0)

    cum_r = np.concatenate([[0.0], np.cumsum(r)[:-1]])
    cum_c = np.concatenate([[0.0], np.cumsum(c)[:-1]])
    int_r, above_r, below_r = area(ref, cum_r, n_r)
    int_c, above_c, below_c = area(cur, cum_c, n_c)
    signed = int_r - int_c
    estimate = float(np.abs(signed).sum())
    may_cross = (low_g < 0) & (high_g > 0)
    most = np.minimum.reduce([width * (r + c), below_r + below_c + width * np.abs(before), above_r + above_c + width * np.abs(d)])
    gap = np.where(may_cross, np.maximum(most - np.abs(signed), 0.0), 0.0)
    if scale == "iqr":
        spread = binned_quantile(ref, edges, 0.75) - binned_quantile(ref, edges, 0.25)
    else:
        spread = float(np.sqrt(ref["m2"] / (n_r - 1))) if n_r > 1 else 0.0
    if not spread:
        pooled = merge_numeric(ref, cur)
        spread = (binned_quantile(pooled, edges, 0.75) - binned_quantile(pooled, edges, 0.25) if scale == "iqr"
                  else float(np.sqrt(pooled["m2"] / (pooled["n"] - 1))) if pooled["n"] > 1 else 0.0) or 1.0
    return {**out, "statistic": statistic, "pvalue": pvalue, "effect": estimate / spread,
            "ks_bound": ks_bound, "effect_bound": float(gap.sum()) / spread}


# ---------------------------------------------------------------------------------------------- audit


def _sample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))


def _categorical_summary(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "no values"
    ranked = sorted(sorted(counts.items()), key=lambda item: -item[1])[:3]  # by share, ties by name
    return ", ".join(f"{name} {count / total:.0%}" for name, count in ranked)


def _numeric_summary(part: dict) -> str:
    if not part["n"]:
        return "no values"
    sd = np.sqrt(part["m2"] / (part["n"] - 1)) if part["n"] > 1 else 0.0
    return f"mean {part['mean']:.4g}, sd {sd:.4g}"


FEATURE, OUTPUT = "feature:", "output:"  # state keys: a feature's name, or what of the model's output


class DriftAudit(PartialAudit):
    """Per-feature drift tests (KS / chi-squared, BH-corrected, with effect-size floors), a domain
    classifier, and drift in the model's predictions and in the labels.

    Hybrid: bins, categories and the domain classifier are fitted on the sample; every row of both sides is counted
    into them (and scored by the domain classifier). Up to ``max_rows`` rows a side the values themselves are kept and
    the tests are scipy's on them, as on one frame."""

    name = "drift"
    metric_keys = (
        "drifted_features", "drifted_share", "domain_auc", "domain_auc_bound", "effect_bound_max", "ks_bound_max",
        "feature.*.{drifted,effect,pvalue_corrected}", "*.{chi2_pvalue,ks_pvalue,ks_statistic,psi,wasserstein}",
        "{prediction,label}.drifted", "rows.{reference,current}",
    )
    mode = "hybrid"
    requires = Requirements(modalities=("tabular", "image"))
    Config = DriftConfig
    description = "Which features, and how much of the joint distribution and the model's output, moved from reference to current."
    # Warn on any drifted feature: each is a significant AND material shift (see the module docstring).
    # Domain AUC: for one normal feature whose mean moves by d sd the AUC is Phi(d / sqrt 2), so 0.6 is a
    # 0.36-sd shift (PSI about 0.13, a "moderate" shift) and 0.8 a 1.2-sd shift, where most current rows
    # are told apart from the reference and its validation results no longer describe the population
    # scored. Chance alone stays below: with no drift the AUC's standard deviation is ~0.006 at 5,000 rows
    # a side, and ~0.04 at 150 (measured: 0.6 is then 2.6 sd, about one false warning in 200 runs).
    default_thresholds = (
        Threshold(metric="drifted_features", max=0, severity="warn"),
        Threshold(metric="domain_auc", max=0.6, severity="warn"),
        Threshold(metric="domain_auc", max=0.8, severity="fail"),
    )

    @classmethod
    def thresholds_for(cls, config: DriftConfig) -> tuple[Threshold, ...]:
        if config.domain_classifier:
            return cls.default_thresholds
        return tuple(t for t in cls.default_thresholds if not t.metric.startswith("domain_"))

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        small = [f"{ds.name} has {len(ds)}" for ds in (context.reference, context.current) if len(ds) < MIN_ROWS]
        if small:
            return f"drift tests need at least {MIN_ROWS} rows a side; " + ", ".join(small)
        return None

    # ------------------------------------------------------------------------------------------ columns

    @staticmethod
    def _columns(ds: Dataset, context: AuditContext) -> list[tuple[str, bool, Any]]:
        """(state key, categorical?, values) of every column compared: the features, then the model's output and labels."""
        out: list[tuple[str, bool, Any]] = [(FEATURE + str(f), f in context.categorical, ds.X[f]) for f in context.features]
        if context.task == "classification":
            out.append((OUTPUT + "predicted label", True, ds.predictions.labels))
            if context.reference.predictions.proba is not None and context.current.predictions.proba is not None:
                name, score = _score(context)
                out.append((OUTPUT + name, False, score(ds.predictions.proba)))
        else:
            out.append((OUTPUT + "prediction", False, np.asarray(ds.predictions.labels, dtype=float)))
        if context.reference.labelled and context.current.labelled and ds.y is not None:
            if context.task == "classification":
                out.append((OUTPUT + "label", True, ds.y.to_numpy()))
            else:
                out.append((OUTPUT + "label", False, ds.y.to_numpy(dtype=float)))
        return out

    # ------------------------------------------------------------------------------------------ reducer

    def fit(self, context: AuditContext) -> dict:
        """On the sample: the bins of each numeric column (reference quantiles), the categories kept when a column has
        too many to count exactly, and the domain classifier (cross-validated, as on one frame)."""
        cfg: DriftConfig = self.config
        ref_rows = _sample(len(context.reference), cfg.max_rows, context.rng("drift.sample.reference"))
        cur_rows = _sample(len(context.current), cfg.max_rows, context.rng("drift.sample.current"))
        edges, kept = {}, {}
        ref_columns = self._columns(context.reference, context)
        cur_values = {key: values for key, _, values in self._columns(context.current, context)}
        for key, categorical, values in ref_columns:
            if categorical:
                names = pd.concat([as_categories(values), as_categories(cur_values[key])], ignore_index=True)
                chosen = kept_categories(names, cfg.max_categories)
                kept[key] = chosen if OTHER in chosen else [*chosen, OTHER]
            else:
                x = np.asarray(values, dtype=float)
                present = x[~np.isnan(x)]
                if len(present):
                    edges[key] = fine_edges(present, cfg.bins, cfg.psi_bins)
                else:
                    edges[key] = (np.zeros(0), np.zeros(1, dtype=np.int64))
        domain = None
        if cfg.domain_classifier:
            X_ref = context.reference.X.iloc[ref_rows][list(context.features)]
            X_cur = context.current.X.iloc[cur_rows][list(context.features)]
            n = min(cfg.domain_rows, len(X_ref), len(X_cur))
            rng = context.rng("drift.domain.rows")
            A = X_ref.iloc[_sample(len(X_ref), n, rng)]
            B = X_cur.iloc[_sample(len(X_cur), n, rng)]
            domain = domain_classifier(A, B, context.categorical, context.random_state("drift.domain.model"),
                                       cfg.domain_folds, cfg.importance_repeats, cfg.max_categories)
            domain["rows_per_side"] = n
        return {"rows": (ref_rows, cur_rows), "edges": edges, "kept": kept, "domain": domain}

    def init(self, context: AuditContext, fitted: dict) -> State:
        sides = ("reference", "current")
        return {"rows": dict.fromkeys(sides, 0), "numeric": {s: {} for s in sides}, "categorical": {s: {} for s in sides},
                "raw": {s: {} for s in sides}, "domain": {s: None for s in sides}, "kept": dict(fitted["kept"])}

    def update(self, state: State, partition: Dataset, context: AuditContext, fitted: dict) -> State:
        cfg: DriftConfig = self.config
        side = partition.name
        if len(partition) == 0:
            return state
        rows = state["rows"][side] + len(partition)
        raw = state["raw"][side] if state["raw"][side] is not None and rows <= cfg.max_rows else None
        raw = dict(raw) if raw is not None else None
        numeric, categorical = dict(state["numeric"][side]), dict(state["categorical"][side])
        for key, is_categorical, values in self._columns(partition, context):
            if is_categorical:
                part = {"counts": name_counts(values), "lumped": False}
                categorical[key] = self._merge_categories(categorical.get(key), part, state["kept"][key])
            else:
                x = pd.Series(values).to_numpy(dtype=float, na_value=np.nan) if isinstance(values, pd.Series) else np.asarray(values, dtype=float)
                numeric[key] = merge_numeric(numeric.get(key), numeric_part(x, fitted["edges"][key][0]))
                if raw is not None:
                    raw[key] = np.concatenate([raw[key], x]) if key in raw else x
        domain = state["domain"][side]
        if fitted["domain"] is not None:
            scores = domain_scores(fitted["domain"], partition.X, context.categorical)
            cells = np.clip((scores * cfg.domain_bins).astype(np.int64), 0, cfg.domain_bins - 1)
            counted = np.bincount(cells, minlength=cfg.domain_bins).astype(np.int64)
            domain = counted if domain is None else domain + counted
        return {**state, "rows": {**state["rows"], side: rows}, "numeric": {**state["numeric"], side: numeric},
                "categorical": {**state["categorical"], side: categorical}, "raw": {**state["raw"], side: raw},
                "domain": {**state["domain"], side: domain}}

    def _merge_categories(self, a: dict | None, b: dict | None, kept: list[str]) -> dict | None:
        """Exact counts of every name, until a column has more than max_distinct names: then the sample's kept
        categories and "(other)"."""
        if a is None or b is None:
            out = b if a is None else a
        else:
            counts = dict(a["counts"])
            for name, count in b["counts"].items():
                counts[name] = counts.get(name, 0) + count
            out = {"counts": counts, "lumped": a["lumped"] or b["lumped"]}
        if out is not None and (out["lumped"] or len(out["counts"]) > self.config.max_distinct):
            out = self._lumped(out, kept)
        return out

    def merge(self, a: State, b: State) -> State:
        cfg: DriftConfig = self.config
        out = self.init(None, {"kept": a["kept"] or b["kept"]})  # type: ignore[arg-type]
        for side in ("reference", "current"):
            rows = a["rows"][side] + b["rows"][side]
            out["rows"][side] = rows
            for key in {**a["numeric"][side], **b["numeric"][side]}:
                out["numeric"][side][key] = merge_numeric(a["numeric"][side].get(key), b["numeric"][side].get(key))
            for key in {**a["categorical"][side], **b["categorical"][side]}:
                out["categorical"][side][key] = self._merge_categories(
                    a["categorical"][side].get(key), b["categorical"][side].get(key), out["kept"][key])
            raws = (a["raw"][side], b["raw"][side])
            if raws[0] is None or raws[1] is None or rows > cfg.max_rows:
                out["raw"][side] = None
            else:
                out["raw"][side] = {key: np.concatenate([r[key] for r in raws if key in r]) for key in {**raws[0], **raws[1]}}
            domains = [d for d in (a["domain"][side], b["domain"][side]) if d is not None]
            out["domain"][side] = sum(domains[1:], domains[0]) if domains else None
        return out

    # ------------------------------------------------------------------------------------------ result

    @staticmethod
    def _lumped(part: dict | None, kept: list[str]) -> dict:
        """The counts of ``kept``'s names, every other name's under "(other)"."""
        part = part or {"counts": {}, "lumped": False}
        counts: dict[str, int] = {}
        for name, count in part["counts"].items():
            name = name if name in kept else OTHER
            counts[name] = counts.get(name, 0) + count
        return {"counts": counts, "lumped": True}

    def _compare(self, key: str, is_categorical: bool, state: State, fitted: dict, exact: bool) -> dict[str, Any]:
        """One column's test, effect and PSI, with its missing shares and summaries, from the merged state."""
        cfg: DriftConfig = self.config
        if is_categorical:
            ref, cur = (state["categorical"][s].get(key) or {"counts": {}, "lumped": False} for s in ("reference", "current"))
            kept = None
            if ref["lumped"] or cur["lumped"]:
                kept = state["kept"][key]
                ref, cur = self._lumped(ref, kept), self._lumped(cur, kept)
            result = table_drift(counts_table(ref["counts"], cur["counts"], cfg.max_categories, kept), cfg.psi_epsilon)
            result.update(ks_bound=0.0, effect_bound=0.0)
            shares = [part["counts"].get(MISSING, 0) / max(1, sum(part["counts"].values())) for part in (ref, cur)]
            summaries = [_categorical_summary(part["counts"]) for part in (ref, cur)]
        else:
            empty = numeric_part(np.zeros(0), fitted["edges"][key][0])
            ref, cur = (state["numeric"][s].get(key) or empty for s in ("reference", "current"))
            if exact:
                values = [state["raw"][s].get(key, np.zeros(0)) for s in ("reference", "current")]
                result = {**numeric_drift(*values, cfg.scale, cfg.psi_bins, cfg.psi_epsilon), "ks_bound": 0.0, "effect_bound": 0.0}
            else:
                result = binned_numeric_drift(ref, cur, *fitted["edges"][key], cfg.scale, cfg.psi_epsilon)
            shares = [part["missing"] / max(1, part["missing"] + part["n"]) for part in (ref, cur)]
            summaries = [_numeric_summary(part) for part in (ref, cur)]
        return {**result, "missing": shares, "summaries": summaries}

    def finalize(self, state: State, context: AuditContext, fitted: dict, population: dict[str, int]) -> AuditResult:
        cfg: DriftConfig = self.config
        exact = state["raw"]["reference"] is not None and state["raw"]["current"] is not None
        columns = {key: is_categorical for key, is_categorical, _ in self._columns(context.reference, context)}
        compared = {key: self._compare(key, is_categorical, state, fitted, exact) for key, is_categorical in columns.items()}

        rows = []
        for feature in context.features:
            is_cat = feature in context.categorical
            result = compared[FEATURE + str(feature)]
            rows.append({
                "feature": str(feature),
                "type": "categorical" if is_cat else "numeric",
                "test": "chi-squared" if is_cat else "kolmogorov-smirnov",
                "statistic": result["statistic"],
                "pvalue": result["pvalue"],
                "effect_measure": "psi" if is_cat else f"wasserstein / reference {cfg.scale}",
                "effect": result["effect"],
                "psi": result["psi"],
                "min_effect": cfg.min_effect.categorical if is_cat else cfg.min_effect.numeric,
                "missing_reference": result["missing"][0],
                "missing_current": result["missing"][1],
                "reference_summary": result["summaries"][0],
                "current_summary": result["summaries"][1],
                "ks_bound": result["ks_bound"],
                "effect_bound": result["effect_bound"],
            })
        table = pd.DataFrame(rows)
        table.insert(5, "pvalue_corrected", correct(table["pvalue"].to_numpy(), cfg.correction))
        table.insert(6, "drifted", (table["pvalue_corrected"] < cfg.alpha) & (table["effect"] > table["min_effect"]))

        ref_rows, cur_rows = fitted["rows"]
        metrics: dict[str, float] = {
            "drifted_features": float(table["drifted"].sum()),
            "drifted_share": float(table["drifted"].mean()),
            "rows.reference": float(state["rows"]["reference"]),
            "rows.current": float(state["rows"]["current"]),
            "ks_bound_max": float(np.nanmax(table["ks_bound"], initial=0.0)),
            "effect_bound_max": float(np.nanmax(table["effect_bound"], initial=0.0)),
        }
        info = {
            "tests": "numeric: KS + Wasserstein / reference " + cfg.scale + "; categorical: chi-squared + PSI",
            "rule": f"drifted when {cfg.correction}-corrected p < {cfg.alpha:g} and effect > "
                    f"{cfg.min_effect.numeric:g} (numeric) / {cfg.min_effect.categorical:g} (categorical PSI)",
            "drifted": ", ".join(table.loc[table["drifted"], "feature"]) or "none",
        }
        if not exact:
            info["every_row"] = (
                f"every row counted: numeric columns in {cfg.bins} bins at the reference sample's quantiles (KS and "
                f"Wasserstein from the bins, within ks_bound / effect_bound, largest {metrics['ks_bound_max']:.2g} / "
                f"{metrics['effect_bound_max']:.2g}; PSI exact on the sample's {cfg.psi_bins}-quantile bins), categories "
                f"counted exactly (up to {cfg.max_distinct:,} distinct names a column; beyond, the sample's "
                f"{cfg.max_categories} most frequent and \"(other)\"); the figures show the sample")
        artifacts: list[Artifact] = []

        domain = fitted["domain"]
        if domain is not None:
            table["domain_importance"] = domain["importance"]
            auc, bound = domain["auc"], 0.0
            record = {"auc": domain["auc"], "fold_auc": domain["fold_auc"], "rows_per_side": domain["rows_per_side"]}
            if not exact and state["domain"]["reference"] is not None and state["domain"]["current"] is not None:
                auc, ties = _histogram_auc(state["domain"]["current"], state["domain"]["reference"])
                # the rows the classifier trained on are among those scored: each pair with one of them may be
                # misjudged, a share of at most trained / rows per side
                trained = sum(domain["trained"][s] / max(1, state["rows"][s]) for s in ("reference", "current"))
                bound = ties + trained
                record.update(every_row_auc=auc, every_row_auc_bound=bound)
                info["domain_auc"] = (f"a classifier trained on {domain['rows_per_side']:,} sampled rows a side, scoring "
                                      f"every row (AUC within {bound:.2g}: score bins and its own training rows); its "
                                      f"cross-validated AUC on the sample is {domain['auc']:.3f}")
            metrics["domain_auc"] = auc
            metrics["domain_auc_bound"] = bound
            ranked = table.sort_values("domain_importance", ascending=False, kind="stable").head(5)
            info["domain_top_features"] = ", ".join(f"{r.feature} ({r.domain_importance:.3f})" for r in ranked.itertuples())
            artifacts.append(Artifact.json("domain_classifier", {
                **record,
                "importance": {f: float(v) for f, v in zip(table["feature"], domain["importance"], strict=True)},
                "importance_std": {f: float(v) for f, v in zip(table["feature"], domain["importance_std"], strict=True)},
            }, "Domain classifier: cross-validated AUC and permutation importance (drop in AUC)"))

        for row in table.itertuples():
            key = key_part(row.feature)
            metrics[f"feature.{key}.pvalue_corrected"] = float(row.pvalue_corrected)
            metrics[f"feature.{key}.effect"] = float(row.effect)
            metrics[f"feature.{key}.drifted"] = float(row.drifted)

        outputs, output_metrics, output_info = self._outputs(context, compared, cfg)
        metrics.update(output_metrics)
        info.update(output_info)

        X_ref = context.reference.X.iloc[ref_rows][list(context.features)]
        X_cur = context.current.X.iloc[cur_rows][list(context.features)]
        artifacts = [
            Artifact.table("features", table, "Per-feature drift: tests, corrected p-values, effect sizes"),
            Artifact.table("outputs", outputs, "Drift in the model's predictions and in the labels"),
            *artifacts,
            _effect_figure(table, cfg),
            _distribution_figure(table, X_ref, X_cur, context.categorical, cfg),
            _prediction_figure(context, ref_rows, cur_rows),
        ]
        return AuditResult(audit=self.name, metrics=metrics, artifacts=tuple(artifacts), info=info)

    @staticmethod
    def _outputs(context: AuditContext, compared: dict[str, dict], cfg: DriftConfig
                 ) -> tuple[pd.DataFrame, dict[str, float], dict[str, str]]:
        """Drift of the predictions (and of the labels when both sides are labelled)."""
        rows: list[dict] = []
        metrics: dict[str, float] = {}
        info: dict[str, str] = {}

        def get(target: str, test: str) -> dict[str, Any]:
            result = compared[OUTPUT + target]
            rows.append({"target": target, "test": test, **{k: result[k] for k in ("statistic", "pvalue", "effect", "psi",
                                                                                 "ks_bound", "effect_bound")}})
            return result

        if context.task == "classification":
            predicted = get("predicted label", "chi-squared")
            metrics.update({"prediction.psi": predicted["psi"], "prediction.chi2_pvalue": predicted["pvalue"]})
            drifted = predicted["pvalue"] < cfg.alpha and predicted["effect"] > cfg.min_effect.categorical
            if context.reference.predictions.proba is not None and context.current.predictions.proba is not None:
                name, _ = _score(context)
                info["prediction_score"] = name
                result = get(name, "kolmogorov-smirnov")
                # the score is the richer signal: it decides when there is one
                drifted = result["pvalue"] < cfg.alpha and result["effect"] > cfg.min_effect.numeric
                metrics.update({"prediction.ks_pvalue": result["pvalue"], "prediction.ks_statistic": result["statistic"],
                                "prediction.wasserstein": result["effect"]})
        else:
            result = get("prediction", "kolmogorov-smirnov")
            drifted = result["pvalue"] < cfg.alpha and result["effect"] > cfg.min_effect.numeric
            metrics.update({"prediction.ks_pvalue": result["pvalue"], "prediction.ks_statistic": result["statistic"],
                            "prediction.wasserstein": result["effect"], "prediction.psi": result["psi"]})
        metrics["prediction.drifted"] = float(drifted)

        ref, cur = context.reference, context.current
        if ref.labelled and cur.labelled:
            if context.task == "classification":
                result = get("label", "chi-squared")
                metrics.update({"label.psi": result["psi"], "label.chi2_pvalue": result["pvalue"]})
            else:
                result = get("label", "kolmogorov-smirnov")
                metrics.update({"label.ks_pvalue": result["pvalue"], "label.wasserstein": result["effect"],
                                "label.psi": result["psi"]})
        else:
            info["labels"] = "label drift needs labels on both sides; " + ", ".join(
                f"{ds.name}: {'labelled' if ds.labelled else 'unlabelled'}" for ds in (ref, cur))
        table = pd.DataFrame(rows, columns=["target", "test", "statistic", "pvalue", "effect", "psi", "ks_bound", "effect_bound"])
        table["effect_measure"] = np.where(table["test"] == "chi-squared", "psi", f"wasserstein / reference {cfg.scale}")
        return table, metrics, info


def _score(context: AuditContext):
    """The predicted score compared across datasets: P(positive class) when binary, else the top probability."""
    classes = context.model.classes
    if len(classes) == 2:
        return f"P({classes[1]})", lambda proba: proba[:, 1]
    return "max probability", lambda proba: proba.max(axis=1)


# -------------------------------------------------------------------------------------------- figures


def _effect_figure(table: pd.DataFrame, cfg: DriftConfig) -> Artifact:
    panels = [(kind, table[table["type"] == kind]) for kind in ("numeric", "categorical") if (table["type"] == kind).any()]
    heights = [min(len(part), 30) for _, part in panels]
    fig = Figure(figsize=(8, 0.32 * sum(heights) + 1.4 * len(panels) + 0.4), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=[h + 2 for h in heights])[:, 0]
    for ax, (kind, part) in zip(axes, panels, strict=True):
        shown = part.sort_values("effect", ascending=True, kind="stable", na_position="first").tail(30)
        positions = np.arange(len(shown))
        colours = [DRIFT_COLOUR if d else REFERENCE_COLOUR for d in shown["drifted"]]
        ax.barh(positions, shown["effect"].fillna(0), color=colours)
        ax.set_yticks(positions, shown["feature"])
        floor = cfg.min_effect.numeric if kind == "numeric" else cfg.min_effect.categorical
        ax.axvline(floor, color="black", linestyle="--", linewidth=1, label=f"min_effect {floor:g}")
        ax.set_xlabel(f"wasserstein distance / reference {cfg.scale}" if kind == "numeric" else "PSI")
        ax.set_title(f"{kind} features (red: drifted)")
        ax.legend(loc="best")
    return Artifact.figure("effect_sizes", fig, "Effect size per feature; drifted features in red")


def _distribution_figure(table: pd.DataFrame, X_ref: pd.DataFrame, X_cur: pd.DataFrame,
                         categorical: tuple[str, ...], cfg: DriftConfig) -> Artifact:
    """Drifted features first, then the largest effects relative to their floors, up to ``cfg.top``."""
    order = table.assign(ratio=table["effect"] / table["min_effect"].replace(0, np.nan))
    order = order.sort_values(["drifted", "ratio"], ascending=[False, False], kind="stable", na_position="last")
    shown = order.head(cfg.top)
    columns = min(3, len(shown))
    lines = -(-len(shown) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * lines), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax, row in zip(axes, shown.itertuples(), strict=False):
        if row.feature in categorical:
            counts = category_counts(X_ref[row.feature], X_cur[row.feature], cfg.max_categories)
            shares = counts / counts.sum()
            shares = shares.loc[shares.max(axis=1).sort_values(ascending=False, kind="stable").index[:10]]
            positions = np.arange(len(shares))
            ax.bar(positions - 0.2, shares["reference"], width=0.4, color=REFERENCE_COLOUR, label="reference")
            ax.bar(positions + 0.2, shares["current"], width=0.4, color=CURRENT_COLOUR, label="current")
            ax.set_xticks(positions, shares.index, rotation=30, ha="right")
            ax.set_ylabel("share of rows")
        else:
            _histograms(ax, X_ref[row.feature].to_numpy(dtype=float, na_value=np.nan),
                        X_cur[row.feature].to_numpy(dtype=float, na_value=np.nan))
        ax.set_title(f"{row.feature}{' (drifted)' if row.drifted else ''}\n{row.effect_measure} = {row.effect:.3g}",
                     fontsize=9)
        _legend(ax, fontsize=7)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    return Artifact.figure("distributions", fig, "Reference and current distributions of the most drifted features")


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing drawn (no values): no legend
        ax.legend(**kwargs)


def _histograms(ax, reference: np.ndarray, current: np.ndarray, label: str = "") -> None:
    r, c = reference[~np.isnan(reference)], current[~np.isnan(current)]
    pooled = np.concatenate([r, c])
    if len(pooled) == 0:
        ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
        return
    low, high = np.quantile(pooled, [0.005, 0.995])
    edges = np.histogram_bin_edges(pooled, bins=30, range=(low, high) if high > low else None)
    for values, colour, name in ((r, REFERENCE_COLOUR, "reference"), (c, CURRENT_COLOUR, "current")):
        if len(values):
            ax.hist(values, bins=edges, density=True, histtype="stepfilled" if name == "reference" else "step",
                    color=colour, alpha=0.6 if name == "reference" else 1.0, linewidth=1.5, label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("density")


def _prediction_figure(context: AuditContext, ref_rows: np.ndarray, cur_rows: np.ndarray) -> Artifact:
    ref, cur = context.reference.predictions, context.current.predictions
    if context.task == "regression":
        fig = Figure(figsize=(6, 3.8), layout="constrained")
        ax = fig.add_subplot()
        _histograms(ax, ref.labels[ref_rows].astype(float), cur.labels[cur_rows].astype(float), "prediction")
        _legend(ax)
        ax.set_title("Predictions: reference against current")
        return Artifact.figure("predictions", fig, "Distribution of the predictions, reference against current")
    panels = 2 if ref.proba is not None and cur.proba is not None else 1
    fig = Figure(figsize=(5 * panels, 3.8), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    counts = category_counts(ref.labels[ref_rows], cur.labels[cur_rows], len(context.model.classes) + 10)
    shares = counts / counts.sum()
    positions = np.arange(len(shares))
    axes[0].bar(positions - 0.2, shares["reference"], width=0.4, color=REFERENCE_COLOUR, label="reference")
    axes[0].bar(positions + 0.2, shares["current"], width=0.4, color=CURRENT_COLOUR, label="current")
    axes[0].set_xticks(positions, shares.index, rotation=30, ha="right")
    axes[0].set_ylabel("share of rows")
    axes[0].set_title("Predicted labels")
    axes[0].legend()
    if panels == 2:
        name, score = _score(context)
        _histograms(axes[1], score(ref.proba[ref_rows]), score(cur.proba[cur_rows]), name)
        axes[1].set_title(f"Predicted {name}")
        _legend(axes[1])
    return Artifact.figure("predictions", fig, "Distribution of the predictions, reference against current")
