"""The `auditlens` command: audit a model version, run the demo, list audits, check a config.

Bad input (config, model, data, an unreachable server) is caught before any MLflow run is opened
and printed as one message with its fix; the exit code is 2. An audit whose verdict is at or above
--fail-on exits 1, so the command can gate a CI pipeline.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape

from auditlens.common import fail as _fail
from auditlens.common import report_crash
from auditlens.common import setup as _setup
from auditlens.console import console, errors, print_local_server, print_summary, ui_hint
from auditlens.running import AuditCrashed, run_checked_audit
from auditlens.running import in_process_flow_settings as _in_process_flow_settings
from auditlens.running import prefect_api_url as _prefect_api_url
from auditlens.running import prefect_server_for_flows as _prefect_server_for_flows
from auditlens.running import prestart_model_process as _prestart_model_process

app = typer.Typer(add_completion=False, no_args_is_help=True, help="auditlens: versioned model audits in MLflow, orchestrated by Prefect.")


# what `auditlens --version` reports besides auditlens: the pinned core stack, then what it computes with (torch only
# when the deep extra is installed)
STACK = ("prefect", "mlflow", "shap", "lime", "scikit-learn", "great-expectations", "pandas", "numpy")
OPTIONAL_STACK = ("torch",)


def installed_versions() -> list[tuple[str, str]]:
    """(distribution, version) of auditlens and its stack as installed, read from their metadata: nothing is imported."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("auditlens", *STACK, *OPTIONAL_STACK):
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            if name not in OPTIONAL_STACK:
                found.append((name, "not installed"))
    return found


def _print_versions(asked: bool) -> None:
    if asked:
        for name, version in installed_versions():
            typer.echo(f"{name} {version}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_versions,
                                          help="print the versions of auditlens and of its stack as installed, and exit")) -> None:
    pass


class FailOn(str, Enum):
    FAIL = "FAIL"
    WARN = "WARN"
    never = "never"


def _prefect_console(verbose: bool) -> None:
    """Prefect logs every state change and tells a failure four times over; these commands print their own outcome, with
    one message for bad input. Prefect's lines still reach its API (the Prefect UI), and this console with --verbose.
    Called before Prefect configures logging (at its import)."""
    if verbose:
        return
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    ours = logging.getLogger("tasks")  # our own warnings (an MLflow server that went away, retried) stay visible
    if not ours.handlers:
        handler = _CurrentStderr()
        handler.setLevel(logging.WARNING)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        ours.addHandler(handler)
        ours.propagate = False


