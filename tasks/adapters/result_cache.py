"""Results reused across audits, keyed by content: auditing the same model on the same data again recomputes nothing
that did not change.

An audit's result is a function of the model's bytes (and its baseline's), the data's bytes, the settings that shape
the audit's inputs (seed, sampling, features, segments, engine, security), the audit's own entry in the plan (its
configuration, thresholds and sample size) and the code that computes it (every source file of auditlens and the
version of every installed package). The key is a SHA-256 over all of them, so a change to any one is a new key and a
recomputation; nothing is matched by name, date or path alone.

Entries are written by the auditor only (the model's process cannot write outside its own folder), as JSON (a result in
the form it crosses from the model's process, judged again when it is read), one file per key, written atomically.
A result that is an ERROR is never kept (a timeout or a crash may not recur). What the record needs of the inputs
(fingerprints, params, the datasets' schemas) is kept under the inputs' key, so a rerun with every audit cached neither
starts the model's process nor reads the data beyond hashing its files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import time
from functools import cache
from importlib.metadata import distributions
from pathlib import Path
from typing import Any

from audits.core.plan import PlannedAudit
from audits.core.result import AuditResult, Verdict

FORMAT = 1  # of the entries; part of every key
CACHE_DIR_ENV = "AUDITLENS_CACHE_DIR"
ROOT = Path(__file__).resolve().parents[2]
SOURCE_FOLDERS = ("audits", "tasks", "flows", "auditlens")


def cache_folder(configured: str | None = None) -> Path:
    """``cache.folder`` of the config, else $AUDITLENS_CACHE_DIR, else <state folder>/cache."""
    from tasks.adapters.state import state_dir

    chosen = configured or os.environ.get(CACHE_DIR_ENV)
    return Path(chosen).expanduser() if chosen else state_dir() / "cache"


def _sha256() -> Any:
    return hashlib.sha256(f"auditlens-cache-{FORMAT}".encode())


@cache
def code_digest() -> str:
    """Every .py file of auditlens (path and bytes) and every installed distribution's name and version."""
    digest = _sha256()
    for folder in SOURCE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\n".join(installed_distributions()).encode())
    return digest.hexdigest()


def installed_distributions() -> list[str]:
    """Every installed distribution as ``name-version``, lower case: from its ``.dist-info`` folder's name, which
    says both (the packaging standard), else from its metadata (an ``.egg-info`` may name no version). Parsing every
    distribution's metadata took 0.15 to 0.4 s of each command."""
    found = set()
    for dist in distributions():
        folder = Path(str(getattr(dist, "_path", ""))).name
        if folder.endswith(".dist-info") and "-" in folder:
            found.add(folder.removesuffix(".dist-info").lower())
        elif dist.metadata["Name"]:
            found.add(f"{dist.metadata['Name']}-{dist.version}".lower())
    return sorted(found)


def files_digest(paths: list[Path], root: Path | None = None) -> str:
    """The names (relative to ``root``) and bytes of ``paths``, in their order."""
    digest = _sha256()
    for path in paths:
        name = path.relative_to(root).as_posix() if root is not None else str(path)
        digest.update(name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


# files MLflow itself writes into a model's folder after it was logged: loading models:/NAME/VERSION from a local store
# (mlflow.models.evaluate does) adds registered_model_meta, which names the model and version (both in the key already)
MLFLOW_BOOKKEEPING = frozenset({"registered_model_meta"})


def folder_digest(folder: Path) -> str:
    """The names and bytes of a model's files, MLflow's own bookkeeping left out."""
    return files_digest(sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in MLFLOW_BOOKKEEPING), folder)


def data_digest(loaded: Any, role: str) -> str:
    """The bytes of every file the ``role`` side of the data reads (one file, a folder of Parquet files or a glob)."""
    from tasks.adapters.sources import _files

    path = loaded.data_path(role)
    return files_digest([Path(f) for f in _files(role, str(path), path.parent)])


