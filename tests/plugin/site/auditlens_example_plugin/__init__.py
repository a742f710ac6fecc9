"""A third-party audit, packaged apart from auditlens and registered through the entry-point group
``auditlens.audits`` (see the dist-info beside this folder): what a plugin author writes."""

from __future__ import annotations

import numpy as np
from audits.core import Audit, AuditContext, AuditResult, Threshold


class MissingCellsAudit(Audit):
    """The share of missing cells per side, and the worst column's, on the current data."""

    name = "missing_cells"
    metric_keys = ("{reference,current}.{share,worst_column_share}",)
    default_thresholds = (Threshold(metric="current.share", max=0.05),)

    def compute(self, context: AuditContext) -> AuditResult:
        metrics = {}
        for side in ("reference", "current"):
            X = context.dataset(side).X
            missing = X.isna().to_numpy()
            metrics[f"{side}.share"] = float(missing.mean()) if missing.size else float("nan")
            metrics[f"{side}.worst_column_share"] = float(missing.mean(axis=0).max()) if missing.size else float("nan")
        return AuditResult(self.name, metrics=metrics)


class ShufflingAudit(Audit):
    """A broken plugin: it sorts the caller's frame in place (check_audit must catch it)."""

    name = "shuffling"
    metric_keys = ("rows",)

    def compute(self, context: AuditContext) -> AuditResult:
        context.current.X.sort_values(list(context.current.X.columns)[:1], inplace=True)
        return AuditResult(self.name, metrics={"rows": float(len(context.current.X))})


class UnseededAudit(Audit):
    """A broken plugin: its metric depends on an unseeded random draw (check_audit must catch it)."""

    name = "unseeded"
    metric_keys = ("draw",)

    def compute(self, context: AuditContext) -> AuditResult:
        return AuditResult(self.name, metrics={"draw": float(np.random.default_rng().random())})
