"""Out-of-distribution scores fitted on reference data: how unfamiliar is each row?

Three scorers in one standardised space (``FeatureSpace``): the mean distance to the k nearest
reference rows, the reconstruction error of a PCA keeping most of the variance (the cheap
autoencoder), and the reconstruction error of a small scikit-learn MLP autoencoder. Each is fitted on
part of the reference and calibrated on the held-out rest: the flag threshold is the held-out
scores' configured percentile, so an unshifted batch is flagged at about (100 - percentile) %.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import AfterValidator, Field

from audits.core.feature_space import FeatureSpace

SCORERS = ("knn", "pca", "autoencoder")
EARLY_STOPPING_ROWS = 50  # fewer and the autoencoder trains on every row (its held-out tenth would be a handful)


@dataclass(frozen=True)
class OODModel:
    space: FeatureSpace
    fitted: dict[str, Any]  # name -> fitted scorer
    thresholds: dict[str, float]  # name -> score above which a row is flagged
    percentile: float
    k: int

    def scores(self, X: pd.DataFrame) -> dict[str, np.ndarray]:
        Z = self.space.transform(X)
        out = {}
        for name, scorer in self.fitted.items():
            if name == "knn":
                distances, _ = scorer.kneighbors(Z, n_neighbors=self.k)
                out[name] = distances.mean(axis=1)
            elif name == "pca":
                out[name] = ((Z - scorer.inverse_transform(scorer.transform(Z))) ** 2).mean(axis=1)
            else:
                out[name] = ((Z - scorer.predict(Z)) ** 2).mean(axis=1)
        return out

    def flags(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: values > self.thresholds[name] for name, values in scores.items()}


def fit_ood(
    reference: pd.DataFrame,
    categorical: tuple[str, ...],
    seed: int,
    scorers: tuple[str, ...] = SCORERS,
    k: int = 5,
    percentile: float = 95.0,
    holdout: float = 0.25,
    max_rows: int = 5000,
    pca_variance: float = 0.9,
    hidden: int | None = None,
) -> OODModel:
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors
    from sklearn.neural_network import MLPRegressor

    rng = np.random.default_rng(seed)
    if len(reference) > max_rows:
        reference = reference.iloc[np.sort(rng.choice(len(reference), size=max_rows, replace=False))]
    order = rng.permutation(len(reference))
    n_holdout = max(1, int(round(holdout * len(reference))))
    fit_rows, holdout_rows = reference.iloc[np.sort(order[n_holdout:])], reference.iloc[np.sort(order[:n_holdout])]
    space = FeatureSpace.fit(fit_rows, categorical)
    Z = space.transform(fit_rows)
    fitted: dict[str, Any] = {}
    if "knn" in scorers:
        fitted["knn"] = NearestNeighbors(n_neighbors=min(k, len(Z))).fit(Z)
    if "pca" in scorers:
        fitted["pca"] = PCA(n_components=pca_variance, svd_solver="full", random_state=seed).fit(Z)
    if "autoencoder" in scorers:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        width = hidden or max(2, Z.shape[1] // 2)
        autoencoder = MLPRegressor(hidden_layer_sizes=(width,), alpha=1e-3, max_iter=400,
                                   early_stopping=len(Z) >= EARLY_STOPPING_ROWS, random_state=int(rng.integers(2**31 - 1)))
        with warnings.catch_warnings():
            # an autoencoder stopped at max_iter is still a fixed function of the row, and its threshold is set on
            # held-out reference rows below: its scores mean what they say, and the warning only alarmed the console
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted["autoencoder"] = autoencoder.fit(Z, Z)
    model = OODModel(space, fitted, {}, percentile, min(k, len(Z)))
    held_out = model.scores(holdout_rows)
    thresholds = {name: float(np.percentile(values, percentile)) for name, values in held_out.items()}
    return OODModel(space, fitted, thresholds, percentile, model.k)


def _distinct(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(value)) != len(value):
        raise ValueError("each scorer may be named once")
    return value


# A configuration field naming fit_ood scorers: at least one, each at most once.
Scorers = Annotated[tuple[Literal["knn", "pca", "autoencoder"], ...], Field(min_length=1), AfterValidator(_distinct)]


def calibration_rows(n_rows: int, max_rows: int, holdout: float) -> int:
    """How many held-out rows fit_ood calibrates its thresholds on."""
    return max(1, int(round(holdout * min(max_rows, n_rows))))


def excess_z_range(n: int, m: int, percentile: float) -> tuple[float, float]:
    """The excess z from none to all of ``n`` rows flagged: on few held-out rows even all flagged may be unremarkable."""
    return excess_z(0, n, m, percentile), excess_z(n, n, m, percentile)


def excess_z(flagged: int, n: int, m: int, percentile: float) -> float:
    """Phi^-1 of the chance of at least ``flagged`` of ``n`` unshifted rows above the percentile of ``m`` held-out rows."""
    from scipy.stats import betabinom, norm

    h = (m - 1) * percentile / 100  # np.percentile's (interpolated) position among the sorted held-out scores
    p_value = betabinom.sf(flagged - 1, n, m - h, h + 1)
    return float(norm.isf(np.clip(p_value, 1e-300, 1 - 1e-16)))  # finite: about -8.2 to 37
