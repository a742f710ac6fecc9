"""What a downloaded model is, found in the model's own process (``ModelWorker.describe``, for ``auditlens init``):
its flavours and serialisation, whether the loading gate accepts it under ``security.model_loading: strict`` and, if
not, which types it refused, and, once loaded, its task, classes and the features it expects. The reply is JSON-ready
data that the auditor checks as untrusted (``scaffold.facts_from_reply``)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

EXACT_CLASS = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")  # module.Class, as a trusted type is named


def describe_model_folder(request: dict) -> dict:
    """What a downloaded model is, as JSON-ready data: its flavours and serialisation; whether the gate accepts it under
    model_loading strict (with ``trusted_types``) and, if not, what it refused; then, if it is loaded (accepted, or
    refused and ``trusted``), its task, classes and feature names. A flavour the gate never loads natively (pyfunc) is
    not loaded: its MLflow signature names its inputs."""
    from tasks.adapters.model_gate import ModelRefusedError, read_model_folder
    from tasks.adapters.models import ModelRef, load_model_files
    from tasks.adapters.settings import Security

    ref = ModelRef(request["uri"], request["load_uri"], request.get("name"), request.get("version"))
    files = read_model_folder(request["model_dir"], ref.label)
    flavors = files.flavors
    serialization, model_file = _serialization(files)
    facts: dict[str, Any] = {"flavors": sorted(flavors), "serialization": serialization, "model_file": model_file}
    signature = _signature_inputs(files.mlmodel)
    if signature:
        facts.update(features=signature, features_from="its MLflow signature")
    trusted_types = list(request.get("trusted_types") or [])
    if "sklearn" not in flavors and "pytorch" not in flavors:
        facts["refusal"] = (f"{ref.label} has {files.describe()}; auditlens loads scikit-learn and PyTorch models through "
                            "its allowlist, and any other flavour runs the model's own code")
        return facts
    try:
        model = load_model_files(request["model_dir"], ref, security=Security(trusted_types=trusted_types))
    except ModelRefusedError as exc:
        facts.update(refusal=exc.problem, refused=_refused_names(files, trusted_types))
        if not request.get("trusted"):
            return facts
        model = load_model_files(request["model_dir"], ref, security=Security(model_loading="trusted", trusted_types=trusted_types))
    facts.update(_described(model))
    facts["loaded"] = True
    return facts


def _serialization(files: Any) -> tuple[str, str]:
    if "sklearn" in files.flavors:
        conf = files.flavors["sklearn"] or {}
        return str(conf.get("serialization_format", "pickle")), str(conf.get("pickled_model", ""))
    if "pytorch" in files.flavors:
        data = Path(files.root) / str((files.flavors["pytorch"] or {}).get("model_data", "data"))
        for name, kind in (("model.pth", "pth"), ("model.pt2", "pt2")):
            if (data / name).is_file():
                return kind, str((data / name).relative_to(files.root))
    return "", ""


def _signature_inputs(mlmodel: dict) -> list[str] | None:
    """The input column names of the model's MLflow signature (a column-based one), else None."""
    raw = (mlmodel.get("signature") or {}).get("inputs")
    try:
        specs = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    if not isinstance(specs, list):
        return None
    found = [spec.get("name") for spec in specs if isinstance(spec, dict)]
    return [str(n) for n in found] if found and all(isinstance(n, str) for n in found) else None


def _refused_names(files: Any, trusted_types: list[str]) -> list[str]:
    """The names the gate refuses in a scikit-learn model's file (pickle: the globals it names; skops: its types), by
    the gate's own allowlist; [] where they cannot be listed (the refusal's text says what was found)."""
    from tasks.adapters import safe_pickle
    from tasks.adapters.model_gate import _skops_allowed

    conf = files.flavors.get("sklearn")
    if conf is None:
        return []
    fmt = (conf or {}).get("serialization_format", "pickle")
    allowlist = safe_pickle.Allowlist(trusted_types)
    try:
        path = files.inside(conf.get("pickled_model"), "sklearn pickled_model")
        if fmt == "skops":
            import skops.io

            return [n for n in skops.io.get_untrusted_types(file=path) if not _skops_allowed(n, allowlist)]
        safe_pickle.check(path.read_bytes(), allowlist)
    except safe_pickle.UnsafePickleError as exc:
        return [found.split(" (")[0] for found in exc.found if EXACT_CLASS.fullmatch(found.split(" (")[0])]
    except Exception:  # noqa: BLE001 - unreadable: the refusal's own text says so
        return []
    return []


def _described(model: Any) -> dict:
    estimator = model.estimator
    names = getattr(estimator, "feature_names_in_", None)
    facts: dict[str, Any] = {"task": model.task, "flavor": model.flavor,
                             "classes": list(model.classes) if model.classes is not None else None,
                             "estimator": _estimator_name(estimator)}
    if names is not None:
        facts.update(features=[str(n) for n in names], features_from="the model's feature_names_in_")
    count = getattr(estimator, "n_features_in_", None)
    if isinstance(count, int):
        facts["n_features"] = count
    shape = getattr(estimator, "input_shape", None)
    if shape is not None:
        facts["input_shape"] = [int(s) for s in shape]
    return facts


def _estimator_name(estimator: Any) -> str:
    if estimator is None:
        return ""
    steps = getattr(estimator, "steps", None)
    if isinstance(steps, list):
        return f"{type(estimator).__name__} ({', '.join(type(step).__name__ for _, step in steps)})"
    return type(estimator).__name__
