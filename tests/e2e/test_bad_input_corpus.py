"""Bad and hostile input, run through the real `auditlens audit` command as a process.

Every case gets one clear message naming the problem and the fix, printed once, exit code 2 and no traceback; nothing is
written to MLflow: no run is opened and no version tag changes. Where the input is fine but the model misbehaves inside
one audit (it hangs when retrained), the audit itself ran: that audit is ERROR with the reason, the others complete.
Tracking URIs of every scheme, and servers that are down, slow or answer 500, are in test_cli_tracking_uris.py.

The processes share the test session's Prefect API (PREFECT_API_URL) instead of each starting a server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.adapters.demo import register_sklearn_model
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.tracking import make_client
from tests.conftest import make_pipeline_model, make_tabular
from tests.helpers import build_world, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("prefect_harness")]

AUDITLENS = Path(sys.executable).parent / "auditlens"
FAULTS = ("raises", "nan_proba", "wrong_shape", "unknown_class", "not_probabilities", "hangs", "hangs_when_refitted")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import cloudpickle

    from tests.e2e import faulty_models

    world = build_world(tmp_path_factory.mktemp("corpus"))
    X, y = make_tabular(500, seed=11)
    inner = make_pipeline_model(X.iloc[:300], y.iloc[:300], "gbm")
    sink = MlflowSink(world.tracking_uri)
    cloudpickle.register_pickle_by_value(faulty_models)  # the class travels in the file, as a user's would
    try:
        for fault in FAULTS:
            register_sklearn_model(sink, faulty_models.fitted(inner, fault), name=f"faulty-{fault}", experiment="e2e/training",
                                   input_example=None, params={"fault": fault},
                                   artifact_location=(world.folder / "mlartifacts").as_uri())
    finally:
        cloudpickle.unregister_pickle_by_value(faulty_models)
    return world


@pytest.fixture(scope="module")
def cli_env(prefect_harness):
    from prefect.settings import PREFECT_API_URL

    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    return {**env, "PREFECT_API_URL": PREFECT_API_URL.value(), "COLUMNS": "200"}


# --- how cases are written -------------------------------------------------------------------------
LIGHT = [{"audit": "performance"}]  # the cheapest plan: what is under test is the input, not the audits


def config(world, name: str, **overrides) -> Path:
    return write_config(world.folder, world.tracking_uri, name=f"{name}.yaml", **{"audits": LIGHT, **overrides})


def light(world) -> Path:
    return config(world, "light")


# the faulty models are classes of their own, pickled by value: their code runs only when the config trusts it
TRUSTED = {"model_loading": "trusted"}


def trusting(world) -> Path:
    return config(world, "light-trusted", security=TRUSTED)


def raw(world, name: str, content: str | bytes) -> Path:
    path = world.folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def current(world, name: str, frame: pd.DataFrame | None = None, text: str | bytes | None = None, audits: list | None = None,
            **data) -> Path:
    """A config whose current data is ``frame`` (as CSV) or the file ``name`` with ``text``."""
    path = world.folder / name
    if frame is not None:
        frame.to_csv(path, index=False)
    elif text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return config(world, f"cfg-{name}", data={"reference": "reference.csv", "current": name, "target": "label", **data},
                  audits=audits or LIGHT)


def cur(world) -> pd.DataFrame:
    return pd.read_csv(world.current)


def folder(world, name: str) -> Path:
    path = world.folder / name
    path.mkdir(exist_ok=True)
    return path


def partitions(world, name: str, frames: list[pd.DataFrame], csv: bool = False) -> Path:
    """A config whose current data is a folder of Parquet (or CSV) files, one per frame."""
    where = folder(world, name)
    for i, frame in enumerate(frames):
        if csv:
            frame.to_csv(where / f"part-{i}.csv", index=False)
        else:
            frame.to_parquet(where / f"part-{i}.parquet", index=False)
    return config(world, f"cfg-{name}", data={"reference": "reference.csv", "current": name, "target": "label"})


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bomb(depth: int = 9) -> str:
    lines = ["kind: audit", "data: {reference: reference.csv, current: current.csv, target: label}", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, depth)]
    lines += ["audits:", "  - audit: performance", f"    config: {{expectations: *a{depth - 1}}}"]
    return "\n".join(lines) + "\n"


def wider(frame: pd.DataFrame, columns: int) -> pd.DataFrame:
    extra = pd.DataFrame(np.zeros((len(frame), columns), dtype=np.float32), columns=[f"extra_{i}" for i in range(columns)])
    return pd.concat([frame, extra], axis=1)


def hostile_cell(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[0, "colour"] = "x" * 5_000_000  # one 5 MB cell
    return frame


@dataclass(frozen=True)
class Case:
    make: object  # world -> config path
    message: str  # must appear, once, in the output
    model: str = "models:/e2e-model/1"
    exit_code: int = 2


CASES = {
    # configurations
    "yaml-malformed": Case(lambda w: raw(w, "malformed.yaml", "kind: audit\naudits: [ {audit: shap\n"), "malformed YAML"),
    "yaml-alias-bomb": Case(lambda w: raw(w, "bomb.yaml", bomb()), "aliases (*name) expand to more than"),
    "yaml-list": Case(lambda w: raw(w, "list.yaml", "- audit: shap\n- audit: lime\n"), "expected a mapping of settings at the top level, got list"),
    "yaml-binary": Case(lambda w: raw(w, "binary.yaml", bytes(range(256)) * 8), "is not a text file in UTF-8"),
    "yaml-nul": Case(lambda w: raw(w, "nul.yaml", "kind: audit\n\x00\x00\x00"), "is a binary file, not YAML"),
    "yaml-empty": Case(lambda w: raw(w, "empty-config.yaml", ""), "expected a mapping of settings at the top level, got NoneType"),
    "yaml-huge": Case(lambda w: raw(w, "huge.yaml", "kind: audit\n" + "# padding\n" * 200_000), "a configuration is at most"),
    "config-is-a-folder": Case(lambda w: w.folder, "is a folder, not a config file"),
    "config-missing": Case(lambda w: w.folder / "no-such.yaml", "does not exist"),
    "wrong-kind": Case(lambda w: raw(w, "kind.yaml", "kind: deployments\nmodels: []\n"), "this is a 'deployments' file"),
    "unknown-audit": Case(lambda w: config(w, "unknown", audits=[{"audit": "lime2"}]), "unknown audit 'lime2'"),
    "unknown-key": Case(lambda w: config(w, "key", sampling={"rows": 5}), "sampling.rows: unknown key"),
    "wrong-type-seed": Case(lambda w: config(w, "seed", seed="abc"), "seed: Input should be a valid integer"),
    "wrong-type-audits": Case(lambda w: config(w, "audits-str", audits="shap"), "audits: Input should be a valid list"),
    "negative-rows": Case(lambda w: config(w, "negative", sampling={"reference_rows": -5}), "sampling.reference_rows: Input should be greater than or equal to 1"),
    "astronomical-rows": Case(lambda w: config(w, "astronomical", sampling={"current_rows": 10**30}), "sampling.current_rows: Input should be less than or equal to 1000000000"),
    "stratify-by-an-unknown-column": Case(lambda w: config(w, "strata", sampling={"stratify_by": "regoin"}), "sampling.stratify_by is 'regoin', which is neither 'prediction' nor a column of data.segments"),
    "negative-time-limit": Case(lambda w: config(w, "limit", audits=[{"audit": "performance", "time_limit_s": -1}]), "audits[0].time_limit_s: Input should be greater than 0"),
    "unknown-encoding": Case(lambda w: config(w, "encoding", data={"reference": "reference.csv", "current": "current.csv", "encoding": "klingon"}), "unknown text encoding 'klingon'"),
    # data
    "data-missing-file": Case(lambda w: config(w, "nofile", data={"reference": "reference.csv", "current": "absent.csv"}), "data file"),
    "data-folder-without-data": Case(lambda w: config(w, "datafolder", data={"reference": "reference.csv", "current": str(folder(w, "no-data"))}), "is a folder with no .parquet or .csv files"),
    "data-glob-matches-nothing": Case(lambda w: config(w, "noglob", data={"reference": "reference.csv", "current": "traffic-*/part-*.parquet"}), "no file matches this pattern"),
    "data-partitions-disagree": Case(lambda w: partitions(w, "disagree", [cur(w), cur(w).drop(columns="noise")]), "has other columns than"),
    "data-text-in-a-late-partition": Case(lambda w: partitions(w, "late-text", [cur(w), cur(w), cur(w).assign(x1=lambda f: f.x1.astype(str).where(f.index != 150, "twelve"))], csv=True), "part-2.csv: column 'x1' holds text where the reference holds numbers (1 value(s) in this partition, first 'twelve' in row 150)"),
    "dask-scheduler-down": Case(lambda w: config(w, "dask-down", execution={"engine": "dask", "address": f"tcp://127.0.0.1:{closed_port()}", "connect_timeout_s": 3}), "cannot reach the Dask scheduler at tcp://127.0.0.1:"),
    "prediction-column-missing": Case(lambda w: current(w, "scored-missing.csv", cur(w).assign(predicted="yes", p_no=0.5),
                                                        prediction_columns={"label": "predicted", "probabilities": {"no": "p_no", "yes": "p_yes"}}),
                                      "lacks the prediction column(s) ['p_yes'] named in data.prediction_columns"),
    "prediction-columns-wrong-classes": Case(lambda w: current(w, "scored-classes.csv", cur(w).assign(predicted="yes", p_a=0.5, p_b=0.5),
                                                               prediction_columns={"label": "predicted", "probabilities": {"a": "p_a", "b": "p_b"}}),
                                             "data.prediction_columns.probabilities names classes ['a', 'b']"),
    "data-unsupported-type": Case(lambda w: current(w, "current.xlsx", text=b"PK\x03\x04"), "unsupported file type '.xlsx'"),
    "data-empty-file": Case(lambda w: current(w, "empty.csv", text=""), "is empty"),
    "data-header-only": Case(lambda w: current(w, "header.csv", text="x1,x2,x3,noise,colour,label\n"), "has no rows"),
    "data-all-nan": Case(lambda w: current(w, "nan.csv", cur(w).assign(x1=None, x2=None, x3=None, noise=None, colour=None)), "every feature value is missing"),
    "data-infinities": Case(lambda w: current(w, "inf.csv", cur(w).assign(x2=lambda f: f.x2.where(f.index % 50 != 3, np.inf))), "column 'x2' holds 4 infinite value(s) (first in row 3)"),
    "data-text-in-numbers": Case(lambda w: current(w, "text.csv", cur(w).assign(x1=lambda f: f.x1.astype(str).where(f.index != 17, "1 234.5"))), "column 'x1' holds text where the reference holds numbers (1 value(s), first '1 234.5' in row 17)"),
    "data-duplicated-names": Case(lambda w: current(w, "dup.csv", text=open(w.current).read().replace("noise", "x1", 1)), "column name 'x1' appears twice"),
    "data-unnamed-feature": Case(lambda w: current(w, "unnamed.csv", text=open(w.current).read().replace("noise", "", 1)), "lacks feature column(s) ['noise']"),
    "data-not-utf8": Case(lambda w: current(w, "latin1.csv", text=open(w.current).read().replace("red", "rouge-vif-é", 3).encode("latin-1")), "is not utf-8 text"),
    "data-corrupt-parquet": Case(lambda w: current(w, "broken.parquet", text=b"PAR1" + bytes(range(200)) * 50 + b"PAR1"), "cannot be read as Parquet"),
    "data-missing-target": Case(lambda w: config(w, "notarget", data={"reference": "current.csv", "current": "current.csv", "target": "outcome"}), "lacks the target column 'outcome'"),
    "data-missing-feature": Case(lambda w: current(w, "nofeature.csv", cur(w).drop(columns="colour")), "lacks feature column(s) ['colour']"),
    "data-missing-labels": Case(lambda w: current(w, "nolabels.csv", cur(w).assign(label=lambda f: f.label.where(f.index % 9 != 0))), "the target column 'label' has 23 missing labels"),
    # models
    "model-unknown-name": Case(light, "no registered model 'no-such-model'", model="models:/no-such-model/1"),
    "model-unknown-version": Case(light, "has no version 7", model="models:/e2e-model/7"),
    "model-unknown-alias": Case(light, "has no alias @gold", model="models:/e2e-model@gold"),
    "model-bad-uri": Case(light, "unsupported model URI", model="s3://bucket/model"),
    "model-raises": Case(trusting, "cannot predict on the data (RuntimeError: the feature store behind this model is down)", model="models:/faulty-raises/1"),
    "model-nan": Case(trusting, "predict_proba returned NaN or infinite values in 43 row(s) of 300 (first at row 0)", model="models:/faulty-nan_proba/1"),
    "model-wrong-shape": Case(trusting, "predict returned shape (300, 2) for 300 rows", model="models:/faulty-wrong_shape/1"),
    "model-unknown-class": Case(trusting, "predict returned 'maybe' (row 150), which is not one of the model's classes ['no', 'yes']", model="models:/faulty-unknown_class/1"),
    "model-not-probabilities": Case(trusting, "predict_proba returned rows that are not probabilities in 300 row(s) of 300", model="models:/faulty-not_probabilities/1"),
    "model-never-answers": Case(lambda w: config(w, "patient", limits={"inputs_s": 3}, security=TRUSTED), "did not finish within 3 s", model="models:/faulty-hangs/1"),
}


def versions_and_tags(client) -> dict:
    return {(m.name, str(v.version)): dict(v.tags) for m in client.search_registered_models()
            for v in client.search_model_versions(f"name='{m.name}'")}


def all_runs(client) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments) if experiments else []


def run_cli(env: dict, cwd: Path, *args: str, timeout: float = 300) -> tuple[int, str, float]:
    began = time.monotonic()
    done = subprocess.run([str(AUDITLENS), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - began


@pytest.fixture(scope="module")
def outcomes(world, cli_env, tmp_path_factory) -> dict:
    """Every case through the command, three processes at a time (each case is a process of its own, mostly waiting on
    imports and the servers; one after the other they took eight minutes of the suite), with the store read before
    the first and after the last: bad input writes nothing, so nothing may have changed between the two."""
    from concurrent.futures import ThreadPoolExecutor

    client = make_client(world.tracking_uri)
    before = ({r.info.run_id for r in all_runs(client)}, versions_and_tags(client))
    configs = {case: str(spec.make(world)) for case, spec in CASES.items()}  # written one after the other

    def run(case: str) -> tuple:
        cwd = tmp_path_factory.mktemp(case)
        code, output, seconds = run_cli(cli_env, cwd, "audit", "--model", CASES[case].model, "--config", configs[case])
        return code, output, seconds, cwd

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(sorted(CASES), pool.map(run, sorted(CASES)), strict=True))
    new_runs = [r for r in all_runs(client) if r.info.run_id not in before[0]]
    return {"results": results, "configs": configs, "new_runs": new_runs, "registry": (before[1], versions_and_tags(client))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_one_clear_error_and_writes_nothing(outcomes, case):
    spec = CASES[case]
    code, output, _, cwd = outcomes["results"][case]
    flat = " ".join(output.split())
    assert code == spec.exit_code, output
    assert spec.message in flat, output
    assert flat.count(spec.message) == 1, f"the problem is told more than once:\n{output}"
    assert "fix:" in output and "Traceback" not in output
    opened = [r for r in outcomes["new_runs"] if r.data.params.get("config.path") == outcomes["configs"][case]]
    assert not opened, "a run was opened for bad input"
    assert not outcomes["new_runs"], f"a run was opened by one of the cases: {[r.data.params.get('config.path') for r in outcomes['new_runs']]}"
    before, after = outcomes["registry"]
    assert after == before, "the registry was written for bad input (by one of the cases)"
    assert not (cwd / "mlflow.db").exists() and not (cwd / "mlruns").exists()


def test_a_model_that_hangs_inside_one_audit_makes_that_audit_error_and_the_others_finish(world, cli_env, tmp_path):
    """Retraining the model hangs (disagreement trains clones): the audit's time limit ends it as ERROR; performance
    completes; the run is FINISHED with the verdict ERROR, the command exits 1, and the version says done."""
    path = config(world, "hang-in-audit", security=TRUSTED, audits=[{"audit": "performance"},
                                                                    {"audit": "disagreement", "time_limit_s": 4, "config": {"members": 3}}])
    code, output, seconds = run_cli(cli_env, tmp_path, "audit", "--model", "models:/faulty-hangs_when_refitted/1", "--config", str(path))
    assert code == 1, output
    client = make_client(world.tracking_uri)
    [run] = [r for r in all_runs(client) if r.data.tags.get("auditlens.model_name") == "faulty-hangs_when_refitted"]
    assert run.info.status == "FINISHED" and run.data.tags["audit.verdict"] == "ERROR"
    assert run.data.tags["audit.disagreement.verdict"] == "ERROR" and run.data.tags["audit.performance.verdict"] == "PASS"
    assert "performance.current.accuracy" in run.data.metrics
    assert client.get_model_version("faulty-hangs_when_refitted", "1").tags["audit.status"] == "done"
    assert seconds < 240, "the hung audit held the command past its limit"


def test_a_latin1_file_is_read_with_data_encoding(world, cli_env, tmp_path):
    """The fix the error names works: the same Latin-1 file, with data.encoding: latin-1, is audited."""
    text = open(world.current).read().replace("red", "rouge-vif-é", 3).encode("latin-1")
    path = current(world, "latin1-ok.csv", text=text, encoding="latin-1")
    code, output, _ = run_cli(cli_env, tmp_path, "audit", "--model", "models:/e2e-model/1", "--config", str(path), "--fail-on", "never")
    assert code == 0, output
    client = make_client(world.tracking_uri)
    [run] = [r for r in all_runs(client) if r.data.params.get("config.path") == str(path)]
    assert run.info.status == "FINISHED" and run.data.params["data.current.rows"] == "200"


@pytest.mark.parametrize("name, frame", [("wide", lambda w: wider(cur(w), 10_000)), ("huge-cell", lambda w: hostile_cell(cur(w)))])
def test_awkward_but_valid_data_is_audited(world, cli_env, tmp_path, name, frame):
    """10,000 unused columns, or one 5 MB cell: the audit (data quality included, which lists unexpected values) runs on
    it and its record stays small."""
    plan = [{"audit": "data_quality"}, {"audit": "performance"}]
    path = current(world, f"{name}.csv", frame(world), audits=plan)
    code, output, _ = run_cli(cli_env, tmp_path, "audit", "--model", "models:/e2e-model/1", "--config", str(path), "--fail-on", "never")
    assert code == 0, output
    client = make_client(world.tracking_uri)
    [run] = [r for r in all_runs(client) if r.data.params.get("config.path") == str(path)]
    assert run.info.status == "FINISHED" and run.data.params["data.current.rows"] == "200"
    artifacts = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    biggest = max(p.stat().st_size for p in artifacts.rglob("*") if p.is_file())
    assert (artifacts / "data_quality" / "gx_validation_results.json").is_file()
    assert biggest < 2_000_000, "a cell of the data was copied whole into an artifact"
