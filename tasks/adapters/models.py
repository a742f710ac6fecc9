"""Resolving a model URI against the MLflow registry, and loading the model for the audits.

scikit-learn models load natively (``predict_proba``, tree internals, ``clone``); anything else
loads through pyfunc. An alias is resolved to its version first and the version is loaded, so the
audit records exactly what it audited even if the alias moves meanwhile.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from typing import Any

from audits.core.context import ModelUnderAudit
from tasks.adapters.errors import ModelLoadError, ModelNotFoundError, TrackingServerError

_REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))$")
_RUN = re.compile(r"^runs:/(?P<run_id>[0-9a-f]{32})/(?P<path>.+)$")
_LOGGED_MODEL = re.compile(r"^models:/(?P<model_id>m-[0-9a-f]+)$")
# a logged model's files, as a version made from them names its source: <artifact root>/models/m-<id>/artifacts
_LOGGED_MODEL_FILES = re.compile(r"/models/(?P<model_id>m-[0-9a-f]{32})/artifacts/?$")


@dataclass(frozen=True)
class ModelRef:
    uri: str  # as requested
    load_uri: str  # what is loaded (an alias resolved to its version)
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    model_id: str | None = None  # MLflow 3's logged-model id, linked to the audit run as an input
    source: str = ""  # where the registry says the model's files are (models:/m-..., runs:/..., a storage URI)

    @property
    def registered(self) -> bool:
        return self.name is not None and self.version is not None

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}" if self.registered else self.uri


def _not_found(exc: Exception) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower()


def _refused(where: str, exc: Exception) -> TrackingServerError:
    from tasks.adapters.tracking import redact_text

    code = getattr(exc, "error_code", "") or type(exc).__name__
    return TrackingServerError(f"{where} refused the request ({code}: {redact_text(str(exc))[:300]})",
                               "check the credentials and permissions for this server (MLFLOW_TRACKING_USERNAME / "
                               "MLFLOW_TRACKING_PASSWORD), and that it is an MLflow tracking server")


def _unsupported(uri: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"unsupported model URI {uri!r}", "use models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH")


def check_model_uri(uri: str) -> None:
    """Refuse a model URI of a form auditlens does not read, before anything is imported or started for it."""
    if not (_REGISTRY.match(uri) or _RUN.match(uri)):
        raise _unsupported(uri)


def resolve_model(uri: str, client) -> ModelRef:  # client: mlflow.MlflowClient
    from mlflow.exceptions import MlflowException

    from tasks.adapters.tracking import redact

    where = f"the registry at {redact(client._registry_uri)}"
    if match := _REGISTRY.match(uri):
        name, version, alias = match["name"], match["version"], match["alias"]
        try:
            client.get_registered_model(name)
        except MlflowException as exc:
            if not _not_found(exc):
                raise _refused(where, exc) from None
            known = sorted(m.name for m in client.search_registered_models(max_results=50))
            raise ModelNotFoundError(
                f"no registered model {name!r} in {where} (registered: {known or 'none'})",
                "check the model name, or the tracking URI (--tracking-uri / mlflow.tracking_uri)",
            ) from None
        try:
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        except MlflowException as exc:
            if not _not_found(exc):
                raise _refused(where, exc) from None
            versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
            aliases = sorted(client.get_registered_model(name).aliases)
            what = f"alias @{alias}" if alias else f"version {version}"
            raise ModelNotFoundError(
                f"model {name!r} has no {what} in {where} (versions: {versions}, aliases: {aliases})",
                f"use models:/{name}/<version> or models:/{name}@<alias> with one of those",
            ) from None
        return ModelRef(uri, f"models:/{name}/{mv.version}", name, str(mv.version), alias, mv.run_id, _logged_model_id(mv, client), mv.source)
    if match := _RUN.match(uri):
        try:
            client.get_run(match["run_id"])
        except MlflowException as exc:
            if not _not_found(exc):
                raise _refused(where, exc) from None
            raise ModelNotFoundError(f"no run {match['run_id']} in the tracking store", "check the run id in the URI") from None
        return ModelRef(uri, uri, run_id=match["run_id"], source=uri)
    raise _unsupported(uri)


def _logged_model_id(mv, client) -> str | None:
    """MLflow 3's logged-model id of a version: given, in its source URI, or found through its training run."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    if logged := _LOGGED_MODEL.match(mv.source or ""):
        return logged["model_id"]
    if files := _LOGGED_MODEL_FILES.search(mv.source or ""):
        # the id is in the path: checked by id, not searched for (a search loads every metric of every logged model of
        # the experiment, and the audited model gains the checked metrics of each audit: 0.3-0.6 s after a few dozen)
        try:
            if mv.source.startswith(client.get_logged_model(files["model_id"]).artifact_location):
                return files["model_id"]
        except Exception:  # noqa: BLE001 - deleted, or another store's: search as below
            pass
    if not mv.run_id:
        return None
    try:
        run = client.get_run(mv.run_id)
        found = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                            filter_string=f"source_run_id = '{mv.run_id}'", max_results=50)
    except Exception:  # the run may be deleted, or the store too old for logged models: no link then
        return None
    matches = [m for m in found if mv.source and mv.source.startswith(m.artifact_location)]
    return matches[0].model_id if matches else None


