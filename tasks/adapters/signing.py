"""A record a reviewer can verify: the audit's manifest signed with HMAC-SHA256, and the check of a stored run
against its manifest (``auditlens verify``).

The manifest lists everything the record claims (the verdicts, every metric value logged, every artifact's sha256
and size, the model and the run); the signature covers all of it, so a changed tag, metric or file shows as a
difference from the signed manifest, and a rewritten manifest shows as a signature that does not match.

The key comes from the environment (``AUDITLENS_SIGNING_KEY``, or ``AUDITLENS_SIGNING_KEY_FILE`` naming a file
that holds it, as Docker secrets do) and never leaves this module: records name it by a fingerprint (``key_id``,
an HMAC of a fixed label under the key: it identifies the key without revealing it, and differs from a plain
sha256 of the same secret used elsewhere). A key object's repr shows only that fingerprint and it refuses to be
pickled, so it cannot reach a log, a traceback's locals or a Prefect parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.adapters.errors import AuditlensError, ConfigError, TrackingServerError

KEY_ENV, KEY_FILE_ENV = "AUDITLENS_SIGNING_KEY", "AUDITLENS_SIGNING_KEY_FILE"
ALG = "HMAC-SHA256"
MIN_KEY_BYTES = 32
KEY_ID_LABEL = b"auditlens signing key id v1"
MESSAGE_PREFIX = b"auditlens manifest v1\n"  # what is signed is a manifest, not any other JSON under the same key
SIGNED_TAG = "audit.signed"
MANIFEST = "manifest.json"
NEW_KEY = "python -c 'import secrets; print(secrets.token_hex(32))'"
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # JSON has no such numbers
SQL_INFINITY = 1.7976931348623157e308  # MLflow's SQL store keeps an infinite metric as the largest double


class SigningKey:
    """The secret, its fingerprint and where it came from; shown and logged by its fingerprint only."""

    __slots__ = ("_secret", "key_id", "source")

    def __init__(self, secret: bytes, source: str) -> None:
        if len(secret) < MIN_KEY_BYTES:
            raise ConfigError(f"the signing key in {source} is {len(secret)} bytes long; it must be at least "
                              f"{MIN_KEY_BYTES} bytes", f"set {KEY_ENV} (or {KEY_FILE_ENV}) to a random key of 32 bytes "
                              f"or more, e.g. the output of: {NEW_KEY}")
        self._secret, self.source = secret, source
        self.key_id = hmac.new(secret, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r}, source={self.source!r})"

    def __reduce__(self):
        raise TypeError("a signing key is never pickled: each process reads it from its own environment")

    def digest(self, manifest: Mapping[str, Any]) -> str:
        return hmac.new(self._secret, MESSAGE_PREFIX + canonical(manifest), hashlib.sha256).hexdigest()

    def sign(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest with its signature (any earlier one replaced)."""
        return {**manifest, "signature": {"alg": ALG, "key_id": self.key_id, "value": self.digest(manifest)}}

    def matches(self, manifest: Mapping[str, Any]) -> bool:
        signature = manifest.get("signature")
        value = signature.get("value") if isinstance(signature, Mapping) else None
        return isinstance(value, str) and hmac.compare_digest(value.encode("ascii", "replace"), self.digest(manifest).encode())

    def without_key(self, text: object) -> str:
        """``text`` without the key, as bytes decode or as the text it was set as."""
        text = str(text)
        for form in {self._secret.decode("utf-8", "surrogateescape"), self._secret.decode("latin-1"), self._secret.hex()}:
            text = text.replace(form, "***")
        return text


def signing_key(environ: Mapping[str, str] | None = None) -> SigningKey | None:
    """The key from ``AUDITLENS_SIGNING_KEY`` or ``AUDITLENS_SIGNING_KEY_FILE``; None when neither is set."""
    environ = os.environ if environ is None else environ
    value, path = environ.get(KEY_ENV) or None, environ.get(KEY_FILE_ENV) or None
    if value is not None and path is not None:
        raise ConfigError(f"both {KEY_ENV} and {KEY_FILE_ENV} are set: it is not clear which key signs",
                          "unset one of them")
    if value is not None:
        return SigningKey(value.encode("utf-8", "surrogateescape"), KEY_ENV)
    if path is None:
        return None
    source = f"{KEY_FILE_ENV} ({path})"
    try:
        secret = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"the signing key file named by {source} cannot be read ({exc.strerror})",
                          f"point {KEY_FILE_ENV} at a readable file holding the key") from None
    return SigningKey(secret.rstrip(b"\r\n"), source)  # the newline an editor or `echo` adds is not part of it


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without its signature, keys sorted, no whitespace, ASCII only.
    The same for any key order and any indentation of the stored file."""
    body = {key: value for key, value in manifest.items() if key != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode("ascii")


def as_stored(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest as a reader will parse it back from its JSON file (tuples as lists, other objects as text):
    what is signed must be what is read."""
    return json.loads(json.dumps(manifest, default=str))


