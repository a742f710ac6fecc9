"""Sanity checks (Adebayo et al.) and explanation stability, against references we did not write:
model outputs computed by scikit-learn, exact interventional Shapley values, a model-independent
"explanation" that must fail, and numpy's own statistics."""

from __future__ import annotations

import dataclasses
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.explain.explanation_stability import ExplanationStabilityAudit, lime_runs, shap_runs, stability
from audits.explain.sanity_checks import SanityChecksAudit, SanityChecksConfig, run_checks
from audits.methods.exact_shapley import interventional_values
from audits.methods.randomize import UnsupportedModel, cascade
from audits.methods.shap_values import explain
from audits.testing import check_audit_contract, fingerprint
from tests.conftest import context_for, make_pipeline_model

SMALL_SANITY = {"rows": 20, "background_rows": 20, "lime_rows": 2, "lime_samples": 200, "steps": 2}
SMALL_STABILITY = {"rows": 20, "background_rows": 20, "resamples": 3, "lime_rows": 2, "lime_seeds": 2, "lime_samples": 200}


def numeric_data(n=300, p=5, seed=3):
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, p)), columns=[f"f{i}" for i in range(p)])
    logit = 2 * X["f0"] - X["f1"] + X["f2"] * X["f3"]
    y = pd.Series(np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "pos", "neg"), name="label")
    return X, y


# --- randomisation really randomises, and only a copy ------------------------------------------


@pytest.mark.parametrize("kind", ["gbm_pipeline", "hgb", "forest", "mlp", "logistic"])
def test_full_randomisation_changes_predictions_and_leaves_the_model_alone(kind, tabular):
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    if kind == "gbm_pipeline":
        X, y = tabular
        model = make_pipeline_model(X, y, "gbm")
    else:
        X, y = numeric_data()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = {
                "hgb": lambda: HistGradientBoostingClassifier(max_iter=30, random_state=0),
                "forest": lambda: RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0),
                "mlp": lambda: MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0),
                "logistic": lambda: LogisticRegression(),
            }[kind]().fit(X, y)
    before = pickle.dumps(model)
    full = cascade(model, 4, np.random.default_rng(0), data=X)[-1]
    assert full.share == 1.0
    original, randomised = model.predict_proba(X)[:, 1], full.estimator.predict_proba(X)[:, 1]
    assert np.mean(~np.isclose(original, randomised)) > 0.95  # (almost) every row's probability moved
    assert abs(np.corrcoef(original, randomised)[0, 1]) < 0.9
    assert pickle.dumps(model) == before  # the audited model is untouched


def test_shap_explains_the_randomised_model_not_the_original(classifier_context):
    context = classifier_context
    before = pickle.dumps(context.model.estimator)
    full = cascade(context.model.estimator, 2, np.random.default_rng(1), data=context.reference.X)[-1]
    rows, background = context.current.X.iloc[:20], context.reference.X.iloc[:20]
    randomised = explain(context, rows, background, model=ModelUnderAudit.from_estimator(full.estimator))
    original = explain(context, rows, background)
    assert randomised.explainer == original.explainer == "tree"
    # TreeExplainer built afresh reads the randomised nodes: its values add up to the randomised model's log-odds
    log_odds = full.estimator.decision_function(rows)
    np.testing.assert_allclose(randomised.values.sum(axis=1)[:, 0] + randomised.base[0], log_odds, atol=1e-8)
    assert not np.allclose(randomised.outputs, original.outputs)
    assert pickle.dumps(context.model.estimator) == before


