"""Automatic audits: which models to watch, where their current data lives, when to audit what is deployed.

    kind: deployments
    tracking_uri: http://127.0.0.1:5000            # default: $MLFLOW_TRACKING_URI
    watcher: {interval_seconds: 30, max_attempts: 3}
    webhook: {host: 127.0.0.1, port: 8765}
    models:
      - name: credit                               # a registered model
        config: audits/credit.yaml                 # its audit configuration (kind: audit); relative to this file
        current_data: data/current/{date:%Y-%m-%d}.parquet   # optional; {date} is the run's scheduled time
        schedule: {cron: "0 3 * * *", alias: champion}       # audit the deployed version on a schedule
        on_new_version: true                       # audit every new version (watcher and webhook)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tasks.adapters.errors import ConfigError
from tasks.adapters.settings import DEFAULT_TRACKING_URI, StrictModel, config_error, load_settings, read_yaml, validated
from tasks.adapters.state import state_dir

AUDIT_DEPLOYMENT = "audit-model/audit-model"  # flow name / deployment name


class Schedule(StrictModel):
    cron: str | None = None
    interval_seconds: int | None = Field(None, ge=10)
    alias: str = "champion"  # the deployed version to audit
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("a schedule needs exactly one of 'cron' and 'interval_seconds'")
        return self


class WatchedModel(StrictModel):
    name: str
    config: str
    current_data: str | None = None
    schedule: Schedule | None = None
    on_new_version: bool = True
    # how far this model's files are trusted in its automatic audits (watcher, webhook, schedule), whatever its audit
    # config says: strict loads only through auditlens's allowlist; trusted runs the model's own code
    model_loading: Literal["strict", "trusted"] = "strict"


class Watcher(StrictModel):
    interval_seconds: int = Field(60, ge=5)
    max_attempts: int = Field(3, ge=1)  # a failed audit is retried until this many attempts, then left 'failed'
    stale_after_s: int = Field(3600, ge=60)  # an audit 'running' this long without its flow alive is dead


class Webhook(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    path: str = "/mlflow"
    secret_env: str = "AUDITLENS_WEBHOOK_SECRET"  # the shared secret comes from the environment, never from a file
    max_age_s: int = Field(300, ge=1)  # reject deliveries older (or newer) than this
    read_timeout_s: float = Field(10, gt=0, le=300)  # a client's time, from connecting, to send its whole request
    max_connections: int = Field(32, ge=1, le=1024)  # requests handled at once (a thread each); more wait to connect
    replay_db: str | None = None  # SQLite file of accepted delivery ids; relative to this file

    def replay_store(self, deployments_file: Path) -> Path:
        """Where accepted delivery ids are kept across restarts: ``replay_db``, else
        $AUDITLENS_STATE_DIR/webhook-deliveries.sqlite3 (AUDITLENS_STATE_DIR defaults to ~/.auditlens)."""
        if self.replay_db:
            return _resolve(deployments_file, self.replay_db)
        return state_dir() / "webhook-deliveries.sqlite3"


class DeploymentsSettings(StrictModel):
    kind: Literal["deployments"]
    tracking_uri: str | None = None
    watcher: Watcher = Watcher()
    webhook: Webhook = Webhook()
    models: list[WatchedModel] = Field(min_length=1)


@dataclass(frozen=True)
class LoadedDeployments:
    settings: DeploymentsSettings
    path: Path

    def tracking_uri(self, override: str | None = None) -> str:
        return override or self.settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI

    def model(self, name: str) -> WatchedModel | None:
        return next((m for m in self.settings.models if m.name == name), None)

    def audit_config(self, model: WatchedModel) -> Path:
        return _resolve(self.path, model.config)

    def current_pattern(self, model: WatchedModel) -> str | None:
        return str(_resolve(self.path, model.current_data)) if model.current_data else None

    def config_hash(self, model: WatchedModel) -> str:
        """Which audit a trigger asks for: the audit configuration and the data pattern."""
        loaded = load_settings(self.audit_config(model))
        return hashlib.sha256(f"{loaded.config_hash}|{model.current_data or ''}".encode()).hexdigest()[:12]


def _resolve(base: Path, path: str) -> Path:
    raw = Path(os.path.expandvars(path)).expanduser()
    return raw if raw.is_absolute() else (base.parent / raw).resolve()


def resolve_pattern(pattern: str, when: datetime) -> str:
    """'data/{date:%Y-%m-%d}.csv' at 2026-11-22 -> 'data/2026-11-22.csv'."""
    try:
        return pattern.format(date=when)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"current data pattern {pattern!r} cannot be resolved ({exc})",
                          "use {date:FORMAT} with a strftime format, e.g. data/{date:%Y-%m-%d}.parquet") from None


def load_deployments(path: str | Path, check_files: bool = True) -> LoadedDeployments:
    path = Path(path).resolve()
    settings = validated(DeploymentsSettings, path, read_yaml(path))
    loaded = LoadedDeployments(settings, path)
    if not check_files:
        return loaded
    problems = []
    for index, model in enumerate(settings.models):
        config = loaded.audit_config(model)
        if not config.is_file():
            problems.append((("models", index, "config"), f"{config} does not exist"))
    if problems:
        raise config_error(path, problems)
    return loaded
