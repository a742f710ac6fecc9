"""Audits in parallel processes: the same figures as in one process, and a worker that dies costs its audit only."""

from __future__ import annotations

import math
import os
from pathlib import Path

from audits.core.audit import Audit
from audits.core.plan import AuditPlan, PlannedAudit
from audits.core.runner import run_planned
from audits.testing import classifier_context
from tasks.adapters.audit_pool import AuditPool, lanes


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
    pool = AuditPool(2, tmp_path, [tmp_path, Path("/dev")], [Path("/")])
    try:
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

    pool = AuditPool(2, tmp_path, [tmp_path, Path("/dev")], [Path("/")])
    try:
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
    pool = AuditPool(1, tmp_path, [tmp_path, Path("/dev")], [Path("/")], warm=(*warm, "no_such_library"))
    try:
        assert pool.warming[0].result(timeout=300)  # warmed, the missing library passed over
        assert pool.executor.submit(_imported, "great_expectations").result(timeout=60)
        assert pool.executor.submit(_imported, "shap").result(timeout=60)
    finally:
        pool.close()
    bare = AuditPool(1, tmp_path, [tmp_path, Path("/dev")], [Path("/")])
    try:
        bare.warming[0].result(timeout=300)
        assert not bare.executor.submit(_imported, "great_expectations").result(timeout=60)
    finally:
        bare.close()
