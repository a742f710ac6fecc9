"""What keeping the model apart from the auditor costs: the same audits of the benchmark workload, in this process and
in the model's own process (``tasks/adapters/model_worker.py``), one after the other in one script.

    .venv/bin/python bench/bench_isolation.py [--seed 0] [--audits performance,calibration,...] [--repeats 1]

The workload is bench_parts.py's: 20,000 + 20,000 rows x 30 features, HistGradientBoostingClassifier, saved as MLflow
saves it (pickle format) with CSV data, so that both sides load the same files through the same gate:

- in process: the model loaded here (``load_model_files``), the inputs assembled here (``assemble_loaded``), then each
  audit run here, in threads as the flow's task runner runs them;
- isolated: ``ModelWorker.prepare`` (the process starts, confines itself, loads the model and assembles the inputs
  there), then each audit through ``ModelWorker.audit`` (run there, sent back as JSON, judged again here).

Each side runs in a fresh process of its own (as every audit does: the CLI and Prefect's process worker start one per
audit), alternating, ``--repeats`` pairs. The median ratio isolated / in process is the overhead; the seconds it adds are a fixed cost (a process, its imports, the
JSON), so the ratio is also given against the whole default plan's time measured by bench_parts.py. Figures go to
bench/out/isolation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

DEFAULT_AUDITS = "performance,calibration,data_quality,drift,shap,conformal,ood"
WHOLE_PLAN_S = 203.0  # the whole default tabular plan on this workload, one audit after another (bench_parts.py, 2026-12)


def workload(folder: Path, seed: int) -> tuple[Path, Path]:
    """The model's folder (mlflow.sklearn.save_model, pickle format) and an audit config over CSV data."""
    import mlflow.sklearn
    import yaml

    from bench_parts import bench_context

    from tasks.adapters.tracking import quiet_environment

    quiet_environment()
    context = bench_context(seed)
    for ds in (context.reference, context.current):
        frame = ds.X.assign(label=ds.y)
        frame.to_csv(folder / f"{ds.name}.csv", index=False)
    model_dir = folder / "model"
    mlflow.sklearn.save_model(context.model.estimator, str(model_dir), serialization_format="pickle",
                              pip_requirements=["scikit-learn"])
    config = folder / "audit.yaml"
    config.write_text(yaml.safe_dump({"kind": "audit", "seed": seed,
                                      "data": {"reference": "reference.csv", "current": "current.csv", "target": "label"},
                                      "audits": [{"audit": a} for a in AUDITS]}))
    return model_dir, config


def in_process(model_dir: Path, loaded) -> tuple[float, float, list]:
    from audits.core.runner import run_planned
    from tasks.adapters.inputs import assemble_loaded
    from tasks.adapters.models import ModelRef, load_model_files

    ref = ModelRef("models:/bench/1", "models:/bench/1", "bench", "1")
    started = time.perf_counter()
    model = load_model_files(str(model_dir), ref, security=loaded.settings.security)
    inputs = assemble_loaded(ref, loaded, model, None, "none")
    prepared = time.perf_counter() - started
    with ThreadPoolExecutor(len(loaded.plan)) as pool:
        results = list(pool.map(lambda p: run_planned(p, inputs.context), loaded.plan))
    for result in results:
        for artifact in result.artifacts:
            artifact.encoded()  # what recording pays on this side
    return prepared, time.perf_counter() - started, results


def isolated(model_dir: Path, loaded) -> tuple[float, float, list]:
    from tasks.adapters.model_worker import ModelWorker
    from tasks.adapters.models import ModelRef

    ref = ModelRef("models:/bench/1", "models:/bench/1", "bench", "1")
    started = time.perf_counter()
    with ModelWorker() as worker:
        worker.prepare(ref, loaded, str(model_dir), None, "none")
        prepared = time.perf_counter() - started
        with ThreadPoolExecutor(len(loaded.plan)) as pool:
            results = list(pool.map(worker.audit, loaded.plan))
        for result in results:
            for artifact in result.artifacts:
                artifact.encoded()
    return prepared, time.perf_counter() - started, results


