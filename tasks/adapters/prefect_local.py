"""A Prefect server on 127.0.0.1 that outlives one `auditlens` command, so that a command does not pay for (nor
fail in) Prefect's temporary server, which every flow call starts and stops when no PREFECT_API_URL is set.

Where it lives: in auditlens's state folder (``$AUDITLENS_STATE_DIR``, default ~/.auditlens), ``prefect/`` is its
PREFECT_HOME (sqlite database, leases; apart from a user's ~/.prefect) and ``prefect-server/`` holds its state file,
log and locks.

How a command finds it: ``state.json`` names the port, the supervisor's pid and the Prefect version. It is never
taken on trust: the pid must be alive and be our supervisor for this state folder (its command line), the version
must be the one installed, and ``/api/health`` must answer; otherwise the leftovers are stopped and a new server
started.
"Find or start" runs under an exclusive ``flock``, so concurrent first calls start one server and migrate its
database once.

The process tree: ``python -m tasks.adapters.prefect_local supervise`` (its own session and process group) runs
uvicorn with Prefect's app on a socket it bound itself to a free port (``--fd``: no window in which another
program can take the port), writes the state file once the API answers, and watches:
- idleness: every command using the server holds a shared ``flock`` on ``in-use`` for its whole life and touches
  that file when it starts and ends. The server is idle when nobody holds the lock (the supervisor's non-blocking
  exclusive lock succeeds) and the file is older than the idle timeout; it then stops itself.
- its child: if uvicorn dies, the supervisor removes the state file and exits.
- the state file: if it no longer names this supervisor (``stop`` ran, or another server replaced it), it exits.

Plain Python: nothing of Prefect is imported here (the server runs in its own interpreter).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

from tasks.adapters.errors import AuditlensError
from tasks.adapters.local_servers import healthy, wait_until
from tasks.adapters.state import state_dir as default_state_dir

try:
    import fcntl
except ImportError:  # Windows: no flock; commands there keep Prefect's temporary server (use_for_flows)
    fcntl = None

MODE_ENV = "AUDITLENS_PREFECT_SERVER"  # "local" (default) or "ephemeral": Prefect's own temporary server per command
IDLE_ENV = "AUDITLENS_PREFECT_IDLE_TIMEOUT"  # seconds without use before the server stops itself; 0: never
START_TIMEOUT_ENV = "AUDITLENS_PREFECT_START_TIMEOUT"  # seconds a start may take (a fresh database on a busy machine: ~30 s)
DEFAULT_IDLE_S = 3600.0
DEFAULT_START_TIMEOUT_S = 180.0
BUSY_GRACE_S = 30.0  # a live server of ours that does not answer may be busy ingesting a backlog of events
STATE_FORMAT = 1
SUPERVISOR_MODULE = "tasks.adapters.prefect_local"


class LocalPrefectServerError(AuditlensError):
    pass


def _seconds(env: str, default: float, value: float | str | None = None) -> float:
    """``value``, else the environment variable ``env``, else ``default``: a finite number of seconds, 0 or more."""
    raw = os.environ.get(env, "").strip() if value is None else value
    if raw == "":
        return default
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):  # also refuses nan
        raise LocalPrefectServerError(f"{env}={raw!r} is not a number of seconds", f"set {env} to e.g. {default:g}, or unset it")
    return seconds


def expected_version() -> str:
    return f"prefect {installed_version('prefect')}, state {STATE_FORMAT}"


@dataclass(frozen=True)
class ServerState:
    port: int
    pid: int  # the supervisor: leader of the server's process group
    server_pid: int  # uvicorn
    version: str
    prefect_home: str
    idle_timeout_s: float
    started_at: float

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.api_url}/health"


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError, OSError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own exited child: reap it, it is no longer a server
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def _command_words(pid: int) -> list[str]:
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.parent.is_dir():
        with contextlib.suppress(OSError):
            return cmdline.read_bytes().decode(errors="replace").split("\0")
        return []
    completed = subprocess.run(["ps", "-p", str(pid), "-o", "command="], capture_output=True, text=True)  # macOS
    return completed.stdout.split()


_HELD: dict[Path, int] = {}  # in-use locks this process holds, by file


class LocalPrefectServer:
    def __init__(self, state_dir: Path | None = None) -> None:
        self.state_dir = (state_dir or default_state_dir()).resolve()
        self.prefect_home = self.state_dir / "prefect"
        self.folder = self.state_dir / "prefect-server"
        self.state_file = self.folder / "state.json"
        self.lock_file = self.folder / "lock"
        self.in_use_file = self.folder / "in-use"
        self.log_file = self.folder / "server.log"

    # --- state ------------------------------------------------------------------------------------------------
    def read_state(self) -> ServerState | None:
        try:
            return ServerState(**json.loads(self.state_file.read_text()))
        except (OSError, ValueError, TypeError):
            return None  # missing, half-written by a crashed writer, or from another format: not a server

    def _write_state(self, state: ServerState) -> None:
        temporary = self.state_file.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(asdict(state), indent=1))
        os.replace(temporary, self.state_file)  # readers see the old file or the whole new one

    def _remove_state_of(self, pid: int) -> None:
        state = self.read_state()
        if state is not None and state.pid == pid:
            self.state_file.unlink(missing_ok=True)

    def is_ours(self, pid: int) -> bool:
        """The pid is alive and is the supervisor for this state folder (after a reboot it may be any other program)."""
        if not _alive(pid):
            return False
        words = _command_words(pid)
        return SUPERVISOR_MODULE in words and any(a == "--state-dir" and b == str(self.state_dir) for a, b in zip(words, words[1:]))

    def running(self, wait_s: float = 0.0) -> ServerState | None:
        """The state of a server of ours that answers /api/health (waiting up to ``wait_s`` for a busy one), else None."""
        state = self.read_state()
        if state is None or state.version != expected_version() or not self.is_ours(state.pid):
            return None
        deadline = time.monotonic() + wait_s
        while not healthy(state.health_url):
            if time.monotonic() >= deadline or not self.is_ours(state.pid):
                return None
            time.sleep(0.5)
        return state

    # --- locks ------------------------------------------------------------------------------------------------
    def _try_lock(self, path: Path, mode: int) -> int | None:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by the processes we start (PEP 446)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
            return None

    def _lock(self, path: Path, mode: int, deadline: float) -> int:
        while (fd := self._try_lock(path, mode)) is None:
            if time.monotonic() >= deadline:
                raise LocalPrefectServerError(
                    f"another auditlens process held {path} for too long while starting or stopping the local "
                    f"Prefect server (log: {self.log_file})",
                    "wait for it and retry; if none is running, run `auditlens prefect-server stop`, or set "
                    "PREFECT_API_URL to a Prefect server of your own")
            time.sleep(0.1)
        return fd

    @contextlib.contextmanager
    def _exclusive(self, deadline: float):
        fd = self._lock(self.lock_file, fcntl.LOCK_EX, deadline)
        try:
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def hold_in_use(self, deadline: float) -> None:
        """Mark this process as a user of the server until it exits (the kernel drops the lock with the process)."""
        if self.in_use_file not in _HELD:
            _HELD[self.in_use_file] = self._lock(self.in_use_file, fcntl.LOCK_SH, deadline)
            atexit.register(self._touch)  # idleness counts from the end of the last use
        self._touch()

    def _touch(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.in_use_file)

    # --- find or start, stop ----------------------------------------------------------------------------------
    def ensure(self, idle_s: float | None = None, timeout_s: float | None = None, announce=None) -> ServerState:
        """A running server of ours: the one in the state file if it answers, else a new one (started under the lock;
        ``announce`` is called with a line for the user first: a start takes 10-30 s)."""
        idle_s = _seconds(IDLE_ENV, DEFAULT_IDLE_S, idle_s)
        timeout_s = _seconds(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT_S, timeout_s)
        with self._folder_errors():
            return self._find_or_start(idle_s, timeout_s, announce)

    @contextlib.contextmanager
    def _folder_errors(self):
        try:
            yield
        except OSError as exc:
            detail = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)
            raise LocalPrefectServerError(
                f"the local Prefect server cannot use {self.state_dir} ({detail})",
                "set AUDITLENS_STATE_DIR to a folder you can write, or set PREFECT_API_URL to a Prefect server of your own") from None

    def _find_or_start(self, idle_s: float, timeout_s: float, announce) -> ServerState:
        deadline = time.monotonic() + timeout_s + BUSY_GRACE_S
        self.hold_in_use(deadline)  # before the server lock: the server cannot go idle between finding and using it
        with self._exclusive(deadline):
            state = self.read_state()
            if state is not None:
                found = self.running(wait_s=BUSY_GRACE_S if self.is_ours(state.pid) and state.version == expected_version() else 0)
                if found is not None:
                    return found
                self._log(f"replacing the server in {self.state_file} (pid {state.pid}, port {state.port}, {state.version}): "
                          "it is gone, of another version, or not answering")
                self._terminate(state)
            if announce is not None:
                announce(f"Starting the local Prefect server (once: the next commands reuse it; log {self.log_file})")
            return self._start(idle_s, timeout_s)

    def _start(self, idle_s: float, timeout_s: float) -> ServerState:
        self.prefect_home.mkdir(parents=True, exist_ok=True)
        if self.log_file.exists() and self.log_file.stat().st_size > 5_000_000:
            self.log_file.unlink()
        self._log(f"starting (by pid {os.getpid()}, idle timeout {idle_s:g} s)")
        with self.log_file.open("a") as log:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, "supervise", "--state-dir", str(self.state_dir), "--idle-timeout", str(idle_s),
                 "--start-timeout", str(timeout_s)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.read_state()
            if state is not None and state.pid == supervisor.pid and healthy(state.health_url):
                return state
            # the deadline first: the supervisor gives up at its own copy of it and exits, and a start that ran out of
            # time is that, whichever of the two noticed first (a busy machine let the supervisor's exit be seen first)
            if time.monotonic() >= deadline:
                self._kill_group(supervisor.pid)
                raise self._failed(f"the local Prefect server did not answer within {timeout_s:g} s", timeout_s)
            if supervisor.poll() is not None:
                raise self._failed(f"the local Prefect server exited while starting (code {supervisor.returncode})", timeout_s)
            time.sleep(0.2)

    def _failed(self, problem: str, timeout_s: float) -> LocalPrefectServerError:
        tail = self.log_file.read_text(errors="replace").splitlines()[-12:] if self.log_file.exists() else []
        return LocalPrefectServerError(
            f"{problem}; its log is {self.log_file}" + ("".join(f"\n    {line}" for line in tail) if tail else ""),
            f"read the log; on a slow machine raise {START_TIMEOUT_ENV} (now {timeout_s:g} s); "
            "or run a Prefect server yourself and set PREFECT_API_URL to it (e.g. http://127.0.0.1:4200/api), "
            f"or set {MODE_ENV}=ephemeral to use Prefect's temporary server")

    def stop(self, timeout_s: float = 30.0) -> ServerState | None:
        """Stop the server (its whole process group) and remove its state file; the state of the server that was
        running, or None when none was (a stale state file is removed all the same)."""
        with self._folder_errors(), self._exclusive(time.monotonic() + timeout_s):
            state = self.read_state()
            if state is None:
                return None
            running = self.is_ours(state.pid)
            self._terminate(state, timeout_s)
            return state if running else None

    def _terminate(self, state: ServerState, timeout_s: float = 30.0) -> None:
        if self.is_ours(state.pid) or self._orphaned_server(state):
            self._kill_group(state.pid, timeout_s)
        self.state_file.unlink(missing_ok=True)

    @staticmethod
    def _orphaned_server(state: ServerState) -> bool:
        """A supervisor killed with SIGKILL leaves its uvicorn serving, alone in the supervisor's process group."""
        if not _alive(state.server_pid):
            return False
        try:
            in_group = os.getpgid(state.server_pid) == state.pid
        except OSError:
            return False
        return in_group and "prefect.server.api.server:create_app" in _command_words(state.server_pid)

    def _kill_group(self, pid: int, timeout_s: float = 30.0) -> None:
        for sig, grace in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + grace
            while _group_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not _group_alive(pid):
                return

    def _log(self, message: str) -> None:
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("a") as log:
                log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} auditlens: {message}\n")

    def last_use(self) -> float | None:
        with contextlib.suppress(OSError):
            return self.in_use_file.stat().st_mtime
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if Path("/proc").is_dir():  # zombies still count for killpg; on Linux, ignore them
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pgid, os.WNOHANG)
        return False
    return True


