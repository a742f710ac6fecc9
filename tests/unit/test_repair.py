"""`auditlens doctor`'s findings on a real SQLite store, one kind of damage each: a RUNNING audit run whose heartbeat
stopped, one from an auditlens without heartbeats, a live one, a version that missed its run's end, a version queued
for a new attempt (not damage), and what --repair leaves behind."""

from __future__ import annotations

import time

import pytest

from tasks.adapters.errors import ConfigError, TrackingServerError
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.repair import examine, open_store, parse_duration
from tasks.adapters.tracking import make_client

HOUR = 3600.0


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = make_client(uri)
    client.create_registered_model("m")
    return uri, client, client.create_experiment("auditlens/m")


def audit_run(client, experiment, key, started_h_ago=0.0, beat_s_ago=None, every=None, status="RUNNING", **tags):
    start = time.time() - started_h_ago * HOUR
    run = client.create_run(experiment, start_time=int(start * 1000),
                            tags={"auditlens.audit_key": f"prefect:{key}", "auditlens.model_name": "m",
                                  "auditlens.model_version": "1", "audit.status": "running", **tags})
    if beat_s_ago is not None:
        client.set_tag(run.info.run_id, "audit.heartbeat_at", f"{time.time() - beat_s_ago:.1f}")
        client.set_tag(run.info.run_id, "audit.heartbeat_s", str(every))
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def version(client, **tags) -> str:
    return str(client.create_model_version("m", source="file:///nowhere", tags=tags).version)


def test_dead_runs_are_found_by_heartbeat_or_by_age_and_live_ones_are_left_alone(store):
    uri, client, experiment = store
    killed = audit_run(client, experiment, "f1", started_h_ago=0.2, beat_s_ago=200, every=30)  # 200 s > 4 x 30 s
    legacy = audit_run(client, experiment, "f2", started_h_ago=7)  # no heartbeat, older than --stale-after 6 h
    audit_run(client, experiment, "f3", started_h_ago=5)  # no heartbeat, 5 h: may still be working
    audit_run(client, experiment, "f4", started_h_ago=30, beat_s_ago=5, every=30)  # a long audit, beating
    client.create_run(experiment, start_time=int((time.time() - 9 * HOUR) * 1000))  # not an audit (no audit key)
    v1 = version(client, **{"audit.status": "running", "audit.run_id": killed, "audit.prefect_flow_run_id": "f1"})
    sink = open_store(uri)

    found = examine(sink, stale_after_s=6 * HOUR, repair=False)
    assert [f.subject for f in found] == [f"run {killed} (m v1)", f"run {legacy} (m v1)", f"version m v{v1}"]
    assert "its last heartbeat was at" in found[0].problem and "(it beats every 30 s)" in found[0].problem
    assert "records no heartbeat" in found[1].problem and "dead after 6 h" in found[1].problem
    assert found[2].problem.startswith(f"says running, but its run {killed} is dead: the audit process stopped")
    assert not any(f.repaired for f in found)
    # --stale-after 8h: the 7-hour-old run without heartbeats may still be working
    assert [f.subject for f in examine(sink, stale_after_s=8 * HOUR, repair=False)] == [f"run {killed} (m v1)", f"version m v{v1}"]

    repaired = examine(sink, stale_after_s=6 * HOUR, repair=True)
    assert [(f.subject, f.repaired) for f in repaired] == [
        (f"run {killed} (m v1)", True), (f"run {legacy} (m v1)", True), (f"version m v{v1}", True)]
    for run_id in (killed, legacy):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["audit.status"] == "failed"
        assert run.data.tags["audit.error"].startswith("the audit process stopped: ")
    tags = client.get_model_version("m", v1).tags
    assert (tags["audit.status"], tags["audit.error"]) == ("failed", client.get_run(killed).data.tags["audit.error"])
    assert examine(sink, stale_after_s=6 * HOUR, repair=False) == []


def test_a_version_that_missed_its_runs_end_takes_the_runs_state(store):
    uri, client, experiment = store
    finished = audit_run(client, experiment, "f1", status="FINISHED", **{"audit.verdict": "WARN"})
    client.set_tag(finished, "audit.status", "done")
    old = audit_run(client, experiment, "f0", status="FAILED", **{"audit.error": "boom"})
    v1 = version(client, **{"audit.status": "running", "audit.run_id": finished, "audit.prefect_flow_run_id": "f1"})
    # queued for a new attempt (f2): still names the previous attempt's failed run; nothing is wrong with it
    v2 = version(client, **{"audit.status": "queued", "audit.run_id": old, "audit.prefect_flow_run_id": "f2"})
    sink = open_store(uri)
    found = examine(sink, stale_after_s=6 * HOUR, repair=True)
    assert [(f.subject, f.problem, f.repaired) for f in found] == [
        (f"version m v{v1}", f"says running, but its run {finished} ended FINISHED", True)]
    tags = client.get_model_version("m", v1).tags
    assert (tags["audit.status"], tags["audit.verdict"], tags["audit.run_id"]) == ("done", "WARN", finished)
    assert client.get_model_version("m", v2).tags["audit.status"] == "queued"


def test_durations_and_stores_are_checked_before_anything_is_read(tmp_path):
    assert [parse_duration(t) for t in ("90", "90s", "30m", "6h", "1.5d")] == [90, 90, 1800, 21600, 129600]
    for bad in ("", "six hours", "-1h", "0", "6w"):
        with pytest.raises(ConfigError, match="is not a duration"):
            parse_duration(bad)
    with pytest.raises(TrackingServerError, match="no MLflow store at"):
        open_store(f"sqlite:///{tmp_path / 'missing.db'}")
    assert not (tmp_path / "missing.db").exists()  # not created empty, then reported healthy
    with pytest.raises(ConfigError, match="unsupported tracking URI"):
        open_store("file:///tmp/mlruns")
    (tmp_path / "x.db").touch()
    assert isinstance(open_store(f"sqlite:///{tmp_path / 'x.db'}"), MlflowSink)
