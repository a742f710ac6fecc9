"""The three speed goals as ratios measured in one run on this machine, and every audit's cost before and after.

    .venv/bin/python bench/bench_speed.py            # --seed 0 --workdir bench/out/speed --repeats 1 [--skip-parts]

The benchmark workload of bench_audit.py (20,000 reference + 20,000 current rows x 30 features, f03 and f07 shifted,
a HistGradientBoostingClassifier registered as models:/bench-gbm/1 in a SQLite store under the work folder). Every side
is a fresh process timed from outside, start to exit, imports included, as a user runs it:

| side | what runs |
|---|---|
| whole plan | `auditlens audit --no-cache` with every registered audit (those that apply to a tabular classifier run, the others are SKIPPED at once); the local Prefect server already up |
| whole plan, rerun | the same command again without `--no-cache`, nothing changed: every result comes from the cache |
| in one process | the whole plan's flow called twice in this (warm) process, the cache off, then on |
| evaluate | `mlflow.models.evaluate(model_type="classifier", evaluators=["default"])` on the current data: metrics, plots, SHAP on 2,000 rows |
| three audits | `auditlens audit --no-cache` with bench_audit.py's plan (data_quality, performance, shap on 2,000 rows) |
| plain | bench_audit.py's plain path: `mlflow.models.evaluate` and a GX suite on the current data, logged to one run |
| ..._resident | the same command handing its audit to the resident auditor (`auditlens resident --detach`, started once) |

The command-line sides above run with `--no-resident` (a command that does everything itself, imports included); the
`_resident` sides are the same commands while a resident auditor runs (auditlens/resident.py).
The ratios and their goals: whole plan (fresh command) / evaluate <= 2; three audits (resident) / plain <= 0.2; rerun
(resident) / whole plan (resident) <= 0.05; and, for comparison, the last two from fresh commands and in one warm
process.
Before the rounds, one audit through each path (a fresh command, then the resident) starts what stays up between
audits: the local Prefect server, and the resident with its MLflow store open. Every side starts SETTLE_S seconds
after the one before (a reviewer reads a verdict before the next audit): time for a resident's next model process to
import its libraries, and for the machine to settle after a fresh side. Sides alternate order over `--repeats`
rounds; medians are compared. Then (unless --skip-parts) the per-audit
profile of bench_parts.py (each audit alone, in this process, pure path) on the demo's data and on the workload,
beside the same profile measured before this work (bench/baseline/parts-82c0ab9.json).
Figures go to <workdir>/speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_cli import AUDITLENS, stop_local_server  # noqa: E402
from bench_cli import hermetic_env as cli_env  # noqa: E402

BEFORE = REPO / "bench" / "baseline" / "parts-82c0ab9.json"
SETTLE_S = 3.0  # seconds between sides (see above)
GOALS = {"whole_plan_over_evaluate": 2.0, "three_audits_over_plain": 0.2, "rerun_over_first": 0.05,
         "three_audits_fresh_command_over_plain": 0.2, "rerun_over_first_fresh_command": 0.05,
         "rerun_over_first_in_process": 0.05}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    for name in ("evaluate", "plain"):  # the plain sides, each run as a process of its own by the main command
        side = sub.add_parser(name)
        side.add_argument("--workdir", type=Path, required=True)
        side.add_argument("--model", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "speed")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of every side, alternating their order")
    parser.add_argument("--skip-parts", action="store_true", help="only the three ratios")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds one command may take")
    return parser.parse_args()


def hermetic_env(workdir: Path) -> dict[str, str]:
    """bench_cli.py's (private state and Prefect folders, no telemetry), with the result cache in the work folder."""
    return cli_env(workdir, AUDITLENS_CACHE_DIR=str(workdir / "cache"), MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")


def timed(command: list[str], env: dict[str, str], cwd: Path, timeout: float) -> dict:
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - started
    if done.returncode not in (0, 1):  # 1: the verdict failed the gate, which is the workload's shifted data
        raise SystemExit(f"{' '.join(command[:3])} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"wall_s": wall, "exit": done.returncode, "tail": done.stdout[-1500:],
            "resident": "Audited by the resident auditor" in done.stdout, "reused": "results reused" in done.stdout}


def write_plan(workdir: Path, name: str, seed: int, tracking_uri: str, audits: list[dict]) -> Path:
    import yaml

    from bench_audit import N_ROWS

    config = {"kind": "audit", "seed": seed,
              "data": {"reference": "reference.parquet", "current": "current.parquet", "target": "label"},
              "sampling": {"reference_rows": N_ROWS, "current_rows": N_ROWS},
              "mlflow": {"tracking_uri": tracking_uri, "artifact_location": (workdir / "mlartifacts" / "audits").as_uri()},
              "audits": audits}
    path = workdir / name
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


# --- the plain sides, each in a process of its own ------------------------------------------------
def side_evaluate(workdir: Path, model: str) -> None:
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    current = pd.read_parquet(workdir / "current.parquet")
    experiment = mlflow.set_experiment("bench/evaluate")
    with mlflow.start_run(experiment_id=experiment.experiment_id, run_name="mlflow.evaluate"):
        mlflow.models.evaluate(model=model, data=current, targets="label", model_type="classifier", evaluators=["default"])


def side_plain(workdir: Path, model: str) -> None:
    from bench_audit import plain

    from tasks.adapters.tracking import make_client

    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    client = make_client(tracking_uri)
    found = client.get_experiment_by_name("bench/plain")
    experiment = found.experiment_id if found else client.create_experiment("bench/plain")
    plain(model, workdir, tracking_uri, client, experiment)


# --- first run and rerun in one warm process -------------------------------------------------------
def warm_pair(model: str, config: Path, repeats: int) -> dict[str, list[float]]:
    """``audit_model`` with the cache off, then again with it on, in this process (imports and the Prefect API paid
    by a warm-up flow first), ``repeats`` times."""
    import logging

    from prefect import flow

    from auditlens.running import in_process_flow_settings as _in_process_flow_settings
    from auditlens.running import prefect_server_for_flows as _prefect_server_for_flows
    from flows.audit_model import audit_model

    logging.getLogger("prefect").setLevel(logging.WARNING)
    _prefect_server_for_flows()

    @flow(name="bench-warm-up")
    def warm_up() -> int:
        return 1

    warm_up()
    out: dict[str, list[float]] = {"first_in_process": [], "rerun_in_process": []}
    with _in_process_flow_settings():
        for _ in range(repeats):
            for name, use_cache in (("first_in_process", False), ("rerun_in_process", True)):
                started = time.perf_counter()
                summary = audit_model(model_uri=model, config_path=str(config), reason="bench", use_cache=use_cache)
                out[name].append(time.perf_counter() - started)
                reused = sum(1 for a in summary["audits"].values() if a["cached"])
                print(f"{name}: {out[name][-1]:.1f} s ({reused} of {len(summary['audits'])} results reused)", flush=True)
    return out


# --- the per-audit profile ------------------------------------------------------------------------
def parts() -> dict:
    from bench_parts import bench_context, demo_context, time_audits

    from audits.core.registry import available_audits

    names = list(available_audits())
    now = {}
    for label, build in (("demo", demo_context), ("bench", bench_context)):
        context = build(0)
        print(f"{label}: {len(context.reference)} reference and {len(context.current)} current rows x {len(context.features)} features", flush=True)
        now[label] = time_audits(context, names)
    return now


def parts_table(before: dict, after: dict) -> str:
    lines = ["| audit | demo before | demo after | workload before | workload after |", "|---|---|---|---|---|"]
    names = sorted({n for side in (before, after) for w in side.values() for n in w},
                   key=lambda n: -after.get("bench", {}).get(n, {}).get("seconds", 0))
    totals = {(s, w): 0.0 for s in ("before", "after") for w in ("demo", "bench")}
    for name in names:
        cells = []
        for workload in ("demo", "bench"):
            for label, side in (("before", before), ("after", after)):
                entry = side.get(workload, {}).get(name)
                cells.append("-" if entry is None else f"{entry['seconds']:.2f}")
                totals[(label, workload)] += entry["seconds"] if entry else 0.0
        if any(c not in ("-", "0.00") for c in cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| all | " + " | ".join(f"{totals[(s, w)]:.2f}" for w in ("demo", "bench") for s in ("before", "after")) + " |")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    if args.command in ("evaluate", "plain"):
        (side_evaluate if args.command == "evaluate" else side_plain)(args.workdir, args.model)
        return 0
    workdir = args.workdir.resolve()
    if workdir.exists():
        stop_local_server(hermetic_env(workdir), REPO)
        subprocess.run([str(AUDITLENS), "resident", "--stop"], env=hermetic_env(workdir), capture_output=True, timeout=600)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    os.environ.update(hermetic_env(workdir))
    os.chdir(workdir)
    env = hermetic_env(workdir)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"

    from bench_audit import SHAP_ROWS, build_workload

    from audits.core.registry import available_audits
    from tasks.adapters.provenance import code_version

    workload = build_workload(workdir, args.seed, tracking_uri)
    model = workload["model_uri"]
    whole = write_plan(workdir, "whole.yaml", args.seed, tracking_uri, [{"audit": name} for name in available_audits()])
    three = write_plan(workdir, "three.yaml", args.seed, tracking_uri,
                       [{"audit": "data_quality"}, {"audit": "performance"}, {"audit": "shap", "config": {"rows": SHAP_ROWS}}])
    audit = [str(AUDITLENS), "audit", "--model", model, "--fail-on", "never"]
    fresh = [*audit, "--no-resident"]  # a command that does all its work itself, imports included
    me = [sys.executable, str(Path(__file__).resolve())]
    warm = timed([*fresh, "--config", str(write_plan(workdir, "warm.yaml", args.seed, tracking_uri, [{"audit": "performance"}]))],
                 env, workdir, args.timeout)
    print(f"warm-up (starts the local Prefect server): {warm['wall_s']:.1f} s", flush=True)
    # the resident auditor (auditlens resident): the commands without --no-resident hand it their audits
    resident = timed([str(AUDITLENS), "resident", "--detach", "--idle-minutes", "60"], env, workdir, args.timeout)
    print(f"resident auditor started: {resident['wall_s']:.1f} s", flush=True)
    time.sleep(SETTLE_S)
    warm_resident = timed([*audit, "--config", str(workdir / "warm.yaml")], env, workdir, args.timeout)
    if not warm_resident["resident"]:
        raise SystemExit(f"the resident auditor did not take the warm-up audit:\n{warm_resident['tail']}")
    print(f"warm-up through the resident (opens the MLflow store): {warm_resident['wall_s']:.1f} s", flush=True)
    sides = {
        "whole_plan": [*fresh, "--config", str(whole), "--no-cache"],
        "evaluate": [*me, "evaluate", "--workdir", str(workdir), "--model", model],
        "three_audits": [*fresh, "--config", str(three), "--no-cache"],
        "plain": [*me, "plain", "--workdir", str(workdir), "--model", model],
        "three_audits_resident": [*audit, "--config", str(three), "--no-cache"],
        "whole_plan_resident": [*audit, "--config", str(whole), "--no-cache"],
    }
    reruns = {"rerun": [*fresh, "--config", str(whole)], "rerun_resident": [*audit, "--config", str(whole)]}
    rounds: dict[str, list[float]] = {name: [] for name in [*sides, *reruns]}
    try:
        for round_ in range(args.repeats):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                time.sleep(SETTLE_S)
                done = timed(sides[name], env, workdir, args.timeout)
                if done["resident"] != name.endswith("_resident"):
                    raise SystemExit(f"{name}: the resident auditor {'did not take' if name.endswith('_resident') else 'took'} "
                                     f"the audit:\n{done['tail']}")
                rounds[name].append(done["wall_s"])
                print(f"round {round_ + 1}: {name} {rounds[name][-1]:.1f} s", flush=True)
            # the reruns: the whole plan once more, nothing changed, the cache allowed (the first runs above filled it)
            for name, command in reruns.items():
                time.sleep(SETTLE_S)
                rerun = timed(command, env, workdir, args.timeout)
                if not rerun["reused"] or rerun["resident"] != name.endswith("_resident"):
                    raise SystemExit(f"{name} reused nothing, or was (not) audited by the resident:\n{rerun['tail']}")
                rounds[name].append(rerun["wall_s"])
                print(f"round {round_ + 1}: {name} {rerun['wall_s']:.1f} s", flush=True)
    finally:
        subprocess.run([str(AUDITLENS), "resident", "--stop"], env=env, cwd=workdir, capture_output=True, timeout=args.timeout)
    # the same first run and rerun in one warm process (as a long-lived worker or a notebook runs audits): what the
    # rerun costs beyond Python's and the command's start
    in_process = warm_pair(model, whole, args.repeats)
    rounds.update(in_process)
    median = {name: statistics.median(values) for name, values in rounds.items()}
    ratios = {
        "whole_plan_over_evaluate": median["whole_plan"] / median["evaluate"],
        "three_audits_over_plain": median["three_audits_resident"] / median["plain"],
        "rerun_over_first": median["rerun_resident"] / median["whole_plan_resident"],
        "three_audits_fresh_command_over_plain": median["three_audits"] / median["plain"],
        "rerun_over_first_fresh_command": median["rerun"] / median["whole_plan"],
        "rerun_over_first_in_process": median["rerun_in_process"] / median["first_in_process"],
    }
    stop_local_server(env, workdir)
    results = {"code_version": code_version(), "cpus": os.cpu_count(), "seed": args.seed, "repeats": args.repeats,
               "workload": workload, "rounds": rounds, "medians": median, "ratios": ratios, "goals": GOALS}
    print("\n| ratio | measured | goal | medians |\n|---|---|---|---|")
    explained = {"whole_plan_over_evaluate": ("whole_plan", "evaluate"),
                 "three_audits_over_plain": ("three_audits_resident", "plain"),
                 "rerun_over_first": ("rerun_resident", "whole_plan_resident"),
                 "three_audits_fresh_command_over_plain": ("three_audits", "plain"),
                 "rerun_over_first_fresh_command": ("rerun", "whole_plan"),
                 "rerun_over_first_in_process": ("rerun_in_process", "first_in_process")}
    for name, value in ratios.items():
        a, b = explained[name]
        mark = "met" if value <= GOALS[name] else "NOT met"
        print(f"| {name} | {value:.3f} | <= {GOALS[name]} ({mark}) | {a} {median[a]:.1f} s / {b} {median[b]:.1f} s |")
    if not args.skip_parts:
        after = parts()
        before = json.loads(BEFORE.read_text()) if BEFORE.exists() else {}
        results["parts"] = {"before": before, "after": after}
        print("\nEach audit alone, seconds (pure path, this process; before: " + BEFORE.name + ")\n")
        print(parts_table(before, after))
    (workdir / "speed.json").write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    print(f"\nfigures: {workdir / 'speed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
