"""LIME and SHAP-against-LIME audits against references we did not write: synthetic targets whose true
drivers are known, the coefficients of a fitted linear model (scikit-learn), scikit-learn's own
predictions, and LIME's own scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import hypergeom

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.explain.explanation_agreement import (
    AgreementAudit,
    AgreementConfig,
    agreement_metrics,
    aligned_shap,
    compare_rows,
    compared_k,
)
from audits.explain.lime import LimeAudit
from audits.methods.lime_values import LIME_SEED, LimeAttribution, LimeConfig, lime_attributions
from audits.methods.sampling import informative_rows
from audits.methods.shap_values import Attribution, explain
from audits.testing import check_audit_contract
from tests.conftest import context_for

FAST = {"rows": 4, "num_samples": 500}


def run(audit_cls, context, **config):
    return run_planned(PlannedAudit(audit_cls.name, audit_cls(audit_cls.Config(**config)), audit_cls.default_thresholds), context)


def artifact(result, name):
    return next(a.content for a in result.artifacts if a.name == name)


def importance(result, prefix="lime"):
    return {k.removeprefix(f"{prefix}.importance."): v for k, v in result.metrics.items() if k.startswith(f"{prefix}.importance.")}


@pytest.fixture(scope="module")
def two_feature_context():
    """6 numeric features and a random category; the label depends on x0 and x1 only."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(7)
    n = 600
    X = pd.DataFrame(rng.normal(size=(n, 6)), columns=[f"x{i}" for i in range(6)])
    X["group"] = pd.Series(rng.choice(["a", "b", "c"], n), dtype="str")
    logit = 3 * X["x0"] - 2 * X["x1"]
    y = pd.Series(np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "pos", "neg"), name="label")
    pre = ColumnTransformer([("num", StandardScaler(), [f"x{i}" for i in range(6)]), ("cat", OneHotEncoder(), ["group"])])
    model = Pipeline([("pre", pre), ("model", LogisticRegression(max_iter=2000))]).fit(X.iloc[:400], y.iloc[:400])
    return context_for(model, X, y, split=400)


def linear_regression_context(coefficients, seed=3, n=500):
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, len(coefficients))), columns=[f"x{i}" for i in range(len(coefficients))])
    y = pd.Series(X.to_numpy() @ np.asarray(coefficients) + rng.normal(scale=0.1, size=n), name="y")
    model = LinearRegression().fit(X.iloc[:300], y.iloc[:300])
    return context_for(model, X, y, split=300), model


def test_lime_finds_the_two_true_drivers_and_agrees_with_shap(two_feature_context):
    result = run(LimeAudit, two_feature_context)
    assert result.verdict is Verdict.PASS, result.reason
    imp = importance(result)
    assert set(imp) == {"x0", "x1", "x2", "x3", "x4", "x5", "group"}
    drivers = min(imp["x0"], imp["x1"])
    # every feature the label does not depend on gets under 10% of the weaker true driver's mean |weight|
    assert max(v for k, v in imp.items() if k not in ("x0", "x1")) < 0.1 * drivers
    assert imp["x0"] > imp["x1"]  # |3| > |-2| on features of equal spread

    agreement = run(AgreementAudit, two_feature_context, top_k=2)
    m = {k.removeprefix("explanation_agreement."): v for k, v in agreement.metrics.items()}
    assert m["topk_overlap_mean"] >= 0.9
    assert m["sign_agreement_topk"] >= 0.85
    assert m["topk_overlap_chance"] == pytest.approx(2 / 7)
    assert m["rows_compared"] == 12
    assert agreement.verdict is Verdict.PASS
    rows = artifact(agreement, "rows.json")
    assert (rows["shap_top2"].str.split(", ").map(set) == {"x0", "x1"}).mean() >= 0.9