def test_cascade_randomises_the_last_trees_first_in_the_shares_the_table_reports(tabular):
    X, y = tabular
    context = context_for(make_pipeline_model(X, y, "gbm"), X, y)  # 30 trees
    before, data_before = pickle.dumps(context.model.estimator), fingerprint(context)
    metrics, table, info = run_checks(context, SanityChecksConfig(methods=("feature_variance",), steps=4))
    assert pickle.dumps(context.model.estimator) == before and fingerprint(context) == data_before
    assert "split features drawn uniformly" in info["model_randomisation"]

    # the same cascade, rebuilt with the audit's own random stream: count the trees that really changed
    gbm = context.model.estimator[-1]
    steps = cascade(context.model.estimator, 4, context.rng("sanity_checks.model_randomisation"), data=context.reference.X)
    changed_shares = []
    for step in steps:
        trees = step.estimator[-1].estimators_[:, 0]
        changed = [not (np.array_equal(t.tree_.value, o.tree_.value) and np.array_equal(t.tree_.feature, o.tree_.feature))
                   for t, o in zip(trees, gbm.estimators_[:, 0], strict=True)]
        first_changed = changed.index(True)
        assert not any(changed[:first_changed]) and all(changed[first_changed:])  # a suffix: the last trees
        changed_shares.append(sum(changed) / len(changed))
    assert [round(s * 30) for s in changed_shares] == [8, 15, 23, 30]
    cascade_rows = table[table["randomisation"] == "cascading model randomisation"]
    np.testing.assert_allclose(cascade_rows["share_randomised"], changed_shares)
    np.testing.assert_allclose([metrics[f"model_randomisation.step_{k}.share_randomised"] for k in range(1, 5)], changed_shares)
    # at step 1 the first 22 trees are exactly the audited ones
    first = steps[0].estimator[-1].estimators_[:22, 0]
    assert all(np.array_equal(t.tree_.value, o.tree_.value) for t, o in zip(first, gbm.estimators_[:22, 0], strict=True))


def test_mlp_cascade_starts_at_the_output_layer():
    from sklearn.neural_network import MLPClassifier

    X, y = numeric_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(8, 6), max_iter=300, random_state=0).fit(X, y)
    steps = cascade(mlp, 3, np.random.default_rng(0))
    assert [s.randomised for s in steps] == [1, 2, 3] and steps[0].unit == "layers"
    for step, randomised_layers in zip(steps, [{2}, {1, 2}, {0, 1, 2}], strict=True):
        changed = {i for i in range(3) if not np.array_equal(step.estimator.coefs_[i], mlp.coefs_[i])}
        changed_bias = {i for i in range(3) if not np.array_equal(step.estimator.intercepts_[i], mlp.intercepts_[i])}
        assert changed == changed_bias == randomised_layers
        assert not np.allclose(step.estimator.predict_proba(X), mlp.predict_proba(X))
    # a two-layer MLP over four steps: one layer, one layer, two, two
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shallow = MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0).fit(X, y)
    assert [s.randomised for s in cascade(shallow, 4, np.random.default_rng(0))] == [1, 1, 2, 2]


def test_linear_models_are_randomised_in_one_step_and_other_models_are_refused():
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    X, y = numeric_data()
    lr = LogisticRegression().fit(X, y)
    steps = cascade(lr, 3, np.random.default_rng(0))
    assert [s.share for s in steps] == [1.0, 1.0, 1.0]
    assert steps[0].estimator is steps[2].estimator  # one randomised copy serves every step
    assert not np.isclose(steps[0].estimator.coef_, lr.coef_).any()
    with pytest.raises(UnsupportedModel, match="KNeighborsClassifier"):
        cascade(KNeighborsClassifier().fit(X, y), 3, np.random.default_rng(0))


# --- the check itself ----------------------------------------------------------------------------


@pytest.mark.parametrize("final", ["gbm", "logistic"])
def test_shap_passes_and_a_model_independent_explanation_fails(final, tabular):
    X, y = tabular
    context = context_for(make_pipeline_model(X, y, final), X, y)
    cfg = SanityChecksConfig(methods=("shap", "feature_variance"), steps=2, rows=30, background_rows=30)
    runs = [run_checks(dataclasses.replace(context, seed=seed), cfg)[0] for seed in range(6)]
    for metrics in runs:
        # the baseline ignores the model: its explanation of any randomised model is its explanation of the real one
        for key in ("label_randomisation.global_spearman", "label_randomisation.local_spearman",
                    "model_randomisation.global_spearman", "model_randomisation.local_spearman"):
            assert metrics[f"feature_variance.{key}"] == pytest.approx(1.0, abs=1e-12)
        assert metrics["feature_variance.max_global_spearman"] == pytest.approx(1.0, abs=1e-12)
        assert metrics["label_randomisation.changed_predictions"] > 0.5
        assert metrics["model_randomisation.changed_predictions"] == 1.0
    # SHAP decorrelates. With 5 features a random ranking reaches 0.5 with probability 0.225, so a
    # single run may fail by chance: across seeds it passes nearly always, and is uncorrelated on average.
    assert sum(m["shap.max_global_spearman"] <= 0.8 for m in runs) >= 5
    for key in ("shap.label_randomisation.global_spearman", "shap.model_randomisation.global_spearman"):
        assert np.mean([m[key] for m in runs]) < 0.25


