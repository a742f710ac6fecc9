"""How much do explanations move when nothing about the model changes, only the explainer's own
random choices: SHAP's background sample, LIME's seed?

- SHAP: the same rows are explained with ``resamples`` backgrounds, each a bootstrap sample (with
  replacement) of ``background_rows`` reference rows. For tree models the shap audit's own explainer
  (path-dependent TreeExplainer) uses no background: it is deterministic, reported as
  ``shap.background_free = 1``, and what is measured instead is the interventional TreeExplainer
  (``feature_perturbation="interventional"``, the same model output, in the model's transformed space,
  summed back to original columns), the variant a background would feed, so a reviewer sees how much
  background choice would matter. Linear and model-agnostic explainers use the background already:
  the shap audit's own explainer is measured.
- LIME: the same rows are explained with ``lime_seeds`` seeds.

Metrics per method: ``relative_std`` = mean over rows, features (and outputs) of the standard
deviation (ddof=1) of the attribution across resamples, divided by the mean |attribution| (+1e-12):
the typical wobble as a share of the typical attribution (a ratio of means, so features with
near-zero attributions cannot blow it up); ``topk_overlap_mean`` = the share of each row's k most
important features (by |attribution|) that two resamples agree on, averaged over rows and over all
pairs of resamples (1: the top-k never changes).
"""

from __future__ import annotations

import itertools
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, ModelUnderAudit, Threshold
from audits.methods.compare import rowwise, topk_overlap
from audits.methods.frames import on_columns
from audits.methods.lime_values import lime_attributions
from audits.methods.model_structure import dense, probe_feature_map, split_pipeline, transformed_names
from audits.methods.shap_values import choose_explainer, explain, unexplainable

EPS = 1e-12


class StabilityConfig(AuditConfig):
    methods: tuple[Literal["shap", "lime"], ...] = Field(("shap", "lime"), min_length=1)
    dataset: Literal["current", "reference"] = "current"  # the rows explained
    rows: int = Field(50, ge=1)  # rows explained by SHAP
    background_rows: int = Field(50, ge=1)  # size of each bootstrap background
    resamples: int = Field(5, ge=2)  # SHAP backgrounds
    lime_rows: int = Field(8, ge=1)  # LIME explains the first of those rows only (it is slow)
    lime_seeds: int = Field(3, ge=2)
    lime_samples: int = Field(1000, ge=100)  # LIME's perturbation sample per row
    top_k: int = Field(3, ge=1)
    exact_max_features: int = Field(8, ge=1, le=15)  # as the shap audit: exact Shapley values up to this many features
    max_display: int = Field(10, ge=1)  # features in the boxplots


def stability(runs: np.ndarray, k: int) -> tuple[float, float]:
    """(relative_std, topk_overlap_mean) of attributions ``runs`` (resamples, rows, features[, outputs])."""
    runs = np.asarray(runs, dtype=float).reshape(*np.shape(runs)[:3], -1)
    relative_std = float(runs.std(axis=0, ddof=1).mean() / (np.abs(runs).mean() + EPS))
    magnitude = np.abs(runs).sum(axis=3)
    if k >= magnitude.shape[2]:  # the top k are all the features in every resample: the overlap is 1 whatever they say
        return relative_std, float("nan")
    pairs = itertools.combinations(range(len(runs)), 2)
    overlap = float(np.mean([rowwise(topk_overlap, magnitude[a], magnitude[b], k=k).mean() for a, b in pairs]))
    return relative_std, overlap


def interventional_tree_values(model: ModelUnderAudit, rows: pd.DataFrame, background: pd.DataFrame, feature_map: Any) -> tuple[np.ndarray, list[str]]:
    """Interventional TreeExplainer values (rows, features, outputs) of the final estimator in its input
    space with ``background``, summed back to original columns through ``feature_map`` (needed with a Pipeline)."""
    import shap

    preprocessor, final = split_pipeline(model.estimator)
    Xt, Bt = (dense(preprocessor.transform(frame) if preprocessor is not None else frame) for frame in (rows, background))
    explainer = shap.TreeExplainer(final, data=Bt, feature_perturbation="interventional")
    values = np.asarray(explainer(Xt, check_additivity=False).values, dtype=float)
    values = values[:, :, None] if values.ndim == 2 else values
    if model.task == "classification" and len(model.classes) == 2 and values.shape[2] == 2:
        values = values[:, :, 1:]  # binary probabilities: the positive class, as the shap audit reports it
    if feature_map is not None:
        return feature_map.aggregate(values), feature_map.columns
    return values, [str(c) for c in rows.columns]


