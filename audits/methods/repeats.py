"""Repeat a Monte Carlo estimate in batches until its confidence interval is as tight as the figure needs.

An audit that repeats something random (shuffles of a column, draws of a donor value) to average it out asks
two things of this module: how wide is the interval around each figure after ``n`` repeats, and how many more
repeats would make the widest one narrow enough. ``sequential`` runs the batches: it draws ``min_repeats``,
then, while the widest half-width is above the tolerance, as many more as the current spread says are still
needed (a half-width shrinks as 1/sqrt(n)), at most doubling what was done and never past ``max_repeats``.

The tolerance is relative to the largest |figure| (figures are compared with each other: an interval of a tenth
of the top importance cannot swap a feature with one a fifth of the top below it) with an absolute floor (when
nothing matters, every figure is ~0 and a relative tolerance could never be met).

The interval is over the repeats only, for the rows they were computed on: how far the figure could still move
with more repeats, not how far it would with other rows. Stopping when the interval is narrow makes its coverage
a little lower than nominal (the last look is the one that happened to be narrow); ``max_repeats`` bounds the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """Figures after the last batch: mean and interval half-width per figure, the repeats spent, the
    half-width aimed at, whether it was reached, and the size of each batch."""

    mean: np.ndarray
    halfwidth: np.ndarray
    repeats: int
    tolerance: float
    converged: bool
    batches: tuple[int, ...]

    @property
    def widest(self) -> float:
        return float(np.nanmax(self.halfwidth)) if np.isfinite(self.halfwidth).any() else float("nan")


def t_halfwidth(samples: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Half-width of Student's t interval for the mean of each column of ``samples`` (repeats, figures);
    NaN with fewer than two repeats."""
    from scipy import stats

    samples = np.asarray(samples, dtype=float)
    n = samples.shape[0]
    if n < 2:
        return np.full(samples.shape[1:], np.nan)
    return stats.t.ppf(0.5 + confidence / 2, n - 1) * samples.std(axis=0, ddof=1) / math.sqrt(n)


def normal_quantile(confidence: float = 0.95) -> float:
    from scipy import stats

    return float(stats.norm.ppf(0.5 + confidence / 2))


def tolerance(mean: np.ndarray, relative: float, absolute: float = 0.0) -> float:
    """The half-width aimed at: ``relative`` times the largest |mean|, at least ``absolute``."""
    mean = np.abs(np.asarray(mean, dtype=float))
    largest = float(np.nanmax(mean)) if np.isfinite(mean).any() else 0.0
    return max(relative * largest, absolute)


def next_batch(done: int, widest: float, aimed: float, max_repeats: int) -> int:
    """Repeats to add: what 1/sqrt(n) says would bring ``widest`` down to ``aimed``, at least 1, at most ``done``
    (doubling: an estimate of the spread from few repeats is itself rough), never past ``max_repeats``."""
    room = max_repeats - done
    if room <= 0:
        return 0
    if not np.isfinite(widest) or aimed <= 0:
        return min(done, room)
    needed = math.ceil(done * (widest / aimed) ** 2) - done
    return max(1, min(needed, done, room))


def sequential(draw: Callable[[int, int], None], assess: Callable[[], tuple[np.ndarray, np.ndarray]], *,
               min_repeats: int, max_repeats: int, relative: float, absolute: float = 0.0) -> Estimate:
    """Call ``draw(batch_index, n)`` to add ``n`` repeats to the caller's state, then ``assess()`` for (mean,
    half-width) per figure, until the widest half-width is at most ``tolerance(mean, relative, absolute)`` or
    ``max_repeats`` are spent. ``min_repeats`` come first, in one batch."""
    if not 1 <= min_repeats <= max_repeats:
        raise ValueError(f"need 1 <= min_repeats <= max_repeats, got {min_repeats} and {max_repeats}")
    done, batches, size = 0, [], min_repeats
    while True:
        draw(len(batches), size)
        done += size
        batches.append(size)
        mean, halfwidth = (np.asarray(a, dtype=float) for a in assess())
        aimed = tolerance(mean, relative, absolute)
        widest = float(np.nanmax(halfwidth)) if np.isfinite(halfwidth).any() else float("nan")
        converged = bool(np.isfinite(widest) and widest <= aimed)
        size = 0 if converged else next_batch(done, widest, aimed, max_repeats)
        if size == 0:
            return Estimate(mean, halfwidth, done, aimed, converged, tuple(batches))
