"""The model's own process: everything that calls the audited model runs here, apart from the auditor.

The auditor process holds what writes the record (the MLflow credentials, the Prefect API, the signing key). The model
is loaded, scored, explained and refitted in a worker process started with an environment that holds none of them
(``worker_environment``: a short list of variables is passed on, everything else is left behind), from a settings copy
that does not name the tracking store, in an empty working folder of its own. When ``execution.engine`` is dask and no
cluster address is given, the worker starts the LocalCluster, so its processes inherit the worker's environment too.

What crosses back is data, never code: each result is JSON (metrics, checks, reasons, PNG bytes, tables as JSON), and
the auditor judges every result again from its metrics and the plan's thresholds before it records anything, so a
worker cannot hand back a verdict its own figures do not support. Requests to the worker are pickles from the auditor,
which the worker trusts; replies are JSON, which the auditor reads without trusting the worker.

The frames are a length (8 bytes, big-endian) and a body, on two pipes of their own: the model's prints go to stderr and
cannot corrupt them.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import os
import pickle
import queue
import struct
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from audits.core.result import Artifact, AuditResult, CheckResult, Verdict
from tasks.adapters import errors as error_types
from tasks.adapters.audit_pool import (THREAD_VARIABLES, AuditPool, available_cores, lane_threads, lanes, only_thread,
                                       planned_imports, rules_of)
from tasks.adapters.errors import AuditlensError

# variables the model's process is given: what Python, the numeric libraries and matplotlib need, nothing that names a
# server or holds a secret. Everything else in the auditor's environment stays behind.
KEPT = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM", "SHELL", "VIRTUAL_ENV",
                  "PYTHONHASHSEED", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS", "MPLBACKEND",
                  "MPLCONFIGDIR", "CUDA_VISIBLE_DEVICES", "GX_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY",
                  "AUDITLENS_STRICT_METRIC_KEYS", "SYSTEMROOT"})
KEPT_PREFIXES = ("LC_", "OMP_", "MKL_", "OPENBLAS_", "NUMEXPR_", "NUMBA_", "TORCH_", "KMP_", "DASK_", "XDG_", "LOKY_")
ROOT = Path(__file__).resolve().parents[2]


def model_threads(loaded: Any) -> int | None:
    """The threads each numeric library of the model's process may use: its share of the cores when it is one of
    several lanes on the local engine (the same share its worker processes get), else None (the libraries' own default).
    Its libraries read the number once, when they load, so it is given at the process's start. With both cores of two
    lanes' libraries asking for both cores, the whole plan of bench_speed took 28.1-28.4 s; with one each, 25.3-26.3 s."""
    settings = loaded.settings
    if settings.execution.engine != "local":
        return None  # a Dask cluster's workers, started by the model's process, size their own threads
    return lane_threads(settings.execution.processes, len(loaded.plan))


def spare_pool(threads: int | None) -> tuple[int, int]:
    """(worker processes, their threads) a spare model process started with ``threads`` starts beside it: those of the
    default plan's lanes (one per core, at most 8) when ``threads`` is that plan's share, else none. An audit whose lanes
    differ closes them and starts its own (``prepare``)."""
    default = lanes(None, 1000)
    if default < 2 or threads != lane_threads(None, 1000):
        return 0, 0
    return default - 1, threads


def worker_environment(environ: dict[str, str] | None = None, threads: int | None = None) -> dict[str, str]:
    """The model process's environment: the kept variables of ``environ`` (default: this process's), and this
    checkout first on the import path. No MLFLOW_TRACKING_*, no PREFECT_*, no AUDITLENS_SIGNING_KEY, no cloud keys.
    ``threads``: what the numeric libraries' thread variables say, unless the auditor's environment sets them."""
    environ = dict(os.environ if environ is None else environ)
    kept = {k: v for k, v in environ.items() if k in KEPT or k.startswith(KEPT_PREFIXES)}
    if threads is not None:
        for name in THREAD_VARIABLES:
            kept.setdefault(name, str(threads))
    kept["PYTHONPATH"] = str(ROOT)
    kept["MLFLOW_TRACKING_URI"] = "none://the-model-process-has-no-tracking-store"  # MLflow would default to ./mlflow.db
    kept["AUDITLENS_MODEL_PROCESS"] = "1"
    # threads waiting at an OpenMP barrier sleep instead of spinning: audits run side by side in processes, and a
    # spinning thread takes the core another process's thread needs (t-SNE's 1,258 barriers took 5 times as long)
    kept.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # joblib's count of the cores it may use (its warning that it found no physical cores: ``quiet_environment``)
    kept.setdefault("LOKY_MAX_CPU_COUNT", str(available_cores()))
    # what scikit-learn sets on import (setdefault), here already: the environment does not depend on whether the
    # auditor had imported it when the model's process started (a spare started early is then still the same)
    kept.setdefault("KMP_DUPLICATE_LIB_OK", "True")
    kept.setdefault("KMP_INIT_AT_FORK", "FALSE")
    return kept


class ModelWorkerError(AuditlensError):
    """The model's process ended or broke the protocol."""


# ---------------------------------------------------------------------------------------------
# frames


def _write_frame(stream: Any, body: bytes) -> None:
    stream.write(struct.pack(">Q", len(body)) + body)
    stream.flush()


def _read_frame(stream: Any) -> bytes | None:
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack(">Q", head)
    body = stream.read(size)
    if len(body) < size:
        return None
    return body


# ---------------------------------------------------------------------------------------------
# results and errors as data


def encode_result(result: AuditResult) -> dict[str, Any]:
    """Everything of a result, as JSON-ready data (floats stay floats, NaN included: both ends are Python's json)."""
    return {
        "audit": result.audit, "verdict": result.verdict.value, "reason": result.reason,
        "metrics": {k: float(v) for k, v in result.metrics.items()},
        "checks": [dataclasses.asdict(c) for c in result.checks],
        "info": {k: v if isinstance(v, (str, int, float, bool)) or v is None else str(v) for k, v in result.info.items()},
        "duration_s": float(result.duration_s),
        "ranges": {k: [float(a), float(b)] for k, (a, b) in result.ranges.items()},
        "chance": {k: [float(a), float(b)] for k, (a, b) in result.chance.items()},
        "artifacts": [_encode_artifact(a) for a in result.artifacts],
    }  # fmt: skip


def _encode_artifact(artifact: Artifact) -> dict[str, Any]:
    if artifact.kind == "figure":
        content: Any = base64.b64encode(artifact.content).decode("ascii")
    elif artifact.kind == "table":
        frame = artifact.content
        content = {"split": frame.to_json(orient="split", index=False, date_format="iso"),
                   "dtypes": [str(t) for t in frame.dtypes]}
    elif artifact.kind == "json":
        content = json.loads(json.dumps(artifact.content, default=str))
    else:
        content = str(artifact.content)
    return {"name": artifact.name, "kind": artifact.kind, "title": artifact.title, "content": content}


def decode_result(data: dict[str, Any]) -> AuditResult:
    """A result from its JSON form; anything malformed raises (the auditor records the audit as ERROR)."""
    return AuditResult(
        audit=str(data["audit"]), verdict=Verdict(data["verdict"]), reason=str(data["reason"]),
        metrics={str(k): float(v) for k, v in data["metrics"].items()},
        checks=tuple(CheckResult(**{k: c[k] for k in ("metric", "rule", "severity", "value", "passed", "message", "cannot_tell",
                                                      "low", "high", "compare_to", "relative") if k in c})
                     for c in data["checks"]),
        info=dict(data["info"]), duration_s=float(data["duration_s"]),
        ranges={str(k): (float(a), float(b)) for k, (a, b) in data["ranges"].items()},
        chance={str(k): (float(a), float(b)) for k, (a, b) in data["chance"].items()},
        artifacts=tuple(_decode_artifact(a) for a in data["artifacts"]),
    )  # fmt: skip


def _decode_artifact(data: dict[str, Any]) -> Artifact:
    kind, content = data["kind"], data["content"]
    if kind == "figure":
        payload: Any = base64.b64decode(content, validate=True)
    elif kind == "table":
        frame = pd.read_json(io.StringIO(content["split"]), orient="split", dtype=False, convert_dates=False)
        for column, dtype in zip(frame.columns, content["dtypes"]):
            try:
                frame[column] = frame[column].astype(dtype)
            except (TypeError, ValueError):
                pass
        payload = frame
    else:
        payload = content
    if kind not in ("figure", "table", "html", "fragment", "json"):
        raise ValueError(f"unknown artifact kind {kind!r}")
    return Artifact(str(data["name"]), kind, payload, str(data["title"]))


def _encode_error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, AuditlensError):
        return {"type": type(exc).__name__, "problem": exc.problem, "fix": exc.fix}
    return {"type": "bug", "problem": f"{type(exc).__name__}: {exc}", "fix": ""}


