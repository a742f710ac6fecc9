"""A bootstrap ensemble of clones of the model, refitted on resamples of the reference data.

For classifiers the members' probabilities split total predictive uncertainty (entropy of the mean
prediction) into the expected entropy of the members (aleatoric: noise the model knows about) and
their mutual information (epistemic: disagreement, unfamiliar inputs); for regressors the members'
spread is the predictive variance of the model class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audits.uncertainty.scores import entropy


def bootstrap_members(estimator, X: pd.DataFrame, y: pd.Series, n_members: int, max_rows: int,
                      rng: np.random.Generator) -> list:
    """``n_members`` clones of ``estimator``, each fitted on a bootstrap resample (with replacement)."""
    from sklearn.base import clone

    members = []
    size = min(max_rows, len(X))
    for _ in range(n_members):
        rows = rng.choice(len(X), size=size, replace=True)
        member = clone(estimator)
        _seed_unseeded(member, int(rng.integers(2**31 - 1)))
        members.append(member.fit(X.iloc[rows], y.iloc[rows]))
    return members


def _seed_unseeded(estimator, seed: int) -> None:
    """Members must be reproducible: give every random_state=None a seed (a Pipeline's steps included)."""
    params = estimator.get_params()
    estimator.set_params(**{k: seed for k, v in params.items() if k.endswith("random_state") and v is None})


@dataclass(frozen=True)
class Decomposition:
    total: np.ndarray  # entropy of the ensemble's mean probabilities
    aleatoric: np.ndarray  # mean entropy of the members' probabilities
    epistemic: np.ndarray  # mutual information = total - aleatoric (>= 0)


def member_probabilities(members: list, X: pd.DataFrame, classes: tuple) -> np.ndarray:
    """(members, rows, classes), aligned to ``classes`` (a resample may miss a rare class)."""
    out = np.zeros((len(members), len(X), len(classes)))
    for m, member in enumerate(members):
        proba = member.predict_proba(X)
        for j, cls in enumerate(member.classes_):
            out[m, :, list(classes).index(cls)] = proba[:, j]
    return out


def decompose(probabilities: np.ndarray) -> Decomposition:
    total = entropy(probabilities.mean(axis=0))
    aleatoric = entropy(probabilities).mean(axis=0)
    return Decomposition(total, aleatoric, np.maximum(total - aleatoric, 0.0))
