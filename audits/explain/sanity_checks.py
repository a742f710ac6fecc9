"""Sanity checks for explanations (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An explanation method that says something about the model must change when the model stops knowing
anything. Two randomisations test that, and each method's explanations of the real and the
randomised models are compared by rank correlation:

- label randomisation: the model is cloned and refitted on the reference rows with their labels
  shuffled (labels unrelated to the features); the reference's own labels when it has them, else the
  model's predicted labels, shuffled all the same;
- cascading model randomisation: the final estimator's learned parameters are replaced by random
  values of the same scale, from the top of the model down (``audits.methods.randomize``): the last
  trees first (leaf values and, unless ``tree_splits: false``, split features and thresholds), the
  output layer of an MLP first, a linear model's coefficients all at once.

Methods: ``shap`` (the shap audit's own explainer choice), ``lime``, and ``feature_variance``, a
deliberately model-independent "explanation" (every row gets the reference variance of each feature's
numeric codes) that exists to show the check failing: its explanation of a randomised model is its
explanation of the real one, rank correlation 1.

Per method, GLOBAL importance (mean |attribution| per original column) is compared by Spearman rank
correlation, and LOCAL |attributions| row by row (the mean of per-row Spearman correlations).
``<method>.max_global_spearman`` is the larger of the label-randomised and the fully model-randomised global
correlations (only those that could be measured; one is undefined when an explanation is constant); the threshold
on it (default: at most 0.8, FAIL for SHAP, WARN for LIME) fails a method whose explanation barely changed. A
similarity an unrelated ranking reaches with probability >= ``alpha`` (the exact permutation distribution up to 8
features, scipy's t approximation above) is no evidence, so a bound crossed there cannot tell: with 5 features an
unrelated ranking reaches 0.5 by chance 22.5 % of the time, so a correlation must be near-perfect there to count as
"unchanged", while with 30 features 0.5 already is. With 3 features or fewer even an identical ranking is common by
chance, and the audit is SKIPPED.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import (
    Artifact,
    Audit,
    AuditConfig,
    AuditContext,
    AuditResult,
    ModelUnderAudit,
    Requirements,
    Threshold,
)
from audits.methods.compare import rowwise, spearman
from audits.methods.frames import FrameFunction, on_columns
from audits.methods.lime_values import lime_attributions
from audits.methods.model_structure import split_pipeline
from audits.methods.randomize import UnsupportedModel, cascade
from audits.methods.shap_values import explain

Method = Literal["shap", "lime", "feature_variance"]


class SanityChecksConfig(AuditConfig):
    methods: tuple[Method, ...] = Field(("shap", "lime"), min_length=1)
    dataset: Literal["current", "reference"] = "current"  # the rows explained
    rows: int = Field(50, ge=1)  # rows explained by SHAP and feature_variance
    background_rows: int = Field(50, ge=1)  # SHAP background, from the reference data
    lime_rows: int = Field(8, ge=1)  # LIME explains the first of those rows only (it is slow)
    lime_samples: int = Field(1000, ge=100)  # LIME's perturbation sample per row
    steps: int = Field(4, ge=1, le=20)  # cascade steps: step k randomises the last ceil(k * units / steps) units
    # a similarity an unrelated ranking reaches with probability >= alpha is no evidence (the threshold's bound on
    # <method>.max_global_spearman then cannot tell)
    alpha: float = Field(0.05, gt=0, lt=1)
    max_refit_rows: int = Field(5000, ge=10)  # reference rows the label-randomised model is refitted on
    tree_splits: bool = True  # trees: randomise split features and thresholds too (False: leaf values only)


@dataclass(frozen=True)
class Comparison:
    global_spearman: float
    local_spearman: float


def compare(original: np.ndarray, randomised: np.ndarray) -> Comparison:
    """Spearman correlation of global importance (mean |a| per feature) and mean per-row Spearman of |a|."""
    original, randomised = np.abs(original), np.abs(randomised)
    per_row = rowwise(spearman, original, randomised)
    local = float(np.mean(per_row[np.isfinite(per_row)])) if np.isfinite(per_row).any() else float("nan")
    return Comparison(spearman(original.mean(axis=0), randomised.mean(axis=0)), local)


def shap_local(context: AuditContext, rows: pd.DataFrame, background: pd.DataFrame, model: ModelUnderAudit) -> tuple[np.ndarray, str]:
    """|SHAP| per row and original column, summed over the explained outputs (multiclass: over classes)."""
    attr = explain(context, rows, background, "auto", model=model)
    return on_columns(np.abs(attr.values).sum(axis=2), attr.features, context.features), attr.explainer


def lime_local(context: AuditContext, rows: pd.DataFrame, seed: int, samples: int, model: ModelUnderAudit) -> np.ndarray:
    """|LIME weight| per row and original column, for the class LIME explains (binary: the positive one)."""
    attr = lime_attributions(context, rows, seed, num_samples=samples, model=model)
    return on_columns(np.abs(attr.weights), attr.features, context.features)


def feature_variance_local(context: AuditContext, rows: pd.DataFrame) -> np.ndarray:
    """The model-independent baseline: every row 'explained' by each feature's variance on the reference."""
    reference = context.reference.X
    codes = FrameFunction(None, reference).encode(reference)  # categories as codes, like the explainers see them
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-missing column has no variance: NaN -> 0
        variance = np.nan_to_num(np.nanvar(codes, axis=0))
    return np.tile(variance, (len(rows), 1))


