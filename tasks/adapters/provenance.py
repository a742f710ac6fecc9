"""What produced an audit: package versions and the code version, for the reproducibility manifest."""

from __future__ import annotations

import platform
import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from tasks.adapters.signing import signing_key
from tasks.adapters.tracking import redact

PACKAGES = ("auditlens", "mlflow", "prefect", "great-expectations", "shap", "lime", "scikit-learn",
            "pandas", "numpy", "scipy", "matplotlib", "pydantic", "torch", "captum")  # fmt: skip


@cache
def package_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


@cache
def code_version() -> str:
    """The git commit of this checkout (with '+dirty' for local changes), else the package version."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"auditlens {package_versions()['auditlens']}"


def model_params(ref, loaded, tracking_uri: str) -> dict[str, str]:
    """Params known before the data is read (logged when the run opens). The signing key is read here, so that a key
    that cannot sign is refused before the run is opened; the run names it by its fingerprint only."""
    settings = loaded.settings
    key = signing_key()
    return {
        "model.uri": ref.uri,
        "model.load_uri": ref.load_uri,
        "model.name": ref.name or "",
        "model.version": ref.version or "",
        "model.alias": ref.alias or "",
        "config.path": str(loaded.path),
        "config.hash": loaded.config_hash,
        **({"config.plan": loaded.preset} if loaded.preset else {}),  # the preset the audits came from (plan:)
        "seed": str(settings.seed),
        "audits": ",".join(p.id for p in loaded.plan),
        "code.version": code_version(),
        "signing.key_id": key.key_id if key is not None else "unsigned",
        **{f"pkg.{name}": v for name, v in package_versions().items()},
    }


def input_params(inputs) -> dict[str, str]:
    """Params known once the data and models are loaded: dataset fingerprints, the baseline version."""
    params = {
        f"data.{role}.{key}": str(value)
        for role, fp in inputs.fingerprints.items()
        for key, value in fp.items()
    }
    context = inputs.context
    params["model.flavor"] = context.model.flavor
    params["data.modality"] = context.modality
    if context.input_shape is not None:
        params["data.input_shape"] = "x".join(map(str, context.input_shape))
    baseline = inputs.context.baseline
    params["baseline.model"] = baseline.uri if baseline is not None else f"none: {inputs.context.baseline_note}"
    return params


def _redacted_settings(settings) -> dict:
    dumped = settings.model_dump(mode="json")
    if dumped.get("mlflow", {}).get("tracking_uri"):
        dumped["mlflow"]["tracking_uri"] = redact(dumped["mlflow"]["tracking_uri"])
    return dumped


def build_manifest(ref, loaded, inputs, results: list, verdict, tracking_uri: str, run_id: str) -> dict:
    """What a reviewer needs to reproduce the audit: inputs by hash, configuration, code, packages, outcome."""
    return {
        "auditlens_manifest": 1,
        "run_id": run_id,
        "tracking_uri": redact(tracking_uri),
        "model": {"uri": ref.uri, "load_uri": ref.load_uri, "name": ref.name, "version": ref.version,
                  "alias": ref.alias, "run_id": ref.run_id},
        "config": {"path": str(loaded.path), "hash": loaded.config_hash,
                   "settings": _redacted_settings(loaded.settings)},
        "data": inputs.fingerprints,
        "baseline": inputs.baseline_uri,
        "seed": loaded.settings.seed,
        "code_version": code_version(),
        "packages": package_versions(),
        "verdict": verdict.value,
        "audits": [{"id": r.audit, "verdict": r.verdict.value, "reason": r.reason, "rows": r.info.get("rows"),
                    "duration_s": round(r.duration_s, 3)} for r in results],
    }
