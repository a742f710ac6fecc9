"""`auditlens verify` on real audit runs in a real MLflow store (SQLite, artifacts on disk; no server is started): an
untouched run is verified; a changed artifact, a changed tag (on the run and on the model version), a changed metric,
a missing and an extra artifact, a manifest re-signed with another key, one edited without re-signing and one whose
signature was stripped are each reported as exactly what differs. The signing key appears in no tag, param, metric,
artifact, Prefect log or parameter, or output of the command.

One audit runs through the audit flow itself (a Prefect flow run, with the model in its own process). The others are
recorded by the audit's own writers on a small set of results (``open_audit_run`` opens the run, ``MlflowSink``
records and closes it, about a tenth of a second each), so that each test tampers with a run of its own. The command
runs as a user runs it: a process of its own."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pandas as pd
import pytest

from audits.core.result import Artifact, AuditResult, Verdict
from tasks import audit_tasks
from tasks.adapters.errors import AuditlensError, ConfigError
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.models import resolve_model
from tasks.adapters.settings import load_settings
from tasks.adapters.signing import KEY_ENV, KEY_FILE_ENV, SigningKey, verify_run
from tasks.adapters.tracking import make_client
from tests.helpers import build_world, write_config
from tests.integration.servers import free_port

KEY = "verify-test-signing-key/" + "5e3f0a9c" * 4  # 56 bytes
FORGER = "a-forger's-own-key-of-enough-length-1234"
AUDITLENS = Path(sys.executable).parent / "auditlens"
FAILING_PLAN = [{"audit": "performance", "thresholds": [{"metric": "performance.current.accuracy", "min": 0.99}]},
                {"audit": "data_quality"}]  # fmt: skip
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000")  # a PNG's first bytes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:  # the module's audits are signed with KEY, read from the environment
        env.setenv(KEY_ENV, KEY)
        env.delenv(KEY_FILE_ENV, raising=False)
        world = build_world(tmp_path_factory.mktemp("verify-world"))
        write_config(world.folder, world.tracking_uri, name="fails.yaml", audits=FAILING_PLAN)
        yield world


@pytest.fixture()
def client(world):
    return make_client(world.tracking_uri)


def results() -> list[AuditResult]:
    """What two audits of e2e-model v1 report: metrics (a NaN, and an infinity, which the SQL store clamps), a table,
    a figure and a JSON file."""
    return [
        AuditResult("performance", Verdict.FAIL, "performance.current.accuracy 0.77 < 0.99",
                    metrics={"performance.current.accuracy": 0.77, "performance.current.roc_auc": 0.8412698412698413,
                             "performance.current.log_loss": math.inf},
                    artifacts=(Artifact.table("metrics", pd.DataFrame({"metric": ["accuracy"], "value": [0.77]})),
                               Artifact("confusion_matrix.png", "figure", PNG))),
        AuditResult("data_quality", Verdict.WARN, "one column drifted",
                    metrics={"data_quality.user.success_rate": math.nan, "data_quality.rows": 200.0},
                    artifacts=(Artifact("columns.json", "json", {"x1": {"missing": 0}}),)),
    ]  # fmt: skip


def audit(world) -> str:
    """A fresh audit run of e2e-model v1 (FAIL), recorded and closed by the audit's writers; its run id."""
    loaded = load_settings(world.folder / "fails.yaml")
    ref = resolve_model(f"models:/{world.model_name}/1", make_client(world.tracking_uri))
    run = audit_tasks.open_audit_run.fn(ref, loaded, world.tracking_uri, audit_key=f"test:{uuid.uuid4().hex}", reason="test")
    found = results()
    manifest = {"auditlens_manifest": 1, "run_id": run.run_id,
                "model": {"uri": ref.uri, "load_uri": ref.load_uri, "name": ref.name, "version": ref.version},
                "config": {"path": str(loaded.path), "hash": loaded.config_hash}, "verdict": "FAIL",
                "audits": [{"id": r.audit, "verdict": r.verdict.value, "reason": r.reason} for r in found]}  # fmt: skip
    sink = MlflowSink(world.tracking_uri)
    sink.record(run, found, "<!doctype html><title>audit</title><p>FAIL</p>", manifest)
    sink.close(run, Verdict.FAIL, "FAIL")
    return run.run_id


def check(client, run_id: str, key: str | None = KEY, integrity_only: bool = False):
    return verify_run(client, run_id, SigningKey(key.encode(), KEY_ENV) if key else None, integrity_only)


