"""Which audits exist: built-ins listed here explicitly, third-party ones through an entry-point group.

Built-ins are import strings, resolved on first use, so that validating a plan does not import
SHAP or scikit-learn internals it does not need.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from audits.core.audit import Audit

ENTRY_POINT_GROUP = "auditlens.audits"

BUILTIN_AUDITS: dict[str, str] = {
    "data_quality": "audits.data.data_quality:DataQualityAudit",
    "performance": "audits.performance.performance:PerformanceAudit",
    "champion_challenger": "audits.performance.champion_challenger:ChampionChallengerAudit",
    "performance_estimation": "audits.performance.performance_estimation:PerformanceEstimationAudit",
    "shap": "audits.explain.shap:ShapAudit",
    "importance": "audits.explain.importance:ImportanceAudit",
    "explanation_drift": "audits.explain.explanation_drift:ExplanationDriftAudit",
    "prototypes": "audits.explain.prototypes:PrototypesAudit",
    "lime": "audits.explain.lime:LimeAudit",
    "explanation_agreement": "audits.explain.explanation_agreement:AgreementAudit",
    "sanity_checks": "audits.explain.sanity_checks:SanityChecksAudit",
    "explanation_stability": "audits.explain.explanation_stability:ExplanationStabilityAudit",
    "calibration": "audits.uncertainty.calibration:CalibrationAudit",
    "conformal": "audits.uncertainty.conformal:ConformalAudit",
    "segments": "audits.performance.segments:SegmentsAudit",
    "slices": "audits.performance.slices:SlicesAudit",
    "drift": "audits.data.drift:DriftAudit",
    "disagreement": "audits.uncertainty.disagreement:DisagreementAudit",
    "ood": "audits.uncertainty.ood:OODAudit",
    "concordance": "audits.uncertainty.concordance:ConcordanceAudit",
    "projections": "audits.projections.projections:ProjectionsAudit",
    # networks, images and text (torch and captum are imported only when these run)
    "text_explanations": "audits.explain.text_explanations:TextExplanationAudit",
    "network_sanity": "audits.explain.network_sanity:NetworkSanityAudit",
    "network_attributions": "audits.explain.network_attributions:NetworkAttributionAudit",
    "occlusion": "audits.explain.occlusion:OcclusionAudit",
    "mc_dropout": "audits.uncertainty.mc_dropout:MCDropoutAudit",
    "autoencoder_ood": "audits.uncertainty.autoencoder_ood:AutoencoderOODAudit",
    "embedding_projections": "audits.projections.embedding_projections:EmbeddingProjectionsAudit",
    "embedding_prototypes": "audits.explain.embedding_prototypes:EmbeddingPrototypesAudit",
}


class UnknownAuditError(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown audit {name!r}; known audits: {', '.join(known)}. Third-party audits register "
            f"in the {ENTRY_POINT_GROUP!r} entry-point group of their package"
        )
        self.name = name
        self.known = known


def available_audits() -> dict[str, str]:
    """Audit name -> where it comes from ('module:Class'). Built-ins win over plugins of the same name."""
    found = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    found.update(BUILTIN_AUDITS)
    return dict(sorted(found.items()))


def _load(target: str) -> object:
    module_name, _, attr = target.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def get_audit_class(name: str) -> type[Audit]:
    if name in BUILTIN_AUDITS:
        cls = _load(BUILTIN_AUDITS[name])
    else:
        matches = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
        if not matches:
            raise UnknownAuditError(name, list(available_audits()))
        cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Audit)):
        raise TypeError(f"audit {name!r} resolves to {cls!r}, which is not a subclass of audits.core.Audit")
    if cls.name != name:
        raise TypeError(f"audit registered as {name!r} declares name {cls.name!r}; they must match")
    return cls