def test_randomising_leaves_alone_keeps_the_learned_tree_structure(tabular):
    """Why splits are randomised too: with leaves alone random, trees still split on what mattered."""
    X, y = tabular
    context = context_for(make_pipeline_model(X, y, "gbm"), X, y)
    correlations = {}
    for splits in (False, True):
        cfg = SanityChecksConfig(methods=("shap",), steps=1, rows=30, background_rows=30, tree_splits=splits)
        correlations[splits] = [run_checks(dataclasses.replace(context, seed=s), cfg)[0]["shap.model_randomisation.global_spearman"]
                                for s in range(4)]
    assert np.mean(correlations[False]) > 0.5 > 0.0 > np.mean(correlations[True])


def test_an_unsupported_model_still_gets_label_randomisation(tabular):
    X, y = tabular
    context = context_for(make_pipeline_model(X, y, "knn"), X, y)
    cfg = SanityChecksConfig(methods=("shap", "feature_variance"), rows=10, background_rows=10, steps=2)
    metrics, table, info = run_checks(context, cfg)
    assert info["model_randomisation"].startswith("skipped") and "KNeighborsClassifier" in info["model_randomisation"]
    assert np.isfinite(metrics["shap.label_randomisation.global_spearman"])
    assert np.isnan(metrics["shap.model_randomisation.step_2.global_spearman"])  # the key exists: stable across models
    assert metrics["shap.max_global_spearman"] == metrics["shap.label_randomisation.global_spearman"]  # the only one measured
    assert set(table["randomisation"]) == {"labels shuffled, model refitted"}


def test_a_model_without_native_estimator_is_skipped_with_a_reason(classifier_context):
    pyfunc = dataclasses.replace(classifier_context.model, estimator=None, flavor="python_function")
    context = dataclasses.replace(classifier_context, model=pyfunc)
    result = run_planned(PlannedAudit("sanity_checks", SanityChecksAudit(), SanityChecksAudit.default_thresholds), context)
    assert result.verdict is Verdict.SKIPPED and "native scikit-learn model" in result.reason


# --- stability -----------------------------------------------------------------------------------


def test_stability_statistics_against_numpy():
    runs = np.array([[[3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]],
                     [[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 0.0, 0.0]],
                     [[3.0, 2.0, 0.5, 0.0], [1.0, 1.0, 0.0, 0.0]]])  # (resamples, rows, features)
    relative_std, overlap = stability(runs, k=2)
    assert relative_std == pytest.approx(np.std(runs, axis=0, ddof=1).mean() / np.abs(runs).mean())
    # row 0: top-2 sets {0,1}, {2,3}, {0,1} -> pairs overlap 0, 1, 0; row 1 always {0,1}
    assert overlap == pytest.approx(np.mean([(0 + 1) / 2, (1 + 1) / 2, (0 + 1) / 2]))
    assert stability(runs[[0, 0]], k=2) == (0.0, 1.0)


def test_a_deterministic_explainer_with_a_fixed_background_is_perfectly_stable():
    from sklearn.linear_model import LogisticRegression

    X, y = numeric_data()
    context = context_for(LogisticRegression().fit(X, y), X, y, split=200)
    rows, background = context.current.X.iloc[:20], context.reference.X.iloc[:40]
    runs, background_free, measured = shap_runs(context, rows, [background, background])
    assert not background_free and "linear" in measured
    assert stability(runs, k=3) == (0.0, 1.0)
    # different backgrounds move linear SHAP values (phi_j = coef_j * (x_j - mean of background_j))
    other = context.reference.X.iloc[100:140]
    moved, _, _ = shap_runs(context, rows, [background, other])
    lr = context.model.estimator
    expected = lr.coef_[0] * (background.mean() - other.mean()).to_numpy()
    np.testing.assert_allclose(moved[1, :, :, 0] - moved[0, :, :, 0], np.broadcast_to(expected, (20, 5)), atol=1e-10)
    assert stability(moved, k=3)[0] > 0