def shap_runs(context: AuditContext, rows: pd.DataFrame, backgrounds: list[pd.DataFrame], exact_max_features: int = 8) -> tuple[np.ndarray, bool, str]:
    """SHAP values of ``rows`` with each background: (resamples, rows, original columns, outputs),
    whether the shap audit's own explainer is background-free, and which explainer was measured."""
    kind = choose_explainer(context.model.estimator, "auto", len(context.features), exact_max_features)
    runs = []
    if kind == "tree":
        preprocessor, _ = split_pipeline(context.model.estimator)
        feature_map = None
        if preprocessor is not None:
            pool = pd.concat(backgrounds)
            names = transformed_names(preprocessor, dense(preprocessor.transform(pool.iloc[:1])).shape[1])
            feature_map = probe_feature_map(preprocessor, pool, names, context.rng("explanation_stability.feature_map"))
        for background in backgrounds:
            values, names = interventional_tree_values(context.model, rows, background, feature_map)
            runs.append(on_columns(values, names, context.features))
        measured = ("interventional TreeExplainer (feature_perturbation='interventional') on the final estimator, "
                    "with each background; the shap audit's own path-dependent TreeExplainer uses no background")
        return np.stack(runs), True, measured
    for background in backgrounds:
        attr = explain(context, rows, background, "auto", exact_max_features=exact_max_features)
        runs.append(on_columns(attr.values, attr.features, context.features))
    return np.stack(runs), False, f"the shap audit's own explainer ({kind}), with each background"


def lime_runs(context: AuditContext, rows: pd.DataFrame, seeds: list[int], samples: int) -> np.ndarray:
    """LIME weights of ``rows`` with each seed: (seeds, rows, original columns)."""
    runs = []
    for seed in seeds:
        attr = lime_attributions(context, rows, seed, num_samples=samples)
        runs.append(on_columns(attr.weights, attr.features, context.features))
    return np.stack(runs)


class ExplanationStabilityAudit(Audit):
    """Variance of SHAP across background resamples and of LIME across seeds."""

    name = "explanation_stability"
    imports = ("shap",)  # imported when it runs (audits.core.audit)
    question = "behaviour"
    typical_cost_s = 1.5  # for the scheduler (audits.core.audit)
    metric_keys = (
        "{shap,lime}.{relative_std,rows,topk_overlap_mean}", "shap.background_free",
    )
    Config = StabilityConfig
    description = "How much SHAP moves with its background sample and LIME with its seed."
    # Below 0.7 (k=3: fewer than about 2 of a row's top 3 features agree between two seeds), the
    # features a LIME explanation lists first depend on the seed about as much as on the model, so a
    # single LIME explanation should not be read on its own. (With 5 features, two random top-3 sets
    # share 0.6 on average: the bar is just above chance there, and meaningful with more features.)
    default_thresholds = (Threshold(metric="lime.topk_overlap_mean", min=0.7, severity="warn"),)

    def skip_reason(self, context: AuditContext) -> str | None:
        return super().skip_reason(context) or unexplainable(context)

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: StabilityConfig = self.config
        methods = list(dict.fromkeys(cfg.methods))
        source = context.dataset(cfg.dataset).X
        rows = source.sample(n=min(cfg.rows, len(source)), random_state=context.random_state("explanation_stability.rows"))
        reference = context.reference.X
        rng = context.rng("explanation_stability.backgrounds")
        backgrounds = [reference.iloc[rng.integers(0, len(reference), size=cfg.background_rows)] for _ in range(cfg.resamples)]

        metrics: dict[str, float] = {}
        runs: dict[str, np.ndarray] = {}
        info: dict[str, str] = {
            "relative_std": "mean std across resamples (ddof=1) / mean |attribution|",
            "topk_overlap": f"share of each row's top {cfg.top_k} features (by |attribution|) two resamples agree on, mean over rows and pairs",
        }
        if "shap" in methods:
            runs["shap"], background_free, info["shap_measured"] = shap_runs(context, rows, backgrounds, cfg.exact_max_features)
            metrics["shap.background_free"] = float(background_free)
            metrics["shap.rows"] = float(len(rows))
            info["shap_resamples"] = f"{cfg.resamples} backgrounds, each a bootstrap sample of {cfg.background_rows} reference rows; {len(rows)} rows of {cfg.dataset} data"
        if "lime" in methods:
            lime_rows = rows.iloc[: cfg.lime_rows]
            metrics["lime.rows"] = float(len(lime_rows))
            if context.task == "classification" and context.model.predict_proba is None:
                info["lime"] = "not run (metrics NaN): LIME explains classifiers through predict_proba, which this model lacks"
            else:
                seeds = [context.random_state(f"explanation_stability.lime.{i}") for i in range(cfg.lime_seeds)]
                runs["lime"] = lime_runs(context, lime_rows, seeds, cfg.lime_samples)
                info["lime"] = f"{cfg.lime_seeds} seeds, {len(lime_rows)} rows, {cfg.lime_samples} samples per row"
        for method in methods:
            relative_std, overlap = stability(runs[method], cfg.top_k) if method in runs else (float("nan"), float("nan"))
            metrics[f"{method}.relative_std"] = relative_std
            metrics[f"{method}.topk_overlap_mean"] = overlap

        artifacts = [Artifact.table(f"{m}_stability", feature_table(run, context.features), f"{m}: attributions across resamples, per feature")
                     for m, run in runs.items()]
        if runs:
            artifacts.append(_boxplots(runs, context.features, cfg.max_display))
        return AuditResult(audit=self.name, metrics=metrics, artifacts=tuple(artifacts), info=info)


