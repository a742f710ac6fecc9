"""The model's process, piece by piece: its environment, results as data (nothing lost, nothing executable), the
auditor's second judgement, and the kernel's confinement."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from audits.core.plan import AuditPlan
from audits.core.result import Artifact, AuditResult, Verdict
from audits.core.runner import judge, run_planned
from audits.testing import classifier_context, text_context
from tasks.adapters.model_worker import decode_result, encode_result, worker_environment
from tests.helpers import wait_for


def test_the_environment_keeps_what_python_needs_and_leaves_every_credential_behind():
    auditor = {"PATH": "/usr/bin", "HOME": "/home/a", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "2", "LC_ALL": "C",
               "MLFLOW_TRACKING_URI": "http://alice:pw@mlflow:5000", "MLFLOW_TRACKING_USERNAME": "alice",
               "MLFLOW_TRACKING_PASSWORD": "pw", "MLFLOW_TRACKING_TOKEN": "t", "PREFECT_API_URL": "http://p:4200/api",
               "PREFECT_API_KEY": "k", "AUDITLENS_SIGNING_KEY": "s" * 40, "AUDITLENS_SIGNING_KEY_FILE": "/run/secrets/k",
               "AUDITLENS_WEBHOOK_SECRET": "w", "AWS_SECRET_ACCESS_KEY": "a", "DATABASE_URL": "postgres://u:p@db/x",
               "SOMETHING_ELSE": "x"}
    env = worker_environment(auditor)
    assert {k: env[k] for k in ("PATH", "HOME", "LANG", "OMP_NUM_THREADS", "LC_ALL")} == {
        k: auditor[k] for k in ("PATH", "HOME", "LANG", "OMP_NUM_THREADS", "LC_ALL")}
    assert env["MLFLOW_TRACKING_URI"].startswith("none://")
    leaked = [k for k, v in env.items() if v in ("pw", "t", "k", "s" * 40, "w", "a", "x") or "alice" in v or "postgres" in v]
    assert leaked == []
    assert not [k for k in env if k.startswith(("PREFECT_", "AWS_")) or "SIGNING" in k or "SECRET" in k]


def _results():
    """Real results of audits with every kind of artifact: figures, tables, html pages, fragments, json."""
    plan = AuditPlan(audits=[{"audit": "performance"}, {"audit": "calibration"}, {"audit": "data_quality"},
                             {"audit": "drift"}, {"audit": "conformal"}]).build()
    tabular = [run_planned(p, classifier_context()) for p in plan]
    text = [run_planned(p, text_context()) for p in AuditPlan(audits=[{"audit": "text_explanations"}]).build()]
    return tabular + text


def test_a_result_crosses_as_json_and_comes_back_whole():
    import json

    results = _results()
    kinds = {a.kind for r in results for a in r.artifacts}
    assert kinds >= {"figure", "table", "html", "json"}, kinds
    for result in results:
        wire = json.loads(json.dumps(encode_result(result), allow_nan=True))  # what the pipe carries
        back = decode_result(wire)
        assert (back.audit, back.verdict, back.reason, back.info, back.checks) == (result.audit, result.verdict, result.reason,
                                                                                   {k: v for k, v in result.info.items()}, result.checks)
        assert back.metrics.keys() == result.metrics.keys()
        for key, value in result.metrics.items():
            assert back.metrics[key] == value or (math.isnan(value) and math.isnan(back.metrics[key])), key
        assert back.ranges == result.ranges and back.chance == result.chance
        # every file the record writes is the same, byte for byte
        assert [(a.name, a.kind, a.title, a.encoded()) for a in back.artifacts] == \
               [(a.name, a.kind, a.title, a.encoded()) for a in result.artifacts], result.audit


def test_a_reply_that_is_not_a_result_is_refused():
    good = encode_result(AuditResult(audit="x", metrics={"x.a": 1.0}))
    for broken in ({**good, "verdict": "SUPERPASS"}, {**good, "metrics": {"x.a": "a"}},
                   {**good, "artifacts": [{"name": "a.png", "kind": "figure", "title": "", "content": "!!"}]},
                   {**good, "artifacts": [{"name": "a.sh", "kind": "shell", "title": "", "content": "rm"}]}):
        with pytest.raises((ValueError, KeyError, TypeError)):
            decode_result(broken)


def test_the_auditor_judges_again_a_verdict_the_metrics_do_not_support():
    [planned] = AuditPlan(audits=[{"audit": "performance", "thresholds": [{"metric": "performance.current.accuracy", "min": 0.9}]}]).build()
    forged = AuditResult(audit="performance", verdict=Verdict.PASS, reason="all good",
                         metrics={"performance.current.accuracy": 0.55})
    judged = judge(planned, decode_result(encode_result(forged)))
    assert judged.verdict is Verdict.FAIL and "0.55" in judged.reason
    honest = judge(planned, forged.with_(metrics={"performance.current.accuracy": 0.95}))
    assert honest.verdict is Verdict.PASS


def test_a_label_from_the_data_that_reads_as_broken_tex_still_draws():
    from matplotlib.figure import Figure

    figure = Figure()
    axes = figure.add_subplot()
    axes.bar(["price $ in \\frac{ $ usd", "b"], [1, 2])
    axes.set_title("cost ($) vs $\\notacommand$")
    assert Artifact.figure("bars", figure).content[:8] == b"\x89PNG\r\n\x1a\n"


CONFINED = textwrap.dedent("""
    import os, socket, sys
    from pathlib import Path
    from tasks.adapters.sandbox import restrict, abi_version
    box, data, outside = map(Path, sys.argv[1:4])
    said = restrict([box, Path("/dev")], [Path(sys.prefix), Path(sys.base_prefix), Path("/usr"), Path("/lib"), Path("/etc"),
                                          data, Path(f"/proc/{os.getpid()}")], allow_tcp=False)
    def attempt(what, action):
        try:
            action()
            print(what, "allowed")
        except OSError:
            print(what, "refused")
    attempt("write box", lambda: (box / "f").write_text("x"))
    attempt("write outside", lambda: (outside / "f").write_text("x"))
    attempt("read data", lambda: (data / "d.csv").read_text())
    attempt("read outside", lambda: (outside / "secret").read_text())
    attempt("read parent environ", lambda: open(f"/proc/{os.getppid()}/environ", "rb").read())
    attempt("tcp", lambda: socket.create_connection(("127.0.0.1", int(sys.argv[4])), timeout=3))
    print("abi", abi_version())