def test_lime_regression_ranks_features_like_the_linear_coefficients():
    context, model = linear_regression_context([10.0, -4.0, 1.5, 0.5, 0.1])
    result = run(LimeAudit, context)
    imp = importance(result)
    lime_order = sorted(imp, key=imp.get, reverse=True)
    coefficient_order = [f"x{i}" for i in np.argsort(-np.abs(model.coef_))]
    assert lime_order == coefficient_order == ["x0", "x1", "x2", "x3", "x4"]
    table = artifact(result, "explanations.json")
    assert set(table["explained"]) == {"prediction"}
    rows = context.current.X.loc[table["row"].astype(int)]
    np.testing.assert_allclose(table["model_output"], model.predict(rows), rtol=1e-12)
    # the surrogate's sign for x0 follows the row's side of the median, times the coefficient's sign
    x0 = rows["x0"].to_numpy()
    far = np.abs(x0 - context.reference.X["x0"].median()) > 0.7
    assert np.all(np.sign(table["weight[x0]"].to_numpy()[far]) == np.sign(x0[far]))


def test_a_model_of_one_categorical_column_puts_lime_weight_on_that_column():
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = np.random.default_rng(11)
    n = 400
    X = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    X["city"] = pd.Series(rng.choice(["Oslo", "Lima", "Pune", "Kyiv"], n), dtype="str")
    y = pd.Series(X["city"].map({"Oslo": 0.0, "Lima": 5.0, "Pune": -3.0, "Kyiv": 2.0}), name="y")
    only_city = ColumnTransformer([("cat", OneHotEncoder(), ["city"])], remainder="drop")
    model = Pipeline([("pre", only_city), ("model", LinearRegression())]).fit(X, y)
    context = context_for(model, X, y, split=250)
    result = run(LimeAudit, context)
    imp = importance(result)
    assert imp["city"] > 1.0
    assert max(imp["a"], imp["b"], imp["c"]) < 0.02 * imp["city"]
    # LIME names the row's own category: the top condition is 'city=<the row's city>'
    table = artifact(result, "explanations.json")
    cities = context.current.X.loc[table["row"].astype(int), "city"].to_numpy()
    assert [conditions.split("; ")[0] for conditions in table["top_conditions"]] == [f"city={c}" for c in cities]


def test_same_seed_same_tables_and_another_seed_other_weights(tabular):
    from tests.conftest import make_pipeline_model

    X, y = tabular
    model = make_pipeline_model(X, y, "gbm")
    first, again, other = (context_for(model, X, y, seed=s) for s in (0, 0, 1))
    a, b, c = (run(LimeAudit, ctx, **FAST) for ctx in (first, again, other))
    pd.testing.assert_frame_equal(artifact(a, "explanations.json"), artifact(b, "explanations.json"))
    assert artifact(a, "rows.png") == artifact(b, "rows.png")
    ta, tc = artifact(a, "explanations.json"), artifact(c, "explanations.json")
    assert ta["row"].tolist() == tc["row"].tolist()  # the informative rows do not depend on the seed here ...
    weights = [col for col in ta.columns if col.startswith("weight[")]
    assert not np.allclose(ta[weights].to_numpy(), tc[weights].to_numpy())  # ... LIME's sampling does
    x, z = (run(AgreementAudit, ctx, **FAST) for ctx in (first, again))
    pd.testing.assert_frame_equal(artifact(x, "rows.json"), artifact(z, "rows.json"))


def test_agreement_is_low_for_a_deliberately_wrong_pairing():
    from sklearn.linear_model import LinearRegression

    coefficients = np.array([5.0, 3.0, 1.0, 0.3, 0.1])
    context, _ = linear_regression_context(coefficients)
    X = context.reference.X
    reversed_model = LinearRegression().fit(X, X.to_numpy() @ coefficients[::-1])
    rows = context.current.X.iloc[informative_rows(context, 12)["position"].to_numpy()]
    background = X.iloc[:50]
    lime = lime_attributions(context, rows, seed=0)
    right = aligned_shap(explain(context, rows, background), lime)
    wrong = aligned_shap(explain(context, rows, background, model=ModelUnderAudit.from_estimator(reversed_model)), lime)

    good = agreement_metrics(compare_rows(right, lime.weights, 2), right, lime.weights, 2)
    bad = agreement_metrics(compare_rows(wrong, lime.weights, 2), wrong, lime.weights, 2)
    assert good["topk_overlap_mean"] >= 0.9 and good["spearman_mean"] > 0.7 and good["topk_overlap_above_chance"] > 0.8
    assert bad["topk_overlap_mean"] <= 0.2 and bad["spearman_mean"] < -0.3 and bad["global_spearman"] < -0.8
    assert bad["topk_overlap_above_chance"] < 0  # far below the default warning bound (0.25)
    # chance level: the expected share of one random top-2 set of 5 features inside another (hypergeometric)
    assert good["topk_overlap_chance"] == pytest.approx(hypergeom(M=5, n=2, N=2).mean() / 2)
    assert compared_k(3, 3) == 2 and compared_k(3, 30) == 3  # k = p would make every overlap trivially 1


