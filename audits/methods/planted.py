"""Planted shifts as ground truth: how well does each per-row signal tell the rows a shift was planted on from the
rows left untouched?

A column says per row which corruption or shift was planted on it (a demo's or a test's own bookkeeping), with one
value for the untouched rows. For every other value, the ROC-AUC (scikit-learn's ``roc_auc_score``) of each signal
at ranking that value's rows above the untouched ones: 0.5 is chance, 1 every planted row above every untouched one,
below 0.5 the signal points the wrong way. Signals are oriented so that higher means more suspicious.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


def planted_kinds(values: pd.Series | np.ndarray) -> np.ndarray:
    """Each row's planted kind as a string, None where the value is missing (such rows take no part)."""
    series = pd.Series(np.asarray(values, dtype=object))
    return np.array([None if pd.isna(v) else str(v) for v in series], dtype=object)


def planted_column(segments: pd.DataFrame | None, column: str | None) -> np.ndarray | None:
    """Each current row's planted kind from the segment column ``column`` (``planted_kinds``), or None when no column
    is named; a column the segments lack is a ValueError that says how to name it."""
    if column is None:
        return None
    if segments is None or column not in segments.columns:
        have = list(segments.columns) if segments is not None else []
        raise ValueError(f"planted: {column!r} is not a segment column of the current data (segment columns: "
                         f"{have or 'none'}); add it to data.segments, or leave planted unset")
    return planted_kinds(segments[column])


def kind_counts(kinds: np.ndarray, clean: str) -> list[tuple[str, int]]:
    """(kind, rows) for every kind other than ``clean``: most rows first, then by name."""
    present = pd.Series([k for k in kinds if k is not None and k != clean], dtype=object)
    counts = present.value_counts()
    return sorted(((str(k), int(n)) for k, n in counts.items()), key=lambda kn: (-kn[1], kn[0]))


def auroc(planted: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of ``score`` at ranking the ``planted`` rows (True) above the others; rows with a non-finite score
    take no part; NaN without rows of both sides."""
    from sklearn.metrics import roc_auc_score

    finite = np.isfinite(score)
    planted, score = planted[finite], score[finite]
    if planted.all() or not planted.any():
        return float("nan")
    return float(roc_auc_score(planted, score))


def planted_aurocs(kinds: np.ndarray, clean: str, scores: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """One row per planted kind (``kind_counts``' order): 'planted', 'rows', then per signal of ``scores`` (in its
    order) the ROC-AUC at telling that kind's rows from the ``clean`` rows."""
    kinds = np.asarray(kinds, dtype=object)
    is_clean = kinds == clean
    rows = []
    for kind, n in kind_counts(kinds, clean):
        chosen = is_clean | (kinds == kind)
        truth = (kinds == kind)[chosen]
        rows.append({"planted": kind, "rows": n,
                     **{name: auroc(truth, np.asarray(score, dtype=float)[chosen]) for name, score in scores.items()}})
    return pd.DataFrame(rows, columns=["planted", "rows", *scores])