def _known_errors() -> dict[str, type[AuditlensError]]:
    from tasks.adapters.full_pass import EngineError
    from tasks.adapters.model_gate import ModelRefusedError

    found = {cls.__name__: cls for cls in vars(error_types).values() if isinstance(cls, type) and issubclass(cls, AuditlensError)}
    return {**found, "ModelRefusedError": ModelRefusedError, "EngineError": EngineError, "ModelWorkerError": ModelWorkerError}


def _decode_error(data: dict[str, Any]) -> Exception:
    cls = _known_errors().get(str(data.get("type")))
    if cls is None:
        return RuntimeError(f"in the model's process: {data.get('problem')}")
    return cls(str(data.get("problem", "")), str(data.get("fix", "")))


# ---------------------------------------------------------------------------------------------
# what the record needs of the inputs, as data


@dataclasses.dataclass(frozen=True)
class RecordedInputs:
    """What the auditor records of the inputs the model's process assembled (it never holds the model or the frames)."""

    fingerprints: dict[str, dict[str, Any]]
    params: dict[str, str]
    datasets: list[dict[str, Any]]  # name, source, target, digest, context, schema, rows, elements
    baseline_uri: str | None
    baseline_label: str | None
    baseline_note: str
    every_row: dict[str, Any] | None  # engine, workers, audits (ids of the audits that read every row), population

    @classmethod
    def of(cls, inputs: Any) -> RecordedInputs:
        """What the record needs of inputs assembled in this process (tests and benchmarks)."""
        return cls(**describe_inputs(inputs))


