"""The audit configuration file: its schema, and loading it into validated settings.

    kind: audit
    seed: 0
    data:
      reference: data/reference.csv      # CSV or Parquet; relative paths are relative to this file
      current: data/current.parquet
      target: label                      # optional on current data
    sampling: {reference_rows: 20000, current_rows: 20000}   # optional: default, what the planned audits afford
    mlflow: {tracking_uri: http://127.0.0.1:5000}
    audits:
      - audit: data_quality
      - audit: shap

or, instead of listing every audit, a preset expanded for the model's kind (audits.core.presets), with ``audits:``
then optional: entries that override the preset's (config keys merged over its), add to it, or remove one:

    plan: standard                         # quick | standard | full
    audits:
      - {audit: shap, config: {rows: 500}}
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from audits.core.plan import (
    AuditEntry,
    AuditSpec,
    PlanError,
    PlannedAudit,
    build_entries,
    format_location,
    plan_sample_rows,
    pydantic_problems,
)
from audits.core.presets import PRESET_NAMES, UnknownPresetError, expand
from tasks.adapters.errors import ConfigError

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


class StrictModel(BaseModel):
    """Configuration sections: frozen, and unknown keys are errors rather than silently ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class PredictionColumns(StrictModel):
    """The model's predictions already in the data (scored in the user's own engine): every row's are read from these
    columns and the model is not sent to the workers. The model still predicts on the sample, and columns that disagree
    with it there are refused: an audit of this version must audit this version's predictions."""

    label: str  # the predicted class (classifiers) or value (regressors)
    probabilities: dict[str, str] | None = None  # classifiers: class -> the column of its predicted probability
    tolerance: float = Field(1e-6, ge=0, le=0.5)  # largest difference from the model's own values on the sample


class DataSources(StrictModel):
    reference: str  # what the model was trained on
    current: str  # what it sees now
    # labelled rows the model did not train on (CSV or Parquet): audits that fit something on labelled data to judge
    # the model (recalibration, conformal calibration, performance estimation) fit on these, not on the training data,
    # whose in-sample probabilities and errors are optimistic
    holdout: str | None = None
    target: str | None = None
    features: list[str] | None = None  # default: the model's own feature names, else every non-target column
    categorical: list[str] | None = None  # default: the non-numeric columns
    segments: list[str] = Field(default_factory=list)  # columns to slice results by (features or not, e.g. a sensitive attribute)
    # What one row is: tabular (the columns), image (a .npz file: `images` N x C x H x W and the target array),
    # text (one column of raw strings, named in data.features unless it is the only non-target column)
    modality: Literal["tabular", "image", "text"] = "tabular"
    encoding: str = "utf-8"  # of CSV files (e.g. latin-1, cp1252); Parquet and .npz files carry their own
    prediction_columns: PredictionColumns | None = None  # tabular data only; read by partition, every row

    def prediction_column_names(self) -> list[str]:
        columns = self.prediction_columns
        return [] if columns is None else [columns.label, *(columns.probabilities or {}).values()]

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r}; e.g. utf-8, latin-1, cp1252") from None
        return value


class Sampling(StrictModel):
    """The seeded sample that sample-mode audits compute on and hybrid ones fit on (every-row statistics read every
    row whatever its size). Unset (the default): as large as the plan's audits afford, the most any of them uses
    (each audit's ``sample_rows``, by default what its method affords). Set: that many rows at most, for every audit."""

    reference_rows: int | None = Field(None, ge=1, le=1_000_000_000)
    current_rows: int | None = Field(None, ge=1, le=1_000_000_000)
    holdout_rows: int | None = Field(None, ge=1, le=1_000_000_000)  # default: as the reference
    # 'prediction' (a classifier's predicted class) or a column of data.segments: the audits that honour row weights
    # (shap, prototypes) then see a sample where every stratum has at least min_rows_per_stratum rows (all it has when
    # fewer), each row weighted by the population rows it stands for; the others keep the uniform sample
    stratify_by: str | None = Field(None, min_length=1)
    min_rows_per_stratum: int = Field(200, ge=1, le=100_000)


class Limits(StrictModel):
    """Time limits, so that a model that never answers cannot hold an audit forever."""

    # loading the model and predicting on both datasets (before any run is opened): past this, the audit stops with an error
    inputs_s: float = Field(1800, gt=0, le=7 * 24 * 3600)
    # each audit (an entry of `audits:` may set its own time_limit_s): past this, it is ERROR and the others go on
    audit_s: float = Field(3600, gt=0, le=7 * 24 * 3600)


