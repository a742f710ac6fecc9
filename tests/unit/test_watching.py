"""The watcher's decisions, on registry states built by hand: what to audit, what is dead."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pytest

from tasks.adapters.deployments import resolve_pattern
from tasks.adapters.errors import ConfigError
from tasks.adapters.repair import RunFacts, stopped
from tasks.adapters.watching import dead_audits, lagging_audits, pending_audits
from tasks.triggers import idempotency_key


@dataclass
class Version:
    version: str
    tags: dict = field(default_factory=dict)
    status: str = "READY"


def test_new_failed_and_reconfigured_versions_are_pending():
    versions = [
        Version("1"),
        Version("2", {"audit.status": "done", "audit.config_hash": "h1"}),
        Version("3", {"audit.status": "done", "audit.config_hash": "old"}),
        Version("4", {"audit.status": "failed", "audit.attempts": "1", "audit.config_hash": "h1"}),
        Version("5", {"audit.status": "failed", "audit.attempts": "3", "audit.config_hash": "h1"}),
        Version("6", {"audit.status": "running"}),
        Version("7", {"audit.status": "done"}),  # audited by hand: no config hash, left alone
    ]
    pending = {(p.version, p.attempt) for p in pending_audits(versions, "m", max_attempts=3, config_hash="h1")}
    assert pending == {("1", 1), ("3", 1), ("4", 2)}


def run(run_id, status, started=0.0, attempt=None, beat=None, every=None):
    return RunFacts(run_id, status, started, attempt, beat, every)


def test_dead_audits_are_found_by_run_flow_or_age():
    now = 10_000.0
    versions = [
        Version("1", {"audit.status": "running", "audit.run_id": "r1"}),  # run FAILED while the server was down
        Version("2", {"audit.status": "queued", "audit.prefect_flow_run_id": "f2", "audit.queued_at": str(now - 10)}),
        Version("3", {"audit.status": "queued", "audit.queued_at": str(now - 7200)}),  # nothing moved for 2 h
        Version("4", {"audit.status": "running", "audit.run_id": "r4", "audit.queued_at": str(now - 10)}),  # alive
        Version("5", {"audit.status": "done", "audit.run_id": "r5"}),
    ]
    runs = {"r1": run("r1", "FAILED"), "r4": run("r4", "RUNNING", now - 10), "r5": run("r5", "FINISHED")}
    flows = {"f2": (True, True, "CRASHED: process killed")}
    dead = dead_audits(versions, "m", runs.get, lambda f: flows.get(f, (False, False, "")), stale_after_s=3600, now=now)
    assert [(d.version, d.reason.split(":")[0]) for d in dead] == [
        ("1", "its MLflow run ended FAILED"), ("2", "its flow run ended"), ("3", "no progress for 7200 s (stale after 3600 s)")]
    assert [d.end_run_as for d in dead] == ["FAILED", "FAILED", "FAILED"]


def test_a_running_audit_whose_heartbeat_stopped_is_dead_without_prefect():
    """The audit process was SIGKILLed: its run stays RUNNING and its flow run (unknown here) says nothing; only the
    heartbeat, 4 intervals old, tells. A fresh heartbeat keeps an audit alive however long ago it was queued."""
    now = 1_800_000_000.0
    versions = [
        Version("1", {"audit.status": "running", "audit.run_id": "r1", "audit.prefect_flow_run_id": "f1"}),
        Version("2", {"audit.status": "running", "audit.run_id": "r2", "audit.queued_at": str(now - 86_400)}),
        Version("3", {"audit.status": "running", "audit.run_id": "r3"}),  # no heartbeat: from an older auditlens
        Version("4", {"audit.status": "running", "audit.run_id": "r4"}),  # no heartbeat, started 10 min ago
    ]
    runs = {
        "r1": run("r1", "RUNNING", now - 600, "f1", beat=now - 121, every=30),  # > 4 x 30 s
        "r2": run("r2", "RUNNING", now - 86_000, beat=now - 20, every=30),  # a day-long audit, beating
        "r3": run("r3", "RUNNING", now - 7200),
        "r4": run("r4", "RUNNING", now - 600),
    }
    dead = dead_audits(versions, "m", runs.get, lambda f: (False, False, ""), stale_after_s=3600, now=now)
    assert [(d.version, d.run_id, d.end_run_as) for d in dead] == [("1", "r1", "KILLED"), ("3", "r3", "KILLED")]
    assert dead[0].reason == ("the audit process stopped: its last heartbeat was at 2027-01-15 07:57:59 UTC, 121 s before "
                              "2027-01-15 08:00:00 UTC (it beats every 30 s)")
    assert "records no heartbeat" in dead[1].reason and "2.0 h before" in dead[1].reason
    assert stopped(runs["r1"], now - 1, 3600) is None  # 120 s: the fourth beat may still come


def test_a_version_queued_for_a_new_attempt_is_not_judged_by_the_previous_run():
    """After a failed attempt (its run FAILED), the retry's version says queued and still names that run until the
    retry opens its own: the old run is not this attempt's death."""
    now = 10_000.0
    versions = [
        Version("1", {"audit.status": "queued", "audit.run_id": "old", "audit.prefect_flow_run_id": "f2",
                      "audit.queued_at": str(now - 5)}),
        Version("2", {"audit.status": "running", "audit.run_id": "done2", "audit.prefect_flow_run_id": "f3"}),
    ]
    runs = {"old": run("old", "FAILED", attempt="f1"), "done2": run("done2", "FINISHED", attempt="f3")}
    assert dead_audits(versions, "m", runs.get, lambda f: (False, False, ""), stale_after_s=3600, now=now) == []
    assert [(a.version, a.run_id) for a in lagging_audits(versions, "m", runs.get)] == [("2", "done2")]


def test_idempotency_keys_name_the_version_the_configuration_and_the_attempt():
    assert idempotency_key("credit", "7", "abc", 1) == idempotency_key("credit", "7", "abc", 1)
    assert len({idempotency_key("credit", "7", "abc", 1), idempotency_key("credit", "7", "abc", 2),
                idempotency_key("credit", "7", "xyz", 1), idempotency_key("credit", "8", "abc", 1)}) == 4


def test_current_data_patterns_resolve_with_the_run_date():
    assert resolve_pattern("data/{date:%Y-%m-%d}.csv", datetime(2026, 11, 22, 3)) == "data/2026-11-22.csv"
    assert resolve_pattern("data/fixed.csv", datetime(2026, 1, 1)) == "data/fixed.csv"
    with pytest.raises(ConfigError, match="cannot be resolved"):
        resolve_pattern("data/{day}.csv", datetime(2026, 1, 1))
