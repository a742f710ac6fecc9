"""The audit contract: configuration, context, result, thresholds, runner and registry."""

from audits.core.audit import Audit, AuditConfig, Requirements
from audits.core.context import AuditContext, Dataset, ModelUnderAudit, Predictions
from audits.core.result import Artifact, AuditResult, CheckResult, Verdict
from audits.core.thresholds import Threshold

__all__ = [
    "Artifact",
    "Audit",
    "AuditConfig",
    "AuditContext",
    "AuditResult",
    "CheckResult",
    "Dataset",
    "ModelUnderAudit",
    "Predictions",
    "Requirements",
    "Threshold",
    "Verdict",
]