def _importance(run: np.ndarray) -> np.ndarray:
    """Global importance per resample: (resamples, features), mean |attribution| over rows, summed over outputs."""
    run = run.reshape(*run.shape[:3], -1)
    return np.abs(run).sum(axis=3).mean(axis=1)


def feature_table(run: np.ndarray, features: tuple[str, ...]) -> pd.DataFrame:
    run = run.reshape(*run.shape[:3], -1)
    importance = _importance(run)
    row_std = run.std(axis=0, ddof=1).mean(axis=(0, 2))
    mean_abs = np.abs(run).mean(axis=(0, 1, 3))
    table = pd.DataFrame({
        "feature": [str(f) for f in features],
        "importance_mean": importance.mean(axis=0),
        "importance_std": importance.std(axis=0, ddof=1),
        "attribution_std_mean": row_std,
        "relative_std": row_std / (mean_abs + EPS),
    }).sort_values("importance_mean", ascending=False, kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def _boxplots(runs: dict[str, np.ndarray], features: tuple[str, ...], max_display: int) -> Artifact:
    """Per method, for the top features: global importance per resample (top), and how far each row's
    attribution moves from its own mean over resamples (bottom: the local wobble relative_std summarises)."""
    shown = min(max_display, len(features))
    fig = Figure(figsize=(5.5 * len(runs), 0.8 * shown + 3.0), layout="constrained")
    axes = fig.subplots(2, len(runs), squeeze=False)
    for column, (method, run) in enumerate(runs.items()):
        run = run.reshape(*run.shape[:3], -1)
        importance = _importance(run)
        top = np.argsort(-importance.mean(axis=0), kind="stable")[:shown][::-1]  # most important at the top
        labels = [str(features[j]) for j in top]
        deviation = run - run.mean(axis=0, keepdims=True)
        what = "background resamples" if method == "shap" else "seeds"
        upper, lower = axes[0, column], axes[1, column]
        upper.boxplot([importance[:, j] for j in top], orientation="horizontal", tick_labels=labels)
        upper.set_xlabel("mean |attribution| (one point per resample)")
        upper.set_title(f"{method}: global importance across {len(run)} {what}")
        lower.boxplot([deviation[:, :, j].ravel() for j in top], orientation="horizontal", tick_labels=labels)
        lower.axvline(0.0, color="grey", linewidth=0.8)
        lower.set_xlabel("attribution minus its mean over resamples\n(one point per row and resample)")
        lower.set_title(f"{method}: per-row attributions across {what}")
    return Artifact.figure("attribution_boxplots", fig, "Attributions of the top features across resamples")
