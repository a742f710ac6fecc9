"""The resident auditor's parts that need no process: what must match for it to take a command's audit (code,
environment), the progress events it forwards, and the socket's place."""

from __future__ import annotations

import os

import pytest

from auditlens import resident
from tasks import progress
from tasks.adapters.errors import ConfigError


def test_environments_differ_by_name_and_terminal_variables_do_not_count():
    mine = resident.environment_digests({"MLFLOW_TRACKING_TOKEN": "secret", "PATH": "/bin", "TERM": "xterm", "PWD": "/a"})
    assert set(mine) == {"MLFLOW_TRACKING_TOKEN", "PATH"} and "secret" not in str(mine)
    same = resident.environment_digests({"MLFLOW_TRACKING_TOKEN": "secret", "PATH": "/bin", "TERM": "screen", "PWD": "/b",
                                         "PYTEST_CURRENT_TEST": "x"})
    assert resident.environment_differences(mine, same) == []
    theirs = resident.environment_digests({"MLFLOW_TRACKING_TOKEN": "other", "PATH": "/bin", "AWS_PROFILE": "prod"})
    assert resident.environment_differences(mine, theirs) == ["AWS_PROFILE", "MLFLOW_TRACKING_TOKEN"]


def test_events_cross_the_socket_unchanged():
    import json

    for event in (progress.Plan(("drift", "shap")), progress.Phase("load", "m v1"), progress.Started("drift"),
                  progress.Finished("drift", "FAIL", 1.25, False, "drift.share > 0.1"), progress.Finished("shap", "ERROR", None)):
        assert resident.event_from(json.loads(json.dumps(resident.event_message(event)))) == event


def test_the_code_fingerprint_follows_every_source_file(tmp_path, monkeypatch):
    for package in resident.SOURCES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(resident, "ROOT", tmp_path)
    before = resident.code_fingerprint()
    assert resident.code_fingerprint() == before
    (tmp_path / "audits" / "a.py").write_text("x = 2\n")  # same size, a later time
    os.utime(tmp_path / "audits" / "a.py", ns=(1, 10**18))
    edited = resident.code_fingerprint()
    assert edited != before
    (tmp_path / "tasks" / "b.py").write_text("")
    assert resident.code_fingerprint() not in (before, edited)


def test_a_resident_refuses_other_code_and_other_environments():
    server = resident.Resident(resident.environment_digests({"A": "1"}), idle_s=60)
    ok = {"code": server.code, "environment": resident.environment_digests({"A": "1", "TERM": "x"})}
    assert server.refusal(ok) is None
    assert "other code" in server.refusal({**ok, "code": "0" * 20})
    assert "(these variables differ: A, B)" in server.refusal({**ok, "environment": resident.environment_digests({"A": "2", "B": ""})})


def test_a_socket_path_too_long_for_unix_is_refused_with_its_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("AUDITLENS_STATE_DIR", str(tmp_path / ("x" * 120)))
    with pytest.raises(ConfigError, match="longer than a Unix socket allows") as caught:
        resident.Resident({}, idle_s=60).bind()
    assert "AUDITLENS_STATE_DIR" in str(caught.value)
    assert resident.ask({"op": "ping"}) is None  # and nobody answers there
