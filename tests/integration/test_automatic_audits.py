"""Automatic audits on the production topology, all real processes on 127.0.0.1 (``tests/integration/servers.py``):
an ``mlflow server`` with webhooks enabled, a Prefect server (scheduler loop 5 s) and ``auditlens serve --webhook``
on a deployments configuration written here. New versions are registered through the MLflow server and their
audits are read back from it by value; the delays from registration to the audit's start are recorded in
bench/out/integration_timings.json (and printed with ``pytest -s``)."""

from __future__ import annotations

import tempfile
import threading
import time
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from sklearn import metrics as skm

from tasks.adapters.deployments import LoadedDeployments, load_deployments
from tasks.adapters.demo import register_sklearn_model
from tasks.adapters.mlflow_sink import MlflowSink
from tasks.adapters.tracking import make_client
from tasks.adapters.webhook import ensure_webhook
from tasks.triggers import trigger_audit
from tests.conftest import make_pipeline_model, make_tabular
from tests.helpers import RunsCommand, build_world, runs_with_status, write_config
from tests.integration.servers import AutoStack, find_deployment, free_port, record_timing, wait_for

pytestmark = pytest.mark.integration

WATCHER_INTERVAL_S = 5
MAX_ATTEMPTS = 2
SCHEDULE_INTERVAL_S = 10  # the schema's minimum
AUDIT_BOUND_S = 120  # registration -> audit done, on a loaded 2-core machine
HOOK = "auditlens-test"
PLAN = [{"audit": "performance"}, {"audit": "champion_challenger"}]
WATCHER = "watch-registry/watch-registry"
SCHEDULED = "audit-model/scheduled-sched-model"


@dataclass
class Env:
    stack: AutoStack
    folder: Path
    deployments: LoadedDeployments
    current: pd.DataFrame
    train: tuple[pd.DataFrame, pd.Series]
    hook_url: str

    @property
    def url(self) -> str:
        return self.stack.mlflow_url

    def client(self):
        return make_client(self.url)


# --- the stack -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    folder = tmp_path_factory.mktemp("automatic")
    stack = AutoStack(folder / "store", folder / "state", scheduler_loop_s=5)
    try:
        stack.start_servers()
        world = build_world(folder / "world", tracking_uri=stack.mlflow_url, versions=1)  # e2e-model v1 @champion
        write_config(world.folder, stack.mlflow_url, name="auto.yaml", audits=PLAN)
        current = pd.read_csv(world.current)
        current.drop(columns="x1").to_csv(world.folder / "current-without-x1.csv", index=False)
        write_config(world.folder, stack.mlflow_url, name="broken.yaml", audits=PLAN,
                     data={"reference": "reference.csv", "current": "current-without-x1.csv", "target": "label"})
        hook_port = free_port()
        deployments = world.folder / "deployments.yaml"
        deployments.write_text(yaml.safe_dump({
            "kind": "deployments",
            "tracking_uri": stack.mlflow_url,
            "watcher": {"interval_seconds": WATCHER_INTERVAL_S, "max_attempts": MAX_ATTEMPTS, "stale_after_s": 600},
            "webhook": {"host": "127.0.0.1", "port": hook_port, "path": "/mlflow"},
            "models": [
                {"name": "e2e-model", "config": "auto.yaml"},
                {"name": "broken-model", "config": "broken.yaml"},
                {"name": "sched-model", "config": "auto.yaml", "on_new_version": False,
                 "schedule": {"interval_seconds": SCHEDULE_INTERVAL_S, "alias": "champion"}},
                {"name": "cred-model", "config": "auto.yaml", "on_new_version": False},
                {"name": "evil-model", "config": "auto.yaml"},
            ],
        }, sort_keys=False))  # fmt: skip
        stack.start_serve(deployments, hook_port, expected=["audit-model/audit-model", WATCHER, SCHEDULED])
        set_paused(stack, SCHEDULED, True)  # test_a_schedule_fires resumes it: every 10 s is load for the others
        X, y = make_tabular(500, seed=11)
        e = Env(stack, world.folder, load_deployments(deployments), current, (X.iloc[:300], y.iloc[:300]),
                f"http://127.0.0.1:{hook_port}/mlflow")
        # warm: the watcher audits the champion v1 (no webhook yet); the OS caches what every audit imports
        began = time.monotonic()
        wait_for(lambda: version_tags(e, "e2e-model", "1").get("audit.status") == "done", AUDIT_BOUND_S, 1, "e2e-model v1 audited")
        stack.timings["warm_first_audit_s"] = time.monotonic() - began
        for key, value in stack.timings.items():
            record_timing(f"stack.{key}", round(value, 1))
        yield e
    finally:
        stack.stop()
    assert not (stack.local.processes), "the stack left processes"


