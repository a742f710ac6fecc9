"""Credentials in a tracking URI never reach a message or stdout."""

from __future__ import annotations

import os
import socket

import pytest

from tasks.adapters.errors import TrackingServerError
from tasks.adapters.mlflow_sink import redact
from tasks.adapters.tracking import check_reachable, quiet_environment


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: nothing listens there


def test_redact_hides_user_and_password_only():
    assert redact("http://alice:s3cret@127.0.0.1:5000/x") == "http://***@127.0.0.1:5000/x"
    assert redact("https://token@host") == "https://***@host"
    assert redact("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"  # an @ in a path is not userinfo
    assert redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_an_unreachable_server_is_named_without_its_credentials():
    uri = f"http://alice:s3cret@127.0.0.1:{closed_port()}"
    with pytest.raises(TrackingServerError) as raised:
        check_reachable(uri, timeout_s=2)
    assert "s3cret" not in str(raised.value) and "***@127.0.0.1" in str(raised.value)


def test_mlflow_is_told_not_to_print_run_urls(monkeypatch):
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    quiet_environment()
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true" and MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get()
