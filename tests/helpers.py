"""A small world for end-to-end tests: a registered Pipeline model, reference and current data, a config."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from tasks.adapters.demo import register_sklearn_model
from tasks.adapters.mlflow_sink import MlflowSink
from tests.conftest import make_pipeline_model, make_tabular


class RunsCommand:
    """A pickle payload: unpickling it runs ``touch marker``. A test that finds no marker knows nothing of it ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)

MODEL = "e2e-model"


@dataclass(frozen=True)
class World:
    tracking_uri: str
    folder: Path
    config: Path
    reference: Path
    current: Path
    model_name: str = MODEL


def audited_model_inputs(client, run) -> tuple[list, list]:
    """A run's model inputs as (the audited logged models, the references that stand for their versions in the run's
    experiment, ``MlflowSink.version_reference``): MLflow returns inputs in no set order."""
    models = [client.get_logged_model(m.model_id) for m in run.inputs.model_inputs]
    return ([m for m in models if m.model_type != "auditlens-reference"],
            [m for m in models if m.model_type == "auditlens-reference"])


def write_config(folder: Path, tracking_uri: str, name: str = "audit.yaml", **overrides) -> Path:
    config = {
        "kind": "audit",
        "seed": 3,
        "data": {"reference": "reference.csv", "current": "current.csv", "target": "label"},
        "mlflow": {"tracking_uri": tracking_uri},
        "audits": [
            {"audit": "data_quality", "config": {"expectations": [
                {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "colour", "value_set": ["red", "green", "blue"]}}]}},
            {"audit": "performance", "thresholds": [{"metric": "performance.current.accuracy", "min": 0.6}]},
            {"audit": "shap", "config": {"rows": 60}},
        ],
    }
    config.update(overrides)
    path = folder / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def build_world(folder: Path, tracking_uri: str | None = None, versions: int = 1) -> World:
    folder.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    X, y = make_tabular(500, seed=11)
    reference, current = pd.concat([X, y], axis=1).iloc[:300], pd.concat([X, y], axis=1).iloc[300:]
    reference.to_csv(folder / "reference.csv", index=False)
    current.to_csv(folder / "current.csv", index=False)
    sink = MlflowSink(tracking_uri)
    artifacts = (folder / "mlartifacts").as_uri() if tracking_uri.startswith("sqlite") else None
    for number in range(versions):
        model = make_pipeline_model(X.iloc[:300], y.iloc[:300], "gbm" if number == 0 else "logistic")
        version = register_sklearn_model(sink, model, name=MODEL, experiment="e2e/training", input_example=X.head(2),
                                         params={"n": number}, artifact_location=artifacts)
        if number == 0:
            sink.versions.set_alias(MODEL, "champion", version)
    config = write_config(folder, tracking_uri)
    return World(tracking_uri, folder, config, folder / "reference.csv", folder / "current.csv")


def figures(run) -> dict[str, float]:
    """A run's metrics other than the audit's own bookkeeping (``audit.*``: cached, durations)."""
    return {k: v for k, v in run.data.metrics.items() if not k.startswith("audit.")}


def same(a: dict[str, float], b: dict[str, float]) -> bool:
    """The same metrics, with the same values (NaN equal to NaN)."""
    differ = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys()
              if k not in a or k not in b or not (a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])))}
    return not differ


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def runs_with_status(client, status: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string=f"attributes.status = '{status}'") if experiments else []


def wait_for(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout} s")
