"""Predictions computed once per side: labels from the probabilities only where predict itself agrees with them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.svm import SVC

from audits.core.context import ARGMAX_CHECK_ROWS, ModelUnderAudit, predict


def _data(rows: int = 3000):
    X, y = make_classification(n_samples=rows, n_features=6, n_informative=4, n_classes=3, random_state=0)
    return pd.DataFrame(X, columns=[f"f{i}" for i in range(6)]), y


def test_an_argmax_classifier_gets_the_labels_its_own_predict_gives_on_every_row():
    X, y = _data()
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(X, y)
    calls = []
    counting = dataclasses.replace(ModelUnderAudit.from_estimator(model), predict=lambda X: calls.append(len(X)) or model.predict(X))
    predictions = predict(counting, X)
    np.testing.assert_array_equal(predictions.labels, model.predict(X))
    assert calls == [ARGMAX_CHECK_ROWS]  # predict ran on the checked rows only; the labels came from predict_proba


def test_a_model_whose_predict_is_not_the_argmax_keeps_its_own_labels():
    X, y = _data(1500)
    model = SVC(probability=True, random_state=0).fit(X, y)  # Platt scaling: argmax(proba) may disagree with predict
    predictions = predict(ModelUnderAudit.from_estimator(model), X)
    np.testing.assert_array_equal(predictions.labels, model.predict(X))
    assert (np.asarray(model.classes_)[predictions.proba.argmax(axis=1)] != predictions.labels).any()