def _hash(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def planned_entry(planned: PlannedAudit) -> dict[str, Any]:
    """What of a plan entry shapes its result: the audit, its configuration, thresholds and sample size."""
    return {"id": planned.id, "audit": planned.audit.name, "config": planned.audit.config.model_dump(mode="json"),
            "thresholds": [t.model_dump(mode="json") for t in planned.thresholds], "sample_rows": planned.sample_rows}


@dataclasses.dataclass(frozen=True)
class CacheKeys:
    inputs: str  # everything the plan's audits share
    audits: dict[str, str]  # audit id -> the key of its result


def cache_keys(ref: Any, loaded: Any, model_dir: str, baseline: tuple[Any, str] | None, baseline_note: str) -> CacheKeys:
    """The keys of this audit's inputs and of each planned audit's result. Raises OSError (or the data's own error)
    when a file cannot be read; the caller then computes without the cache."""
    settings = loaded.settings
    shaping = settings.model_dump(mode="json", exclude={"audits", "mlflow", "limits", "cache"})
    inputs = _hash(
        code_digest(),
        {"model": [ref.load_uri, ref.label, folder_digest(Path(model_dir))]},
        {"baseline": [baseline[0].load_uri, baseline[0].label, folder_digest(Path(baseline[1]))] if baseline else baseline_note},
        {"data": {role: [str(loaded.data_path(role)), data_digest(loaded, role)] for role in loaded.data_roles}},
        {"settings": shaping},
    )
    return CacheKeys(inputs, {p.id: _hash(inputs, planned_entry(p)) for p in loaded.plan})


class ResultCache:
    """One folder of entries: ``inputs/<key[:2]>/<key>.json``, ``results/<key[:2]>/<key>.json`` and the audits' last
    timings, ``timings/durations.json``. With a signing key
    (``AUDITLENS_SIGNING_KEY``), every entry is signed with it and an entry whose signature does not verify is not
    served: whoever can write the folder but does not hold the key (a model's process on a kernel without Landlock,
    which finds the folder in the home it may read) cannot plant a result."""

    def __init__(self, folder: Path, key: Any = None) -> None:
        self.folder = folder
        self.key = key  # tasks.adapters.signing.SigningKey, or None

    def _path(self, kind: str, key: str) -> Path:
        return self.folder / kind / (key[:2] if kind != "timings" else "") / f"{key}.json"

    def _read(self, kind: str, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads(self._path(kind, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        if self.key is not None and not self.key.matches(entry):
            return None
        return entry

    def _write(self, kind: str, key: str, entry: dict[str, Any]) -> None:
        path = self._path(kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", suffix=".json", delete=False,
                                             encoding="utf-8") as stream:
                json.dump(self._signed({**entry, "key": key}), stream, allow_nan=True)
            os.replace(stream.name, path)
        except OSError:  # a full disk or a read-only folder costs the reuse, never the audit
            try:
                os.unlink(stream.name)
            except (OSError, UnboundLocalError):
                pass

    def _signed(self, entry: dict[str, Any]) -> dict[str, Any]:
        from tasks.adapters.signing import as_stored

        return self.key.sign(as_stored(entry)) if self.key is not None else entry

    def inputs(self, key: str) -> dict[str, Any] | None:
        entry = self._read("inputs", key)
        return entry["value"] if entry else None

    def put_inputs(self, key: str, value: dict[str, Any]) -> None:
        self._write("inputs", key, {"value": value})

    def result(self, key: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(the result as it crossed from the model's process, where it came from: run id and time)."""
        entry = self._read("results", key)
        return (entry["result"], entry["origin"]) if entry else None

    def durations(self) -> dict[str, float]:
        """Seconds each audit (by name) took when it last ran on this machine: the scheduler starts the longest first."""
        entry = self._read("timings", "durations")
        return {str(k): float(v) for k, v in entry["value"].items()} if entry else {}

    def put_durations(self, measured: dict[str, float]) -> None:
        if measured:
            self._write("timings", "durations", {"value": {**self.durations(), **measured}})

    def put_result(self, key: str, encoded: dict[str, Any], run_id: str) -> None:
        if encoded.get("verdict") == Verdict.ERROR.value:
            return
        self._write("results", key, {"result": encoded, "origin": {"run_id": run_id, "at": time.time()}})


def reused(result: AuditResult, origin: dict[str, Any]) -> AuditResult:
    """A cached result, saying where it was computed."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(float(origin.get("at", 0))))
    return result.with_(info={**result.info, "cached": f"reused from MLflow run {origin.get('run_id')} ({when}): same model, "
                                                     "data, configuration, seed and code"})
