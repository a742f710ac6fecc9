"""Every row, end to end through the command line: a partitioned Parquet dataset audited on this machine and on a real
dask.distributed LocalCluster (two worker processes on 127.0.0.1, started and stopped by the audit) gives the same record;
a fault in 40 rows of a million, which a 20,000-row sample misses almost half the time, is found."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from tasks.adapters.tracking import make_client
from tests.conftest import make_tabular
from tests.helpers import build_world, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]
AUDITLENS = Path(sys.executable).parent / "auditlens"
STRICT = {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x2", "min_value": -10, "max_value": 10}}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_world(tmp_path_factory.mktemp("every-row"))
    X, y = make_tabular(60_000, seed=5)
    current = pd.concat([X, y], axis=1)
    current.loc[[123, 31_337, 59_999], "x2"] = 99.0  # three rows break the user's expectation
    (world.folder / "current").mkdir()
    for i in range(6):
        current.iloc[i * 10_000:(i + 1) * 10_000].to_parquet(world.folder / "current" / f"part-{i:02d}.parquet", index=False,
                                                            row_group_size=5_000)
    X, y = make_tabular(25_000, seed=7)
    pd.concat([X, y], axis=1).to_parquet(world.folder / "reference.parquet", index=False)
    return world


@pytest.fixture(scope="module")
def cli_env(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    return {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}


def spawned_workers() -> set[int]:
    """Processes started by multiprocessing's spawn (how a LocalCluster starts its workers)."""
    import psutil

    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any("multiprocessing.spawn" in part or "spawn_main" in part for part in process.info["cmdline"] or []):
            found.add(process.info["pid"])
    return found


def audit(world, cli_env, name: str, execution: dict, audits: list, current: str = "current", segments: tuple = ()) -> dict:
    config = write_config(world.folder, world.tracking_uri, name=f"{name}.yaml",
                          data={"reference": "reference.parquet", "current": current, "target": "label", "segments": list(segments)},
                          execution=execution, audits=audits)
    return audit_with_config(world, cli_env, config, name)


def audit_with_config(world, cli_env, config: Path, name: str) -> dict:
    with tempfile.TemporaryDirectory() as elsewhere:
        completed = subprocess.run([str(AUDITLENS), "audit", "--model", "models:/e2e-model/1", "--config", str(config),
                                    "--fail-on", "never"], env=cli_env, cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    client = make_client(world.tracking_uri)
    [run] = client.search_runs([client.get_experiment_by_name("auditlens/e2e-model").experiment_id],
                               filter_string=f"params.`config.path` LIKE '%/{name}.yaml'")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = json.loads(Path(client.download_artifacts(run.info.run_id, "manifest.json", tmp)).read_text())
    return {"run": run, "manifest": manifest, "output": completed.stdout}


PLAN = [
    {"audit": "data_quality", "config": {"expectations": [STRICT]}},
    {"audit": "performance"},
    {"audit": "shap", "config": {"rows": 40}},
    {"audit": "drift", "config": {"domain_rows": 1000, "importance_repeats": 1}},
    {"audit": "calibration", "config": {"null_resamples": 50}},
    {"audit": "conformal"},
    {"audit": "segments"},
]


@pytest.fixture(scope="module")
def local_and_dask(world, cli_env):
    from concurrent.futures import ThreadPoolExecutor

    before = spawned_workers()
    # two independent commands, run at once (each waits on its imports, its model's process and its cluster)
    with ThreadPoolExecutor(2) as pool:
        local, dask = pool.map(lambda args: audit(world, cli_env, *args, PLAN, segments=("colour",)),
                               [("local", {"engine": "local"}), ("dask", {"engine": "dask", "workers": 2})])
    return local, dask, before


def test_local_and_a_dask_cluster_record_the_same_audit(local_and_dask):
    local, dask, _ = local_and_dask
    a, b = local["run"].data.metrics, dask["run"].data.metrics
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-12), key
    assert local["run"].data.params["data.current.sample_sha256"] == dask["run"].data.params["data.current.sample_sha256"]
    assert dask["run"].data.params["data.current.rows"] == "60000" and dask["run"].data.params["data.current.rows_used"] == "20000"


def test_the_cluster_is_stopped_when_the_audit_ends(local_and_dask):
    _, _, before = local_and_dask
    assert spawned_workers() - before == set()


