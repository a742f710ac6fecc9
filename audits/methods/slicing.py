"""Weak slices: readable binning of columns, SliceLine's search, and the tests that confirm a slice on other rows.

A *slice* is a conjunction of conditions, each one column in one of its bins: ``clinic = north and bmi > 31.2``.
Columns are coded once (``encode``): a numeric column by quantile bins whose edges are rounded to a few significant
digits (rows are assigned with the rounded edges, so the text is exactly the rule), or by its values when it has no
more distinct values than bins; a categorical column by its most frequent values, the rarer ones lumped into
'(other)'; a missing value is '(missing)' in both.

``search`` runs SliceLine (Sagadeeva & Boehm, SIGMOD 2021; the ``sliceline`` package) on the codes and a non-negative
per-row figure. SliceLine's lattice at three conditions grows with the cube of the columns (30 columns of 4 bins:
about 210,000 candidates, 70 to 150 s on 10,000 rows), and its pruning is weak for 0/1 errors (any parent's error
count could be one slice of errors only). With more than ``max_columns`` columns, the search is therefore run twice:
up to two conditions over every column, then up to three over the ``max_columns`` columns that appear first in the
best slices of that first pass. SliceLine's score of a slice depends only on the rows, the figure and ``alpha``, not on
the columns searched, so the two passes' slices are ranked together. One call of SliceLine 0.3.0 must also not span
more than 2**53 ids (see ``ID_BITS``): wider data is searched on pairs of column groups.

``permutation_p_values``, ``holm`` and ``bootstrap_intervals`` are the confirmation: see audits/performance/slices.py.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd

from audits.methods.segments import labels_of

OTHER = "(other)"
MISSING = "(missing)"


@dataclass(frozen=True)
class Encoded:
    """Each row's code per column (``codes[i, j]`` indexes ``labels[j]``), and each code's condition as text."""

    columns: tuple[str, ...]
    codes: np.ndarray  # (rows, columns) int64
    labels: tuple[tuple[str, ...], ...]  # per column: the condition each code stands for ("bmi > 31.2")


Condition = tuple[int, int]  # (column position, code)


@dataclass(frozen=True)
class Candidate:
    """A slice found by the search, with SliceLine's figures on the rows it searched."""

    conditions: tuple[Condition, ...]  # sorted by column position
    score: float
    rows: int
    mean: float


def readable_edges(values: np.ndarray, bins: int, digits: int = 3) -> np.ndarray:
    """Inner quantile edges of ``values`` (finite, non-empty) rounded to ``digits`` significant digits, more where
    rounding would merge two; edges at or above the largest value (an empty last bin) are dropped."""
    inner = np.unique(np.quantile(values, np.arange(1, bins) / bins))
    top = float(np.max(values))
    for d in range(digits, 16):
        rounded = np.array([float(f"{e:.{d}g}") for e in inner])
        if len(np.unique(rounded)) == len(inner):
            break
    return np.unique(rounded[rounded < top])


def _number(value: float) -> str:
    return f"{value:g}"


def _bin_labels(column: str, edges: np.ndarray) -> list[str]:
    if len(edges) == 0:
        return [f"{column} is any value"]
    out = [f"{column} <= {_number(edges[0])}"]
    out += [f"{_number(lo)} < {column} <= {_number(hi)}" for lo, hi in pairwise(edges)]
    return out + [f"{column} > {_number(edges[-1])}"]


def _value_codes(column: str, labels: pd.Series, max_values: int, min_rows: int) -> tuple[np.ndarray, list[str]]:
    """Codes of a column read as values: the ``max_values`` most frequent with at least ``min_rows`` rows (ties: the
    smaller label first), the rest '(other)'; '(missing)' is a value like any other."""
    counts = labels.value_counts()
    order = sorted((-int(c), str(v)) for v, c in counts.items() if c >= min_rows)
    keep = [v for _, v in order[:max_values]]
    names = sorted(keep)
    if len(keep) < len(counts):
        names.append(OTHER)
    index = pd.Index(names).get_indexer(labels.to_numpy())
    codes = np.where(index < 0, len(names) - 1, index).astype(np.int64)
    return codes, [f"{column} = {name}" for name in names]