""")


def test_the_kernel_confines_the_model_process(tmp_path):
    import socket

    from tasks.adapters.sandbox import abi_version

    if abi_version() < 4:  # the machine's kernel decides; the record then says 'unavailable' (next test)
        pytest.skip(f"this kernel's Landlock ABI is {abi_version()}: the model's process is not confined here")
    box, data, outside = tmp_path / "box", tmp_path / "data", tmp_path / "outside"
    for folder in (box, data, outside):
        folder.mkdir()
    (data / "d.csv").write_text("a\n1\n")
    (outside / "secret").write_text("s")
    with socket.create_server(("127.0.0.1", 0)) as server:
        done = subprocess.run([sys.executable, "-c", CONFINED, str(box), str(data), str(outside), str(server.getsockname()[1])],
                              capture_output=True, text=True, timeout=60, cwd=box)
    said = dict(line.rsplit(" ", 1) for line in done.stdout.splitlines())
    assert said == {"write box": "allowed", "write outside": "refused", "read data": "allowed", "read outside": "refused",
                    "read parent environ": "refused", "tcp": "refused", "abi": said["abi"]}, done.stdout + done.stderr
    assert not (outside / "f").exists()


def test_without_landlock_the_record_says_the_process_is_not_confined(monkeypatch):
    from tasks.adapters import sandbox

    monkeypatch.setattr(sandbox, "abi_version", lambda: 0)
    assert sandbox.restrict([], [], allow_tcp=False) == {"filesystem": "unavailable (this kernel has no Landlock)",
                                                          "network": "unavailable"}


def test_a_signing_key_file_the_model_could_read_is_refused(tmp_path, monkeypatch):
    from tasks.adapters.errors import ConfigError
    from tasks.adapters.settings import load_settings
    from tasks.audit_tasks import _key_file_out_of_reach

    data, secrets, model = tmp_path / "data", tmp_path / "secrets", tmp_path / "model"
    for folder in (data, secrets, model):
        folder.mkdir()
    (data / "audit.yaml").write_text("kind: audit\ndata: {reference: r.csv, current: c.csv}\naudits: [{audit: performance}]\n")
    loaded = load_settings(data / "audit.yaml")
    for beside in (data / "key", model / "key"):
        beside.write_text("k" * 40)
        monkeypatch.setenv("AUDITLENS_SIGNING_KEY_FILE", str(beside))
        with pytest.raises(ConfigError, match="which the model's process may read"):
            _key_file_out_of_reach(loaded, str(model), None)
    (secrets / "key").write_text("k" * 40)
    monkeypatch.setenv("AUDITLENS_SIGNING_KEY_FILE", str(secrets / "key"))
    _key_file_out_of_reach(loaded, str(model), None)  # a folder of its own: fine


# --- a model process started ahead (the CLI starts one while it imports its own libraries) ----------------------------

@pytest.fixture()
def spare():
    from tasks.adapters import model_worker

    yield model_worker
    model_worker.discard_spare()


def test_a_model_process_started_ahead_is_the_one_the_next_audit_takes(spare):
    spare.prestart()
    started = spare._spare["process"].process
    worker = spare.ModelWorker()
    worker._start()
    try:
        assert worker.process is started and spare._spare["process"] is None
    finally:
        worker.close()
    assert started.returncode == 0  # it answered the stop: it was alive and listening


def test_a_model_process_started_with_another_environment_is_not_used(spare, monkeypatch):
    spare.prestart()
    started = spare._spare["process"].process
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a variable the model's process is given changed after it started
    worker = spare.ModelWorker()
    worker._start()
    try:
        assert worker.process is not started
        assert started.poll() is not None  # killed, not left behind
    finally:
        worker.close()


def test_keep_starts_the_next_one_and_discarding_ends_it(spare):
    spare.prestart(keep=True)
    first = spare._spare["process"].process
    worker = spare.ModelWorker()
    worker._start()
    worker.close()
    following = spare._spare["process"].process
    assert worker.process is first and following is not first and following.poll() is None
    spare.discard_spare()
    assert following.poll() is not None and spare._spare["process"] is None


def _workers(pid: int) -> set[int]:
    """The spawned worker processes among ``pid``'s children (not multiprocessing's resource tracker)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            command = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in command and b"resource_tracker" not in command:
                found.add(int(child))
    return found