class Execution(StrictModel):
    """Where the work on every row runs. Data larger than the sample budgets, or partitioned (a folder or a glob), is
    read partition by partition: statistics that add up are computed on every row, the others on a seeded sample."""

    engine: Literal["local", "dask"] = "local"  # local: this process, no cluster; dask: a dask.distributed cluster
    workers: int = Field(2, ge=1, le=1024)  # engine dask without an address: a LocalCluster of this many processes
    threads_per_worker: int = Field(1, ge=1, le=256)
    worker_memory: str | None = None  # per LocalCluster worker, e.g. 4GiB; default: the machine's memory shared out
    address: str | None = Field(None, pattern=r"^(tcp|tls|inproc|ucx)://\S+$")  # an existing cluster's scheduler
    connect_timeout_s: float = Field(30, gt=0, le=3600)
    partition_rows: int = Field(250_000, ge=1000, le=100_000_000)  # rows a worker holds at a time
    # engine local: the audits run in this many processes at once, each with its share of the cores and its own copy
    # of the sample (not threads of one process, which contend for one lock); default: one per core, at most 8; 1: one
    # after another in the model's process
    processes: int | None = Field(None, ge=1, le=64)


class ModelOptions(StrictModel):
    task: Literal["auto", "classification", "regression"] = "auto"  # 'auto' needs a native sklearn model
    baseline_alias: str | None = "champion"  # the deployed version to compare with (explanation drift); null: none
    # where a PyTorch network runs: cpu (default: reproducible to the bit), cuda, cuda:N, or auto (cuda when present)
    device: str = Field("cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$")


class MlflowSettings(StrictModel):
    tracking_uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db (in the working folder)
    experiment: str = "auditlens/{model_name}"  # one experiment per model
    artifact_location: str | None = None  # new experiments only; default: next to a SQLite store, else the server's
    request_timeout_s: int = Field(30, ge=1)
    request_max_retries: int = Field(3, ge=0)  # MLflow's own HTTP retries, with exponential backoff
    outage_timeout_s: int = Field(120, ge=0)  # then each write waits out a server outage this long, with backoff
    heartbeat_s: int = Field(30, ge=1)  # the audit's run records a heartbeat this often; 4 missed beats: its process is dead
    promote_alias_on_pass: str | None = None  # opt-in: point this alias (e.g. 'audited') at a version whose audit PASSes


class Security(StrictModel):
    """How far a model's files are trusted (the README's "Security model").

    strict (the default): a model loads only through auditlens's allowlist (scikit-learn, numpy and scipy classes;
    torch.nn modules and auditlens's networks) and nothing of its own code runs. trusted: a model the allowlist refuses
    (a custom pyfunc, a pickle holding functions or classes of its own) is loaded as MLflow loads it, which runs its code.
    Automatic audits (watcher, webhook, schedules) stay strict unless their deployment entry also says trusted."""

    model_loading: Literal["strict", "trusted"] = "strict"
    # exact module.Class names a strict load also accepts: a user's own estimator or network class, installed where
    # the audit runs (a prefix or a wildcard is refused: each class is a decision)
    trusted_types: list[str] = Field(default_factory=list)

    @field_validator("trusted_types")
    @classmethod
    def _exact_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+", name):
                raise ValueError(f"security.trusted_types entry {name!r} is not an exact module.Class name "
                                 "(e.g. mypackage.models.MyEstimator; no wildcards)")
        return names


class CacheSettings(StrictModel):
    """Results reused when nothing they depend on changed: the model's and the data's bytes, the settings, the audit's
    entry, the code and the installed packages (tasks/adapters/result_cache.py). `auditlens audit --no-cache` recomputes."""

    enabled: bool = True
    folder: str | None = None  # default: $AUDITLENS_CACHE_DIR, else <state folder>/cache (~/.auditlens/cache)