def encode(frame: pd.DataFrame, categorical: set[str], bins: int, max_values: int, min_rows: int) -> Encoded:
    """The codes of every column of ``frame``: ``categorical`` ones (and numeric ones with at most ``bins`` distinct
    values) by value, the others by quantile bins with readable edges, missing values as their own code."""
    codes, labels = [], []
    for column in frame.columns:
        values = frame[column]
        numeric = column not in categorical and pd.api.types.is_numeric_dtype(values) and values.dtype != bool
        finite = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float) if numeric else None
        if numeric and len(np.unique(finite[np.isfinite(finite)])) > bins:
            present = np.isfinite(finite)
            edges = readable_edges(finite[present], bins)
            code = np.searchsorted(edges, finite, side="left").astype(np.int64)  # (e[i-1], e[i]] -> i
            names = _bin_labels(str(column), edges)
            if not present.all():
                code[~present] = len(names)
                names.append(f"{column} = {MISSING}")
        else:
            series = values if not numeric else pd.Series(
                [_number(v) if np.isfinite(v) else None for v in finite], index=values.index, dtype=object)
            code, names = _value_codes(str(column), labels_of(series), max_values, min_rows)
        codes.append(code)
        labels.append(tuple(names))
    matrix = np.column_stack(codes) if codes else np.zeros((len(frame), 0), dtype=np.int64)
    return Encoded(tuple(str(c) for c in frame.columns), matrix, tuple(labels))


def predicate(encoded: Encoded, conditions: tuple[Condition, ...]) -> str:
    """A slice as text: its conditions in column order, joined by 'and'."""
    return " and ".join(encoded.labels[j][code] for j, code in sorted(conditions))


def membership(codes: np.ndarray, candidates: list[Candidate]) -> np.ndarray:
    """(rows, candidates) bool: whether each row meets every condition of each slice."""
    out = np.ones((len(codes), len(candidates)), dtype=bool)
    for k, candidate in enumerate(candidates):
        for j, code in candidate.conditions:
            out[:, k] &= codes[:, j] == code
    return out


# Values of one dense block of (rows x candidate slices) in ``_eval_slice`` (float32: 32 MB)
EVAL_BLOCK = 8_000_000


