"""What keeping the model apart from the auditor costs: the same audits of the benchmark workload, in this process and
in the model's own process (``tasks/adapters/model_worker.py``), one after the other in one script.

    .venv/bin/python bench/bench_isolation.py [--seed 0] [--audits performance,calibration,...] [--repeats 1]

The workload is bench_parts.py's: 20,000 + 20,000 rows x 30 features, HistGradientBoostingClassifier, saved as MLflow
saves it (pickle format) with CSV data, so that both sides load the same files through the same gate:

- in process: the model loaded here (``load_model_files``), the inputs assembled here (``assemble_loaded``), then each
  audit run here, in threads as the flow's task runner runs them;
- isolated: ``ModelWorker.prepare`` (the process starts, confines itself, loads the model and assembles the inputs
  there), then each audit through ``ModelWorker.audit`` (run there, sent back as JSON, judged again here).

The ratio isolated / in process is the overhead; the seconds it adds are a fixed cost (a process, its imports, the
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


def main() -> int:
    global AUDITS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--audits", default=DEFAULT_AUDITS)
    parser.add_argument("--repeats", type=int, default=1, help="pairs of runs (in process, isolated), alternating")
    args = parser.parse_args()
    AUDITS = args.audits.split(",")

    from tasks.adapters.settings import load_settings
    from tasks.adapters.tracking import quiet_environment

    quiet_environment()
    with tempfile.TemporaryDirectory(prefix="auditlens-bench-isolation-") as tmp:
        model_dir, config = workload(Path(tmp), args.seed)
        loaded = load_settings(config)
        pairs = []
        for _ in range(args.repeats):
            here = in_process(model_dir, loaded)
            there = isolated(model_dir, loaded)
            same = {r.audit: (r.verdict.value, r.metrics) for r in here[2]} == {r.audit: (r.verdict.value, r.metrics) for r in there[2]}
            pairs.append({"in_process_s": here[1], "isolated_s": there[1], "in_process_prepare_s": here[0],
                          "isolated_prepare_s": there[0], "same_results": same})
            print(f"in process {here[1]:7.1f} s (inputs {here[0]:5.1f} s)   isolated {there[1]:7.1f} s "
                  f"(inputs {there[0]:5.1f} s)   ratio {there[1] / here[1]:.3f}   same results: {same}", flush=True)
    best = {k: min(p[k] for p in pairs) for k in ("in_process_s", "isolated_s")}
    overhead_s = best["isolated_s"] - best["in_process_s"]
    parts = REPO / "bench" / "out" / "parts.json"
    whole = WHOLE_PLAN_S
    if parts.exists():  # this machine's own figure, when bench_parts.py has run
        timings = json.loads(parts.read_text()).get("bench", {})
        whole = sum(t["seconds"] for t in timings.values()) if timings else whole
    summary = {"audits": AUDITS, "rows": "20000 + 20000 x 30", "pairs": pairs, "best": best, "ratio": best["isolated_s"] / best["in_process_s"],
               "overhead_s": overhead_s, "whole_plan_s": whole,
               "ratio_on_whole_plan": None if not whole else (whole + overhead_s) / whole}
    print(f"overhead {overhead_s:+.1f} s; ratio {summary['ratio']:.3f} on these {len(AUDITS)} audits"
          + (f"; {summary['ratio_on_whole_plan']:.3f} on the whole default plan ({whole:.0f} s, bench_parts.py)" if whole else ""))
    out = REPO / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "isolation.json").write_text(json.dumps(summary, indent=2))
    return 0


AUDITS: list[str] = DEFAULT_AUDITS.split(",")

if __name__ == "__main__":
    raise SystemExit(main())
