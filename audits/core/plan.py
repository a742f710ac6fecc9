"""An audit plan: which audits run, with which configuration and thresholds.

    audits:
      - audit: shap                 # a registered audit
        id: shap                    # optional; names the metrics and the artifact folder
        config: {rows: 200}         # validated against the audit's own Config
        thresholds: [...]           # optional; omitted = the audit's defaults, [] = none
        time_limit_s: 600           # optional; past it the audit is ERROR and the others go on
        sample_rows: 5000           # optional; the seeded sample this audit computes (or, hybrid, fits) on, rows a
                                    # side; default: what the audit affords (Audit.default_sample_rows)

An audit configuration may instead name a preset (``plan: quick | standard | full``, audits.core.presets); its
``audits:`` entries then override the preset's, add to them, or remove one (``enabled: false``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from audits.core.audit import Audit
from audits.core.registry import UnknownAuditError, get_audit_class
from audits.core.thresholds import Threshold

_ID = re.compile(r"^[a-z][a-z0-9_]*$")


class AuditSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    audit: str
    id: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    thresholds: list[Threshold] | None = None
    time_limit_s: float | None = Field(None, gt=0, le=7 * 24 * 3600)
    sample_rows: int | None = Field(None, ge=1, le=1_000_000_000)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str | None) -> str | None:
        if value is not None and not _ID.match(value):
            raise ValueError("an audit id is lower-case letters, digits and '_', starting with a letter")
        return value

    @property
    def audit_id(self) -> str:
        return self.id or self.audit


class AuditEntry(AuditSpec):
    """An entry of an audit configuration's ``audits:``. Beside a preset (``plan:``) it overrides the preset's entry
    of the same id or adds one, and ``enabled: false`` removes the preset's entry (audits.core.presets.expand)."""

    enabled: bool = True

    def spec(self) -> AuditSpec:
        """The plan entry itself, without ``enabled`` (which only a preset reads)."""
        return AuditSpec.model_validate(self.model_dump(exclude={"enabled"}, exclude_unset=True))


class PlanError(ValueError):
    """Every problem found in a plan, each with its location, e.g. ('audits', 1, 'config', 'rows')."""

    def __init__(self, problems: list[tuple[tuple[Any, ...], str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{format_location(loc)}: {msg}" for loc, msg in problems))


def format_location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def pydantic_problems(error: ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], str]]:
    problems = []
    for item in error.errors():
        loc = prefix + tuple(item["loc"])
        if item["type"] == "extra_forbidden":
            message = "unknown key; remove it or check its spelling"
        elif item["type"] == "missing":
            message = "required key is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
        problems.append((loc, message))
    return problems


@dataclass(frozen=True)
class PlannedAudit:
    id: str
    audit: Audit
    thresholds: tuple[Threshold, ...]  # on local keys (an audit's defaults) or full ones; kept on full keys
    time_limit_s: float | None = None  # None: no limit
    sample_rows: int = 20_000  # rows a side of the seeded sample a sample or hybrid audit sees (a partial one sees every row)

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", tuple(t.namespaced(self.id) for t in self.thresholds))


class AuditPlan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    audits: list[AuditSpec] = Field(min_length=1)

    def build(self, location: tuple[Any, ...] = ("audits",), default_time_limit_s: float | None = None) -> list[PlannedAudit]:
        """Resolve each audit and validate its configuration; raise one PlanError listing every problem."""
        return build_entries([((*location, index), spec) for index, spec in enumerate(self.audits)], default_time_limit_s)


def build_entries(entries: list[tuple[tuple[Any, ...], AuditSpec]], default_time_limit_s: float | None = None) -> list[PlannedAudit]:
    """Resolve each audit and validate its configuration, a problem reported at the location that comes with its
    entry (a preset's own entries at ('plan', <id>)); raise one PlanError listing every problem."""
    planned: list[PlannedAudit] = []
    problems: list[tuple[tuple[Any, ...], str]] = []
    seen: set[str] = set()
    for here, spec in entries:
        if not getattr(spec, "enabled", True):
            problems.append(((*here, "enabled"), "enabled: false removes an audit of a preset (plan: quick | "
                             "standard | full); without plan:, delete the entry instead"))
            continue
        if spec.audit_id in seen:
            problems.append(((*here, "id"), f"two audits share the id {spec.audit_id!r}; give one of them an 'id'"))
        seen.add(spec.audit_id)
        try:
            cls = get_audit_class(spec.audit)
        except UnknownAuditError as exc:
            problems.append(((*here, "audit"), str(exc)))
            continue
        try:
            config = cls.Config.model_validate(spec.config)
        except ValidationError as exc:
            problems.extend(pydantic_problems(exc, (*here, "config")))
            continue
        if spec.thresholds is None:  # the audit's defaults, on its local keys: PlannedAudit puts this id before them
            thresholds = cls.thresholds_for(config)
        else:
            thresholds = tuple(spec.thresholds)
            problems.extend(threshold_problems(cls, spec.audit_id, thresholds, (*here, "thresholds")))
        time_limit_s = spec.time_limit_s if spec.time_limit_s is not None else default_time_limit_s
        sample_rows = spec.sample_rows if spec.sample_rows is not None else cls.default_sample_rows
        planned.append(PlannedAudit(spec.audit_id, cls(config), tuple(thresholds), time_limit_s, sample_rows))
    if problems:
        raise PlanError(problems)
    return planned


def plan_sample_rows(planned: list[PlannedAudit]) -> int:
    """Rows a side of the one seeded sample an audit of this plan draws: the most any of its audits uses (each is then
    cut to its own; a partial audit's figure only sizes the sample its context is built on)."""
    return max((p.sample_rows for p in planned), default=20_000)


def threshold_problems(cls: type[Audit], audit_id: str, thresholds: tuple[Threshold, ...],
                       location: tuple[Any, ...]) -> list[tuple[tuple[Any, ...], str]]:
    """A threshold on a metric the audit can never report would only show up as ERROR after the audit ran: each is
    refused here, with the nearest key the audit does report."""
    problems = []
    for index, threshold in enumerate(thresholds):
        for field in ("metric", "compare_to"):
            key = getattr(threshold, field)
            if key is None:
                continue
            if not key.startswith(f"{audit_id}."):
                problems.append(((*location, index, field), f"{key!r} is not a metric of this audit: a threshold names "
                                 f"one of its own metrics by its full key, '{audit_id}.<metric>'"))
            elif cls.metric_keys and not cls.declares(key[len(audit_id) + 1:]):
                nearest = ", ".join(f"{audit_id}.{k}" for k in cls.nearest_keys(key[len(audit_id) + 1:], n=2))
                problems.append(((*location, index, field), f"{cls.name} never reports {key!r}; the nearest keys it "
                                 f"reports: {nearest} ('*' is a column, class or segment name; "
                                 f"`auditlens audits -v` lists them all)"))
    return problems