class _CurrentStderr(logging.StreamHandler):
    """Writes to sys.stderr as it is when a record comes: while the live display runs, that is the display's proxy,
    which prints the line above it instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


@app.command()
def audit(
    model: str = typer.Option(..., "--model", "-m", help="models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH"),
    config: Path = typer.Option(..., "--config", "-c", help="audit configuration (YAML, kind: audit)"),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI; default: the config's, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db"),
    fail_on: FailOn = typer.Option(FailOn.FAIL, help="exit 1 when the verdict is this bad or worse (ERROR counts as FAIL)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="also print Prefect's log lines (they always reach the Prefect API); progress as plain lines; audits in this process"),
    no_cache: bool = typer.Option(False, "--no-cache", help="recompute every audit, even one whose model, data, settings and code are unchanged since a result was kept"),
    resident: bool = typer.Option(True, "--resident/--no-resident", help="hand the audit to the resident auditor when one runs for this user, code and environment (auditlens resident); --no-resident audits in this process"),
) -> None:
    """Audit one model version and record the audit in MLflow."""
    if resident and not verbose:  # before anything heavy is imported: a resident auditor has it all imported already
        from auditlens.resident import audit_by_resident

        handed = audit_by_resident(model, config, tracking_uri, no_cache)
        if handed is not None:
            _finish_audit(*handed, fail_on)
            return
    _setup()
    _prefect_console(verbose)
    _no_collection_at_exit()
    from auditlens.progress import display_for
    from tasks.adapters.errors import AuditlensError

    # on a terminal, a live display of the phases and of each audit; else a line per phase and per audit ended. Each
    # error stops it first, so that the error is printed below its last frame.
    with display_for(console, plain=verbose) as display:
        try:
            summary, uri, _ = run_checked_audit(model, config, tracking_uri, no_cache)
        except AuditlensError as exc:
            display.stop(failed=True)
            _fail(exc)
        except AuditCrashed as exc:
            display.stop(failed=True)
            report_crash(exc.text, exc.run_id)
    _finish_audit(summary, ui_hint(uri, summary), fail_on)


def _finish_audit(summary: dict, hint: str, fail_on: FailOn) -> None:
    print_summary(summary)
    console.print(f"Open the MLflow UI: {hint}", soft_wrap=True, highlight=False)
    gate = {"FAIL": {"FAIL", "ERROR"}, "WARN": {"WARN", "FAIL", "ERROR"}, "never": set()}[fail_on.value]
    if summary["verdict"] in gate:
        raise typer.Exit(1)


@app.command()
def resident(
    detach: bool = typer.Option(False, "--detach", help="start it in the background (its output in $AUDITLENS_STATE_DIR/resident/resident.log) and return once it answers"),
    stop: bool = typer.Option(False, "--stop", help="stop the one running, after the audit under way"),
    status: bool = typer.Option(False, "--status", help="say whether one runs, since when, and how many audits it served"),
    idle_minutes: float = typer.Option(60.0, min=0.05, help="stop after this many minutes without an audit"),
    log: Path | None = typer.Option(None, hidden=True, help="the log --detach writes to (reported by --status)"),
) -> None:
    """Keep an auditor resident, so that each `auditlens audit` starts at once: it pays the imports, the Prefect check
    and the model process's start ahead, for this user, this code and this environment only. Runs until Ctrl-C,
    --stop or --idle-minutes without an audit."""
    from auditlens import resident as residence

    if status or stop:
        answer = residence.stop() if stop else residence.ask({"op": "ping"})
        if answer is None:
            console.print(f"No resident auditor runs (socket {residence.socket_path()})", soft_wrap=True, highlight=False)
            raise typer.Exit(0 if stop else 1)
        busy = f"auditing since {time.strftime('%H:%M:%S', time.localtime(answer['busy_since']))}" if answer["busy_since"] else "idle"
        console.print(f"{'Stopped' if stop else 'Resident auditor'}: pid {answer['pid']}, started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(answer['started']))}, {answer['served']} audit(s) served, "
                      f"{busy}, {answer['waiting']} waiting; stops after {answer['idle_s'] / 60:g} min idle\n"
                      f"socket {residence.socket_path()}" + (f"\nlog {answer['log']}" if answer["log"] else ""),
                      soft_wrap=True, highlight=False)
        if not stop and answer["code"] != residence.code_fingerprint():
            console.print("It runs other code than this command: restart it (auditlens resident --stop, then --detach)", soft_wrap=True)
        return
    from tasks.adapters.errors import AuditlensError

    if detach:  # before this command's setup sets variables of its own: the resident's environment is the caller's
        try:
            answer = residence.start_detached(idle_minutes)
        except AuditlensError as exc:
            _fail(exc)
        console.print(f"Resident auditor started: pid {answer['pid']}, socket {residence.socket_path()}, log {answer['log']}\n"
                      "`auditlens audit` now hands it its audits; stop it with: auditlens resident --stop", soft_wrap=True, highlight=False)
        return
    environment = residence.environment_digests()  # before this command's setup sets variables of its own
    _setup()
    _prefect_console(False)
    started = time.perf_counter()
    server = residence.Resident(environment, idle_minutes * 60, log)
    try:
        server.bind()  # first: one already running is said at once; a command that comes meanwhile waits its turn
        _warm_imports()
        _prefect_server_for_flows()
    except AuditlensError as exc:
        server.close()
        _fail(exc)
    console.print(f"Resident auditor: pid {os.getpid()}, ready in {time.perf_counter() - started:.1f} s, listening on "
                  f"{residence.socket_path()}; `auditlens audit` hands it its audits. Stop: Ctrl-C or auditlens resident --stop",
                  soft_wrap=True, highlight=False)
    try:
        server.serve()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()


def _warm_imports() -> None:
    """What an audit imports, imported once: the flow (MLflow, Prefect), the inputs' checks and every audit class
    registered (their libraries: SHAP, LIME, openTSNE, Great Expectations...)."""
    import flows.audit_model  # noqa: F401
    import tasks.adapters.inputs  # noqa: F401
    from audits.core.registry import available_audits, get_audit_class

    for name in available_audits():
        get_audit_class(name)


@app.command()
def demo(config: Path = typer.Option(Path("config/demo.yaml"), "--config", "-c", help="demo configuration (kind: demo)"),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="also print Prefect's log lines")) -> None:
    """Train demo models on bundled data, register them locally, audit every version."""
    _setup()
    from tasks.adapters.audit_pool import lane_threads

    # five versions audited one after another, each with more audits than there are cores: each finds a model process
    # started, Great Expectations imported for its data_quality (2 s each), while the one before ran
    _prestart_model_process(lane_threads(None, 1000), keep=True, warm=("great_expectations",))
    _prefect_console(verbose)
    _no_collection_at_exit()
    from tasks.adapters.demo import load_demo_settings
    from tasks.adapters.errors import AuditlensError

    try:
        load_demo_settings(config)
        _prefect_server_for_flows()
    except AuditlensError as exc:
        _fail(exc)
    from flows.run_demo import run_demo

    with _in_process_flow_settings():
        result = run_demo(config_path=str(config.resolve()))
    for summary in result["audits"]:
        print_summary(summary)
    console.print("\n[bold]Every audit is recorded in MLflow.[/] Open the UI to compare the versions side by side:")
    console.print(f"  {ui_hint(result['tracking_uri'])}", soft_wrap=True, highlight=False)
    experiments = ", ".join(dict.fromkeys(f"'{s['experiment']}'" for s in result["audits"] if s.get("experiment")))
    console.print(f"  (or: make ui)  Experiments {experiments or 'auditlens/<model>'} hold the audits;"
                  " the Models page shows each version's audit.status and audit.verdict tags.", soft_wrap=True)
    workdir = Path(result["tracking_uri"].removeprefix("sqlite:///")).parent
    if result["audits"]:
        console.print(f"To audit again from the command line: {Path(sys.executable).parent / 'auditlens'} audit "
                      f"--model models:/demo-classifier@champion --config {os.path.relpath(workdir / 'demo-classifier.audit.yaml')}",
                      soft_wrap=True, highlight=False)


@app.command("audits")
def list_audits(verbose: bool = typer.Option(False, "--verbose", "-v", help="also each audit's configuration keys, defaults and default thresholds"),
                preset: str | None = typer.Option(None, "--preset", help="instead, what a preset (plan: quick | standard | full) holds for each kind of model")) -> None:
    """List the audits that plans can name (built-in and installed plugins), or what a preset holds."""
    from audits.core.registry import available_audits, get_audit_class

    if preset is not None:
        from audits.core.presets import UnknownPresetError, format_preset

        try:
            text = format_preset(preset)
        except UnknownPresetError as exc:
            errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(2) from None
        console.print(text, markup=False, highlight=False, soft_wrap=True)
        return

    for name, source in available_audits().items():
        console.print(f"[bold]{name:22}[/] {source}", highlight=False, soft_wrap=True)
        if not verbose:
            continue
        from audits.core.partial import audit_mode

        cls = get_audit_class(name)
        if cls.description:
            console.print(f"    {cls.description}", highlight=False, soft_wrap=True)
        sample = f"a seeded sample of {cls.default_sample_rows:,} rows a side"
        rows = {"partial": "every row", "hybrid": f"fitted on {sample} (plan key sample_rows), applied to every row",
                "sample": f"{sample} (plan key sample_rows)"}
        console.print(f"    rows: {rows[audit_mode(cls)]}", highlight=False, soft_wrap=True)
        for key, field in cls.Config.model_fields.items():
            console.print(f"    config.{key}: {field.get_default(call_default_factory=True)!r}", highlight=False, soft_wrap=True)
        for threshold in cls.default_thresholds:  # declared on local keys: shown as a plan names them
            console.print(f"    threshold: {threshold.namespaced(name).rule} ({threshold.severity})", highlight=False, soft_wrap=True)
        if cls.metric_keys:  # what a threshold may name ('*' a column, class or segment name; {a,b} either)
            console.print(f"    metrics: {', '.join(f'{name}.{key}' for key in cls.metric_keys)}", highlight=False, soft_wrap=True)


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


@app.command()
def serve(
    deployments: Path = typer.Option(Path("config/deployments.yaml"), "--deployments", "-d", help="deployments configuration (kind: deployments)"),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI; default: the deployments file's, $MLFLOW_TRACKING_URI"),
    webhook: bool = typer.Option(False, "--webhook", help="also receive MLflow's model_version.created webhook"),
) -> None:
    """Serve the automatic audits (scheduled, watcher, triggered) from this process, without a work pool."""
    _setup()
    from tasks.adapters.errors import AuditlensError

    try:
        loaded, uri = _deployments_against_servers(deployments, tracking_uri, (
            "schedules need a Prefect server; PREFECT_API_URL is not set",
            "start one (prefect server start, or auditlens up) and set PREFECT_API_URL=http://127.0.0.1:4200/api"))
        receiver = _start_webhook(loaded, uri) if webhook else None
    except AuditlensError as exc:
        _fail(exc)
    from prefect import serve as prefect_serve

    from auditlens.serving import build_deployments, release_orphaned_watcher_slot

    if release_orphaned_watcher_slot(dead_after_s=max(300, 10 * loaded.settings.watcher.interval_seconds)):
        console.print("Freed the watcher's concurrency slot, held by a run that died with an earlier server")
    if receiver is not None:
        console.print(f"Receiving MLflow webhooks on http://{loaded.settings.webhook.host}:{receiver.port}{loaded.settings.webhook.path}")
    try:
        prefect_serve(*build_deployments(loaded, uri), pause_on_shutdown=False)
    finally:
        if receiver is not None:
            receiver.stop()


def _deployments_against_servers(deployments: Path, tracking_uri: str | None, no_prefect: tuple[str, str]):
    """The deployments configuration and its tracking URI, once the MLflow server answers and a Prefect server is
    configured (``no_prefect``: the problem and the fix to report when it is not)."""
    from tasks.adapters.deployments import load_deployments
    from tasks.adapters.errors import ConfigError
    from tasks.adapters.tracking import check_reachable

    loaded = load_deployments(deployments)
    uri = loaded.tracking_uri(tracking_uri)
    check_reachable(uri)
    if not _prefect_api_url():
        raise ConfigError(*no_prefect)
    return loaded, uri


def _start_webhook(loaded, tracking_uri: str, host: str | None = None, port: int | None = None):
    from tasks.adapters.errors import ConfigError
    from tasks.adapters.webhook import WebhookReceiver
    from tasks.triggers import trigger_audit

    spec = loaded.settings.webhook
    secret = os.environ.get(spec.secret_env, "")
    if not secret:
        raise ConfigError(f"the webhook secret is not set: environment variable {spec.secret_env} is empty",
                          f"export {spec.secret_env}=<the secret given to MLflow's create_webhook>")

    def on_new_version(name: str, version: str) -> None:
        model = loaded.model(name)
        if model is not None and model.on_new_version:
            trigger_audit(loaded, model, version, 1, "webhook: new version", tracking_uri)

    host, port = host or spec.host, spec.port if port is None else port
    try:
        receiver = WebhookReceiver(secret, on_new_version, host, port, spec.path, spec.max_age_s,
                                   replay_db=spec.replay_store(loaded.path), read_timeout_s=spec.read_timeout_s,
                                   max_connections=spec.max_connections)
    except OSError as exc:
        raise ConfigError(f"the webhook receiver cannot listen on {host}:{port} ({exc})",
                          "free the port or choose another with --port (and register that URL with MLflow)") from None
    return receiver.start()


@app.command()
def webhook(
    deployments: Path = typer.Option(Path("config/deployments.yaml"), "--deployments", "-d", help="deployments configuration (kind: deployments)"),
    tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI; default: the deployments file's, $MLFLOW_TRACKING_URI"),
    host: str | None = typer.Option(None, help="address to listen on; default: the file's webhook.host (0.0.0.0 in a container)"),
    port: int | None = typer.Option(None, help="port to listen on; default: the file's webhook.port"),
) -> None:
    """Receive MLflow's model_version.created webhook and start each audit through the audit deployment, which
    a worker runs, until Ctrl-C or SIGTERM. Only the receiver: no flow runs in this process."""
    _setup()
    from tasks.adapters.errors import AuditlensError

    try:
        loaded, uri = _deployments_against_servers(deployments, tracking_uri, (
            "the webhook starts audits through a Prefect server; PREFECT_API_URL is not set",
            "set PREFECT_API_URL to the API of the server your workers poll, e.g. http://prefect-server:4200/api"))
        receiver = _start_webhook(loaded, uri, host, port)
    except AuditlensError as exc:
        _fail(exc)
    spec = loaded.settings.webhook
    console.print(f"Receiving MLflow webhooks on http://{host or spec.host}:{receiver.port}{spec.path}; "
                  f"audits start through the Prefect deployment at {_prefect_api_url()}", soft_wrap=True, highlight=False)
    try:
        while receiver.thread.is_alive():
            time.sleep(1)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; SIGTERM (docker stop) arrives as SystemExit
        pass
    finally:
        receiver.stop()


@app.command()
def up(
    deployments: Path = typer.Option(Path("config/deployments.yaml"), "--deployments", "-d"),
    store: Path = typer.Option(Path(".auditlens-demo"), help="folder of the MLflow store (mlflow.db) to serve"),
    state: Path = typer.Option(Path(".auditlens-servers"), help="logs, keys and Prefect's database"),
    mlflow_port: int = typer.Option(5000), prefect_port: int = typer.Option(4200),
) -> None:
    """Start MLflow and Prefect servers on 127.0.0.1 and serve the automatic audits, until Ctrl-C."""
    _setup()
    from tasks.adapters.deployments import load_deployments
    from tasks.adapters.errors import AuditlensError, ConfigError
    from tasks.adapters.local_servers import LocalStack
    from tasks.adapters.webhook import ensure_webhook

    stack = LocalStack(store.resolve(), state.resolve(), mlflow_port, prefect_port)
    try:
        if not (store / "mlflow.db").exists():
            raise ConfigError(f"no MLflow store at {store / 'mlflow.db'}", "run `make demo` first: it creates the store and its models")
        loaded = load_deployments(deployments)
        env = stack.environment()
        console.print("Starting the MLflow and Prefect servers (about 20 s)...")
        stack.start_servers(env)
        hook = loaded.settings.webhook
        ensure_webhook(stack.mlflow_url, "auditlens", f"http://{hook.host}:{hook.port}{hook.path}", env[hook.secret_env],
                       ["model_version.created"])
        stack.start_serve(env, loaded.path)
    except AuditlensError as exc:
        stack.stop()
        _fail(exc)
    console.print(f"MLflow UI and API: {stack.mlflow_url}    Prefect UI: http://127.0.0.1:{prefect_port}\n"
                  f"Audits of new versions start by webhook at once, or by the watcher within "
                  f"{loaded.settings.watcher.interval_seconds} s. Register one with: make register\n"
                  f"Logs: {state}/    Stop: Ctrl-C", soft_wrap=True)
    try:
        while all(p.poll() is None for p in stack.processes):
            time.sleep(1)
        errors.print(f"a server stopped unexpectedly; see the logs in {state}/")
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        console.print("Stopping the servers...")
        stack.stop()


@app.command("register-version")
def register_version(
    model: str = typer.Option("demo-classifier", "--model", "-m", help="a model of the demo configuration"),
    estimator: str = typer.Option("gradient_boosting", help="logistic_regression, gradient_boosting, random_forest, cnn (demo-digits) or tfidf_logistic (demo-adverts)"),
    config: Path = typer.Option(Path("config/demo.yaml"), "--config", "-c"),
    tracking_uri: str = typer.Option("http://127.0.0.1:5000", help="where to register (the server `make up` runs)"),
) -> None:
    """Train and register a new version of a demo model, as a data scientist would (its audit starts by itself)."""
    _setup()
    from tasks.adapters.demo import load_demo_settings, register_new_version
    from tasks.adapters.errors import AuditlensError
    from tasks.adapters.tracking import check_reachable

    try:
        check_reachable(tracking_uri)
        version = register_new_version(load_demo_settings(config), model, estimator, tracking_uri)
    except AuditlensError as exc:
        _fail(exc)
    from tasks.adapters.tracking import redact

    console.print(f"registered {model} v{version} ({estimator}) at {redact(tracking_uri)}; its audit appears at "
                  f"{redact(tracking_uri)}/#/models/{model}/versions/{version}", soft_wrap=True)


deployments_app = typer.Typer(help="Deployment files.")
app.add_typer(deployments_app, name="deployments")


@deployments_app.command("render")
def render(deployments: Path = typer.Option(Path("config/deployments.yaml"), "--deployments", "-d"),
           output: Path = typer.Option(Path("prefect.yaml"), "--output", "-o")) -> None:
    """Write prefect.yaml (work-pool deployments) from the deployments configuration."""
    _setup()
    from auditlens.serving import render_prefect_yaml
    from tasks.adapters.deployments import load_deployments
    from tasks.adapters.errors import AuditlensError

    try:
        loaded = load_deployments(deployments, check_files=False)
    except AuditlensError as exc:
        _fail(exc)
    output.write_text(render_prefect_yaml(loaded, Path.cwd()), encoding="utf-8")
    console.print(f"wrote {output}")


# --- the local Prefect server (tasks/adapters/prefect_local.py) ------------------------------------------------------
def _no_collection_at_exit() -> None:
    """Python's teardown after an audit runs full garbage collections over the ~460,000 objects that pandas, MLflow,
    SQLAlchemy and Prefect leave behind: 1.5-2 s of a 6-9 s command, to free memory the process is about to give
    back anyway. Exit handlers still run first (Prefect drains its events and logs before them, MLflow flushes its
    async logging in them; atexit is last in, first out, so this one runs after those registered later), then
    the collections are skipped: only cyclic garbage is left unfinalised, as os._exit would leave everything."""
    import atexit
    import gc

    def freeze() -> None:
        gc.disable()
        gc.freeze()

    atexit.register(freeze)


prefect_server_app = typer.Typer(help="The local Prefect server that `audit` and `demo` use when PREFECT_API_URL is not set.", no_args_is_help=True)
app.add_typer(prefect_server_app, name="prefect-server")


def _configured_elsewhere() -> None:
    if url := _prefect_api_url():
        console.print(f"note: PREFECT_API_URL is set ({url}): auditlens commands use that server, not this one", soft_wrap=True, highlight=False)


@prefect_server_app.command("status")
def prefect_server_status() -> None:
    """Say whether the local server runs (exit 0) or not (exit 1), where, and since when."""
    from tasks.adapters.prefect_local import LocalPrefectServer

    server = LocalPrefectServer()
    state = server.running()
    if state is None:
        stale = server.read_state()
        console.print(f"The local Prefect server is not running{' (its state file is stale)' if stale else ''}; "
                      f"`auditlens audit` starts it when needed. State folder: {server.state_dir}", soft_wrap=True, highlight=False)
        _configured_elsewhere()
        raise typer.Exit(1)
    console.print("The local Prefect server is running.")
    print_local_server(server, state)
    _configured_elsewhere()


@prefect_server_app.command("start")
def prefect_server_start(idle_timeout: float | None = typer.Option(None, min=0, help="seconds without use before it stops itself (0: never); default: $AUDITLENS_PREFECT_IDLE_TIMEOUT or 3600")) -> None:
    """Start the local server now (`audit` and `demo` would start it when needed), or say where it runs."""
    _setup()
    from tasks.adapters.errors import AuditlensError
    from tasks.adapters.prefect_local import LocalPrefectServer

    server = LocalPrefectServer()
    try:
        state = server.ensure(idle_s=idle_timeout, announce=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
    except AuditlensError as exc:
        _fail(exc)
    print_local_server(server, state)
    _configured_elsewhere()


@prefect_server_app.command("stop")
def prefect_server_stop() -> None:
    """Stop the local server and every process it started; the next `audit` starts a new one on the same database."""
    from tasks.adapters.errors import AuditlensError
    from tasks.adapters.prefect_local import LocalPrefectServer

    try:
        state = LocalPrefectServer().stop()
    except AuditlensError as exc:
        _fail(exc)
    console.print("The local Prefect server was not running." if state is None else
                  f"Stopped the local Prefect server (pid {state.pid}, {state.api_url}).", highlight=False)


@app.command()
def doctor(
    tracking_uri: str = typer.Option(..., "--tracking-uri", help="the MLflow store: sqlite:////abs/path/mlflow.db or http://host:port"),
    repair: bool = typer.Option(False, "--repair", help="end dead audit runs KILLED and bring versions in line with their runs"),
    stale_after: str = typer.Option("6h", "--stale-after", help="a RUNNING audit run with no heartbeat (from an auditlens without heartbeats) is dead once started this long ago: 90s, 30m, 6h, 2d"),
) -> None:
    """Find audits whose process died (RUNNING runs whose heartbeat stopped) and model versions whose audit state names
    a run that has ended or died; --repair fixes them. For stores no watcher looks after. Exit 0: healthy (or all
    repaired); 1: problems left."""
    _setup()
    from tasks.adapters.errors import AuditlensError
    from tasks.adapters.repair import examine, open_store, parse_duration
    from tasks.adapters.tracking import check_reachable, redact

    try:
        stale_after_s = parse_duration(stale_after)
        check_reachable(tracking_uri)
        findings = examine(open_store(tracking_uri), stale_after_s=stale_after_s, repair=repair)
    except AuditlensError as exc:
        _fail(exc)
    for finding in findings:
        console.print(finding.line(), markup=False, highlight=False, soft_wrap=True)
    left = [f for f in findings if not f.repaired]
    if not findings:
        console.print(f"healthy: no dead audit and no version behind its run in {redact(tracking_uri)}", markup=False,
                      highlight=False, soft_wrap=True)
    elif left:
        errors.print(f"{len(left)} problem(s) left; `auditlens doctor --tracking-uri ... --repair` fixes them", markup=False,
                     highlight=False, soft_wrap=True)
    raise typer.Exit(1 if left else 0)


@app.command()
def history(
    model: str = typer.Argument(..., help="models:/NAME (every audit of the model) or models:/NAME@ALIAS (the audits of that alias)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="an audit configuration: its tracking URI and experiment"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="the MLflow store; default: the config's, $MLFLOW_TRACKING_URI, sqlite:///mlflow.db"),
    experiment: str | None = typer.Option(None, help="the audits' experiment; default: the config's mlflow.experiment, else auditlens/{model_name}"),
    last: int = typer.Option(30, "--last", "-n", min=1, help="how many of the latest audits"),
    output: Path | None = typer.Option(None, "--output", "-o", help="also write the page to this file"),
) -> None:
    """The history of a deployed model over its last audits, in one self-contained page: verdicts, every gated metric
    with its thresholds, estimated against realised performance, feature ranks across versions, drift. Written to the
    model's (or alias's) history run in MLflow, where every later audit's description links to it."""
    _setup()
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from tasks.adapters.errors import AuditlensError, ConfigError
    from tasks.adapters.history import history_target, history_uri, write_history
    from tasks.adapters.mlflow_sink import MlflowSink
    from tasks.adapters.settings import DEFAULT_TRACKING_URI, load_settings
    from tasks.adapters.tracking import check_reachable, redact

    try:
        name, alias = history_target(model)
        loaded = load_settings(config) if config is not None else None
        uri = tracking_uri or (loaded.tracking_uri() if loaded else os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI)
        pattern = experiment or (loaded.settings.mlflow.experiment if loaded else "auditlens/{model_name}")
        check_reachable(uri)
        sink = MlflowSink(uri)
        found = sink.client.get_experiment_by_name(pattern.format(model_name=name))
        if found is None:
            raise ConfigError(f"no audits of {name} in {redact(uri)}: there is no experiment {pattern.format(model_name=name)!r}",
                              "pass the tracking URI and experiment the audits were recorded in (--config names both)")
        run_id, page, records, summary = write_history(sink, found.experiment_id, history_uri(name, alias), last)
    except AuditlensError as exc:
        _fail(exc)
    if output is not None:
        output.write_text(page, encoding="utf-8")
        console.print(f"wrote {output}", markup=False, highlight=False)
    for line in summary.splitlines()[2:]:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(f"History of {history_uri(name, alias)} over {len(records)} audit(s): MLflow run {run_id} (history.html)",
                  markup=False, highlight=False, soft_wrap=True)
    console.print(f"  {ui_hint(uri, {'experiment_id': found.experiment_id, 'run_id': run_id})}", markup=False,
                  highlight=False, soft_wrap=True)