# --- helpers -------------------------------------------------------------------------------------
def version_tags(env: Env, name: str, version: str) -> dict:
    return env.client().get_model_version(name, version).tags


def audit_runs(env: Env, name: str, version: str) -> list:
    client = env.client()
    experiment = client.get_experiment_by_name(f"auditlens/{name}")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string=(
        f"tags.`auditlens.model_name` = '{name}' AND tags.`auditlens.model_version` = '{version}'"))


def register(env: Env, name: str, final: str = "logistic", champion: bool = False, tracking_uri: str | None = None):
    """Register a new version through the server; (version, model, the moment create_model_version returned)."""
    sink = MlflowSink(tracking_uri or env.url)
    returned = {}
    create = sink.client.create_model_version

    def timed(*args, **kwargs):
        result = create(*args, **kwargs)
        returned["t"] = time.time()
        return result

    sink.client.create_model_version = timed  # an instance attribute: ResilientClient proxies everything else
    X, y = env.train
    model = make_pipeline_model(X, y, final)
    version = register_sklearn_model(sink, model, name=name, experiment="e2e/training", input_example=X.head(2), params={"final": final})
    if champion:
        sink.versions.set_alias(name, "champion", version)
    return version, model, returned["t"]


def finished_audit(env: Env, name: str, version: str):
    """The version's audit run once it is FINISHED and the version says done, else None."""
    runs = audit_runs(env, name, version)
    done = [r for r in runs if r.info.status == "FINISHED"]
    if done and version_tags(env, name, version).get("audit.status") == "done":
        return done[0]
    return None


def set_paused(stack: AutoStack, name: str, paused: bool) -> None:
    from prefect.client.orchestration import get_client

    deployment = find_deployment(stack, name)
    with stack.prefect(), get_client(sync_client=True) as client:
        client.set_deployment_paused_state(deployment.id, paused)


def flow_runs(stack: AutoStack, name: str, *types) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    deployment = find_deployment(stack, name)
    states = FlowRunFilterState(type=FlowRunFilterStateType(any_=list(types)))
    with stack.prefect(), get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id={"any_": [deployment.id]}),
                                     flow_run_filter=FlowRunFilter(state=states))


def pause_and_settle(stack: AutoStack, name: str) -> None:
    """Pause a deployment, drop its runs still waiting (a paused deployment keeps the late ones: runs of the
    watcher wait for its concurrency slot), and wait until none is in flight."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    set_paused(stack, name, True)
    for run in flow_runs(stack, name, StateType.SCHEDULED):
        with stack.prefect(), get_client(sync_client=True) as client:
            try:
                client.delete_flow_run(run.id)
            except ObjectNotFound:
                pass
    wait_for(lambda: not flow_runs(stack, name, StateType.RUNNING, StateType.PENDING), 90, 1, f"{name}: no flow run in flight")


def watcher_passes_since(stack: AutoStack, since: float) -> list:
    """The served watcher's completed flow runs that started after ``since`` (epoch seconds)."""
    from prefect.client.schemas.objects import StateType

    return [r for r in flow_runs(stack, WATCHER, StateType.COMPLETED) if r.start_time and r.start_time.timestamp() > since]


@contextmanager
def paused(stack: AutoStack, name: str):
    pause_and_settle(stack, name)
    try:
        yield
    finally:
        set_paused(stack, name, False)


def flow_run(stack: AutoStack, flow_run_id: str):
    from prefect.client.orchestration import get_client

    with stack.prefect(), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def set_webhook(env: Env, enabled: bool) -> None:
    client = env.client()
    for hook in client.list_webhooks():
        if hook.name == HOOK and not enabled:
            client.delete_webhook(hook.webhook_id)
    if enabled:
        ensure_webhook(env.url, HOOK, env.hook_url, env.stack.webhook_secret, ["model_version.created"])


def load(env: Env, name: str, version: str):
    import mlflow
    from mlflow.artifacts import download_artifacts

    source = env.client().get_model_version(name, version).source
    return mlflow.sklearn.load_model(download_artifacts(artifact_uri=source, tracking_uri=env.url, dst_path=tempfile.mkdtemp()))


