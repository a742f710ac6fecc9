"""Reruns reuse what did not change, through the real flow and the command: the same model on the same data again is
served from the cache and says so; --no-cache, new data or a changed audit entry recompute; the record still verifies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.audit_model import audit_model
from tasks.audit_tasks import NOT_STARTED
from tasks.adapters.tracking import make_client
from tests.helpers import build_world, figures, same, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"
PLAN = [{"audit": "performance"}, {"audit": "drift"}, {"audit": "shap", "config": {"rows": 40}}]


def audited(world, config: Path, **options) -> tuple[dict, object]:
    summary = audit_model(model_uri="models:/e2e-model/1", config_path=str(config), tracking_uri=world.tracking_uri, **options)
    return summary, make_client(world.tracking_uri).get_run(summary["run_id"])


def cached(run) -> dict[str, float]:
    return {k.removeprefix("audit.").removesuffix(".cached"): v for k, v in run.data.metrics.items()
            if k.startswith("audit.") and k.endswith(".cached")}


def test_a_rerun_reuses_every_result_and_any_change_recomputes(tmp_path, prefect_harness):
    world = build_world(tmp_path / "world")
    config = write_config(world.folder, world.tracking_uri, name="plan.yaml", audits=PLAN)
    _, first = audited(world, config)
    assert cached(first) == {"performance": 0, "drift": 0, "shap": 0}

    summary, again = audited(world, config)
    assert cached(again) == {"performance": 1, "drift": 1, "shap": 1}
    assert same(figures(again), figures(first)) and summary["verdict"] == first.data.tags["audit.verdict"]
    assert all(outcome["cached"] for outcome in summary["audits"].values())
    # the model's process never started: the record does not claim a confinement that did not run
    assert again.data.params["isolation.filesystem"] == NOT_STARTED
    assert first.data.params["isolation.filesystem"] != NOT_STARTED

    # one audit's entry changed: that audit alone is computed again
    changed = write_config(world.folder, world.tracking_uri, name="changed.yaml",
                           audits=[*PLAN[:2], {"audit": "shap", "config": {"rows": 41}}])
    _, partly = audited(world, changed)
    assert cached(partly) == {"performance": 1, "drift": 1, "shap": 0}

    # asked not to reuse: everything computed again (a new seed and every other key part: tests/unit/test_result_cache.py)
    _, forced = audited(world, config, use_cache=False)
    assert cached(forced) == {"performance": 0, "drift": 0, "shap": 0}
    assert same(figures(forced), figures(first))
    _, after_forced = audited(world, config)  # what the forced run computed is kept for the next
    assert cached(after_forced) == {"performance": 1, "drift": 1, "shap": 1}

    # new current data under the same file name: computed again, and the figures follow the data
    world.current.write_text(world.current.read_text().replace(",red,", ",blue,", 20))
    _, new_data = audited(world, config)
    assert cached(new_data) == {"performance": 0, "drift": 0, "shap": 0}
    assert not same(figures(new_data), figures(first))


def test_the_command_says_what_it_reused_and_no_cache_recomputes(tmp_path, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    world = build_world(tmp_path / "world")
    config = write_config(world.folder, world.tracking_uri, name="plan.yaml", audits=PLAN[:2])
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")},
           "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}

    def run(*extra: str) -> str:
        done = subprocess.run([str(AUDITLENS), "audit", "--model", "models:/e2e-model/1", "--config", str(config),
                               "--fail-on", "never", *extra], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    first = run()
    assert "reused" not in first
    second = run()
    assert "2 of 2 results reused" in second and second.count("(cached)") == 2
    third = run("--no-cache")
    assert "reused" not in third and "(cached)" not in third
    # a record made of reused results verifies like any other
    client = make_client(world.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("auditlens/e2e-model").experiment_id], order_by=["attributes.start_time ASC"])
    assert [cached(r)["performance"] for r in runs] == [0, 1, 0]
    check = subprocess.run([str(AUDITLENS), "verify", runs[1].info.run_id, "--tracking-uri", world.tracking_uri, "--integrity-only"],
                           env=env, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
