"""Drift audit against references we did not write: a synthetic ground truth (which features were
shifted), scipy's tests on the same inputs, PSI recomputed with pandas, and scipy's BH correction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError
from scipy.stats import chi2_contingency, false_discovery_control, ks_2samp, wasserstein_distance
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline

from audits.core.context import ModelUnderAudit, build_context
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.data.drift import DriftAudit, DriftConfig
from audits.methods.shift import correct, numeric_psi
from audits.testing import check_audit_contract

NUMERIC = [f"n{i}" for i in range(8)]
CATEGORICAL = ["c0", "c1"]
EPS = 1e-4


def frame(n: int, rng: np.random.Generator, shift: float = 0.0, mix: tuple = (0.5, 0.3, 0.2)) -> pd.DataFrame:
    """8 standard-normal numeric columns (n0 shifted by ``shift`` sd) and 2 categoricals (c0 with ``mix``)."""
    X = pd.DataFrame(rng.normal(size=(n, 8)), columns=NUMERIC)
    X["n0"] += shift
    X["c0"] = pd.Series(rng.choice(["a", "b", "c"], size=n, p=list(mix)), dtype="str")
    X["c1"] = pd.Series(rng.choice(["u", "v", "w", "z"], size=n, p=[0.4, 0.3, 0.2, 0.1]), dtype="str")
    return X


def context_of(model, X_ref, y_ref, X_cur, y_cur, categorical=CATEGORICAL, seed=0):
    return build_context(ModelUnderAudit.from_estimator(model), (X_ref, y_ref), (X_cur, y_cur),
                         categorical=tuple(categorical), target="y", seed=seed)


def labels(n: int, rng: np.random.Generator, p: float = 0.5) -> pd.Series:
    return pd.Series(np.where(rng.random(n) < p, "yes", "no"), name="y")


def run(context, **config):
    return DriftAudit(DriftConfig(**config)).compute(context)


def table(result, name="features.json") -> pd.DataFrame:
    return next(a.content for a in result.artifacts if a.name == name)


@pytest.mark.parametrize("seed", range(5))
def test_exactly_the_shifted_features_are_flagged(seed):
    rng = np.random.default_rng(seed)
    X_ref, X_cur = frame(3000, rng), frame(3000, rng, shift=0.5, mix=(0.3, 0.3, 0.4))
    model = DummyClassifier(strategy="prior").fit(X_ref, labels(3000, rng))
    result = run(context_of(model, X_ref, None, X_cur, None, seed=seed), domain_classifier=False)
    features = table(result)
    assert set(features.loc[features["drifted"], "feature"]) == {"n0", "c0"}
    assert result.metrics["drifted_features"] == 2 and result.metrics["drifted_share"] == pytest.approx(0.2)
    assert result.metrics["feature.n0.drifted"] == 1 and result.metrics["feature.n1.drifted"] == 0
    # a 0.5-sd mean shift moves the distribution by 0.5 reference sd; the mix change has PSI 0.2 ln 2 - 0.2 ln 0.6
    assert result.metrics["feature.n0.effect"] == pytest.approx(0.5, abs=0.06)
    assert result.metrics["feature.c0.effect"] == pytest.approx(0.2 * np.log(2) - 0.2 * np.log(0.6), abs=0.05)


def test_statistics_equal_scipy_and_psi_equals_a_pandas_recomputation():
    rng = np.random.default_rng(11)
    X_ref, X_cur = frame(600, rng), frame(500, rng, shift=0.2, mix=(0.45, 0.35, 0.2))
    X_ref.loc[rng.random(600) < 0.1, "n1"] = np.nan
    X_cur.loc[rng.random(500) < 0.2, "n1"] = np.nan
    X_cur.loc[rng.random(500) < 0.05, "c1"] = None
    X_cur.loc[X_cur.index[:3], "c1"] = "new"  # a category the reference never saw
    model = DummyClassifier(strategy="prior").fit(X_ref, labels(600, rng))
    result = run(context_of(model, X_ref, None, X_cur, None), domain_classifier=False)
    features = table(result).set_index("feature")

    for column in NUMERIC:
        r, c = X_ref[column].dropna().to_numpy(), X_cur[column].dropna().to_numpy()
        ks = ks_2samp(r, c)
        assert features.loc[column, "statistic"] == pytest.approx(ks.statistic, rel=1e-12)
        assert features.loc[column, "pvalue"] == pytest.approx(ks.pvalue, rel=1e-9)
        assert features.loc[column, "effect"] == pytest.approx(wasserstein_distance(r, c) / r.std(ddof=1), rel=1e-12)
        # PSI over the reference deciles, binned by pandas, missing values a bin of their own
        _, edges = pd.qcut(X_ref[column].dropna(), 10, retbins=True)
        bins = [-np.inf, *edges[1:-1], np.inf]
        with_missing = X_ref[column].isna().any() or X_cur[column].isna().any()

        def shares(x):
            counts = pd.cut(x, bins).value_counts(sort=False).to_numpy()
            counts = np.append(counts, x.isna().sum()) if with_missing else counts
            return np.maximum(counts / len(x), EPS)

        p, q = shares(X_ref[column]), shares(X_cur[column])
        assert features.loc[column, "psi"] == pytest.approx(np.sum((q - p) * np.log(q / p)), rel=1e-9)

    for column in CATEGORICAL:
        r, c = X_ref[column].fillna("(missing)"), X_cur[column].fillna("(missing)")
        crosstab = pd.crosstab(pd.concat([r, c]), np.r_[np.zeros(len(r)), np.ones(len(c))])
        test = chi2_contingency(crosstab.to_numpy())
        assert features.loc[column, "statistic"] == pytest.approx(test.statistic, rel=1e-12)
        assert features.loc[column, "pvalue"] == pytest.approx(test.pvalue, rel=1e-9)
        p, q = r.value_counts(normalize=True), c.value_counts(normalize=True)
        p, q = p.reindex(p.index.union(q.index), fill_value=0), q.reindex(p.index.union(q.index), fill_value=0)
        p, q = p.clip(lower=EPS), q.clip(lower=EPS)
        assert features.loc[column, "effect"] == pytest.approx(float(((q - p) * np.log(q / p)).sum()), rel=1e-12)

    raw = features["pvalue"].to_numpy()
    np.testing.assert_allclose(features["pvalue_corrected"], false_discovery_control(raw, method="bh"), rtol=1e-12)
    np.testing.assert_allclose(correct(raw, "bonferroni"), np.minimum(raw * len(raw), 1), rtol=1e-12)
    np.testing.assert_array_equal(correct(np.r_[raw, np.nan], "none"), np.r_[raw, np.nan])
    assert result.metrics["feature.n0.pvalue_corrected"] == features.loc["n0", "pvalue_corrected"]
    # the corrected p-value and the effect floor both decide
    expected = (features["pvalue_corrected"] < 0.05) & (features["effect"] > 0.1)
    assert features["drifted"].tolist() == expected.tolist()


def test_domain_classifier_is_chance_without_drift_and_finds_a_strong_shift():
    rng = np.random.default_rng(3)
    # one feature moved by 3 sd: the best possible AUC is Phi(3 / sqrt 2) = 0.983
    X_ref, X_same, X_shifted = frame(800, rng), frame(800, rng), frame(800, rng, shift=3.0)
    model = DummyClassifier(strategy="prior").fit(X_ref, labels(800, rng))
    planned = PlannedAudit("drift", DriftAudit(DriftConfig()), DriftAudit.default_thresholds)
    same, shifted = (run_planned(planned, context_of(model, X_ref, None, X, None)) for X in (X_same, X_shifted))
    assert same.metrics["drift.domain_auc"] < 0.6
    assert shifted.metrics["drift.domain_auc"] > 0.9
    importance = table(shifted).set_index("feature")["domain_importance"]
    assert importance.idxmax() == "n0" and importance["n0"] > 10 * importance.drop("n0").abs().max()
    assert shifted.info["domain_top_features"].startswith("n0 ")
    # the thresholds: no drift passes; a strong shift fails on the domain AUC and warns on the drifted feature
    assert [same.verdict, shifted.verdict] == [Verdict.PASS, Verdict.FAIL]
    assert {c.metric for c in shifted.checks if not c.passed} == {"drift.drifted_features", "drift.domain_auc"}


def one_feature_model(kind: str):
    """A model that sees only x0: x1 is a feature it ignores."""
    final = LogisticRegression() if kind == "classifier" else LinearRegression()
    return make_pipeline(ColumnTransformer([("x0", "passthrough", ["x0"])]), final)


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_prediction_drift_follows_the_features_the_model_uses(kind):
    rng = np.random.default_rng(5)

    def data(n, shift0=0.0, shift1=0.0):
        X = pd.DataFrame({"x0": rng.normal(shift0, 1, n), "x1": rng.normal(shift1, 1, n)})
        signal = 2 * X["x0"] + rng.normal(size=n)
        y = pd.Series(np.where(signal > 0, "yes", "no") if kind == "classifier" else signal, name="y")
        return X, y

    X_ref, y_ref = data(2000)
    model = one_feature_model(kind).fit(X_ref, y_ref)
    results = {}
    for name, shifts in {"used": (1.0, 0.0), "ignored": (0.0, 1.0)}.items():
        X_cur, y_cur = data(2000, *shifts)
        results[name] = run(context_of(model, X_ref, y_ref, X_cur, y_cur, categorical=()), domain_classifier=False)
    used, ignored = results["used"].metrics, results["ignored"].metrics
    assert used["feature.x0.drifted"] == 1 and ignored["feature.x1.drifted"] == 1  # both inputs drifted...
    assert used["prediction.drifted"] == 1 and used["prediction.ks_pvalue"] < 1e-10  # ...the output only along x0
    assert ignored["prediction.drifted"] == 0 and ignored["prediction.wasserstein"] < 0.1
    if kind == "classifier":
        assert used["prediction.psi"] > 0.1 and used["label.psi"] > 0.1
    else:
        assert used["label.ks_pvalue"] < 1e-10 and ignored["label.ks_pvalue"] > 1e-3


def test_beyond_max_rows_every_row_is_counted_and_scipy_lies_within_the_stated_bounds():
    """Past max_rows a side the values are no longer kept: every row is counted into bins fitted on the sample, KS and
    Wasserstein are read off the bins, and scipy's exact figures on all the rows lie within the bounds the audit states
    (a heavy-tailed column included); categories are still counted exactly; any split and order gives the same."""
    from tests.unit.test_partial import merged_result

    rng = np.random.default_rng(7)
    n = 40_000
    X_ref, X_cur = frame(n, rng), frame(n, rng, shift=0.15, mix=(0.45, 0.35, 0.2))
    X_ref["tail"], X_cur["tail"] = rng.lognormal(0, 2, n), rng.lognormal(0.1, 2, n)
    X_cur.loc[rng.random(n) < 0.05, "n1"] = np.nan
    model = DummyClassifier(strategy="prior").fit(X_ref, labels(n, rng))
    context = context_of(model, X_ref, None, X_cur, None)
    audit = DriftAudit(DriftConfig(max_rows=5000, domain_classifier=False))
    result = merged_result(audit, context, 6, 0)
    features = table(result).set_index("feature")
    assert result.metrics["rows.reference"] == n and result.metrics["rows.current"] == n
    assert "every row counted" in result.info["every_row"]
    for column in [*NUMERIC, "tail"]:
        r, c = X_ref[column].dropna().to_numpy(), X_cur[column].dropna().to_numpy()
        row = features.loc[column]
        exact_ks = ks_2samp(r, c).statistic
        assert row["statistic"] - 1e-12 <= exact_ks <= row["statistic"] + row["ks_bound"] + 1e-12, column
        assert row["ks_bound"] < 0.01
        exact_effect = wasserstein_distance(r, c) / r.std(ddof=1)
        assert row["effect"] - 1e-9 <= exact_effect <= row["effect"] + row["effect_bound"] + 1e-9, column
        assert row["effect_bound"] < 0.05
        # PSI's bins are among the fine ones: exact (here the sample is every row, so its deciles are the reference's)
        assert row["psi"] == pytest.approx(numeric_psi(X_ref[column].to_numpy(), X_cur[column].to_numpy()), rel=1e-9)
    assert features.loc["n0", "effect"] == pytest.approx(0.15, abs=0.02) and features.loc["n0", "drifted"]
    assert not features.loc["n2", "drifted"]
    assert features.loc["n1", "missing_current"] == pytest.approx(X_cur["n1"].isna().mean(), abs=1e-12)
    for column in CATEGORICAL:
        crosstab = pd.crosstab(pd.concat([X_ref[column], X_cur[column]]), np.r_[np.zeros(n), np.ones(n)])
        assert features.loc[column, "pvalue"] == pytest.approx(chi2_contingency(crosstab.to_numpy()).pvalue, rel=1e-9)
    again = table(merged_result(audit, context, 3, 1)).set_index("feature")
    for column in ("statistic", "pvalue", "effect", "psi", "ks_bound", "effect_bound"):
        np.testing.assert_allclose(again[column], features[column], rtol=1e-9, atol=1e-12)


def test_configuration_is_validated_and_tiny_data_is_skipped(tabular):
    from tests.conftest import context_for, make_pipeline_model

    for bad in ({"correction": "holm"}, {"alpha": 1.5}, {"min_effect": {"numeric": -1}}, {"max_rows": 5}, {"typo": 1}):
        with pytest.raises(ValidationError):
            DriftConfig.model_validate(bad)
    assert DriftConfig.model_validate({"min_effect": {"categorical": 0.25}}).min_effect.numeric == 0.1
    X, y = tabular
    tiny = context_for(make_pipeline_model(X, y, "gbm"), X.iloc[:260], y.iloc[:260])  # 10 current rows: runs
    quick = DriftAudit(DriftConfig(domain_classifier=False))
    assert run_planned(PlannedAudit("drift", quick, ()), tiny).verdict is Verdict.PASS
    tinier = context_for(make_pipeline_model(X, y, "gbm"), X.iloc[:259], y.iloc[:259])
    skipped = run_planned(PlannedAudit("drift", quick, ()), tinier)
    assert skipped.verdict is Verdict.SKIPPED and "at least 10 rows" in skipped.reason


def test_contract_and_output_numbers_on_classifier(classifier_context):
    metrics = check_audit_contract(DriftAudit, classifier_context).metrics
    ref, cur = classifier_context.reference, classifier_context.current
    assert metrics["drift.rows.reference"] == len(ref) and metrics["drift.rows.current"] == len(cur)
    score = ks_2samp(ref.predictions.proba[:, 1], cur.predictions.proba[:, 1])
    assert metrics["drift.prediction.ks_pvalue"] == pytest.approx(score.pvalue, rel=1e-9)
    predicted = pd.crosstab(np.r_[ref.predictions.labels, cur.predictions.labels], np.r_[np.zeros(len(ref)), np.ones(len(cur))])
    assert metrics["drift.prediction.chi2_pvalue"] == pytest.approx(chi2_contingency(predicted.to_numpy()).pvalue, rel=1e-9)
    p, q = ref.y.value_counts(normalize=True).sort_index(), cur.y.value_counts(normalize=True).sort_index()
    assert metrics["drift.label.psi"] == pytest.approx(float(((q - p) * np.log(q / p)).sum()), rel=1e-9)
    assert 0.3 < metrics["drift.domain_auc"] < 0.7  # two halves of one sample


def test_contract_and_output_numbers_on_regressor(regressor_context):
    metrics = check_audit_contract(DriftAudit, regressor_context).metrics
    ref, cur = regressor_context.reference, regressor_context.current
    assert metrics["drift.prediction.ks_pvalue"] == pytest.approx(ks_2samp(ref.predictions.labels, cur.predictions.labels).pvalue, rel=1e-9)
    w = wasserstein_distance(ref.predictions.labels, cur.predictions.labels) / np.std(ref.predictions.labels, ddof=1)
    assert metrics["drift.prediction.wasserstein"] == pytest.approx(w, rel=1e-12)
    assert metrics["drift.label.ks_pvalue"] == pytest.approx(ks_2samp(ref.y, cur.y).pvalue, rel=1e-9)


def test_empty_and_constant_columns_are_reported_not_fatal():
    rng = np.random.default_rng(2)
    X = pd.DataFrame({"x": rng.normal(size=120), "empty": np.nan, "constant": 1.0})
    model = DummyClassifier(strategy="prior").fit(X, labels(120, rng))
    result = run_planned(PlannedAudit("drift", DriftAudit(), ()), context_of(model, X.iloc[:60], None, X.iloc[60:], None, ()))
    assert result.verdict is Verdict.PASS, result.reason
    assert np.isnan(result.metrics["drift.feature.empty.pvalue_corrected"]) and result.metrics["drift.feature.empty.drifted"] == 0
    assert result.metrics["drift.feature.constant.effect"] == 0 and result.metrics["drift.feature.constant.pvalue_corrected"] == 1
    assert table(result).set_index("feature").loc["empty", "domain_importance"] == 0


@pytest.mark.parametrize("kind", ["normal", "lognormal", "ties", "integers"])
def test_the_grid_lookup_counts_edges_below_each_value_exactly_as_searchsorted(kind):
    """bin_cells replaces np.searchsorted(edges, v, 'left') on every row: the same cell for every value, the edges
    themselves, their nearest floats on both sides, values beyond both ends, and a heavy tail that crowds the grid."""
    from audits.methods.shift import bin_cells

    rng = np.random.default_rng(7)
    draw = {"normal": lambda n: rng.normal(size=n), "lognormal": lambda n: rng.lognormal(0, 3, size=n),
            "ties": lambda n: np.round(rng.normal(size=n), 1), "integers": lambda n: rng.integers(0, 3000, n).astype(float)}[kind]
    edges = np.unique(np.quantile(draw(20_000), np.linspace(0, 1, 2001)[1:-1]))
    values = np.concatenate([draw(100_000), edges, np.nextafter(edges, np.inf), np.nextafter(edges, -np.inf),
                             [-1e300, 1e300, edges[0] - 1, edges[-1] + 1]])
    assert np.array_equal(bin_cells(values, edges), np.searchsorted(edges, values, side="left"))