def expected_scores(model, current: pd.DataFrame) -> dict[str, float]:
    X, y = current.drop(columns="label"), current["label"]
    proba = model.predict_proba(X)
    positive = list(model.classes_).index("yes")
    return {
        "accuracy": skm.accuracy_score(y, model.predict(X)),
        "roc_auc": skm.roc_auc_score(y == "yes", proba[:, positive]),
        "log_loss": skm.log_loss(y, proba, labels=model.classes_),
    }


def delay(run, registered_at: float) -> float:
    return round(run.info.start_time / 1000 - registered_at, 2)


# --- the tests -----------------------------------------------------------------------------------
def test_webhook_starts_the_audit_of_a_new_version(env):
    set_webhook(env, True)
    with paused(env.stack, WATCHER):  # the webhook alone
        version, challenger, registered_at = register(env, "e2e-model", "logistic")
        run = wait_for(lambda: finished_audit(env, "e2e-model", version), AUDIT_BOUND_S, 0.5, "webhook audit done")
        done_after = round(time.time() - registered_at, 2)
    record_timing("webhook.registration_to_audit_start_s", delay(run, registered_at))
    record_timing("webhook.registration_to_version_done_s", done_after)

    assert run.data.tags["auditlens.trigger"] == "webhook: new version"
    assert run.data.params["model.load_uri"] == f"models:/e2e-model/{version}"
    assert run.data.params["baseline.model"] == "models:/e2e-model/1"  # the version behind @champion
    champion = load(env, "e2e-model", "1")
    for role, model in (("challenger", challenger), ("champion", champion)):
        for metric, value in expected_scores(model, env.current).items():
            assert run.data.metrics[f"champion_challenger.{role}.{metric}"] == pytest.approx(value, abs=1e-9), (role, metric)
    m = run.data.metrics
    assert m["champion_challenger.delta.accuracy"] == pytest.approx(
        m["champion_challenger.challenger.accuracy"] - m["champion_challenger.champion.accuracy"], abs=1e-12)
    assert m["champion_challenger.rows"] == len(env.current)

    tags = version_tags(env, "e2e-model", version)
    assert tags["audit.status"] == "done" and tags["audit.run_id"] == run.info.run_id
    assert tags["audit.verdict"] == run.data.tags["audit.verdict"] in {"PASS", "WARN", "FAIL"}
    assert tags["audit.attempts"] == "1"
    assert run.data.tags["auditlens.audit_key"] == f"prefect:{tags['audit.prefect_flow_run_id']}"
    prefect_run = flow_run(env.stack, tags["audit.prefect_flow_run_id"])
    assert prefect_run.parameters["model_uri"] == f"models:/e2e-model/{version}"
    assert prefect_run.parameters["reason"] == "webhook: new version"


def test_watcher_alone_finds_a_new_version(env):
    set_webhook(env, False)
    version, _, registered_at = register(env, "e2e-model", "gbm")
    run = wait_for(lambda: finished_audit(env, "e2e-model", version), AUDIT_BOUND_S, 0.5, "watcher audit done")
    record_timing("watcher.registration_to_audit_start_s", delay(run, registered_at))
    record_timing("watcher.registration_to_version_done_s", round(time.time() - registered_at, 2))
    assert run.data.tags["auditlens.trigger"] == "watcher: new version"
    assert "champion_challenger.champion.accuracy" in run.data.metrics
    tags = version_tags(env, "e2e-model", version)
    assert (tags["audit.status"], tags["audit.run_id"], tags["audit.attempts"]) == ("done", run.info.run_id, "1")
    assert len(audit_runs(env, "e2e-model", version)) == 1


