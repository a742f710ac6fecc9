"""Every form of tracking URI: its secrets never reach a message, MLflow gets a form it can use, and a URI that
cannot work is refused with one message naming the problem and the fix (servers answering HTTP are in
tests/integration/test_tracking_uris.py)."""

from __future__ import annotations

import importlib.util
import os
import socket
import sqlite3
from urllib.parse import unquote

import pytest

from tasks.adapters.errors import AuditlensError, ConfigError, TrackingServerError
from tasks.adapters.tracking import (
    TRACKING_SCHEMES,
    check_reachable,
    make_client,
    normalise_tracking_uri,
    quiet_environment,
    redact,
    redact_text,
    validate_tracking_uri,
)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: nothing listens there


# (uri, exactly what may be printed, substrings that must not survive)
REDACTIONS = [
    ("http://alice:s3cret@127.0.0.1:5000/x", "http://***@127.0.0.1:5000/x", ["alice", "s3cret"]),
    ("https://token@host", "https://***@host", ["token"]),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000", []),
    ("http://alice:Tr1@lPW55@mlflow.example.com:5000", "http://***@mlflow.example.com:5000", ["Tr1", "lPW55"]),
    ("http://alice:pa/ss@127.0.0.1:5000/", "http://***@127.0.0.1:5000/", ["pa/ss", "ss@"]),
    ("http://alice:a:b:c@host:5000", "http://***@host:5000", ["a:b:c", "alice"]),
    ("http://alice:p%40ss%2Fw0rd@host", "http://***@host", ["p%40ss", "w0rd"]),
    ("http://alice:p#ss@host:5000", "http://***@host:5000", ["p#ss", "ss@"]),
    ("http://alice:p?ss@host:5000/prefix", "http://***@host:5000/prefix", ["p?ss", "ss@"]),
    ("http://alice:a/b?c#d@e@host/p", "http://***@host/p", ["a/b", "c#d", "d@e"]),
    ("http://alice:pw@[::1]:5000/", "http://***@[::1]:5000/", ["alice:pw"]),
    ("http://host:5000/?token=abc123", "http://host:5000/?token=***", ["abc123"]),
    ("http://host:5000?token=abc123&user=bob", "http://host:5000?token=***&user=***", ["abc123", "bob"]),
    ("http://host:5000/mlflow?token=", "http://host:5000/mlflow?token=", []),
    ("http://host:5000/?s3cr3t-on-its-own", "http://host:5000/?***", ["s3cr3t"]),
    ("https://alice:pw@host/x?token=t0k#frag", "https://***@host/x?token=***#***", ["pw", "t0k", "frag"]),
    ("postgresql://mlflow:pgS3cret@db.internal:5432/mlflow", "postgresql://***@db.internal:5432/mlflow", ["pgS3cret"]),
    ("postgresql+psycopg2://u:p@ss/w@db:5432/mlflow?sslmode=require&password=x9z",
     "postgresql+psycopg2://***@db:5432/mlflow?sslmode=***&password=***", ["p@ss", "ss/w", "x9z"]),
    ("mysql+pymysql://root:R00t!@127.0.0.1:3306/mlflow", "mysql+pymysql://***@127.0.0.1:3306/mlflow", ["R00t!"]),
    ("mssql+pyodbc://sa:Pw0rd@dsn_name", "mssql+pyodbc://***@dsn_name", ["Pw0rd"]),
    ("mssql+pyodbc:///?odbc_connect=DRIVER%3Dx%3BPWD%3Dsecret", "mssql+pyodbc:///?odbc_connect=***", ["secret"]),
    ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db", []),  # an @ in a path is not userinfo
    ("sqlite:///mlflow.db", "sqlite:///mlflow.db", []),
    ("file:///tmp/mlruns", "file:///tmp/mlruns", []),
    ("databricks://profile:prefix", "databricks://profile:prefix", []),
    ("databricks", "databricks", []),
    ("ftp://bob:hunter22@files.example/x", "ftp://***@files.example/x", ["hunter22"]),
    ("", "", []),
    # unparseable: urllib raises on these; the secret still goes
    ("http://alice:pw@[::1", "http://***@[::1", ["alice:pw"]),
    ("http://alice:pw@host:notaport/x", "http://***@host:notaport/x", ["alice:pw"]),
    # ambiguous (a password holding ?...@ or an @ in a query value): fail safe, the secret side goes
    ("http://host/x?email=a@b.c", "http://***@b.c", []),
]


@pytest.mark.parametrize("uri, shown, secrets", REDACTIONS, ids=[r[0] or "empty" for r in REDACTIONS])
def test_redact_removes_userinfo_and_query_values(uri, shown, secrets):
    assert redact(uri) == shown
    for secret in secrets:
        assert secret not in redact(uri)
    assert redact(redact(uri)) == shown  # printing a redacted URI again changes nothing


def test_redaction_is_defined_once_in_tracking():
    """One redaction: every module that prints or records a URI imports tracking's (a copy could drift, and leak)."""
    import ast

    from tests.conftest import ROOT

    defined = sorted(
        str(path.relative_to(ROOT))
        for package in ("auditlens", "flows", "tasks")
        for path in (ROOT / package).rglob("*.py")
        if any(isinstance(node, ast.FunctionDef) and node.name in ("redact", "redact_text")
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))
    )
    assert defined == ["tasks/adapters/tracking.py"]


@pytest.mark.parametrize("value", [None, 42, b"http://a:b@c", "\x00://@@@", "://", "@", "a://b@"])
def test_redact_never_raises(value):
    assert isinstance(redact(value), str)


def test_redact_text_removes_the_secrets_of_a_uri_wherever_they_appear():
    uri = "http://alice:Tr1@lPW55@127.0.0.1:5000?token=T0KEN-42"
    normalised = normalise_tracking_uri(uri)
    message = (f"API request to {normalised}/api/2.0/mlflow/x failed; Invalid url: {uri}/health; "
               "auth 'alice:Tr1@lPW55' (Basic YWxpY2U6VHIxQGxQVzU1) password Tr1%40lPW55; other http://bob:zz99@h/")
    cleaned = redact_text(message, uri)
    for secret in ("Tr1@lPW55", "Tr1%40lPW55", "lPW55", "T0KEN-42", "YWxpY2U6VHIxQGxQVzU1", "zz99"):
        assert secret not in cleaned, secret
    # what follows a query in a URL is query (MLflow appends its paths to it): masked with it
    assert cleaned == ("API request to http://***@127.0.0.1:5000?token=*** failed; Invalid url: "
                       "http://***@127.0.0.1:5000?token=*** auth '***' (Basic ***) password ***; other http://***@h/")


def test_redact_text_without_a_uri_still_redacts_every_url_in_the_text():
    """What a CLI can do with any error it prints, whatever raised it (e.g. a registry named by its client's URI)."""
    message = ("no registered model 'm' in the registry at http://alice:Tr1%40l%2FPW%3A55@127.0.0.1:5000 "
               "(registered: ['a']); also postgresql+psycopg2://u:pw@db:5432/x?sslmode=require.")
    assert redact_text(message) == ("no registered model 'm' in the registry at http://***@127.0.0.1:5000 "
                                    "(registered: ['a']); also postgresql+psycopg2://***@db:5432/x?sslmode=***")


# (uri as written, what MLflow is given, the password requests and SQLAlchemy will decode from it)
NORMALISED = [
    ("http://alice:pass@127.0.0.1:5000", "http://alice:pass@127.0.0.1:5000", "pass"),
    ("http://alice:Tr1@lPW55@127.0.0.1:5000", "http://alice:Tr1%40lPW55@127.0.0.1:5000", "Tr1@lPW55"),
    ("http://alice:pa/ss@127.0.0.1:5000/", "http://alice:pa%2Fss@127.0.0.1:5000/", "pa/ss"),
    ("http://alice:a:b@127.0.0.1:5000", "http://alice:a%3Ab@127.0.0.1:5000", "a:b"),
    ("http://alice:p#s?s@127.0.0.1:5000", "http://alice:p%23s%3Fs@127.0.0.1:5000", "p#s?s"),
    ("http://alice:p%40ss@127.0.0.1:5000", "http://alice:p%40ss@127.0.0.1:5000", "p@ss"),  # already encoded: kept
    ("http://alice:100%sure@127.0.0.1:5000", "http://alice:100%25sure@127.0.0.1:5000", "100%sure"),  # not an escape
    ("postgresql://u:Tr1@lPW/x@db:5432/mlflow", "postgresql://u:Tr1%40lPW%2Fx@db:5432/mlflow", "Tr1@lPW/x"),
]


@pytest.mark.parametrize("uri, given, password", NORMALISED, ids=[n[0] for n in NORMALISED])
def test_userinfo_is_percent_encoded_for_mlflow(uri, given, password):
    from sqlalchemy.engine import make_url
    from urllib3.util import parse_url

    assert normalise_tracking_uri(uri) == given
    assert normalise_tracking_uri(given) == given
    if given.startswith("http"):  # what requests does with a URL's userinfo (requests.utils.get_auth_from_url)
        parsed = parse_url(given)
        assert (parsed.host, parsed.port) == ("127.0.0.1", 5000)
        assert unquote(parsed.auth.partition(":")[2]) == password
    else:
        url = make_url(given)
        assert (url.password, url.host, url.port, url.database) == (password, "db", 5432, "mlflow")


@pytest.mark.parametrize("uri", ["http://127.0.0.1:5000", "sqlite:////tmp/a@b/mlflow.db", "file:///tmp/mlruns",
                                 "databricks://profile:prefix", "https://host/prefix"])
def test_uris_without_userinfo_are_left_alone(uri):
    assert normalise_tracking_uri(uri) == uri


def test_the_accepted_schemes_are_mlflows_tracking_schemes():
    from mlflow.tracking._model_registry.utils import _get_store_registry
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    unity_catalog = {"databricks-uc", "uc"}  # registered, but only raise "not supported" for tracking
    assert set(TRACKING_SCHEMES) == set(_tracking_store_registry._registry) - unity_catalog
    assert set(TRACKING_SCHEMES) <= set(_get_store_registry()._registry)  # the same URI is the registry URI


# (uri, words the message must hold); each is refused before anything connects
REFUSED = [
    ("ftp://bob:hunter22@files.example/mlflow", ["'ftp'", "http(s)://", "sqlite:///", "postgresql"]),
    ("s3://bucket/mlflow", ["'s3'"]),
    ("postgres://u:hunter22@db/mlflow", ["'postgres'", "postgresql://"]),
    ("postgresql+psycopg2+extra://u:hunter22@db/mlflow", ["postgresql+psycopg2+extra", "one +DRIVER"]),
    ("uc", ["Unity Catalog"]),
    ("databricks-uc://profile", ["Unity Catalog"]),
    ("localhost:5000", ["no scheme", "http://localhost:5000"]),
    ("127.0.0.1:5000", ["no scheme", "http://127.0.0.1:5000"]),
    ("", ["empty"]),
    (" http://127.0.0.1:5000", ["spaces"]),
    ("http://", ["no host"]),
    ("http:///mlflow", ["no host"]),
    ("https://:5000", ["no host"]),
    ("http://alice:hunter22@127.0.0.1:99999", ["port", "99999"]),
    ("http://alice:hunter22@[::1", ["not a valid URL"]),
    ("http://127.0.0.1:5000/?token=hunter22", ["query", "MLFLOW_TRACKING_TOKEN"]),
    ("http://127.0.0.1:5000/#hunter22", ["fragment"]),
    ("sqlite://", ["in memory"]),
    ("sqlite:///:memory:", ["in memory"]),
    ("file://tmp/mlruns", ["host 'tmp'", "file:///tmp/mlruns"]),
    ("file://alice:hunter22@nas/mlruns", ["host 'nas'", "file:///nas/mlruns"]),
    ("postgresql+nosuchdriver://u:hunter22@127.0.0.1:5432/mlflow", ["nosuchdriver"]),
    ("postgresql+asyncpg://u:hunter22@127.0.0.1:5432/mlflow", ["asynchronous", "postgresql+psycopg2"]),
]


@pytest.mark.parametrize("uri, words", REFUSED, ids=[r[0] or "empty" for r in REFUSED])
def test_a_uri_mlflow_cannot_use_is_refused_with_one_message(uri, words):
    with pytest.raises(ConfigError) as raised:
        check_reachable(uri, timeout_s=1)
    message = " ".join(str(raised.value).split())
    for word in words:
        assert word in message, message
    assert raised.value.fix and "hunter22" not in message
    with pytest.raises(ConfigError):  # the client is not made either
        make_client(uri)


@pytest.mark.parametrize("uri", ["file:///tmp/mlruns", "/tmp/mlruns", "mlruns"])
def test_the_file_store_is_refused_unless_allowed(uri, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError) as raised:
        check_reachable(uri)
    assert "maintenance mode" in str(raised.value) and "MLFLOW_ALLOW_FILE_STORE=true" in raised.value.fix
    assert "sqlite:///" in raised.value.fix


def test_an_allowed_file_store_is_checked_like_a_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    check_reachable((tmp_path / "mlruns").as_uri())  # MLflow creates the folder
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(TrackingServerError, match="is a file, not a folder"):
        check_reachable((tmp_path / "a-file").as_uri())
    client = make_client((tmp_path / "mlruns").as_uri())
    assert client.get_experiment_by_name("Default") is not None


# --- SQLite: the folder must exist, and an existing file must be a SQLite database ---------------------------
def test_a_text_file_posing_as_the_database_is_refused(tmp_path):
    fake = tmp_path / "mlflow.db"
    fake.write_text("these are notes, not a database\n")
    with pytest.raises(TrackingServerError) as raised:
        check_reachable(f"sqlite:///{fake}")
    assert f"{fake} is not a SQLite database" in str(raised.value)
    assert "notes" not in str(raised.value).replace(str(fake), "")  # the file's content is not printed
    assert "fix:" in str(raised.value)


def test_a_real_sqlite_database_an_empty_file_and_a_new_file_pass(tmp_path):
    real = tmp_path / "real.db"
    with sqlite3.connect(real) as db:
        db.execute("create table t (x)")
    check_reachable(f"sqlite:///{real}")
    (tmp_path / "empty.db").touch()  # SQLite treats an empty file as an empty database
    check_reachable(f"sqlite:///{tmp_path / 'empty.db'}")
    check_reachable(f"sqlite:///{tmp_path / 'new.db'}?mode=rwc")
    check_reachable(f"sqlite+pysqlite:///{tmp_path / 'new.db'}")


def test_a_missing_folder_or_a_folder_in_place_of_the_file_is_named(tmp_path):
    with pytest.raises(TrackingServerError, match="does not exist") as raised:
        check_reachable(f"sqlite:///{tmp_path / 'no-such-folder' / 'mlflow.db'}")
    assert str(tmp_path / "no-such-folder") in str(raised.value)
    (tmp_path / "a-folder.db").mkdir()
    with pytest.raises(TrackingServerError, match="is a folder, not a SQLite database"):
        check_reachable(f"sqlite:///{tmp_path / 'a-folder.db'}")


def test_a_relative_sqlite_path_starts_at_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "notes.db").write_text("not sqlite")
    check_reachable("sqlite:///sub/mlflow.db")
    with pytest.raises(TrackingServerError) as raised:
        check_reachable("sqlite:///sub/notes.db")
    assert f"{tmp_path / 'sub' / 'notes.db'} is not a SQLite database" in str(raised.value)
    with pytest.raises(TrackingServerError) as raised:
        check_reachable("sqlite:///elsewhere/mlflow.db")
    assert str(tmp_path / "elsewhere") in str(raised.value)


def test_a_tilde_is_not_expanded_in_a_uri_and_the_message_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TrackingServerError) as raised:
        check_reachable("sqlite:///~/mlflow.db")
    assert "~" in raised.value.fix and "absolute path" in raised.value.fix