def test_a_spare_started_for_audits_starts_its_lanes_worker_processes_too(spare, monkeypatch):
    """The worker processes of a spare's lanes start with it (spare_pool), so that they have imported their libraries
    when its audit comes, instead of starting when the audit asks; one started for anything else starts none."""
    import time

    from tasks.adapters import audit_pool

    monkeypatch.setattr(audit_pool, "available_cores", lambda: 3)
    assert spare.spare_pool(1) == (2, 1)  # three lanes of one thread: two worker processes beside the model's own
    assert spare.spare_pool(None) == (0, 0) and spare.spare_pool(2) == (0, 0)  # not the default plan's lanes
    monkeypatch.undo()
    expected = spare.spare_pool(audit_pool.lane_threads(None, 1000))[0]
    spare.prestart(threads=audit_pool.lane_threads(None, 1000), pool=True)
    started = spare._spare["process"].process
    wait_for(lambda: len(_workers(started.pid)) >= expected, 60, 0.2)
    assert len(_workers(started.pid)) == expected
    spare.discard_spare()
    bare = spare._Spawned.start(threads=audit_pool.lane_threads(None, 1000))
    try:
        time.sleep(3)
        assert len(_workers(bare.process.pid)) == 0
    finally:
        bare.discard()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_spare_s_worker_ends_with_it_even_when_it_dies_at_once(spare):
    """A spare model process killed right after it started its lanes' worker (an audit that fails on its input, a
    command stopped): the worker, which may not yet have asked for the death signal, ends too instead of waiting forever
    on its queue."""
    from tasks.adapters import audit_pool

    if spare.spare_pool(audit_pool.lane_threads(None, 1000))[0] == 0:
        pytest.skip("one core: a spare starts no worker process")
    spare.prestart(threads=audit_pool.lane_threads(None, 1000), pool=True)
    started = spare._spare["process"].process
    workers = wait_for(lambda: _workers(started.pid), 60, 0.01)
    started.kill()  # as soon as its worker exists: most likely before that worker's initializer ran
    started.wait(10)
    wait_for(lambda: not any(_alive(w) for w in workers), 60, 0.2)
    assert not any(_alive(w) for w in workers)


