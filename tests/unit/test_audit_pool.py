"""Audits in parallel processes: the same figures as in one process, and a worker that dies costs its audit only."""

from __future__ import annotations

import math
import os
from pathlib import Path

from audits.core.audit import Audit
from audits.core.plan import AuditPlan, PlannedAudit
from audits.core.runner import run_planned
from audits.testing import classifier_context
from tasks.adapters.audit_pool import AuditPool, lanes, rules_of


class Dies(Audit):
    """An audit whose process ends in the middle of it, as a crash in native code would end it."""

    name = "dies"

    def compute(self, context):
        os._exit(3)


def _same(a: dict[str, float], b: dict[str, float]) -> list[str]:
    return [k for k in a.keys() | b.keys() if not (a.get(k) == b.get(k) or (math.isnan(a.get(k, 0)) and math.isnan(b.get(k, 0))))]


def test_audits_in_two_processes_give_the_figures_of_one(tmp_path):
    context = classifier_context()
    plan = AuditPlan(audits=[{"audit": "performance"}, {"audit": "calibration"}, {"audit": "drift"},
                             {"audit": "conformal"}, {"audit": "ood"}, {"audit": "importance"}]).build()
    rules = rules_of([tmp_path, Path("/dev")], [Path("/")])
    pool = AuditPool(2, tmp_path, rules)
    try:
        pool.open(rules)
        pool.share(context, None)
        futures = [pool.run(p) for p in plan]
        remote = [f.result(timeout=300) for f in futures]
        pids = pool.executor.submit(os.getpid).result(timeout=60), {p.pid for p in pool.executor._processes.values()}
    finally:
        pool.close()
    local = [run_planned(p, context) for p in plan]
    assert [r.audit for r in remote] == [p.id for p in plan]
    for here, there in zip(local, remote):
        assert (there.verdict, there.reason) == (here.verdict, here.reason), here.audit
        assert _same(here.metrics, there.metrics) == [], here.audit
        assert [a.name for a in there.artifacts] == [a.name for a in here.artifacts]
    assert len(pids[1]) == 2 and os.getpid() not in pids[1]  # two processes of their own


def test_a_worker_that_dies_is_an_error_for_its_audit_not_a_hang(tmp_path):
    from concurrent.futures.process import BrokenProcessPool

    import pytest

    rules = rules_of([tmp_path, Path("/dev")], [Path("/")])
    pool = AuditPool(2, tmp_path, rules)
    try:
        pool.open(rules)
        pool.share(classifier_context(), None)
        with pytest.raises(BrokenProcessPool):
            pool.run(PlannedAudit("dies", Dies(), ())).result(timeout=120)
    finally:
        pool.close()
    assert not any(p.is_alive() for p in pool.executor._processes.values()) if pool.executor._processes else True


def test_the_pool_is_never_larger_than_the_plan_or_the_configured_number():
    assert lanes(None, 1) == 1
    assert lanes(4, 2) == 2
    assert lanes(1, 19) == 1
    assert 1 <= lanes(None, 19) <= 8



def _imported(name: str) -> bool:
    import sys

    return name in sys.modules


def test_workers_import_what_the_planned_audits_will_import_before_the_first_one_runs(tmp_path):
    from tasks.adapters.audit_pool import planned_imports

    plan = AuditPlan(audits=[{"audit": "data_quality"}, {"audit": "shap"}, {"audit": "performance"}]).build()
    warm = planned_imports(plan)
    assert warm == ("audits.data.data_quality", "great_expectations", "audits.explain.shap", "shap",
                    "audits.performance.performance")
    rules = rules_of([tmp_path, Path("/dev")], [Path("/")])
    pool = AuditPool(1, tmp_path, rules)
    try:
        pool.open(rules, (*warm, "no_such_library"))
        assert pool.warming[0].result(timeout=300)  # warmed, the missing library passed over
        assert pool.executor.submit(_imported, "great_expectations").result(timeout=60)
        assert pool.executor.submit(_imported, "shap").result(timeout=60)
    finally:
        pool.close()
    bare = AuditPool(1, tmp_path, rules)
    try:
        bare.open(rules)
        bare.warming[0].result(timeout=300)
        assert not bare.executor.submit(_imported, "great_expectations").result(timeout=60)
    finally:
        bare.close()


def _write(path: str) -> str:
    try:
        Path(path).write_text("x")
        return "written"
    except PermissionError:
        return "refused"


POOL_THREADS = """
import sys, threading
from pathlib import Path
from tasks.adapters.audit_pool import AuditPool, rules_of
folder = Path(sys.argv[1])
rules = rules_of([folder, Path("/dev")], [Path("/")])
pool = AuditPool(1, folder, None if sys.argv[2] == "ahead" else rules)
before = threading.active_count()
pool.open(rules)
pool.warming[0].result(timeout=300)
print(before, threading.active_count())
pool.close()
"""


def test_a_pool_starts_no_thread_before_it_is_opened(tmp_path):
    """The executor's thread unpickles what the workers send back; started before the model's process confines itself,
    it would stay unconfined (Landlock confines the asking thread and those it starts later). So a pool starts its
    workers with no thread of its own, and opening it starts one."""
    import subprocess
    import sys

    for how in ("with rules", "ahead"):
        done = subprocess.run([sys.executable, "-c", POOL_THREADS, str(tmp_path), how], capture_output=True, text=True,
                              timeout=300, cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 0, done.stderr
        before, after = (int(n) for n in done.stdout.split())
        assert (before, after > 1) == (1, True), (how, done.stdout)  # after: the executor's and its queue's


def test_a_pool_started_ahead_confines_each_worker_before_its_first_task(tmp_path):
    """A spare model process starts its workers before any audit is known: unconfined and importing. Opened, each is
    confined before it runs anything; and no audit runs in a pool that was not opened."""
    import pytest

    from tasks.adapters.sandbox import abi_version

    inside, outside = tmp_path / "inside", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    pool = AuditPool(1, inside, None, warm=("great_expectations",))
    try:
        assert pool.executor.submit(_imported, "great_expectations").result(timeout=300)  # imported on start
        assert pool.executor.submit(_write, str(outside / "before")).result(timeout=60) == "written"  # not confined yet
        with pytest.raises(RuntimeError, match="must be opened"):
            pool.run(PlannedAudit("performance", None, ()))
        pool.open(rules_of([inside, Path("/dev")], [Path("/")]))
        pool.warming[0].result(timeout=300)
        if abi_version() >= 1:
            assert pool.executor.submit(_write, str(outside / "after")).result(timeout=60) == "refused"
        assert pool.executor.submit(_write, str(inside / "after")).result(timeout=60) == "written"
    finally:
        pool.close()


CONFINE_WITH_A_THREAD = """
import threading, time
from pathlib import Path
from tasks.adapters.audit_pool import confine, rules_of
threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
try:
    confine(rules_of([Path("/tmp")], [Path("/")]))
except RuntimeError as exc:
    print("refused:", exc)
"""


def test_a_process_running_another_thread_is_not_confined_but_refused():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CONFINE_WITH_A_THREAD], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.startswith("refused: an audit's process runs other threads (Thread-1"), (done.stdout, done.stderr)