def reference_positions(context: AuditContext, max_rows: int) -> np.ndarray:
    """Positions of at most ``max_rows`` reference rows (in order), for refits and random tree splits."""
    positions = np.arange(len(context.reference))
    if len(positions) > max_rows:
        positions = np.sort(context.rng("sanity_checks.refit_rows").choice(positions, size=max_rows, replace=False))
    return positions


def label_randomised(context: AuditContext, max_rows: int) -> tuple[Any, str]:
    """A clone of the audited model refitted on reference rows with shuffled labels, and where the labels came from."""
    from sklearn.base import clone

    reference = context.reference
    if reference.labelled:
        labels, source = reference.y.to_numpy(), "reference labels, shuffled"
    else:
        labels, source = reference.predictions.labels, "the model's predicted labels on the reference (unlabelled), shuffled"
    positions = reference_positions(context, max_rows)
    X = reference.X.iloc[positions]
    y = context.rng("sanity_checks.label_shuffle").permutation(labels[positions])
    model = clone(context.model.estimator)
    unset = {k: context.random_state(f"sanity_checks.refit.{k}") for k, v in model.get_params(deep=True).items()
             if k.split("__")[-1] == "random_state" and v is None}
    model.set_params(**unset)  # a refit we can repeat byte for byte
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings are expected on labels that mean nothing
        model.fit(X, pd.Series(y, index=X.index, name=context.target))
    return model, f"{source} ({len(positions)} rows)"


def _outputs(model: ModelUnderAudit, X: pd.DataFrame) -> np.ndarray:
    if model.predict_proba is not None:
        return np.asarray(model.predict_proba(X), dtype=float)
    return np.asarray(model.predict(X), dtype=float).reshape(len(X), -1)


def changed_share(original: ModelUnderAudit, randomised: ModelUnderAudit, X: pd.DataFrame) -> float:
    """Share of rows whose model output (probabilities, else predictions) changed under randomisation."""
    a, b = _outputs(original, X), _outputs(randomised, X)
    if a.shape != b.shape:  # a refit that lost a class: every row's output vector changed
        return 1.0
    return float((~np.isclose(a, b, rtol=1e-9, atol=1e-12)).any(axis=1).mean())


