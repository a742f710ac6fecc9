"""What `auditlens audit` costs beyond the audit itself, and how often it fails on a busy machine.

    .venv/bin/python bench/bench_cli.py overhead [--runs 7] [--workdir bench/out/cli] [--seed 0]
    .venv/bin/python bench/bench_cli.py failures [--runs 50] [--busy 1] [--mode local|ephemeral]

One trivial plan (the `performance` audit alone) on a tiny world: 500 rows of make_classification split in
reference and current, a logistic regression registered as models:/bench-cli/1 in a SQLite MLflow store.
Every side is a fresh process timed from outside (start to exit, imports included), as a user runs it:

- cli-local:     `auditlens audit` with the local Prefect server already up (started by the warm-up)
- cli-ephemeral: the same with AUDITLENS_PREFECT_SERVER=ephemeral: Prefect's temporary server, started and
                 stopped by every command (the behaviour before the local server; its database already exists)
- plain:         this script's `plain` command: the same steps in one Python process without the CLI and
                 without Prefect (settings, model, inputs, the audit, the MLflow record), the plain path
- plain-lean:    the same, skipping the garbage collections of Python's teardown as `auditlens audit` does
                 (auditlens/cli.py, _no_collection_at_exit): CLI minus plain-lean is what Prefect itself costs

`overhead` runs the three in turn, rotating which goes first, `--runs` rounds after one warm-up round; it reports
each side's median and the median of the paired differences CLI - plain (the overhead; goal: under 2 s with the
server up), plus the first command on a fresh AUDITLENS_STATE_DIR (which starts the server). `failures` saturates
`--busy` cores with `python -c "while True: pass"` (killed at the end) and runs `--runs` CLI audits one after
the other from a stopped server, counting the ones that exit non-zero. Figures go to <workdir>/overhead.json and
<workdir>/failures-<mode>.json. The script stops every server it started.
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
AUDITLENS = Path(sys.executable).parent / "auditlens"
MODEL = "bench-cli"
GOAL_S = 2.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("overhead", "failures"):
        p = sub.add_parser(name)
        p.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "cli")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--runs", type=int, default=7 if name == "overhead" else 50)
        p.add_argument("--timeout", type=float, default=300, help="seconds one command may take")
    sub.choices["failures"].add_argument("--busy", type=int, default=1, help="cores to saturate while the CLI runs")
    sub.choices["failures"].add_argument("--mode", choices=("local", "ephemeral"), default="local")
    plain = sub.add_parser("plain", help="one audit without the CLI and without Prefect (a side of `overhead`)")
    plain.add_argument("--model", required=True)
    plain.add_argument("--config", type=Path, required=True)
    plain.add_argument("--lean-exit", action="store_true", help="skip the garbage collections of Python's teardown")
    return parser.parse_args()


def hermetic_env(workdir: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PREFECT_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY", "AUDITLENS_"))}
    env.update({
        "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1", "AUDITLENS_STATE_DIR": str(workdir / "state"), "PREFECT_HOME": str(workdir / "prefect-client"),
        "COLUMNS": "200",
    })  # fmt: skip
    env.update(extra)
    return env


def build_world(workdir: Path, seed: int) -> tuple[str, Path]:
    import pandas as pd
    import yaml
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    from tasks.adapters.demo import register_sklearn_model
    from tasks.adapters.mlflow_sink import MlflowSink

    world = workdir / "world"
    if world.exists():
        shutil.rmtree(world)
    world.mkdir(parents=True)
    tracking_uri = f"sqlite:///{world / 'mlflow.db'}"
    X, y = make_classification(n_samples=500, n_features=5, n_informative=3, random_state=seed)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(5)]).assign(label=y)
    frame.iloc[:300].to_csv(world / "reference.csv", index=False)
    frame.iloc[300:].to_csv(world / "current.csv", index=False)
    features = frame.columns[:-1]
    model = LogisticRegression(max_iter=1000).fit(frame.iloc[:300][features], frame.iloc[:300]["label"])
    version = register_sklearn_model(MlflowSink(tracking_uri), model, name=MODEL, experiment="bench/training",
                                     input_example=frame[features].head(2), params={"seed": seed},
                                     artifact_location=(world / "mlartifacts").as_uri())
    config = world / "audit.yaml"
    config.write_text(yaml.safe_dump({
        "kind": "audit", "seed": seed,
        "data": {"reference": "reference.csv", "current": "current.csv", "target": "label"},
        "mlflow": {"tracking_uri": tracking_uri, "artifact_location": (world / "mlartifacts").as_uri()},
        "audits": [{"audit": "performance"}],
    }, sort_keys=False))  # fmt: skip
    return f"models:/{MODEL}/{version}", config


def timed(command: list[str], env: dict[str, str], cwd: Path, timeout: float) -> dict:
    started = time.perf_counter()
    try:
        completed = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        code, output = completed.returncode, completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = "timeout", f"{exc.stdout or ''}{exc.stderr or ''}"
    return {"wall_s": time.perf_counter() - started, "exit": code, "temporary_server": "Starting temporary server" in output,
            "tail": output[-1500:]}


def stop_local_server(env: dict[str, str], cwd: Path) -> None:
    subprocess.run([str(AUDITLENS), "prefect-server", "stop"], env=env, cwd=cwd, capture_output=True, timeout=120)


def overhead(args: argparse.Namespace) -> dict:
    workdir = args.workdir.resolve()
    for name in ("state", "prefect-client", "prefect-ephemeral"):
        shutil.rmtree(workdir / name, ignore_errors=True)
    model_uri, config = build_world(workdir, args.seed)
    audit = [str(AUDITLENS), "audit", "--model", model_uri, "--config", str(config), "--fail-on", "never", "--no-cache"]
    sides = {
        "cli-local": (audit, hermetic_env(workdir)),
        "cli-ephemeral": (audit, hermetic_env(workdir, AUDITLENS_PREFECT_SERVER="ephemeral",
                                              PREFECT_HOME=str(workdir / "prefect-ephemeral"))),
        "plain": ([sys.executable, str(Path(__file__).resolve()), "plain", "--model", model_uri, "--config", str(config)],
                  hermetic_env(workdir)),
        "plain-lean": ([sys.executable, str(Path(__file__).resolve()), "plain", "--model", model_uri, "--config", str(config),
                        "--lean-exit"], hermetic_env(workdir)),
    }
    local_env = sides["cli-local"][1]
    try:
        first = timed(audit, local_env, workdir, args.timeout)  # starts the local server on a fresh state folder
        print(f"first command on a fresh state folder (starts the server): {first['wall_s']:.1f} s, exit {first['exit']}", flush=True)
        for name, (command, env) in sides.items():  # warm-up round: databases exist, caches are warm
            verbose = ["--verbose"] if name.startswith("cli") else []  # Prefect's lines: is a temporary server started?
            warm = timed(command + verbose, env, workdir, args.timeout)
            print(f"warm-up {name}: {warm['wall_s']:.1f} s, exit {warm['exit']}, temporary server started: "
                  f"{warm['temporary_server']}", flush=True)
            if warm["exit"] != 0 or warm["temporary_server"] != (name == "cli-ephemeral"):
                raise SystemExit(f"the {name} side does not run as it should:\n{warm['tail']}")
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        names = list(sides)
        for round_ in range(args.runs):
            order = names[round_ % len(names):] + names[:round_ % len(names)]
            for name in order:
                command, env = sides[name]
                runs[name].append(timed(command, env, workdir, args.timeout))
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {runs[n][-1]['wall_s']:.2f} s" for n in names), flush=True)
    finally:
        stop_local_server(local_env, workdir)
    median = {name: statistics.median(r["wall_s"] for r in results) for name, results in runs.items()}
    paired = {f"{name} - {base}": statistics.median(a["wall_s"] - b["wall_s"] for a, b in zip(runs[name], runs[base]))
              for name in ("cli-local", "cli-ephemeral") for base in ("plain", "plain-lean")}
    return {
        "runs": args.runs, "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "first_command_s": first["wall_s"], "first_exit": first["exit"],
        "median_s": median, "overhead_s": paired, "goal_s": GOAL_S,
        "failures": {name: sum(r["exit"] != 0 for r in results) for name, results in runs.items()},
        "walls_s": {name: [round(r["wall_s"], 3) for r in results] for name, results in runs.items()},
    }  # fmt: skip


def failures(args: argparse.Namespace) -> dict:
    workdir = args.workdir.resolve()
    shutil.rmtree(workdir / "state", ignore_errors=True)
    model_uri, config = build_world(workdir, args.seed)
    extra = {"AUDITLENS_PREFECT_SERVER": "ephemeral", "PREFECT_HOME": str(workdir / "prefect-ephemeral")} if args.mode == "ephemeral" else {}
    env = hermetic_env(workdir, **extra)
    audit = [str(AUDITLENS), "audit", "--model", model_uri, "--config", str(config), "--fail-on", "never", "--no-cache"]
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    runs = []
    try:
        for number in range(args.runs):
            runs.append(timed(audit, env, workdir, args.timeout))
            run = runs[-1]
            print(f"run {number + 1}: exit {run['exit']} in {run['wall_s']:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
            if run["exit"] != 0:
                print(run["tail"], flush=True)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait(timeout=10)
        stop_local_server(env, workdir)
    walls = [r["wall_s"] for r in runs]
    return {
        "mode": args.mode, "runs": len(runs), "busy_cores": args.busy, "cpus": os.cpu_count(),
        "failed": sum(r["exit"] != 0 for r in runs), "failures": [r["tail"] for r in runs if r["exit"] != 0],
        "first_s": walls[0] if walls else None, "median_s": statistics.median(walls) if walls else None,
        "max_s": max(walls) if walls else None,
    }  # fmt: skip


def plain(model_uri: str, config_path: Path, lean_exit: bool) -> None:
    """The steps of flows/audit_model.py with the adapters called directly: no CLI, no Prefect."""
    if lean_exit:
        import atexit
        import gc

        atexit.register(lambda: (gc.disable(), gc.freeze()))
    from audits.core.runner import overall_verdict, run_planned
    from audits.rendering.html import markdown_summary, render_report
    from tasks.adapters import provenance
    from tasks.adapters.inputs import assemble, preflight_data
    from tasks.adapters.mlflow_sink import MlflowSink
    from tasks.adapters.model_worker import RecordedInputs
    from tasks.adapters.models import resolve_model
    from tasks.adapters.settings import load_settings
    from tasks.adapters.tracking import check_reachable, configure_http, make_client, quiet_environment

    quiet_environment()
    loaded = load_settings(config_path)
    uri = loaded.tracking_uri(None)
    configure_http(loaded.settings.mlflow.request_timeout_s, loaded.settings.mlflow.request_max_retries)
    check_reachable(uri)
    client = make_client(uri)
    ref = resolve_model(model_uri, client)
    preflight_data(loaded)
    inputs = assemble(ref, loaded, client)
    sink = MlflowSink(uri, loaded.settings.mlflow.outage_timeout_s)
    run = sink.open_run(experiment=loaded.settings.mlflow.experiment.format(model_name=ref.name or "unregistered"),
                        run_name=f"audit {ref.label}", audit_key=f"plain:{time.time_ns()}",
                        tags={"auditlens.model_uri": ref.uri, "auditlens.trigger": "bench-plain"},
                        params=provenance.model_params(ref, loaded, uri), model_name=ref.name, model_version=ref.version,
                        artifact_location=loaded.settings.resolved_artifact_location(uri))  # fmt: skip
    results = [run_planned(planned, inputs.context) for planned in loaded.plan]
    verdict = overall_verdict(results)
    manifest = provenance.build_manifest(ref, loaded, RecordedInputs.of(inputs), results, verdict, uri, run.run_id)
    report = render_report(title=ref.label, subtitle=f"{ref.uri} · MLflow run {run.run_id}", verdict=verdict, results=results,
                           provenance={"model URI": ref.uri, "config hash": loaded.config_hash, "seed": loaded.settings.seed})
    sink.log_params(run, provenance.input_params(inputs))
    sink.record(run, results, report, manifest)
    sink.close(run, verdict, markdown_summary(ref.label, verdict, results))
    alias = loaded.settings.mlflow.promote_alias_on_pass
    if alias and verdict.value == "PASS" and ref.name and ref.version:  # the flow's promote-on-pass step
        sink.versions.promote(ref.name, ref.version, alias)
    assert "prefect" not in sys.modules, "the plain side must not import Prefect"
    print(f"Verdict: {verdict.value}   MLflow run {run.run_id}")


def main() -> int:
    args = parse_args()
    if args.command == "plain":
        plain(args.model, args.config, args.lean_exit)
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(hermetic_env(args.workdir.resolve()))
    result = overhead(args) if args.command == "overhead" else failures(args)
    name = "overhead.json" if args.command == "overhead" else f"failures-{args.mode}.json"
    (args.workdir / name).write_text(json.dumps(result, indent=1))
    if args.command == "overhead":
        print(f"\nmedian wall (s) over {result['runs']} rounds: " + ", ".join(f"{k} {v:.2f}" for k, v in result["median_s"].items()))
        print("overhead (median of paired differences, s): "
              + ", ".join(f"{k} {v:+.2f}" for k, v in result["overhead_s"].items()) + f"   (goal with the server up: < {GOAL_S:g} s)")
        print(f"first command on a fresh state folder: {result['first_command_s']:.1f} s; failed runs: {result['failures']}")
    else:
        print(f"\n{result['failed']} of {result['runs']} CLI runs failed ({result['mode']}, {result['busy_cores']} core(s) saturated); "
              f"median {result['median_s']:.1f} s, first {result['first_s']:.1f} s, slowest {result['max_s']:.1f} s")
    print(f"figures in {args.workdir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
