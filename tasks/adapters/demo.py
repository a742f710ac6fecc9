"""The demo's world: datasets from scikit-learn's bundled data, models trained and registered in a
local SQLite-backed MLflow store, a current dataset with drift and data-quality faults, and one
audit configuration per model written next to them.

Nothing is downloaded: breast cancer and diabetes ship inside scikit-learn. Registering a model (a training run,
an MLflow 3 logged model and a new version) is written here, the only place besides the audit's own writers
(``mlflow_sink``, ``version_state``) that writes to MLflow; the tests and the benchmarks register their models
with it too.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import Field

from audits.core.plan import AuditPlan, AuditSpec, PlanError
from tasks.adapters.settings import StrictModel, config_error, read_yaml, validated

if TYPE_CHECKING:
    from tasks.adapters.mlflow_sink import MlflowSink


class DemoSchedule(StrictModel):
    """Scheduled-like audits of the version behind @champion over simulated days, each on that day's batch (the last
    days without labels: they come late), each ending with the model's history report."""

    days: int = Field(6, ge=2, le=60)
    labelled_days: int = Field(3, ge=0)  # the first days' labels have arrived; the later days' have not
    audits: list[AuditSpec] = Field(min_length=1)


class DemoModel(StrictModel):
    name: str
    dataset: Literal["breast_cancer", "diabetes", "digits", "job_adverts", "readmission"]
    versions: list[Literal["logistic_regression", "gradient_boosting", "random_forest", "cnn", "tfidf_logistic"]] = Field(min_length=1)
    champion: int = Field(1, ge=1)  # the version behind the alias 'champion'
    audit_versions: list[int] | None = None  # default: every version
    segments: list[str] = Field(default_factory=list)  # columns to slice results by (data.segments)
    audits: list[AuditSpec] = Field(min_length=1)
    schedule: DemoSchedule | None = None  # readmission only: the dataset that comes with daily batches


class DemoSettings(StrictModel):
    kind: Literal["demo"] = "demo"
    seed: int = 0
    workdir: str = ".auditlens-demo"  # relative to the current directory; wiped on each demo run
    current_share: float = Field(0.4, gt=0, lt=1)  # share of rows held out as 'current' data
    models: list[DemoModel] = Field(min_length=1)


def load_demo_settings(path: str | Path) -> DemoSettings:
    path = Path(path).resolve()
    settings = validated(DemoSettings, path, read_yaml(path))
    for i, model in enumerate(settings.models):
        if model.champion > len(model.versions):
            raise config_error(path, [(("models", i, "champion"), f"there are only {len(model.versions)} versions")])
        try:
            AuditPlan(audits=model.audits).build(("models", i, "audits"))
            if model.schedule is not None:
                AuditPlan(audits=model.schedule.audits).build(("models", i, "schedule", "audits"))
        except PlanError as exc:
            raise config_error(path, exc.problems) from None
        if model.schedule is not None and model.dataset != "readmission":
            raise config_error(path, [(("models", i, "schedule"), f"daily batches come with the readmission dataset only, "
                                                                   f"not {model.dataset}")])
        if model.schedule is not None and model.schedule.labelled_days > model.schedule.days:
            raise config_error(path, [(("models", i, "schedule", "labelled_days"), f"more than the {model.schedule.days} days")])
    return settings


# --- data --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoData:
    reference: pd.DataFrame
    current: pd.DataFrame
    target: str
    task: Literal["classification", "regression"]
    faults: list[str]  # what was planted in the current data, for the reader of the demo
    modality: Literal["tabular", "image", "text"] = "tabular"
    holdout: pd.DataFrame | None = None  # labelled rows the model does not train on (data.holdout)
    days: tuple[pd.DataFrame, ...] = ()  # daily batches for scheduled-like audits (without the target: no labels yet)


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


