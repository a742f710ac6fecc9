"""The `auditlens` command: audit a model version, run the demo, list audits, check a config.

Bad input (config, model, data, an unreachable server) is caught before any MLflow run is opened
and printed as one message with its fix; the exit code is 2. An audit whose verdict is at or above
--fail-on exits 1, so the command can gate a CI pipeline.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="auditlens: versioned model audits in MLflow, orchestrated by Prefect.")
console = Console(stderr=False)
errors = Console(stderr=True)

COLOURS = {"PASS": "green", "WARN": "yellow", "FAIL": "red", "ERROR": "magenta", "SKIPPED": "grey50"}


class FailOn(str, Enum):
    FAIL = "FAIL"
    WARN = "WARN"
    never = "never"


def _setup() -> None:
    from tasks.adapters.tracking import quiet_environment

    quiet_environment()
    # `docker stop` and Prefect cancellation send SIGTERM: turn it into SystemExit so the audit's
    # run is ended FAILED instead of being left RUNNING.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@contextmanager
def _in_process_flow_settings():
    """A flow the CLI runs in its own process needs no heartbeat (Prefect uses it to detect crashed
    workers); joining the heartbeat thread costs about a second per flow call."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _fail(exc: Exception) -> None:
    errors.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(getattr(exc, "exit_code", 1))


def ui_hint(tracking_uri: str, summary: dict | None = None) -> str:
    if tracking_uri.startswith("sqlite:///"):
        tracking_uri = f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).resolve()}"  # works from any folder
        venv_bin = Path(sys.executable).parent
        mlflow = venv_bin / "mlflow" if (venv_bin / "mlflow").exists() else "mlflow"
        return (f"{mlflow} ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000\n"
                "  then open http://127.0.0.1:5000")
    path = f"/#/experiments/{summary['experiment_id']}/runs/{summary['run_id']}" if summary else ""
    return f"open {tracking_uri.rstrip('/')}{path}"


def _print_summary(summary: dict) -> None:
    table = Table(title=f"Audit of {summary['model']}", title_justify="left")
    table.add_column("audit")
    table.add_column("verdict")
    table.add_column("reason", overflow="fold")
    for audit_id, outcome in summary["audits"].items():
        colour = COLOURS[outcome["verdict"]]
        table.add_row(audit_id, f"[{colour}]{outcome['verdict']}[/]", outcome["reason"][:300])
    console.print(table)
    colour = COLOURS[summary["verdict"]]
    console.print(f"Verdict: [bold {colour}]{summary['verdict']}[/]   MLflow run {summary['run_id']} "
                  f"in experiment '{summary['experiment']}'", soft_wrap=True)


@app.command()
def audit(
    model: str = typer.Option(..., "--model", "-m", help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH"),
    config: Path = typer.Option(..., "--config", "-c", help="audit configuration (YAML, kind: audit)"),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI; default: the config's, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db"),
    fail_on: FailOn = typer.Option(FailOn.FAIL, help="exit 1 when the verdict is this bad or worse (ERROR counts as FAIL)"),
) -> None:
    """Audit one model version and record the audit in MLflow."""
    _setup()
    from tasks.adapters.errors import AuditlensError
    from tasks.adapters.inputs import preflight_data
    from tasks.adapters.models import resolve_model
    from tasks.adapters.settings import load_settings
    from tasks.adapters.tracking import check_reachable, configure_http, make_client

    try:
        loaded = load_settings(config)
        uri = loaded.tracking_uri(tracking_uri)
        configure_http(loaded.settings.mlflow.request_timeout_s, loaded.settings.mlflow.request_max_retries)
        check_reachable(uri)
        resolve_model(model, make_client(uri))
        preflight_data(loaded)
    except AuditlensError as exc:
        _fail(exc)

    from flows.audit_model import audit_model

    try:
        with _in_process_flow_settings():
            summary = audit_model(model_uri=model, config_path=str(loaded.path), tracking_uri=uri, reason="cli")
    except AuditlensError as exc:
        _fail(exc)
    except Exception as exc:
        errors.print(f"[bold red]audit failed:[/] {type(exc).__name__}: {exc}\n(the MLflow run was ended FAILED with this reason)")
        raise typer.Exit(1) from None
    _print_summary(summary)
    console.print(f"Open the MLflow UI: {ui_hint(uri, summary)}", soft_wrap=True, highlight=False)
    gate = {"FAIL": {"FAIL", "ERROR"}, "WARN": {"WARN", "FAIL", "ERROR"}, "never": set()}[fail_on.value]
    if summary["verdict"] in gate:
        raise typer.Exit(1)


@app.command()
def demo(config: Path = typer.Option(Path("config/demo.yaml"), "--config", "-c", help="demo configuration (kind: demo)")) -> None:
    """Train demo models on bundled data, register them locally, audit every version."""
    _setup()
    from tasks.adapters.demo import load_demo_settings
    from tasks.adapters.errors import AuditlensError

    try:
        load_demo_settings(config)
    except AuditlensError as exc:
        _fail(exc)
    from flows.run_demo import run_demo

    with _in_process_flow_settings():
        result = run_demo(config_path=str(config.resolve()))
    for summary in result["audits"]:
        _print_summary(summary)
    console.print("\n[bold]Every audit is recorded in MLflow.[/] Open the UI to compare the versions side by side:")
    console.print(f"  {ui_hint(result['tracking_uri'])}", soft_wrap=True, highlight=False)
    console.print("  (or: make ui)  Experiments 'auditlens/demo-classifier' and 'auditlens/demo-regressor' hold the audits;"
                  " the Models page shows each version's audit.status and audit.verdict tags.", soft_wrap=True)
    workdir = Path(result["tracking_uri"].removeprefix("sqlite:///")).parent
    if result["audits"]:
        console.print(f"To audit again from the command line: {Path(sys.executable).parent / 'auditlens'} audit "
                      f"--model models:/demo-classifier@champion --config {os.path.relpath(workdir / 'demo-classifier.audit.yaml')}",
                      soft_wrap=True, highlight=False)


@app.command("audits")
def list_audits(verbose: bool = typer.Option(False, "--verbose", "-v", help="also each audit's configuration keys, defaults and default thresholds")) -> None:
    """List the audits that plans can name (built-in and installed plugins)."""
    from audits.core.registry import available_audits, get_audit_class

    for name, source in available_audits().items():
        console.print(f"[bold]{name:22}[/] {source}", highlight=False)
        if not verbose:
            continue
        cls = get_audit_class(name)
        if cls.description:
            console.print(f"    {cls.description}", highlight=False)
        for key, field in cls.Config.model_fields.items():
            console.print(f"    config.{key}: {field.get_default(call_default_factory=True)!r}", highlight=False)
        for threshold in cls.default_thresholds:
            console.print(f"    threshold: {threshold.rule} ({threshold.severity})", highlight=False)


@app.command("check-config")
def check_config(config: Path = typer.Argument(..., help="an audit (kind: audit) or demo (kind: demo) YAML file")) -> None:
    """Validate a configuration file without running anything."""
    _setup()
    from tasks.adapters.demo import load_demo_settings
    from tasks.adapters.errors import AuditlensError
    from tasks.adapters.settings import load_settings, read_yaml

    try:
        kind = read_yaml(config.resolve()).get("kind", "audit")
        loaded = load_demo_settings(config) if kind == "demo" else load_settings(config)
    except AuditlensError as exc:
        _fail(exc)
    console.print(f"{config}: valid {kind} configuration" + (f" (hash {loaded.config_hash})" if kind == "audit" else ""))


if __name__ == "__main__":
    app()
