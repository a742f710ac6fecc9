"""Every row at scale: generated Parquet (1M and 10M rows x 30 features, 10 to 40 files) and a gradient-boosting
classifier. Each measurement runs in its own process, so that its peak memory is its own.

    python bench/bench_every_row.py                      # 1M and 10M rows
    python bench/bench_every_row.py --rows 1000000       # one size
    python bench/bench_every_row.py --skip-plain         # without the plain approach (pandas + GX + mlflow.evaluate)

Figures, as ratios measured in the same run:
- floor: one plain pass over the same files, reference and current (pyarrow read + predict_proba, one process):
  every audit must read and score each row once, so the every-row stages (survey + score) are compared with it;
- auditlens on the local engine, on a Dask LocalCluster of 1 worker and of 2 workers (the partitioned work:
  survey + score); driver peak memory (ru_maxrss of the auditing process) and each Dask worker's;
- the plain approach a user has today: pandas reads every file into one frame, a GX suite (the same expectations)
  on it, and ``mlflow.models.evaluate`` (which is given the whole frame), time and memory, or where it fails.
Rows per second per core, and a projection for 100M rows on 16 cores, from the best two-worker figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
FEATURES = [f"f{i:02d}" for i in range(30)]
CACHE = Path(os.environ.get("AUDITLENS_BENCH_DATA", Path(tempfile.gettempdir()) / "auditlens-bench-every-row"))
STRICT = {"type": "expect_column_values_to_be_between", "kwargs": {"column": "f03", "min_value": -10, "max_value": 10}}


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(rows: int, files: int, seed: int = 0) -> Path:
    """``files`` Parquet files of rows // files rows each (row groups of 250,000), a labelled binary task."""
    folder = CACHE / f"current-{rows}-{files}"
    if (folder / "_DONE").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    per = rows // files
    for i in range(files):
        rng = np.random.default_rng([seed, i])
        X = rng.normal(size=(per, len(FEATURES))).astype(np.float64)
        logit = X[:, 0] * 1.5 - X[:, 1] + 0.5 * X[:, 2] * X[:, 3]
        frame = pd.DataFrame(X, columns=FEATURES)
        frame["label"] = np.where(rng.random(per) < 1 / (1 + np.exp(-logit)), "yes", "no")
        frame.to_parquet(folder / f"part-{i:03d}.parquet", index=False, row_group_size=250_000)
    (folder / "_DONE").write_text("")
    return folder


def reference_and_model() -> tuple[Path, Path]:
    path, model_path = CACHE / "reference.parquet", CACHE / "model.pkl"
    if path.exists() and model_path.exists():
        return path, model_path
    import pickle

    from sklearn.ensemble import HistGradientBoostingClassifier

    CACHE.mkdir(parents=True, exist_ok=True)
    folder = generate(200_000, 1, seed=99)
    frame = pd.read_parquet(folder)
    frame.to_parquet(path, index=False)
    model = HistGradientBoostingClassifier(max_iter=100, random_state=0).fit(frame[FEATURES].iloc[:50_000], frame["label"].iloc[:50_000])
    model_path.write_bytes(pickle.dumps(model))
    return path, model_path


def load_model(model_path: Path):
    import pickle

    from audits.core.context import ModelUnderAudit

    return ModelUnderAudit.from_estimator(pickle.loads(model_path.read_bytes()), uri="bench", name="bench", version="1")


# ---------------------------------------------------------------------------------------------
# Measurements (each in its own process)


def measure_floor(folder: Path, reference: Path, model_path: Path) -> dict:
    """Read and score every row of both sides once, row group by row group: what any every-row audit must do."""
    import pyarrow.parquet as pq

    model = load_model(model_path)
    started, rows = time.perf_counter(), 0
    for path in [reference, *sorted(folder.glob("*.parquet"))]:
        handle = pq.ParquetFile(path)
        for group in range(handle.num_row_groups):
            frame = handle.read_row_group(group, columns=FEATURES).to_pandas()
            model.predict_proba(frame)
            rows += len(frame)
    return {"seconds": time.perf_counter() - started, "rows": rows, "peak_mib": peak_mib()}


