"""The audit contract: a frozen, validated configuration plus one ``compute(context)``."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from audits.core.context import AuditContext, Modality, Task
from audits.core.result import AuditResult
from audits.core.thresholds import Threshold

Question = Literal["behaviour", "certainty", "data"]


class AuditConfig(BaseModel):
    """Base for every audit's configuration: frozen, unknown keys rejected, defaults that work."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True)
class Requirements:
    """What an audit needs, so the runner can answer SKIPPED with a reason before computing."""

    labels: Literal["none", "current", "reference", "any"] = "none"
    probabilities: bool = False  # a classifier must have predict_proba (regressors are unaffected)
    estimator: bool = False  # a native scikit-learn estimator (Pipeline included)
    tasks: tuple[Task, ...] = ("classification", "regression")
    modalities: tuple[Modality, ...] = ("tabular",)  # the kinds of input it is made for
    network: bool = False  # a PyTorch network (gradients, layers, embeddings)
    baseline: str | None = None  # another version of the same task to compare with, named so in the reason

    def unmet(self, context: AuditContext) -> str | None:
        if context.modality not in self.modalities:
            return f"made for {' or '.join(self.modalities)} inputs; this audit's data is {context.modality}"
        if context.task not in self.tasks:
            return f"applies to {' or '.join(self.tasks)} models; this one is a {context.task} model"
        if self.network and not hasattr(context.model.estimator, "network"):
            return (f"explains a network through its layers (PyTorch, or scikit-learn's MLPClassifier on images); "
                    f"{context.model.label} is a {context.model.flavor} model")
        if self.estimator and context.model.estimator is None:
            return f"needs a native scikit-learn model; {context.model.label} loads only as {context.model.flavor}"
        if self.probabilities and context.task == "classification" and context.model.predict_proba is None:
            return f"explains a classifier through its predicted probabilities; {context.model.label} ({context.model.flavor}) has no predict_proba"
        labelled = {"current": context.current.labelled, "reference": context.reference.labelled}
        if self.labels in labelled and not labelled[self.labels]:
            return f"needs labels on the {self.labels} data; target column {context.target!r} is absent there"
        if self.labels == "any" and not any(labelled.values()):
            return f"needs labels; target column {context.target!r} is absent from both datasets"
        if self.baseline is not None:
            if context.baseline is None:
                return f"no {self.baseline} to compare with: {context.baseline_note or 'no baseline model'}"
            if context.baseline.task != context.task:
                return f"the {self.baseline} is a {context.baseline.task} model and this one a {context.task} model"
        return None


class Audit(ABC):
    """Subclasses set ``name``, ``Config`` and implement ``compute``.

    The constructor only stores configuration (scikit-learn's rule); anything fitted lives inside
    ``compute`` and leaves with the result. Random steps draw from ``context.rng(...)``.
    """

    name: ClassVar[str]
    Config: ClassVar[type[AuditConfig]] = AuditConfig
    requires: ClassVar[Requirements] = Requirements()
    default_thresholds: ClassVar[tuple[Threshold, ...]] = ()
    description: ClassVar[str] = ""
    # which of the three questions a reviewer asks it answers: the model's behaviour (how well it predicts, what it
    # relies on), its certainty (calibration, coverage, unfamiliar rows) or the data (quality, drift). The verdict says
    # per question whether it is answered well or badly, so that a FAIL for drift alone does not read as a broken model.
    # None: not declared (a third-party audit); the report then files it under "other" (audits.rendering.findings)
    question: ClassVar[Question | None] = None
    # the metric keys it can report, local to it (the runner prefixes the audit's id): '*' stands for a name that
    # comes from the data (a column, class, segment, layer or step), '{a,b}' for either. check-config refuses a
    # threshold on a key no pattern matches, naming the nearest one; the contract checks every key reported is here.
    metric_keys: ClassVar[tuple[str, ...]] = ()
    # rough seconds on the benchmark workload (20,000 rows a side, 30 features; bench/bench_parts.py), for the
    # scheduler only: with no timing of an earlier run, the costliest audits start first, so that the lanes finish
    # together instead of one waiting on the map it started last
    typical_cost_s: ClassVar[float] = 1.0
    # the libraries it imports only when it runs (kept out of the module's import to keep listing audits light): a
    # worker process that will run it imports them while the model's process still reads the data
    imports: ClassVar[tuple[str, ...]] = ()
    # on data larger than the sample: 'sample' (computes on the seeded sample), or, for a PartialAudit (audits.core.partial),
    # 'partial' (every row) or 'hybrid' (fitted on the sample, applied to every row)
    mode: ClassVar[Literal["sample", "partial", "hybrid"]] = "sample"
    # rows a side of the seeded sample this method affords by default (a plan entry's sample_rows overrides it): the
    # sample a 'sample' audit computes on, and the one a 'hybrid' audit fits on. Audits that draw their own small
    # subsample (SHAP's 200 rows, t-SNE's 2,000) gain nothing from more; bench/bench_sample_sizes.py measures which grow.
    default_sample_rows: ClassVar[int] = 20_000
    # True: with sampling.stratify_by, this audit computes on the stratified sample and honours each row's weight
    # (Dataset.strata); the others keep the uniform sample, on which their unweighted figures are unbiased
    stratified: ClassVar[bool] = False

    def __init__(self, config: AuditConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{type(self).__name__} takes a {self.Config.__name__}, not {type(self.config).__name__}")

    @classmethod
    def thresholds_for(cls, config: AuditConfig) -> tuple[Threshold, ...]:
        """The default thresholds of an audit so configured (one that turns a part off drops the checks of its metrics)."""
        return cls.default_thresholds

    @classmethod
    def declares(cls, key: str) -> bool:
        """Whether ``key`` (local to the audit) is one this audit can report."""
        return any(fnmatch.fnmatchcase(key, pattern) for pattern in key_patterns(cls.metric_keys))

    @classmethod
    def undeclared(cls, keys: Iterable[str], audit_id: str) -> list[str]:
        """Those of ``keys`` (full: '<audit_id>.<key>') that this audit does not declare; none if it declares none."""
        if not cls.metric_keys:
            return []
        return [key for key in keys if not cls.declares(key.removeprefix(f"{audit_id}."))]

    @classmethod
    def nearest_keys(cls, key: str, n: int = 1) -> list[str]:
        """The declared keys (patterns spelt out, '*' kept) closest to a key it cannot report."""
        return difflib.get_close_matches(key, key_patterns(cls.metric_keys), n=n, cutoff=0.0)

    def skip_reason(self, context: AuditContext) -> str | None:
        return self.requires.unmet(context)

    @abstractmethod
    def compute(self, context: AuditContext) -> AuditResult:
        """Return metrics with keys local to this audit (the runner namespaces them)."""


@functools.cache
def key_patterns(declared: tuple[str, ...]) -> list[str]:
    """Each declared key with its '{a,b}' alternatives spelt out (fnmatch patterns, '*' kept)."""
    out: list[str] = []
    for pattern in declared:
        match = re.search(r"\{([^{}]*)\}", pattern)
        if match is None:
            out.append(pattern)
            continue
        for option in match.group(1).split(","):
            out.extend(key_patterns((pattern[: match.start()] + option + pattern[match.end():],)))
    return out