def test_every_row_is_scored_and_checked_and_the_report_says_which_audits_sampled(world, local_and_dask):
    _, dask, _ = local_and_dask
    metrics = dask["run"].data.metrics
    model = mlflow.sklearn.load_model(make_client(world.tracking_uri).get_model_version("e2e-model", "1").source)
    current = pd.read_parquet(world.folder / "current")
    X, y = current.drop(columns="label"), current["label"]
    assert metrics["performance.current.rows"] == 60_000
    assert metrics["performance.current.accuracy"] == pytest.approx(skm.accuracy_score(y, model.predict(X)), rel=1e-12)
    assert metrics["performance.current.roc_auc"] == pytest.approx(skm.roc_auc_score(y == "yes", model.predict_proba(X)[:, 1]), rel=1e-12)
    assert metrics["data_quality.user.failed"] == 1  # the three planted rows, wherever they fell
    rows = {r["id"]: r["rows"] for r in dask["manifest"]["audits"]}
    assert rows["performance"] == "every row (25,000 reference, 60,000 current)"
    fitted_on = "a seeded sample (20,000 of 25,000 reference rows, 20,000 of 60,000 current rows)"
    assert rows["data_quality"] == f"fitted on {fitted_on}, applied to every row (25,000 reference, 60,000 current)"
    assert rows["shap"] == "a seeded sample: 20,000 of 25,000 reference rows, 20,000 of 60,000 current rows (sample_rows 20,000)"
    # the audits of how sure the model is, on every row too, each checked against scikit-learn on all 60,000 rows
    proba = model.predict_proba(X)[:, 1]
    assert rows["calibration"] == "every row (25,000 reference, 60,000 current)"
    assert metrics["calibration.current.brier"] == pytest.approx(skm.brier_score_loss(y == "yes", proba), rel=1e-9)
    for audit_id in ("drift", "conformal", "segments"):
        assert rows[audit_id] == f"fitted on {fitted_on}, applied to every row (25,000 reference, 60,000 current)"
    assert metrics["drift.rows.current"] == 60_000
    red = (X["colour"] == "red").to_numpy()
    assert metrics["segments.colour.red.accuracy"] == pytest.approx(skm.accuracy_score(y[red], model.predict(X[red])), rel=1e-12)


def test_a_fault_in_40_rows_of_a_million_is_found(world, cli_env, tmp_path_factory):
    """40 rows of 1,000,000 break an expectation. A 20,000-row uniform sample contains none of them with probability
    C(999960, 20000) / C(1000000, 20000) = 0.446 (about (1 - 0.02)^40): the old sampled audit said PASS almost half the
    time. Every row is validated now: FAIL, with the count exact."""
    from scipy.stats import hypergeom

    miss = hypergeom(1_000_000, 40, 20_000).pmf(0)
    assert 0.44 < miss < 0.45
    X, y = make_tabular(1_000_000, seed=9)
    data = pd.concat([X, y], axis=1)
    rows = np.random.default_rng(1).choice(len(data), 40, replace=False)
    data.loc[rows, "x2"] = 99.0
    folder = world.folder / "million"
    folder.mkdir()
    for i in range(10):
        data.iloc[i * 100_000:(i + 1) * 100_000].to_parquet(folder / f"part-{i}.parquet", index=False)
    del data, X, y
    outcome = audit(world, cli_env, "million", {"engine": "local"},
                    [{"audit": "data_quality", "config": {"expectations": [STRICT], "baseline": {"enabled": False}}}], current="million")
    metrics = outcome["run"].data.metrics
    assert metrics["data_quality.user.failed"] == 1
    assert outcome["run"].data.tags["audit.verdict"] == "FAIL"
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(make_client(world.tracking_uri).download_artifacts(
            outcome["run"].info.run_id, "data_quality/gx_validation_results.json", tmp)).read_text())
    [result] = table["user"]["results"]
    assert result["result"]["unexpected_count"] == 40 and result["result"]["element_count"] == 1_000_000


