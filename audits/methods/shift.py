"""Distribution shift statistics: PSI, KS and Wasserstein from bins, chi-squared on categories, Benjamini-Hochberg, a domain classifier."""

from __future__ import annotations

import numpy as np
import pandas as pd

MISSING = "(missing)"


OTHER = "(other)"


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
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from threadpoolctl import threadpool_limits

    from audits.core.context import ModelUnderAudit
    from audits.methods.permutation import permutation_batch

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
            # scikit-learn's permutation_importance(estimator, X[test], y[test], scoring="roc_auc", n_repeats=repeats,
            # random_state=seed + k), shuffle for shuffle, with every shuffled copy of the fold predicted in one call
            # and scored by one ranking: 455 predict and roc_auc_score calls of 2,000 rows were 6 of drift's 8 s
            held = pd.DataFrame(X[test], columns=[f"c{j}" for j in range(X.shape[1])])
            fold = ModelUnderAudit(task="classification", predict=lambda F, e=estimator: e.predict(F.to_numpy()),
                                   predict_proba=lambda F, e=estimator: e.predict_proba(F.to_numpy()), classes=(0, 1))
            importances.append(permutation_batch(fold, held, pd.Series(y[test]), repeats, seed + k).mean(axis=1))
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
