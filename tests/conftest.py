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
# an audit that reports a metric key it does not declare (Audit.metric_keys) is ERROR in every test, not a note
os.environ["AUDITLENS_STRICT_METRIC_KEYS"] = "1"
# One thread per math library: the tests' networks and matrices are tiny, and on a shared 2-core machine torch's
# intra-op threads fight every other process (a 4 s training took 55 s at load 7 with two threads).
for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

from pathlib import Path  # noqa: E402

import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from audits import testing  # noqa: E402
from audits.core.context import AuditContext  # noqa: E402
# the small datasets and models are public (audits/testing.py), so plugin authors test against the same ones
from audits.testing import context_for, image_context_for, make_pipeline_model, make_tabular, train_network  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tabular() -> tuple[pd.DataFrame, pd.Series]:
    return make_tabular()


@pytest.fixture(scope="session")
def classifier_context() -> AuditContext:
    return testing.classifier_context()


@pytest.fixture(scope="session")
def regression_data() -> tuple[pd.DataFrame, pd.Series]:
    return testing.make_regression()


@pytest.fixture(scope="session")
def regressor_context() -> AuditContext:
    return testing.regressor_context()


@pytest.fixture(scope="session")
def prefect_harness():
    """A real (temporary) Prefect API for flow runs, with heartbeats off (each would cost ~1 s per flow)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            yield


# --- networks, images and text (issue: deep models) -----------------------------------------------
@pytest.fixture(scope="session")
def digits_network():
    """A small CNN trained on 1,200 of scikit-learn's digits (about 97 % accurate on the rest): (model, X, y)."""
    return testing.digits_network()


@pytest.fixture(scope="session")
def image_context() -> AuditContext:
    return testing.image_context()


@pytest.fixture(scope="session")
def quadrant_network():
    """A CNN trained on images whose class depends only on the top-left quadrant: (model, X, y) of held-out rows."""
    from audits.methods.architectures import SmallCNN
    from audits.methods.synthetic import quadrant_images

    X, y = quadrant_images(1600, seed=0)
    return train_network(SmallCNN(n_classes=2), X[:1200], y[:1200], epochs=15), X[1200:], y[1200:]


@pytest.fixture(scope="session")
def text_context() -> AuditContext:
    return testing.text_context()


@pytest.fixture(scope="session", autouse=True)
def no_local_prefect_server_left():
    """A CLI process started without PREFECT_API_URL starts the local Prefect server in the session's
    AUDITLENS_STATE_DIR: stop it with the session, not after its idle hour."""
    yield
    from tasks.adapters.prefect_local import LocalPrefectServer

    LocalPrefectServer().stop()


@pytest.fixture(autouse=True)
def own_result_cache(tmp_path_factory, monkeypatch):
    """Each test starts with an empty result cache (results are reused within a test, as a user's reruns reuse them,
    never across tests: a test that needs the model's code to run must see it run)."""
    monkeypatch.setenv("AUDITLENS_CACHE_DIR", str(tmp_path_factory.mktemp("result-cache")))