def use_for_flows(configured_api_url: str | None, announce=None) -> str | None:
    """The Prefect API the CLI's flows should use: None when the user configured one (theirs wins) or chose
    Prefect's temporary server; else the local server's, started if needed."""
    mode = os.environ.get(MODE_ENV, "local").strip().lower() or "local"
    if mode not in {"local", "ephemeral"}:
        raise LocalPrefectServerError(f"{MODE_ENV}={mode!r} is not a mode", f"set {MODE_ENV} to local (the default) or ephemeral")
    if configured_api_url or mode == "ephemeral" or fcntl is None:
        return None
    return LocalPrefectServer().ensure(announce=announce).api_url


# --- the supervisor process ---------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _supervise(server: LocalPrefectServer, idle_s: float, timeout_s: float) -> int:
    def on_signal(signum, frame):
        raise _Stop(signal.Signals(signum).name)

    child = None
    try:  # from the first handler on: a stop during start-up (a start that timed out) is logged, not a traceback
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))  # a free port, held from now on: uvicorn serves this very socket
        port = listener.getsockname()[1]
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}  # a private server
        env.update({
            "PREFECT_HOME": str(server.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # the UI asks the API at this address (by default it would be port 4200, `auditlens up`'s)
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(port),
            # concurrency leases on disk (in PREFECT_HOME), not in memory: they survive a restart of the server
            "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
            "PREFECT__SERVER_FINAL": "1",
        })  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--fd", str(listener.fileno()),
             "--log-level", "warning", "--lifespan", "on"],
            env=env, pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL)  # fmt: skip
        listener.close()
        state = ServerState(port, os.getpid(), child.pid, expected_version(), str(server.prefect_home), idle_s, time.time())
        try:
            wait_until(state.health_url, child, timeout_s, server.log_file)
        except AuditlensError as exc:
            server._log(f"the server did not start: {exc.problem.splitlines()[0]}")
            return 1
        server._write_state(state)
        server._log(f"serving {state.api_url} (supervisor {state.pid}, uvicorn {child.pid})")
        return _watch(server, state, child, idle_s)
    except _Stop as stop:
        server._log(f"stopping on {stop}")
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the clean-up short
        if child is not None and child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(timeout=10)
        server._remove_state_of(os.getpid())