def describe_inputs(inputs: Any) -> dict[str, Any]:
    """The inputs of an audit, as the record needs them (in the model's process)."""
    from tasks.adapters.provenance import input_params

    context, items = inputs.context, []
    for ds in (context.reference, context.current, *([context.holdout] if context.holdout is not None else [])):
        frame = ds.X if ds.y is None else ds.X.assign(**{context.target: ds.y})
        items.append({"name": f"{ds.name}:{Path(ds.source).name}", "source": ds.source,
                      "target": context.target if ds.y is not None else None,
                      "digest": inputs.fingerprints[ds.name]["sample_sha256"], "context": ds.name,
                      "schema": [[str(c), str(frame[c].dtype)] for c in frame.columns],
                      "rows": int(len(frame)), "elements": int(frame.size)})
    full = inputs.full
    baseline = context.baseline
    return {
        "fingerprints": json.loads(json.dumps(inputs.fingerprints, default=str)),
        "params": input_params(inputs),
        "datasets": items,
        "baseline_uri": baseline.uri if baseline is not None else None,
        "baseline_label": baseline.label if baseline is not None else None,
        "baseline_note": context.baseline_note,
        "every_row": None if full is None else {"engine": full.engine, "workers": full.workers, "audits": sorted(full.states),
                                                "population": dict(full.population)},
    }


# ---------------------------------------------------------------------------------------------
# the auditor's side


# imported by a model process while it waits for its first request: what loading the model and the data needs, paid
# while the auditor starts (a spare process, ``prestart``), not after it asked
WARM_IMPORTS = ("pandas", "pyarrow.parquet", "sklearn.base", "matplotlib.figure", "audits.core.runner",
                "tasks.adapters.inputs", "tasks.adapters.models", "tasks.adapters.full_pass", "tasks.adapters.sandbox",
                "tasks.adapters.provenance")