def differences(here: list, there: list) -> list[str]:
    """What differs between the two sides' results: verdicts, metric keys, metric values (NaN equals NaN)."""
    import math

    found = []
    for a, b in zip(here, there):
        if (a.audit, a.verdict) != (b.audit, b.verdict):
            found.append(f"{a.audit}: {a.verdict.value} here, {b.verdict.value} isolated")
        for key in sorted(set(a.metrics) | set(b.metrics)):
            x, y = a.metrics.get(key), b.metrics.get(key)
            if x is None or y is None or not (x == y or (math.isnan(x) and math.isnan(y))):
                found.append(f"{key}: {x} here, {y} isolated")
    return found


def side(name: str, workdir: Path) -> None:
    """One side, measured in a fresh process (as every audit runs: the CLI and Prefect's process worker start one per
    audit), printed as JSON for the parent."""
    import pickle

    from tasks.adapters.settings import load_settings
    from tasks.adapters.tracking import quiet_environment

    quiet_environment()
    loaded = load_settings(workdir / "audit.yaml")
    prepared, total, results = (in_process if name == "in_process" else isolated)(workdir / "model", loaded)
    (workdir / f"{name}.pkl").write_bytes(pickle.dumps(results))
    print(json.dumps({"prepare_s": prepared, "total_s": total}))


def main() -> int:
    import pickle
    import statistics
    import subprocess

    global AUDITS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audits", default=DEFAULT_AUDITS)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (in process, isolated), alternating")
    parser.add_argument("--side", choices=["in_process", "isolated"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    AUDITS = args.audits.split(",")
    if args.side:
        side(args.side, args.workdir)
        return 0

    with tempfile.TemporaryDirectory(prefix="auditlens-bench-isolation-") as tmp:
        workdir = Path(tmp)
        workload(workdir, args.seed)
        pairs = []
        for _ in range(args.repeats):
            timed = {}
            for name in ("in_process", "isolated"):
                done = subprocess.run([sys.executable, __file__, "--side", name, "--workdir", str(workdir), "--audits", args.audits],
                                      capture_output=True, text=True, timeout=1800, check=True)
                timed[name] = json.loads(done.stdout.strip().splitlines()[-1])
            here, there = (pickle.loads((workdir / f"{n}.pkl").read_bytes()) for n in ("in_process", "isolated"))
            differ = differences(here, there)
            pairs.append({"in_process_s": timed["in_process"]["total_s"], "isolated_s": timed["isolated"]["total_s"],
                          "in_process_prepare_s": timed["in_process"]["prepare_s"], "isolated_prepare_s": timed["isolated"]["prepare_s"],
                          "ratio": timed["isolated"]["total_s"] / timed["in_process"]["total_s"], "same_results": not differ,
                          "differences": differ[:20],
                          "audit_s": {r.audit: [round(r.duration_s, 2), round(t.duration_s, 2)] for r, t in zip(here, there)}})
            p = pairs[-1]
            print(f"in process {p['in_process_s']:7.1f} s (inputs {p['in_process_prepare_s']:5.1f} s)   isolated "
                  f"{p['isolated_s']:7.1f} s (inputs {p['isolated_prepare_s']:5.1f} s)   ratio {p['ratio']:.3f}   "
                  f"same results: {not differ}", flush=True)
            if differ:
                print("  differences:", differ[:10], flush=True)
    ratio = statistics.median(p["ratio"] for p in pairs)
    overhead_s = statistics.median(p["isolated_s"] - p["in_process_s"] for p in pairs)
    parts = REPO / "bench" / "out" / "parts.json"
    whole = WHOLE_PLAN_S
    if parts.exists():  # this machine's own figure, when bench_parts.py has run
        timings = json.loads(parts.read_text()).get("bench", {})
        whole = sum(t["seconds"] for t in timings.values()) if timings else whole
    summary = {"audits": AUDITS, "rows": "20000 + 20000 x 30", "pairs": pairs, "median_ratio": ratio,
               "median_overhead_s": overhead_s, "whole_plan_s": whole, "ratio_on_whole_plan": (whole + overhead_s) / whole}
    print(f"median overhead {overhead_s:+.1f} s; median ratio {ratio:.3f} on these {len(AUDITS)} audits; "
          f"{summary['ratio_on_whole_plan']:.3f} on the whole default plan ({whole:.0f} s, bench_parts.py)")
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "isolation.json").write_text(json.dumps(summary, indent=2))
    return 0


AUDITS: list[str] = DEFAULT_AUDITS.split(",")

if __name__ == "__main__":
    raise SystemExit(main())
