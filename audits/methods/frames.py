"""Calling a model on numeric rows: model-agnostic explainers (SHAP's permutation explainer, LIME,
exact Shapley, occlusion) work on numeric arrays, while a Pipeline wants its original DataFrame with
column names and string categories."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


class FrameFunction:
    """A model called on numeric rows, decoded back into a DataFrame with the original columns and dtypes.

    Model-agnostic explainers mask numeric arrays (shap's Independent masker compares values with
    ``np.isclose``), while Pipelines select columns by name and need their string categories.
    Categorical columns are therefore passed to the explainer as codes into ``categories``. Picklable.
    """

    def __init__(self, function: Any, X: pd.DataFrame) -> None:
        self.function = function
        self.columns = [str(c) for c in X.columns]
        self.dtypes = X.dtypes
        self.categories = {
            c: pd.Index(X[c].dropna().unique()) for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])
        }

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        columns = []
        for column in frame.columns:
            if column in self.categories:
                codes = self.categories[column].get_indexer(frame[column]).astype(float)
                codes[codes < 0] = np.nan  # missing or unseen
                columns.append(codes)
            else:
                columns.append(frame[column].to_numpy(dtype=float))
        return np.column_stack(columns)

    def decode(self, rows: np.ndarray) -> pd.DataFrame:
        rows = np.asarray(rows, dtype=float)
        data = {}
        for j, column in enumerate(self.columns):
            if column in self.categories:
                codes = rows[:, j]
                known = ~np.isnan(codes) & (codes >= 0) & (codes < len(self.categories[column]))  # else: missing
                values = np.full(len(codes), None, dtype=object)
                values[known] = self.categories[column].to_numpy(dtype=object)[codes[known].astype(int)]
                data[column] = pd.Series(values).astype(self.dtypes[column])
            else:
                data[column] = pd.Series(rows[:, j]).astype(self.dtypes[column])
        return pd.DataFrame(data)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.function(self.decode(rows)), dtype=float)


def on_columns(values: np.ndarray, names: list[str], features: tuple[str, ...]) -> np.ndarray:
    """Reorder axis 1 (features) of ``values`` to ``features``; names not among them (e.g. unmapped) dropped, missing ones 0."""
    position = {str(n): i for i, n in enumerate(names)}
    out = np.zeros((values.shape[0], len(features), *values.shape[2:]))
    for j, feature in enumerate(features):
        if str(feature) in position:
            out[:, j] = values[:, position[str(feature)]]
    return out