class _Spawned:
    """One started model process: its pipes and its own empty working folder."""

    def __init__(self, process: subprocess.Popen, folder: tempfile.TemporaryDirectory, out: Any, read: Any,
                 environment: dict[str, str]) -> None:
        self.process, self.folder, self.out, self.read, self.environment = process, folder, out, read, environment

    @classmethod
    def start(cls, warm: tuple[str, ...] = (), threads: int | None = None, pool: bool = False) -> _Spawned:
        """``pool``: also start the worker processes of the lanes ``threads`` implies (``spare_pool``)."""
        folder = tempfile.TemporaryDirectory(prefix="auditlens-model-process-")
        environment = worker_environment(threads=threads)
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        process = subprocess.Popen(
            [sys.executable, "-m", "tasks.adapters.model_worker", str(to_worker_r), str(from_worker_w), ",".join(warm),
             ",".join(str(v) for v in spare_pool(threads)) if pool else ""],
            # the process writes only in its folder once confined: numba's compiled-code cache (SliceLine's kernels)
            # too, which would otherwise try the installed package's folder and ~/.cache and fail
            cwd=folder.name, env={**environment, "TMPDIR": folder.name, "NUMBA_CACHE_DIR": folder.name},
            pass_fds=(to_worker_r, from_worker_w),
            stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno() if _has_fileno(sys.stderr) else None,
        )
        os.close(to_worker_r)
        os.close(from_worker_w)
        return cls(process, folder, os.fdopen(to_worker_w, "wb"), os.fdopen(from_worker_r, "rb"), environment)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def discard(self) -> None:
        """Kill it if it still runs, close its pipes and remove its folder."""
        self.kill()
        for stream in (self.out, self.read):
            try:
                stream.close()
            except OSError:
                pass
        self.folder.cleanup()


_spare: dict[str, Any] = {"process": None, "keep": False, "warm": (), "threads": None, "pool": False}
_spare_lock = threading.Lock()


def prestart(warm: tuple[str, ...] = (), keep: bool = False, threads: int | None = None, pool: bool = False) -> None:
    """Start a model process now, for the next ``ModelWorker`` of this process to take: it imports its libraries
    (``WARM_IMPORTS`` and ``warm``) while this process is still starting (the CLI's own imports, the demo's training),
    on another core, instead of after the audit asked for it. ``keep``: each time one is taken, start the next (a
    command that runs several audits one after another). ``threads``: the libraries' threads, as ``model_threads`` will
    say for the audit that takes it (one started with others is not used). ``pool``: it starts its lanes' worker
    processes too (``spare_pool``), which import the same libraries. It holds nothing of the model or the data
    until it is taken (its confinement comes with its first request, as for any model process), and one never taken is
    killed at exit. This process's /proc entries are made unreadable first, as ``model_process`` does before any model
    process starts."""
    import atexit

    from tasks.adapters.sandbox import not_inspectable

    not_inspectable()
    with _spare_lock:
        _spare["keep"], _spare["warm"], _spare["threads"], _spare["pool"] = keep, tuple(warm), threads, pool
        if _spare["process"] is None:
            if not _spare.get("registered"):
                atexit.register(discard_spare)
                _spare["registered"] = True
            _spare["process"] = _Spawned.start(_spare["warm"], threads, pool)


def discard_spare() -> None:
    """Stop keeping a spare model process, and end the one waiting, if any."""
    with _spare_lock:
        spawned, _spare["process"], _spare["keep"] = _spare["process"], None, False
    if spawned is not None:
        spawned.discard()


def _take_spare(threads: int | None) -> _Spawned | None:
    """The spare model process, if one is waiting, still alive, and started with the environment a new one would get
    now (anything else is discarded: a model process never runs with settings other than today's)."""
    with _spare_lock:
        spawned, _spare["process"] = _spare["process"], None
        if _spare["keep"]:
            _spare["process"] = _Spawned.start(_spare["warm"], _spare["threads"], _spare["pool"])
    if spawned is None:
        return None
    if spawned.process.poll() is not None or spawned.environment != worker_environment(threads=threads):
        spawned.discard()
        return None
    return spawned