def measure_auditlens(folder: Path, reference: Path, model_path: Path, engine: str, workers: int) -> dict:
    import yaml

    from audits.core.runner import run_planned
    from tasks.adapters.every_row import assemble_every_row
    from tasks.adapters.full_pass import DaskEngine, LocalEngine
    from tasks.adapters.models import ModelRef
    from tasks.adapters.settings import load_settings
    from tasks.adapters.sources import open_source

    config = {
        "kind": "audit", "seed": 0,
        "data": {"reference": str(reference), "current": str(folder), "target": "label"},
        "execution": {"engine": engine, "workers": workers},
        "audits": [{"audit": "data_quality", "config": {"expectations": [STRICT], "data_docs": False}},
                   {"audit": "performance"}, {"audit": "drift"}, {"audit": "calibration"}, {"audit": "conformal"},
                   {"audit": "shap", "config": {"rows": 200}}],
    }
    path = Path(tempfile.mkdtemp()) / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded = load_settings(path)
    model = load_model(model_path)
    sources = {role: open_source(role, str(loaded.data_path(role)), path.parent) for role in ("reference", "current")}
    cluster = client = None
    if engine == "dask":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, memory_limit="8GiB")
        client = Client(cluster)
        running = DaskEngine(client)
    else:
        running = LocalEngine()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    inputs = assemble_every_row(ModelRef("bench", "bench"), loaded, model, None, "", FEATURES, sources, "tabular",
                                engine=running, timings=timings)
    timings["every_row_s"] = time.perf_counter() - started
    worker_peaks = []
    if client is not None:
        worker_peaks = sorted(client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024).values())
        client.close()
        cluster.close()
    clock = time.perf_counter()
    results = {p.id: run_planned(p, inputs.context, inputs.full) for p in loaded.plan}
    timings["finalize_and_sample_audits_s"] = time.perf_counter() - clock
    return {
        **timings, "driver_peak_mib": peak_mib(), "worker_peak_mib": worker_peaks,
        "rows": inputs.full.population["current"], "reference_rows": inputs.full.population["reference"],
        "partitions": inputs.full.partitions["current"],
        "verdicts": {k: r.verdict.value for k, r in results.items()},
        "accuracy": results["performance"].metrics.get("performance.current.accuracy"),
        "user_unexpected": next(iter(a.content for a in results["data_quality"].artifacts if a.name == "gx_validation_results.json"))
        ["user"]["results"][0]["result"].get("unexpected_count"),
    }


