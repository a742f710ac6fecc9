"""Presets: named plans (quick, standard, full) that expand per kind of model, so that a configuration can say
``plan: standard`` instead of listing every audit (as Evidently's DataDriftPreset or Deepchecks' full_suite do).

    plan: standard
    audits:                                  # optional beside a preset: each entry overrides or adds
      - audit: shap                          # in the preset: its config keys go over the preset's, the rest replace
        config: {rows: 500}
      - audit: lime                          # not in the preset: added
      - {audit: slices, enabled: false}      # in the preset: removed

The kind of model comes from ``data.modality`` and ``model.task``. With ``task: auto`` the model is not known while
the configuration loads: a tabular plan is then the union of the classifier's and the regressor's, and an audit that
does not apply is SKIPPED by its own Requirements when the audit runs, as for any listed audit. With the task given,
only the audits whose Requirements take that task and modality are planned.

Pure data and functions: configuration in, plan entries out (the registry is read only for the audits' Requirements).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from audits.core.plan import AuditEntry, AuditSpec, PlanError

PRESET_NAMES = ("quick", "standard", "full")
Kind = Literal["tabular_classifier", "tabular_regressor", "image_network", "text_classifier"]
KINDS: tuple[Kind, ...] = ("tabular_classifier", "tabular_regressor", "image_network", "text_classifier")
KIND_LABELS: dict[Kind, str] = {"tabular_classifier": "tabular classifier", "tabular_regressor": "tabular regressor",
                                "image_network": "network on images", "text_classifier": "text classifier"}

# what a conditional entry needs from the configuration: without it the audit would run on something it must not
# (performance_estimation fitted on the training data, whose probabilities are in-sample) or only say it has nothing
# to do (segments without segment columns)
Needs = Literal["data.holdout", "data.segments"]
HOLDOUT: Needs = "data.holdout"
SEGMENTS: Needs = "data.segments"


@dataclass(frozen=True)
class PresetEntry:
    """One audit of a preset: the configuration the preset sets ({}: the audit's defaults), and what the
    configuration must give for it to be planned (None: always)."""

    audit: str
    config: Mapping[str, Any] = field(default_factory=dict)
    needs: Needs | None = None

    def describe(self) -> str:
        """e.g. ``shap {rows: 100}`` or ``segments (with data.segments)``."""
        config = ", ".join(f"{key}: {value}" for key, value in self.config.items())
        return self.audit + (f" {{{config}}}" if config else "") + (f" (with {self.needs})" if self.needs else "")


def use(audit: str, needs: Needs | None = None, **config: Any) -> PresetEntry:
    return PresetEntry(audit, config, needs)


# Each preset, per kind of model: its audits in the order they are planned, with the configuration the preset sets.
#   quick:    fast and friendly to data without labels (the label-hungry ones SKIP with their reason): about 13 s of
#             the audits' typical_cost_s on 20,000 rows a side, one after another (tabular classifier)
#   standard: what a reviewer of a release wants: quick, and the deployed version compared, weak slices and
#             segments, explanations checked against each other, unfamiliar rows, prediction sets
#             (about 27 s typical, tabular classifier)
#   full:     every audit that applies to the kind (about 43 s typical on tabular data; on images, disagreement
#             retrains the network ten times)
# champion_challenger and explanation_drift SKIP with their reason when there is no deployed version to compare with
# (model.baseline_alias, or the audited version is the deployed one); audits that need labels SKIP without them.
def tabular(*entries: PresetEntry) -> dict[Kind, tuple[PresetEntry, ...]]:
    """A tabular preset for both tasks: the classifier's entries, and the regressor's the same without calibration
    (the one audit of these lists made for a classifier's probabilities alone)."""
    return {"tabular_classifier": entries,
            "tabular_regressor": tuple(entry for entry in entries if entry.audit != "calibration")}


# text: every audit made for it is in standard already, so full holds the same
TEXT_STANDARD = (
    use("data_quality"), use("performance"), use("performance_estimation", HOLDOUT),
    use("champion_challenger"), use("segments", SEGMENTS),
    use("text_explanations"),
    use("calibration"), use("conformal"),
)

PRESETS: dict[str, dict[Kind, tuple[PresetEntry, ...]]] = {
    "quick": {
        **tabular(
            use("data_quality"), use("drift"), use("performance"), use("performance_estimation", HOLDOUT),
            use("calibration"), use("shap", rows=100, permutation_rows=25),
        ),
        "image_network": (
            use("data_quality"), use("drift"), use("performance"), use("performance_estimation", HOLDOUT),
            use("calibration"), use("network_attributions", rows=10),
        ),
        "text_classifier": (
            use("data_quality"), use("performance"), use("performance_estimation", HOLDOUT),
            use("calibration"), use("text_explanations"),
        ),
    },
    "standard": {
        **tabular(
            use("data_quality"), use("drift"), use("performance"), use("performance_estimation", HOLDOUT),
            use("champion_challenger"), use("slices"), use("segments", SEGMENTS),
            use("shap"), use("explanation_agreement"), use("importance"), use("explanation_drift"),
            use("calibration"), use("conformal"), use("ood"),
        ),
        "image_network": (
            use("data_quality"), use("drift"), use("performance"), use("performance_estimation", HOLDOUT),
            use("champion_challenger"), use("segments", SEGMENTS),
            use("network_attributions"), use("occlusion"),
            use("calibration"), use("conformal"), use("ood"), use("mc_dropout"),
        ),
        "text_classifier": TEXT_STANDARD,
    },
    "full": {
        **tabular(
            use("data_quality"), use("drift"), use("performance"), use("performance_estimation", HOLDOUT),
            use("champion_challenger"), use("slices"), use("segments", SEGMENTS),
            use("shap"), use("explanation_agreement"), use("importance"), use("explanation_drift"),
            use("lime"), use("prototypes"), use("sanity_checks"), use("explanation_stability"),
            use("calibration"), use("conformal"), use("ood"), use("disagreement"), use("concordance"),
            use("projections"),
        ),
        "image_network": (
            use("data_quality"), use("drift"), use("performance"), use("performance_estimation", HOLDOUT),
            use("champion_challenger"), use("segments", SEGMENTS),
            use("network_attributions"), use("occlusion"), use("network_sanity"), use("embedding_prototypes"),
            use("calibration"), use("conformal"), use("ood"), use("mc_dropout"), use("autoencoder_ood"),
            use("disagreement"), use("concordance"),
            use("embedding_projections"),
        ),
        "text_classifier": TEXT_STANDARD,
    },
}


class UnknownPresetError(LookupError):
    def __init__(self, name: object) -> None:
        super().__init__(f"unknown preset {name!r}; the presets are {', '.join(PRESET_NAMES)} "
                         "(`auditlens audits --preset NAME` lists what one holds)")
        self.name = name


def preset_table(name: str) -> dict[Kind, tuple[PresetEntry, ...]]:
    if name not in PRESETS:
        raise UnknownPresetError(name)
    return PRESETS[name]


def kinds_for(modality: str, task: str) -> tuple[Kind, ...]:
    """The kinds whose audits a model of this modality and task gets: both tabular ones while the task is 'auto'."""
    if modality == "image":
        return ("image_network",)
    if modality == "text":
        return ("text_classifier",)
    return {"classification": ("tabular_classifier",), "regression": ("tabular_regressor",)}.get(
        task, ("tabular_classifier", "tabular_regressor"))


def describe_preset(name: str) -> dict[Kind, list[PresetEntry]]:
    """What preset ``name`` holds for each kind of model (for ``auditlens audits --preset NAME``): each entry's
    ``audit``, its ``config`` (the keys the preset sets; {} for the audit's defaults), and ``needs`` (the key of the
    configuration it is planned with, e.g. 'data.segments'; None: always). Raises UnknownPresetError."""
    return {kind: list(entries) for kind, entries in preset_table(name).items()}


def format_preset(name: str) -> str:
    """``describe_preset`` as text for a terminal, one kind a paragraph."""
    lines = [f"preset {name} (plan: {name}); entries under audits: override these, add to them or remove one "
             "(enabled: false)"]
    for kind, entries in describe_preset(name).items():
        lines.append(f"  {KIND_LABELS[kind]} ({kind}):")
        lines.extend(f"    {entry.describe()}" for entry in entries)
    return "\n".join(lines)


def applies(audit: str, modality: str, task: str) -> bool:
    """Whether the audit's Requirements take this modality and task ('auto': any task)."""
    from audits.core.registry import get_audit_class

    requires = get_audit_class(audit).requires
    return modality in requires.modalities and (task == "auto" or task in requires.tasks)


def preset_entries(name: str, modality: str, task: str, *, segments: bool = False,
                   holdout: bool = False) -> list[PresetEntry]:
    """Preset ``name`` for a model of this modality and task ('auto': the union of the kinds it may be), without the
    entries whose needs the configuration does not give (``segments``: data.segments names columns; ``holdout``:
    data.holdout is set). Raises UnknownPresetError."""
    table = preset_table(name)
    given = {SEGMENTS: segments, HOLDOUT: holdout}
    chosen: dict[str, PresetEntry] = {}
    for kind in kinds_for(modality, task):
        for entry in table[kind]:
            if entry.audit in chosen or (entry.needs is not None and not given[entry.needs]):
                continue
            if applies(entry.audit, modality, task):
                chosen[entry.audit] = entry
    return list(chosen.values())


Location = tuple[Any, ...]


def expand(name: str, overrides: list[AuditEntry], modality: str, task: str, *, segments: bool = False,
           holdout: bool = False, problems: list[tuple[Location, str]] | None = None) -> list[tuple[Location, AuditSpec]]:
    """The plan entries of preset ``name`` with the configuration's own ``audits:`` entries applied, each with where
    a problem in it is reported. An entry whose id (``id``, else ``audit``) is one of the preset's replaces what it
    sets of that entry's time_limit_s, sample_rows and thresholds, and its config keys go over the preset's config
    (top-level keys; a nested mapping is replaced whole); ``enabled: false`` removes the preset's entry. Any other
    entry is added after the preset's, in its order.

    An entry that cannot apply is left out and its problem appended to ``problems`` when a list is given (so that the
    caller reports it with those of the plan's build), else raised at once as one PlanError listing every problem."""
    base = preset_entries(name, modality, task, segments=segments, holdout=holdout)
    planned: dict[str, tuple[Location, AuditSpec]] = {
        entry.audit: (("plan", entry.audit), AuditSpec(audit=entry.audit, config=dict(entry.config))) for entry in base}
    held = ", ".join(planned) or "no audits"
    added: list[tuple[Location, AuditSpec]] = []
    found: list[tuple[Location, str]] = []
    claimed: set[str] = set()  # ids an entry of audits: has already overridden, removed or added
    for index, entry in enumerate(overrides):
        here, audit_id = ("audits", index), entry.audit_id
        if audit_id in claimed:
            found.append(((*here, "id"), f"two entries under audits: share the id {audit_id!r}; give one of them an 'id'"))
            continue
        claimed.add(audit_id)
        if audit_id not in planned:
            if entry.enabled:
                added.append((here, entry.spec()))
            else:
                found.append(((*here, "enabled"), f"the {name} preset plans no audit {audit_id!r} for this model (it "
                              f"plans {held}): there is nothing to remove; delete this entry"))
            continue
        _, preset_spec = planned[audit_id]
        if entry.audit != preset_spec.audit:
            found.append(((*here, "id"), f"{audit_id!r} is the id of the {name} preset's {preset_spec.audit} audit; "
                          f"give this {entry.audit} entry another id"))
        elif not entry.enabled:
            if entry.model_fields_set - {"audit", "id", "enabled"}:
                found.append(((*here, "enabled"), "enabled: false removes the preset's audit, so its other keys would "
                              "be ignored: remove them, or remove enabled: false"))
            del planned[audit_id]
        else:
            planned[audit_id] = (here, merged(preset_spec, entry))
    if problems is not None:
        problems.extend(found)
    elif found:
        raise PlanError(found)
    return [*planned.values(), *added]


def merged(preset: AuditSpec, override: AuditEntry) -> AuditSpec:
    """``preset`` with what ``override`` sets: its config keys over the preset's, its other keys instead of them."""
    update: dict[str, Any] = {key: getattr(override, key) for key in ("thresholds", "time_limit_s", "sample_rows")
                              if key in override.model_fields_set}
    if "config" in override.model_fields_set:
        update["config"] = {**preset.config, **override.config}
    return preset.model_copy(update=update)  # both validated already: the audit's Config checks the config at build