def digits(seed: int, share: float) -> DemoData:
    """Images: scikit-learn's 8x8 handwritten digits (10 classes), one column per pixel (p0_row_col, values 0-1);
    written as .npz (images N x 1 x 8 x 8, label). In the current data 15 % of the digits are inverted and 10 %
    replaced by noise: images the network has never seen, which the uncertainty audits must single out."""
    from audits.methods.network import image_columns
    from audits.methods.synthetic import corrupt
    from audits.methods.synthetic import digits as load

    rng = np.random.default_rng(seed)
    images, labels = load()
    frame = pd.DataFrame(images.reshape(len(images), -1), columns=image_columns(images.shape[1:]))
    pixels = list(frame.columns)
    frame["label"] = labels
    frame["fault"] = "none"  # what was planted on each digit (a segment column, not an input of the network)
    reference, current = _split(frame, share, rng, stratify=frame["label"])
    current = current.copy()
    draw = rng.random(len(current))
    for kind, rows in (("inverted", draw < 0.15), ("noise", (draw >= 0.15) & (draw < 0.25))):
        block = current.loc[rows, pixels].to_numpy(np.float32).reshape(-1, *images.shape[1:])
        current.loc[rows, pixels] = corrupt(block, kind, seed).reshape(int(rows.sum()), -1)
        current.loc[rows, "fault"] = kind
    return DemoData(reference, current, "label", "classification", ["15% of current digits inverted", "10% replaced by noise"], "image")


def job_adverts(seed: int, share: float) -> DemoData:
    """Text: generated job adverts whose salary class ("high"/"low") depends only on a planted word (senior,
    principal, director / junior, trainee, intern), so the truth of every text explanation is known."""
    from audits.methods.synthetic import job_adverts as generate

    rng = np.random.default_rng(seed)
    frame = generate(800, seed=seed, noise=0.03)
    reference, current = _split(frame, share, rng, stratify=frame["salary"])
    return DemoData(reference, current, "salary", "classification", ["3% of labels flipped in both datasets"], "text")


def _patients(rng: np.random.Generator, n: int, crowding: float = 0.0) -> tuple[pd.DataFrame, pd.Series]:
    """Generated patients and the log-odds of readmission; ``crowding`` in [0, 1) narrows the spread of glucose, the
    strongest predictor, around the value where readmission is a coin toss (within the training range)."""
    X = pd.DataFrame({
        "age": np.clip(rng.normal(55, 15, n), 18, 95).round(0),
        "bmi": np.clip(rng.normal(28, 5, n), 15, 55).round(1),
        "systolic_bp": rng.normal(130, 18, n).round(0),
        "glucose": np.clip(rng.normal(120, 40 * (1 - crowding), n), 50, 400).round(0),
        "prior_visits": rng.poisson(1.2, n),
        "smoker": pd.Series(np.where(rng.random(n) < 0.25, "yes", "no"), dtype="str"),
        "clinic": pd.Series(rng.choice(["north", "south", "east", "west"], n), dtype="str"),
    })
    logit = 2 * (-1.2 + 0.03 * (X["age"] - 55) + 0.05 * (X["bmi"] - 28) + 0.045 * (X["glucose"] - 120)
                 + 0.4 * X["prior_visits"] + 0.6 * (X["smoker"] == "yes"))
    return X, logit


def _readmitted(rng: np.random.Generator, logit: pd.Series) -> np.ndarray:
    return np.where(rng.random(len(logit)) < 1 / (1 + np.exp(-logit)), "yes", "no")


