"""`auditlens audit --tracking-uri URI` as a user runs it (a real process): with tracking URIs MLflow cannot use
or cannot reach, exit code 2, one message with its fix, no traceback, the password nowhere in the output, and
nothing recorded in the world's store; with a credentialed URI to a real `mlflow server`, a whole audit, and the
password nowhere in the output or the record."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tasks.adapters.tracking import make_client
from tests.helpers import build_world, runs_with_status, write_config
from tests.integration.servers import MlflowServer
from tests.integration.test_tracking_uris import http_stub, silent_server

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("cli-uris-world"))


@pytest.fixture(scope="module")
def cli_env(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MLFLOW_TRACKING") and key != "MLFLOW_ALLOW_FILE_STORE"}
    return {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# id -> (a function of (servers' ports, world folder, working folder) giving the URI, what the message says (a
# template over the same), secrets that must not be printed)
CASES = {
    "ftp": (lambda s, w, cwd: "ftp://alice:Secr3tPw@127.0.0.1/mlflow", "MLflow cannot track to a 'ftp' URI",
            ["Secr3tPw"]),
    "text-file-as-sqlite": (lambda s, w, cwd: f"sqlite:///{w / 'notes.db'}", "{world}/notes.db is not a SQLite database", []),
    "relative-sqlite-no-folder": (lambda s, w, cwd: "sqlite:///no-such-folder/mlflow.db",
                                  "the folder of the SQLite tracking store sqlite:///no-such-folder/mlflow.db does not exist", []),
    "file-store": (lambda s, w, cwd: (cwd / "mlruns").as_uri(), "in maintenance mode", []),
    "postgresql-nothing-listens": (lambda s, w, cwd: f"postgresql://mlflow:Secr3tPw@127.0.0.1:{s['closed']}/mlflow",
                                   "nothing listens on 127.0.0.1:{closed}", ["Secr3tPw"]),
    "http-no-host": (lambda s, w, cwd: "http://", "has no host", []),
    "http-500": (lambda s, w, cwd: f"http://alice:Tr1@lPW55@127.0.0.1:{s['500']}",
                 "answered 500 Internal Server Error on /health", ["Tr1", "lPW55"]),
    "http-never-answers": (lambda s, w, cwd: f"http://alice:pa/ss@127.0.0.1:{s['silent']}",
                           "did not answer within 5 s (GET /health)", ["pa/ss"]),
    "http-percent-encoded-closed": (lambda s, w, cwd: f"http://alice:p%40ss%2Fw0rd@127.0.0.1:{s['closed']}",
                                    "nothing listens on 127.0.0.1:{closed}", ["p%40ss", "p@ss", "w0rd"]),
    "http-token-in-query": (lambda s, w, cwd: f"http://127.0.0.1:{s['closed']}/?token=T0kenSecr3t",
                            "has a query", ["T0kenSecr3t"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_tracking_uri_that_cannot_work_gets_one_message_and_exit_2(world, cli_env, tmp_path, case):
    make_uri, message, secrets = CASES[case]
    (world.folder / "notes.db").write_text("meeting notes, not a database\n")
    # the cheapest plan (no Great Expectations to import): what is under test is the URI
    light = write_config(world.folder, world.tracking_uri, name="light.yaml", audits=[{"audit": "performance"}])
    client = make_client(world.tracking_uri)
    finished_before = len(runs_with_status(client, "FINISHED"))
    with ExitStack() as stack:
        servers = {"closed": closed_port(), "500": stack.enter_context(http_stub(status=500, body=b"boom")),
                   "silent": stack.enter_context(silent_server())}
        uri = make_uri(servers, world.folder, tmp_path)
        began = time.monotonic()
        completed = subprocess.run(
            [str(AUDITLENS), "audit", "--model", "models:/e2e-model/1", "--config", str(light), "--tracking-uri", uri],
            env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
        elapsed = time.monotonic() - began
    output = completed.stdout + completed.stderr
    assert completed.returncode == 2, output
    assert message.format(world=world.folder, **servers) in " ".join(output.split()), output
    assert output.count("error:") == 1 and output.count("fix:") == 1 and "Traceback" not in output, output
    for secret in secrets:
        assert secret not in output, output
    assert elapsed < 120, elapsed  # the CLI's imports take most of it; a hung check would take the 300 s
    assert runs_with_status(client, "RUNNING") == []
    assert len(runs_with_status(client, "FINISHED")) == finished_before  # nothing passed off as an audit
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()  # no fallback store


# --- a real mlflow server reached with credentials (it accepts any) -------------------------------------------
PASSWORD = "Tr1@l/PW:55"


@pytest.fixture(scope="module")
def served_world(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("cli-uris-server"))
    server.start()
    try:
        uri = f"http://alice:{PASSWORD}@127.0.0.1:{server.port}"  # an @, a / and a : in the password, as written
        yield uri, build_world(tmp_path_factory.mktemp("cli-uris-served-world"), tracking_uri=uri)
    finally:
        server.stop()


def _audit(cli_env, cwd, config, uri, model="models:/e2e-model/1"):
    completed = subprocess.run(
        [str(AUDITLENS), "audit", "--model", model, "--config", str(config), "--tracking-uri", uri, "--fail-on", "never"],
        env=cli_env, cwd=cwd, capture_output=True, text=True, timeout=600,
    )
    return completed.returncode, completed.stdout + completed.stderr


def test_a_whole_audit_runs_through_a_credentialed_uri_and_records_no_password(served_world, cli_env, tmp_path):
    uri, world = served_world
    code, output = _audit(cli_env, tmp_path, world.config, uri)
    assert code == 0, output
    assert "Verdict:" in output and "http://***@127.0.0.1" in output
    for secret in (PASSWORD, "Tr1@l", "PW:55", "Tr1%40l"):
        assert secret not in output
    client = make_client(uri)
    [run] = [r for r in runs_with_status(client, "FINISHED") if r.data.tags.get("auditlens.trigger") == "cli"]
    recorded = json.dumps({"params": run.data.params, "tags": run.data.tags})
    manifest = client.download_artifacts(run.info.run_id, "manifest.json", str(tmp_path))
    recorded += Path(manifest).read_text()
    assert "***@127.0.0.1" in recorded
    for secret in ("Tr1", "PW:55", "PW%3A55"):
        assert secret not in recorded


def test_a_missing_model_behind_a_credentialed_uri_is_named_without_the_password(served_world, cli_env, tmp_path):
    uri, world = served_world
    code, output = _audit(cli_env, tmp_path, world.config, uri, model="models:/no-such-model/1")
    assert code == 2, output
    assert "no registered model 'no-such-model'" in output and "fix:" in output and "Traceback" not in output
    for secret in ("Tr1", "PW:55", "PW%3A55"):
        assert secret not in output, output
