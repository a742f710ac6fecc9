"""`auditlens init`: inspect a model and its data, write a commented audit configuration, validate it, and print the
command that runs it.

It never asks a question, on a terminal or not: every choice is a flag, and what it inferred is written, with why, in
the file's comments. The work is in tasks/adapters/scaffold.py; the model is described in a process of its own.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from enum import Enum
from pathlib import Path

import typer

from auditlens.common import fail as _fail
from auditlens.common import setup as _setup
from auditlens.console import console


class Plan(str, Enum):
    quick = "quick"
    standard = "standard"
    full = "full"


class ModelLoading(str, Enum):
    strict = "strict"
    trusted = "trusted"


class Task(str, Enum):
    classification = "classification"
    regression = "regression"


def _program() -> str:
    """How to call this command again: 'auditlens' when that is what the PATH finds, else this environment's own."""
    here = Path(sys.executable).parent / "auditlens"
    found = shutil.which("auditlens")
    if found and here.exists() and Path(found).resolve() == here.resolve():
        return "auditlens"
    return str(here) if here.exists() else "auditlens"


def _segments(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def init(
    model: str = typer.Option(..., "--model", "-m", help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH"),
    reference: str = typer.Option(..., "--reference", help="what the model was trained on: a CSV or Parquet file, a folder of them, a glob, or a .npz of images"),
    current: str = typer.Option(..., "--current", help="what the model sees now (same forms as --reference)"),
    holdout: str | None = typer.Option(None, "--holdout", help="optional: labelled rows the model did not train on (one file)"),
    target: str | None = typer.Option(None, "--target", help="the label column; default: inferred from the model's features and classes"),
    plan: Plan = typer.Option(Plan.standard, "--plan", help="which audits run"),
    segments: str | None = typer.Option(None, "--segments", help="comma-separated columns to slice results by; default: the low-cardinality text columns found; '' for none"),
    out: Path = typer.Option(Path("auditlens.yaml"), "--out", "-o", help="the file to write"),
    force: bool = typer.Option(False, "--force", help="replace --out if it exists"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="where the model is registered; written into the file (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db, not written)"),
    model_loading: ModelLoading = typer.Option(ModelLoading.strict, "--model-loading", help="trusted: load a model the allowlist refuses by running its own code"),
    trusted_type: list[str] = typer.Option([], "--trusted-type", help="an exact module.Class the allowlist should also accept (repeat for several)"),
    task: Task | None = typer.Option(None, "--task", help="only for a model that does not say (a pyfunc)"),
    encoding: str = typer.Option("utf-8", "--encoding", help="of the CSV files"),
) -> None:
    """Write an audit configuration for a model and its data: inspect both, write a commented YAML with a plan that
    suits them, validate it, and print the `auditlens audit` command that runs it. Asks nothing: every choice is a flag."""
    _setup()
    from tasks.adapters import scaffold
    from tasks.adapters.errors import AuditlensError, ConfigError
    from tasks.adapters.settings import DEFAULT_TRACKING_URI, Security
    from tasks.adapters.tracking import redact

    cwd = Path.cwd()
    out = out if out.is_absolute() else cwd / out
    folder = out.parent
    program = _program()
    try:
        if out.exists() and not force:
            raise ConfigError(f"{out} exists", "pass --force to replace it, or --out another file")
        if out.is_dir():
            raise ConfigError(f"{out} is a folder", "pass --out the path of a YAML file, e.g. auditlens.yaml")
        if tracking_uri is not None and redact(tracking_uri) != tracking_uri:
            raise ConfigError("the tracking URI holds credentials, and init writes it into the configuration file",
                              "pass it without them and set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or a token) "
                              "in the environment")
        try:
            Security(model_loading=model_loading.value, trusted_types=list(trusted_type))
        except ValueError as exc:
            raise ConfigError(f"--trusted-type: {str(exc).splitlines()[-1].strip()}",
                              "name each class exactly, e.g. --trusted-type mypackage.models.MyEstimator") from None
        import codecs

        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ConfigError(f"--encoding {encoding!r} is not a text encoding", "e.g. utf-8, latin-1, cp1252") from None
        # the model's process imports its libraries while this one reads the data and imports MLflow
        from tasks.adapters.model_worker import ModelWorker, prestart

        prestart(("skops.io", "tasks.adapters.model_facts"))
        with ModelWorker() as describer:
            sides = {"reference": reference, "current": current, **({"holdout": holdout} if holdout else {})}
            data = {role: scaffold.inspect_data(role, spec, cwd, encoding) for role, spec in sides.items()}
            if "holdout" in data and data["holdout"].files > 1:
                raise ConfigError(f"--holdout {holdout} is several files; a holdout is one CSV or Parquet file",
                                  "write the held-out labelled rows to one file")
            uri = tracking_uri if tracking_uri is not None else os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
            found = scaffold.inspect_model(model, uri, model_loading.value, tuple(trusted_type), describer)
        again = shlex.join([program, "init", *sys.argv[2:]])
        if not found.strict_ok and model_loading is ModelLoading.strict:
            raise scaffold.refusal_error(found, again)
        if not found.loaded and model_loading is ModelLoading.trusted and found.task is None and task is None:
            raise ConfigError(f"{found.label} ({', '.join(found.flavors)}) does not say whether it is a classifier or a "
                              "regressor, and init does not run its code to find out", f"{again} --task classification "
                              "(or regression)")
        chosen = scaffold.decide(found, data["reference"], data["current"], data.get("holdout"), target=target,
                                 segments=_segments(segments), task=task.value if task else None, plan=plan.value,
                                 model_loading=model_loading.value, trusted_types=tuple(trusted_type), encoding=encoding,
                                 tracking_uri=tracking_uri)
        command = scaffold.audit_command(model, out, cwd, program)
        loaded = scaffold.write_checked(scaffold.render(chosen, folder, cwd, command), out, force)
    except AuditlensError as exc:
        _fail(exc)
    say = lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)  # noqa: E731
    say(f"Model: {found.label}: {found.what()}; "
        + ("loads under model_loading strict" if found.strict_ok else f"model_loading {chosen.model_loading}"))
    say(f"Data: reference {chosen.reference.size()}; current {chosen.current.size()}"
        + (f"; holdout {chosen.holdout.size()}" if chosen.holdout else ""))
    say(f"Target: {chosen.target} ({chosen.target_reason}); modality {chosen.modality}; segments: "
        + (", ".join(chosen.segments) or "none"))
    for note in chosen.notes:
        say(f"Note: {note}")
    shown = os.path.relpath(out, cwd) if out.is_relative_to(cwd) else str(out)
    say(f"Wrote {shown} (valid audit configuration, hash {loaded.config_hash}). Run the audit with:")
    say(f"  {command}")
    if tracking_uri is None:  # not written into the file: the audit finds the store as init did
        where = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else f"{DEFAULT_TRACKING_URI} in this folder"
        say(f"  (the tracking store is not in the file: the audit takes it from {where}, as init did: {redact(uri)})")
