"""Shared fixtures: tiny datasets and models for unit tests, a real Prefect harness and MLflow store for the rest."""

from __future__ import annotations

import os
import tempfile

# Before any library import: no telemetry, no progress bars, a private Prefect home.
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="auditlens-prefect-home-"))
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ["MPLBACKEND"] = "Agg"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from audits.core.context import AuditContext, ModelUnderAudit, build_context  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def make_tabular(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Binary task: y depends on x1, x2 and the category 'colour'; 'noise' is pure noise. Some x3 missing."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "x1": rng.normal(size=n),
            "x2": rng.normal(size=n),
            "x3": rng.normal(size=n),
            "noise": rng.normal(size=n),
            "colour": pd.Series(rng.choice(["red", "green", "blue"], n), dtype="str"),
        }
    )
    X.loc[rng.random(n) < 0.05, "x3"] = np.nan
    logit = 2 * X["x1"] - 1.5 * X["x2"] + 0.5 * X["x3"].fillna(0) + (X["colour"] == "red") * 1.5
    y = pd.Series(np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no"), name="label")
    return X, y


def make_pipeline_model(X: pd.DataFrame, y: pd.Series, final: str = "gbm"):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    numeric = [c for c in X.columns if c not in categorical]
    pre = ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(add_indicator=True), StandardScaler()), numeric),
            ("cat", OneHotEncoder(handle_unknown="ignore"), categorical),
        ]
    )
    estimator = {
        "gbm": lambda: GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0),
        "logistic": lambda: LogisticRegression(max_iter=2000),
        "knn": lambda: KNeighborsClassifier(n_neighbors=15),
        "gbr": lambda: GradientBoostingRegressor(n_estimators=30, max_depth=2, random_state=0),
        "rfr": lambda: RandomForestRegressor(n_estimators=20, max_depth=4, random_state=0),
    }[final]()
    return Pipeline([("pre", pre), ("model", estimator)]).fit(X, y)


def context_for(model, X: pd.DataFrame, y: pd.Series | None, split: int = 250, seed: int = 0, baseline=None,
                segments: tuple[str, ...] = ("colour",)) -> AuditContext:
    m = ModelUnderAudit.from_estimator(model, uri="test://model", name="test-model", version="1")
    if baseline is not None:
        baseline = ModelUnderAudit.from_estimator(baseline, uri="test://baseline", name="test-model", version="0")
    return build_context(
        m,
        (X.iloc[:split], None if y is None else y.iloc[:split]),
        (X.iloc[split:], None if y is None else y.iloc[split:]),
        target=None if y is None else y.name,
        seed=seed,
        baseline=baseline,
        baseline_note="" if baseline is not None else "no baseline in this test",
        segments=(X.iloc[:split][list(segments)], X.iloc[split:][list(segments)]) if set(segments) <= set(X.columns) else (None, None),
    )


@pytest.fixture(scope="session")
def tabular() -> tuple[pd.DataFrame, pd.Series]:
    return make_tabular()


@pytest.fixture(scope="session")
def classifier_context(tabular) -> AuditContext:
    X, y = tabular
    return context_for(make_pipeline_model(X, y, "gbm"), X, y, baseline=make_pipeline_model(X, y, "logistic"))


@pytest.fixture(scope="session")
def regression_data() -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(1)
    X, _ = make_tabular(300, seed=1)
    y = pd.Series(3 * X["x1"] + X["x2"] ** 2 + rng.normal(scale=0.1, size=len(X)), name="target")
    return X, y


@pytest.fixture(scope="session")
def regressor_context(regression_data) -> AuditContext:
    X, y = regression_data
    return context_for(make_pipeline_model(X, y, "rfr"), X, y, split=200, baseline=make_pipeline_model(X, y, "gbr"))


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary) Prefect API for flow runs, with heartbeats off (each would cost ~1 s per flow)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield
