"""Connecting to the MLflow tracking store: which URIs MLflow can use, their secrets kept out of every message,
one check before anything runs, and a client with an explicit URI.

A tracking URI comes from a user (--tracking-uri, the config, $MLFLOW_TRACKING_URI) and may carry credentials
(``http://user:password@host``, ``postgresql://user:password@host/db``) or tokens in its query. Three rules:

- ``redact`` (and ``redact_text`` for messages that repeat a URI) is applied to everything we print or record;
- ``normalise_tracking_uri`` percent-encodes the userinfo, so a password holding ``/ ? # @ :`` reaches the
  server (requests and SQLAlchemy decode it) instead of breaking the URL; ``make_client`` and
  ``check_reachable`` both use it, so what is checked is what MLflow is given;
- ``check_reachable`` refuses, with one message and its fix, every URI MLflow 3.17 cannot use, before anything
  is opened.

Once connected, every writer's client is a ``ResilientClient``: it waits out a server that went away, up to a bound,
and then names the server (redacted), the outage and the fix.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

from tasks.adapters.errors import ConfigError, TrackingServerError

logger = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 5.0
DATABASE_ENGINES = ("postgresql", "mysql", "sqlite", "mssql")  # mlflow.store.db.db_types.DATABASE_ENGINES
# The schemes MLflow 3.17.2 registers for tracking (mlflow/tracking/_tracking_service/utils.py; a unit test
# compares): "" is a bare path, i.e. the file store. "uc" and "databricks-uc" are registered too, but only to
# raise "not supported" for tracking, so they are refused here.
TRACKING_SCHEMES = ("http", "https", *DATABASE_ENGINES, "file", "", "databricks")
ACCEPTED = ("http(s)://[USER:PASSWORD@]HOST:PORT[/PREFIX] (an mlflow server); sqlite:///PATH/mlflow.db; "
            "postgresql|mysql|mssql[+DRIVER]://USER:PASSWORD@HOST:PORT/DB; file:///PATH (with "
            "MLFLOW_ALLOW_FILE_STORE=true); databricks[://PROFILE]")
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite 3 database (sqlite.org/fileformat.html)
DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# the package that provides each SQLAlchemy driver (for the "pip install ..." in a message)
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "pg8000": "pg8000",
                   "pymysql": "PyMySQL", "mysqldb": "mysqlclient", "mysqlconnector": "mysql-connector-python",
                   "mariadbconnector": "mariadb", "pyodbc": "pyodbc", "pymssql": "pymssql"}
# how each driver is told to give up connecting (seconds); SQLAlchemy passes connect_args to the driver as is
CONNECT_TIMEOUT_ARG = {"psycopg2": "connect_timeout", "psycopg": "connect_timeout", "pg8000": "timeout",
                       "pymysql": "connect_timeout", "mysqldb": "connect_timeout", "mysqlconnector": "connection_timeout",
                       "pyodbc": "timeout", "pymssql": "login_timeout"}


def quiet_environment() -> None:
    """No telemetry and no progress bars from the stack (each library has its own switch)."""
    for key, value in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # MLflow prints "View run ... at: <tracking URI>" when a run ends; with credentials in the URI
        # (http://user:secret@host) that puts the secret in every log. The CLI prints its own, redacted, pointer.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }.items():
        os.environ.setdefault(key, value)


def quiet_joblib() -> None:
    """joblib counts physical cores (lscpu, /proc/cpuinfo) the first time scikit-learn sizes its threads; where that
    finds none (virtual machines, the model's confined process) it prints a warning and a traceback, then uses the
    logical cores, as auditlens means it to (LOKY_MAX_CPU_COUNT silences it only below the logical count). Counting
    once ahead caches the answer, and the later count is silent. Called where scikit-learn is imported anyway."""
    try:
        from joblib.externals.loky.backend.context import _count_physical_cores
    except ImportError:
        return
    _count_physical_cores()


def configure_http(timeout_s: int, max_retries: int) -> None:
    """MLflow's REST client retries with exponential backoff; bound it so a dead server fails in seconds, not minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


# --- taking a URI apart without trusting it ------------------------------------------------------------------
# urllib ends the authority at the first "/", "?" or "#", so a password holding one of them is cut in two (and
# half of it printed). Here the userinfo ends at the LAST "@" that is followed by something shaped like
# host[:port] and then the end, "/", "?" or "#": whatever the password holds stays on the secret side.
_HOST_AFTER_AT = re.compile(r"(?:\[[0-9A-Za-z:.%]*\]|[A-Za-z0-9._~%-]*)(?::\d*)?(?=[/?#]|$)")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>`]+")


@dataclass(frozen=True)
class _Parts:
    head: str  # "scheme://", "scheme:" or "" (a bare path)
    userinfo: str | None
    rest: str  # host[:port]/path, or the path
    query: str | None  # without the "?"
    fragment: str | None  # without the "#"

    def join(self, userinfo: str | None, query: str | None, fragment: str | None) -> str:
        return (self.head + (f"{userinfo}@" if userinfo is not None else "") + self.rest
                + (f"?{query}" if query is not None else "") + (f"#{fragment}" if fragment is not None else ""))


def _userinfo_end(body: str) -> int | None:
    ats = [i for i, char in enumerate(body) if char == "@"]
    shaped = [i for i in ats if _HOST_AFTER_AT.match(body, i + 1)]
    if shaped:
        return shaped[-1]
    # nothing host-like after any "@" (a bad port, a broken IPv6 literal): an "@" before the query still ends a
    # userinfo; one inside the query is a query value's, and is masked with it
    cut = min((body.find(c) for c in "?#" if c in body), default=len(body))
    before = [i for i in ats if i < cut]
    return before[-1] if before else None


def _split(uri: str) -> _Parts:
    marker = uri.find("://")
    if marker >= 0:
        head, body = uri[: marker + 3], uri[marker + 3 :]
    else:
        scheme = _SCHEME.match(uri)
        head, body = (scheme.group(), uri[scheme.end() :]) if scheme else ("", uri)
    if not head:  # a bare path (MLflow's file store): "?", "#" and "@" are characters of the path
        return _Parts("", None, body, None, None)
    userinfo = None
    if not body.startswith("/") and (end := _userinfo_end(body)) is not None:
        userinfo, body = body[:end], body[end + 1 :]
    body, has_fragment, fragment = body.partition("#")
    body, has_query, query = body.partition("?")
    return _Parts(head, userinfo, body, query if has_query else None, fragment if has_fragment else None)


def _mask_query(query: str) -> str:
    def mask(item: str) -> str:
        key, equals, value = item.partition("=")
        if not equals:
            return "***" if item else item  # a bare item may be a token on its own
        return f"{key}=***" if value else f"{key}="

    return "&".join(mask(item) for item in query.split("&"))


def redact(uri: object) -> str:
    """The URI without its secrets: the userinfo (everything before the last "@" of the authority), every query
    value and the fragment: ``http://user:p@ss/w@host/x?token=t`` -> ``http://***@host/x?token=***``.
    Never raises; an unparseable URI is redacted all the same."""
    try:
        parts = _split(uri if isinstance(uri, str) else str(uri))
        return parts.join("***" if parts.userinfo is not None else None,
                          _mask_query(parts.query) if parts.query is not None else None,
                          "***" if parts.fragment else parts.fragment)
    except Exception:  # noqa: BLE001 (this runs inside error handling: it must not fail)
        return "<tracking URI withheld>"


def _secrets(uri: str) -> set[str]:
    """Every spelling in which a URI's secrets may show up in a message."""
    parts = _split(uri)
    found: set[str] = set()
    if parts.userinfo:
        user, colon, password = parts.userinfo.partition(":")
        secret = password if colon else user  # a lone user is a token (https://TOKEN@host)
        for text in (parts.userinfo, secret):
            found |= {text, unquote(text), quote(unquote(text), safe="")}
        decoded = f"{unquote(user)}:{unquote(password)}"
        found |= {decoded, base64.b64encode(decoded.encode()).decode()}  # an echoed Authorization header
    for item in (parts.query or "").split("&"):
        value = item.partition("=")[2] or ("" if "=" in item else item)
        found |= {value, unquote(value)}
    if parts.fragment:
        found.add(parts.fragment)
    return {text for text in found if len(text) >= 3}  # shorter ones would blank ordinary words; URLs still go


def redact_text(text: object, *uris: str) -> str:
    """``text`` (an exception's message, a log line) without the secrets of ``uris`` in any spelling (as written,
    percent-encoded, decoded, base64 in an Authorization header), and every URL in it redacted."""
    try:
        text = str(text)
        for uri in uris:
            if not uri:
                continue
            for form in sorted({uri, normalise_tracking_uri(uri)}, key=len, reverse=True):
                text = text.replace(form, redact(form))
            for secret in sorted(_secrets(uri), key=len, reverse=True):
                text = text.replace(secret, "***")
        return _URL_IN_TEXT.sub(lambda match: redact(match.group()), text)
    except Exception:  # noqa: BLE001
        return "<message withheld: it may hold credentials>"


def normalise_tracking_uri(uri: str) -> str:
    """The URI with its user and password percent-encoded, as MLflow needs it: requests (MLflow's REST client)
    and SQLAlchemy decode the userinfo, but an unencoded "/", "?" or "#" ends the authority first (requests:
    "Invalid url"; urllib: "nonnumeric port"). Already-encoded parts stay as they are."""
    parts = _split(uri)
    scheme = parts.head.removesuffix("://").lower().partition("+")[0]
    if parts.userinfo is None or not parts.head.endswith("://") or scheme not in ("http", "https", *DATABASE_ENGINES):
        return uri
    user, colon, password = parts.userinfo.partition(":")
    encoded = quote(unquote(user), safe="") + (f":{quote(unquote(password), safe='')}" if colon else "")
    return parts.join(encoded, parts.query, parts.fragment)


# --- what MLflow can use --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrackingTarget:
    kind: str  # http, sqlite, database, file, databricks
    uri: str  # the normalised URI: what MLflow is given
    scheme: str
    driver: str = ""
    path: Path | None = None  # sqlite: the database file; file: the store's folder (as given, maybe relative)


def _refuse(problem: str, fix: str = f"use one of: {ACCEPTED}") -> ConfigError:
    return ConfigError(problem, fix)


def validate_tracking_uri(uri: str) -> TrackingTarget:
    """The store a tracking URI names, or ConfigError when MLflow cannot use it as written. No network."""
    if not isinstance(uri, str) or not uri:
        raise _refuse("the MLflow tracking URI is empty",
                      f"set --tracking-uri, mlflow.tracking_uri in the config or MLFLOW_TRACKING_URI to one of: {ACCEPTED}")
    shown = redact(uri)
    if uri != uri.strip():
        raise _refuse(f"the MLflow tracking URI {shown!r} has spaces around it", "remove them")
    scheme_match = _SCHEME.match(uri)
    scheme = scheme_match.group()[:-1].lower() if scheme_match else ""
    if re.fullmatch(r"[A-Za-z0-9.\-]+:\d+(/.*)?", uri):  # localhost:5000, 127.0.0.1:5000
        raise _refuse(f"the MLflow tracking URI {shown} has no scheme", f"write http://{shown} (or https://)")
    base, _, driver = scheme.partition("+")
    if uri in ("databricks-uc", "uc") or scheme in ("databricks-uc", "uc"):
        raise _refuse(f"{shown} is a Unity Catalog registry URI; MLflow does not track runs to Unity Catalog",
                      "use the Databricks workspace (databricks or databricks://PROFILE) as the tracking URI")
    if uri == "databricks" or scheme == "databricks":
        return TrackingTarget("databricks", uri, "databricks")
    if scheme in ("http", "https"):
        return _validate_http(uri, scheme)
    if base in DATABASE_ENGINES:
        if "+" in driver:
            raise _refuse(f"{shown}: the scheme {scheme!r} names more than one driver",
                          f"a database scheme takes at most one +DRIVER, e.g. {base}+{driver.partition('+')[0]}://...")
        return _validate_database(uri, scheme, base, driver)
    if scheme in ("file", ""):
        return _validate_file(uri, scheme)
    hint = " (SQLAlchemy dropped the postgres:// alias: write postgresql://)" if scheme == "postgres" else ""
    raise _refuse(f"MLflow cannot track to a {scheme!r} URI: {shown}{hint}", f"use one of: {ACCEPTED}")


def _validate_http(uri: str, scheme: str) -> TrackingTarget:
    from urllib.parse import urlsplit

    normalised = normalise_tracking_uri(uri)
    shown = redact(uri)
    parts = _split(normalised)
    try:
        split = urlsplit(normalised)
        port = split.port
    except ValueError as exc:
        reason = str(exc)
        if reason.startswith("Port"):  # "Port out of range 0-65535", "Port could not be cast to integer ..."
            raise _refuse(f"the port of {shown} is not a number from 1 to 65535 ({reason})",
                          "write http(s)://HOST:PORT with the server's port") from None
        raise _refuse(f"{shown} is not a valid URL ({reason})", "write http(s)://HOST:PORT") from None
    if not split.hostname:
        raise _refuse(f"the MLflow tracking URI {shown} has no host", f"write {scheme}://HOST:PORT, e.g. {scheme}://127.0.0.1:5000")
    if port == 0:
        raise _refuse(f"the port of {shown} is 0", "write the server's port")
    if parts.query is not None or parts.fragment is not None:
        what = "a query" if parts.query is not None else "a fragment"
        raise _refuse(
            f"the MLflow tracking URI {shown} has {what}: MLflow appends its API paths to the tracking URI, so "
            "the server would never see them (nor a token in it)",
            "remove it; give a token with MLFLOW_TRACKING_TOKEN, a user and password in the URI (percent-encoded "
            "or not) or with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD",
        )
    return TrackingTarget("http", normalised, scheme)


def _validate_database(uri: str, scheme: str, base: str, driver: str) -> TrackingTarget:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    normalised = normalise_tracking_uri(uri)
    shown = redact(uri)
    try:
        url = make_url(normalised)
        dialect = url.get_dialect()
    except NoSuchModuleError:
        raise _refuse(f"SQLAlchemy has no driver {driver!r} for {base} ({shown})",
                      f"write {base}://... for its default driver, or name an installed one: "
                      f"{', '.join(d for d in DRIVER_PACKAGES if _driver_of(d, base))}") from None
    except (ArgumentError, ValueError) as exc:
        raise _refuse(f"{shown} is not a valid database URI ({redact_text(exc, uri)})",
                      f"write {base}[+DRIVER]://USER:PASSWORD@HOST:PORT/DB") from None
    if getattr(dialect, "is_async", False):
        raise _refuse(f"{shown} names the asynchronous driver {url.get_driver_name()!r}; MLflow's SQL store is synchronous",
                      f"name a synchronous driver, e.g. {base}+{_sync_example(base)}://...")
    if base != "sqlite":
        return TrackingTarget("database", normalised, scheme, url.get_driver_name())
    if url.database in (None, "", ":memory:") or (url.query.get("mode") == "memory"):
        raise _refuse(f"{shown} is a SQLite database in memory: the audit would vanish with the process",
                      "write sqlite:////ABSOLUTE/PATH/mlflow.db (four slashes) or sqlite:///RELATIVE/PATH/mlflow.db")
    return TrackingTarget("sqlite", normalised, scheme, url.get_driver_name(), Path(url.database))


def _driver_of(driver: str, base: str) -> bool:
    return {"postgresql": driver in ("psycopg2", "psycopg", "pg8000"),
            "mysql": driver in ("pymysql", "mysqldb", "mysqlconnector", "mariadbconnector"),
            "mssql": driver in ("pyodbc", "pymssql")}.get(base, False)


def _sync_example(base: str) -> str:
    return {"postgresql": "psycopg2", "mysql": "pymysql", "mssql": "pyodbc", "sqlite": "pysqlite"}[base]


def _validate_file(uri: str, scheme: str) -> TrackingTarget:
    from urllib.parse import urlsplit

    from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE

    shown = redact(uri)
    if scheme == "file":
        host, _, path_part = _split(uri).rest.partition("/")  # without any userinfo
        if host not in ("", "localhost"):
            raise _refuse(f"{shown} names the host {host!r}: a file: URI is a local path",
                          f"write file:///{host}/{path_part} (three slashes) for the local folder")
        path = Path(unquote(urlsplit(normalise_tracking_uri(uri)).path))
    else:
        path = Path(uri)
    try:
        allowed = MLFLOW_ALLOW_FILE_STORE.get()
    except ValueError:
        raise _refuse(f"MLFLOW_ALLOW_FILE_STORE={os.environ.get('MLFLOW_ALLOW_FILE_STORE')!r} is neither true nor false",
                      "set it to true or false") from None
    if not allowed:
        raise _refuse(
            f"{shown} is MLflow's file store, which is in maintenance mode in MLflow 3: MLflow refuses to use it",
            "use a database store: sqlite:///PATH/mlflow.db (`mlflow migrate-filestore` moves existing runs), "
            "or set MLFLOW_ALLOW_FILE_STORE=true to keep the file store",
        )
    return TrackingTarget("file", uri, scheme, path=path)


# --- reaching it ----------------------------------------------------------------------------------------------
def check_reachable(tracking_uri: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Fail fast, with the fix, when MLflow cannot use the store: a URI it cannot parse or does not support, an
    http(s) server that does not answer /health with 200, a SQLite file that is not a database, a database
    server that cannot be reached."""
    target = validate_tracking_uri(tracking_uri)
    {"http": _check_http, "sqlite": _check_sqlite, "database": _check_database, "file": _check_file,
     "databricks": lambda target, uri, timeout_s: None}[target.kind](target, tracking_uri, timeout_s)  # fmt: skip


def _chain(exc: BaseException) -> list[BaseException]:
    """An exception and what caused it, through urllib3's MaxRetryError.reason too."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is other for other in seen):
        seen.append(exc)
        reason = getattr(exc, "reason", None)
        exc = exc.__cause__ or exc.__context__ or (reason if isinstance(reason, BaseException) else None)
    return seen


def _host_port(target: TrackingTarget) -> str:
    from urllib.parse import urlsplit

    split = urlsplit(target.uri)
    port = split.port or (443 if target.scheme == "https" else 80)
    host = f"[{split.hostname}]" if ":" in (split.hostname or "") else split.hostname
    return f"{host}:{port}"


# /health answers without credentials (on MLflow's basic-auth app too); this cheap read of the API is what
# tells refused credentials apart (401/403) before an audit starts
API_PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"
ELSEWHERE = "or point --tracking-uri / mlflow.tracking_uri / MLFLOW_TRACKING_URI at a running one"


def _check_http(target: TrackingTarget, uri: str, timeout_s: float) -> None:
    for path in ("/health", API_PROBE):
        status, reason = _get(target, uri, path, timeout_s)
        if status != 200:
            _refuse_answer(uri, path.partition("?")[0], status, reason)


def _get(target: TrackingTarget, uri: str, path: str, timeout_s: float) -> tuple[int, str]:
    """GET ``path`` the way MLflow's client will (RestStore passes the tracking URI to this same function):
    requests takes the userinfo off the URL and sends it as HTTP basic auth; TLS, token and user settings come
    from the same MLFLOW_TRACKING_* variables. One try, ``timeout_s`` to connect and to answer."""
    import ssl

    import requests
    import urllib3.exceptions
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        response = http_request(get_default_host_creds(target.uri), path, "GET", max_retries=0,
                                timeout=timeout_s, raise_on_status=False)
        return response.status_code, response.reason or ""
    except Exception as exc:  # noqa: BLE001 (MLflow wraps every transport error in MlflowException)
        causes = _chain(exc)
        kinds = tuple(type(cause) for cause in causes)

        def caused_by(*types: type) -> bool:
            return any(issubclass(kind, types) for kind in kinds)

        # urllib3 2 makes NewConnectionError (refused, unresolvable) a subclass of ConnectTimeoutError: ask for
        # the refusal and the name first, and for a connect timeout by its exact type
        if caused_by(ConnectionRefusedError):
            problem = f"is not reachable (connection refused: nothing listens on {_host_port(target)})"
            fix = f"start it (mlflow server --host 127.0.0.1 --port PORT ...) {ELSEWHERE}"
        elif caused_by(socket.gaierror, urllib3.exceptions.NameResolutionError):
            problem = f"is not reachable (the host name of {_host_port(target)} does not resolve)"
            fix = f"check the host name; {ELSEWHERE}"
        elif any(kind in (urllib3.exceptions.ConnectTimeoutError, requests.exceptions.ConnectTimeout) for kind in kinds):
            problem = f"did not accept a connection within {timeout_s:g} s ({_host_port(target)})"
            fix = f"check the host and port, and that no firewall drops the connection; {ELSEWHERE}"
        elif caused_by(urllib3.exceptions.ReadTimeoutError, requests.exceptions.ReadTimeout, TimeoutError):
            problem = f"did not answer within {timeout_s:g} s (GET {path.partition('?')[0]})"
            fix = f"the server accepts connections but does not answer: is it hung or overloaded? Read its log; {ELSEWHERE}"
        elif caused_by(ssl.SSLError, requests.exceptions.SSLError):
            problem = f"refused the TLS handshake ({redact_text(causes[-1], uri, target.uri)})"
            fix = ("give the server's CA with MLFLOW_TRACKING_SERVER_CERT_PATH (or REQUESTS_CA_BUNDLE), or use "
                   "http:// if the server does not speak TLS")
        else:
            problem = f"is not reachable ({type(causes[-1]).__name__}: {redact_text(causes[-1], uri, target.uri)})"
            fix = f"start it (mlflow server --host 127.0.0.1 --port PORT ...) {ELSEWHERE}"
        raise TrackingServerError(f"MLflow tracking server {redact(uri)} {problem}", fix) from None


def _refuse_answer(uri: str, path: str, status: int, reason: str) -> None:
    answered = f"answered {status} {reason}".rstrip() + f" on {path}"
    credentials = _split(uri).userinfo is not None or bool(os.environ.get("MLFLOW_TRACKING_USERNAME"))
    if status == 401:
        problem = f"{answered}: it {'refused the credentials' if credentials else 'wants credentials'}"
        fix = ("give the right user and password, in the URI (http://USER:PASSWORD@HOST:PORT) or with "
               "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or a token with MLFLOW_TRACKING_TOKEN)")
    elif status == 403:
        problem = f"{answered}: it refuses this client"
        fix = ("check the user's permissions; an mlflow server also answers 403 to a Host name it does not allow: "
               "start it with --allowed-hosts 'HOST:*'")
    elif status == 404:
        problem = f"{answered}: no MLflow tracking server answers there"
        fix = "check the host, the port and the path prefix of the URI (a server under a prefix: http://HOST/PREFIX)"
    elif status >= 500:
        problem = f"{answered}: the server (or a proxy in front of it) is failing"
        fix = f"read the server's log and restart it, {ELSEWHERE}"
    else:
        problem = answered
        fix = f"is this an MLflow tracking server? {ELSEWHERE}"
    raise TrackingServerError(f"MLflow tracking server {redact(uri)} {problem}", fix)


def _shown_path(path: Path) -> Path:
    """SQLite and MLflow open a relative path from the working folder: say which file that is."""
    return path if path.is_absolute() else Path.cwd() / path


def _check_sqlite(target: TrackingTarget, uri: str, timeout_s: float) -> None:
    path = _shown_path(target.path)
    folder = path.parent
    store = f"the SQLite tracking store {redact(uri)}"
    if not folder.is_dir():
        tilde = " (a URI does not expand ~: write the absolute path)" if "~" in target.path.parts[:1] else ""
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise TrackingServerError(f"the folder of {store} {what} ({folder})",
                                  f"create the folder or fix the tracking URI{tilde}")
    if not path.exists():
        if not os.access(folder, os.W_OK | os.X_OK):
            raise TrackingServerError(f"MLflow cannot create {store}: no permission to write in {folder}",
                                      "give the user write permission there, or choose another folder")
        return  # MLflow creates the database
    if path.is_dir():
        raise TrackingServerError(f"{path} is a folder, not a SQLite database ({store})",
                                  "point the URI at the database file inside it, e.g. .../mlflow.db")
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise TrackingServerError(f"{store} cannot be read ({exc.strerror})", f"check the permissions of {path}") from None
    if header and header != SQLITE_HEADER:
        raise TrackingServerError(
            # not what it starts with: a URI pointed at the wrong file (~/.netrc) must not print it
            f"{path} is not a SQLite database (its first bytes are not SQLite's header) ({store})",
            "point the URI at an MLflow SQLite database, or at a new file name (MLflow creates it)",
        )
    if not os.access(path, os.W_OK):
        raise TrackingServerError(f"{store} is read-only ({path})", "give the user write permission on the file")


def _check_file(target: TrackingTarget, uri: str, timeout_s: float) -> None:
    path = _shown_path(target.path)
    if path.exists() and not path.is_dir():
        raise TrackingServerError(f"the file store {redact(uri)} is a file, not a folder ({path})",
                                  "point the URI at a folder (MLflow creates it)")


def _check_database(target: TrackingTarget, uri: str, timeout_s: float) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    url = make_url(target.uri)
    base = target.scheme.partition("+")[0]
    store = f"the {base} tracking store {redact(uri)}"
    dsn = base == "mssql" and target.driver == "pyodbc" and url.port is None  # an ODBC DSN, not a host
    if url.host and not dsn:
        # a plain TCP connect first: it tells "nothing listens" apart from a driver or login problem, and needs
        # no driver
        port = url.port or DEFAULT_PORTS[base]
        try:
            socket.create_connection((url.host, port), timeout=timeout_s).close()
        except ConnectionRefusedError:
            raise TrackingServerError(f"{store} is not reachable (connection refused: nothing listens on {url.host}:{port})",
                                      "start the database server, or fix the host and port in the URI") from None
        except socket.gaierror:
            raise TrackingServerError(f"{store} is not reachable (the host name {url.host!r} does not resolve)",
                                      "check the host name in the URI") from None
        except TimeoutError:
            raise TrackingServerError(f"{store} did not accept a connection within {timeout_s:g} s ({url.host}:{port})",
                                      "check the host and port, and that no firewall drops the connection") from None
        except OSError as exc:
            raise TrackingServerError(f"{store} is not reachable ({exc.strerror or exc})",
                                      "check the host and port in the URI") from None
    dialect = url.get_dialect()
    try:
        dialect.import_dbapi()
    except ImportError:
        package = DRIVER_PACKAGES.get(target.driver, target.driver)
        raise ConfigError(f"the Python driver {target.driver!r} for {store} is not installed",
                          f"pip install {package} (into this environment), or name an installed driver: {base}+DRIVER://...") from None
    argument = CONNECT_TIMEOUT_ARG.get(target.driver)
    engine = create_engine(url, poolclass=NullPool, connect_args={argument: max(1, round(timeout_s))} if argument else {})
    try:
        with engine.connect():
            pass
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        raise TrackingServerError(f"{store} refused the connection ({redact_text(reason[0] if reason else exc, uri, target.uri)})",
                                  "check the user, password, database name and that the server accepts this client") from None
    finally:
        engine.dispose()


def make_client(tracking_uri: str):
    """An MlflowClient on the normalised URI (userinfo percent-encoded), for tracking and the registry alike."""
    from mlflow import MlflowClient

    uri = validate_tracking_uri(tracking_uri).uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def clipped(value: object, limit: int = 5000) -> str:
    """``value`` as text MLflow accepts as a tag (or, with ``limit=6000``, a param) value: longer text is cut, with "..."."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_outage(exc: BaseException) -> bool:
    """A failure to reach the tracking server (as opposed to a request the server refused)."""
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return any(marker in text for marker in ("Max retries exceeded", "Connection refused", "Failed to establish",
                                             "RemoteDisconnected", "Connection aborted", "TEMPORARILY_UNAVAILABLE"))


class ResilientClient:
    """MlflowClient whose calls wait out a tracking-server outage, with exponential backoff, up to a bound."""

    def __init__(self, client: object, outage_timeout_s: float, first_delay_s: float = 0.5, max_delay_s: float = 10.0) -> None:
        self._client, self._bound, self._first, self._max = client, outage_timeout_s, first_delay_s, max_delay_s

    @classmethod
    def connect(cls, tracking_uri: str, outage_timeout_s: float = 120.0) -> ResilientClient:
        return cls(make_client(tracking_uri), outage_timeout_s)

    @property
    def outage_timeout_s(self) -> float:
        return self._bound

    def __getattr__(self, name: str) -> object:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args: object, **kwargs: object) -> object:
            deadline, delay = time.monotonic() + self._bound, self._first
            while True:
                try:
                    return attribute(*args, **kwargs)
                except Exception as exc:
                    if not is_outage(exc):
                        raise
                    if time.monotonic() + delay > deadline:
                        raise TrackingServerError(
                            f"MLflow tracking server {redact(str(self._client.tracking_uri))} unreachable for "
                            f"{self._bound:g} s while calling {name} ({type(exc).__name__})",
                            "bring the server back (the audit's run is ended FAILED or reaped by the watcher once it "
                            "answers again), or raise mlflow.outage_timeout_s",
                        ) from None
                    logger.warning("MLflow unreachable during %s; retrying in %.1f s", name, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, self._max)

        return call