def run_checks(context: AuditContext, cfg: SanityChecksConfig) -> tuple[dict[str, float], pd.DataFrame, dict[str, str]]:
    """The sanity checks' metrics (local keys), the table of every comparison, and notes for ``info``."""
    source = context.dataset(cfg.dataset).X
    rows = source.sample(n=min(cfg.rows, len(source)), random_state=context.random_state("sanity_checks.rows"))
    lime_rows = rows.iloc[: cfg.lime_rows]
    background = context.reference.X.sample(
        n=min(cfg.background_rows, len(context.reference)), random_state=context.random_state("sanity_checks.background")
    )
    lime_seed = context.random_state("sanity_checks.lime")  # one seed for every model: only the model differs
    info: dict[str, str] = {}
    configured = list(dict.fromkeys(cfg.methods))
    methods = list(configured)
    if "lime" in methods and context.task == "classification" and context.model.predict_proba is None:
        info["lime"] = "not run (metrics NaN): LIME explains classifiers through predict_proba, which this model lacks"
        methods.remove("lime")

    def explain_all(model: ModelUnderAudit) -> dict[str, np.ndarray]:
        out = {}
        for method in methods:
            if method == "shap":
                out[method], explainer = shap_local(context, rows, background, model)
                info.setdefault("shap_explainer", explainer)
            elif method == "lime":
                out[method] = lime_local(context, lime_rows, lime_seed, cfg.lime_samples, model)
            else:
                out[method] = feature_variance_local(context, rows)
        return out

    def compared(explained: dict[str, np.ndarray] | None) -> dict[str, Comparison]:
        undefined = Comparison(float("nan"), float("nan"))
        return {m: compare(original[m], explained[m]) if explained and m in methods else undefined for m in configured}

    original = explain_all(context.model)
    label_estimator, info["label_randomisation"] = label_randomised(context, cfg.max_refit_rows)
    label_model = ModelUnderAudit.from_estimator(label_estimator)
    by_label = compared(explain_all(label_model))

    try:
        split_data = context.reference.X.iloc[reference_positions(context, cfg.max_refit_rows)] if cfg.tree_splits else None
        steps = cascade(context.model.estimator, cfg.steps, context.rng("sanity_checks.model_randomisation"), split_data)
        info["model_randomisation"] = f"{type(split_pipeline(context.model.estimator)[1]).__name__}: {steps[0].method}"
    except UnsupportedModel as exc:
        info["model_randomisation"] = f"skipped (metrics NaN): {exc}"
        steps = []
    explained_by_units: dict[int, dict[str, np.ndarray]] = {}  # steps with the same unit count share a model
    by_step = []
    for step in steps:
        if step.randomised not in explained_by_units:
            explained_by_units[step.randomised] = explain_all(ModelUnderAudit.from_estimator(step.estimator))
        by_step.append(compared(explained_by_units[step.randomised]))
    if not steps:  # same keys for every model of a plan: what could not be measured is NaN
        by_step = [compared(None)] * cfg.steps

    metrics: dict[str, float] = {
        "rows_explained": float(len(rows)),
        "label_randomisation.changed_predictions": changed_share(context.model, label_model, rows),
        "model_randomisation.changed_predictions": changed_share(
            context.model, ModelUnderAudit.from_estimator(steps[-1].estimator), rows) if steps else float("nan"),
    }
    records: list[dict[str, Any]] = []
    for k in range(1, cfg.steps + 1):
        metrics[f"model_randomisation.step_{k}.share_randomised"] = steps[k - 1].share if steps else float("nan")
    for method in configured:
        label_c, full_c = by_label[method], by_step[-1][method]
        metrics[f"{method}.label_randomisation.global_spearman"] = label_c.global_spearman
        metrics[f"{method}.label_randomisation.local_spearman"] = label_c.local_spearman
        records.append(_record(method, LABEL, "", 1.0, "whole model refitted", label_c))
        for k, comparisons in enumerate(by_step, start=1):
            c = comparisons[method]
            metrics[f"{method}.model_randomisation.step_{k}.global_spearman"] = c.global_spearman
            metrics[f"{method}.model_randomisation.step_{k}.local_spearman"] = c.local_spearman
            if steps:
                records.append(_record(method, CASCADE, str(k), steps[k - 1].share, steps[k - 1].description, c))
        metrics[f"{method}.model_randomisation.global_spearman"] = full_c.global_spearman
        metrics[f"{method}.model_randomisation.local_spearman"] = full_c.local_spearman
        measured = [c for c in (label_c.global_spearman, full_c.global_spearman) if math.isfinite(c)]
        metrics[f"{method}.max_global_spearman"] = max(measured) if measured else float("nan")

    table = pd.DataFrame.from_records(records, columns=["method", "randomisation", "step", "share_randomised", "randomised", "global_spearman", "local_spearman"])
    info.update({
        "rows": f"{len(rows)} rows of {cfg.dataset} data (LIME: the first {len(lime_rows)}, {cfg.lime_samples} samples each, one seed for every model)",
        "pass_rule": f"<method>.max_global_spearman is the larger of the label-randomised and fully model-randomised "
                     f"global Spearman correlations; its threshold (default: at most 0.8) fails a method whose "
                     f"explanation barely changed, unless an unrelated ranking of {len(context.features)} features reaches "
                     f"it with probability >= {cfg.alpha:g} (then the check cannot tell)",
        "methods": ", ".join(configured),
    })
    if "feature_variance" in configured:
        info["feature_variance"] = "a model-independent baseline (reference variance of each feature's codes): it must fail"
    info["chance"] = _chance_note(len(context.features), cfg.alpha)
    return metrics, table, info


class SanityChecksAudit(Audit):
    """Do the explanations change when the model's labels or parameters are randomised?"""

    name = "sanity_checks"
    question = "behaviour"
    typical_cost_s = 2.5  # for the scheduler (audits.core.audit)
    metric_keys = (
        "rows_explained", "{label,model}_randomisation.changed_predictions",
        "model_randomisation.step_*.share_randomised",
        "{shap,lime,feature_variance}.{label,model}_randomisation.{global,local}_spearman",
        "{shap,lime,feature_variance}.model_randomisation.step_*.{global,local}_spearman",
        "{shap,lime,feature_variance}.max_global_spearman",
    )
    Config = SanityChecksConfig
    requires = Requirements(estimator=True)  # cloning, refitting and randomising need the native model
    description = "Adebayo et al. sanity checks: explanations of label- and parameter-randomised models against the real one."
    default_thresholds = (
        # the audit's main explanation does not depend on what the model learned: FAIL
        # (0.5 flagged faithful explanations of healthy trees, whose noise-fitted clones lean on the same features)
        Threshold(metric="shap.max_global_spearman", max=0.8, severity="fail"),
        Threshold(metric="lime.max_global_spearman", max=0.8, severity="warn"),
    )

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        n, alpha = len(context.features), self.config.alpha
        if chance(1.0, n) >= alpha:  # even a perfectly unchanged ranking is unremarkable: the check could never fail
            return (f"cannot tell with {n} feature(s): an unrelated ranking matches the real one exactly with probability "
                    f"{chance(1.0, n):.3f} >= alpha {alpha:g}, so an explanation that ignores the model would pass")
        return None

    def compute(self, context: AuditContext) -> AuditResult:
        metrics, table, info = run_checks(context, self.config)
        band = (-1.0, chance_band(len(context.features), self.config.alpha))
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            chance={f"{method}.max_global_spearman": band for method in self.config.methods},
            artifacts=(
                Artifact.table("randomisation", table, "Rank correlation between explanations of the real and the randomised models"),
                _cascade_figure(table, list(dict.fromkeys(self.config.methods)), DEFAULT_BOUND),
            ),
            info=info,
        )


