"""The loading gate: a model's files are read and checked before any byte of them is deserialised.

A registered model is untrusted input: anyone who can register a version chooses its bytes. The gate

- reads ``MLmodel`` itself (YAML, safely) and refuses symlinks and artifact paths that leave the model's folder;
- loads a scikit-learn model only through an allowlist that auditlens owns (never the ``skops_trusted_types`` the
  model's own ``MLmodel`` lists): skops files through ``skops.io.get_untrusted_types`` + ``trusted=`` that list,
  pickles (pickle or cloudpickle format) through ``safe_pickle``;
- loads a PyTorch network with ``torch.load(weights_only=True)``, allowing only ``torch.nn`` modules and classes of
  installed, allowlisted packages (auditlens's own architectures, ``security.trusted_types``); MLflow's ``pt2`` format
  only when its archive holds no pickle;
- refuses anything else (a custom pyfunc, a pickle that names a function or ``__main__`` class) unless the
  configuration says ``security.model_loading: trusted``.

A refusal is a ``ModelRefusedError``: what was found, where, and how to trust it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.adapters.errors import ModelLoadError

# packages whose nn.Module classes a strict load may rebuild, beside torch.nn
NETWORK_MODULES = ("audits.methods.architectures", "audits.methods.network")
TRUST_FIX = ("if you trust this model's code, set security.model_loading: trusted in the audit config (and, for automatic "
             "audits, model_loading: trusted on the model in the deployments file); to trust one class, list it under "
             "security.trusted_types")


class ModelRefusedError(ModelLoadError):
    """A model whose files the gate refused: nothing of it was deserialised."""


@dataclass(frozen=True)
class ModelFiles:
    """A downloaded MLflow model folder, as its ``MLmodel`` describes it."""

    root: Path
    label: str
    mlmodel: dict[str, Any] = field(repr=False)

    @property
    def flavors(self) -> dict[str, dict[str, Any]]:
        return self.mlmodel.get("flavors") or {}

    @property
    def metadata(self) -> dict[str, Any]:
        return self.mlmodel.get("metadata") or {}

    def inside(self, relative: str | None, what: str) -> Path:
        """``relative`` under the model's folder; refused when it is absolute or leaves the folder."""
        if not isinstance(relative, str) or not relative:
            raise ModelRefusedError(f"{self.label}: MLmodel's {what} is missing or not a path ({relative!r})",
                                    "log the model again with MLflow's log_model")
        candidate = Path(relative)
        resolved = (self.root / candidate).resolve()
        if candidate.is_absolute() or not resolved.is_relative_to(self.root.resolve()):
            raise ModelRefusedError(f"{self.label}: MLmodel's {what} {relative!r} points outside the model's folder",
                                    "a model's files are read from its own folder only; log the model again with MLflow's "
                                    "log_model")
        if not resolved.exists():
            raise ModelRefusedError(f"{self.label}: MLmodel's {what} {relative!r} does not exist in the model's folder",
                                    "log the model again with MLflow's log_model")
        return resolved

    def describe(self) -> str:
        flavors = ", ".join(sorted(self.flavors)) or "none"
        fmt = (self.flavors.get("sklearn") or {}).get("serialization_format")
        return f"flavors {flavors}" + (f"; scikit-learn format {fmt}" if fmt else "")


