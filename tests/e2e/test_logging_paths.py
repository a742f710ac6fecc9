"""Models logged the way MLflow's own documentation shows, audited the way a user runs auditlens.

A user's script logs and registers each model with MLflow's fluent API (``mlflow.sklearn.log_model(...,
registered_model_name=...)``, ``mlflow.register_model``, ``mlflow.pytorch.log_model``) into a SQLite store in a folder of
its own; ``auditlens audit`` then runs as a process from another folder, with the store named only in the config. Each
format auditlens loads is covered: skops (with the trusted types MLflow asks for), pickle, cloudpickle, PyTorch pickle and
MLflow's default PyTorch format. Nothing may appear in the folder the command ran from (MLflow's defaults put ./mlflow.db
and ./mlruns there), and the audit's figures are recomputed here from the data and the model loaded back.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from tasks.adapters.tracking import make_client
from tests.helpers import audited_model_inputs

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"

# A user's own training script: MLflow's documented calls, nothing of auditlens.
USER_SCRIPT = textwrap.dedent('''
    import sys
    import mlflow, mlflow.sklearn, mlflow.pytorch
    import numpy as np, pandas as pd, skops.io
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    store = sys.argv[1]
    # stated, as many users do: MLflow would otherwise infer them by loading each model in a subprocess (5-10 s each),
    # which changes nothing of what is audited
    REQUIREMENTS = ["scikit-learn", "pandas", "numpy"]
    mlflow.set_tracking_uri(f"sqlite:///{store}/mlflow.db")
    train = pd.read_csv(f"{store}/reference.csv")
    X, y = train.drop(columns="label"), train["label"]
    numeric = ["x1", "x2", "x3", "noise"]

    def onehot(model):
        return make_pipeline(make_column_transformer((SimpleImputer(), numeric), (OneHotEncoder(handle_unknown="ignore"), ["colour"])), model)

    gbm = onehot(GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0)).fit(X, y)
    hgb = make_pipeline(make_column_transformer((OrdinalEncoder(), ["colour"]), remainder="passthrough"),
                        HistGradientBoostingClassifier(max_iter=30, random_state=0)).fit(X, y)
    logistic = onehot(LogisticRegression(max_iter=1000)).fit(X, y)

    # skops, MLflow 3's default format: it refuses to log a model with types skops does not trust by default (tree
    # predictors, even numpy.dtype inside a OneHotEncoder) unless they are listed
    for name, model in (("skops-hgb", hgb), ("skops-logistic", logistic)):
        with mlflow.start_run():
            mlflow.sklearn.log_model(model, name="model", registered_model_name=name, input_example=X.head(3),
                                     skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
                                     pip_requirements=REQUIREMENTS)
    with mlflow.start_run():
        mlflow.sklearn.log_model(gbm, name="model", registered_model_name="pickle-gbm", serialization_format="pickle",
                                 pip_requirements=REQUIREMENTS)
    with mlflow.start_run():
        mlflow.sklearn.log_model(hgb, name="model", registered_model_name="cloudpickle-hgb", serialization_format="cloudpickle",
                                 pip_requirements=REQUIREMENTS)
    with mlflow.start_run() as run:  # logged first, registered afterwards from the run
        mlflow.sklearn.log_model(gbm, name="model", serialization_format="cloudpickle", pip_requirements=REQUIREMENTS)
    mlflow.register_model(f"runs:/{run.info.run_id}/model", "registered-later")

    import torch
    from audits.methods.architectures import SmallCNN   # the network's class, importable where audits run
    images = np.load(f"{store}/digits-reference.npz")
    torch.manual_seed(0)
    net = SmallCNN()
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    inputs, labels = torch.tensor(images["images"]), torch.tensor(images["label"])
    for _ in range(40):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(inputs), labels).backward()
        optimiser.step()
    net.eval()
    with mlflow.start_run():
        mlflow.pytorch.log_model(net, name="model", registered_model_name="torch-pickle", serialization_format="pickle",
                                 input_example=images["images"][:2], pip_requirements=["torch"])
    with mlflow.start_run():
        mlflow.pytorch.log_model(net, name="model", registered_model_name="torch-default", input_example=images["images"][:2],
                                 pip_requirements=["torch"])
''')

TABULAR = ["skops-hgb", "skops-logistic", "pickle-gbm", "cloudpickle-hgb", "registered-later"]
NETWORKS = ["torch-pickle", "torch-default"]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A store in a folder of its own, filled by the user's script run from that folder."""
    from audits.methods.synthetic import digits
    from tests.conftest import make_tabular

    folder = tmp_path_factory.mktemp("users-store")
    X, y = make_tabular(500, seed=5)
    frame = pd.concat([X, y], axis=1)
    frame.iloc[:300].to_csv(folder / "reference.csv", index=False)
    frame.iloc[300:].to_csv(folder / "current.csv", index=False)
    images, labels = digits()
    np.savez(folder / "digits-reference.npz", images=images[:400], label=labels[:400])
    np.savez(folder / "digits-current.npz", images=images[1000:1200], label=labels[1000:1200])
    (folder / "train.py").write_text(USER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    done = subprocess.run([sys.executable, "train.py", str(folder)], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name, data in (("tabular.yaml", {"reference": "reference.csv", "current": "current.csv", "target": "label"}),
                       ("images.yaml", {"reference": "digits-reference.npz", "current": "digits-current.npz",
                                        "target": "label", "modality": "image"})):
        (folder / name).write_text(yaml.safe_dump({
            "kind": "audit", "seed": 1, "data": data,
            "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"},
            "audits": [{"audit": "performance"}],
        }))  # fmt: skip
    return folder


@pytest.fixture()
def elsewhere(tmp_path, prefect_harness) -> tuple[Path, dict]:
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    return tmp_path, {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}


def audit(store: Path, elsewhere: tuple[Path, dict], model: str, config: str):
    folder, env = elsewhere
    done = subprocess.run([str(AUDITLENS), "audit", "--model", f"models:/{model}/1", "--config", str(store / config),
                           "--fail-on", "never"], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert sorted(p.name for p in folder.iterdir()) == [], "MLflow fell back to its defaults in the working folder"
    client = make_client(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(f"auditlens/{model}")
    [found] = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'FINISHED'")
    run = client.get_run(found.info.run_id)  # with its inputs (search_runs leaves the model inputs out)
    assert client.get_model_version(model, "1").tags["audit.status"] == "done"
    return run, client


def files(client, model: str) -> str:
    """Where the version's files are, found through this store (MLflow's load_model("models:/...") would ask the
    default store in the working folder)."""
    from tasks.adapters.models import resolve_model, storage_location

    return storage_location(resolve_model(f"models:/{model}/1", client), client)


@pytest.mark.parametrize("model", TABULAR)
def test_a_scikit_learn_model_logged_as_mlflow_shows_is_audited_from_another_folder(store, elsewhere, model):
    run, client = audit(store, elsewhere, model, "tabular.yaml")
    import mlflow.sklearn

    loaded = mlflow.sklearn.load_model(files(client, model))
    current = pd.read_csv(store / "current.csv")
    X, y = current.drop(columns="label"), current["label"]
    assert run.data.metrics["performance.current.accuracy"] == pytest.approx(skm.accuracy_score(y, loaded.predict(X)), abs=1e-12)
    assert run.data.params["model.load_uri"] == f"models:/{model}/1"
    assert [m.model_id for m in audited_model_inputs(client, run)[0]] == [client.get_model_version(model, "1").source.removeprefix("models:/")]


@pytest.mark.parametrize("model", NETWORKS)
def test_a_pytorch_network_logged_as_mlflow_shows_is_audited_from_another_folder(store, elsewhere, model):
    run, _ = audit(store, elsewhere, model, "images.yaml")
    import mlflow.pytorch
    import torch

    client = make_client(f"sqlite:///{store / 'mlflow.db'}")
    net = mlflow.pytorch.load_model(files(client, model), map_location="cpu")
    current = np.load(store / "digits-current.npz")
    with torch.no_grad():
        predicted = net(torch.tensor(current["images"])).argmax(1).numpy()
    assert run.data.metrics["performance.current.accuracy"] == pytest.approx(skm.accuracy_score(current["label"], predicted), abs=1e-12)
    assert run.data.params["model.flavor"] == "pytorch"
