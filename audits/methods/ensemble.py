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

from audits.core import AuditContext
from audits.methods.scores import entropy


def bootstrap_members(estimator, X: pd.DataFrame, y: pd.Series, n_members: int, max_rows: int,
                      rng: np.random.Generator) -> list:
    """``n_members`` clones of ``estimator``, each fitted on a bootstrap resample (with replacement). A classifier's
    resample holds every class (one without a class is drawn again: on a few rows it happens, and a member that
    never saw a class cannot be compared with the others); after 100 draws, one row of each class is put in."""
    from sklearn.base import clone, is_classifier

    members = []
    size = min(max_rows, len(X))
    labels = np.asarray(y)
    classes = np.unique(labels) if is_classifier(estimator) else None
    for _ in range(n_members):
        rows = rng.choice(len(X), size=size, replace=True)
        for _retry in range(100):
            if classes is None or len(np.unique(labels[rows])) == len(classes):
                break
            rows = rng.choice(len(X), size=size, replace=True)
        else:
            firsts = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes]
            rows = np.concatenate([firsts, rows[len(firsts):]])
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


@dataclass(frozen=True)
class Ensemble:
    members: list
    fit_positions: np.ndarray  # reference rows the members were resampled from
    holdout_positions: np.ndarray  # reference rows no member saw (at most max_rows of them), scored for comparison


def fit_ensemble(context: AuditContext, n_members: int, max_rows: int, holdout: float, purpose: str) -> Ensemble:
    """Members fitted on resamples of the reference rows outside a seeded held-out share."""
    reference = context.reference
    order = context.rng(f"{purpose}.holdout").permutation(len(reference))
    n_holdout = min(max(1, int(round(holdout * len(reference)))), len(reference) - 2)
    fit_positions = np.sort(order[n_holdout:])
    holdout_positions = np.sort(order[:n_holdout][:max_rows])
    members = bootstrap_members(context.model.estimator, reference.X.iloc[fit_positions], reference.y.iloc[fit_positions],
                                n_members, max_rows, context.rng(f"{purpose}.members"))
    return Ensemble(members, fit_positions, holdout_positions)


def member_predictions(members: list, X: pd.DataFrame) -> np.ndarray:
    """(members, rows): each regressor member's predictions."""
    return np.stack([np.asarray(member.predict(X), dtype=float) for member in members])


def classifier_uncertainty(probabilities: np.ndarray, predicted: np.ndarray) -> pd.DataFrame:
    """Per row from (members, rows, classes) probabilities and the column of the model's predicted class."""
    split = decompose(probabilities)
    p_predicted = probabilities[:, np.arange(probabilities.shape[1]), predicted]  # (members, rows)
    return pd.DataFrame({
        "total": split.total, "aleatoric": split.aleatoric, "epistemic": split.epistemic,
        "p_predicted": p_predicted.mean(axis=0), "variance": p_predicted.var(axis=0, ddof=1),
    })


def regressor_uncertainty(predictions: np.ndarray) -> pd.DataFrame:
    """Per row from (members, rows) predictions: the members' mean, variance and standard deviation."""
    variance = predictions.var(axis=0, ddof=1)
    return pd.DataFrame({"ensemble_mean": predictions.mean(axis=0), "std": np.sqrt(variance), "variance": variance})


def row_uncertainty(context: AuditContext, members: list, X: pd.DataFrame, predicted_labels: np.ndarray) -> pd.DataFrame:
    if context.task == "regression":
        return regressor_uncertainty(member_predictions(members, X))
    column = {label: j for j, label in enumerate(context.model.classes)}
    predicted = np.array([column[label] for label in predicted_labels.tolist()], dtype=int)
    return classifier_uncertainty(member_probabilities(members, X, context.model.classes), predicted)