@app.command()
def verify(
    run_id: str = typer.Argument(..., help="the audit's MLflow run id"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="the MLflow store; default: $MLFLOW_TRACKING_URI"),
    integrity_only: bool = typer.Option(False, "--integrity-only", help="without a signing key: check the run against "
                                        "its manifest, without proving who wrote the manifest (an unsigned manifest is "
                                        "then a note, not a difference)"),
) -> None:
    """Check an audit's record against its signed manifest: the signature (with the key in AUDITLENS_SIGNING_KEY or
    the file named by AUDITLENS_SIGNING_KEY_FILE), every artifact's sha256 and size and no file besides, each
    result.json's verdict, the verdict and model tags and params on the run, every metric's value, and the model
    version's audit tags. Prints one line per difference. Exit 0: verified; 1: differences (a changed artifact, tag or
    metric, a forged or unsigned manifest); 2: cannot check (no such run, no server, no key without --integrity-only)."""
    _setup()
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines (database set-up, downloads) are not findings
    from tasks.adapters.errors import AuditlensError, ConfigError, TrackingServerError
    from tasks.adapters.signing import signing_key, verify_run
    from tasks.adapters.tracking import check_reachable, make_client, redact_text, validate_tracking_uri

    key, uri = None, tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    try:
        key = signing_key()
        if not uri:
            raise ConfigError("no tracking URI: verify reads the run from the store that holds it",
                              "pass --tracking-uri (sqlite:////abs/path/mlflow.db or http://host:port) or set MLFLOW_TRACKING_URI")
        check_reachable(uri)
        target = validate_tracking_uri(uri)
        if target.kind == "sqlite" and not Path(target.path).is_file():  # MLflow would create an empty store there
            raise TrackingServerError(f"there is no SQLite tracking store at {Path(target.path).absolute()}",
                                      "pass the tracking URI of the store that holds the audit's run")
        found = verify_run(make_client(uri), run_id, key, integrity_only)
    except AuditlensError as exc:
        _fail(type(exc)(*(key.without_key(part) if key else part for part in (exc.problem, exc.fix))))
    except Exception as exc:  # never a traceback: Typer's shows the locals
        text = redact_text(f"{type(exc).__name__}: {exc}", uri or "")
        errors.print(f"[bold red]verify failed:[/] {escape(key.without_key(text) if key else text)}", highlight=False, markup=True,
                     soft_wrap=True)
        raise typer.Exit(2) from None
    for line in found.notes:
        console.print(f"note: {line}", markup=False, highlight=False, soft_wrap=True)
    for line in found.differences:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(found.summary(), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(0 if found.verified else 1)


from auditlens.init_command import init  # noqa: E402  its own module: it inspects models and data

app.command("init")(init)

if __name__ == "__main__":
    app()