def test_shap_is_aligned_to_lime_by_feature_name_and_explained_class():
    # SHAP lists features in another order and has one output per class; LIME explained b, c, a.
    values = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)[[0, 1, 0]]  # rows, features (z, x, y), classes (a, b, c)
    shap = Attribution(values, np.zeros(3), np.zeros((3, 3)), ["a", "b", "c"], ["z", "x", "y"], "tree", "log-odds", "original")
    lime = LimeAttribution(np.ones((3, 3)), np.ones(3), np.ones(3), np.ones(3), ["b", "c", "a"], [[], [], []], ["x", "y", "z"])
    expected = np.array([[values[r, f, c] for f in (1, 2, 0)] for r, c in zip(range(3), (1, 2, 0), strict=True)])
    np.testing.assert_array_equal(aligned_shap(shap, lime), expected)


def test_multiclass_lime_explains_the_predicted_class():
    from sklearn.datasets import load_iris
    from sklearn.ensemble import GradientBoostingClassifier

    iris = load_iris(as_frame=True)
    X = iris.data.sample(frac=1, random_state=0)
    y = iris.target.loc[X.index].map(dict(enumerate(iris.target_names))).rename("species")
    model = GradientBoostingClassifier(n_estimators=20, random_state=0).fit(X.iloc[:100], y.iloc[:100])
    context = context_for(model, X, y, split=100)
    result = run(AgreementAudit, context, rows=6, num_samples=500)
    table = artifact(result, "rows.json")
    rows = context.current.X.loc[table["row"].astype(int)]
    assert table["explained"].tolist() == model.predict(rows).tolist()
    assert result.metrics["explanation_agreement.rows_compared"] == 6


def test_lime_fidelity_metric_is_the_mean_of_lime_scores(classifier_context):
    result = run(LimeAudit, classifier_context, **FAST)
    selection = informative_rows(classifier_context, FAST["rows"])
    rows = classifier_context.current.X.iloc[selection["position"].to_numpy()]
    scores = lime_attributions(classifier_context, rows, classifier_context.random_state(LIME_SEED), num_samples=FAST["num_samples"]).fidelity
    assert result.metrics["lime.fidelity_mean"] == pytest.approx(scores.mean(), abs=1e-12)
    assert result.metrics["lime.fidelity_min"] == pytest.approx(scores.min(), abs=1e-12)
    np.testing.assert_allclose(artifact(result, "explanations.json")["fidelity_r2"], scores, atol=1e-12)


def test_a_classifier_without_probabilities_is_skipped_with_a_reason(tabular):
    from tests.conftest import make_pipeline_model

    X, y = tabular
    pipe = make_pipeline_model(X, y, "gbm")
    pyfunc = ModelUnderAudit(task="classification", predict=pipe.predict, classes=tuple(pipe.classes_), flavor="python_function", uri="models:/m/1")
    context = build_context(pyfunc, (X.iloc[:250], y.iloc[:250]), (X.iloc[250:], y.iloc[250:]))
    for audit_cls in (LimeAudit, AgreementAudit):
        result = run(audit_cls, context)
        assert result.verdict is Verdict.SKIPPED and "predict_proba" in result.reason


def test_configs_reject_out_of_range_values():
    from pydantic import ValidationError

    for bad in ({"rows": 0}, {"num_samples": 10}, {"dataset": "train"}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            LimeConfig(**bad)
    for bad in ({"top_k": 0}, {"background_rows": 0}):
        with pytest.raises(ValidationError):
            AgreementConfig(**bad)


@pytest.mark.parametrize("audit_cls", [LimeAudit, AgreementAudit])
@pytest.mark.parametrize("context_name", ["classifier_context", "regressor_context"])
def test_contract(audit_cls, context_name, request):
    result = check_audit_contract(audit_cls, request.getfixturevalue(context_name), FAST)
    assert result.verdict in (Verdict.PASS, Verdict.WARN)