def test_concurrent_triggers_start_exactly_one_audit(env):
    """The webhook delivery, two concurrent triggers and the watcher, all for one new version: one flow run,
    one MLflow run."""
    set_webhook(env, True)
    version, _, _ = register(env, "e2e-model", "logistic")
    model = env.deployments.model("e2e-model")
    barrier = threading.Barrier(2)

    def fire(_):
        with env.stack.prefect():
            barrier.wait(timeout=30)
            return trigger_audit(env.deployments, model, version, 1, "test: concurrent trigger", env.url)

    with ThreadPoolExecutor(2) as pool:
        ids = list(pool.map(fire, range(2)))
    assert ids[0] == ids[1]
    run = wait_for(lambda: finished_audit(env, "e2e-model", version), AUDIT_BOUND_S, 0.5, "audit done")
    done_at = time.time()
    from flows.watch_registry import watch_registry

    with env.stack.prefect():  # one more watcher pass, in this process: nothing is pending any more
        passes = watch_registry(deployments_path=str(env.deployments.path), tracking_uri=env.url)
    assert {p["model"]: p["started"] for p in passes}["e2e-model"] == []
    # and the served watcher had its turn too: a whole pass of it that started once the version was done (one that
    # started an audit would have raised audit.attempts before it completed: trigger_audit marks the version queued);
    # waited for, instead of two intervals slept without knowing whether a pass ran in them
    wait_for(lambda: watcher_passes_since(env.stack, done_at), 60, 0.5, "a served watcher pass after the audit")

    runs = audit_runs(env, "e2e-model", version)
    assert [r.info.run_id for r in runs] == [run.info.run_id]
    tags = version_tags(env, "e2e-model", version)
    assert tags["audit.prefect_flow_run_id"] == ids[0]
    assert run.data.tags["auditlens.audit_key"] == f"prefect:{ids[0]}"
    assert (tags["audit.status"], tags["audit.attempts"]) == ("done", "1")
    assert flow_run(env.stack, ids[0]).state.is_completed()


