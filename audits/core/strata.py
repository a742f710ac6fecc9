"""Stratified samples: every predicted class (or segment value) gets rows, and each row says how many it stands for.

A uniform sample of 20,000 rows out of a million holds about 20 rows of a class the model predicts for 0.1 % of the
traffic, and SHAP's 200 explained rows hold none. A stratified sample gives each stratum at least ``floor`` rows
(all of its rows when it has fewer) and shares the rest in proportion to the strata's sizes. Rows of a stratum drawn
more often than their share carry a smaller weight: ``weight`` is the number of population rows a sampled row stands
for (``N_s / n_s`` in stratum ``s``), so a weighted mean over the sample estimates the population's mean without bias,
and a per-stratum figure has ``floor`` rows to stand on.

Only audits that honour the weights see a stratified sample (``Audit.stratified``); the others keep the uniform one,
on which an unweighted mean is already unbiased.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MISSING = "(missing)"


@dataclass(frozen=True)
class Strata:
    """The stratum of each row of a dataset (same order as its rows), and the population rows each row stands for."""

    by: str  # 'prediction', or the segment column the strata come from
    labels: np.ndarray  # (rows,) str: the stratum of each row
    weights: np.ndarray  # (rows,) float: population rows each row stands for
    floor: int  # rows a stratum gets at least, when it has them

    def __post_init__(self) -> None:
        if len(self.labels) != len(self.weights):
            raise ValueError(f"{len(self.labels)} stratum labels for {len(self.weights)} weights")

    def take(self, positions: np.ndarray, weights: np.ndarray | None = None) -> Strata:
        return Strata(self.by, self.labels[positions], self.weights[positions] if weights is None else weights, self.floor)

    def population(self) -> pd.Series:
        """Rows per stratum in the population (the sum of the weights), largest first, ties by name."""
        totals = pd.Series(self.weights).groupby(self.labels).sum()
        return totals.iloc[np.lexsort((totals.index.to_numpy(dtype=str), -totals.to_numpy()))]

    def describe(self, shown: int = 4) -> str:
        """One line for the report, the smallest strata first (where the floor acts): e.g. "'c' 200 rows for 214"."""
        counts = pd.Series(self.labels).value_counts()
        population = self.population()
        parts = [f"'{name}' {int(counts.get(name, 0)):,} rows for {population[name]:,.0f}"
                 for name in population.index[::-1][:shown]]  # the smallest strata: where the floor acts
        more = f", {len(population) - shown} more" if len(population) > shown else ""
        return f"stratified by {self.by} ({len(population)} strata, at least {self.floor:,} rows each: {', '.join(parts)}{more})"


def stratum_labels(values: pd.Series | np.ndarray) -> np.ndarray:
    """Each value as a stratum name: its string, '(missing)' for a missing value (the names the segments audit uses)."""
    series = pd.Series(values)
    return series.astype(object).where(series.notna(), MISSING).astype(str).to_numpy()


def allocate(available: np.ndarray, population: np.ndarray, n: int, floor: int) -> np.ndarray:
    """Rows to draw from each stratum: in proportion to ``population``, but at least ``min(floor, available)`` (the floor
    lowered evenly when the floors alone exceed ``n``) and never more than ``available``; whole rows by largest
    remainders (ties by position)."""
    available = np.asarray(available, dtype=np.int64)
    population = np.asarray(population, dtype=float)
    n = int(min(n, available.sum()))
    while floor > 0 and np.minimum(floor, available).sum() > n:
        floor -= max(1, floor // 8)
    least = np.minimum(max(floor, 0), available)
    fixed = np.zeros(len(available), dtype=bool)
    while True:  # strata whose share falls below their floor (or above what they have) are fixed there; the rest share
        free = ~fixed
        rest = n - int(least[fixed].sum())
        weight = np.where(free, population, 0.0)
        share = rest * weight / weight.sum() if weight.sum() > 0 else np.where(free, rest / max(free.sum(), 1), 0.0)
        low, high = free & (share < least), free & (share > available)
        if not (low | high).any():
            break
        fixed |= low | high
        least = np.where(high, available, least)
    take = np.where(fixed, least, np.floor(share).astype(np.int64))
    left = n - int(take.sum())
    order = np.lexsort((np.arange(len(share)), -(share - np.floor(share))))
    for k in order:  # the remainders: a row each to the free strata with the largest fractions
        if left <= 0:
            break
        if not fixed[k] and take[k] < available[k]:
            take[k] += 1
            left -= 1
    return take


def stratified_positions(strata: Strata, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows drawn stratified (positions in order, and the population rows each stands for): each stratum gets
    ``strata.floor`` rows when it has them, the rest are shared by the strata's population sizes; uniform within one."""
    names, codes = np.unique(strata.labels, return_inverse=True)
    available = np.bincount(codes, minlength=len(names))
    population = np.bincount(codes, weights=strata.weights, minlength=len(names))
    take = allocate(available, population, n, strata.floor)
    positions, weights = [], []
    for k in range(len(names)):
        if take[k] == 0:
            continue
        members = np.flatnonzero(codes == k)
        chosen = np.sort(rng.choice(members, size=int(take[k]), replace=False))
        positions.append(chosen)
        weights.append(np.full(len(chosen), population[k] / take[k]))
    order = np.argsort(np.concatenate(positions), kind="stable")
    return np.concatenate(positions)[order], np.concatenate(weights)[order]


def weighted_mean_interval(values: np.ndarray, strata: Strata) -> tuple[np.ndarray, np.ndarray]:
    """The population mean of each column of ``values`` (rows, columns) from a stratified sample, and the half-width of
    its 95 % normal interval: sum over strata of (N_s / N) * mean_s, variance sum of (N_s / N)^2 * var_s / n_s (a
    stratum of one row adds no variance it could estimate)."""
    values = np.asarray(values, dtype=float)
    names, codes = np.unique(strata.labels, return_inverse=True)
    population = np.bincount(codes, weights=strata.weights, minlength=len(names))
    share = population / population.sum()
    mean = np.zeros(values.shape[1])
    variance = np.zeros(values.shape[1])
    for k in range(len(names)):
        rows = values[codes == k]
        mean += share[k] * rows.mean(axis=0)
        if len(rows) > 1:
            variance += share[k] ** 2 * rows.var(axis=0, ddof=1) / len(rows)
    return mean, 1.96 * np.sqrt(variance)