def stored(client, run_id: str, name: str = "") -> Path:
    """A file (or the folder) of the run in the artifact store itself: what a user with access to the store edits."""
    return Path(url2pathname(urlparse(client.get_run(run_id).info.artifact_uri).path)) / name


def manifest_of(client, run_id: str) -> dict:
    return json.loads(stored(client, run_id, "manifest.json").read_text())


def invoke(world, *args: str, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (KEY_ENV, KEY_FILE_ENV, "MLFLOW_TRACKING_URI")}
    if key is not None:
        env[KEY_ENV] = key
    return subprocess.run([str(AUDITLENS), "verify", *args], env={**env, "COLUMNS": "200"}, cwd=world.folder,
                          capture_output=True, text=True, timeout=120)


def test_an_untouched_run_is_verified(world, client):
    run_id = audit(world)
    run = client.get_run(run_id)
    manifest = manifest_of(client, run_id)
    assert run.data.tags["audit.signed"] == "true" and run.data.params["signing.key_id"] == SigningKey(KEY.encode(), "").key_id
    assert manifest["signature"]["key_id"] == run.data.params["signing.key_id"]
    # every value logged, by value: a NaN and an infinity (which JSON cannot hold) by their names
    assert manifest["metrics"] == {"performance.current.accuracy": 0.77, "performance.current.roc_auc": 0.8412698412698413,
                                   "performance.current.log_loss": "Infinity", "data_quality.user.success_rate": "NaN",
                                   "data_quality.rows": 200.0,
                                   "audit.performance.cached": 0.0, "audit.data_quality.cached": 0.0}  # fmt: skip
    assert run.data.metrics["performance.current.log_loss"] == 1.7976931348623157e308  # how the SQL store keeps it

    found = check(client, run_id)
    assert (found.differences, found.notes, found.authenticated) == ([], [], True)
    assert (found.artifacts, found.metrics, found.tags, found.params) == (len(manifest["artifacts"]), 7, 9, 5)
    assert found.summary() == f"verified: run {run_id}, {found.artifacts} artifacts, 7 metrics, 9 tags, 5 params"


def test_a_changed_artifact_is_named_with_both_hashes(world, client):
    run_id = audit(world)
    manifest = manifest_of(client, run_id)
    figure = stored(client, run_id, "performance/confusion_matrix.png")
    figure.write_bytes(figure.read_bytes()[:-1] + bytes([figure.read_bytes()[-1] ^ 1]))  # one bit, same size
    result = stored(client, run_id, "performance/result.json")
    result.write_text(result.read_text().replace('"verdict": "FAIL"', '"verdict": "PASS"'))

    def hashes(path: Path) -> str:
        name = path.relative_to(stored(client, run_id)).as_posix()
        return (f"changed artifact {name}: sha256 {manifest['artifacts'][name]['sha256'][:12]}… in the manifest, "
                f"{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}… stored")

    assert check(client, run_id).differences == [
        hashes(figure), hashes(result), "changed verdict in performance/result.json: FAIL in the signed manifest, PASS in the file"]


def test_changed_verdict_tags_on_the_run_and_the_version_are_reported(world, client):
    run_id = audit(world)
    client.set_tag(run_id, "audit.verdict", "PASS")
    client.set_tag(run_id, "audit.performance.verdict", "PASS")
    client.set_model_version_tag(world.model_name, "1", "audit.verdict", "PASS")
    assert (first := check(client, run_id).differences) == [
        "changed tag audit.verdict: FAIL in the signed manifest, PASS on the run",
        "changed tag audit.performance.verdict: FAIL in the signed manifest, PASS on the run",
        f"changed version tag audit.verdict: FAIL in the signed manifest, PASS on {world.model_name} v1",
    ]
    quality = client.get_run(run_id).data.tags["audit.data_quality.verdict"]
    client.delete_tag(run_id, "audit.data_quality.verdict")
    client.set_tag(run_id, "audit.fairness.verdict", "PASS")
    assert set(check(client, run_id).differences) - set(first) == {
        f"missing tag audit.data_quality.verdict: {quality} in the signed manifest, absent on the run",
        "extra tag audit.fairness.verdict: PASS on the run, no audit fairness in the signed manifest",
    }


