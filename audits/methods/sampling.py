"""Which rows to explain locally: the informative ones, each with the reason it was chosen.

Classifiers: the most confident, the least confident, the misclassified (most confident mistakes
first) and the least familiar rows. Regressors: the largest errors, the highest and lowest
predictions and the least familiar rows. Familiarity is the mean distance to the nearest reference
rows in a standardised feature space (an out-of-distribution score).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from audits.core.context import AuditContext
from audits.core.feature_space import FeatureSpace, knn_distance

MAX_REFERENCE_FOR_DISTANCES = 5000


def ood_scores(context: AuditContext, rows: pd.DataFrame, k: int = 5) -> np.ndarray:
    reference = context.reference.X
    if len(reference) > MAX_REFERENCE_FOR_DISTANCES:
        reference = reference.sample(n=MAX_REFERENCE_FOR_DISTANCES, random_state=context.random_state("ood.reference"))
    space = FeatureSpace.fit(reference, context.categorical)
    return knn_distance(space.transform(reference), space.transform(rows), k=k)


def informative_rows(context: AuditContext, n: int, dataset: str = "current") -> pd.DataFrame:
    """Up to ``n`` rows of ``dataset``: columns 'row' (index label), 'reason', 'score'; no row twice."""
    ds = context.dataset(dataset)
    candidates: list[tuple[str, np.ndarray, np.ndarray]] = []  # (reason, order of positions, scores)
    if context.task == "classification" and ds.predictions.proba is not None:
        confidence = ds.predictions.proba.max(axis=1)
        candidates.append(("most confident", np.argsort(-confidence, kind="stable"), confidence))
        candidates.append(("least confident", np.argsort(confidence, kind="stable"), confidence))
        if ds.y is not None:
            wrong = np.flatnonzero(ds.predictions.labels != ds.y.to_numpy())
            candidates.append(("misclassified", wrong[np.argsort(-confidence[wrong], kind="stable")], confidence))
    else:
        prediction = ds.predictions.labels.astype(float)
        if ds.y is not None:
            error = np.abs(prediction - ds.y.to_numpy(dtype=float))
            candidates.append(("largest error", np.argsort(-error, kind="stable"), error))
        candidates.append(("highest prediction", np.argsort(-prediction, kind="stable"), prediction))
        candidates.append(("lowest prediction", np.argsort(prediction, kind="stable"), prediction))
    unfamiliar = ood_scores(context, ds.X)
    candidates.append(("least familiar (OOD)", np.argsort(-unfamiliar, kind="stable"), unfamiliar))

    chosen: dict[int, tuple[str, float]] = {}
    cursors = [0] * len(candidates)
    while len(chosen) < min(n, len(ds)) and any(c < len(order) for c, (_, order, _) in zip(cursors, candidates, strict=True)):
        for i, (reason, order, scores) in enumerate(candidates):  # round robin over the reasons
            while cursors[i] < len(order) and order[cursors[i]] in chosen:
                cursors[i] += 1
            if cursors[i] < len(order) and len(chosen) < n:
                position = int(order[cursors[i]])
                chosen[position] = (reason, float(scores[position]))
    positions = list(chosen)
    return pd.DataFrame(
        {"row": ds.X.index[positions], "position": positions, "reason": [chosen[p][0] for p in positions],
         "score": [chosen[p][1] for p in positions], "ood_score": unfamiliar[positions]}
    )


def reference_sample(n: int, cap: int, random_state: int) -> np.ndarray:
    """Sorted positions of the reference rows used (all of them when n <= cap)."""
    from sklearn.utils.random import sample_without_replacement

    if n <= cap:
        return np.arange(n)
    return np.sort(sample_without_replacement(n, cap, random_state=random_state))