def test_a_shift_in_one_segment_of_2_percent_of_the_rows_is_found(world, cli_env):
    """100,000 current rows; the 2 % in region 'r0' are moved 6 standard deviations on x1 and x2. Every current row is
    scored by the OOD scorers fitted on the reference sample: the flagged share rises by about those 2 %, far beyond
    what an unshifted batch reaches, and the least familiar rows listed are the planted ones.

    What makes 2 % detectable is the threshold's own precision, not the current rows (there are plenty): at the 99th
    percentile of 2,000 held-out reference rows, z is about 0.02 / sqrt(0.0099 (1/100000 + 1/2000)) = 8.9; at the
    defaults (95th of 1,250) a 2 % excess is z of about 3, on the edge."""
    X, y = make_tabular(100_000, seed=13)
    data = pd.concat([X, y], axis=1)
    data["region"] = np.where(np.random.default_rng(2).random(len(data)) < 0.02, "r0", "r1")
    shifted = data["region"] == "r0"
    data.loc[shifted, ["x1", "x2"]] += 6.0
    folder = world.folder / "segment-shift"
    folder.mkdir()
    for i in range(2):
        data.iloc[i * 50_000:(i + 1) * 50_000].to_parquet(folder / f"part-{i}.parquet", index=False)
    outcome = audit(world, cli_env, "segment-shift", {"engine": "local"},
                    [{"audit": "ood", "config": {"scorers": ["knn", "pca"], "rows": 50, "percentile": 99, "max_rows": 8000}},
                     {"audit": "drift", "config": {"domain_classifier": False}}, {"audit": "shap", "config": {"rows": 200}}],
                    current="segment-shift")
    metrics = outcome["run"].data.metrics
    assert metrics["ood.rows"] == 100_000
    assert metrics["ood.flagged_share_any"] > 0.02 + 0.015 and metrics["ood.max_excess_z"] > 5
    assert outcome["run"].data.tags["audit.verdict"] == "WARN", outcome["output"][-2000:]
    # drift, counted on every row: 2 % of the rows moved 6 sd is a Wasserstein distance of 0.12 reference sd (the
    # reference sd of x1 is about 1), past the 0.1 floor, and no other feature moved
    assert metrics["drift.rows.current"] == 100_000
    assert metrics["drift.feature.x1.drifted"] == 1 and metrics["drift.feature.x2.drifted"] == 1
    assert metrics["drift.feature.x1.effect"] == pytest.approx(0.02 * 6 / X["x1"].std(), abs=0.01 + metrics["drift.effect_bound_max"])
    assert metrics["drift.drifted_features"] == 2
    with tempfile.TemporaryDirectory() as tmp:
        table = json.loads(Path(make_client(world.tracking_uri).download_artifacts(
            outcome["run"].info.run_id, "ood/most_unfamiliar.json", tmp)).read_text())
    frame = pd.DataFrame(table["data"], columns=table["columns"])
    assert len(frame) == 50 and (frame["feature: x1"] > 3).mean() > 0.9  # the planted rows, found among all 100,000
    assert frame["row"].str.startswith("part-").all()
    # SHAP explains its sample and, beside it, the rows OOD flagged on every row: the planted rows, moved up on x1
    # (which raises the odds of 'yes') and on x2 (which lowers them), and their values add up to the model's output
    with tempfile.TemporaryDirectory() as tmp:
        client = make_client(world.tracking_uri)
        table = json.loads(Path(client.download_artifacts(outcome["run"].info.run_id, "shap/flagged_values.json", tmp)).read_text())
    flagged = pd.DataFrame(table["data"], columns=table["columns"])
    flagged_rows = frame.loc[frame["flagged_by"] != "", "row"]
    assert metrics["shap.flagged_rows_explained"] == len(flagged_rows) >= 45
    assert set(flagged["row"]) == set(flagged_rows) and flagged["flagged_by"].str.startswith("ood (").all()
    assert (flagged["x1"] > 0).all() and (flagged["x2"] < 0).all()
    features = ["x1", "x2", "x3", "noise", "colour"]
    assert np.allclose(flagged[features].sum(axis=1) + flagged["base_value"], flagged["model_output"], atol=1e-6)