def test_a_changed_metric_is_reported_to_the_last_bit(world, client):
    run_id = audit(world)
    accuracy = client.get_run(run_id).data.metrics["performance.current.accuracy"]
    nudged = math.nextafter(accuracy, 1.0)  # the next double: an exact comparison, not approx
    client.log_metric(run_id, "performance.current.accuracy", nudged)  # a later timestamp: the value the UI shows
    client.log_metric(run_id, "performance.current.bonus", 1.0)
    assert check(client, run_id).differences == [
        f"changed metric performance.current.accuracy: {accuracy!r} in the signed manifest, {nudged!r} on the run",
        "extra metric performance.current.bonus: 1.0 on the run, not in the signed manifest",
    ]


def test_a_forged_manifest_is_told_from_a_signed_one(world, client):
    # a forger with write access to MLflow but not the key: the verdict made PASS everywhere it shows
    run_id = audit(world)
    forged = manifest_of(client, run_id)
    forged["verdict"] = "PASS"
    forged["audits"] = [{**a, "verdict": "PASS"} for a in forged["audits"]]
    client.log_dict(run_id, SigningKey(FORGER.encode(), "forger").sign(forged), "manifest.json")
    for tag in ("audit.verdict", "audit.performance.verdict"):
        client.set_tag(run_id, tag, "PASS")
    client.set_model_version_tag(world.model_name, "1", "audit.verdict", "PASS")

    ours, theirs = SigningKey(KEY.encode(), KEY_ENV).key_id, SigningKey(FORGER.encode(), "").key_id
    forged_line = f"forged manifest: signed with key id {theirs}, not with the key in {KEY_ENV} (key id {ours})"
    differences = check(client, run_id).differences
    assert differences[0] == forged_line
    # the files it left alone still say FAIL, and the param logged when the run opened names our key
    assert "changed verdict in performance/result.json: PASS in the manifest, FAIL in the file" in differences
    assert f"changed param signing.key_id: {theirs} in the manifest, {ours} on the run" in differences


def test_an_edited_or_stripped_manifest_is_reported(world, client):
    run_id = audit(world)
    original = manifest_of(client, run_id)
    client.log_dict(run_id, {**original, "verdict": "PASS"}, "manifest.json")  # signature kept, content changed
    key_id = SigningKey(KEY.encode(), KEY_ENV).key_id
    assert check(client, run_id).differences == [
        f"forged manifest: the signature does not match its content (key id {key_id})",
        "changed tag audit.verdict: PASS in the manifest, FAIL on the run",
        f"changed version tag audit.verdict: PASS in the manifest, FAIL on {world.model_name} v1",
    ]
    client.log_dict(run_id, {**original, "signature": None}, "manifest.json")  # signature stripped
    assert check(client, run_id).differences == [
        "unsigned manifest: it carries no signature (the run's tag audit.signed is true): the audit ran without a "
        "signing key, or the signature was removed",
        "changed tag audit.signed: false in the manifest, true on the run",
        f"changed param signing.key_id: unsigned in the manifest, {key_id} on the run",
    ]


def test_missing_and_extra_artifacts_are_listed(world, client):
    run_id = audit(world)
    stored(client, run_id, "data_quality/columns.json").unlink()
    client.log_text(run_id, "not part of the audit", "notes/extra.txt")
    assert check(client, run_id).differences == [
        "missing artifact data_quality/columns.json: in the manifest, not in the artifact store",
        "extra artifact notes/extra.txt: in the artifact store, not in the manifest",
    ]
    stored(client, run_id, "manifest.json").unlink()
    assert check(client, run_id).differences == [
        "missing manifest.json: the run (FINISHED, audit.status done) holds no record to verify"]