def storage_location(ref: ModelRef, client) -> str:
    """The artifact URI of the model's files, found through ``client`` (never MLflow's global URIs,
    which point at ./mlflow.db unless something set them)."""
    source = ref.source
    if logged := _LOGGED_MODEL.match(source):
        return client.get_logged_model(logged["model_id"]).artifact_location
    if run := _RUN.match(source):
        info = client.get_run(run["run_id"]).info
        found = client.search_logged_models(
            experiment_ids=[info.experiment_id],
            filter_string=f"source_run_id = '{run['run_id']}' AND name = '{run['path']}'",
            max_results=1,
        )
        return found[0].artifact_location if found else f"{info.artifact_uri}/{run['path']}"
    return source


def fetch_model_files(ref: ModelRef, client, folder: str) -> str:
    """Download the model's files into ``folder`` (bytes only: nothing of them is read as a model here)."""
    from mlflow.artifacts import download_artifacts

    try:
        return download_artifacts(artifact_uri=storage_location(ref, client), tracking_uri=client.tracking_uri, dst_path=folder)
    except Exception as exc:
        raise ModelLoadError(f"cannot fetch the model files of {ref.label} ({ref.source}): {exc}",
                             "check that the version's source still exists in the artifact store") from None


def load_model_files(local: str, ref: ModelRef, task: str = "auto", device: str = "cpu", security: Any = None) -> ModelUnderAudit:
    """The model in a downloaded folder, through the loading gate (``model_gate``): its MLmodel is read by us (never
    mlflow.models.get_model_info, which would also look the logged model up in MLflow's *global* store)."""
    from tasks.adapters.model_gate import read_model_folder

    identity = {"uri": ref.load_uri, "name": ref.name, "version": ref.version}
    return _load_local(read_model_folder(local, ref.label), ref, task, identity, device, _security(security))


def load_model(ref: ModelRef, client, task: str = "auto", device: str = "cpu", security: Any = None) -> ModelUnderAudit:
    """The model, downloaded and loaded through the gate in this process (tests, benchmarks; the audit flow loads it in
    the model's own process, ``model_worker``). ``security``: the config's ``security`` section (strict by default)."""
    with tempfile.TemporaryDirectory(prefix="auditlens-model-") as folder:
        return load_model_files(fetch_model_files(ref, client, folder), ref, task, device, security)


def _security(security: Any) -> tuple[bool, tuple[str, ...]]:
    if security is None:
        return False, ()
    return security.model_loading == "trusted", tuple(security.trusted_types)


def _load_local(files, ref: ModelRef, task: str, identity: dict, device: str = "cpu",
                security: tuple[bool, tuple[str, ...]] = (False, ())) -> ModelUnderAudit:
    from tasks.adapters.model_gate import TRUST_FIX, ModelRefusedError, load_sklearn

    trusted, trusted_types = security
    flavors = files.flavors
    try:
        if "sklearn" in flavors:
            estimator = load_sklearn(files, trusted_types, trusted)
            model = ModelUnderAudit.from_estimator(estimator, flavor="sklearn", **identity)
            if task != "auto" and task != model.task:
                raise ModelLoadError(
                    f"the config says model.task is {task!r}, but {ref.label} is a scikit-learn {model.task} model",
                    f"set model.task to {model.task!r} or 'auto'",
                )
            return model
        if "pytorch" in flavors:
            return _load_pytorch(files, ref, task, identity, device, security)
        if not trusted:
            raise ModelRefusedError(f"{ref.label}: refused before loading: it has {files.describe()}; auditlens loads "
                                    "scikit-learn and PyTorch models through its allowlist, and anything else runs the "
                                    "model's own code", TRUST_FIX)
        if task == "auto":
            raise ModelLoadError(
                f"{ref.label} has flavors {sorted(flavors)}; only scikit-learn models reveal their task",
                "set model.task to 'classification' or 'regression' in the config",
            )
        import mlflow

        pyfunc = mlflow.pyfunc.load_model(str(files.root))
        return ModelUnderAudit(task=task, predict=pyfunc.predict, flavor="pyfunc", **identity)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load {ref.label} ({type(exc).__name__}: {exc})",
            "load it once with mlflow.pyfunc.load_model to see why",
        ) from None


