"""SHAP audit against references we did not write: exact Shapley values computed by brute force over
every coalition, additivity against the model's own output, and a feature that cannot matter."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.explain.shap import ShapAudit, ShapConfig
from audits.methods.shap_values import choose_explainer, explain
from tests.conftest import context_for, make_pipeline_model


def exact_shapley(value, n: int) -> np.ndarray:
    """phi_i = sum over S not containing i of |S|!(n-|S|-1)!/n! (v(S+i) - v(S)), by enumeration."""
    cache = {frozenset(S): value(frozenset(S)) for k in range(n + 1) for S in itertools.combinations(range(n), k)}
    phi = np.zeros(n)
    for i in range(n):
        for S, v_S in cache.items():
            if i in S:
                continue
            weight = math.factorial(len(S)) * math.factorial(n - len(S) - 1) / math.factorial(n)
            phi[i] += weight * (cache[S | {i}] - v_S)
    return phi


def tree_path_expectation(tree, x: np.ndarray, S: frozenset, node: int = 0) -> float:
    """E[f(x) | x_S] as path-dependent Tree SHAP defines it: unknown features follow both branches by cover."""
    left, right = tree.children_left[node], tree.children_right[node]
    if left == -1:
        return float(tree.value[node].ravel()[0])
    feature = tree.feature[node]
    if feature in S:
        return tree_path_expectation(tree, x, S, left if x[feature] <= tree.threshold[node] else right)
    cover = tree.weighted_n_node_samples
    return (cover[left] * tree_path_expectation(tree, x, S, left) + cover[right] * tree_path_expectation(tree, x, S, right)) / cover[node]


def interventional_game(predict, background: np.ndarray, columns, x: np.ndarray):
    """v(S) = mean over background rows of the model with the features in S taken from x."""
    def game(S):
        mixed = background.copy()
        mixed[:, list(S)] = x[list(S)]
        return predict(pd.DataFrame(mixed, columns=columns)).mean()

    return game


def numeric_data(n=300, p=5, seed=3):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"f{i}" for i in range(p)])
    y = pd.Series(2 * X["f0"] + X["f1"] * X["f2"] + np.sin(3 * X["f3"]) + rng.normal(scale=0.1, size=n), name="y")
    return X, y


def attribution_for(estimator, X, y, rows, background, explainer="auto"):
    model = ModelUnderAudit.from_estimator(estimator)
    context = build_context(model, (X, y), (rows, None), seed=0)
    return explain(context, rows, background, explainer)


def test_tree_shap_equals_exact_shapley_of_the_path_dependent_game():
    from sklearn.ensemble import GradientBoostingRegressor

    X, y = numeric_data()
    gbr = GradientBoostingRegressor(n_estimators=15, max_depth=3, learning_rate=0.3, random_state=0).fit(X, y)
    rows = X.iloc[:6]
    attr = attribution_for(gbr, X, y, rows, X.iloc[:50])
    assert attr.explainer == "tree"
    trees = [est[0].tree_ for est in gbr.estimators_]
    init = float(gbr.init_.predict(X.iloc[:1])[0])
    for r, x in enumerate(rows.to_numpy()):
        def game(S, x=x):
            return init + gbr.learning_rate * sum(tree_path_expectation(t, x, S) for t in trees)

        np.testing.assert_allclose(attr.values[r, :, 0], exact_shapley(game, X.shape[1]), atol=1e-9)


def test_linear_shap_equals_exact_interventional_shapley():
    from sklearn.linear_model import LogisticRegression

    X, y = numeric_data()
    labels = pd.Series(np.where(y > y.median(), "high", "low"), name="label")
    lr = LogisticRegression().fit(X, labels)
    rows, background = X.iloc[:5], X.iloc[100:140]
    attr = attribution_for(lr, X, labels, rows, background)
    assert attr.explainer == "linear" and attr.output_names == ["low"]  # classes_ = [high, low]
    for r, x in enumerate(rows.to_numpy()):
        game = interventional_game(lr.decision_function, background.to_numpy(), X.columns, x)
        np.testing.assert_allclose(attr.values[r, :, 0], exact_shapley(game, X.shape[1]), atol=1e-9)


def test_permutation_shap_approximates_exact_interventional_shapley_and_is_exactly_additive():
    from sklearn.neighbors import KNeighborsRegressor

    X, y = numeric_data(p=4)
    knn = KNeighborsRegressor(n_neighbors=10).fit(X, y)
    rows, background = X.iloc[:4], X.iloc[100:130]
    attr = attribution_for(knn, X, y, rows, background, explainer="permutation")
    assert attr.explainer == "permutation"
    for r, x in enumerate(rows.to_numpy()):
        exact = exact_shapley(interventional_game(knn.predict, background.to_numpy(), X.columns, x), X.shape[1])
        # sampled permutations (antithetic): an estimate, within 2% of the largest attribution here
        np.testing.assert_allclose(attr.values[r, :, 0], exact, atol=0.02 * np.abs(exact).max())
        assert np.argmax(np.abs(attr.values[r, :, 0])) == np.argmax(np.abs(exact))
    np.testing.assert_allclose(attr.values.sum(axis=1) + attr.base, attr.outputs, atol=1e-9)


def test_few_features_get_exact_shapley_values_by_default():
    from sklearn.neighbors import KNeighborsRegressor

    X, y = numeric_data(p=4)
    knn = KNeighborsRegressor(n_neighbors=10).fit(X, y)
    rows, background = X.iloc[:4], X.iloc[100:130]
    attr = attribution_for(knn, X, y, rows, background)
    assert attr.explainer == "exact"
    for r, x in enumerate(rows.to_numpy()):
        game = interventional_game(knn.predict, background.to_numpy(), X.columns, x)
        np.testing.assert_allclose(attr.values[r, :, 0], exact_shapley(game, X.shape[1]), atol=1e-9)
    assert choose_explainer(knn, "auto", n_features=9, exact_max_features=8) == "permutation"


@pytest.mark.parametrize(
    "final, explainer, output",
    [
        ("gbm", "tree", "log-odds"),
        ("logistic", "linear", "log-odds"),
        ("knn", "exact", "probability"),
        ("rfr", "tree", "prediction"),
        ("gbr", "tree", "prediction"),
    ],
)
def test_explainer_is_chosen_by_model_and_stays_additive(final, explainer, output, tabular, regression_data):
    X, y = regression_data if final in ("rfr", "gbr") else tabular
    context = context_for(make_pipeline_model(X, y, final), X, y)
    result = run_planned(PlannedAudit("shap", ShapAudit(ShapConfig(rows=40, permutation_rows=15)), ShapAudit.default_thresholds), context)
    assert result.verdict is Verdict.PASS, result.reason
    assert result.info["explainer"] == explainer
    assert output in result.info["output"]
    expected_space = "original" if explainer in ("exact", "permutation") else "transformed, summed back to original columns"
    assert result.info["explained_space"] == expected_space
    assert result.metrics["shap.additivity_relative_error"] < 1e-9
    # attributions land on the original columns, never on one-hot or indicator columns
    assert {k.removeprefix("shap.importance.") for k in result.metrics if k.startswith("shap.importance.")} == set(X.columns)


def test_a_feature_the_model_never_uses_gets_no_attribution(tabular):
    X, y = tabular
    context = context_for(make_pipeline_model(X, y, "gbm"), X, y)
    result = run_planned(PlannedAudit("shap", ShapAudit(), ()), context)
    importance = {k.removeprefix("shap.importance."): v for k, v in result.metrics.items() if k.startswith("shap.importance.")}
    assert importance["x1"] == max(importance.values())
    assert importance["noise"] < 0.1 * importance["x1"]
    # a column dropped by the model's preprocessing cannot matter at all
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    dropping = Pipeline([("pre", ColumnTransformer([("num", "passthrough", ["x1", "x2"])], remainder="drop")),
                         ("model", GradientBoostingClassifier(n_estimators=20, random_state=0))]).fit(X, y)
    result = run_planned(PlannedAudit("shap", ShapAudit(), ()), context_for(dropping, X, y))
    assert result.metrics["shap.importance.noise"] == 0.0 and result.metrics["shap.importance.colour"] == 0.0


def test_pipeline_values_are_transformed_values_summed_per_column(tabular):
    import shap

    X, y = tabular
    pipe = make_pipeline_model(X, y, "gbm")
    rows = X.iloc[:30]
    attr = attribution_for(pipe, X, y, rows, X.iloc[100:150])
    names = list(pipe[:-1].get_feature_names_out())
    raw = shap.TreeExplainer(pipe[-1])(pipe[:-1].transform(rows)).values
    expected = {
        "colour": sum(raw[:, i] for i, n in enumerate(names) if n.startswith("cat__colour_")),
        "x3": raw[:, names.index("num__x3")] + raw[:, names.index("num__missingindicator_x3")],
        "x1": raw[:, names.index("num__x1")],
    }
    for column, values in expected.items():
        np.testing.assert_allclose(attr.values[:, attr.features.index(column), 0], values, atol=1e-12)


def test_multiclass_gets_one_output_per_class():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import GradientBoostingClassifier

    iris = load_iris(as_frame=True)
    X, y = iris.data, iris.target.map(dict(enumerate(iris.target_names))).rename("species")
    model = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(X, y)
    context = context_for(model, X.sample(frac=1, random_state=0), y.sample(frac=1, random_state=0), split=100)
    result = run_planned(PlannedAudit("shap", ShapAudit(), ShapAudit.default_thresholds), context)
    assert result.verdict is Verdict.PASS
    assert {k for k in result.metrics if k.startswith("shap.base_value.")} == {f"shap.base_value.{c}" for c in iris.target_names}
    names = [a.name for a in result.artifacts]
    assert {f"beeswarm_{c}.png" for c in iris.target_names} <= set(names)
    values = result.artifacts[names.index("values.json")].content
    assert sorted(values["explained_output"].unique()) == sorted(iris.target_names)
    assert len(values) == 3 * len(context.current)


def test_binary_probabilities_report_the_positive_class_only(tabular):
    from sklearn.ensemble import RandomForestClassifier

    X, y = tabular
    Xn = X[["x1", "x2", "noise"]]
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(Xn, y)
    attr = attribution_for(model, Xn, y, Xn.iloc[:20], Xn.iloc[:20])
    assert attr.output_space == "probability" and attr.output_names == ["yes"]
    np.testing.assert_allclose(attr.outputs[:, 0], model.predict_proba(Xn.iloc[:20])[:, 1])


def test_forcing_an_explainer_that_does_not_fit_the_model_is_an_error(tabular):
    X, y = tabular
    context = context_for(make_pipeline_model(X, y, "knn"), X, y)
    result = run_planned(PlannedAudit("shap", ShapAudit(ShapConfig(explainer="tree")), ()), context)
    assert result.verdict is Verdict.ERROR and "TreeExplainer does not support KNeighborsClassifier" in result.reason
    assert choose_explainer(None, "auto") == "permutation" and choose_explainer(None, "auto", n_features=3) == "exact"


def test_each_mean_abs_shap_carries_a_95_percent_interval_that_narrows_with_rows(classifier_context):
    """The interval is 1.96 standard errors of the per-row |SHAP| (recomputed here from the values table), and four
    times the rows halve it, about; the importance of 150 rows lies within the interval of 40 of them."""
    def importance(rows):
        audit = ShapAudit(ShapConfig(rows=rows))
        result = run_planned(PlannedAudit("shap", audit, ()), classifier_context)
        table = next(a.content for a in result.artifacts if a.name == "importance.json").set_index("feature")
        values = next(a.content for a in result.artifacts if a.name == "values.json")
        return result, table, values

    result, table, values = importance(40)
    assert values["explained_output"].nunique() == 1  # binary: the positive class's probability, one row per row
    x1 = values["x1"].abs()
    assert len(x1) == 40 and table.loc["x1", "mean_abs_shap"] == pytest.approx(x1.mean(), rel=1e-9)
    half = 1.96 * x1.std(ddof=1) / np.sqrt(len(x1))
    assert table.loc["x1", "ci95_high"] - table.loc["x1", "mean_abs_shap"] == pytest.approx(half, rel=1e-9)
    widths = (table["ci95_high"] - table["ci95_low"]) / 2
    assert (widths > 0).all() and (table["ci95_low"] <= table["mean_abs_shap"]).all()
    top = table["mean_abs_shap"].sort_values(ascending=False).index[:5]
    assert result.metrics["shap.importance_ci95_relative_halfwidth"] == pytest.approx((widths[top] / table.loc[top, "mean_abs_shap"]).max())
    _, wide_table, _ = importance(150)
    narrow = (wide_table["ci95_high"] - wide_table["ci95_low"]) / 2
    assert (narrow["x1"] / widths["x1"]) == pytest.approx(np.sqrt(40 / 150), rel=0.35)
    assert table.loc["x1", "ci95_low"] <= wide_table.loc["x1", "mean_abs_shap"] <= table.loc["x1", "ci95_high"]
