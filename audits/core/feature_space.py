"""A model-independent numeric space for distances: numeric columns median-imputed and standardised,
categorical columns one-hot encoded (unseen categories -> all zeros). Fitted on reference data.

Used wherever an audit needs distances between rows: nearest-neighbour OOD scores, prototypes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureSpace:
    transformer: Any
    features: tuple[str, ...]

    @classmethod
    def fit(cls, reference: pd.DataFrame, categorical: tuple[str, ...]) -> FeatureSpace:
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        categorical = [c for c in reference.columns if c in categorical]
        numeric = [c for c in reference.columns if c not in categorical]
        transformer = ColumnTransformer(
            [
                ("num", make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler()), numeric),
                ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="(missing)"),
                                      OneHotEncoder(handle_unknown="ignore", sparse_output=False)), categorical),
            ]
        )
        frame = reference.copy()
        for column in categorical:  # encoders need one type per column; keep missing as missing
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        transformer.fit(frame)
        return cls(transformer, tuple(reference.columns))

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        frame = X[list(self.features)].copy()
        for name, _, columns in self.transformer.transformers_:
            if name == "cat":
                for column in columns:
                    frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
        return np.asarray(self.transformer.transform(frame), dtype=float)


def knn_distance(reference: np.ndarray, rows: np.ndarray, k: int = 5, exclude_self: bool = False) -> np.ndarray:
    """Mean distance of each row to its k nearest reference rows (an out-of-distribution score)."""
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(reference) - (1 if exclude_self else 0))
    index = NearestNeighbors(n_neighbors=k + (1 if exclude_self else 0)).fit(reference)
    distances, _ = index.kneighbors(rows)
    return distances[:, 1:].mean(axis=1) if exclude_self else distances.mean(axis=1)
