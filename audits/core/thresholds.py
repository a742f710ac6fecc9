"""Thresholds are data: a metric, bounds, an optional baseline metric, a severity.

Modelled on MLflow's ``MetricThreshold`` but written as configuration, so that a reviewer reads
and changes them in YAML:

    - metric: performance.current.roc_auc
      min: 0.9                                   # absolute bound
    - metric: performance.current.accuracy
      compare_to: performance.reference.accuracy
      min: -0.05                                 # may drop by at most 0.05 ...
      relative: false                            # ... absolute points (true: a fraction of the baseline)
      severity: warn
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from audits.core.result import CheckResult


class Threshold(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str
    min: float | None = None
    max: float | None = None
    compare_to: str | None = None
    relative: bool = False
    severity: Literal["fail", "warn"] = "fail"

    @model_validator(mode="after")
    def _bounds(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError("a threshold needs 'min', 'max' or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"'min' ({self.min}) is greater than 'max' ({self.max})")
        if self.relative and self.compare_to is None:
            raise ValueError("'relative: true' needs 'compare_to' (the baseline metric)")
        return self

    def namespaced(self, audit_id: str) -> Threshold:
        """The threshold on the audit's full keys: an audit's defaults name its metrics locally ('current.ece'), a
        plan's thresholds in full ('calibration.current.ece', the key in MLflow); a key already full is kept."""
        def full(key: str | None) -> str | None:
            return key if key is None or key.startswith(f"{audit_id}.") else f"{audit_id}.{key}"

        return self.model_copy(update={"metric": full(self.metric), "compare_to": full(self.compare_to)})

    @property
    def quantity(self) -> str:
        if not self.compare_to:
            return self.metric
        change = f"{self.metric} - {self.compare_to}"
        return f"({change}) / |{self.compare_to}|" if self.relative else change

    @property
    def bound(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {self.min:g} and {self.max:g}"
        return f">= {self.min:g}" if self.min is not None else f"<= {self.max:g}"

    @property
    def rule(self) -> str:
        return f"{self.quantity} {self.bound}"

    def evaluate(self, metrics: dict[str, float], ranges: dict[str, tuple[float, float]] | None = None,
                 chance: dict[str, tuple[float, float]] | None = None) -> CheckResult:
        """The check on these metrics; ``ranges`` are the values a metric could take on this data, ``chance`` those it
        reaches by chance alone (AuditResult.ranges and .chance)."""
        def unevaluated(message: str, cannot_tell: bool = False) -> CheckResult:
            return CheckResult(self.metric, self.rule, self.severity, None, None, message, cannot_tell, **self._bounds_of())

        missing = [k for k in (self.metric, self.compare_to) if k is not None and k not in metrics]
        if missing:
            return unevaluated(f"metric {missing[0]!r} was not produced; check the name in the thresholds")
        value = float(metrics[self.metric])
        if self.compare_to is not None:
            baseline = float(metrics[self.compare_to])
            value = value - baseline
            if self.relative:
                if baseline == 0:
                    return unevaluated(f"baseline {self.compare_to!r} is 0: a relative change is undefined", True)
                value = value / abs(baseline)
        if not math.isfinite(value):
            return unevaluated(f"undefined on this data ({self.quantity} = {value})" if self.compare_to else
                               f"undefined on this data ({value})", True)
        low, high = (ranges or {}).get(self.metric, (-math.inf, math.inf)) if self.compare_to is None else (-math.inf, math.inf)
        if (self.max is None or high <= self.max) and (self.min is None or low >= self.min):
            return unevaluated(f"{value:.4g}, but on this data it can only lie in [{low:.4g}, {high:.4g}], where "
                               f"{self.bound} always holds: the check could never fail", True)
        passed = (self.min is None or value >= self.min) and (self.max is None or value <= self.max)
        band = (chance or {}).get(self.metric) if self.compare_to is None else None
        if not passed and band is not None and band[0] <= value <= band[1]:
            return unevaluated(f"{value:.4g} is beyond {self.bound}, but on this data chance alone reaches "
                               f"[{band[0]:.4g}, {band[1]:.4g}]: no evidence either way", True)
        message = f"{self.quantity} = {value:.4g}" + ("" if passed else f", must be {self.bound}")
        return CheckResult(self.metric, self.rule, self.severity, value, passed, message, **self._bounds_of())

    def _bounds_of(self) -> dict[str, Any]:
        return {"low": self.min, "high": self.max, "compare_to": self.compare_to, "relative": self.relative}