def metric_entry(value: float) -> float | str:
    """A metric as the manifest records it: the float logged, or the name of a value JSON cannot hold."""
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _metric_value(entry: Any) -> float | None:
    if isinstance(entry, str):
        return NON_FINITE.get(entry)
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return float(entry)
    return None


def _same_metric(recorded: float, stored: float) -> bool:
    if math.isnan(recorded) or math.isnan(stored):
        return math.isnan(recorded) and math.isnan(stored)
    if math.isinf(recorded):  # the SQL store clamps infinities to the largest double
        return stored == recorded or stored == math.copysign(SQL_INFINITY, recorded)
    return stored == recorded  # exact: the store keeps the double that was logged


def _short(digest: object) -> str:
    return f"{str(digest)[:12]}…"


# --- the check -------------------------------------------------------------------------------------------------------
@dataclass
class Verification:
    """What ``verify_run`` found: each difference as one line, notes that are not differences, and what was checked."""

    run_id: str
    differences: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    artifacts: int = 0
    metrics: int = 0
    tags: int = 0
    params: int = 0
    authenticated: bool = False

    @property
    def verified(self) -> bool:
        return not self.differences

    def summary(self) -> str:
        if self.differences:
            return f"NOT verified: {len(self.differences)} difference(s)"
        how = "" if self.authenticated else " (integrity only: nothing proves who wrote the manifest)"
        return (f"verified{how}: run {self.run_id}, {self.artifacts} artifacts, {self.metrics} metrics, "
                f"{self.tags} tags, {self.params} params")


def verify_run(client: Any, run_id: str, key: SigningKey | None, integrity_only: bool = False) -> Verification:
    """Check an audit's run against its manifest: the signature (with ``key``), every artifact's sha256 and size (and
    no file the manifest does not list), each result.json's verdict, the verdict and model tags and params on the
    run, every metric's value, and the audit state on the model version when the run audited a registered version.

    ``key`` None is allowed only with ``integrity_only``: the run is then checked against its manifest, which proves
    the record consistent but not who wrote it. With a key, an unsigned manifest is a difference (a signature can be
    stripped); with ``integrity_only`` it is a note."""
    if key is None and not integrity_only:
        raise ConfigError(f"cannot check who wrote the record: no signing key ({KEY_ENV} and {KEY_FILE_ENV} are unset)",
                          f"export {KEY_ENV} (or {KEY_FILE_ENV}) with the key the audits are signed with, or pass "
                          "--integrity-only to check the run against its manifest without proving who wrote it")
    run = _read(lambda: client.get_run(run_id), f"run {run_id}")
    found = Verification(run_id)
    top = [entry.path for entry in _read(lambda: client.list_artifacts(run_id), f"the artifacts of run {run_id}")]
    with tempfile.TemporaryDirectory(prefix="auditlens-verify-") as tmp:
        root = Path(_read(lambda: client.download_artifacts(run_id, "", tmp), f"the artifacts of run {run_id}")) if top else Path(tmp)
        stored = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        manifest = _manifest(stored.pop(MANIFEST, None), run, found)
        if manifest is None:
            return found
        said = _check_signature(manifest, key, integrity_only, run.data.tags, found)
        _check_artifacts(manifest, stored, found)
        _check_results(manifest, stored, said, found)
    _check_run(manifest, run, said, found)
    _check_metrics(manifest, run.data.metrics, said, found)
    _check_version(client, manifest, run_id, said, found)
    return found


def _read(call, what: str):
    """``call()``, with a run that is not there and a server that stopped answering as errors a user can act on."""
    from mlflow.exceptions import MlflowException

    from tasks.adapters.tracking import is_outage

    try:
        return call()
    except Exception as exc:
        if isinstance(exc, MlflowException) and exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise AuditlensError(f"{what} does not exist in this tracking store",
                                 "check the run id (the audit's run, shown by `auditlens audit` and in the MLflow UI) "
                                 "and --tracking-uri") from None
        if not is_outage(exc):
            raise
        raise TrackingServerError(f"the tracking server stopped answering while reading {what} ({type(exc).__name__})",
                                  "bring the server back and run verify again") from None


