"""What every `auditlens` command shares: its start (quiet libraries, SIGTERM as an exit) and its one way to fail on
bad input (one message, redacted, and the exit code the error carries). Its own module so that the commands in other
modules (init_command.py) use them without importing cli.py back."""

from __future__ import annotations

import signal
import sys

import typer
from rich.markup import escape

from auditlens.console import errors


def setup() -> None:
    from tasks.adapters.tracking import quiet_environment

    quiet_environment()
    # `docker stop` and Prefect cancellation send SIGTERM: turn it into SystemExit so the audit's
    # run is ended FAILED instead of being left RUNNING.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def fail(exc: Exception) -> None:
    from tasks.adapters.tracking import redact_text

    # whatever raised it, a URL in the message (a registry's, MLflow's own) is printed without its secrets
    report_failure(redact_text(str(exc)), getattr(exc, "audit_run_id", None), getattr(exc, "exit_code", 1))


def report_failure(text: str, run_id: str | None, exit_code: int) -> None:
    """Print a failure already redacted (``fail``'s, or one the resident auditor sent) and exit with its code."""
    errors.print(f"[bold red]error:[/] {escape(text)}", highlight=False, markup=True, soft_wrap=True)
    if run_id:  # a refused model is an audit's finding: its run says so
        errors.print(f"(the MLflow run {run_id} was ended FAILED with this reason)", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(exit_code)


def report_crash(text: str, run_id: str | None) -> None:
    """An audit that failed other than on bad input (its message redacted): said with whether a run was left, exit 1."""
    where = f"\n(the MLflow run {run_id} was ended FAILED with this reason)" if run_id else "\n(no MLflow run was opened)"
    errors.print(f"[bold red]audit failed:[/] {escape(text)}{where}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(1)