def readmission(seed: int, share: float, days: int = 6, labelled_days: int = 3) -> DemoData:
    """Binary: readmitted within 30 days, from generated patient records (age, bmi, blood pressure, glucose, prior
    visits, smoker, clinic). A deployed model's world: a holdout the model never trained on; a labelled current batch
    with a planted weak slice (at the north clinic, patients younger than 42 are discharged under another protocol and
    are readmitted far more often than the model predicts); and ``days`` daily batches whose glucose crowds, day by
    day, around the value where readmission is a coin toss: accuracy falls slowly, with no rows outside the training
    range. Labels arrive late: only the first ``labelled_days`` batches carry them."""
    rng = np.random.default_rng(seed)
    (X_train, train), (X_hold, hold), (X_cur, cur) = (_patients(rng, n) for n in (5000, 2000, 2500))
    reference = X_train.assign(readmitted=_readmitted(rng, train))
    holdout = X_hold.assign(readmitted=_readmitted(rng, hold))
    weak = (X_cur["clinic"] == "north") & (X_cur["age"] < 42)
    current = X_cur.assign(readmitted=_readmitted(rng, cur + 8.0 * weak))
    batches = []
    for day in range(days):
        X, logit = _patients(rng, 1500, crowding=0.6 * (day + 1) / days)
        batches.append(X.assign(readmitted=_readmitted(rng, logit)) if day < labelled_days else X)
    faults = ["weak slice: clinic = north and age < 42 readmitted far more often (about 5 % of current rows)",
              f"{days} daily batches, glucose crowding towards the decision boundary (accuracy falls day by day)",
              f"labels only on the first {labelled_days} days"]
    return DemoData(reference, current, "readmitted", "classification", faults, holdout=holdout, days=tuple(batches))


DATASETS: dict[str, Callable[[int, float], DemoData]] = {"breast_cancer": breast_cancer, "diabetes": diabetes,
                                                         "digits": digits, "job_adverts": job_adverts,
                                                         "readmission": readmission}
ESTIMATORS = {"breast_cancer": ("logistic_regression", "gradient_boosting"), "diabetes": ("random_forest",),
              "digits": ("cnn",), "job_adverts": ("tfidf_logistic",), "readmission": ("gradient_boosting", "logistic_regression")}
TARGETS = {"breast_cancer": "diagnosis", "diabetes": "progression", "digits": "label", "job_adverts": "salary",
           "readmission": "readmitted"}


