"""Connecting to the MLflow tracking store: HTTP retry policy, reachability, a client with an explicit URI."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from tasks.adapters.errors import TrackingServerError


def quiet_environment() -> None:
    """No telemetry and no progress bars from the stack (each library has its own switch)."""
    for key, value in {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "GX_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        # MLflow prints "View run ... at: <tracking URI>" when a run ends; with credentials in the URI
        # (http://user:secret@host) that puts the secret in every log. The CLI prints its own, redacted, pointer.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    }.items():
        os.environ.setdefault(key, value)


def configure_http(timeout_s: int, max_retries: int) -> None:
    """MLflow's REST client retries with exponential backoff; bound it so a dead server fails in seconds, not minutes."""
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(timeout_s)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(max_retries)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def check_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with the fix, when the store cannot be reached."""
    if tracking_uri.startswith(("http://", "https://")):
        url = tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (http(s) only)
                if response.status == 200:
                    return
                problem = f"answered {response.status} on /health"
        except urllib.error.HTTPError as exc:
            problem = f"answered {exc.code} on /health"
        except (urllib.error.URLError, OSError) as exc:
            problem = f"is not reachable ({getattr(exc, 'reason', exc)})"
        from tasks.adapters.mlflow_sink import redact

        raise TrackingServerError(
            f"MLflow tracking server {redact(tracking_uri)} {problem}",
            "start it (mlflow server --host 127.0.0.1 --port PORT ...) or point --tracking-uri / "
            "mlflow.tracking_uri / MLFLOW_TRACKING_URI at a running one",
        )
    if tracking_uri.startswith("sqlite:///"):
        folder = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not folder.is_dir():
            raise TrackingServerError(
                f"the folder of the SQLite tracking store {tracking_uri} does not exist ({folder})",
                "create the folder or fix the tracking URI",
            )


def make_client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
