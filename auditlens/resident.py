"""The resident auditor: one long-lived process that `auditlens audit` hands its audits to.

A fresh `auditlens audit` spends 4 to 5 s before its first audit starts: Python imports MLflow, Prefect, pandas,
scikit-learn and every audit class of the plan, checks the Prefect server, and starts the model's process. The
resident auditor (`auditlens resident`) pays that once. The command then only connects to it, sends what it was asked
(model, config, tracking URI, --no-cache, its folder) and draws the progress and the verdict the resident sends back,
with the same output and exit codes as an audit run in the command's own process.

What it serves, and what it refuses (the command then audits in its own process, and says why):
- only its own user: the socket lives in a folder only that user can open (``$AUDITLENS_STATE_DIR/resident/``,
  mode 0700), and each connection's peer is checked (SO_PEERCRED);
- only the code it runs: a fingerprint of auditlens's sources, the interpreter and its installed packages; an edit or
  an upgrade after it started refuses it (stop it and start it again);
- only the environment it was started with: every variable but a terminal's own (``VOLATILE``) must be equal, so
  credentials, tracking and Prefect settings are exactly the command's. The command sends digests, never values;
  a refusal names the variables that differ.

The model stays where it always runs: in a confined model process with no credentials (``model_worker``), one per
audit, started ahead while the resident waits. Audits run one at a time, in the order they came, in the resident's
main thread; others wait. A command that goes away (Ctrl-C) leaves its audit to finish and be recorded. The resident
stops on ``auditlens resident --stop``, on SIGTERM or Ctrl-C (an audit under way is ended FAILED, as in a command),
or after ``--idle-minutes`` without an audit.

This module's client half imports nothing heavy: the command connects before importing MLflow or Prefect.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import socket
import struct
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

SOURCES = ("auditlens", "audits", "tasks", "flows")  # the packages whose files make the code fingerprint
ROOT = Path(__file__).resolve().parents[1]
# a terminal's or a shell's own variables: they differ between two windows of the same session and change nothing in
# an audit (the command, not the resident, draws the output)
VOLATILE = frozenset({
    "PWD", "OLDPWD", "SHLVL", "_", "COLUMNS", "LINES", "TERM", "COLORTERM", "TERM_PROGRAM", "TERM_PROGRAM_VERSION",
    "TERM_SESSION_ID", "TMUX", "TMUX_PANE", "STY", "WINDOW", "WINDOWID", "SSH_TTY", "SSH_CLIENT", "SSH_CONNECTION",
    "DISPLAY", "PS1", "PS2", "PROMPT_COMMAND", "LS_COLORS", "HISTFILE", "HISTSIZE", "HISTFILESIZE", "HISTCONTROL",
    "MAIL", "LESSOPEN", "LESSCLOSE", "XDG_SESSION_ID", "XDG_VTNR", "FORCE_COLOR", "NO_COLOR", "PYTEST_CURRENT_TEST",
})  # fmt: skip
SOCKET_NAME = "auditor.sock"
MAX_SOCKET_PATH = 107  # sun_path's 108 bytes, with its terminating zero
CONNECT_TIMEOUT_S = 2.0


# --- what must match ------------------------------------------------------------------------------------------------
def resident_dir() -> Path:
    """The resident's folder: the socket and, when detached, its log, in auditlens's state folder."""
    from tasks.adapters.state import state_dir

    return state_dir() / "resident"


def socket_path() -> Path:
    return resident_dir() / SOCKET_NAME


def refuse_if_running() -> None:
    """One resident per state folder: ConfigError when one answers on the socket."""
    from tasks.adapters.errors import ConfigError

    answer = ask({"op": "ping"}, timeout=5)
    if answer is not None:
        raise ConfigError(f"a resident auditor already runs (pid {answer['pid']}) on {socket_path()}",
                          "use it, or stop it first: auditlens resident --stop")


def private_resident_dir() -> Path:
    """``resident_dir``, made if missing, open to its user only; refused when another user owns it."""
    from tasks.adapters.errors import ConfigError

    folder = resident_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if folder.stat().st_uid != os.getuid():
        raise ConfigError(f"{folder} belongs to another user", "set AUDITLENS_STATE_DIR to a folder of your own")
    os.chmod(folder, 0o700)
    return folder


def code_fingerprint() -> str:
    """The code a process runs: the interpreter, each source file's path, size and modification time, and the
    installed packages (a site-packages folder's time changes with every install or removal). About 200 stats."""
    import site

    digest = hashlib.sha256(f"{sys.executable}\0{sys.version}\0{sys.prefix}".encode())
    for package in SOURCES:
        for path in sorted((ROOT / package).rglob("*.py")):
            stat = path.stat()
            digest.update(f"\0{path.relative_to(ROOT)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    for folder in sorted(set(site.getsitepackages() + [site.getusersitepackages()])):
        try:
            digest.update(f"\0{folder}:{os.stat(folder).st_mtime_ns}".encode())
        except OSError:
            digest.update(f"\0{folder}:absent".encode())
    return digest.hexdigest()[:20]


def environment_digests(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Each variable but the volatile ones, as a digest of its value: compared, never sent in the clear."""
    environ = os.environ if environ is None else environ
    return {name: hashlib.sha256(value.encode()).hexdigest()[:20] for name, value in environ.items() if name not in VOLATILE}


def environment_differences(mine: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The names of the variables set in one environment and not the other, or set to different values."""
    return sorted(name for name in set(mine) | set(theirs) if mine.get(name) != theirs.get(name))


# --- the protocol: one JSON object per line -------------------------------------------------------------------------
def send(connection: socket.socket, message: dict) -> None:
    connection.sendall((json.dumps(message, default=str) + "\n").encode())


def receive(stream) -> dict | None:
    line = stream.readline()
    return json.loads(line) if line else None


def event_message(event) -> dict:
    """A tasks/progress.py event as a message (its class name and fields)."""
    return {"event": type(event).__name__, "fields": asdict(event)}


def event_from(message: dict):
    from tasks import progress

    kind = {"Plan": progress.Plan, "Phase": progress.Phase, "Started": progress.Started, "Finished": progress.Finished}[message["event"]]
    fields = dict(message["fields"])
    if kind is progress.Plan:
        fields["ids"] = tuple(fields["ids"])
    return kind(**fields)


# --- the command's side ----------------------------------------------------------------------------------------------
def _connect(timeout: float = CONNECT_TIMEOUT_S) -> socket.socket | None:
    path = socket_path()
    if not path.exists():
        return None
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        connection.connect(str(path))
    except OSError:  # a socket left by a resident that died: nobody listens
        connection.close()
        return None
    return connection


def ask(request: dict, timeout: float = 10.0) -> dict | None:
    """One request answered with one message (ping, stop); None when no resident answers."""
    connection = _connect()
    if connection is None:
        return None
    with connection:
        connection.settimeout(timeout)
        try:
            send(connection, request)
            return receive(connection.makefile("r", encoding="utf-8"))
        except (OSError, ValueError):
            return None


def audit_by_resident(model: str, config: Path, tracking_uri: str | None, no_cache: bool) -> tuple[dict, str] | None:
    """Hand the audit to the resident auditor and draw what it sends back; returns (summary, the UI hint). None when no
    resident runs, or when it refused this command (the reason is printed): the caller audits in its own process. Bad
    input and a failed audit print their message and exit with the code an audit in this process would give."""
    connection = _connect()
    if connection is None:
        return None
    from auditlens.common import report_crash, report_failure
    from auditlens.console import console, errors
    from auditlens.progress import display_for
    from tasks import progress

    request = {"op": "audit", "code": code_fingerprint(), "environment": environment_digests(), "uid": os.getuid(),
               "cwd": os.getcwd(), "model": model, "config": str(config), "tracking_uri": tracking_uri, "no_cache": no_cache}
    with connection:
        try:
            send(connection, request)
            connection.settimeout(None)  # an audit takes what it takes; the resident ends or closes the connection
            stream = connection.makefile("r", encoding="utf-8")
            first = receive(stream)
            if first is not None and "queued" in first:
                if first["queued"]:
                    errors.print(f"waiting for the resident auditor: {first['queued']} audit(s) before this one",
                                 highlight=False, markup=False, soft_wrap=True)
                first = receive(stream)
        except OSError:
            first = None
        if first is None or "refused" in first:
            reason = first["refused"] if first else "it did not answer"
            errors.print(f"note: the resident auditor did not take this audit: {reason}; auditing in this process",
                         highlight=False, markup=False, soft_wrap=True)
            return None
        accepted = first
        with display_for(console) as display:
            message = accepted
            while message is not None:
                if "event" in message:
                    progress.emit(event_from(message))
                elif "done" in message:
                    break
                elif "error" in message:
                    display.stop(failed=True)
                    report_failure(message["error"], message.get("run_id"), message["exit"])
                elif "crash" in message:
                    display.stop(failed=True)
                    report_crash(message["crash"], message.get("run_id"))
                try:
                    message = receive(stream)
                except OSError:
                    message = None
            if message is None:
                display.stop(failed=True)
                report_crash(f"the resident auditor (pid {accepted.get('pid')}) stopped during the audit; its log: "
                             f"{accepted.get('log') or 'its terminal'}", None)
    console.print(f"Audited by the resident auditor (pid {accepted['pid']}); --no-resident audits in this process",
                  soft_wrap=True, highlight=False)
    return message["done"], message["hint"]


# --- the resident's side ---------------------------------------------------------------------------------------------
class Resident:
    """The server: a thread accepts connections and answers ping and stop at once; audits queue for the main thread.
    ``warm``: modules its model processes import while they wait (data_quality's Great Expectations)."""

    WARM = ("great_expectations",)

    def __init__(self, environment: dict[str, str], idle_s: float, log: Path | None = None) -> None:
        self.idle_s, self.log = idle_s, log
        self.code, self.environment = code_fingerprint(), environment  # as it was before the command's own setup
        self.started, self.served, self.busy_since = time.time(), 0, None
        self.queue: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.path = socket_path()
        self.listener: socket.socket | None = None
        # the model's threads, as the last audit's settings said; before any, the default plan's (many audits, the
        # default lanes), so that a spare started now serves a first audit of a default configuration
        from tasks.adapters.audit_pool import lane_threads

        self.threads: int | None = lane_threads(None, 1000)
        self._inode: int | None = None

    # the socket
    def bind(self) -> None:
        from tasks.adapters.errors import ConfigError

        if len(os.fsencode(str(self.path))) > MAX_SOCKET_PATH:
            raise ConfigError(f"the resident auditor's socket path is longer than a Unix socket allows: {self.path}",
                              "set AUDITLENS_STATE_DIR to a shorter folder")
        private_resident_dir()
        refuse_if_running()
        self.path.unlink(missing_ok=True)  # left by one that died
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(16)
        self.listener, self._inode = listener, self.path.stat().st_ino

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        try:
            if self._inode is not None and self.path.stat().st_ino == self._inode:  # not a successor's socket
                self.path.unlink()
        except OSError:
            pass

    def status(self) -> dict:
        return {"pid": os.getpid(), "started": self.started, "served": self.served, "busy_since": self.busy_since,
                "waiting": self.queue.qsize(), "idle_s": self.idle_s, "code": self.code, "log": str(self.log or "")}

    # the accepting thread
    def accept_forever(self) -> None:
        while True:  # until the listener is closed: a ping after --stop is still answered while an audit ends
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                self._take(connection)
            except Exception:  # noqa: BLE001 - one bad client never stops the resident
                connection.close()

    def _take(self, connection: socket.socket) -> None:
        uid = struct.unpack("3i", connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid != os.getuid():
            connection.close()
            return
        connection.settimeout(10)
        request = receive(connection.makefile("r", encoding="utf-8"))
        op = (request or {}).get("op")
        if op == "ping":
            send(connection, self.status())
            connection.close()
        elif op == "stop":
            self.stopping.set()
            send(connection, {"stopping": True, **self.status()})
            connection.close()
            self.queue.put(None)
        elif op == "audit":
            refusal = self.refusal(request)
            if refusal:
                send(connection, {"refused": refusal})
                connection.close()
            else:
                connection.settimeout(None)
                send(connection, {"queued": self.queue.qsize() + (self.busy_since is not None)})
                self.queue.put((connection, request))
        else:
            connection.close()

    def refusal(self, request: dict) -> str | None:
        if request.get("code") != self.code:
            return ("it runs other code than this command (auditlens or its packages changed since it started): "
                    "restart it with auditlens resident --stop, then auditlens resident --detach")
        differ = environment_differences(self.environment, request.get("environment") or {})
        if differ:
            shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
            return f"it was started with another environment (these variables differ: {shown})"
        return None

    # the main thread
    def serve(self) -> None:
        if self.listener is None:
            self.bind()
        threading.Thread(target=self.accept_forever, name="resident-accept", daemon=True).start()
        self._start_spare()
        try:
            while not self.stopping.is_set():
                try:
                    item = self.queue.get(timeout=self.idle_s)
                except queue.Empty:
                    print(f"resident auditor: no audit for {self.idle_s:g} s, stopping", flush=True)
                    break
                if item is None:
                    break
                self.run(*item)
        finally:
            self.stopping.set()
            self.close()
            self._refuse_queued()

    def _refuse_queued(self) -> None:
        while not self.queue.empty():
            item = self.queue.get_nowait()
            if item is not None:
                connection, _ = item
                try:
                    send(connection, {"refused": "it stopped before this audit's turn"})
                finally:
                    connection.close()

    def run(self, connection: socket.socket, request: dict) -> None:
        """One audit, as the command would run it in its own process, its progress and outcome sent back."""
        from auditlens.running import AuditCrashed, run_checked_audit
        from auditlens.console import ui_hint
        from tasks import progress
        from tasks.adapters.errors import AuditlensError
        from tasks.adapters.model_worker import model_threads
        from tasks.adapters.tracking import redact_text

        gone = False

        def reply(message: dict) -> None:
            nonlocal gone
            if gone:
                return
            try:
                send(connection, message)
            except OSError:  # the command went away: the audit goes on and is recorded
                gone = True

        self.busy_since = time.time()
        here, accepted = os.getcwd(), False
        print(f"resident auditor: auditing {request['model']} with {request['config']} (from {request['cwd']})", flush=True)
        try:
            try:
                os.chdir(request["cwd"])
            except OSError as exc:
                reply({"refused": f"it cannot work in the command's folder ({exc})"})
                return
            reply({"accepted": True, **self.status()})
            accepted = True
            with progress.listen(lambda event: reply(event_message(event))):
                try:
                    summary, uri, loaded = run_checked_audit(request["model"], Path(request["config"]),
                                                             request["tracking_uri"], bool(request["no_cache"]), prestart=False)
                except AuditlensError as exc:
                    reply({"error": redact_text(str(exc)), "run_id": getattr(exc, "audit_run_id", None),
                           "exit": getattr(exc, "exit_code", 1)})
                except AuditCrashed as exc:
                    reply({"crash": exc.text, "run_id": exc.run_id})
                except Exception as exc:  # noqa: BLE001 - a defect before the flow: that command fails, the resident goes on
                    reply({"crash": f"{type(exc).__name__}: {redact_text(str(exc))}", "run_id": None})
                else:
                    reply({"done": summary, "hint": ui_hint(uri, summary)})
                    self.threads = model_threads(loaded)  # the next spare's, as this audit's settings said
        except BaseException as exc:  # SIGTERM or Ctrl-C on the resident: the flow ended its run FAILED; say so
            run_id = getattr(exc, "audit_run_id", None)
            reply({"crash": f"the resident auditor was stopped ({type(exc).__name__})", "run_id": run_id})
            raise
        finally:
            os.chdir(here)
            connection.close()
            self.served += accepted
            self.busy_since = None
            print(f"resident auditor: done ({self.served} served)", flush=True)
        self._start_spare()

    def _start_spare(self) -> None:
        """A model process for the next audit, started while none runs (started during one, it would take a core from
        it): it imports its libraries now and is confined, and given the model, by that audit's first request."""
        from tasks.adapters.model_worker import prestart

        prestart(self.WARM, threads=self.threads, pool=True)


def start_detached(idle_minutes: float, wait_s: float = 120.0) -> dict:
    """Start a resident auditor in the background (a new session, its output to ``resident.log``) and wait until it
    answers; returns its status. Raises ConfigError with the log's end when it does not come up."""
    import subprocess

    from tasks.adapters.errors import ConfigError

    refuse_if_running()
    log = private_resident_dir() / "resident.log"
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "auditlens", "resident", "--idle-minutes", f"{idle_minutes:g}",
                                    "--log", str(log)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, cwd=os.getcwd())
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        answer = ask({"op": "ping"}, timeout=5)
        if answer is not None and answer["pid"] == process.pid:
            return answer
        if process.poll() is not None:
            break
        time.sleep(0.2)
    else:
        process.terminate()
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise ConfigError(f"the resident auditor did not start (exit {process.poll()}); the end of {log}:\n{tail}",
                      "fix what the log says, or run `auditlens resident` in a terminal to see it")


def stop(wait_s: float = 600.0) -> dict | None:
    """Ask the resident to stop (after the audit under way) and wait until its socket is gone; its last status, or None
    when none runs."""
    answer = ask({"op": "stop"})
    if answer is None:
        return None
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and ask({"op": "ping"}, timeout=2) is not None:
        time.sleep(0.2)
    return answer
