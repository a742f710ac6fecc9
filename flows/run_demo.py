"""run_demo: build the demo world (data, models, registry) and audit every demo model version."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.audit_model import audit_model
from tasks.adapters.demo import PreparedAudit, load_demo_settings, prepare_demo
from tasks.adapters.mlflow_sink import MlflowSink


@task(name="prepare-demo", cache_policy=NO_CACHE)
def prepare(config_path: str) -> tuple[str, list[PreparedAudit]]:
    logger = get_run_logger()
    return prepare_demo(load_demo_settings(config_path), MlflowSink, log=logger.info)


@flow(name="auditlens-demo", log_prints=True)
def run_demo(config_path: str = "config/demo.yaml") -> dict:
    tracking_uri, audits = prepare(config_path)
    summaries = [audit_model(a.model_uri, str(a.config_path), tracking_uri=tracking_uri, reason=a.reason,
                             current_data=a.current_data, as_of=a.as_of) for a in audits]
    return {"tracking_uri": tracking_uri, "audits": summaries}