class ModelWorker:
    """The model's process, seen from the auditor: ``prepare`` loads the model and assembles the inputs there,
    ``audit`` runs one planned audit there (several at once, in its lanes: its own thread and its worker processes),
    ``close`` ends it."""

    def __init__(self, threads: int | None = None) -> None:
        self._spawned: _Spawned | None = None  # started by the first request: an audit whose every result is
        self._lock = threading.Lock()          # reused from the cache never starts it
        self.threads = threads  # its libraries' threads (``model_threads``)
        self._pending: dict[int, Future] = {}
        self._on_start: dict[int, Any] = {}  # request id -> called when a lane of the process takes that audit
        self._next = 0

    def _start(self) -> None:
        self._spawned = _take_spare(self.threads) or _Spawned.start(threads=self.threads)
        self._reader = threading.Thread(target=self._read, name="auditlens-model-process-reader", daemon=True)
        self._reader.start()

    @property
    def process(self) -> subprocess.Popen | None:
        return self._spawned.process if self._spawned is not None else None

    def __enter__(self) -> ModelWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read(self) -> None:
        while True:
            body = _read_frame(self._spawned.read)
            if body is None:
                break
            try:
                reply = json.loads(body)
                if reply.get("started") is True:  # a lane took this audit: it runs from now (it may have waited)
                    callback = self._on_start.pop(int(reply["id"]), None)
                    if callback is not None:
                        _quietly(callback)
                    continue
                future = self._pending.pop(int(reply["id"]))
            except (ValueError, KeyError, TypeError, AttributeError):
                break  # not our protocol: the process is not trusted to speak again
            if reply.get("ok"):
                future.set_result(reply.get("value"))
            else:
                future.set_exception(_decode_error(reply.get("error") or {}))
        code = self.process.poll()
        ended = ModelWorkerError(f"the model's process ended (exit code {code if code is not None else 'unknown'}) before it "
                                 "answered", "the model may have crashed or run out of memory: run the audit again with "
                                             "fewer rows (sampling) to see whether it is the data size")
        for future in list(self._pending.values()):
            if not future.done():
                future.set_exception(ended)
        self._pending.clear()
        self._on_start.clear()

    def _call(self, op: str, on_start: Any = None, **args: Any) -> Future:
        with self._lock:
            if self.process is None:
                self._start()
            self._next += 1
            request_id = self._next
            future: Future = Future()
            self._pending[request_id] = future
            if on_start is not None:
                self._on_start[request_id] = on_start
            try:
                _write_frame(self._spawned.out, pickle.dumps({"id": request_id, "op": op, **args}))
            except (BrokenPipeError, OSError, ValueError):
                self._pending.pop(request_id, None)
                raise ModelWorkerError(f"the model's process is gone (exit code {self.process.poll()})",
                                       "run the audit again; if it recurs, the model crashes when it loads") from None
        return future

    def prepare(self, ref: Any, loaded: Any, model_dir: str, baseline: tuple[Any, str] | None, baseline_note: str,
                timeout_s: float | None = None) -> RecordedInputs:
        """Load the model (and the baseline) from their downloaded folders through the gate and assemble the inputs,
        in the model's process; what the record needs of them comes back. Past ``timeout_s`` the process is killed."""
        from concurrent.futures import TimeoutError as FutureTimeout

        future = self._call("prepare", ref=ref, loaded=loaded, model_dir=model_dir, baseline=baseline, baseline_note=baseline_note)
        try:
            value = future.result(timeout=timeout_s)
        except FutureTimeout:
            self.kill()
            raise
        return RecordedInputs(**value)

    def describe(self, request: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        """What the downloaded model in ``request['model_dir']`` is (``scaffold.describe_model_folder``: flavours,
        whether the gate accepts it, task, classes, features), found in the model's process, confined first as for an
        audit but reading only the model's folder (no data): for ``auditlens init``. Past ``timeout_s`` the process is
        killed and FutureTimeout raised."""
        from concurrent.futures import TimeoutError as FutureTimeout

        future = self._call("describe", request=request)
        try:
            value = future.result(timeout=timeout_s)
        except FutureTimeout:
            self.kill()
            raise
        return value if isinstance(value, dict) else {}

    def audit(self, planned: Any, on_start: Any = None) -> AuditResult:
        """One planned audit, run in the model's process and judged again here from its own metrics. ``on_start`` (no
        arguments) is called when a lane of the process takes it: until then it waits behind the others."""
        from audits.core.runner import judge

        value = self._call("audit", on_start=on_start, planned=planned).result()
        try:
            result = decode_result(value)
        except Exception as exc:  # a reply that is not a result: the audit is an error, never a pass
            return AuditResult(audit=planned.id, verdict=Verdict.ERROR,
                               reason=f"the model's process answered with something that is not a result ({type(exc).__name__})")
        if result.audit != planned.id:
            return AuditResult(audit=planned.id, verdict=Verdict.ERROR,
                               reason=f"the model's process answered for audit {result.audit!r} instead")
        return judge(planned, result)

    def kill(self) -> None:
        if self._spawned is not None:
            self._spawned.kill()

    def close(self) -> None:
        if self._spawned is None:
            return
        if self.process.poll() is None:
            try:
                with self._lock:
                    _write_frame(self._spawned.out, pickle.dumps({"id": 0, "op": "stop"}))
                self.process.wait(30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass  # discard kills it
        self._spawned.discard()


def _quietly(callback: Any) -> None:
    """A listener's callback (the command's display): its failure is not the audit's."""
    try:
        callback()
    except Exception:  # noqa: BLE001
        logging.getLogger(__name__).debug("an on_start callback failed", exc_info=True)


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
        return True
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False


# ---------------------------------------------------------------------------------------------
# the model's side


class _Worker:
    def __init__(self, write: Any, spare_pool: Any = None) -> None:
        self.write = write
        self.spare_pool = spare_pool  # worker processes started with this one (a spare's), for the lanes of its audit
        self.lock = threading.Lock()
        self.inputs: Any = None
        self.cluster: Any = None
        self.engine: Any = None  # the Dask engine the audits run on (engine dask)
        self.audit_pool: Any = None  # the local engine's worker processes (execution.processes > 1: one fewer)
        self.isolation: dict[str, str] = {}
        self.pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="audit")  # answers requests; runs none at once
        self.lanes = 1  # audits at once (engine local): this process, and lanes - 1 worker processes (audit_pool)
        self.waiting: queue.Queue = queue.Queue()  # audits waiting for a free lane

    def reply(self, request_id: int, ok: bool, value: Any) -> None:
        body = {"id": request_id, "ok": ok, "value" if ok else "error": value}
        with self.lock:
            _write_frame(self.write, json.dumps(body, allow_nan=True, default=str).encode("utf-8"))

    def prepare(self, ref: Any, loaded: Any, model_dir: str, baseline: tuple[Any, str] | None, baseline_note: str) -> dict:
        import contextlib

        from tasks.adapters.full_pass import cluster_address
        from tasks.adapters.inputs import assemble_loaded
        from tasks.adapters.models import load_model_files
        from tasks.adapters.sandbox import drop_capabilities, restrict

        settings = loaded.settings
        security = settings.security
        # before anything of the model is read: this process (and every one it starts) writes only in its own folder,
        # and, with the local engine, opens no TCP connection (a Dask engine talks to its cluster)
        dask = settings.execution.engine == "dask"
        readable = _readable(loaded, model_dir, baseline)
        if dask:  # its nannies watch their workers through /proc, and it reads its configuration once, on import
            import distributed  # noqa: F401

            readable.append(Path("/proc"))
        writable = [Path.cwd(), Path("/dev")]
        rules = rules_of(writable, readable)
        spare, self.spare_pool = self.spare_pool, None
        if not dask:  # the lanes beyond this process's own: started before anything of the model is read (or ahead,
            # with this process: ``spare``); each confines itself as this process does below
            self.lanes = lanes(settings.execution.processes, len(loaded.plan))
            threads = max(1, available_cores() // self.lanes)
            if self.lanes > 1 and spare is not None and (spare.processes, spare.threads) == (self.lanes - 1, threads):
                self.audit_pool, spare = spare, None
            elif self.lanes > 1:
                self.audit_pool = AuditPool(self.lanes - 1, Path.cwd(), rules, threads=threads)
        if spare is not None:
            spare.close()
        only_thread("the model's process")
        self.isolation = restrict(writable, readable, allow_tcp=dask)
        if drop_capabilities():  # run as root: without them, the auditor's /proc entries stay closed to it
            self.isolation["capabilities"] = "none (dropped: the audit runs as root)"
        if self.audit_pool is not None:  # its thread, started now, is confined and without capabilities too (both are
            # a thread's own); its workers import the plan's libraries while the data is read
            self.audit_pool.open(rules, planned_imports(loaded.plan))
        model = load_model_files(model_dir, ref, settings.model.task, settings.model.device, security)
        baseline_model = None
        if baseline is not None:
            baseline_ref, baseline_dir = baseline
            try:
                baseline_model = load_model_files(baseline_dir, baseline_ref, settings.model.task, settings.model.device, security)
            except error_types.ModelLoadError as exc:
                baseline_note = f"the @{baseline_ref.alias} version {baseline_ref.version} could not be loaded: {exc.problem}"
        self.cluster = contextlib.ExitStack()
        address = self.cluster.enter_context(cluster_address(settings.execution))
        if address is not None:  # one cluster, started here (its processes inherit this environment), for all
            execution = settings.execution.model_copy(update={"address": address})
            loaded = dataclasses.replace(loaded, settings=settings.model_copy(update={"execution": execution}))
        self.inputs = assemble_loaded(ref, loaded, model, baseline_model, baseline_note)
        if address is not None:  # the audits go to the same cluster, the context sent to it once for all of them
            from distributed import Client

            from tasks.adapters.full_pass import DaskEngine

            client = Client(address, timeout=settings.execution.connect_timeout_s)  # the default: DaskEngine waits on it
            self.cluster.callback(client.close)
            self.engine = DaskEngine(client)
        if self.engine is None:
            self._open_lanes()
        described = describe_inputs(self.inputs)
        described["params"].update({f"isolation.{k}": v for k, v in self.isolation.items()})
        described["params"]["execution.audit_processes"] = str(self.lanes if self.engine is None else "dask")
        return described

    def describe(self, request: dict[str, Any]) -> dict[str, Any]:
        from types import SimpleNamespace

        from tasks.adapters.sandbox import drop_capabilities, restrict
        from tasks.adapters.model_facts import describe_model_folder

        # before anything of the model is read, as prepare: writes only in its own folder, reads the model's and the
        # system's files, opens no connection
        if self.spare_pool is not None:
            self.spare_pool.close()
            self.spare_pool = None
        only_thread("the model's process")
        self.isolation = restrict([Path.cwd(), Path("/dev")], _readable(SimpleNamespace(data_roles=()), request["model_dir"], None),
                                  allow_tcp=False)
        drop_capabilities()
        return describe_model_folder(request)

    def _open_lanes(self) -> None:
        """Audits wait in one queue; each lane takes the next when it is free: this process's own (the inputs are
        already here) and one per worker process of the pool (the inputs sent once). A lane whose process died closes;
        the others go on."""
        if self.audit_pool is not None:
            self.audit_pool.share(self.inputs.context, self.inputs.full)

        def here(planned: Any) -> dict:
            from audits.core.runner import run_planned

            return encode_result(run_planned(planned, self.inputs.context, self.inputs.full))

        def there(planned: Any) -> dict:
            return encode_result(self.audit_pool.run(planned).result())

        threading.Thread(target=self._lane, args=(here,), name="audit-lane", daemon=True).start()
        for warming in self.audit_pool.warming if self.audit_pool else ():
            threading.Thread(target=self._lane, args=(there, warming), name="audit-lane", daemon=True).start()

    def _lane(self, run: Any, ready: Future | None = None) -> None:
        """Take the next audit whenever free. A worker's lane takes none before its process has imported its libraries
        (``ready``): an audit taken earlier would wait there while this process's own lane, free, could have run it."""
        from concurrent.futures.process import BrokenProcessPool

        if ready is not None:
            try:
                ready.result()
            except BaseException:  # noqa: BLE001 - a worker that could not start: its lane never opens
                return
        while True:
            item = self.waiting.get()
            if item is None:
                self.waiting.put(None)  # every lane sees the end
                return
            planned, future, request_id = item
            self.started(request_id)
            try:
                future.set_result(run(planned))
            except BrokenProcessPool:  # its process died (a crash in native code, the memory killer): this audit is lost
                future.set_result(encode_result(AuditResult(
                    audit=planned.id, verdict=Verdict.ERROR,
                    reason="the process running this audit ended abruptly (a crash in the model's or a library's native "
                           "code, or out of memory); set execution.processes: 1 to run the audits in the model's process")))
                return  # this lane closes; the others take the rest
            except BaseException as exc:  # noqa: BLE001 - handed to the request
                future.set_exception(exc)

    def started(self, request_id: int) -> None:
        """Tell the auditor that a lane took this request's audit (a frame of its own, before the reply)."""
        with self.lock:
            _write_frame(self.write, json.dumps({"id": request_id, "started": True}).encode("utf-8"))

    def audit(self, planned: Any, request_id: int = 0) -> dict:
        from audits.core.runner import run_planned

        if self.inputs is None:
            raise ModelWorkerError("an audit was asked for before the inputs were prepared")
        if self.engine is None:
            future: Future = Future()
            self.waiting.put((planned, future, request_id))
            return future.result()
        self.started(request_id)  # the cluster schedules it now
        return encode_result(next(self.engine.map(run_planned, [planned], context=self.inputs.context, full=self.inputs.full)))

    def handle(self, request: dict) -> None:
        try:
            args = {k: v for k, v in request.items() if k not in ("id", "op")}
            if request["op"] == "audit":
                args["request_id"] = request["id"]
            value = getattr(self, request["op"])(**args)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the auditor as data
            self.reply(request["id"], False, _encode_error(exc))
        else:
            self.reply(request["id"], True, value)

    def serve(self, read: Any) -> None:
        while True:
            body = _read_frame(read)
            if body is None:
                break
            request = pickle.loads(body)  # noqa: S301 - from the auditor, which started this process
            if request["op"] == "stop":
                break
            if request["op"] in ("prepare", "describe"):
                self.handle(request)  # before any audit
            else:
                self.pool.submit(self.handle, request)
        self.pool.shutdown(wait=True)
        self.waiting.put(None)
        for pool in (self.audit_pool, self.spare_pool):
            if pool is not None:
                pool.close()
        if self.cluster is not None:
            self.cluster.close()


def _readable(loaded: Any, model_dir: str, baseline: tuple[Any, str] | None) -> list[Path]:
    """What the model's process may read: the system's libraries and configuration, Python and this checkout, the
    model's files, the data, matplotlib's cache, its own /proc entry and the system-wide /proc files libraries read.
    Not the home folder (~/.mlflow/credentials, ~/.netrc, cloud keys), not other processes' /proc entries (their
    environments), not the tracking store unless it lies beside the data."""
    import site
    import sysconfig

    import matplotlib

    paths = [Path(p) for p in ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/sys", "/dev")]
    paths += [Path(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(),
                                *sysconfig.get_paths().values()}]
    paths += [ROOT, Path(model_dir), Path(matplotlib.get_cachedir()), Path(f"/proc/{os.getpid()}")]
    paths += [Path("/proc") / name for name in ("cpuinfo", "meminfo", "stat", "loadavg", "sys", "self", "thread-self")]
    if baseline is not None:
        paths.append(Path(baseline[1]))
    for role in loaded.data_roles:
        spec = Path(loaded.data_path(role))
        base = spec if spec.is_dir() else spec.parent
        while any(ch in str(base) for ch in "*?[") and base != base.parent:
            base = base.parent
        paths.append(base)
    return sorted({p.resolve() for p in paths if p.exists()})


def _import_all(names: tuple[str, ...]) -> None:
    """Our own libraries, imported before the first request (and before the confinement it brings)."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # an optional library not installed: the audit that needs it says so


def main(argv: list[str]) -> None:
    from tasks.adapters.tracking import quiet_environment, quiet_joblib

    quiet_environment()
    read, write = os.fdopen(int(argv[0]), "rb"), os.fdopen(int(argv[1]), "wb")
    sys.stdout = sys.stderr  # the model's prints never reach the frames
    warm = tuple(filter(None, (argv[2] if len(argv) > 2 else "").split(",")))
    _import_all(WARM_IMPORTS)
    spare_pool = None
    if len(argv) > 3 and argv[3]:  # a spare: its lanes' worker processes start now, importing the same libraries. Not
        # at once: the command that started this one still imports and checks its input (three processes importing on
        # two cores slow it), and a command whose input fails those checks ends about now
        processes, threads = (int(v) for v in argv[3].split(","))
        spare_pool = AuditPool(processes, Path.cwd(), threads=threads, warm=warm) if processes else None
    _import_all(warm)
    quiet_joblib()
    _Worker(write, spare_pool).serve(read)
    # the auditor waits for this process to end: its exit handlers run (multiprocessing releases the lanes' locks), but
    # not the full garbage collections of Python's teardown over every object the libraries left (about a second)
    import gc

    gc.disable()
    gc.freeze()


if __name__ == "__main__":
    main(sys.argv[1:])
