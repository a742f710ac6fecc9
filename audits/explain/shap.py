"""The shap audit: SHAP values of sampled rows, global importances with intervals, additivity."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Threshold
from audits.core.result import key_part
from audits.core.strata import Strata, stratified_positions, weighted_mean_interval
from audits.methods.model_structure import (
    split_pipeline,
)
from audits.methods.shap_values import Attribution, choose_explainer, explain, unexplainable

# shap's plotting reads matplotlib's global rcParams and numpy's global generator; audits run in threads.
_PLOT_LOCK = threading.Lock()


class ShapConfig(AuditConfig):
    explainer: Literal["auto", "tree", "linear", "exact", "permutation"] = "auto"
    exact_max_features: int = Field(8, ge=1, le=15)  # 'auto' enumerates every coalition up to this many features
    dataset: Literal["current", "reference"] = "current"  # the rows explained
    rows: int = Field(200, ge=1)  # rows explained by the tree and linear explainers (sampled with the seed)
    permutation_rows: int = Field(50, ge=1)  # rows explained by the costlier model-agnostic explainers
    background_rows: int = Field(50, ge=1)  # background sample for linear and permutation explainers
    flagged_rows: int = Field(50, ge=0)  # data read by partition: current rows other audits flagged, explained too
    max_display: int = Field(15, ge=1)  # features shown in plots
    max_class_plots: int = Field(4, ge=1)  # multiclass: beeswarm plots for the first N classes


class ShapAudit(Audit):
    """SHAP attributions: importance, per-row values, beeswarm and bar plots, additivity error."""

    name = "shap"
    imports = ("shap",)  # imported when it runs (audits.core.audit)
    question = "behaviour"
    metric_keys = (
        "importance.*", "importance_ci95_relative_halfwidth", "additivity_max_abs_error", "additivity_relative_error",
        "base_value", "base_value.*", "rows_explained", "flagged_rows_explained",
    )
    Config = ShapConfig
    description = "SHAP values with the explainer chosen by model, summed back to original columns."
    stratified = True  # explains every stratum of a stratified sample; importances weighted back to the population
    default_thresholds = (Threshold(metric="additivity_relative_error", max=1e-3, severity="fail"),)

    def skip_reason(self, context: AuditContext) -> str | None:
        return super().skip_reason(context) or unexplainable(context)

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: ShapConfig = self.config
        source = context.dataset(cfg.dataset).X
        agnostic = choose_explainer(context.model.estimator, cfg.explainer, len(context.features), cfg.exact_max_features)
        budget = cfg.permutation_rows if agnostic in ("permutation", "exact") else cfg.rows
        strata = context.dataset(cfg.dataset).strata
        if strata is None:
            X = source.sample(n=min(budget, len(source)), random_state=context.random_state("shap.rows"))
        else:  # a stratified sample: every stratum explained, each row weighted by the population rows it stands for
            positions, weights = stratified_positions(strata, budget, context.rng("shap.rows"))
            X, strata = source.iloc[positions], strata.take(positions, weights)
        reference = context.reference.X
        background = reference.sample(  # the background stands for the data: drawn in proportion to the weights
            n=min(cfg.background_rows, len(reference)), random_state=context.random_state("shap.background"),
            weights=None if context.reference.strata is None else context.reference.strata.weights,
        )
        attr = explain(context, X, background, cfg.explainer, exact_max_features=cfg.exact_max_features)

        residual = attr.values.sum(axis=1) + attr.base[None, :] - attr.outputs
        max_abs = float(np.abs(residual).max())
        scale = float(np.ptp(attr.outputs)) or 1.0
        per_row = np.abs(attr.values).sum(axis=2)  # (rows, features)
        if strata is None:
            mean_abs = np.abs(attr.values).mean(axis=0)  # (features, outputs)
            importance = mean_abs.sum(axis=1)
            # the explained rows are a sample: a 95 % normal interval on each mean |SHAP| (its rows' spread / sqrt(rows))
            halfwidth = 1.96 * per_row.std(axis=0, ddof=1) / np.sqrt(len(X)) if len(X) > 1 else np.full(len(importance), np.nan)
        else:  # the population's mean |SHAP| from the strata's means, weighted by their sizes, and its interval
            n_features, n_outputs = attr.values.shape[1:]
            mean_abs = weighted_mean_interval(np.abs(attr.values).reshape(len(X), -1), strata)[0].reshape(n_features, n_outputs)
            importance, halfwidth = weighted_mean_interval(per_row, strata)

        metrics: dict[str, float] = {
            "additivity_max_abs_error": max_abs,
            "additivity_relative_error": max_abs / scale,
            "rows_explained": float(len(X)),
        }
        for feature, value in zip(attr.features, importance, strict=True):
            metrics[f"importance.{key_part(feature)}"] = float(value)
        for name, value in zip(attr.output_names, attr.base, strict=True):
            metrics[f"base_value.{key_part(name)}" if len(attr.output_names) > 1 else "base_value"] = float(value)
        top5 = np.argsort(-importance, kind="stable")[:5]
        with np.errstate(invalid="ignore", divide="ignore"):
            # how precisely the sample ranks the leading features: the widest relative interval among the top five
            metrics["importance_ci95_relative_halfwidth"] = float(np.nanmax(halfwidth[top5] / importance[top5])) if len(top5) else float("nan")

        importance_table = pd.DataFrame({"feature": attr.features, "mean_abs_shap": importance,
                                         "ci95_low": importance - halfwidth, "ci95_high": importance + halfwidth})
        if len(attr.output_names) > 1:
            for k, name in enumerate(attr.output_names):
                importance_table[f"mean_abs_shap[{name}]"] = mean_abs[:, k]
        importance_table = importance_table.sort_values("mean_abs_shap", ascending=False, kind="stable")
        importance_table.insert(0, "rank", np.arange(1, len(importance_table) + 1))

        artifacts = [
            Artifact.table("importance", importance_table, "Global importance: mean |SHAP| per original column"),
            Artifact.table("values", _values_table(attr, X, strata), "Per-row SHAP values (original columns), base value, model output"
                           + ("" if strata is None else ", and the population rows each row stands for (weight)")),
            *_figures(attr, X, cfg, context.random_state("shap.plots")),
        ]
        if attr.feature_map is not None:
            artifacts.append(Artifact.table("feature_map", attr.feature_map.table(), "Transformed features and their original columns"))
        flagged = context.flagged.head(cfg.flagged_rows) if context.flagged is not None and cfg.flagged_rows else None
        if flagged is not None and len(flagged):
            X_flagged = flagged[list(context.features)].set_axis(flagged["row"].astype(str).tolist())
            table = _values_table(explain(context, X_flagged, background, cfg.explainer, exact_max_features=cfg.exact_max_features),
                                  X_flagged)
            table.insert(1, "flagged_by", np.tile(flagged["flagged_by"].astype(str).to_numpy(), len(attr.output_names)))
            artifacts.append(Artifact.table("flagged_values", table, "SHAP values of the current rows other audits flagged on "
                                            "every row (not part of the importances, which estimate the whole data's)"))
            metrics["flagged_rows_explained"] = float(len(X_flagged))
        top = importance_table.head(5)["feature"].tolist()
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=tuple(artifacts),
            info={
                "explainer": attr.explainer,
                "explained_space": attr.space,
                "output": f"{attr.output_space} of {', '.join(attr.output_names)}",
                "model_class": type(split_pipeline(context.model.estimator)[1]).__name__ if context.model.estimator is not None else context.model.flavor,
                "rows_from": cfg.dataset,
                "top_features": ", ".join(top),
                "importance_interval": f"95 % normal intervals on each mean |SHAP| over the {len(X)} explained rows "
                                       f"(importance table); more rows (config rows) narrow them as 1/sqrt(rows)",
                **({} if strata is None else {"explained_rows": f"{strata.describe()}; importances are the population's: each "
                                                               f"stratum's mean weighted by its rows"}),
            },
        )


def _values_table(attr: Attribution, X: pd.DataFrame, strata: Strata | None = None) -> pd.DataFrame:
    frames = []
    for k, name in enumerate(attr.output_names):
        frame = pd.DataFrame(attr.values[:, :, k], columns=attr.features)
        if strata is not None:
            frame.insert(0, "weight", strata.weights)
            frame.insert(0, f"stratum ({strata.by})", strata.labels)
        frame.insert(0, "model_output", attr.outputs[:, k])
        frame.insert(0, "base_value", attr.base[k])
        frame.insert(0, "explained_output", name)
        frame.insert(0, "row", [str(i) for i in X.index])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _display_data(attr: Attribution, X: pd.DataFrame) -> np.ndarray:
    """Feature values for colouring beeswarm points: numeric columns as they are, the rest grey (NaN)."""
    columns = []
    for feature in attr.features:
        if feature in X.columns and pd.api.types.is_numeric_dtype(X[feature]) and not pd.api.types.is_bool_dtype(X[feature]):
            columns.append(X[feature].to_numpy(dtype=float))
        else:
            columns.append(np.full(len(X), np.nan))
    return np.column_stack(columns)


@contextmanager
def _seeded_global_numpy(seed: int) -> Iterator[None]:
    """shap's beeswarm jitters points with numpy's global generator: seed it for byte-stable figures, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _figures(attr: Attribution, X: pd.DataFrame, cfg: ShapConfig, seed: int) -> list[Artifact]:
    import shap

    data = _display_data(attr, X)
    explanations = {
        name: shap.Explanation(values=attr.values[:, :, k], base_values=np.full(len(X), attr.base[k]), data=data, feature_names=attr.features)
        for k, name in enumerate(attr.output_names)
    }
    artifacts = []
    with _PLOT_LOCK, _seeded_global_numpy(seed):
        for k, (name, explanation) in enumerate(explanations.items()):
            if k >= cfg.max_class_plots:
                break
            fig = Figure(figsize=(8, 0.4 * min(cfg.max_display, len(attr.features)) + 1.8), layout="constrained")
            ax = fig.add_subplot()
            shap.plots.beeswarm(explanation, max_display=cfg.max_display, ax=ax, show=False, plot_size=None)
            ax.set_title(f"SHAP values ({attr.output_space} of {name})")
            suffix = "" if len(explanations) == 1 else f"_{key_part(name)}"
            artifacts.append(Artifact.figure(f"beeswarm{suffix}", fig, f"Beeswarm: per-row SHAP values for {name}"))
        fig = Figure(figsize=(8, 0.4 * min(cfg.max_display, len(attr.features)) + 1.8), layout="constrained")
        ax = fig.add_subplot()
        if len(explanations) == 1:
            shap.plots.bar(next(iter(explanations.values())), max_display=cfg.max_display, ax=ax, show=False)
        else:
            shap.plots.bar({n: e.abs.mean(0) for n, e in explanations.items()}, max_display=cfg.max_display, ax=ax, show=False)
        ax.set_title("Global importance: mean |SHAP|")
        artifacts.append(Artifact.figure("bar", fig, "Bar: mean |SHAP| per original column"))
    return artifacts
