"""What the `auditlens` command prints: its two consoles, an audit's verdict table, where to look in MLflow's UI,
the local Prefect server's state."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console(stderr=False)
errors = Console(stderr=True)

COLOURS = {"PASS": "green", "WARN": "yellow", "FAIL": "red", "ERROR": "magenta", "SKIPPED": "grey50"}


def ui_hint(tracking_uri: str, summary: dict | None = None) -> str:
    if tracking_uri.startswith("sqlite:///"):
        tracking_uri = f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).resolve()}"  # works from any folder
        venv_bin = Path(sys.executable).parent
        mlflow = venv_bin / "mlflow" if (venv_bin / "mlflow").exists() else "mlflow"
        return (f"{mlflow} ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000\n"
                "  then open http://127.0.0.1:5000")
    from tasks.adapters.tracking import redact

    path = f"/#/experiments/{summary['experiment_id']}/runs/{summary['run_id']}" if summary else ""
    return f"open {redact(tracking_uri).rstrip('/')}{path}"


def print_summary(summary: dict) -> None:
    table = Table(title=f"Audit of {summary['model']}", title_justify="left")
    table.add_column("audit")
    table.add_column("verdict")
    table.add_column("reason", overflow="fold")
    for audit_id, outcome in summary["audits"].items():
        colour = COLOURS[outcome["verdict"]]
        reused = " (cached)" if outcome.get("cached") else ""
        table.add_row(escape(audit_id), f"[{colour}]{outcome['verdict']}[/]{reused}", escape(outcome["reason"][:300]))
    console.print(table)
    cached = sum(1 for outcome in summary["audits"].values() if outcome.get("cached"))
    if cached:
        console.print(f"{cached} of {len(summary['audits'])} results reused from earlier audits of the same model, data, "
                      "settings and code (--no-cache recomputes them)", soft_wrap=True)
    colour = COLOURS[summary["verdict"]]
    console.print(f"Verdict: [bold {colour}]{summary['verdict']}[/]   MLflow run {summary['run_id']} "
                  f"in experiment '{summary['experiment']}'", soft_wrap=True)


def ago(timestamp: float | None) -> str:
    return "never" if timestamp is None else f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(timestamp))} ({time.time() - timestamp:.0f} s ago)"


def print_local_server(server, state) -> None:
    idle = "never" if not state.idle_timeout_s else f"after {state.idle_timeout_s:g} s without use"
    console.print(f"API: {state.api_url}    UI: {state.ui_url}\n"
                  f"pid {state.pid} (supervisor; uvicorn {state.server_pid}), {state.version}\n"
                  f"started {ago(state.started_at)}, last used {ago(server.last_use())}, stops itself {idle}\n"
                  f"PREFECT_HOME {state.prefect_home}\nlog {server.log_file}", soft_wrap=True, highlight=False)
