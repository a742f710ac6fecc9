"""Plans: audits resolved by name, configs validated against each audit's schema, plugins via entry points."""

from __future__ import annotations

import textwrap

import pytest

from audits.core.plan import AuditPlan, PlanError
from audits.core.registry import BUILTIN_AUDITS, ENTRY_POINT_GROUP, UnknownAuditError, available_audits, get_audit_class
from audits.core.runner import run_planned


def test_builtins_resolve_to_audits_with_matching_names():
    for name in BUILTIN_AUDITS:
        cls = get_audit_class(name)
        assert cls.name == name
        cls()  # default configuration works and has no side effects


def test_unknown_audit_lists_the_known_ones():
    with pytest.raises(UnknownAuditError) as info:
        get_audit_class("shapp")
    assert "shapp" in str(info.value) and "shap" in info.value.known and ENTRY_POINT_GROUP in str(info.value)


def test_plan_collects_every_problem_with_its_location():
    plan = AuditPlan.model_validate(
        {"audits": [{"audit": "shapp"}, {"audit": "shap", "config": {"rows": 0, "colour": "red"}}, {"audit": "performance"}]}
    )
    with pytest.raises(PlanError) as info:
        plan.build()
    locations = {loc: message for loc, message in info.value.problems}
    assert "unknown audit 'shapp'" in locations[("audits", 0, "audit")]
    assert "greater than or equal to 1" in locations[("audits", 1, "config", "rows")]
    assert "unknown key" in locations[("audits", 1, "config", "colour")]


def test_duplicate_ids_are_rejected_and_ids_rename():
    with pytest.raises(PlanError, match=r"audits\[1\]\.id: two audits share the id 'shap'"):
        AuditPlan.model_validate({"audits": [{"audit": "shap"}, {"audit": "shap"}]}).build()
    planned = AuditPlan.model_validate({"audits": [{"audit": "shap"}, {"audit": "shap", "id": "shap_wide", "config": {"rows": 5}}]}).build()
    assert [p.id for p in planned] == ["shap", "shap_wide"]


def test_default_thresholds_follow_a_renamed_audit(classifier_context):
    [planned] = AuditPlan.model_validate({"audits": [{"audit": "shap", "id": "shap_exact", "config": {"explainer": "exact", "permutation_rows": 3, "background_rows": 5}}]}).build()
    assert [t.metric for t in planned.thresholds] == ["shap_exact.additivity_relative_error"]
    result = run_planned(planned, classifier_context)
    assert result.verdict.value == "PASS", result.reason


def test_thresholds_default_when_omitted_and_none_when_empty():
    default, none = AuditPlan.model_validate({"audits": [{"audit": "shap"}, {"audit": "shap", "id": "bare", "thresholds": []}]}).build()
    assert default.thresholds == tuple(t.namespaced("shap") for t in get_audit_class("shap").default_thresholds)
    assert [t.metric for t in default.thresholds] == ["shap.additivity_relative_error"]  # declared locally
    assert none.thresholds == ()


def test_a_threshold_on_a_metric_the_audit_never_reports_is_refused_naming_the_nearest():
    def problems(audit, *thresholds, id=None):
        spec = {"audit": audit, "thresholds": list(thresholds), **({"id": id} if id else {})}
        with pytest.raises(PlanError) as error:
            AuditPlan.model_validate({"audits": [spec]}).build()
        return error.value.problems

    [(where, message)] = problems("calibration", {"metric": "calibration.current.ecee", "max": 0.05})
    assert where == ("audits", 0, "thresholds", 0, "metric") and "calibration.current.ece," in message
    [(where, message)] = problems("performance", {"metric": "performance.current.roc_auc",
                                                  "compare_to": "performance.refrence.roc_auc", "min": -0.05})
    assert where[-1] == "compare_to" and "performance.reference.roc_auc" in message
    [(_, message)] = problems("shap", {"metric": "shap.importanse.x1", "max": 1}, id="shap_small")
    assert "'shap.importanse.x1' is not a metric of this audit" in message and "'shap_small.<metric>'" in message
    [(_, message)] = problems("shap", {"metric": "shap_small.importanse.x1", "max": 1}, id="shap_small")
    assert "shap_small.importance.*" in message
    # keys with a name from the data match their pattern; both spellings of one audit's keys build
    planned = AuditPlan.model_validate({"audits": [
        {"audit": "shap", "thresholds": [{"metric": "shap.importance.x1", "max": 1}]},
        {"audit": "segments", "thresholds": [{"metric": "segments.colour.red.accuracy", "min": 0.5}]},
        {"audit": "calibration", "thresholds": [{"metric": "calibration.recalibrated.isotonic.ece", "max": 0.1}]}]}).build()
    assert [t.metric for p in planned for t in p.thresholds] == [
        "shap.importance.x1", "segments.colour.red.accuracy", "calibration.recalibrated.isotonic.ece"]


def test_every_builtin_declares_its_keys_and_its_default_thresholds_name_declared_keys():
    from audits.core.registry import BUILTIN_AUDITS

    for name in BUILTIN_AUDITS:
        cls = get_audit_class(name)
        assert cls.metric_keys, name
        for threshold in cls.default_thresholds:
            assert not threshold.metric.startswith(f"{name}."), f"{name}: default thresholds use local keys"
            assert all(cls.declares(k) for k in filter(None, (threshold.metric, threshold.compare_to))), (name, threshold)


PLUGIN = '''
from audits.core import Audit, AuditConfig, AuditResult

class ConstantConfig(AuditConfig):
    value: float = 1.0

class ConstantAudit(Audit):
    name = "constant"
    Config = ConstantConfig

    def compute(self, context):
        return AuditResult(audit=self.name, metrics={"value": self.config.value, "rows": float(len(context.current))})
'''


def test_third_party_audits_come_in_through_the_entry_point_group(tmp_path, monkeypatch, classifier_context):
    (tmp_path / "auditlens_constant_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "auditlens_constant_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: auditlens-constant-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nconstant = auditlens_constant_plugin:ConstantAudit\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    assert available_audits()["constant"] == "auditlens_constant_plugin:ConstantAudit"
    [planned] = AuditPlan.model_validate({"audits": [{"audit": "constant", "config": {"value": 2.5}}]}).build()
    result = run_planned(planned, classifier_context)
    assert result.metrics == {"constant.value": 2.5, "constant.rows": float(len(classifier_context.current))}