def test_an_audit_without_a_key_is_recorded_unsigned(world, client, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    run_id = audit(world)
    run = client.get_run(run_id)
    assert run.data.tags["audit.signed"] == "false" and run.data.params["signing.key_id"] == "unsigned"
    assert manifest_of(client, run_id)["signature"] is None
    integrity = check(client, run_id, key=None, integrity_only=True)
    assert integrity.verified and not integrity.authenticated and integrity.notes[0].startswith("unsigned manifest")
    assert integrity.summary().startswith("verified (integrity only: nothing proves who wrote the manifest): run ")
    assert [line.partition(":")[0] for line in check(client, run_id).differences] == ["unsigned manifest"]


def test_a_key_that_cannot_sign_opens_no_run(world, client, monkeypatch):
    def audit_runs() -> int:
        experiment = client.get_experiment_by_name(f"auditlens/{world.model_name}")
        return len(client.search_runs([experiment.experiment_id])) if experiment else 0

    monkeypatch.setenv(KEY_ENV, "short")
    before = audit_runs()
    with pytest.raises(ConfigError, match=f"{KEY_ENV} is 5 bytes long"):
        audit(world)
    assert audit_runs() == before


def test_what_cannot_be_checked_is_one_error_and_exit_2(world, client):
    run_id = audit(world)
    training = client.get_model_version(world.model_name, "1").run_id
    down = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"  # credentials in the URI are never printed either
    cases = {
        "no run": (("0123456789abcdef0123456789abcdef", "--tracking-uri", world.tracking_uri), KEY),
        "server down": ((run_id, "--tracking-uri", down), KEY),
        "no store": ((run_id, "--tracking-uri", f"sqlite:///{world.folder / 'elsewhere.db'}"), KEY),
    }
    with ThreadPoolExecutor(len(cases)) as pool:
        outcomes = dict(zip(cases, pool.map(lambda case: invoke(world, *case[0], key=case[1]), cases.values())))
    expected = {
        "no run": "error: run 0123456789abcdef0123456789abcdef does not exist in this tracking store",
        "server down": f"error: MLflow tracking server {down.replace('alice:s3cret-pw@', '***@')} is not reachable",
        "no store": f"error: there is no SQLite tracking store at {world.folder / 'elsewhere.db'}",
    }
    assert not (world.folder / "elsewhere.db").exists()  # verify reads: it never creates a store
    for case, completed in outcomes.items():
        assert completed.returncode == 2, (case, completed.stdout, completed.stderr)
        assert completed.stdout == "" and completed.stderr.startswith(expected[case]), (case, completed.stderr)
        assert "fix:" in completed.stderr and "Traceback" not in completed.stderr
        assert [secret for secret in (KEY, "s3cret-pw") if secret in completed.stderr] == []
    with pytest.raises(ConfigError, match=f"cannot check who wrote the record: no signing key [(]{KEY_ENV} and "
                       f"{KEY_FILE_ENV} are unset[)]") as refused:
        check(client, run_id, key=None)
    assert "--integrity-only" in refused.value.fix and refused.value.exit_code == 2
    with pytest.raises(AuditlensError, match=f"run {training} is not an auditlens audit") as refused:
        check(client, training)  # the model's training run: no manifest, no audit key
    assert refused.value.exit_code == 2


@pytest.mark.usefixtures("prefect_harness")
def test_an_audit_by_the_flow_is_verified_and_the_key_is_never_recorded_or_printed(world, client, caplog):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    from flows.audit_model import audit_model

    caplog.set_level(logging.DEBUG)
    summary = audit_model(model_uri=f"models:/{world.model_name}/1", config_path=str(world.folder / "fails.yaml"),
                          tracking_uri=world.tracking_uri)
    run_id = summary["run_id"]
    verified = invoke(world, run_id, "--tracking-uri", world.tracking_uri)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith(f"verified: run {run_id}, ") and verified.stderr == ""
    client.set_tag(run_id, "audit.verdict", "PASS")  # so that verify prints a difference too
    tampered = invoke(world, run_id, "--tracking-uri", world.tracking_uri)
    assert tampered.returncode == 1 and tampered.stdout.splitlines() == [
        f"changed tag audit.verdict: {summary['verdict']} in the signed manifest, PASS on the run", "NOT verified: 1 difference(s)"]

    forms = {KEY, KEY.encode().hex(), KEY.encode().hex().upper()}
    run = client.get_run(run_id)
    flow_run_id = run.data.tags["auditlens.audit_key"].removeprefix("prefect:")
    with get_client(sync_client=True) as prefect:
        logs = prefect.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run_id]}))
        parameters = prefect.read_flow_run(flow_run_id).parameters
    assert logs  # the Prefect log of this audit is there to search
    version = client.get_model_version(world.model_name, "1")
    texts = [*run.data.params.items(), *run.data.tags.items(), *run.data.metrics, *version.tags.items(), caplog.text,
             *(entry.message for entry in logs), json.dumps(parameters), verified.stdout, tampered.stdout, tampered.stderr]
    assert [t for t in texts for form in forms if form in str(t)] == []
    with tempfile.TemporaryDirectory() as tmp:
        files = [p for p in Path(client.download_artifacts(run_id, "", tmp)).rglob("*") if p.is_file()]
        assert len(files) > 5 and [p for p in files for form in forms if form.encode() in p.read_bytes()] == []
    database = Path(world.tracking_uri.removeprefix("sqlite:///")).read_bytes()
    assert [form for form in forms if form.encode() in database] == []  # nowhere in the store
