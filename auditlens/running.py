"""The audit command's work in its own process, shared by `auditlens audit`, the demo and the resident auditor
(auditlens/resident.py): the input checked before the flow, the flow run in process, the Prefect server it reports to,
and the model's process started ahead."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from auditlens.console import errors


def prestart_model_process(threads: int | None, keep: bool = False, warm: tuple[str, ...] = ()) -> None:
    """Start the model's process now, so that its imports (1.8 s) overlap this command's own (MLflow, Prefect: 3 to
    4 s) on another core, with its lanes' worker processes; it is confined and given the model only when the audit takes
    it (``model_worker.prestart``; ``keep``: the next is started each time one is taken)."""
    from tasks.adapters.model_worker import prestart

    prestart(warm, keep=keep, threads=threads, pool=True)


@contextmanager
def in_process_flow_settings():
    """A flow the CLI runs in its own process needs no heartbeat (Prefect uses it to detect crashed
    workers); joining the heartbeat thread costs about a second per flow call."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def prefect_api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def prefect_server_for_flows() -> None:
    """Point this process's flows at the local Prefect server, started if needed, unless a Prefect API is configured
    (environment, profile or prefect.toml: the user's own server always wins) or AUDITLENS_PREFECT_SERVER=ephemeral
    asks for Prefect's temporary server (one per command: 10-30 s to start, and it can time out on a busy machine)."""
    from tasks.adapters.prefect_local import use_for_flows

    url = use_for_flows(prefect_api_url(), announce=lambda line: errors.print(line, highlight=False, markup=False, soft_wrap=True))
    if url:
        os.environ["PREFECT_API_URL"] = url  # also for any process the flow starts
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()  # Prefect read its settings when prefect_api_url imported it


class AuditCrashed(Exception):
    """An audit that failed other than on bad input: ``text`` is its message, redacted; ``run_id`` the MLflow run it
    ended FAILED, if one was opened."""

    def __init__(self, text: str, run_id: str | None) -> None:
        super().__init__(text)
        self.text, self.run_id = text, run_id


def run_checked_audit(model: str, config: Path, tracking_uri: str | None, no_cache: bool,
                      prestart: bool = True) -> tuple[dict, str, Any]:
    """The audit command's work in this process, telling its progress (tasks/progress.py): the input checked (config,
    store, model, data, signing key) before the flow, then the flow. Returns the summary, the tracking URI and the
    loaded settings. Raises
    AuditlensError for bad input (nothing recorded) and AuditCrashed for anything else. ``prestart``: start the model's
    process as soon as the config holds (a resident auditor keeps one started instead)."""
    from tasks import progress

    progress.phase(progress.CHECK)  # the imports below are part of it (2-3 s)
    from tasks.adapters.errors import AuditlensError
    from tasks.adapters.inputs import preflight_data
    from tasks.adapters.model_worker import model_threads
    from tasks.adapters.models import check_model_uri, resolve_model
    from tasks.adapters.settings import load_settings
    from tasks.adapters.signing import signing_key
    from tasks.adapters.tracking import check_reachable, configure_http, make_client

    loaded = load_settings(config)
    check_model_uri(model)  # a URI of another form: said before the model's process starts
    progress.plan(planned.id for planned in loaded.plan)
    if prestart:
        # not for a config that does not hold; with Great Expectations imported (1.5 s of data_quality in a cold
        # process; importing every planned audit's libraries measured no faster: 8.5-9.1 s for the three-audit plan,
        # against 8.5-8.7 s)
        prestart_model_process(model_threads(loaded), warm=("great_expectations",))
    uri = loaded.tracking_uri(tracking_uri)
    configure_http(loaded.settings.mlflow.request_timeout_s, loaded.settings.mlflow.request_max_retries)
    check_reachable(uri)
    resolve_model(model, make_client(uri))
    preflight_data(loaded)
    signing_key()  # a key that cannot sign is refused now, not after the model and data have loaded
    prefect_server_for_flows()

    progress.phase(progress.START)
    from flows.audit_model import audit_model

    try:
        with in_process_flow_settings():
            summary = audit_model(model_uri=model, config_path=str(loaded.path), tracking_uri=uri, reason="cli",
                                  use_cache=not no_cache)
    except AuditlensError:
        raise
    except Exception as exc:
        from tasks.adapters.tracking import redact_text

        raise AuditCrashed(f"{type(exc).__name__}: {redact_text(str(exc), uri)}", getattr(exc, "audit_run_id", None)) from exc
    return summary, uri, loaded