def test_a_schedule_fires(env):
    version, model, _ = register(env, "sched-model", "gbm", champion=True)  # on_new_version: false, only scheduled
    set_paused(env.stack, SCHEDULED, False)
    resumed_at = time.time()
    try:
        run = wait_for(lambda: finished_audit(env, "sched-model", version), AUDIT_BOUND_S, 0.5, "scheduled audit done")
    finally:
        pause_and_settle(env.stack, SCHEDULED)
    record_timing("schedule.resume_to_audit_start_s", delay(run, resumed_at))
    assert run.data.tags["auditlens.trigger"] == "schedule"
    prefect_run = flow_run(env.stack, run.data.tags["auditlens.audit_key"].removeprefix("prefect:"))
    assert prefect_run.auto_scheduled and prefect_run.deployment_id == find_deployment(env.stack, SCHEDULED).id
    # on_new_version: false: the webhook (still on) and the watcher left the new version alone
    assert {r.data.tags["auditlens.trigger"] for r in audit_runs(env, "sched-model", version)} == {"schedule"}
    assert run.data.tags["auditlens.model_uri"] == "models:/sched-model@champion"
    assert run.data.params["model.alias"] == "champion"
    assert run.data.params["model.load_uri"] == f"models:/sched-model/{version}"
    accuracy = expected_scores(model, env.current)["accuracy"]
    assert run.data.metrics["performance.current.accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert "champion_challenger.rows" not in run.data.metrics  # the champion itself: nothing to compare with
    assert run.data.tags["audit.champion_challenger.verdict"] == "SKIPPED"
    wait_for(lambda: not runs_with_status(env.client(), "RUNNING"), 60, 1, "no audit left RUNNING")


def test_failing_audit_is_retried_up_to_max_attempts(env):
    """A configuration whose current data lacks a feature: each attempt stops before opening a run (bad input is not an
    audit), the version says why, and the watcher retries it exactly max_attempts times."""
    set_webhook(env, True)
    version, _, _ = register(env, "broken-model", "gbm")

    def settled():
        tags = version_tags(env, "broken-model", version)
        return tags.get("audit.status") == "failed" and tags.get("audit.attempts") == str(MAX_ATTEMPTS)

    began = time.monotonic()
    wait_for(settled, 2 * AUDIT_BOUND_S, 1, "two failed attempts")
    record_timing("retries.registration_to_second_failure_s", round(time.monotonic() - began, 1))
    # the watcher keeps running: a whole pass of it that started once the version had settled, and no third attempt
    # (a pass that retried would have written attempt 3 on the version before it completed: trigger_audit marks it
    # queued); waited for, instead of three intervals slept without knowing whether a pass ran in them
    settled_at = time.time()
    wait_for(lambda: watcher_passes_since(env.stack, settled_at), 60, 0.5, "a watcher pass after the second failure")
    tags = version_tags(env, "broken-model", version)
    assert (tags["audit.status"], tags["audit.attempts"]) == ("failed", str(MAX_ATTEMPTS))
    assert "x1" in tags["audit.error"] and "DataError" in tags["audit.error"]
    assert audit_runs(env, "broken-model", version) == []  # nothing was audited, so nothing passes for an audit
    assert not runs_with_status(env.client(), "RUNNING")


def test_a_model_whose_pickle_runs_code_is_refused_by_the_webhook_and_the_watcher_before_load(env, tmp_path):
    """The webhook starts the first attempt (the watcher paused), the watcher the retry: both refuse the model's file
    before loading it, each attempt's run ends FAILED with what was found, and the command never runs."""
    import pickle

    import mlflow.sklearn

    from tasks.adapters.demo import register_model_files

    X, y = env.train
    folder, marker = tmp_path / "evil", tmp_path / "the-model-ran"
    mlflow.sklearn.save_model(make_pipeline_model(X, y, "logistic"), str(folder), serialization_format="pickle",
                              pip_requirements=["scikit-learn"])
    (folder / "model.pkl").write_bytes(pickle.dumps(RunsCommand(marker)))
    set_webhook(env, True)
    with paused(env.stack, WATCHER):
        version = register_model_files(MlflowSink(env.url), folder, name="evil-model", experiment="e2e/training", params={})
        wait_for(lambda: version_tags(env, "evil-model", version).get("audit.status") == "failed", AUDIT_BOUND_S, 0.5,
                 "webhook attempt refused")
    first = audit_runs(env, "evil-model", version)
    assert [r.data.tags["auditlens.trigger"] for r in first] == ["webhook: new version"]

    def settled():  # the retry's own outcome: queueing it raises audit.attempts while the first refusal still shows
        tags = version_tags(env, "evil-model", version)
        runs = audit_runs(env, "evil-model", version)
        return (tags.get("audit.status") == "failed" and tags.get("audit.attempts") == str(MAX_ATTEMPTS)
                and len(runs) == MAX_ATTEMPTS and all(r.info.status != "RUNNING" for r in runs))

    wait_for(settled, 2 * AUDIT_BOUND_S, 1, "the watcher's retry refused too")
    runs = audit_runs(env, "evil-model", version)
    assert sorted(r.data.tags["auditlens.trigger"] for r in runs) == [f"watcher: retry 2 of {MAX_ATTEMPTS}", "webhook: new version"]
    for run in runs:
        assert run.info.status == "FAILED"
        assert "refused before loading: model.pkl (pickle) names posix.system" in run.data.tags["audit.error"]
        assert "audit.verdict" not in run.data.tags
    tags = version_tags(env, "evil-model", version)
    assert "posix.system" in tags["audit.error"] and "audit.verdict" not in tags
    assert not marker.exists(), "the model's code ran in an automatic audit"
    assert not runs_with_status(env.client(), "RUNNING")


def test_credentials_in_the_tracking_uri_are_never_recorded(env):
    secret = "s3cret"
    credentialed = env.url.replace("http://", f"http://alice:{secret}@")
    version, _, _ = register(env, "cred-model", "gbm", tracking_uri=credentialed)
    model = env.deployments.model("cred-model")
    with env.stack.prefect():
        flow_run_id = trigger_audit(env.deployments, model, version, 1, "test: credentials", credentialed)
    run = wait_for(lambda: finished_audit(env, "cred-model", version), AUDIT_BOUND_S, 0.5, "audit done")
    wait_for(lambda: flow_run(env.stack, flow_run_id).state.is_final(), 60, 0.5, "flow run final")

    assert "performance.current.accuracy" in run.data.metrics  # a real audit was recorded
    texts = [*run.data.params.items(), *run.data.tags.items(), *run.data.metrics.keys(),
             *version_tags(env, "cred-model", version).items()]
    assert not [t for t in texts if secret in str(t)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(env.client().download_artifacts(run.info.run_id, "", tmp))
        files = [p for p in root.rglob("*") if p.is_file()]
        assert any(p.name == "manifest.json" for p in files) and len(files) > 5
        assert [p for p in files if secret.encode() in p.read_bytes()] == []
        assert "***@" in (root / "manifest.json").read_text()  # the URI is there, redacted
    assert secret not in env.stack.serve_log.read_text(errors="replace")
    assert flow_run_id in env.stack.serve_log.read_text(errors="replace")  # the log does cover this audit
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    with env.stack.prefect(), get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run_id]}))
    assert logs and not [entry.message for entry in logs if secret in entry.message]