def test_predictions_scored_elsewhere_are_read_from_the_data_and_must_be_the_models(world, cli_env, local_and_dask):
    """A user who scored the data in their own engine names the columns (data.prediction_columns): on a two-worker
    cluster, every row's predictions come from them, and the record equals the one where auditlens scored every row.
    Columns the model did not produce are refused before any run opens (checked against the model on the sample)."""
    local, _, _ = local_and_dask
    model = mlflow.sklearn.load_model(make_client(world.tracking_uri).get_model_version("e2e-model", "1").source)
    scored, forged = world.folder / "scored", world.folder / "forged"
    scored.mkdir()
    forged.mkdir()
    for part in sorted((world.folder / "current").glob("*.parquet")):
        frame = pd.read_parquet(part)
        X = frame.drop(columns="label")
        proba = model.predict_proba(X)
        frame = frame.assign(predicted=model.predict(X), p_no=proba[:, 0], p_yes=proba[:, 1])
        frame.to_parquet(scored / part.name, index=False, row_group_size=5_000)
        if part.name.endswith("-02.parquet"):  # one file of six whose predictions another model made
            frame["predicted"] = np.where(frame["predicted"] == "yes", "no", "yes")
        frame.to_parquet(forged / part.name, index=False)
    columns = {"label": "predicted", "probabilities": {"no": "p_no", "yes": "p_yes"}}
    write = lambda name, current: write_config(  # noqa: E731
        world.folder, world.tracking_uri, name=f"{name}.yaml", execution={"engine": "dask", "workers": 2}, audits=PLAN,
        data={"reference": "reference.parquet", "current": current, "target": "label", "segments": ["colour"],
              "prediction_columns": columns})
    outcome = audit_with_config(world, cli_env, write("scored", "scored"), "scored")
    a, b = local["run"].data.metrics, outcome["run"].data.metrics
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-12, abs=1e-12), key
    assert outcome["run"].data.params["data.current.predictions"].startswith("read from predicted, p_no, p_yes; equal to")
    assert outcome["run"].data.params["data.reference.predictions"] == "e2e-model v1, on every row"

    client = make_client(world.tracking_uri)
    before = client.search_runs([client.get_experiment_by_name("auditlens/e2e-model").experiment_id], max_results=1000)
    with tempfile.TemporaryDirectory() as elsewhere:
        refused = subprocess.run([str(AUDITLENS), "audit", "--model", "models:/e2e-model/1", "--config",
                                  str(write("forged", "forged"))], env=cli_env, cwd=elsewhere, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "disagree with e2e-model v1" in refused.stderr and "not made by this model version" in refused.stderr
    after = client.search_runs([client.get_experiment_by_name("auditlens/e2e-model").experiment_id], max_results=1000)
    assert len(after) == len(before)


def test_a_sample_stratified_by_a_rare_segment_explains_it_with_the_population_counts(world, cli_env):
    """100,000 current rows in four files; region 'r0' holds 0.4 % of them. A uniform 20,000-row sample holds about 80
    of its 400 rows and SHAP's 100 explained rows fewer than one. With sampling.stratify_by: region, the scoring pass
    keeps each region's first rows by key beyond the uniform sample's: SHAP explains 50 rows of r0, weighted by r0's
    count on every row, and a two-worker cluster draws the very same sample."""
    X, y = make_tabular(100_000, seed=17)
    data = pd.concat([X, y], axis=1)
    data["region"] = np.where(np.random.default_rng(4).random(len(data)) < 0.004, "r0", "r1")
    folder = world.folder / "strata"
    folder.mkdir()
    for i in range(4):
        data.iloc[i * 25_000:(i + 1) * 25_000].to_parquet(folder / f"part-{i}.parquet", index=False)
    X, y = make_tabular(25_000, seed=7)
    reference = pd.concat([X, y], axis=1).assign(region=np.where(np.random.default_rng(5).random(len(X)) < 0.004, "r0", "r1"))
    reference.to_parquet(world.folder / "strata-reference.parquet", index=False)
    plan = [{"audit": "shap", "config": {"rows": 100}}, {"audit": "performance"}]

    def audited(engine: dict) -> dict:
        name = f"strata-{engine['engine']}"
        config = write_config(world.folder, world.tracking_uri, name=f"{name}.yaml", execution=engine, audits=plan,
                              data={"reference": "strata-reference.parquet", "current": "strata", "target": "label",
                                    "segments": ["region"]},
                              sampling={"stratify_by": "region", "min_rows_per_stratum": 50})
        return audit_with_config(world, cli_env, config, name)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:  # two independent commands, run at once
        outcomes = list(pool.map(audited, ({"engine": "local"}, {"engine": "dask", "workers": 2})))
    r0 = int((data["region"] == "r0").sum())
    rows = {r["id"]: r for r in outcomes[0]["manifest"]["audits"]}
    assert "current: stratified by region (2 strata, at least 50 rows each: 'r0' " in rows["shap"]["rows"]
    assert rows["performance"]["rows"] == "every row (25,000 reference, 100,000 current)"
    with tempfile.TemporaryDirectory() as tmp:
        values = json.loads(Path(make_client(world.tracking_uri).download_artifacts(
            outcomes[0]["run"].info.run_id, "shap/values.json", tmp)).read_text())
    frame = pd.DataFrame(values["data"], columns=values["columns"])
    explained = frame[frame["stratum (region)"] == "r0"]
    assert len(explained) == 50 and explained["weight"].sum() == pytest.approx(r0)  # r0's rows, counted on every row
    assert frame["weight"].sum() == pytest.approx(len(data))
    a, b = (o["run"].data.metrics for o in outcomes)
    assert a.keys() == b.keys() and all(b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-12) for k in a)