def _load_pytorch(files, ref: ModelRef, task: str, identity: dict, device: str = "cpu",
                  security: tuple[bool, tuple[str, ...]] = (False, ())) -> ModelUnderAudit:
    """A PyTorch classifier, loaded natively (gradients, layers, dropout) and wrapped as a scikit-learn one.

    Its classes and input shape come from the model's metadata (``auditlens``: ``classes``, ``input_shape``, as
    ``demo.register_pytorch_model`` writes them), else from its signature (a tensor input) and its output width.
    """
    import mlflow
    import numpy as np

    from audits.methods.network import TorchClassifier
    from tasks.adapters.model_gate import load_torch_module

    if task == "regression":
        raise ModelLoadError(f"{ref.label} is a PyTorch model and the config says model.task is 'regression'",
                             "auditlens audits PyTorch classifiers: set model.task to 'classification' or 'auto'")
    info = mlflow.models.Model.from_dict(files.mlmodel)  # the MLmodel the gate read: its signature, its metadata
    meta = (info.metadata or {}).get("auditlens", {})
    shape = meta.get("input_shape")
    if shape is None and info.signature is not None:
        spec = info.signature.inputs.inputs[0]
        shape = list(getattr(spec, "shape", ()) or ())[1:] or None
    if not shape:
        raise ModelLoadError(f"{ref.label} does not say what input shape it takes",
                             "log it with an input_example (a numpy array N x C x H x W), or with "
                             "metadata={'auditlens': {'input_shape': [C, H, W], 'classes': [...]}}")
    torch = __import__("torch")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device is {device!r}, but this machine has no CUDA device",
                             "set model.device to 'cpu' or 'auto'")
    trusted, trusted_types = security
    module = load_torch_module(files, trusted_types, trusted)
    classes = meta.get("classes")
    if classes is None:
        with torch.no_grad():
            width = module(torch.zeros((2, *shape), dtype=torch.float32)).shape[-1]
        classes = list(range(int(width)))
    estimator = TorchClassifier.from_trained(module, classes, tuple(shape), device=device)
    return ModelUnderAudit(task="classification", predict=estimator.predict, predict_proba=estimator.predict_proba,
                           classes=tuple(np.asarray(classes).tolist()), estimator=estimator, flavor="pytorch", **identity)


def baseline_ref(ref: ModelRef, alias: str | None, client) -> tuple[ModelRef | None, str]:
    """The version behind ``alias`` of the audited model, when it is another version; else None and why."""
    from mlflow.exceptions import MlflowException

    if alias is None:
        return None, "no baseline alias is configured (model.baseline_alias)"
    if not ref.registered:
        return None, f"{ref.uri} is not a registry version, so it has no @{alias} to compare with"
    try:
        mv = client.get_model_version_by_alias(ref.name, alias)
    except MlflowException:
        return None, f"model {ref.name!r} has no version behind @{alias}"
    if str(mv.version) == ref.version:
        return None, f"the audited version is @{alias} itself"
    return ModelRef(f"models:/{ref.name}@{alias}", f"models:/{ref.name}/{mv.version}", ref.name, str(mv.version), alias,
                    mv.run_id, _logged_model_id(mv, client), mv.source), ""


def load_baseline(ref: ModelRef, alias: str | None, client, task: str = "auto", device: str = "cpu",
                  security: Any = None) -> tuple[ModelUnderAudit | None, str]:
    """The baseline model loaded in this process (tests, benchmarks), else None and why."""
    baseline, note = baseline_ref(ref, alias, client)
    if baseline is None:
        return None, note
    try:
        return load_model(baseline, client, task, device, security), ""
    except ModelLoadError as exc:
        return None, f"the @{alias} version {baseline.version} could not be loaded: {exc.problem}"
