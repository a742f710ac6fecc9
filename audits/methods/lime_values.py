"""LIME attributions for tabular rows, with categorical features handled the way LIME expects:
integer-coded, with their names, sampled from their training frequencies (not perturbed as numbers).

LIME cannot take missing values: a missing number is explained as the reference median, a missing
category as its own category '(missing)', which the model then receives as missing again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field

from audits.core import AuditConfig
from audits.core.context import AuditContext, ModelUnderAudit
from audits.methods.frames import FrameFunction
from audits.methods.sampling import informative_rows

MISSING = "(missing)"


@dataclass(frozen=True)
class LimeAttribution:
    weights: np.ndarray  # (rows, features): the local surrogate's weight for each original feature
    fidelity: np.ndarray  # (rows,): the surrogate's weighted R^2 on its perturbation sample (LIME's `score`)
    local_prediction: np.ndarray  # (rows,): the surrogate's prediction at the row
    model_output: np.ndarray  # (rows,): the model's output being explained
    explained: list[str]  # (rows,): the class explained (classifiers) or 'prediction'
    conditions: list[list[str]]  # per row and feature, LIME's readable condition ('mean radius > 17.2')
    features: list[str]


class LimeCodec:
    """Numeric rows for LIME, and back to a DataFrame for the model."""

    def __init__(self, reference: pd.DataFrame, categorical: tuple[str, ...]) -> None:
        self.frame_function = FrameFunction(lambda frame: frame, reference)
        self.features = list(self.frame_function.columns)
        self.categorical = [i for i, c in enumerate(self.features) if c in self.frame_function.categories]
        self.names = {
            i: [str(v) for v in self.frame_function.categories[self.features[i]]] + [MISSING] for i in self.categorical
        }
        numeric = [c for c in self.features if c not in self.frame_function.categories]
        self.medians = reference[numeric].median()

    def encode(self, X: pd.DataFrame) -> np.ndarray:
        rows = self.frame_function.encode(X)
        for j, column in enumerate(self.features):
            missing = np.isnan(rows[:, j])
            if j in self.names:
                rows[missing, j] = len(self.names[j]) - 1  # the '(missing)' code, decoded back to missing
            elif missing.any():
                rows[missing, j] = self.medians[column] if pd.notna(self.medians[column]) else 0.0
        return rows


def lime_attributions(
    context: AuditContext,
    X: pd.DataFrame,
    seed: int,
    num_samples: int = 2000,
    training_rows: int = 2000,
    model: ModelUnderAudit | None = None,
) -> LimeAttribution:
    from lime.lime_tabular import LimeTabularExplainer

    model = model or context.model
    reference = context.reference.X
    if len(reference) > training_rows:
        reference = reference.sample(n=training_rows, random_state=seed)
    codec = LimeCodec(pd.concat([reference, X]), context.categorical)
    classification = model.task == "classification"
    if classification and model.predict_proba is None:
        raise ValueError("LIME explains classifiers through predicted probabilities; the model has no predict_proba")
    function = model.predict_proba if classification else model.predict
    predict = FrameFunction(function, pd.concat([reference, X]))
    explainer = LimeTabularExplainer(
        codec.encode(reference),
        mode="classification" if classification else "regression",
        feature_names=codec.features,
        categorical_features=codec.categorical,
        categorical_names=codec.names,
        discretize_continuous=True,
        random_state=seed,
    )
    rows = codec.encode(X)
    outputs = predict(rows)
    n_features = len(codec.features)
    weights = np.zeros((len(X), n_features))
    fidelity, local, model_output, explained, conditions = [], [], [], [], []
    classes = [str(c) for c in model.classes] if classification else []
    for r, row in enumerate(rows):
        if classification:
            # binary: the positive class, as SHAP reports it; multiclass: the predicted class
            label = 1 if len(classes) == 2 else int(np.argmax(outputs[r]))
            explanation = explainer.explain_instance(row, predict, labels=(label,), num_features=n_features, num_samples=num_samples)
            explained.append(classes[label])
            model_output.append(outputs[r, label])
        else:
            label = 1  # LIME's key for the regression output
            explanation = explainer.explain_instance(row, predict, num_features=n_features, num_samples=num_samples)
            explained.append("prediction")
            model_output.append(float(np.ravel(outputs)[r]))
        pairs = explanation.as_map()[label]  # (feature, weight), and as_list gives the texts in the same order
        texts = [text for text, _ in explanation.as_list(label=label)]
        row_conditions = list(codec.features)
        for (feature, weight), text in zip(pairs, texts, strict=True):
            weights[r, feature] = weight
            row_conditions[feature] = text
        conditions.append(row_conditions)
        fidelity.append(float(explanation.score))
        local.append(float(np.ravel(explanation.local_pred)[0]))
    return LimeAttribution(weights, np.array(fidelity), np.array(local), np.array(model_output), explained, conditions, codec.features)


# The seed purpose of LIME's sampling. The explanation_agreement audit draws from the same purpose, so
# for the same rows and sample size it compares exactly the LIME explanations this audit reports.
LIME_SEED = "lime.surrogate"


class LimeConfig(AuditConfig):
    rows: int = Field(12, ge=1, le=500)  # informative rows explained
    num_samples: int = Field(2000, ge=100)  # LIME's perturbation sample per row
    training_rows: int = Field(2000, ge=10)  # reference rows LIME learns bins and category frequencies from
    dataset: Literal["current", "reference"] = "current"  # where the explained rows come from


@dataclass(frozen=True)
class ExplainedRows:
    selection: pd.DataFrame  # informative_rows: row, position, reason, score, ood_score
    X: pd.DataFrame  # the selected rows, in selection order
    lime: LimeAttribution


def explain_informative_rows(context: AuditContext, rows: int, dataset: str, num_samples: int, training_rows: int) -> ExplainedRows:
    """Select the informative rows of ``dataset`` and explain each with LIME (seeded by ``LIME_SEED``)."""
    selection = informative_rows(context, rows, dataset)
    X = context.dataset(dataset).X.iloc[selection["position"].to_numpy()]
    attr = lime_attributions(context, X, context.random_state(LIME_SEED), num_samples=num_samples, training_rows=training_rows)
    return ExplainedRows(selection, X, attr)


def output_description(context: AuditContext, explained: list[str]) -> str:
    if context.task == "regression":
        return "prediction"
    if len(context.model.classes) == 2:
        return f"probability of {explained[0]}"
    return "probability of the predicted class"


def nan_safe(reduce, values: np.ndarray) -> float:
    """mean/min over the defined values; NaN when there are none (a threshold on it then reports ERROR)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(reduce(values)) if len(values) else float("nan")
