"""run_demo: build the demo world (data, models, registry) and audit every demo model version.

The demo's models are independent of one another (each its own data, registered model and experiments): each is
prepared and audited as a task of its own, its audits in turn (its versions, then its scheduled days, whose history
must grow day by day). ``SIDE_BY_SIDE`` of them run at once; one, as measured below.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from flows.audit_model import audit_model
from tasks.adapters.demo import DemoSettings, DemoStore, estimated_cost_s, load_demo_settings, prepare_model, start_demo
from tasks.adapters.mlflow_sink import MlflowSink

SIDE_BY_SIDE = 1  # models prepared and audited at once. Two measured no faster on an idle 2-core machine (113.9 s against
# 113.6 s, 23 CPU-s more) and slower with the other core busy (the suite's demo: 128 s against 93 s): each audit already
# fills both cores with its lanes


@task(name="prepare-demo", cache_policy=NO_CACHE)
def prepare(config_path: str) -> tuple[DemoSettings, DemoStore]:
    settings = load_demo_settings(config_path)
    return settings, start_demo(settings, MlflowSink)


@task(name="demo-model", cache_policy=NO_CACHE)
def demo_model(settings: DemoSettings, index: int, store: DemoStore) -> list[dict]:
    """One model trained, registered and audited: its audits one after another, in the order prepare_model gives."""
    logger = get_run_logger()
    audits = prepare_model(settings, settings.models[index], store, log=logger.info)
    return [audit_model(a.model_uri, str(a.config_path), tracking_uri=store.tracking_uri, reason=a.reason,
                        current_data=a.current_data, as_of=a.as_of) for a in audits]


@flow(name="auditlens-demo", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=SIDE_BY_SIDE))
def run_demo(config_path: str = "config/demo.yaml") -> dict:
    settings, store = prepare(config_path)
    # the costliest first: the two side by side then end about together
    order = sorted(range(len(settings.models)), key=lambda i: -estimated_cost_s(settings.models[i]))
    futures = {i: demo_model.with_options(task_run_name=f"demo-{settings.models[i].name}").submit(settings, i, store)
               for i in order}
    summaries = [summary for i in range(len(settings.models)) for summary in futures[i].result()]
    return {"tracking_uri": store.tracking_uri, "audits": summaries}
