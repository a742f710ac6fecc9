"""SHAP: global importance and per-row attributions, with the explainer chosen by model.

- tree ensembles (alone or at the end of a Pipeline): ``shap.TreeExplainer`` on the model's raw
  output (log-odds for gradient boosting, probabilities for forests, the prediction for regressors);
- linear models (alone or in a Pipeline): ``shap.LinearExplainer`` on the decision function;
- anything else, model-agnostically on the whole model with a small background sample: exact
  interventional Shapley values (every coalition enumerated) when there are few features, else
  ``shap.PermutationExplainer``.

Inside a Pipeline the model is explained in the transformed feature space, where tree and linear
explainers are exact, and the attributions are summed back onto the original columns through a
``FeatureMap``. The additivity error (sum of attributions + base value - model output) is measured
against the model itself and reported as a metric.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, ModelUnderAudit, Threshold
from audits.core.result import key_part
from audits.core.strata import Strata, stratified_positions, weighted_mean_interval
from audits.explain.exact_shapley import interventional_values
from audits.explain.frames import FrameFunction
from audits.explain.model_structure import FeatureMap, dense, is_linear_model, probe_feature_map, split_pipeline, transformed_names
from pydantic import Field

# shap's plotting reads matplotlib's global rcParams and numpy's global generator; audits run in threads.
_PLOT_LOCK = threading.Lock()
# Categorical columns are drawn grey (all-NaN colour values): numpy warns about that on every plot.
warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)


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


@dataclass(frozen=True)
class Attribution:
    """Attributions in a canonical shape: values (rows, features, outputs), base (outputs,)."""

    values: np.ndarray
    base: np.ndarray
    outputs: np.ndarray  # (rows, outputs): the model output being explained, computed by the model
    output_names: list[str]
    features: list[str]
    explainer: str
    output_space: str
    space: str  # "original" or "transformed (mapped back to original columns)"
    feature_map: FeatureMap | None = None


def _as_3d(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return values[:, :, None] if values.ndim == 2 else values


def _as_2d(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs, dtype=float)
    return outputs[:, None] if outputs.ndim == 1 else outputs


def select_explainer(estimator: Any, requested: str = "auto", n_features: int = 0, exact_max_features: int = 8) -> tuple[str, Any | None]:
    """(kind, a ready shap.TreeExplainer when the kind is 'tree'). SHAP itself decides what it can walk.

    Tree and linear explainers are exact for their models. Anything else is explained model-agnostically:
    exactly, by enumerating all 2^n coalitions, when there are few features; else by sampled permutations.
    """
    agnostic = "exact" if 0 < n_features <= exact_max_features else "permutation"
    if requested in ("exact", "permutation"):
        return requested, None
    if estimator is None:
        if requested != "auto":
            raise ValueError(f"the {requested} explainer needs a native scikit-learn model")
        return agnostic, None
    _, final = split_pipeline(estimator)
    if requested in ("auto", "tree"):
        tree = _tree_explainer_or_none(final)
        if tree is not None:
            return "tree", tree
        if requested == "tree":
            raise ValueError(f"shap.TreeExplainer does not support {type(final).__name__}; use explainer: auto")
    if requested in ("auto", "linear"):
        if is_linear_model(final):
            return "linear", None
        if requested == "linear":
            raise ValueError(f"{type(final).__name__} is not a linear model; use explainer: auto")
    return agnostic, None


def choose_explainer(estimator: Any, requested: str = "auto", n_features: int = 0, exact_max_features: int = 8) -> str:
    return select_explainer(estimator, requested, n_features, exact_max_features)[0]


def _tree_explainer_or_none(model: Any) -> Any | None:
    import shap

    try:
        return shap.TreeExplainer(model)
    except Exception:  # shap raises InvalidModelError (and others) for models it cannot walk
        return None


def _as_fitted(final: Any, Xt: np.ndarray) -> Any:
    """Give the final estimator its input the way it was fitted (with column names if it saw them)."""
    names = getattr(final, "feature_names_in_", None)
    return pd.DataFrame(Xt, columns=names) if names is not None else Xt


def _raw_output(final: Any, tree_output: str | None, Xt: np.ndarray, task: str) -> tuple[np.ndarray, str]:
    """The output a tree or linear explainer attributes, computed by the model itself."""
    inputs = _as_fitted(final, Xt)
    if task == "regression":
        return _as_2d(final.predict(inputs)), "prediction"
    if tree_output == "probability":
        return _as_2d(final.predict_proba(inputs)), "probability"
    return _as_2d(final.decision_function(inputs)), "log-odds (decision function)"


def explain(context: AuditContext, X: pd.DataFrame, background: pd.DataFrame, explainer: str = "auto",
            model: ModelUnderAudit | None = None, exact_max_features: int = 8) -> Attribution:
    """SHAP values of ``model`` (default: the audited one) for rows ``X``, in canonical shape and named outputs."""
    import shap

    model = model or context.model
    kind, tree = select_explainer(model.estimator, explainer, X.shape[1], exact_max_features)
    if kind in ("tree", "linear"):
        preprocessor, final = split_pipeline(model.estimator)
        if preprocessor is None:
            Xt, Bt, names = dense(X), dense(background), [str(c) for c in X.columns]
        else:
            Xt, Bt = dense(preprocessor.transform(X)), dense(preprocessor.transform(background))
            names = transformed_names(preprocessor, Xt.shape[1])
        if kind == "tree":
            explanation = tree(Xt, check_additivity=False)  # additivity is measured below, against the model
            tree_output = getattr(tree.model, "tree_output", None)
        else:
            explanation = shap.LinearExplainer(final, shap.maskers.Independent(Bt, max_samples=len(Bt)))(Xt)
            tree_output = None
        outputs, output_space = _raw_output(final, tree_output, Xt, model.task)
        values = _as_3d(explanation.values)
        base = np.broadcast_to(np.asarray(explanation.base_values, dtype=float).reshape(len(Xt), -1)[0], (values.shape[2],))
        feature_map = None
        space = "original"
        features = names
        if preprocessor is not None:
            feature_map = probe_feature_map(preprocessor, background, names, context.rng("shap.feature_map"))
            values = feature_map.aggregate(values)
            features = feature_map.columns
            space = "transformed, summed back to original columns"
        return canonical_outputs(Attribution(values, np.array(base), outputs, [], features, kind, output_space, space, feature_map), model)

    # Model-agnostic: explain the whole model (Pipeline included) in the original feature space.
    if model.task == "classification":
        if model.predict_proba is None:
            raise ValueError("a classifier without predict_proba cannot be explained by probabilities")
        function, output_space = model.predict_proba, "probability"
    else:
        function, output_space = model.predict, "prediction"
    f = FrameFunction(function, pd.concat([X, background]))
    rows, reference = f.encode(X), f.encode(background)
    if kind == "exact":
        solved = [interventional_values(f, row, reference) for row in rows]
        values = np.stack([phi for phi, _ in solved])  # (rows, features, outputs)
        base = solved[0][1]
    else:
        masker = shap.maskers.Independent(reference, max_samples=len(background))
        explanation = shap.PermutationExplainer(f, masker, seed=context.random_state("shap.permutation"))(rows, silent=True)
        values = _as_3d(explanation.values)
        base = np.asarray(explanation.base_values, dtype=float).reshape(len(X), -1)[0]
    outputs = _as_2d(f(rows))
    return canonical_outputs(Attribution(values, base, outputs, [], f.columns, kind, output_space, "original"), model)


def canonical_outputs(attr: Attribution, model: ModelUnderAudit) -> Attribution:
    """Name the outputs; for binary probabilities keep only the positive class (class 0 mirrors it)."""
    values, base, outputs = attr.values, attr.base, attr.outputs
    if model.task == "regression":
        names = ["prediction"]
    else:
        classes = [str(c) for c in model.classes]
        if values.shape[2] == 1:  # binary margin: the log-odds of the positive class
            names = [classes[-1]]
        elif len(classes) == 2:
            values, base, outputs = values[:, :, 1:], base[1:], outputs[:, 1:]
            names = [classes[1]]
        else:
            names = classes
    return Attribution(values, base, outputs, names, attr.features, attr.explainer, attr.output_space, attr.space, attr.feature_map)


def unexplainable(context: AuditContext) -> str | None:
    """Why SHAP has nothing to explain: a pyfunc classifier gives neither probabilities nor a native model."""
    if context.task == "classification" and context.model.predict_proba is None and context.model.estimator is None:
        return "a classifier loaded through pyfunc has no probabilities to explain"
    return None


class ShapAudit(Audit):
    """SHAP attributions: importance, per-row values, beeswarm and bar plots, additivity error."""

    name = "shap"
    Config = ShapConfig
    description = "SHAP values with the explainer chosen by model, summed back to original columns."
    stratified = True  # explains every stratum of a stratified sample; importances weighted back to the population
    default_thresholds = (Threshold(metric="shap.additivity_relative_error", max=1e-3, severity="fail"),)

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