LABEL, CASCADE = "labels shuffled, model refitted", "cascading model randomisation"
DEFAULT_BOUND = 0.8  # the default thresholds' bound, drawn on the cascade figure


def chance(rho: float, n_features: int) -> float:
    """Probability that a ranking unrelated to the real one has a Spearman correlation >= ``rho`` (no ties)."""
    if n_features < 3:
        return 1.0  # too coarse to test anything
    if n_features <= 8:  # exact: every permutation of the ranks
        return float((_exact_null(n_features) >= rho - 1e-12).mean())
    from scipy.stats import t  # scipy's t approximation of Spearman's null distribution

    r = min(rho, 1 - 1e-12)
    return float(t.sf(r * np.sqrt((n_features - 2) / (1 - r * r)), n_features - 2))


@functools.cache
def _exact_null(n_features: int) -> np.ndarray:
    """Spearman's correlation of every permutation of ``n_features`` ranks with the identity (8! = 40,320 at most)."""
    ranks = np.array(list(itertools.permutations(range(n_features))))
    return 1 - 6 * ((ranks - np.arange(n_features)) ** 2).sum(axis=1) / (n_features * (n_features**2 - 1))


def chance_band(n_features: int, alpha: float) -> float:
    """The largest rank correlation an unrelated ranking of ``n_features`` reaches with probability >= ``alpha``: a
    similarity up to it is no evidence that an explanation stayed the same."""
    if n_features < 3:
        return 1.0
    if n_features <= 8:  # the exact null's values; chance() steps at each of them
        return float(max(v for v in np.unique(_exact_null(n_features)) if chance(v, n_features) >= alpha))
    from scipy.optimize import brentq

    return float(brentq(lambda r: chance(r, n_features) - alpha, -0.999999, 0.999999))


def _chance_note(n_features: int, alpha: float) -> str:
    return (f"with {n_features} features an unrelated ranking reaches a rank correlation up to "
            f"{chance_band(n_features, alpha):.3f} with probability >= {alpha:g}")


def _record(method: str, randomisation: str, step: str, share: float, randomised: str, c: Comparison) -> dict[str, Any]:
    return {"method": method, "randomisation": randomisation, "step": step, "share_randomised": share,
            "randomised": randomised, "global_spearman": c.global_spearman, "local_spearman": c.local_spearman}


def _cascade_figure(table: pd.DataFrame, methods: list[str], max_correlation: float) -> Artifact:
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    label_x = 1.15
    for method in methods:
        rows = table[table["method"] == method]
        cascade_rows = rows[rows["randomisation"] == CASCADE].drop_duplicates("share_randomised")
        x = [0.0, *cascade_rows["share_randomised"].tolist()]
        y = [1.0, *cascade_rows["global_spearman"].tolist()]
        ax.plot(x, y, marker="o", color=colours[method], label=f"{method}: cascading model randomisation")
        label_rows = rows[rows["randomisation"] == LABEL]
        ax.scatter([label_x] * len(label_rows), label_rows["global_spearman"], marker="*", s=160, color=colours[method],
                   label=f"{method}: labels shuffled")
    ax.axhline(max_correlation, color="red", linestyle="--", linewidth=1, label=f"default threshold {max_correlation:g}")
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0, label_x], ["0", "25%", "50%", "75%", "100%", "labels\nshuffled"])
    ax.set_xlim(-0.05, label_x + 0.1)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("share of the model randomised (from the top: last trees, output layer)")
    ax.set_ylabel("Spearman correlation of global importance\n(real model vs randomised)")
    ax.set_title("Sanity checks: explanations should decorrelate from the real model's")
    ax.legend(fontsize=7, loc="lower left")
    return Artifact.figure("cascade", fig, "Cascading randomisation: global rank correlation per method")