# --- models ------------------------------------------------------------------------------------
def make_estimator(kind: str, X: pd.DataFrame, task: str, seed: int) -> Any:
    """A Pipeline with a ColumnTransformer over numeric columns (imputed) and string categoricals (one-hot)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    if kind == "tfidf_logistic":  # raw text in one column -> TF-IDF -> logistic regression
        from sklearn.feature_extraction.text import TfidfVectorizer

        (column,) = X.columns
        return Pipeline([("tfidf", ColumnTransformer([("words", TfidfVectorizer(), column)])),
                         ("model", LogisticRegression(C=10.0, max_iter=2000))])  # fmt: skip
    if kind == "cnn":  # images flattened to one column per pixel, as auditlens reads them
        from audits.methods.architectures import SmallCNN
        from audits.methods.network import TorchClassifier

        return TorchClassifier(SmallCNN(), (1, 8, 8), epochs=20, lr=3e-3, random_state=seed)
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


def _data_file(workdir: Path, dataset: str, role: str) -> Path:
    suffix = ".npz" if dataset == "digits" else ".csv"
    return workdir / "data" / f"{dataset}_{role}{suffix}"


NOT_INPUTS = {"digits": ["fault"]}  # segment columns of a dataset that the model does not take


def _inputs(frame: pd.DataFrame, dataset: str, target: str) -> pd.DataFrame:
    return frame.drop(columns=[target, *NOT_INPUTS.get(dataset, [])], errors="ignore")


def _write(frame: pd.DataFrame, path: Path, target: str) -> None:
    if path.suffix == ".npz":  # images N x 1 x 8 x 8, their labels and other per-image arrays, as auditlens reads them
        others = [c for c in frame.columns if not c.startswith("p")]
        pixels = frame.drop(columns=others).to_numpy(np.float32)
        arrays = {c: frame[c].to_numpy(dtype=str if pd.api.types.is_string_dtype(frame[c]) else None) for c in others}
        np.savez(path, images=pixels.reshape(len(frame), 1, 8, 8), **arrays)
    else:
        frame.to_csv(path, index=False)


def _read(path: Path) -> pd.DataFrame:
    from tasks.adapters.datasets import read_table

    return read_table(path)


# --- registering models: the demo's, and those of the tests and benchmarks -------------------------
def register_sklearn_model(sink: MlflowSink, estimator: Any, *, name: str, experiment: str, input_example: Any,
                           params: dict[str, Any], description: str = "", artifact_location: str | None = None) -> str:
    """Save a scikit-learn model (cloudpickle: skops would need every tree type listed as trusted;
    loading handles both formats) and register it as a new version of ``name``."""
    import tempfile
    from importlib.metadata import version as installed

    import mlflow.sklearn

    with tempfile.TemporaryDirectory(prefix="auditlens-model-") as tmp:
        path = Path(tmp) / "model"
        mlflow.sklearn.save_model(
            estimator,
            str(path),
            serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE,
            input_example=input_example,
            # stated, not inferred: inference imports the model in a subprocess, for seconds
            pip_requirements=[f"{p}=={installed(p)}" for p in ("scikit-learn", "pandas", "numpy", "cloudpickle")],
        )
        return register_model_files(sink, path, name=name, experiment=experiment, params=params,
                                    description=description, artifact_location=artifact_location)


def register_pytorch_model(sink: MlflowSink, module: Any, *, name: str, experiment: str, input_example: Any, classes: list,
                           params: dict[str, Any], description: str = "", artifact_location: str | None = None) -> str:
    """Save a PyTorch classifier and register it as a new version of ``name``.

    Pickle format (the module's class must be importable where it is loaded, as ours are from the installed
    package): MLflow's default, pt2 (torch.export), freezes eval mode and cannot switch dropout on again,
    which MC dropout and the gradient explainers need. ``metadata.auditlens`` records the classes and the
    input shape (C, H, W) for the loader."""
    import tempfile
    from importlib.metadata import version as installed

    import mlflow.pytorch

    module = module.eval()
    with tempfile.TemporaryDirectory(prefix="auditlens-model-") as tmp:
        path = Path(tmp) / "model"
        mlflow.pytorch.save_model(
            module, str(path), serialization_format="pickle", input_example=input_example,
            metadata={"auditlens": {"classes": list(classes), "input_shape": list(input_example.shape[1:])}},
            pip_requirements=[f"torch=={installed('torch').split('+')[0]}", f"numpy=={installed('numpy')}"],
        )
        return register_model_files(sink, path, name=name, experiment=experiment, params=params,
                                    description=description, artifact_location=artifact_location)


def register_model_files(sink: MlflowSink, path: Path, *, name: str, experiment: str, params: dict[str, Any],
                         description: str = "", artifact_location: str | None = None) -> str:
    """Register a saved MLflow model folder as a new version of ``name``, through a training run and an
    MLflow 3 logged model. Client calls only: the fluent API would set process-wide tracking URIs (and
    MLFLOW_TRACKING_URI in the environment, which child processes then inherit)."""
    from tasks.adapters.mlflow_sink import origin_tags

    client = sink.client
    experiment_id = sink.experiment_id(experiment, artifact_location)
    run_id = client.create_run(experiment_id, run_name=f"train {name}", tags=origin_tags("LOCAL")).info.run_id
    try:
        sink.log_batch(run_id, params=params)
        logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
        client.log_model_artifacts(logged.model_id, str(path))
        client.finalize_logged_model(logged.model_id, "READY")
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name)
        # the storage URI, not models:/m-...: a SQL registry would resolve that through the global tracking URI
        version = client.create_model_version(
            name, source=logged.artifact_location, run_id=run_id, model_id=logged.model_id, description=description
        ).version
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return str(version)


def _register(sink: MlflowSink, estimator: Any, X: pd.DataFrame, *, name: str, kind: str, dataset: str, params: dict,
              description: str, artifact_location: str | None = None) -> str:
    if kind == "cnn":
        return register_pytorch_model(
            sink, estimator.network(), name=name, experiment=f"auditlens-demo/training/{name}", artifact_location=artifact_location,
            input_example=estimator.as_tensor(X.head(3)).numpy(), classes=estimator.classes_.tolist(), params=params,
            description=description,
        )
    return register_sklearn_model(sink, estimator, name=name, experiment=f"auditlens-demo/training/{name}",
                                  artifact_location=artifact_location, input_example=X.head(3), params=params,
                                  description=description)


def register_new_version(settings: DemoSettings, model_name: str, kind: str, tracking_uri: str) -> str:
    """Train ``kind`` on the demo model's reference data (written by the demo) and register it as a new version."""
    from tasks.adapters.errors import ConfigError
    from tasks.adapters.mlflow_sink import MlflowSink
    from tasks.adapters.tracking import make_client

    spec = next((m for m in settings.models if m.name == model_name), None)
    if spec is None:
        raise ConfigError(f"no demo model {model_name!r}", f"use one of {[m.name for m in settings.models]}")
    kinds = ESTIMATORS[spec.dataset]
    if kind not in kinds:
        raise ConfigError(f"{model_name} ({spec.dataset}) cannot be trained as {kind!r}", f"use --estimator {' or '.join(kinds)}")
    reference = _data_file(Path(settings.workdir).resolve(), spec.dataset, "reference")
    if not reference.is_file():
        raise ConfigError(f"no demo data at {reference}", "run `make demo` first")
    frame = _read(reference)
    target = TARGETS[spec.dataset]
    X, y = _inputs(frame, spec.dataset, target), frame[target]
    task = "regression" if spec.dataset == "diabetes" else "classification"
    seed = settings.seed + len(make_client(tracking_uri).search_model_versions(f"name='{model_name}'"))
    estimator = make_estimator(kind, X, task, seed).fit(X, y)
    return _register(MlflowSink(tracking_uri), estimator, X, name=model_name, kind=kind, dataset=spec.dataset,
                     params={"estimator": kind, "dataset": spec.dataset, "seed": seed, "rows": len(X)},
                     description=f"{kind} on {spec.dataset} (registered with auditlens register-version)")