def read_model_folder(local: str | Path, label: str) -> ModelFiles:
    """The model folder's ``MLmodel``, read by us; symlinks anywhere in the folder are refused."""
    import yaml

    root = Path(local)
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in (*dirs, *files):
            path = Path(folder) / name
            if path.is_symlink():
                raise ModelRefusedError(f"{label}: the model's files hold a symlink, {path.relative_to(root)} -> "
                                        f"{os.readlink(path)}", "a model's files are read from its own folder only; log "
                                                               "the model again without links")
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        raise ModelRefusedError(f"{label}: the model's folder has no MLmodel file", "log the model with MLflow's log_model")
    try:
        parsed = yaml.safe_load(mlmodel.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ModelRefusedError(f"{label}: its MLmodel file is not valid YAML ({str(exc).splitlines()[0][:160]})",
                                "log the model again with MLflow's log_model") from None
    if not isinstance(parsed, dict) or not isinstance(parsed.get("flavors"), dict):
        raise ModelRefusedError(f"{label}: its MLmodel file has no flavors", "log the model with MLflow's log_model")
    return ModelFiles(root, label, parsed)


# ---------------------------------------------------------------------------------------------
# scikit-learn


def load_sklearn(files: ModelFiles, trusted_types: tuple[str, ...] = (), trusted: bool = False) -> Any:
    """The scikit-learn estimator in ``files``, through auditlens's allowlist; with ``trusted``, a pickle the allowlist
    refuses is loaded as MLflow would (cloudpickle, pickle)."""
    from tasks.adapters import safe_pickle

    conf = files.flavors["sklearn"] or {}
    fmt = conf.get("serialization_format", "pickle")
    path = files.inside(conf.get("pickled_model"), "sklearn pickled_model")
    allowlist = safe_pickle.Allowlist(trusted_types)
    if fmt == "skops":
        return _load_skops(files, path, allowlist, trusted)
    if fmt not in ("pickle", "cloudpickle"):
        raise ModelRefusedError(f"{files.label}: unknown scikit-learn serialization_format {fmt!r} in MLmodel",
                                "log the model with serialization_format skops, pickle or cloudpickle")
    data = path.read_bytes()
    try:
        return safe_pickle.loads(data, allowlist)
    except safe_pickle.UnsafePickleError as exc:
        if not trusted:
            raise ModelRefusedError(f"{files.label}: refused before loading: {path.relative_to(files.root)} ({fmt}) names "
                                    f"{'; '.join(exc.found)}", TRUST_FIX) from None
    return _load_trusted_pickle(fmt, data)


def _load_trusted_pickle(fmt: str, data: bytes) -> Any:
    import pickle

    if fmt == "cloudpickle":
        import cloudpickle

        return cloudpickle.loads(data)
    return pickle.loads(data)  # noqa: S301 - security.model_loading: trusted, chosen in the config


def _load_skops(files: ModelFiles, path: Path, allowlist: Any, trusted: bool) -> Any:
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(file=path)
    except Exception as exc:
        raise ModelRefusedError(f"{files.label}: {path.name} is not a readable skops file ({type(exc).__name__}: "
                                f"{str(exc)[:160]})", "log the model again with MLflow's log_model") from None
    refused = [name for name in untrusted if not _skops_allowed(name, allowlist)]
    if refused and not trusted:
        raise ModelRefusedError(f"{files.label}: refused before loading: {path.name} (skops) holds types outside "
                                f"auditlens's allowlist: {', '.join(refused[:8])}", TRUST_FIX)
    # trusted: what we checked (the types the model's own MLmodel lists are never read)
    return skops.io.load(path, trusted=list(untrusted))


def _skops_allowed(name: str, allowlist: Any) -> bool:
    module, _, attr = name.rpartition(".")
    return bool(module) and allowlist.resolve(module, attr) is not None


# ---------------------------------------------------------------------------------------------
# PyTorch


def load_torch_module(files: ModelFiles, trusted_types: tuple[str, ...] = (), trusted: bool = False) -> Any:
    """The ``torch.nn.Module`` in ``files``: the pickle format with ``weights_only=True`` into allowlisted classes,
    or the pt2 format when its archive holds no pickle."""
    import torch

    conf = files.flavors["pytorch"] or {}
    data = files.inside(conf.get("model_data", "data"), "pytorch model_data")
    pth, pt2 = data / "model.pth", data / "model.pt2"
    if pth.is_file():
        return _load_pth(files, pth, trusted_types, trusted)
    if pt2.is_file():
        if not trusted:
            from mlflow.pytorch import _validate_pt2_archive_is_pickle_free

            try:
                _validate_pt2_archive_is_pickle_free(str(pt2))
            except Exception as exc:
                raise ModelRefusedError(f"{files.label}: refused before loading: {pt2.relative_to(files.root)} (pt2) holds a "
                                        f"pickle ({' '.join(str(exc).split())[:200]})", TRUST_FIX) from None
        return torch.export.load(str(pt2)).module()
    raise ModelRefusedError(f"{files.label}: its pytorch model_data holds neither model.pth nor model.pt2",
                            "log the model with mlflow.pytorch.log_model")


def _load_pth(files: ModelFiles, pth: Path, trusted_types: tuple[str, ...], trusted: bool) -> Any:
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(pth))
    except Exception as exc:
        raise ModelRefusedError(f"{files.label}: {pth.relative_to(files.root)} is not a readable PyTorch checkpoint "
                                f"({type(exc).__name__}: {str(exc)[:160]})", "log the model with mlflow.pytorch.log_model") from None
    classes, refused = [], []
    for name in names:
        cls = _network_class(name, trusted_types)
        (classes if cls is not None else refused).append(cls if cls is not None else name)
    if refused and not trusted:
        raise ModelRefusedError(f"{files.label}: refused before loading: {pth.relative_to(files.root)} names "
                                f"{', '.join(refused[:8])}, which are not torch.nn modules or classes of an allowlisted "
                                "package", "define the network's class in an installed package and list it under "
                                           f"security.trusted_types; or: {TRUST_FIX}")
    if refused:  # trusted, as MLflow loads it
        import mlflow.pytorch

        return mlflow.pytorch.load_model(str(files.root), map_location="cpu")
    with torch.serialization.safe_globals(classes):
        module = torch.load(str(pth), weights_only=True, map_location="cpu")
    if not isinstance(module, torch.nn.Module):
        raise ModelRefusedError(f"{files.label}: {pth.relative_to(files.root)} holds a {type(module).__name__}, not a network",
                                "log the network itself (an nn.Module) with mlflow.pytorch.log_model")
    return module


def _network_class(name: str, trusted_types: tuple[str, ...]) -> type | None:
    """The class ``name`` names, if it is a torch.nn module class (or one of its building blocks) defined in torch.nn,
    in an allowlisted package, or listed in ``trusted_types``; else None. Modules are imported only when allowed."""
    import torch

    from tasks.adapters.safe_pickle import canonical

    module, _, attr = name.rpartition(".")
    allowed_module = (module.startswith("torch.nn.") or module in NETWORK_MODULES or name in trusted_types)
    if not allowed_module:
        return None
    obj = canonical(module, attr)
    if not isinstance(obj, type):
        return None
    if name in trusted_types or issubclass(obj, torch.nn.Module):
        return obj
    return None
