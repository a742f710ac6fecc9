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
    errors.print(f"[bold red]error:[/] {escape(redact_text(str(exc)))}", highlight=False, markup=True, soft_wrap=True)
    run_id = getattr(exc, "audit_run_id", None)
    if run_id:  # a refused model is an audit's finding: its run says so
        errors.print(f"(the MLflow run {run_id} was ended FAILED with this reason)", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(getattr(exc, "exit_code", 1))
