"""The loading gate on real MLflow model folders (saved with mlflow.sklearn / mlflow.pytorch, then tampered with as an
attacker would): what is refused, with which message, and that nothing of a refused model ran."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.adapters.model_gate import ModelRefusedError, load_sklearn, load_torch_module, read_model_folder
from tasks.adapters.models import ModelRef, _load_local
from tests.helpers import RunsCommand

REQUIREMENTS = ["scikit-learn", "numpy"]


@pytest.fixture(scope="module")
def fitted():
    from sklearn.ensemble import HistGradientBoostingClassifier

    rng = np.random.RandomState(0)
    X = rng.normal(size=(120, 4))
    return HistGradientBoostingClassifier(max_iter=10, random_state=0).fit(X, (X[:, 0] > 0).astype(int)), X


def _saved(tmp_path: Path, model, fmt: str, **kwargs) -> Path:
    import mlflow.sklearn

    path = tmp_path / f"model-{fmt}"
    mlflow.sklearn.save_model(model, str(path), serialization_format=fmt, pip_requirements=REQUIREMENTS, **kwargs)
    return path


def _edit_mlmodel(path: Path, change) -> None:
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    change(mlmodel)
    (path / "MLmodel").write_text(yaml.safe_dump(mlmodel))


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle"])
def test_a_plain_estimator_loads_in_either_pickle_format_and_predicts_as_saved(tmp_path, fitted, fmt):
    model, X = fitted
    files = read_model_folder(_saved(tmp_path, model, fmt), "m v1")
    np.testing.assert_array_equal(load_sklearn(files).predict_proba(X), model.predict_proba(X))


@pytest.mark.parametrize("fmt", ["pickle", "cloudpickle"])
def test_a_pickle_that_runs_a_command_is_refused_and_the_command_never_runs(tmp_path, fitted, fmt):
    path = _saved(tmp_path, fitted[0], fmt)
    marker = tmp_path / "ran"
    (path / "model.pkl").write_bytes(pickle.dumps({"model": RunsCommand(marker)}))
    with pytest.raises(ModelRefusedError) as refused:
        load_sklearn(read_model_folder(path, "evil v3"))
    message = str(refused.value)
    assert "evil v3: refused before loading: model.pkl" in message and "system" in message
    assert "security.model_loading: trusted" in message  # how to trust it
    assert not marker.exists()


def test_trusted_loads_what_strict_refuses(tmp_path, fitted):
    path = _saved(tmp_path, fitted[0], "cloudpickle")
    (path / "model.pkl").write_bytes(pickle.dumps({"calls": [np.mean, "as a value"], "counter": __import__("collections").Counter("ab")}))
    with pytest.raises(ModelRefusedError, match="collections.Counter"):
        load_sklearn(read_model_folder(path, "m"))
    assert load_sklearn(read_model_folder(path, "m"), trusted=True)["counter"]["a"] == 1
    assert load_sklearn(read_model_folder(path, "m"), trusted_types=("collections.Counter",))["counter"]["b"] == 1


def test_a_pickled_model_path_that_leaves_the_folder_is_refused(tmp_path, fitted):
    path = _saved(tmp_path, fitted[0], "pickle")
    (tmp_path / "outside.pkl").write_bytes((path / "model.pkl").read_bytes())
    _edit_mlmodel(path, lambda m: m["flavors"]["sklearn"].update(pickled_model="../outside.pkl"))
    with pytest.raises(ModelRefusedError, match="points outside the model's folder"):
        load_sklearn(read_model_folder(path, "m"))
    _edit_mlmodel(path, lambda m: m["flavors"]["sklearn"].update(pickled_model=str(tmp_path / "outside.pkl")))
    with pytest.raises(ModelRefusedError, match="points outside the model's folder"):
        load_sklearn(read_model_folder(path, "m"))


def test_a_symlink_in_the_model_folder_is_refused(tmp_path, fitted):
    path = _saved(tmp_path, fitted[0], "pickle")
    (path / "model.pkl").unlink()
    (path / "model.pkl").symlink_to("/etc/hostname")
    with pytest.raises(ModelRefusedError, match="symlink, model.pkl -> /etc/hostname"):
        read_model_folder(path, "m")


def test_an_mlmodel_that_is_not_yaml_or_has_no_flavors_is_refused(tmp_path):
    (tmp_path / "MLmodel").write_text("flavors: [unclosed")
    with pytest.raises(ModelRefusedError, match="not valid YAML"):
        read_model_folder(tmp_path, "m")
    (tmp_path / "MLmodel").write_text("!!python/object/apply:os.system ['true']")  # safe_load refuses tags
    with pytest.raises(ModelRefusedError):
        read_model_folder(tmp_path, "m")
    (tmp_path / "MLmodel").write_text("artifact_path: model\n")
    with pytest.raises(ModelRefusedError, match="no flavors"):
        read_model_folder(tmp_path, "m")


def test_skops_types_are_checked_against_our_allowlist_never_the_models_own_list(tmp_path, fitted):
    import skops.io

    model, X = fitted
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    assert untrusted  # tree predictors, dtypes: skops does not trust them by default
    path = _saved(tmp_path, model, "skops", skops_trusted_types=untrusted)
    np.testing.assert_array_equal(load_sklearn(read_model_folder(path, "m")).predict_proba(X), model.predict_proba(X))

    # a model whose MLmodel trusts a type of its own choosing: the list in MLmodel is never read
    from collections import Counter

    (path / "model.skops").write_bytes(skops.io.dumps({"c": Counter("ab")}))
    _edit_mlmodel(path, lambda m: m["flavors"]["sklearn"].update(skops_trusted_types=["collections.Counter"]))
    with pytest.raises(ModelRefusedError, match="skops.*collections.Counter"):
        load_sklearn(read_model_folder(path, "m"))


def test_a_custom_pyfunc_is_refused_unless_trusted(tmp_path):
    import mlflow.pyfunc

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    path = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(str(path), python_model=Echo(), pip_requirements=["pandas"])
    ref = ModelRef("models:/echo/1", "models:/echo/1", "echo", "1")
    files = read_model_folder(path, ref.label)
    with pytest.raises(ModelRefusedError, match="echo v1: refused before loading: it has flavors python_function"):
        _load_local(files, ref, "regression", {"uri": ref.uri, "name": "echo", "version": "1"})
    model = _load_local(files, ref, "regression", {"uri": ref.uri, "name": "echo", "version": "1"}, security=(True, ()))
    assert model.flavor == "pyfunc"


def _saved_network(tmp_path: Path, module) -> Path:
    import mlflow.pytorch

    path = tmp_path / "net"
    mlflow.pytorch.save_model(module.eval(), str(path), serialization_format="pickle", pip_requirements=["torch"])
    return path


def test_a_network_of_an_allowlisted_package_loads_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    from audits.methods.architectures import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN()
    loaded = load_torch_module(read_model_folder(_saved_network(tmp_path, net), "cnn"))
    x = torch.randn(3, 1, 8, 8)
    assert type(loaded) is SmallCNN and torch.equal(loaded(x), net(x))


def test_a_network_whose_class_is_not_allowlisted_is_refused_before_loading(tmp_path):
    torch = pytest.importorskip("torch")
    import tests.unit.test_model_gate as here

    here.Unlisted = _unlisted_class(torch)
    path = _saved_network(tmp_path, here.Unlisted())
    with pytest.raises(ModelRefusedError, match="tests.unit.test_model_gate.Unlisted, which are not torch.nn modules"):
        load_torch_module(read_model_folder(path, "net"))
    loaded = load_torch_module(read_model_folder(path, "net"), trusted_types=("tests.unit.test_model_gate.Unlisted",))
    assert type(loaded).__name__ == "Unlisted"


def _unlisted_class(torch):
    class Unlisted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2)

        def forward(self, x):
            return self.linear(x)

    Unlisted.__module__, Unlisted.__qualname__ = __name__, "Unlisted"
    return Unlisted


def test_a_torch_checkpoint_that_runs_code_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from audits.methods.architectures import SmallCNN

    path = _saved_network(tmp_path, SmallCNN())
    marker = tmp_path / "ran"
    torch.save({"x": RunsCommand(marker)}, path / "data" / "model.pth")
    with pytest.raises(ModelRefusedError, match="refused before loading: data/model.pth names .*system"):
        load_torch_module(read_model_folder(path, "net"))
    assert not marker.exists()