def test_the_imports_before_the_first_request_start_no_python_thread():
    """The model's process confines itself (Landlock) when its first request comes: a thread started before that would
    stay unconfined. The imports paid ahead (``WARM_IMPORTS``) must start none."""
    code = ("import importlib, threading\nfrom tasks.adapters.model_worker import WARM_IMPORTS\n"
            "[importlib.import_module(m) for m in WARM_IMPORTS]\nprint(threading.active_count())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "1", done.stderr


def test_the_model_process_libraries_get_their_lane_share_of_the_cores(tmp_path, monkeypatch):
    """Two lanes on two cores whose libraries each ask for both cores contend (bench_speed's whole plan: 28 s; with
    one each, 25 s): the model's process is given its share, as its worker processes are, and only on the local engine
    and with several lanes; a thread count the user set is theirs."""
    from tasks.adapters import audit_pool
    from tasks.adapters.model_worker import model_threads
    from tasks.adapters.settings import load_settings

    monkeypatch.setattr(audit_pool, "available_cores", lambda: 4)
    audits = "audits: [{audit: performance}, {audit: calibration}, {audit: drift}]\n"

    def threads(extra: str = "", plan: str = audits) -> int | None:
        path = tmp_path / "audit.yaml"
        path.write_text(f"kind: audit\ndata: {{reference: r.csv, current: c.csv}}\n{extra}{plan}")
        return model_threads(load_settings(path))

    assert threads() == 1  # three lanes on four cores: one thread each
    assert threads("execution: {processes: 2}\n") == 2
    assert threads("execution: {processes: 1}\n") is None  # one lane: the libraries' own default
    assert threads(plan="audits: [{audit: performance}]\n") is None
    assert threads("execution: {engine: dask}\n") is None  # the cluster's workers size their own
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert {worker_environment({}, threads=2)[name] for name in audit_pool.THREAD_VARIABLES} == {"2"}
    assert worker_environment({"OMP_NUM_THREADS": "7"}, threads=2)["OMP_NUM_THREADS"] == "7"
    assert "OMP_NUM_THREADS" not in worker_environment({}, threads=None)


def test_an_audit_is_told_started_when_a_lane_takes_it_not_while_it_waits():
    """The model's process writes a 'started' frame for an audit when a lane takes it, so that the command's display
    shows an audit waiting behind others as waiting, not running; the auditor's side calls that audit's on_start."""
    import io
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tasks.adapters import model_worker

    out = io.BytesIO()
    worker = model_worker._Worker(out)
    worker.inputs = object()  # prepared
    gate = threading.Event()

    def run(planned):
        gate.wait(10)
        return {"audit": planned}

    threading.Thread(target=worker._lane, args=(run,), daemon=True).start()  # one lane for two audits

    def frames() -> list[dict]:
        stream, found = io.BytesIO(out.getvalue()), []
        while (body := model_worker._read_frame(stream)) is not None:
            found.append(json.loads(body))
        return found

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(worker.audit, "a", request_id=1)
        wait_until(lambda: frames() == [{"id": 1, "started": True}])
        second = pool.submit(worker.audit, "b", request_id=2)
        time.sleep(0.3)
        assert frames() == [{"id": 1, "started": True}]  # b waits for the lane: not started
        gate.set()
        assert (first.result(10), second.result(10)) == ({"audit": "a"}, {"audit": "b"})
    assert frames() == [{"id": 1, "started": True}, {"id": 2, "started": True}]
    worker.waiting.put(None)

    # the auditor's side: a started frame calls that request's on_start and resolves nothing
    told, auditor = [], model_worker.ModelWorker()
    auditor._on_start[7] = lambda: told.append(7)
    replies = io.BytesIO()
    model_worker._write_frame(replies, json.dumps({"id": 7, "started": True}).encode())
    replies.seek(0)
    auditor._spawned = type("Spawned", (), {"read": replies, "process": type("P", (), {"poll": lambda self: 0})()})()
    auditor._read()
    assert told == [7] and auditor._on_start == {}


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
