"""The demo's world: datasets from scikit-learn's bundled data, models trained and registered in a
local SQLite-backed MLflow store, a current dataset with drift and data-quality faults, and one
audit configuration per model written next to them.

Nothing is downloaded: breast cancer and diabetes ship inside scikit-learn.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, ValidationError

from audits.core.plan import AuditPlan, AuditSpec, PlanError, pydantic_problems
from tasks.adapters.settings import StrictModel, config_error, read_yaml


class DemoModel(StrictModel):
    name: str
    dataset: Literal["breast_cancer", "diabetes"]
    versions: list[Literal["logistic_regression", "gradient_boosting", "random_forest"]] = Field(min_length=1)
    champion: int = Field(1, ge=1)  # the version behind the alias 'champion'
    audit_versions: list[int] | None = None  # default: every version
    segments: list[str] = Field(default_factory=list)  # columns to slice results by (data.segments)
    audits: list[AuditSpec] = Field(min_length=1)


class DemoSettings(StrictModel):
    kind: Literal["demo"] = "demo"
    seed: int = 0
    workdir: str = ".auditlens-demo"  # relative to the current directory; wiped on each demo run
    current_share: float = Field(0.4, gt=0, lt=1)  # share of rows held out as 'current' data
    models: list[DemoModel] = Field(min_length=1)


def load_demo_settings(path: str | Path) -> DemoSettings:
    path = Path(path).resolve()
    data = read_yaml(path)
    try:
        settings = DemoSettings.model_validate(data)
    except ValidationError as exc:
        raise config_error(path, pydantic_problems(exc)) from None
    for i, model in enumerate(settings.models):
        if model.champion > len(model.versions):
            raise config_error(path, [(("models", i, "champion"), f"there are only {len(model.versions)} versions")])
        try:
            AuditPlan(audits=model.audits).build(("models", i, "audits"))
        except PlanError as exc:
            raise config_error(path, exc.problems) from None
    return settings


# --- data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoData:
    reference: pd.DataFrame
    current: pd.DataFrame
    target: str
    task: Literal["classification", "regression"]
    faults: list[str]  # what was planted in the current data, for the reader of the demo


def _split(frame: pd.DataFrame, share: float, rng: np.random.Generator, stratify: pd.Series | None = None):
    from sklearn.model_selection import train_test_split

    reference, current = train_test_split(frame, test_size=share, random_state=int(rng.integers(2**31 - 1)), stratify=stratify)
    return reference.sort_index(), current.sort_index()


def breast_cancer(seed: int, share: float) -> DemoData:
    """Binary: malignant or benign, from ten 'mean' measurements plus two categorical columns.

    ``size_class`` is binned from 'worst area' (informative); ``clinic`` is random (it must get ~0 attribution).
    """
    from sklearn.datasets import load_breast_cancer

    rng = np.random.default_rng(seed)
    raw = load_breast_cancer(as_frame=True)
    frame = raw.data[[c for c in raw.data.columns if c.startswith("mean ")]].copy()
    frame["size_class"] = pd.cut(raw.data["worst area"], [0, 600, 1100, np.inf], labels=["small", "medium", "large"]).astype("str")
    frame["clinic"] = pd.Series(rng.choice(["north", "south", "east", "west"], len(frame)), dtype="str")
    frame["diagnosis"] = np.where(raw.target == 0, "malignant", "benign")
    for column in ("mean texture", "mean smoothness"):  # some values were never measured
        frame.loc[rng.random(len(frame)) < 0.03, column] = np.nan
    reference, current = _split(frame, share, rng, stratify=frame["diagnosis"])
    current = current.copy()
    n = len(current)
    current["mean texture"] = current["mean texture"] * 1.25  # drift: a recalibrated scanner
    current["clinic"] = pd.Series(rng.choice(["north", "east"], n, p=[0.2, 0.8]), index=current.index, dtype="str")
    current.loc[rng.random(n) < 0.12, "mean radius"] = np.nan  # fault: a field dropped by an export
    current.loc[rng.random(n) < 0.03, "size_class"] = "unknown"  # fault: a category never seen in training
    bad = rng.random(n) < 0.02
    current.loc[bad, "mean smoothness"] = -current.loc[bad, "mean smoothness"]  # fault: sign error
    faults = ["mean texture scaled by 1.25 (drift)", "clinic mix shifted to north/east (drift)",
              "12% of mean radius missing", "3% size_class = 'unknown'", "2% negative mean smoothness"]
    return DemoData(reference, current, "diagnosis", "classification", faults)


def diabetes(seed: int, share: float) -> DemoData:
    """Regression: disease progression after one year, from ten baseline measurements."""
    from sklearn.datasets import load_diabetes

    rng = np.random.default_rng(seed)
    raw = load_diabetes(as_frame=True, scaled=False)
    frame = raw.data.copy()
    frame["sex"] = frame["sex"].map({1.0: "group_1", 2.0: "group_2"}).astype("str")
    frame["progression"] = raw.target
    reference, current = _split(frame, share, rng)
    current = current.copy()
    current["bmi"] = current["bmi"] * 1.12  # drift: a heavier population
    current.loc[rng.random(len(current)) < 0.08, "bp"] = np.nan  # fault: missing blood pressure
    return DemoData(reference, current, "progression", "regression", ["bmi scaled by 1.12 (drift)", "8% of bp missing"])


DATASETS: dict[str, Callable[[int, float], DemoData]] = {"breast_cancer": breast_cancer, "diabetes": diabetes}


# --- models ------------------------------------------------------------------------------------
def make_estimator(kind: str, X: pd.DataFrame, task: str, seed: int) -> Any:
    """A Pipeline with a ColumnTransformer over numeric columns (imputed) and string categoricals (one-hot)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
    numeric = [c for c in X.columns if c not in categorical]
    numeric_steps = [SimpleImputer(strategy="median")] + ([StandardScaler()] if kind == "logistic_regression" else [])
    preprocess = ColumnTransformer(
        [
            ("num", make_pipeline(*numeric_steps), numeric),
            ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")), categorical),
        ]
    )
    final = {
        "logistic_regression": lambda: LogisticRegression(max_iter=2000, C=0.5),
        "gradient_boosting": lambda: GradientBoostingClassifier(n_estimators=150, max_depth=3, random_state=seed),
        "random_forest": lambda: RandomForestRegressor(n_estimators=200, min_samples_leaf=3, random_state=seed, n_jobs=1),
    }[kind]()
    return Pipeline([("preprocess", preprocess), ("model", final)])