@dataclass(frozen=True)
class PreparedAudit:
    model_uri: str
    config_path: Path
    label: str
    current_data: str | None = None  # a scheduled-like audit's own batch
    reason: str = "demo"
    as_of: str | None = None  # the simulated day it audits (ISO date)


@dataclass(frozen=True)
class DemoStore:
    """Where the demo's world lives: its folder, the SQLite MLflow store in it and the sink that registers models."""

    workdir: Path
    tracking_uri: str
    artifacts: str  # the artifact root (file URI) of training runs and audits
    sink: MlflowSink


def start_demo(settings: DemoSettings, sink_factory: Callable[[str], MlflowSink]) -> DemoStore:
    """An empty work folder (the last demo's wiped) and its MLflow store."""
    workdir = Path(settings.workdir).resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "data").mkdir(parents=True)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    return DemoStore(workdir, tracking_uri, (workdir / "mlartifacts").as_uri(), sink_factory(tracking_uri))


def prepare_model(settings: DemoSettings, spec: DemoModel, store: DemoStore, log: Callable[[str], None] = print) -> list[PreparedAudit]:
    """One demo model's data written, its versions trained and registered (@champion set), its audit configuration
    written; return its audits, in the order they must run (every version, then the scheduled days). Models are
    independent of one another: each its data (from the seed alone), its registered model and its experiments."""
    workdir, tracking_uri, artifacts, sink = store.workdir, store.tracking_uri, store.artifacts, store.sink
    audits: list[PreparedAudit] = []
    if spec.schedule is not None:
        data = readmission(settings.seed, settings.current_share, spec.schedule.days, spec.schedule.labelled_days)
    else:
        data = DATASETS[spec.dataset](settings.seed, settings.current_share)
    ref_path, cur_path = _data_file(workdir, spec.dataset, "reference"), _data_file(workdir, spec.dataset, "current")
    _write(data.reference, ref_path, data.target)
    _write(data.current, cur_path, data.target)
    hold_path = _data_file(workdir, spec.dataset, "holdout") if data.holdout is not None else None
    if hold_path is not None:
        _write(data.holdout, hold_path, data.target)
    log(f"{spec.dataset}: {len(data.reference)} reference rows, {len(data.current)} current rows; planted: {'; '.join(data.faults)}")
    X, y = _inputs(data.reference, spec.dataset, data.target), data.reference[data.target]
    for number, kind in enumerate(spec.versions, start=1):
        estimator = make_estimator(kind, X, data.task, settings.seed).fit(X, y)
        version = _register(sink, estimator, X, name=spec.name, kind=kind, dataset=spec.dataset,
                            artifact_location=f"{artifacts}/training",
                            params={"estimator": kind, "dataset": spec.dataset, "seed": settings.seed, "rows": len(X)},
                            description=f"{kind} on {spec.dataset} (demo)")
        log(f"registered {spec.name} v{version}: {kind}")
        if number == spec.champion:
            sink.versions.set_alias(spec.name, "champion", version)
    config = {
        "kind": "audit",
        "seed": settings.seed,
        "data": {"reference": f"data/{ref_path.name}", "current": f"data/{cur_path.name}", "target": data.target,
                 **({"holdout": f"data/{hold_path.name}"} if hold_path is not None else {}),
                 "segments": list(spec.segments), "modality": data.modality},
        "mlflow": {"tracking_uri": tracking_uri, "artifact_location": f"{artifacts}/audits"},
        "audits": [a.model_dump(mode="json", exclude_none=True) for a in spec.audits],
    }
    config_path = workdir / f"{spec.name}.audit.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    for version in spec.audit_versions or range(1, len(spec.versions) + 1):
        audits.append(PreparedAudit(f"models:/{spec.name}/{version}", config_path, f"{spec.name} v{version}"))
    if spec.schedule is not None:
        audits += _scheduled_days(spec, data, config, workdir)
    return audits