def test_trees_are_background_free_and_their_interventional_variant_is_exact():
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = numeric_data()
    pipe = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0)).fit(X, y)
    context = build_context(ModelUnderAudit.from_estimator(pipe), (X.iloc[:200], y.iloc[:200]), (X.iloc[200:], None))
    rows, background = X.iloc[200:205], X.iloc[:25]
    runs, background_free, measured = shap_runs(context, rows, [background])
    assert background_free and "interventional" in measured

    def log_odds(a):
        return pipe.decision_function(pd.DataFrame(a, columns=X.columns))

    for r, row in enumerate(rows.to_numpy()):
        phi, _ = interventional_values(log_odds, row, background.to_numpy())
        np.testing.assert_allclose(runs[0, r, :, 0], phi[:, 0], atol=1e-8)


def test_lime_moves_with_its_seed_and_not_without(classifier_context):
    rows = classifier_context.current.X.iloc[:3]
    same = lime_runs(classifier_context, rows, [7, 7], samples=300)
    np.testing.assert_array_equal(same[0], same[1])
    assert stability(same, k=3) == (0.0, 1.0)
    different = lime_runs(classifier_context, rows, [7, 8], samples=300)
    assert stability(different, k=3)[0] > 0


def test_the_audit_reports_background_free_trees(classifier_context):
    result = ExplanationStabilityAudit(ExplanationStabilityAudit.Config(methods=("shap",), rows=10, background_rows=10, resamples=2)).compute(classifier_context)
    assert result.metrics["shap.background_free"] == 1.0
    assert "interventional" in result.info["shap_measured"]
    assert 0 < result.metrics["shap.relative_std"] < 1 and 0 < result.metrics["shap.topk_overlap_mean"] <= 1


# --- contract ------------------------------------------------------------------------------------


@pytest.mark.parametrize("context_name", ["classifier_context", "regressor_context"])
def test_sanity_checks_contract(context_name, request):
    result = check_audit_contract(SanityChecksAudit, request.getfixturevalue(context_name), config=SMALL_SANITY)
    assert {"sanity_checks.shap.max_global_spearman", "sanity_checks.lime.max_global_spearman"} <= result.metrics.keys()
    assert [a.name for a in result.artifacts] == ["randomisation.json", "cascade.png"]


@pytest.mark.parametrize("context_name", ["classifier_context", "regressor_context"])
def test_explanation_stability_contract(context_name, request):
    result = check_audit_contract(ExplanationStabilityAudit, request.getfixturevalue(context_name), config=SMALL_STABILITY)
    assert {"explanation_stability.shap.relative_std", "explanation_stability.lime.topk_overlap_mean"} <= result.metrics.keys()


def test_a_high_correlation_fails_only_when_chance_cannot_explain_it():
    from scipy.stats import spearmanr

    from audits.core import Threshold
    from audits.explain.sanity_checks import chance, chance_band

    # 5 features: an unrelated ranking reaches 0.5 in 27 of 120 orderings, 1.0 in 1 of 120
    assert chance(0.5, 5) == pytest.approx(27 / 120) and chance(1.0, 5) == pytest.approx(1 / 120)
    # the band chance reaches with probability >= 5 %: up to 0.8 of 5 features (8 of 120 orderings reach it), about 0.31 of 30
    assert chance_band(5, 0.05) == pytest.approx(0.8) and chance(0.8, 5) == pytest.approx(8 / 120) and chance(0.9, 5) < 0.05
    assert 0.29 < chance_band(30, 0.05) < 0.33 and chance(chance_band(30, 0.05), 30) == pytest.approx(0.05)
    bound = Threshold(metric="s", max=0.5)

    def outcome(value, n):
        check = bound.evaluate({"s": value}, chance={"s": (-1.0, chance_band(n, 0.05))})
        return "cannot tell" if check.cannot_tell else check.passed

    assert outcome(0.7, 5) == "cannot tell"  # beyond 0.5, but 0.7 happens by chance 12 % of the time
    assert outcome(1.0, 5) is False  # identical ranking: the method did not change
    assert outcome(0.6, 30) is False  # 0.6 over 30 features is not chance
    assert outcome(0.4, 5) is True
    # the t approximation agrees with scipy's own one-sided test for many features
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + rng.normal(scale=1.5, size=30)
    rho = spearmanr(a, b).statistic
    assert chance(rho, 30) == pytest.approx(spearmanr(a, b, alternative="greater").pvalue, rel=1e-6)