def measure_plain(folder: Path, reference: Path, model_path: Path) -> dict:
    """What a user does today without auditlens: one frame, a GX suite on it, mlflow.models.evaluate."""
    import mlflow

    from audits.methods.expectations import BaselineSuite, _validate, infer_baseline

    model = load_model(model_path).estimator
    out: dict = {}
    clock = time.perf_counter()
    frame = pd.concat([pd.read_parquet(p) for p in sorted(folder.glob("*.parquet"))], ignore_index=True)
    out["read_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    ref = pd.read_parquet(reference).sample(20_000, random_state=0)
    suite = infer_baseline(ref[FEATURES], (), BaselineSuite(), len(frame))
    _validate(frame, {"user": [STRICT], "baseline": suite})
    out["gx_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    store = Path(tempfile.mkdtemp())
    mlflow.set_tracking_uri(f"sqlite:///{store / 'mlflow.db'}")
    try:
        with mlflow.start_run():
            info = mlflow.sklearn.log_model(model, name="model", serialization_format="pickle")
            result = mlflow.models.evaluate(info.model_uri, frame, targets="label", model_type="classifier",
                                            evaluators=["default"], evaluator_config={"default": {"log_model_explainability": False}})
        out["evaluate_s"] = time.perf_counter() - clock
        out["evaluate_accuracy"] = result.metrics.get("accuracy_score")
    except Exception as exc:  # noqa: BLE001 (a figure of its own: where the plain approach fails)
        out["evaluate_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    out["seconds"] = time.perf_counter() - clock + out["read_s"] + out["gx_s"]
    out["peak_mib"] = peak_mib()
    out["rows"] = len(frame)
    return out


def run_measurement(*args: str, timeout: float) -> dict:
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--measure", *args], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish within {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1][:300] if done.stderr.strip() else ''}",
                "wall_s": time.perf_counter() - started}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--skip-plain", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--measure", nargs="*")
    parser.add_argument("--plain-max-rows", type=int, default=10_000_000)
    args = parser.parse_args()
    if args.measure:
        kind, *rest = args.measure
        folder, reference, model = Path(rest[0]), Path(rest[1]), Path(rest[2])
        if kind == "floor":
            result = measure_floor(folder, reference, model)
        elif kind == "plain":
            result = measure_plain(folder, reference, model)
        else:
            result = measure_auditlens(folder, reference, model, kind, int(rest[3]))
        print(json.dumps(result, default=float))
        return
    reference, model = reference_and_model()
    report = {}
    for rows in args.rows:
        files = 10 if rows <= 1_000_000 else 40
        folder = generate(rows, files)
        paths = (str(folder), str(reference), str(model))
        row: dict = {"rows": rows, "files": files}
        row["floor"] = run_measurement("floor", *paths, timeout=args.timeout)
        row["local"] = run_measurement("local", *paths, "1", timeout=args.timeout)
        row["dask_1"] = run_measurement("dask", *paths, "1", timeout=args.timeout)
        row["dask_2"] = run_measurement("dask", *paths, "2", timeout=args.timeout)
        if not args.skip_plain and rows <= args.plain_max_rows:
            row["plain"] = run_measurement("plain", *paths, timeout=args.timeout)
        report[rows] = row
        print(json.dumps(row, indent=1, default=float), flush=True)
    summarise(report)


def summarise(report: dict) -> None:
    print("\nrows        floor_s  local_s  dask1_s  dask2_s  every-row/floor  2w-speedup  driver_MiB  worker_MiB   plain_s  plain_MiB")
    for rows, r in report.items():
        def every(name: str) -> float:
            m = r.get(name, {})
            return m.get("survey_s", np.nan) + m.get("score_s", np.nan)

        floor = r["floor"].get("seconds", np.nan)
        plain = r.get("plain", {})
        print(f"{rows:<11,} {floor:7.1f}  {every('local'):7.1f}  {every('dask_1'):7.1f}  {every('dask_2'):7.1f}  "
              f"{every('local') / floor:15.2f}  {every('dask_1') / every('dask_2'):10.2f}  "
              f"{r['local'].get('driver_peak_mib', np.nan):10.0f}  {max(r['dask_2'].get('worker_peak_mib') or [np.nan]):10.0f}  "
              f"{plain.get('seconds', np.nan):8.1f}  {plain.get('peak_mib', np.nan):9.0f}  {plain.get('evaluate_error', '')}")
    sizes = sorted(report)
    if len(sizes) >= 2:
        small, large = report[sizes[0]]["local"], report[sizes[-1]]["local"]
        print(f"driver peak memory at {sizes[-1]:,} rows / at {sizes[0]:,} rows: "
              f"{large.get('driver_peak_mib', np.nan) / small.get('driver_peak_mib', np.nan):.2f}")
    best = report[sizes[-1]]["dask_2"]
    per_core = best.get("rows", np.nan) / (best.get("survey_s", np.nan) + best.get("score_s", np.nan)) / 2
    print(f"rows per second per core (two workers, every-row stages): {per_core:,.0f}; "
          f"100M rows on 16 cores: about {100e6 / per_core / 16 / 60:.1f} min (linear scaling assumed)")


if __name__ == "__main__":
    main()