def _watch(server: LocalPrefectServer, state: ServerState, child: subprocess.Popen, idle_s: float) -> int:
    tick = min(30.0, max(0.5, idle_s / 10)) if idle_s > 0 else 30.0
    while True:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = child.wait(timeout=tick)
            server._log(f"the Prefect server (uvicorn {child.pid}) exited with code {code}")
            return 1
        current = server.read_state()
        if current is None or current.pid != state.pid:
            server._log("the state file no longer names this server: stopping")
            return 0
        if idle_s > 0 and _idle_for(server, idle_s):
            return 0


def _idle_for(server: LocalPrefectServer, idle_s: float) -> bool:
    """True, with the locks taken until this process exits, when nobody has used the server for ``idle_s``."""
    last = server.last_use()
    if last is not None and time.time() - last < idle_s:
        return False
    # non-blocking: a command finding or starting the server, or using it, wins
    if (lock := server._try_lock(server.lock_file, fcntl.LOCK_EX)) is None:
        return False
    if (in_use := server._try_lock(server.in_use_file, fcntl.LOCK_EX)) is None:
        os.close(lock)
        return False
    last = server.last_use()
    if last is not None and time.time() - last < idle_s:  # a command came and went between the two reads
        os.close(in_use)
        os.close(lock)
        return False
    server._log(f"idle for {idle_s:g} s: stopping")
    return True  # the locks stay held (closed at exit) until the server is down and its state removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {SUPERVISOR_MODULE}")
    sub = parser.add_subparsers(dest="command", required=True)
    supervise = sub.add_parser("supervise", help="run the local Prefect server (started by `auditlens`, not by hand)")
    supervise.add_argument("--state-dir", type=Path, required=True)
    supervise.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_S)
    supervise.add_argument("--start-timeout", type=float, default=DEFAULT_START_TIMEOUT_S)
    args = parser.parse_args(argv)
    return _supervise(LocalPrefectServer(args.state_dir), args.idle_timeout, args.start_timeout)


if __name__ == "__main__":
    sys.exit(main())