def _manifest(path: Path | None, run: Any, found: Verification) -> dict | None:
    from tasks.adapters.version_state import AUDIT_KEY

    if path is None:
        if AUDIT_KEY not in run.data.tags:
            raise AuditlensError(f"run {run.info.run_id} is not an auditlens audit (no {AUDIT_KEY} tag, no {MANIFEST})",
                                 "pass the run id of an audit: the run named 'audit <model> v<version>'")
        found.differences.append(f"missing {MANIFEST}: the run ({run.info.status}, audit.status "
                                 f"{run.data.tags.get('audit.status', 'absent')}) holds no record to verify")
        return None
    try:
        manifest = json.loads(path.read_bytes())
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        found.differences.append(f"forged manifest: {MANIFEST} is not a JSON object")
        return None
    return manifest


def _check_signature(manifest: dict, key: SigningKey | None, integrity_only: bool, tags: Mapping[str, str],
                     found: Verification) -> str:
    """Check the signature; returns how later lines name the manifest ('signed manifest' once its signature holds)."""
    signature = manifest.get("signature")
    if signature is None:
        line = (f"unsigned manifest: it carries no signature (the run's tag {SIGNED_TAG} is "
                f"{tags.get(SIGNED_TAG, 'absent')}): the audit ran without a signing key, or the signature was removed")
        (found.notes if integrity_only else found.differences).append(line)
        return "manifest"
    if key is None:
        found.notes.append(f"signature not checked: no signing key ({KEY_ENV}) to check key id "
                           f"{signature.get('key_id') if isinstance(signature, Mapping) else '?'} against")
        return "manifest"
    if not isinstance(signature, Mapping) or signature.get("alg") != ALG:
        alg = signature.get("alg") if isinstance(signature, Mapping) else type(signature).__name__
        found.differences.append(f"forged manifest: its signature is not {ALG} ({alg!r})")
        return "manifest"
    if signature.get("key_id") != key.key_id:
        found.differences.append(f"forged manifest: signed with key id {signature.get('key_id')}, not with the key in "
                                 f"{key.source} (key id {key.key_id})")
        return "manifest"
    if not key.matches(manifest):
        found.differences.append(f"forged manifest: the signature does not match its content (key id {key.key_id})")
        return "manifest"
    found.authenticated = True
    return "signed manifest"


def _check_artifacts(manifest: dict, stored: dict[str, Path], found: Verification) -> None:
    listed = manifest.get("artifacts") if isinstance(manifest.get("artifacts"), Mapping) else {}
    for name in sorted(set(listed) | set(stored)):
        if name not in stored:
            found.differences.append(f"missing artifact {name}: in the manifest, not in the artifact store")
            continue
        if name not in listed:
            found.differences.append(f"extra artifact {name}: in the artifact store, not in the manifest")
            continue
        data = stored[name].read_bytes()
        entry = listed[name] if isinstance(listed[name], Mapping) else {}
        digest = hashlib.sha256(data).hexdigest()
        if entry.get("sha256") != digest:
            found.differences.append(f"changed artifact {name}: sha256 {_short(entry.get('sha256'))} in the manifest, "
                                     f"{_short(digest)} stored")
        elif entry.get("bytes") != len(data):
            found.differences.append(f"changed artifact {name}: {entry.get('bytes')} bytes in the manifest, {len(data)} stored")
        found.artifacts += 1


def _audits(manifest: dict) -> list[dict]:
    return [a for a in manifest.get("audits") or [] if isinstance(a, Mapping) and isinstance(a.get("id"), str)]


def _check_results(manifest: dict, stored: dict[str, Path], said: str, found: Verification) -> None:
    for audit in _audits(manifest):
        path = stored.get(f"{audit['id']}/result.json")
        if path is None:
            continue  # reported as a missing artifact
        try:
            verdict = json.loads(path.read_bytes()).get("verdict")
        except (ValueError, AttributeError):
            verdict = "(not a JSON object)"
        if verdict != audit.get("verdict"):
            found.differences.append(f"changed verdict in {audit['id']}/result.json: {audit.get('verdict')} in the "
                                     f"{said}, {verdict} in the file")


def _compare(kind: str, where: str, expected: Mapping[str, str], actual: Mapping[str, str], said: str,
             found: Verification) -> None:
    for name, value in expected.items():
        if name not in actual:
            found.differences.append(f"missing {kind} {name}: {value} in the {said}, absent {where}")
        elif actual[name] != value:
            found.differences.append(f"changed {kind} {name}: {value} in the {said}, {actual[name]} {where}")


