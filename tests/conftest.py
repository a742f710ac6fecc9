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
# auditlens's own state (the local Prefect server, the webhook's replay store) never in the user's ~/.auditlens
os.environ["AUDITLENS_STATE_DIR"] = tempfile.mkdtemp(prefix="auditlens-state-")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ["MPLBACKEND"] = "Agg"
# One thread per math library: the tests' networks and matrices are tiny, and on a shared 2-core machine torch's
# intra-op threads fight every other process (a 4 s training took 55 s at load 7 with two threads).
for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

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


# --- networks, images and text (issue: deep models) -----------------------------------------------
def image_context_for(model, X: np.ndarray, y: np.ndarray, split: int, seed: int = 0, classes=None) -> AuditContext:
    """An image AuditContext: ``X`` ``(N, C, H, W)`` flattened into one column per element, as the data
    adapter does; reference = the first ``split`` rows."""
    from audits.deep.network import image_columns

    shape = X.shape[1:]
    frame = pd.DataFrame(X.reshape(len(X), -1), columns=image_columns(shape))
    labels = pd.Series(y if classes is None else np.asarray(classes)[y], name="label")
    m = ModelUnderAudit.from_estimator(model, flavor="pytorch", uri="test://network", name="test-network", version="1")
    return build_context(m, (frame.iloc[:split], labels.iloc[:split]), (frame.iloc[split:].reset_index(drop=True),
                         labels.iloc[split:].reset_index(drop=True)), target="label", seed=seed,
                         baseline_note="no baseline in this test", modality="image", input_shape=shape)  # fmt: skip


def train_network(module, X: np.ndarray, y: np.ndarray, epochs: int = 15, seed: int = 0):
    from audits.deep.network import TorchClassifier

    return TorchClassifier(module, tuple(X.shape[1:]), epochs=epochs, lr=3e-3, random_state=seed).fit(X.reshape(len(X), -1), y)


@pytest.fixture(scope="session")
def digits_network():
    """A small CNN trained on 1,200 of scikit-learn's digits (about 97 % accurate on the rest): (model, X, y)."""
    from audits.deep.architectures import SmallCNN
    from audits.deep.synthetic import digits

    X, y = digits()
    order = np.random.default_rng(0).permutation(len(X))
    X, y = X[order], y[order]
    return train_network(SmallCNN(), X[:1200], y[:1200], epochs=15), X, y


@pytest.fixture(scope="session")
def image_context(digits_network) -> AuditContext:
    """Reference: 300 training digits; current: 200 held-out digits."""
    model, X, y = digits_network
    return image_context_for(model, np.concatenate([X[:300], X[1200:1400]]), np.concatenate([y[:300], y[1200:1400]]), split=300)


@pytest.fixture(scope="session")
def quadrant_network():
    """A CNN trained on images whose class depends only on the top-left quadrant: (model, X, y) of held-out rows."""
    from audits.deep.architectures import SmallCNN
    from audits.deep.synthetic import quadrant_images

    X, y = quadrant_images(1600, seed=0)
    return train_network(SmallCNN(n_classes=2), X[:1200], y[:1200], epochs=15), X[1200:], y[1200:]


@pytest.fixture(scope="session")
def text_context() -> AuditContext:
    """TF-IDF + logistic regression on generated job adverts (the salary class depends only on planted words)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from audits.deep.synthetic import job_adverts

    data = job_adverts(600, seed=0)
    X, y = data[["text"]], data["salary"]
    model = Pipeline([("tfidf", ColumnTransformer([("words", TfidfVectorizer(), "text")])),
                      ("model", LogisticRegression(C=10.0, max_iter=1000))]).fit(X.iloc[:400], y.iloc[:400])  # fmt: skip
    m = ModelUnderAudit.from_estimator(model, uri="test://text", name="test-text", version="1")
    return build_context(m, (X.iloc[:400], y.iloc[:400]), (X.iloc[400:].reset_index(drop=True), y.iloc[400:].reset_index(drop=True)),
                         target="salary", seed=0, baseline_note="no baseline in this test", modality="text")  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def no_local_prefect_server_left():
    """A CLI process started without PREFECT_API_URL starts the local Prefect server in the session's
    AUDITLENS_STATE_DIR: stop it with the session, not after its idle hour."""
    yield
    from tasks.adapters.prefect_local import LocalPrefectServer

    LocalPrefectServer().stop()
