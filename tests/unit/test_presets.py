"""Presets (plan: quick | standard | full): each expands per kind of model to a plan that validates, keeps only what
applies to a given task, nests quick in standard in full, and takes the configuration's audits: as overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap

import pytest

from audits.core.plan import AuditEntry, PlanError, build_entries
from audits.core.presets import (
    KINDS,
    PRESET_NAMES,
    PRESETS,
    PresetEntry,
    UnknownPresetError,
    describe_preset,
    expand,
    format_preset,
    preset_entries,
)
from audits.core.registry import get_audit_class
from tasks.adapters.errors import ConfigError
from tasks.adapters.settings import load_settings

# the modality and task each kind is expanded for
KIND_OF = {"tabular_classifier": ("tabular", "classification"), "tabular_regressor": ("tabular", "regression"),
           "image_network": ("image", "classification"), "text_classifier": ("text", "classification")}
BASE = "kind: audit\ndata: {reference: r.csv, current: c.csv}\n"


def load(tmp_path, text: str, name: str = "a.yaml"):
    """An audit configuration of BASE and ``text`` (indented like the test's code or not), loaded."""
    path = tmp_path / name
    path.write_text(BASE + textwrap.dedent(text))
    return load_settings(path)


def ids(preset: str, kind: str) -> list[str]:
    return [entry.audit for entry in PRESETS[preset][kind]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("preset", PRESET_NAMES)
def test_every_preset_and_kind_expands_to_a_plan_that_validates(preset, kind):
    modality, task = KIND_OF[kind]
    entries = expand(preset, [], modality, task, segments=True, holdout=True)
    planned = build_entries(entries)  # every config accepted by the audit's Config, else PlanError
    assert [p.id for p in planned] == ids(preset, kind)  # none dropped: each entry applies to its own kind
    for p in planned:
        assert modality in p.audit.requires.modalities and task in p.audit.requires.tasks
        assert p.audit.config.model_dump() == {**type(p.audit).Config().model_dump(),
                                               **dict(PRESETS[preset][kind][ids(preset, kind).index(p.id)].config)}
        undeclared = [t.metric for t in p.thresholds if not p.audit.declares(t.metric.removeprefix(f"{p.id}."))]
        assert undeclared == [] and all(t.metric.startswith(f"{p.id}.") for t in p.thresholds)


@pytest.mark.parametrize("kind", KINDS)
def test_quick_is_in_standard_and_standard_in_full(kind):
    quick, standard, full = (set(ids(preset, kind)) for preset in PRESET_NAMES)
    assert quick < standard <= full
    assert len(ids("full", kind)) == len(set(ids("full", kind)))  # an audit once per kind


def test_full_holds_every_audit_that_applies_to_the_kind():
    from audits.core.registry import BUILTIN_AUDITS

    for kind, (modality, task) in KIND_OF.items():
        applicable = {name for name in BUILTIN_AUDITS if modality in get_audit_class(name).requires.modalities
                      and task in get_audit_class(name).requires.tasks}
        assert set(ids("full", kind)) == applicable, kind


def test_the_quick_preset_is_the_cheap_one():
    cost = {kind: sum(get_audit_class(a).typical_cost_s for a in ids("quick", kind)) for kind in KINDS}
    # seconds on 20,000 rows a side, one after another (network_attributions counted at its default 20 rows)
    assert cost == {"tabular_classifier": 13, "tabular_regressor": 12, "image_network": 17, "text_classifier": 7}
    assert dict(PRESETS["quick"]["tabular_classifier"][-1].config) == {"rows": 100, "permutation_rows": 25}


def test_a_given_task_keeps_only_the_audits_made_for_it():
    regression = [e.audit for e in preset_entries("full", "tabular", "regression", segments=True, holdout=True)]
    assert "calibration" not in regression and "conformal" in regression  # conformal makes intervals for regressors
    assert all("regression" in get_audit_class(a).requires.tasks for a in regression)
    images = [e.audit for e in preset_entries("full", "image", "regression")]
    assert images == ["data_quality", "drift", "performance", "champion_challenger", "conformal", "ood",
                      "disagreement", "concordance"]  # no calibration, no network explanations (classifiers only)
    assert [e.audit for e in preset_entries("standard", "text", "regression")] == [
        "data_quality", "performance", "champion_challenger", "conformal"]
    classification = [e.audit for e in preset_entries("quick", "tabular", "classification")]
    assert classification == ["data_quality", "drift", "performance", "calibration", "shap"]


def test_task_auto_plans_the_union_and_leaves_the_rest_to_the_requirements():
    auto = [e.audit for e in preset_entries("full", "tabular", "auto", segments=True, holdout=True)]
    assert auto == ids("full", "tabular_classifier")  # the regressor's audits are all the classifier's too
    assert "calibration" in auto  # SKIPPED by its Requirements if the model turns out a regressor
    for preset in PRESET_NAMES:  # a shared audit is configured alike in both tables, so the union is unambiguous
        classifier = {e.audit: e for e in PRESETS[preset]["tabular_classifier"]}
        assert all(classifier[e.audit] == e for e in PRESETS[preset]["tabular_regressor"])
    assert [e.audit for e in preset_entries("standard", "image", "auto")] == ids("standard", "image_network")[:3] + [
        "champion_challenger", "network_attributions", "occlusion", "calibration", "conformal", "ood", "mc_dropout"]


def test_segments_and_performance_estimation_come_with_what_they_need():
    plain = [e.audit for e in preset_entries("standard", "tabular", "classification")]
    assert "segments" not in plain and "performance_estimation" not in plain
    given = [e.audit for e in preset_entries("standard", "tabular", "classification", segments=True, holdout=True)]
    assert given[3:7] == ["performance_estimation", "champion_challenger", "slices", "segments"]


def test_audits_that_need_a_baseline_or_labels_skip_with_their_reason(classifier_context, regressor_context):
    """A preset holds audits a configuration may not serve (a deployed version, current labels): each SKIPs, saying why."""
    classifier_context = dataclasses.replace(classifier_context, baseline=None, baseline_note="model.baseline_alias is null")
    planned = {p.id: p for p in build_entries(expand("full", [], "tabular", "auto", segments=False, holdout=False))}
    reasons = {name: planned[name].audit.skip_reason(classifier_context) for name in ("champion_challenger", "explanation_drift")}
    assert all(reason and reason.startswith("no ") and "compare with" in reason for reason in reasons.values()), reasons
    assert "classification" in planned["calibration"].audit.skip_reason(regressor_context)


def test_overrides_merge_into_the_preset_add_and_remove(tmp_path):
    loaded = load(tmp_path, """\
        model: {task: classification}
        plan: quick
        audits:
          - audit: shap
            config: {rows: 7}                     # over quick's {rows: 100, permutation_rows: 25}
            sample_rows: 500
            time_limit_s: 60
            thresholds: [{metric: shap.additivity_relative_error, max: 0.01}]
          - audit: lime                           # not in quick: added
            config: {rows: 3}
          - {audit: drift, enabled: false}        # removed
          - {audit: shap, id: shap_wide}          # another id: a second shap, with shap's own defaults
          - audit: performance                    # in quick: only what it sets changes (nothing)
        """)
    assert loaded.preset == "quick"
    assert [p.id for p in loaded.plan] == ["data_quality", "performance", "calibration", "shap", "lime", "shap_wide"]
    plan = {p.id: p for p in loaded.plan}
    assert (plan["shap"].audit.config.rows, plan["shap"].audit.config.permutation_rows) == (7, 25)
    assert (plan["shap"].sample_rows, plan["shap"].time_limit_s) == (500, 60)
    assert [(t.metric, t.max) for t in plan["shap"].thresholds] == [("shap.additivity_relative_error", 0.01)]
    assert plan["lime"].audit.config.rows == 3
    assert (plan["shap_wide"].audit.config.rows, plan["shap_wide"].audit.config.permutation_rows) == (200, 50)
    assert plan["performance"].time_limit_s == 3600 and plan["performance"].sample_rows == 20_000


def test_an_empty_override_list_is_the_preset_itself(tmp_path):
    bare = load(tmp_path, "plan: standard\n", "a.yaml")
    listed = load(tmp_path, "plan: standard\naudits: []\n", "b.yaml")
    assert [p.id for p in bare.plan] == [p.id for p in listed.plan] == [e.audit for e in preset_entries("standard", "tabular", "auto")]
    assert bare.config_hash == listed.config_hash


def test_override_problems_are_reported_together_each_at_its_entry(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, """\
            model: {task: classification}
            plan: quick
            audits:
              - {audit: shap, config: {rowz: 7}}
              - {audit: slices, enabled: false}
              - {audit: lime, id: shap}
              - {audit: drift, enabled: false, config: {alpha: 0.1}}
              - {audit: lime, id: calibration}
            """)
    lines = str(info.value).splitlines()[1:-1]
    assert [line.strip().split(":")[0] for line in lines] == [
        "audits[0].config.rowz", "audits[1].enabled", "audits[2].id", "audits[3].enabled", "audits[4].id"]
    assert "the quick preset plans no audit 'slices' for this model" in lines[1]
    assert "two entries under audits: share the id 'shap'" in lines[2]
    assert "'calibration' is the id of the quick preset's calibration audit; give this lime entry another id" in lines[4]


@pytest.mark.parametrize("audits", ["", "audits: []\n"], ids=["missing", "empty"])
def test_neither_plan_nor_audits_is_one_clear_error_naming_both(tmp_path, audits):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, audits)
    problems = str(info.value).splitlines()[1:-1]
    assert len(problems) == 1
    assert problems[0].strip() == ("audits: no audits to run: list them under audits: (at least one, e.g. "
                                   "'- audit: performance'), or name a preset with plan: quick | standard | full")


def test_an_unknown_preset_is_one_clear_error_listing_the_three(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "plan: thorough\n")
    problems = str(info.value).splitlines()[1:-1]
    assert len(problems) == 1 and problems[0].strip().startswith(
        "plan: unknown preset 'thorough'; the presets are quick, standard, full")
    with pytest.raises(UnknownPresetError, match="the presets are quick, standard, full"):
        describe_preset("thorough")
    with pytest.raises(UnknownPresetError):
        expand("Quick", [], "tabular", "auto")


def test_without_a_plan_the_audits_are_planned_and_hashed_as_before(tmp_path):
    loaded = load(tmp_path, "audits: [{audit: shap, config: {rows: 5}}, {audit: drift}]\n")
    assert loaded.preset is None and [p.id for p in loaded.plan] == ["shap", "drift"]
    # the hash as computed before presets existed: the settings' dump, which had neither plan nor enabled
    before = loaded.settings.model_dump(mode="json", exclude={"plan"})
    before["audits"] = [{k: v for k, v in a.items() if k != "enabled"} for a in before["audits"]]
    canonical = json.dumps(before, sort_keys=True, separators=(",", ":"))
    assert loaded.config_hash == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    with pytest.raises(ConfigError, match=r"audits\[1\]\.enabled: enabled: false removes an audit of a preset"):
        load(tmp_path, "audits: [{audit: shap}, {audit: drift, enabled: false}]\n", "b.yaml")
    with pytest.raises(PlanError, match=r"audits\[0\]\.enabled"):
        build_entries([(("audits", 0), AuditEntry(audit="shap", enabled=False))])


def test_the_hash_sees_the_expanded_plan(tmp_path, monkeypatch):
    quick = load(tmp_path, "plan: quick\n", "q.yaml")
    assert quick.config_hash != load(tmp_path, "plan: standard\n", "s.yaml").config_hash
    path = tmp_path / "i.yaml"
    path.write_text(BASE.replace("c.csv}", "c.csv, modality: image}") + "plan: quick\n")
    assert quick.config_hash != load_settings(path).config_hash
    names = ["data_quality", "drift", "performance", "calibration", "shap"]
    listed = load(tmp_path, "audits: [" + ", ".join(f"{{audit: {a}}}" for a in names) + "]\n", "l.yaml")
    assert listed.config_hash != quick.config_hash  # the preset's name and its shap rows are part of it
    classifier = PRESETS["quick"]["tabular_classifier"]
    assert classifier[-1].audit == "shap"
    changed = {**PRESETS["quick"], "tabular_classifier": (*classifier[:-1], PresetEntry("shap", {"rows": 50}))}
    monkeypatch.setitem(PRESETS, "quick", changed)  # the table changes under an unchanged file
    again = load(tmp_path, "plan: quick\n", "q.yaml")
    assert again.config_hash != quick.config_hash and again.plan[-1].audit.config.rows == 50


def test_describe_preset_lists_each_kind_with_its_configuration():
    described = describe_preset("quick")
    assert list(described) == list(KINDS)
    shap = [e for e in described["tabular_classifier"] if e.audit == "shap"]
    assert [(e.audit, dict(e.config), e.needs) for e in shap] == [("shap", {"rows": 100, "permutation_rows": 25}, None)]
    assert [e.audit for e in described["text_classifier"]] == ["data_quality", "performance", "performance_estimation",
                                                               "calibration", "text_explanations"]
    text = format_preset("standard")
    assert "  network on images (image_network):" in text and "    segments (with data.segments)" in text
    assert "    performance_estimation (with data.holdout)" in text
    assert "    shap {rows: 100, permutation_rows: 25}" in format_preset("quick")


def test_the_command_lists_a_preset_and_refuses_an_unknown_one():
    """`auditlens audits --preset NAME` prints format_preset's text; an unknown name is one error naming the three."""
    from typer.testing import CliRunner

    from auditlens.cli import app

    shown = CliRunner().invoke(app, ["audits", "--preset", "quick"])
    assert shown.exit_code == 0 and shown.stdout.strip() == format_preset("quick").strip()
    refused = CliRunner().invoke(app, ["audits", "--preset", "thorough"])
    assert refused.exit_code == 2 and "unknown preset 'thorough'; the presets are quick, standard, full" in refused.output


def test_the_readmes_six_line_configuration_is_valid_and_six_lines(tmp_path):
    """The README's own-model section starts from this file: it must hold as written."""
    import re
    from pathlib import Path

    import pandas as pd

    from tasks.adapters.settings import load_settings

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"The smallest configuration is six lines:\n\n```yaml\n(.*?)```", readme, re.S).group(1)
    assert len(block.strip().splitlines()) == 6
    frame = pd.DataFrame({"x": [0.1, 0.2, 0.3], "label": [0, 1, 0]})
    for name in ("train.csv", "this_week.csv"):
        frame.to_csv(tmp_path / name, index=False)
    (tmp_path / "audit.yaml").write_text(block, encoding="utf-8")
    loaded = load_settings(tmp_path / "audit.yaml")
    assert loaded.preset == "standard" and {"data_quality", "drift", "performance", "shap"} <= {p.id for p in loaded.plan}