# --- databases: nothing listening, a driver that is missing ---------------------------------------------------
@pytest.mark.parametrize("scheme", ["postgresql", "postgresql+psycopg2", "mysql+pymysql", "mssql+pymssql"])
def test_a_database_port_nothing_listens_on_is_named(scheme):
    port = closed_port()
    with pytest.raises(TrackingServerError) as raised:
        check_reachable(f"{scheme}://mlflow:Db5ecret@127.0.0.1:{port}/mlflow", timeout_s=2)
    assert f"nothing listens on 127.0.0.1:{port}" in str(raised.value) and "Db5ecret" not in str(raised.value)
    assert f"{scheme}://***@127.0.0.1:{port}/mlflow" in str(raised.value)


def test_a_missing_database_driver_is_named_with_its_package():
    assert importlib.util.find_spec("pg8000") is None, "this test needs a PostgreSQL driver that is not installed"
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        with pytest.raises(ConfigError) as raised:
            check_reachable(f"postgresql+pg8000://mlflow:Db5ecret@127.0.0.1:{port}/mlflow", timeout_s=2)
    assert "pg8000" in str(raised.value) and "pip install pg8000" in raised.value.fix
    assert "Db5ecret" not in str(raised.value)


# --- http: what needs no server -------------------------------------------------------------------------------
def test_an_unreachable_server_is_named_without_its_credentials():
    port = closed_port()
    for uri in (f"http://alice:s3cret@127.0.0.1:{port}", f"http://alice:s3/cr@t@127.0.0.1:{port}"):
        with pytest.raises(TrackingServerError) as raised:
            check_reachable(uri, timeout_s=2)
        message = str(raised.value)
        assert "s3cret" not in message and "s3/cr" not in message and "cr@t" not in message
        assert f"http://***@127.0.0.1:{port} is not reachable" in message
        assert f"nothing listens on 127.0.0.1:{port}" in message


def test_every_refusal_is_an_auditlens_error_with_a_fix():
    for uri in ("ftp://x", "", "sqlite://", f"http://127.0.0.1:{closed_port()}"):
        with pytest.raises(AuditlensError) as raised:
            check_reachable(uri, timeout_s=1)
        assert raised.value.exit_code == 2 and raised.value.problem and raised.value.fix


def test_make_client_gives_mlflow_the_percent_encoded_uri():
    client = make_client("http://alice:pa/ss@127.0.0.1:5000")
    assert client.tracking_uri == "http://alice:pa%2Fss@127.0.0.1:5000"
    assert client._registry_uri == "http://alice:pa%2Fss@127.0.0.1:5000"


def test_validate_names_the_kind_of_store():
    assert validate_tracking_uri("http://a:b@h:1").kind == "http"
    assert validate_tracking_uri("sqlite:///x.db").kind == "sqlite"
    assert validate_tracking_uri("mysql+pymysql://u@h/d").kind == "database"
    assert validate_tracking_uri("databricks").kind == "databricks"


def test_mlflow_is_told_not_to_print_run_urls(monkeypatch):
    monkeypatch.delenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", raising=False)
    quiet_environment()
    from mlflow.environment_variables import MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT

    assert os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true" and MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT.get()


def test_joblib_counts_cores_without_a_warning_and_a_traceback():
    """Where joblib cannot count physical cores (it runs lscpu or cat: the model's confined process cannot) it printed a
    warning and a traceback in every audit; counted once ahead, it stays silent, and still answers with the cores it may
    use. Here neither program is on the PATH."""
    import os
    import subprocess
    import sys

    code = ("from tasks.adapters.tracking import quiet_joblib\n{}\n"
            "import joblib\nprint(joblib.cpu_count(only_physical_cores=True) >= 1)")
    env = {**os.environ, "PATH": ""}
    for ahead in ("pass", "quiet_joblib()"):
        done = subprocess.run([sys.executable, "-c", code.format(ahead)], capture_output=True, text=True, timeout=120, env=env)
        assert done.stdout.strip() == "True", done.stderr
        assert ("physical cores" in done.stderr and "in _count_physical_cores" in done.stderr) == (ahead == "pass"), done.stderr
