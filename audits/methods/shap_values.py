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

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audits.core import AuditContext, ModelUnderAudit
from audits.methods.exact_shapley import interventional_values
from audits.methods.frames import FrameFunction
from audits.methods.model_structure import (
    FeatureMap,
    dense,
    is_linear_model,
    probe_feature_map,
    split_pipeline,
    transformed_names,
)

# Categorical columns are drawn grey (all-NaN colour values): numpy warns about that on every plot.
warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)


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