FLOW_COST_S = 6.0  # an audit's own cost besides its audits: the model's processes started, inputs loaded, run recorded
TRAINING_COST_S = {"cnn": 10.0}  # training that takes longer than a second


def estimated_cost_s(spec: DemoModel) -> float:
    """A rough cost of preparing and auditing one demo model (its audits' ``typical_cost_s``, a fixed cost per audit
    run, its training): the demo starts the costliest first, so that the ones run beside them end about together."""
    from audits.core.registry import get_audit_class

    def plan(audits: list[AuditSpec]) -> float:
        return FLOW_COST_S + sum(get_audit_class(a.audit).typical_cost_s for a in audits)

    versions = len(spec.audit_versions or spec.versions)
    days = (spec.schedule.days * plan(spec.schedule.audits)) if spec.schedule is not None else 0.0
    return sum(TRAINING_COST_S.get(kind, 0.0) for kind in spec.versions) + versions * plan(spec.audits) + days


def _scheduled_days(spec: DemoModel, data: DemoData, config: dict[str, Any], workdir: Path) -> list[PreparedAudit]:
    """The daily batches written as data/<dataset>_day<N>.csv and one scheduled-like audit of @champion per day, dated
    the last ``days`` days up to today, with the schedule's own (lighter) plan."""
    from datetime import date, timedelta

    schedule = spec.schedule
    config = {**config, "audits": [a.model_dump(mode="json", exclude_none=True) for a in schedule.audits]}
    config_path = workdir / f"{spec.name}.schedule.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    today = date.today()
    out = []
    for day, batch in enumerate(data.days, start=1):
        path = workdir / "data" / f"{spec.dataset}_day{day}.csv"
        batch.to_csv(path, index=False)
        as_of = (today - timedelta(days=len(data.days) - day)).isoformat()
        labels = "labelled" if data.target in batch.columns else "no labels yet"
        out.append(PreparedAudit(f"models:/{spec.name}@champion", config_path, f"{spec.name}@champion on {as_of} ({labels})",
                                 current_data=str(path), reason="schedule", as_of=as_of))
    return out