class AuditSettings(StrictModel):
    kind: Literal["audit"] = "audit"
    seed: int = 0
    data: DataSources
    sampling: Sampling = Sampling()
    model: ModelOptions = ModelOptions()
    mlflow: MlflowSettings = MlflowSettings()
    limits: Limits = Limits()
    execution: Execution = Execution()
    security: Security = Security()
    cache: CacheSettings = CacheSettings()
    # a preset, expanded for the model's kind when the settings load (audits.core.presets); None: audits lists them all
    plan: str | None = None
    # without plan: every audit to run, at least one; with plan: overrides of the preset's entries, or additions
    audits: list[AuditEntry] = Field(default_factory=list, validate_default=True)

    @field_validator("plan")
    @classmethod
    def _known_preset(cls, name: str | None) -> str | None:
        if name is not None and name not in PRESET_NAMES:
            raise ValueError(str(UnknownPresetError(name)))
        return name

    @field_validator("audits")
    @classmethod
    def _audits_or_plan(cls, audits: list[AuditEntry], info: ValidationInfo) -> list[AuditEntry]:
        if not audits and info.data.get("plan", "invalid") is None:  # an invalid plan is reported under its own key
            raise ValueError(f"no audits to run: list them under audits: (at least one, e.g. '- audit: performance'), "
                             f"or name a preset with plan: {' | '.join(PRESET_NAMES)}")
        return audits

    @model_validator(mode="after")
    def _strata_exist(self) -> AuditSettings:
        by = self.sampling.stratify_by
        if by is not None and by != "prediction" and by not in self.data.segments:
            raise ValueError(f"sampling.stratify_by is {by!r}, which is neither 'prediction' nor a column of data.segments "
                             f"({list(self.data.segments)}); name the column under data.segments too")
        return self

    def resolved_artifact_location(self, tracking_uri: str) -> str | None:
        """Where new experiments keep artifacts. MLflow's own default for a SQLite store is ./mlruns in
        whatever folder the process runs from; keep them beside the database instead."""
        if self.mlflow.artifact_location:
            return self.mlflow.artifact_location
        if tracking_uri.startswith("sqlite:///"):
            database = Path(tracking_uri.removeprefix("sqlite:///")).expanduser().resolve()
            return (database.parent / "mlartifacts").as_uri()
        return None

    def plan_entries(self, problems: list[tuple[tuple[Any, ...], str]] | None = None) -> list[tuple[tuple[Any, ...], AuditSpec]]:
        """What the plan is built from, each with where a problem in it is reported: the audits as listed, or the
        preset expanded for data.modality and model.task with the listed ones applied (an entry that cannot apply is
        left out, its problem appended to ``problems``, else raised as a PlanError)."""
        if self.plan is None:
            return [(("audits", index), entry) for index, entry in enumerate(self.audits)]
        return expand(self.plan, self.audits, self.data.modality, self.model.task, segments=bool(self.data.segments),
                      holdout=self.data.holdout is not None, problems=problems)

    def build_plan(self) -> list[PlannedAudit]:
        """The planned audits; one PlanError listing every problem of the entries and of the preset's overrides."""
        return self.build_plan_with_entries()[1]

    def build_plan_with_entries(self) -> tuple[list[tuple[tuple[Any, ...], AuditSpec]], list[PlannedAudit]]:
        problems: list[tuple[tuple[Any, ...], str]] = []
        entries = self.plan_entries(problems)
        try:
            plan = build_entries(entries, default_time_limit_s=self.limits.audit_s)
        except PlanError as exc:
            problems.extend(exc.problems)
        if problems:
            raise PlanError(sorted(problems, key=lambda problem: _location_order(problem[0])))
        return entries, plan


def _location_order(location: tuple[Any, ...]) -> tuple[Any, ...]:
    """Problems in the order of the file's entries (an entry's own in the order found; ints and names never compared)."""
    return tuple((0, part, "") if isinstance(part, int) else (1, 0, str(part)) for part in location[:2])


@dataclass(frozen=True)
class LoadedSettings:
    settings: AuditSettings
    path: Path
    config_hash: str
    plan: list[PlannedAudit]
    current_override: Path | None = None  # a run's own current data (e.g. a scheduled run's dated file)

    @property
    def preset(self) -> str | None:
        """The preset (plan:) the plan was expanded from; None when the configuration lists its audits one by one."""
        return self.settings.plan

    def tracking_uri(self, override: str | None = None) -> str:
        """--tracking-uri, else the config's (a relative SQLite path starts at the config file's folder,
        like the data paths), else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db."""
        if override is not None:  # given, even empty: an empty URI is refused with its fix, not replaced by ./mlflow.db
            return override
        configured = self.settings.mlflow.tracking_uri
        if configured is not None:
            database = configured.removeprefix("sqlite:///")
            if configured.startswith("sqlite:///") and not Path(database).is_absolute():
                return f"sqlite:///{(self.path.parent / database).resolve()}"
            return configured
        return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI

    def with_model_loading(self, model_loading: str) -> LoadedSettings:
        """These settings with ``security.model_loading`` replaced (an automatic audit's deployment decides it)."""
        from dataclasses import replace

        if model_loading not in ("strict", "trusted"):
            raise ConfigError(f"model_loading is {model_loading!r}", "use 'strict' or 'trusted'")
        security = self.settings.security.model_copy(update={"model_loading": model_loading})
        return replace(self, settings=self.settings.model_copy(update={"security": security}))

    def sample_rows(self, which: Literal["reference", "current", "holdout"]) -> int:
        """Rows of ``which`` side in the one seeded sample: the configured cap, else the most any planned audit uses
        (the holdout: as the reference, unless sampling.holdout_rows says otherwise)."""
        configured = getattr(self.settings.sampling, f"{which}_rows")
        if configured is None and which == "holdout":
            configured = self.settings.sampling.reference_rows
        return configured if configured is not None else plan_sample_rows(self.plan)

    @property
    def data_roles(self) -> tuple[str, ...]:
        """The data files this audit reads: reference, current, and the holdout when one is configured."""
        return ("reference", "current", "holdout") if self.settings.data.holdout else ("reference", "current")

    def data_path(self, which: Literal["reference", "current", "holdout"]) -> Path:
        if which == "current" and self.current_override is not None:
            return self.current_override
        spec = getattr(self.settings.data, which)
        if spec is None:
            raise ValueError(f"data.{which} is not configured")
        raw = Path(os.path.expandvars(spec)).expanduser()
        return raw if raw.is_absolute() else (self.path.parent / raw).resolve()