def _check_run(manifest: dict, run: Any, said: str, found: Verification) -> None:
    from tasks.adapters.version_state import STATUS

    run_id = run.info.run_id
    if manifest.get("run_id") != run_id:
        found.differences.append(f"changed manifest: the {said} is the record of run {manifest.get('run_id')}, not of run {run_id}")
    if manifest.get("complete") is not True:
        found.differences.append(f"incomplete manifest: the {said} does not say the record is complete")
    model = manifest.get("model") if isinstance(manifest.get("model"), Mapping) else {}
    audits = _audits(manifest)
    tags = {
        "audit.verdict": str(manifest.get("verdict")),
        **{f"audit.{a['id']}.verdict": str(a.get("verdict")) for a in audits},
        STATUS: "done",
        SIGNED_TAG: "false" if manifest.get("signature") is None else "true",
        "auditlens.model_uri": str(model.get("uri")),
        "auditlens.model_name": model.get("name") or "",
        "auditlens.model_version": str(model.get("version") or ""),
    }
    if "signature" not in manifest:  # written before auditlens signed its records: no such tag then
        del tags[SIGNED_TAG]
    _compare("tag", "on the run", tags, run.data.tags, said, found)
    ids = {a["id"] for a in audits}
    for name, value in sorted(run.data.tags.items()):
        audit = name.removeprefix("audit.").removesuffix(".verdict")
        if name.startswith("audit.") and name.endswith(".verdict") and name != "audit.verdict" and audit not in ids:
            found.differences.append(f"extra tag {name}: {value} on the run, no audit {audit} in the {said}")
    found.tags += len(tags)
    config = manifest.get("config") if isinstance(manifest.get("config"), Mapping) else {}
    params = {"model.uri": str(model.get("uri")), "model.name": model.get("name") or "",
              "model.version": str(model.get("version") or ""), "config.hash": str(config.get("hash"))}
    if "signature" in manifest:  # the key's fingerprint, logged when the run opened (immutable, unlike a tag)
        signature = manifest["signature"]
        params["signing.key_id"] = str(signature.get("key_id")) if isinstance(signature, Mapping) else "unsigned"
    _compare("param", "on the run", params, run.data.params, said, found)
    found.params += len(params)


def _check_metrics(manifest: dict, logged: Mapping[str, float], said: str, found: Verification) -> None:
    recorded = manifest.get("metrics")
    if not isinstance(recorded, Mapping):
        found.notes.append(f"metrics not checked: the {said} lists none (written before auditlens recorded metric values "
                           "in its manifest)")
        return
    for name in sorted(set(recorded) | set(logged)):
        if name not in logged:
            found.differences.append(f"missing metric {name}: {recorded[name]} in the {said}, absent on the run")
        elif name not in recorded:
            found.differences.append(f"extra metric {name}: {logged[name]!r} on the run, not in the {said}")
        else:
            value = _metric_value(recorded[name])
            if value is None or not _same_metric(value, float(logged[name])):
                found.differences.append(f"changed metric {name}: {recorded[name]!r} in the {said}, {logged[name]!r} on the run")
            found.metrics += 1


def _check_version(client: Any, manifest: dict, run_id: str, said: str, found: Verification) -> None:
    from tasks.adapters.version_state import PREVIOUS, STATUS

    model = manifest.get("model") if isinstance(manifest.get("model"), Mapping) else {}
    name, version = model.get("name"), model.get("version")
    if not (name and version):
        return  # a runs:/ model: no version holds audit state
    try:
        tags = dict(client.get_model_version(name, str(version)).tags or {})
    except Exception:  # noqa: BLE001 (deleted since, or a store without a registry: the run's record stands)
        found.notes.append(f"model version {name} v{version} is not in the registry: its audit tags not checked")
        return
    label = f"on {name} v{version}"
    if tags.get("audit.run_id") == run_id:
        expected = {"audit.verdict": str(manifest.get("verdict"))}
        if tags.get(STATUS) not in ("done", "queued"):  # queued: the next audit waits, this one's outcome stays
            found.differences.append(f"changed version tag {STATUS} {label}: done for the audit of this run, "
                                     f"{tags.get(STATUS, 'absent')} on the version")
    elif tags.get(PREVIOUS["audit.run_id"]) == run_id:
        expected = {PREVIOUS["audit.verdict"]: str(manifest.get("verdict"))}
    else:
        found.notes.append(f"{name} v{version} now records another audit (run {tags.get('audit.run_id', 'none')}): "
                           "its audit tags are not this run's")
        return
    _compare("version tag", label, expected, tags, said, found)
    found.tags += len(expected)
