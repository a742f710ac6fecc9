"""The watcher's decisions, on registry states built by hand: what to audit, what is dead."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import pytest

from tasks.adapters.deployments import resolve_pattern
from tasks.adapters.errors import ConfigError
from tasks.adapters.watching import dead_audits, pending_audits
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


def test_dead_audits_are_found_by_run_flow_or_age():
    now = 10_000.0
    versions = [
        Version("1", {"audit.status": "running", "audit.run_id": "r1"}),  # run FAILED while the server was down
        Version("2", {"audit.status": "queued", "audit.prefect_flow_run_id": "f2", "audit.queued_at": str(now - 10)}),
        Version("3", {"audit.status": "queued", "audit.queued_at": str(now - 7200)}),  # nothing moved for 2 h
        Version("4", {"audit.status": "running", "audit.run_id": "r4", "audit.queued_at": str(now - 10)}),  # alive
        Version("5", {"audit.status": "done", "audit.run_id": "r5"}),
    ]
    runs = {"r1": "FAILED", "r4": "RUNNING", "r5": "FINISHED"}
    flows = {"f2": (True, True, "CRASHED: process killed")}
    dead = dead_audits(versions, "m", runs.get, lambda f: flows.get(f, (False, False, "")), stale_after_s=3600, now=now)
    assert [(d.version, d.reason.split(":")[0]) for d in dead] == [
        ("1", "its MLflow run ended FAILED"), ("2", "its flow run ended"), ("3", "no progress for 7200 s (stale after 3600 s)")]


def test_idempotency_keys_name_the_version_the_configuration_and_the_attempt():
    assert idempotency_key("credit", "7", "abc", 1) == idempotency_key("credit", "7", "abc", 1)
    assert len({idempotency_key("credit", "7", "abc", 1), idempotency_key("credit", "7", "abc", 2),
                idempotency_key("credit", "7", "xyz", 1), idempotency_key("credit", "8", "abc", 1)}) == 4


def test_current_data_patterns_resolve_with_the_run_date():
    assert resolve_pattern("data/{date:%Y-%m-%d}.csv", datetime(2026, 11, 22, 3)) == "data/2026-11-22.csv"
    assert resolve_pattern("data/fixed.csv", datetime(2026, 1, 1)) == "data/fixed.csv"
    with pytest.raises(ConfigError, match="cannot be resolved"):
        resolve_pattern("data/{day}.csv", datetime(2026, 1, 1))
