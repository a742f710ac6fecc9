"""Independent audits in parallel processes, each holding the model and the data once.

In one process, audits run in threads contend for one interpreter lock, and each library call that starts its own
threads (OpenMP in scikit-learn's trees, BLAS, PyTorch) asks for every core at once: nineteen audits of the demo's
classifier in threads took 20 to 24 s where the same audits one after another take 13. Here the model's process (see
``model_worker``) starts ``processes`` worker processes (``spawn``: no fork of a process whose libraries hold thread
pools), each told to use its share of the cores. The inputs (the audit context and, on data larger than the sample,
the merged states of the every-row pass) are written once to a file in the model's process's own folder and read once
by each worker; each audit then crosses as its plan entry and comes back as its result.

The workers get the model process's environment (no credentials) and its confinement: they are started before the
model process confines itself and before anything of the model is read (Landlock allows a process only what it names,
and a worker's /proc entry is not the one its parent was allowed), and each confines itself to the same folders with
its own /proc entry in place of the model process's, and gives up its capabilities when run as root, before it reads
anything of the audit: when it starts, if the rules are known then, else in its first task, which always carries them
(a pool started ahead by a spare model process, ``model_worker.prestart``). They die with the model's process
(``PR_SET_PDEATHSIG``).

No thread of the model's process is left unconfined. Landlock confines the thread that asks and the threads it starts
later, not those already running, and ``ProcessPoolExecutor``'s own thread unpickles what the workers send back: a
worker running the model's code could send it a pickle that runs code. So the workers are started without that thread
(``_launch_processes``, Python 3.11's executor), and ``open``, called after the model's process confined itself,
starts it; ``confine`` refuses to confine a process that already runs a second Python thread.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

# the variables that size the thread pools of the numeric libraries, read when each library loads
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")
_PR_SET_PDEATHSIG = 1

_shared: dict[str, Any] = {}  # in each worker: the inputs file read, by path


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def lanes(processes: int | None, audits: int) -> int:
    """How many audits run at once: the configured number, or one per core this process may use (at most 8: each lane
    but the first is a process holding a copy of the inputs), never more than there are audits to run."""
    wanted = processes if processes is not None else min(available_cores(), 8)
    return max(1, min(wanted, audits))


def lane_threads(processes: int | None, audits: int) -> int | None:
    """The threads each lane's numeric libraries may use: its share of the cores when several lanes run at once, else
    None (the libraries' own default, every core)."""
    shared = lanes(processes, audits)
    return max(1, available_cores() // shared) if shared > 1 else None


Rules = tuple[tuple[Path, ...], tuple[Path, ...]]  # (writable, readable) folders of a confinement

_confined: list[Rules] = []  # in each worker: the rules it confined itself to


def rules_of(writable: list[Path], readable: list[Path]) -> Rules:
    return tuple(writable), tuple(readable)


def only_thread(who: str) -> None:
    """Refuse to confine a process that runs another Python thread: that thread would stay unconfined."""
    if threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate() if t is not threading.current_thread())
        raise RuntimeError(f"{who} runs other threads ({names}) before it confines itself: they would stay unconfined")


def confine(rules: Rules) -> None:
    """Confine this worker to ``rules`` and its own /proc entry, once: asked again with the same rules, nothing
    changes; with other rules, an error (a worker never serves two confinements)."""
    from tasks.adapters.sandbox import drop_capabilities, restrict

    if _confined:
        if _confined[0] != rules:
            raise RuntimeError("this process was confined for another audit")
        return
    only_thread("an audit's process")
    writable, readable = rules
    restrict(list(writable), [*readable, Path(f"/proc/{os.getpid()}")], allow_tcp=False)
    drop_capabilities()
    _confined.append(rules)


def _start_worker(parent: int, rules: Rules | None, warm: tuple[str, ...]) -> None:
    """In each worker, first: die with the model's process (``parent``), confine itself when the rules are known
    already, and import what it will need (``_warm``). Its libraries size their thread pools from the variables it was
    started with (threadpoolctl's limits, applied under Landlock, made openTSNE's Barnes-Hut gradient 18 times slower).

    A parent that died before the death signal was asked for is not told by it: the worker, its parent gone, checks
    and ends (it would otherwise wait forever on a queue whose writing end it holds itself)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)
    from tasks.adapters.tracking import quiet_joblib

    quiet_joblib()  # before the confinement: it may run lscpu
    _warm(warm, rules)


def _warm(modules: tuple[str, ...] = (), rules: Rules | None = None) -> int:
    """Confine this worker (when ``rules`` are given), then import what the audits will: the runner's, and ``modules``
    (the planned audits' own and the libraries they import when they run, ``planned_imports``)."""
    import importlib

    if rules is not None:
        confine(rules)
    import audits.core.runner  # noqa: F401
    import matplotlib.figure  # noqa: F401
    import sklearn.base  # noqa: F401

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional library not installed: the audit that needs it says so when it runs
    return os.getpid()


def planned_imports(plan: Any) -> tuple[str, ...]:
    """The modules a plan's audits import: each audit's own module and what it declares it imports when it runs
    (``Audit.imports``), in plan order, once each."""
    names: dict[str, None] = {}
    for planned in plan:
        names[type(planned.audit).__module__] = None
        names.update(dict.fromkeys(planned.audit.imports))
    return tuple(names)


def _run(path: str, planned: Any, rules: Rules) -> Any:
    from audits.core.runner import run_planned

    confine(rules)  # before anything of the audit is read
    if path not in _shared:
        import cloudpickle

        with open(path, "rb") as stream:
            _shared.clear()
            _shared[path] = cloudpickle.load(stream)
        if "torch" in sys.modules:
            import torch

            torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    context, full = _shared[path]
    return run_planned(planned, context, full)


class AuditPool:
    """``processes`` spawned workers for the audits of one model process, confined to ``rules`` (the model process's
    own) when they start, or, for a pool started ahead (``rules`` None), by the first task ``open`` gives each. Started
    before the model's process confines itself; ``open`` after it (see the module's text). Then ``share`` the inputs
    once, and ``run``."""

    def __init__(self, processes: int, folder: Path, rules: Rules | None = None, threads: int = 1,
                 warm: tuple[str, ...] = ()) -> None:
        self.processes, self.folder, self.rules, self.threads = processes, folder, rules, threads
        saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
        for name in THREAD_VARIABLES:  # the workers' libraries size their pools from these (threads per worker) on load
            os.environ[name] = str(threads)
        try:
            self.executor = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_start_worker, initargs=(os.getpid(), rules, warm))
            self.executor._launch_processes()  # spawned now, and no thread here yet: open() starts it
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        self.warming: list[Future] = []  # one per worker, from open(): a lane opens once its worker is ready
        self.path: str | None = None

    def open(self, rules: Rules, warm: tuple[str, ...] = ()) -> None:
        """Called once this process is confined: the workers' rules (those they started with, if any), and a first
        task per worker that confines it if it is not yet and imports ``warm`` (the plan's, ``planned_imports``)."""
        if self.rules is not None and rules != self.rules:
            raise ValueError("a pool's workers are confined to the rules they started with")
        self.rules = rules
        self.warming = [self.executor.submit(_warm, warm, rules) for _ in range(self.processes)]

    def share(self, context: Any, full: Any) -> None:
        import cloudpickle

        path = self.folder / "audit-inputs.pickle"
        with open(path, "wb") as stream:
            cloudpickle.dump((context, full), stream, protocol=5)
        self.path = str(path)

    def run(self, planned: Any) -> Future:
        if self.path is None or self.rules is None:
            raise RuntimeError("the pool must be opened and the inputs shared before an audit runs")
        return self.executor.submit(_run, self.path, planned, self.rules)

    def close(self) -> None:
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.kill()