def register_new_version(settings: DemoSettings, model_name: str, kind: str, tracking_uri: str) -> str:
    """Train ``kind`` on the demo model's reference data (written by the demo) and register it as a new version."""
    from tasks.adapters.errors import ConfigError
    from tasks.adapters.mlflow_sink import MlflowSink
    from tasks.adapters.tracking import make_client

    spec = next((m for m in settings.models if m.name == model_name), None)
    if spec is None:
        raise ConfigError(f"no demo model {model_name!r}", f"use one of {[m.name for m in settings.models]}")
    reference = Path(settings.workdir).resolve() / "data" / f"{spec.dataset}_reference.csv"
    if not reference.is_file():
        raise ConfigError(f"no demo data at {reference}", "run `make demo` first")
    frame = pd.read_csv(reference)
    target = {"breast_cancer": "diagnosis", "diabetes": "progression"}[spec.dataset]
    X, y = frame.drop(columns=[target]), frame[target]
    task = "classification" if spec.dataset == "breast_cancer" else "regression"
    seed = settings.seed + len(make_client(tracking_uri).search_model_versions(f"name='{model_name}'"))
    estimator = make_estimator(kind, X, task, seed).fit(X, y)
    return MlflowSink(tracking_uri).register_sklearn_model(
        estimator, name=model_name, experiment=f"auditlens-demo/training/{model_name}", input_example=X.head(3),
        params={"estimator": kind, "dataset": spec.dataset, "seed": seed, "rows": len(X)},
        description=f"{kind} on {spec.dataset} (registered with auditlens register-version)",
    )


@dataclass(frozen=True)
class PreparedAudit:
    model_uri: str
    config_path: Path
    label: str


def prepare_demo(settings: DemoSettings, sink_factory: Callable[[str], Any], log: Callable[[str], None] = print) -> tuple[str, list[PreparedAudit]]:
    """Build the demo world from scratch; return the tracking URI and the audits to run."""
    workdir = Path(settings.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "data").mkdir(parents=True)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    artifacts = (workdir / "mlartifacts").as_uri()
    sink = sink_factory(tracking_uri)
    audits: list[PreparedAudit] = []
    for spec in settings.models:
        data = DATASETS[spec.dataset](settings.seed, settings.current_share)
        ref_path, cur_path = workdir / "data" / f"{spec.dataset}_reference.csv", workdir / "data" / f"{spec.dataset}_current.csv"
        data.reference.to_csv(ref_path, index=False)
        data.current.to_csv(cur_path, index=False)
        log(f"{spec.dataset}: {len(data.reference)} reference rows, {len(data.current)} current rows; planted: {'; '.join(data.faults)}")
        X, y = data.reference.drop(columns=[data.target]), data.reference[data.target]
        for number, kind in enumerate(spec.versions, start=1):
            estimator = make_estimator(kind, X, data.task, settings.seed).fit(X, y)
            version = sink.register_sklearn_model(
                estimator,
                name=spec.name,
                experiment=f"auditlens-demo/training/{spec.name}",
                artifact_location=f"{artifacts}/training",
                input_example=X.head(3),
                params={"estimator": kind, "dataset": spec.dataset, "seed": settings.seed, "rows": len(X)},
                description=f"{kind} on {spec.dataset} (demo)",
            )
            log(f"registered {spec.name} v{version}: {kind}")
            if number == spec.champion:
                sink.set_alias(spec.name, "champion", version)
        config = {
            "kind": "audit",
            "seed": settings.seed,
            "data": {"reference": f"data/{ref_path.name}", "current": f"data/{cur_path.name}", "target": data.target,
                     "segments": list(spec.segments)},
            "mlflow": {"tracking_uri": tracking_uri, "artifact_location": f"{artifacts}/audits"},
            "audits": [a.model_dump(mode="json", exclude_none=True) for a in spec.audits],
        }
        config_path = workdir / f"{spec.name}.audit.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        for version in spec.audit_versions or range(1, len(spec.versions) + 1):
            audits.append(PreparedAudit(f"models:/{spec.name}/{version}", config_path, f"{spec.name} v{version}"))
    return tracking_uri, audits