@functools.cache
def finder_class() -> type:
    """SliceLine's ``Slicefinder`` with its candidates evaluated on dense row blocks.

    SliceLine 0.3.0 evaluates a level's candidates as ``x_encoded @ slices.T == level`` in scipy's sparse formats: on
    10,000 rows and the ~3,700 pairs of 22 columns of quartiles that is a 15-million-entry sparse product, compared and
    summed, 2.4 s. The same product on blocks of rows through BLAS, in float32 (sums of at most ``level`` ones: exact),
    gives the same statistics (tested against ``Slicefinder`` itself) in a tenth of the time. Nothing else of the
    search changes; the override is bound to the pinned version.

    SliceLine's scoring also has numba kernels, used when numba is installed (shap brings it): compiled on their first
    call in each process, and an audit's process starts with an empty compiled-code cache (its own folder), they cost
    0.9 s of a 2.5 s search on the benchmark workload and save 0.2 s afterwards. Its NumPy code is used instead."""
    from sliceline import slicefinder
    from sliceline.slicefinder import Slicefinder

    slicefinder.NUMBA_AVAILABLE = False  # read at each call: the NumPy branches of _score, _score_ub and the ids

    class BlockedSlicefinder(Slicefinder):
        def _eval_slice(self, x_encoded, errors, slices, level):
            count = slices.shape[0]
            sizes, sums, maxes = np.zeros(count), np.zeros(count), np.zeros(count)
            chosen = slices.T.astype(np.float32).toarray()  # (one-hot columns, slices)
            errors = np.asarray(errors, dtype=float)
            step = max(1, EVAL_BLOCK // max(count, 1))
            for start in range(0, x_encoded.shape[0], step):
                member = (x_encoded[start:start + step].astype(np.float32).toarray() @ chosen) == level
                block_errors = errors[start:start + step]
                sizes += member.sum(axis=0)
                sums += block_errors @ member
                maxes = np.maximum(maxes, np.where(member, block_errors[:, None], 0.0).max(axis=0, initial=0.0))
            scores = self._score(sizes, sums, x_encoded.shape[0])
            return np.column_stack([scores, sums, maxes, sizes])

    return BlockedSlicefinder


def _slicefinder(codes: np.ndarray, figure: np.ndarray, columns: list[int], max_l: int, min_sup: int, k: int,
                 alpha: float) -> list[Candidate]:
    """SliceLine on ``columns`` of ``codes``; conditions name positions in ``codes``."""
    finder = finder_class()(alpha=alpha, k=k, max_l=max_l, min_sup=min_sup, verbose=False)
    finder.fit(codes[:, columns], figure)
    out = []
    for values, stats in zip(finder.top_slices_, finder.top_slices_statistics_, strict=True):
        conditions = tuple((columns[j], int(v)) for j, v in enumerate(values) if v is not None)
        out.append(Candidate(conditions, stats["slice_score"], int(stats["slice_size"]), stats["slice_average_error"]))
    return out


def _order(candidate: Candidate) -> tuple:
    return (-candidate.score, len(candidate.conditions), candidate.conditions)


def _ranked(candidates: list[Candidate], k: int) -> list[Candidate]:
    """The ``k`` best, by score (then fewer conditions), leaving out each refinement of a better one: a slice whose
    conditions include all of a better slice's is that slice again, cut smaller, and SliceLine already scored it lower."""
    unique = {c.conditions: c for c in candidates}
    out: list[Candidate] = []
    for candidate in sorted(unique.values(), key=_order):
        if len(out) < k and not any(set(kept.conditions) <= set(candidate.conditions) for kept in out):
            out.append(candidate)
    return out


# SliceLine 0.3.0 numbers each candidate slice by a mixed-radix id over all its columns, in float64
# (prod(codes + 1) over the columns): past 2**53 two slices can share an id, and its deduplication then drops both (30
# columns of quartiles: about 10 % of the pairs, a planted one among them). One call never spans more bits than this.
ID_BITS = 52.0


def _bits(codes: np.ndarray) -> np.ndarray:
    """The id bits each column costs SliceLine: log2(its distinct codes + 1)."""
    return np.array([math.log2(len(np.unique(codes[:, j])) + 1) for j in range(codes.shape[1])])


def _blocks(bits: np.ndarray, limit: float) -> list[list[int]]:
    """Consecutive columns grouped so that each group's bits stay within ``limit``."""
    blocks: list[list[int]] = [[]]
    used = 0.0
    for j, b in enumerate(bits):
        if blocks[-1] and used + b > limit:
            blocks.append([])
            used = 0.0
        blocks[-1].append(j)
        used += b
    return blocks


def _up_to_two(codes: np.ndarray, figure: np.ndarray, bits: np.ndarray, max_l: int, min_sup: int, k: int,
               alpha: float) -> list[Candidate]:
    """SliceLine's k best slices of at most ``max_l`` <= 2 conditions over every column: in one call when the ids fit,
    else on each pair of column groups of at most half the id bits (every pair of columns meets in one call; the
    score of a slice does not depend on the other columns of its call, so the calls' slices rank together)."""
    if bits.sum() <= ID_BITS:
        return _slicefinder(codes, figure, list(range(codes.shape[1])), max_l, min_sup, k, alpha)
    blocks = _blocks(bits, ID_BITS / 2)
    found: list[Candidate] = []
    for a in range(len(blocks)):
        for b in range(a + 1, len(blocks)):
            found += _slicefinder(codes, figure, blocks[a] + blocks[b], max_l, min_sup, k, alpha)
    return sorted({c.conditions: c for c in found}.values(), key=_order)[:k]


def search(codes: np.ndarray, figure: np.ndarray, *, max_conditions: int, min_sup: int, k: int, alpha: float,
           max_columns: int) -> list[Candidate]:
    """SliceLine's ``k`` best slices of at most ``max_conditions`` conditions and at least ``min_sup`` rows, best
    first (score, then fewer conditions), refinements of better ones left out; none when the figure is zero everywhere
    or no slice scores above 0."""
    figure = np.asarray(figure, dtype=float)
    if codes.shape[1] == 0 or len(figure) < min_sup or not figure.sum() > 0:
        return []
    wide = 2 * k  # more than k from SliceLine: some are refinements of better ones (see _ranked)
    bits = _bits(codes)
    if max_conditions == 3 and codes.shape[1] <= max_columns and bits.sum() <= ID_BITS:
        return _ranked(_slicefinder(codes, figure, list(range(codes.shape[1])), 3, min_sup, wide, alpha), k)
    first = _up_to_two(codes, figure, bits, min(max_conditions, 2), min_sup, max(wide, 20), alpha)
    if max_conditions < 3:
        return _ranked(first, k)
    chosen: list[int] = []
    for candidate in first:  # the columns of the best slices of one and two conditions, as many as the ids allow
        for j, _ in candidate.conditions:
            if j not in chosen and len(chosen) < max_columns and bits[chosen + [j]].sum() <= ID_BITS:
                chosen.append(j)
    if len(chosen) < 3:
        return _ranked(first, k)
    return _ranked(first + _slicefinder(codes, figure, sorted(chosen), 3, min_sup, wide, alpha), k)


# ------------------------------------------------------------------------------------------------ confirmation


def permutation_p_values(figure: np.ndarray, masks: np.ndarray, permutations: int, rng: np.random.Generator,
                         chunk_values: int = 4_000_000) -> np.ndarray:
    """One-sided permutation p-value per slice (column of ``masks``) that its mean figure is above the rest's:
    (1 + #{permuted slice mean >= observed}) / (1 + permutations), the figure permuted over the rows. The slice mean
    orders permutations exactly as the slice-minus-rest difference does (the total is fixed); exact under
    exchangeability, whatever the figure's distribution."""
    figure = np.asarray(figure, dtype=float)
    sizes = masks.sum(axis=0)
    weights = masks / np.maximum(sizes, 1)
    observed = figure @ weights
    tolerance = 1e-12 * max(1.0, float(np.abs(figure).max(initial=0.0)))
    exceed = np.zeros(masks.shape[1], dtype=np.int64)
    chunk = max(1, chunk_values // max(len(figure), 1))
    done = 0
    while done < permutations:
        b = min(chunk, permutations - done)
        shuffled = rng.permuted(np.broadcast_to(figure, (b, len(figure))), axis=1)
        exceed += (shuffled @ weights >= observed - tolerance).sum(axis=0)
        done += b
    p = (1 + exceed) / (1 + permutations)
    return np.where(sizes > 0, p, 1.0)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error rate over all of them)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return out


def bootstrap_intervals(figure: np.ndarray, masks: np.ndarray, level: float, resamples: int,
                        rng: np.random.Generator) -> np.ndarray:
    """(slices, 2): the percentile bootstrap interval of each slice's mean figure (its rows resampled with
    replacement); NaN for an empty slice."""
    out = np.full((masks.shape[1], 2), np.nan)
    tail = (1 - level) / 2
    for k in range(masks.shape[1]):
        values = np.asarray(figure, dtype=float)[masks[:, k]]
        if len(values) == 0:
            continue
        chunk = max(1, 2_000_000 // len(values))
        means = np.concatenate([values[rng.integers(0, len(values), size=(min(chunk, resamples - start), len(values)))].mean(axis=1)
                                for start in range(0, resamples, chunk)])
        out[k] = np.quantile(means, [tail, 1 - tail])
    return out


def min_slice_rows(rows: int, min_rows: int, min_share: float) -> int:
    """The smallest slice searched among ``rows`` rows."""
    return max(min_rows, math.ceil(min_share * rows))