MAX_CONFIG_BYTES = 1 << 20  # a configuration is a page of settings; anything near a megabyte is not one
MAX_CONFIG_NODES = 100_000  # values after YAML aliases are expanded (a 630-byte alias bomb expands to billions)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values ``node`` stands for once every alias is expanded. Aliases are shared nodes in the composed
    graph, so each node is sized once (memoised): linear in the file, however large the expansion."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = MAX_CONFIG_NODES + 1  # a node that (through a recursive alias) contains itself is too large
    if isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_CONFIG_NODES:
            break
    sizes[id(node)] = total
    return total


def _yaml_problem(path: Path, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(f"{path}{where}: malformed YAML ({problem})", "fix the YAML syntax at that position")


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML file of settings, refused with one clear error when it is not one: missing, a folder, too large, not
    text, malformed, or aliases that expand beyond reason (YAML's "billion laughs")."""
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a config file", "pass the path of a YAML file, e.g. config/demo.yaml")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist", "pass the path of a YAML file, e.g. config/demo.yaml")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {size:,} bytes; a configuration is at most {MAX_CONFIG_BYTES:,}",
                          "pass the YAML configuration itself (data belongs in the files that data.reference and data.current name)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not a text file in UTF-8 (byte {exc.start} is {raw[exc.start:exc.start + 1]!r})",
                          "pass a YAML configuration (kind: audit), saved as UTF-8") from None
    if "\x00" in text:
        raise ConfigError(f"{path} is a binary file, not YAML", "pass a YAML configuration (kind: audit)")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_problem(path, exc) from None
    if node is not None and _expanded_size(node, {}) > MAX_CONFIG_NODES:
        raise ConfigError(f"{path}: its YAML aliases (*name) expand to more than {MAX_CONFIG_NODES:,} values",
                          "write the values out, or use aliases only for small repeated blocks")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise _yaml_problem(path, exc) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}",
                          "start the file with keys such as 'kind: audit', 'data:' and 'audits:'")
    return data


def validated(schema: type[BaseModel], path: Path, data: dict[str, Any]) -> Any:
    """``data`` (read from ``path``) as ``schema``, or one ConfigError listing every problem with its location."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise config_error(path, pydantic_problems(exc)) from None


def config_error(path: Path, problems: list[tuple[tuple, str]]) -> ConfigError:
    lines = [f"{format_location(loc)}: {message}" for loc, message in problems]
    return ConfigError(
        f"{path}: invalid configuration\n    " + "\n    ".join(lines),
        "correct the keys listed above (the README's 'Configuration' section lists every key)",
    )


def hash_settings(settings: BaseModel) -> str:
    return _hash_dumped(settings.model_dump(mode="json"))


def _hash_dumped(dumped: dict[str, Any]) -> str:
    canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def audit_config_hash(settings: AuditSettings, specs: list[AuditSpec]) -> str:
    """The hash of the settings with ``audits`` as planned (``specs``): a preset's expansion is part of it, so a
    change to the preset's table is a change of configuration. A configuration without a preset hashes as it did
    before presets existed (no ``plan`` key, each entry as an AuditSpec), so that its audits are not taken for new."""
    dumped = settings.model_dump(mode="json", exclude={"plan"} if settings.plan is None else None)
    dumped["audits"] = [AuditSpec.model_validate(spec.model_dump(exclude={"enabled"})).model_dump(mode="json")
                        for spec in specs]
    return _hash_dumped(dumped)


def load_settings(path: str | Path, current_data: str | Path | None = None) -> LoadedSettings:
    path = Path(path).resolve()
    data = read_yaml(path)
    if data.get("kind", "audit") != "audit":
        raise ConfigError(f"{path}: this is a {data.get('kind')!r} file, not an audit configuration",
                          "pass a file with 'kind: audit' to 'auditlens audit'")
    settings = validated(AuditSettings, path, data)
    try:
        entries, plan = settings.build_plan_with_entries()
    except PlanError as exc:
        raise config_error(path, exc.problems) from None
    override = Path(current_data).expanduser().resolve() if current_data else None
    return LoadedSettings(settings, path, audit_config_hash(settings, [spec for _, spec in entries]), plan, override)
