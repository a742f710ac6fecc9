"""What kind of model is this, and how do transformed features map back to the original columns?

Shared by the explanation audits: SHAP here, and LIME, occlusion and sanity checks later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


def split_pipeline(estimator: Any) -> tuple[Any | None, Any]:
    """(preprocessing, final estimator) for a Pipeline; (None, estimator) otherwise."""
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline) and len(estimator.steps) > 1:
        return estimator[:-1], estimator[-1]
    if isinstance(estimator, Pipeline):
        return None, estimator[-1]
    return None, estimator


def is_linear_model(estimator: Any) -> bool:
    """A model whose output is ``X @ coef_.T + intercept_`` (what shap.LinearExplainer explains)."""
    module = type(estimator).__module__
    linear_family = module.startswith("sklearn.linear_model") or type(estimator).__name__ in {"LinearSVC", "LinearSVR"}
    return linear_family and hasattr(estimator, "coef_") and hasattr(estimator, "intercept_")


def dense(matrix: Any) -> np.ndarray:
    if hasattr(matrix, "toarray"):
        matrix = matrix.toarray()
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    return np.asarray(matrix, dtype=float)


def transformed_names(preprocessor: Any, n_outputs: int) -> list[str]:
    try:
        return [str(n) for n in preprocessor.get_feature_names_out()]
    except Exception:  # some transformers cannot name their outputs
        return [f"x{i}" for i in range(n_outputs)]


@dataclass(frozen=True)
class FeatureMap:
    """Weights (n_transformed, n_original): how each transformed feature's attribution is shared out.

    Each row sums to 1 over its parent columns, so summing attributions through the map preserves
    their total (SHAP's additivity survives the aggregation). Rows with no parent go to UNMAPPED.
    """

    transformed: list[str]
    original: list[str]
    weights: np.ndarray

    UNMAPPED = "(unmapped)"

    def aggregate(self, values: np.ndarray) -> np.ndarray:
        """(rows, n_transformed, outputs) -> (rows, n_original [+1 unmapped], outputs)."""
        return np.einsum("rto,tc->rco", values, self.weights)

    @property
    def columns(self) -> list[str]:
        return self.original + ([self.UNMAPPED] if self.weights.shape[1] > len(self.original) else [])

    def table(self) -> pd.DataFrame:
        cols = self.columns
        parents = [", ".join(cols[j] for j in np.flatnonzero(row)) for row in self.weights]
        return pd.DataFrame({"transformed_feature": self.transformed, "original_columns": parents})


def probe_feature_map(
    preprocessor: Any, X: pd.DataFrame, names: list[str], rng: np.random.Generator, rows: int = 256
) -> FeatureMap:
    """Find which transformed outputs depend on which input columns by perturbing one column at a time.

    Works for any row-wise transformer (ColumnTransformer, imputers with indicators, encoders, nested
    pipelines) without knowing its internals. An output with several parents (an interaction term)
    is shared equally among them; an output that no perturbation moves, nor its name names, is
    reported as unmapped rather than guessed.
    """
    sample = X.sample(n=min(rows, len(X)), random_state=int(rng.integers(2**31 - 1))).reset_index(drop=True)
    base = dense(preprocessor.transform(sample))
    parents = np.zeros((base.shape[1], X.shape[1]), dtype=bool)
    for j, column in enumerate(X.columns):
        values = sample[column].to_numpy()
        donor = X[column].dropna().to_numpy()
        perturbed = sample.copy()
        # Swap in other observed values; fall back to the whole column when the sample is constant.
        shuffled = rng.permutation(values)
        if pd.Series(shuffled).equals(pd.Series(values)) and len(donor):
            shuffled = rng.choice(donor, size=len(values))
        perturbed[column] = pd.Series(shuffled, dtype=sample[column].dtype)
        out = dense(preprocessor.transform(perturbed))
        parents[:, j] = ~np.isclose(out, base, equal_nan=True).all(axis=0)
    for t in np.flatnonzero(~parents.any(axis=1)):
        token = names[t].split("__", 1)[-1]
        matches = [j for j, c in enumerate(X.columns) if token == str(c) or token.startswith(f"{c}_")]
        if matches:
            longest = max(matches, key=lambda j: len(str(X.columns[j])))
            parents[t, longest] = True
    weights = parents / np.maximum(parents.sum(axis=1, keepdims=True), 1)
    unmapped = ~parents.any(axis=1)
    if unmapped.any():
        weights = np.hstack([weights, unmapped[:, None].astype(float)])
    return FeatureMap(transformed=names, original=[str(c) for c in X.columns], weights=weights)
