"""The MLflow server goes away while an audit is computing, against a real ``mlflow server`` on 127.0.0.1 that
this module stops and starts again on the same port and store (``tests/integration/servers.py``).

The outage begins at a seam: the first audit of the plan to start computing stops the server (after checking the
audit's run exists and is RUNNING), so every write of the record meets the outage. Within
``mlflow.outage_timeout_s`` the audit completes; beyond it the flow ends with a TrackingServerError that names the
server and the fix, and the watcher settles the version once the server is back."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

from flows.audit_model import audit_model
from tasks.adapters.deployments import load_deployments
from tasks.adapters.errors import TrackingServerError
from tasks.adapters.demo import register_sklearn_model
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.model_worker import ModelWorker
from tasks.adapters.tracking import make_client
from tasks.adapters.version_state import VersionStates
from tests.conftest import make_pipeline_model, make_tabular
from tests.helpers import build_world, runs_with_status, sha256, write_config
from tests.integration.servers import MlflowServer, record_timing

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("prefect_harness")]

PLAN = [{"audit": "performance"}, {"audit": "champion_challenger"}]
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("outage-server"))
    record_timing("outage.server_first_start_s", round(server.start(), 1))
    try:
        yield server
    finally:
        server.stop()
    assert not server.running


@pytest.fixture(scope="module")
def world(server, tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("outage-world"), tracking_uri=server.url, versions=2)  # v1 @champion, v2


@pytest.fixture(autouse=True)
def running(server, monkeypatch):
    for key in HTTP_ENV:  # the flow's configure_http writes these process-wide; give them back afterwards
        monkeypatch.delenv(key, raising=False)
    if not server.running:
        server.start()


def outage_during_compute(monkeypatch, server: MlflowServer, model_version: str) -> dict:
    """The first audit to start computing stops the server (once the audit's run is RUNNING); what it saw."""
    seen: dict = {}
    lock = threading.Lock()
    compute = ModelWorker.audit  # the auditor's side: it asks the model's process for one audit

    def stop_then_compute(worker, planned, **options):
        with lock:
            if "stopped_at" not in seen:
                client = make_client(server.url)
                runs = runs_with_status(client, "RUNNING")
                seen["running"] = [r.info.run_id for r in runs if r.data.tags.get("auditlens.model_version") == model_version]
                seen["stop_s"] = server.stop()
                seen["stopped_at"] = time.monotonic()
        return compute(worker, planned, **options)

    monkeypatch.setattr(ModelWorker, "audit", stop_then_compute)
    return seen


def test_audit_waits_out_an_outage_and_completes(server, world, monkeypatch, caplog):
    config = write_config(world.folder, server.url, name="outage.yaml", audits=PLAN,
                          # MLflow's own HTTP retries off: with them, a short outage can end inside urllib3's backoff
                          # and never reach the outage handling this test is about
                          mlflow={"tracking_uri": server.url, "outage_timeout_s": 60, "request_max_retries": 0})
    seen = outage_during_compute(monkeypatch, server, "2")
    back = {}

    def restart():
        deadline = time.monotonic() + 120
        while "stopped_at" not in seen and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # let the record meet the outage first
        back["start_s"] = server.start()
        back["outage_s"] = time.monotonic() - seen["stopped_at"]

    restarter = threading.Thread(target=restart, daemon=True)
    restarter.start()
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tasks.adapters.tracking"):  # the sink's ResilientClient
        summary = audit_model(model_uri="models:/e2e-model/2", config_path=str(config), tracking_uri=server.url, reason="outage test")
    took = time.monotonic() - began
    restarter.join(timeout=130)
    assert server.running and "outage_s" in back
    record_timing("outage.within_bound.server_down_s", round(back["outage_s"], 1))
    record_timing("outage.within_bound.restart_s", round(back["start_s"], 1))
    record_timing("outage.within_bound.audit_total_s", round(took, 1))

    assert seen["running"] == [summary["run_id"]]  # the run existed and was RUNNING when the server went away
    assert back["outage_s"] < 60  # within mlflow.outage_timeout_s
    assert any("MLflow unreachable during" in r.getMessage() for r in caplog.records)  # the record met the outage
    client = make_client(server.url)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["audit.verdict"] == summary["verdict"]
    assert "champion_challenger.champion.accuracy" in run.data.metrics
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(client.download_artifacts(summary["run_id"], "", tmp))
        manifest = json.loads((root / "manifest.json").read_text())
        assert manifest["complete"] and len(manifest["artifacts"]) >= 4
        for name, entry in manifest["artifacts"].items():
            assert entry["sha256"] == sha256(root / name), name
    tags = client.get_model_version("e2e-model", "2").tags
    assert (tags["audit.status"], tags["audit.run_id"], tags["audit.verdict"]) == ("done", summary["run_id"], summary["verdict"])
    assert len(client.search_runs([run.info.experiment_id])) == 1  # retried writes made no second run
    assert runs_with_status(client, "RUNNING") == []


def test_outage_beyond_the_bound_fails_clearly_and_the_watcher_settles_it(server, world, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow

    from flows.watch_registry import watch_registry

    bound = 8
    # a model of its own: the watcher below sees only the version audited here
    X, y = make_tabular(300, seed=11)
    version = register_sklearn_model(MlflowSink(server.url), make_pipeline_model(X, y, "gbm"), name="outage-model",
                                     experiment="e2e/training", input_example=X.head(2), params={})
    config = write_config(world.folder, server.url, name="short.yaml", audits=PLAN,
                          mlflow={"tracking_uri": server.url, "outage_timeout_s": bound, "request_max_retries": 0})
    deployments = world.folder / "deployments.yaml"
    deployments.write_text(yaml.safe_dump({
        "kind": "deployments", "tracking_uri": server.url, "watcher": {"max_attempts": 1},
        "models": [{"name": "outage-model", "config": "short.yaml"}],
    }))  # fmt: skip
    loaded = load_deployments(deployments)
    parameters = {"model_uri": f"models:/outage-model/{version}", "config_path": str(config), "tracking_uri": server.url, "reason": "outage test"}
    # as tasks.triggers.trigger_audit does: the flow run first, then the version says queued with its id
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.create_flow_run(audit_model, parameters=parameters)
    VersionStates.connect(server.url).mark_queued("outage-model", version, 1, str(flow_run.id), loaded.config_hash(loaded.model("outage-model")))

    seen = outage_during_compute(monkeypatch, server, version)
    with pytest.raises(TrackingServerError) as raised:
        run_flow(audit_model, flow_run=flow_run, parameters=parameters)
    failed_after = time.monotonic() - seen["stopped_at"]
    record_timing("outage.beyond_bound.stop_to_flow_failed_s", round(failed_after, 1))
    message = str(raised.value)
    assert server.url in message and f"unreachable for {bound} s" in message
    assert "fix:" in message and "bring the server back" in message and "outage_timeout_s" in message
    assert bound <= failed_after < bound + 25  # the wait is bounded once: failing the run does not wait again
    assert not server.running  # the flow ended while the server was still away

    server.start()
    client = make_client(server.url)
    (run_id,) = seen["running"]
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it: the server was away
    assert client.get_model_version("outage-model", version).tags["audit.status"] == "running"
    with get_client(sync_client=True) as prefect:
        assert prefect.read_flow_run(flow_run.id).state.is_failed()

    passes = watch_registry(deployments_path=str(deployments), tracking_uri=server.url)
    assert passes == [{"model": "outage-model", "started": [], "dead": [version]}]  # settled, and no retry (max_attempts 1)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and "flow run ended" in run.data.tags["audit.error"]
    tags = client.get_model_version("outage-model", version).tags
    assert tags["audit.status"] == "failed" and "TrackingServerError" in tags["audit.error"]
    assert runs_with_status(client, "RUNNING") == []
