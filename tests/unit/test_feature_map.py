"""Mapping transformed features back to original columns, for any row-wise preprocessing."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, PolynomialFeatures, StandardScaler

from audits.methods.model_structure import FeatureMap, dense, probe_feature_map, transformed_names


def frame(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n),
                      "city": pd.Series(rng.choice(["x", "y", "z"], n), dtype="str")})
    X.loc[::7, "c"] = np.nan
    return X


def mapping(pre, X) -> dict[str, str]:
    pre.fit(X)
    names = transformed_names(pre, dense(pre.transform(X.head(2))).shape[1])
    fmap = probe_feature_map(pre, X, names, np.random.default_rng(0))
    return dict(zip(fmap.table()["transformed_feature"], fmap.table()["original_columns"], strict=True)), fmap


def test_one_hot_columns_and_missing_indicators_map_to_their_source():
    X = frame()
    pre = ColumnTransformer([("num", make_pipeline(SimpleImputer(add_indicator=True), StandardScaler()), ["a", "c"]),
                             ("cat", OneHotEncoder(), ["city"])], remainder="drop")
    table, fmap = mapping(pre, X)
    assert table == {"num__a": "a", "num__c": "c", "num__missingindicator_c": "c",
                     "cat__city_x": "city", "cat__city_y": "city", "cat__city_z": "city"}
    assert fmap.columns == ["a", "b", "c", "city"]  # 'b' is dropped: it receives nothing
    np.testing.assert_allclose(fmap.weights.sum(axis=1), 1.0)


def test_interaction_terms_are_shared_equally_and_totals_are_preserved():
    X = frame()[["a", "b"]]
    table, fmap = mapping(PolynomialFeatures(degree=2, interaction_only=True, include_bias=False), X)
    assert table == {"a": "a", "b": "b", "a b": "a, b"}
    values = np.random.default_rng(1).normal(size=(5, 3, 2))  # (rows, transformed, outputs)
    aggregated = fmap.aggregate(values)
    np.testing.assert_allclose(aggregated[:, 0, :], values[:, 0, :] + values[:, 2, :] / 2)
    np.testing.assert_allclose(aggregated.sum(axis=1), values.sum(axis=1))


def test_an_output_nothing_moves_is_reported_unmapped_not_guessed():
    X = frame()
    X["const"] = 1.0
    pre = ColumnTransformer([("num", "passthrough", ["a"]), ("k", "passthrough", ["const"])])
    pre.fit(X)
    # the constant column cannot be moved by perturbation (every donor value is 1.0) and its name
    # 'k__const' still names it: the name fallback maps it
    table, fmap = mapping(pre, X)
    assert table["k__const"] == "const"
    renamed = FeatureMap(["t0"], ["a"], np.array([[0.0, 1.0]]))
    assert renamed.columns == ["a", FeatureMap.UNMAPPED]
