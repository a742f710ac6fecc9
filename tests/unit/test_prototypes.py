"""Prototypes audit (MMD-critic) against references we did not write: hand-checkable blobs, the biased
MMD^2 formula and the log-det regulariser computed directly with numpy/scipy, brute-force greedy steps,
a softmax written out, and the surrogate's fidelity recomputed with scikit-learn metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist, pdist
from sklearn.metrics import accuracy_score, r2_score

from audits.core.context import ModelUnderAudit, build_context
from audits.core.feature_space import FeatureSpace
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.explain.prototypes import PrototypesAudit, PrototypesConfig, attention
from audits.methods.mmd import greedy_criticisms, greedy_prototypes, mmd_critic, squared_distances
from audits.methods.sampling import reference_sample
from audits.testing import check_audit_contract
from tests.conftest import context_for, make_pipeline_model

CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [5.0, 10 * np.sqrt(3) / 2]])  # an equilateral triangle, side 10


def blobs(n: int = 50, scale: float = 0.1, seed: int = 0, outliers=((5.0, 60.0),)):
    """Three tight, equal Gaussian blobs and planted outliers far from all of them; blob id -1 for outliers."""
    rng = np.random.default_rng(seed)
    Z = np.vstack([c + rng.normal(scale=scale, size=(n, 2)) for c in CENTRES] + [np.array(outliers)])
    return Z, np.repeat([0, 1, 2, -1], [n, n, n, len(outliers)])


def direct_mmd2(K: np.ndarray, P) -> float:
    """(1/n^2) sum_ij k(x_i, x_j) - (2/(n m)) sum_ij k(x_i, p_j) + (1/m^2) sum_ij k(p_i, p_j), by explicit sums."""
    n, m = len(K), len(P)
    return K.sum() / n**2 - 2 * K[:, P].sum() / (n * m) + K[np.ix_(P, P)].sum() / m**2


def table(result, name: str) -> pd.DataFrame:
    return next(a.content for a in result.artifacts if a.name == f"{name}.json")


# --- MMD-critic -------------------------------------------------------------------------------


def test_one_prototype_per_blob_at_its_centre_and_the_outlier_is_the_top_criticism():
    Z, blob = blobs()
    n = len(Z)
    # gamma = 0.1 (kernel length ~3): wider than a blob (0.1), narrower than the gap between blobs (10).
    result = mmd_critic(Z, np.zeros(n), per_group=3, criticisms=5, gamma=0.1)
    assert sorted(blob[result.prototypes].tolist()) == [0, 1, 2]
    for p in result.prototypes:
        members = Z[blob == blob[p]]
        to_mean = np.linalg.norm(members - members.mean(axis=0), axis=1)
        assert (to_mean < np.linalg.norm(Z[p] - members.mean(axis=0))).sum() <= 1  # closest (or next closest) to the centre
    outlier = int(np.flatnonzero(blob == -1)[0])
    assert result.criticisms[0] == outlier
    assert outlier not in result.prototypes and not set(result.prototypes) & set(result.criticisms)
    # by hand: the outlier's kernel to everything else is ~exp(-0.1 * 50^2) = 0, so witness = k(o, o) / n = 1 / n
    assert result.witness[outlier] == pytest.approx(1 / n, abs=1e-12)

    K = np.exp(-0.1 * cdist(Z, Z, "sqeuclidean"))
    assert result.mmd2 == pytest.approx(direct_mmd2(K, result.prototypes), rel=1e-10, abs=1e-14)
    protos = result.prototypes
    witness = K.mean(axis=1) - K[:, protos].mean(axis=1)
    np.testing.assert_allclose(result.witness, witness, atol=1e-12)


def test_median_heuristic_still_finds_the_blobs_but_measures_mass_not_isolation():
    Z, blob = blobs()
    n = len(Z)
    result = mmd_critic(Z, np.zeros(n), per_group=3, criticisms=5)  # gamma: the median heuristic
    assert result.gamma == pytest.approx(1 / np.median(pdist(Z, "sqeuclidean")), rel=1e-12)
    assert sorted(blob[result.prototypes].tolist()) == [0, 1, 2]
    K = np.exp(-result.gamma * cdist(Z, Z, "sqeuclidean"))
    assert result.mmd2 == pytest.approx(direct_mmd2(K, result.prototypes), rel=1e-10, abs=1e-14)
    outlier = int(np.flatnonzero(blob == -1)[0])
    # The kernel is now as wide as the gap between blobs: greedy prototypes sit at the blobs' inner
    # edges, and that discrepancy outweighs the 1/n mass of the isolated row. A documented limit.
    assert result.witness[outlier] == pytest.approx(1 / n, abs=1e-9)
    assert np.abs(result.witness).max() > 2 / n and result.criticisms[0] != outlier


def test_greedy_prototypes_take_the_best_step_by_brute_force():
    rng = np.random.default_rng(5)
    Z = rng.normal(size=(15, 3))
    K = np.exp(-0.3 * cdist(Z, Z, "sqeuclidean"))
    chosen, path = greedy_prototypes(K, 4)
    for step in range(4):
        before = list(chosen[:step])
        values = {c: direct_mmd2(K, before + [c]) for c in range(15) if c not in before}
        best = min(values, key=values.get)
        assert chosen[step] == best
        assert path[step] == pytest.approx(values[best], rel=1e-10)
    assert np.all(np.diff(path) < 0)  # each prototype lowers MMD^2


def test_logdet_regulariser_never_takes_a_copy_twice_and_matches_slogdet():
    Z, blob = blobs(outliers=((5.0, 60.0), (5.0, 60.0)))  # one outlier, planted twice
    n = len(Z)
    gamma = 0.1
    K = np.exp(-gamma * cdist(Z, Z, "sqeuclidean"))
    copies = np.flatnonzero(blob == -1)

    plain = mmd_critic(Z, np.zeros(n), 3, 3, gamma=gamma, regularizer="none")
    assert set(plain.criticisms[:2]) == set(copies)  # witness 2/n each: plainly the top two
    assert plain.criticism_scores[:2] == pytest.approx([2 / n, 2 / n], abs=1e-10)

    diverse = mmd_critic(Z, np.zeros(n), 3, 3, gamma=gamma)
    first, second = int(diverse.criticisms[0]), int(diverse.criticisms[1])
    assert first in copies and second not in copies and blob[second] != -1
    # the copy adds nothing to log det K[C, C] (the matrix becomes singular): its gain is -inf
    assert np.linalg.slogdet(K[np.ix_(copies, copies)])[1] < -20
    # the paper's objective: sum |witness| + log det K[C, C]; the greedy gain of the second pick
    gain = abs(diverse.witness[second]) + np.linalg.slogdet(K[np.ix_([first, second], [first, second])])[1] - np.linalg.slogdet(K[[first]][:, [first]])[1]
    assert diverse.criticism_scores[1] == pytest.approx(gain, abs=1e-10)

    # the same selection straight from greedy_criticisms, candidates given by hand
    candidates = np.setdiff1d(np.arange(n), diverse.prototypes)
    chosen, _ = greedy_criticisms(K, diverse.witness, candidates, 3)
    np.testing.assert_array_equal(chosen, diverse.criticisms)


# --- attention and the surrogate ------------------------------------------------------------------


def test_attention_is_a_softmax_peaked_on_an_identical_prototype():
    rng = np.random.default_rng(2)
    protos = rng.normal(size=(6, 4))
    rows = np.vstack([protos[[2, 4]], rng.normal(size=(5, 4))])
    squared = squared_distances(rows, protos)
    weights = attention(squared, temperature=0.7)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert weights[0].argmax() == 2 and weights[1].argmax() == 4
    by_hand = np.exp(-cdist(rows, protos, "sqeuclidean") / 0.7)
    np.testing.assert_allclose(weights, by_hand / by_hand.sum(axis=1, keepdims=True), rtol=1e-9, atol=1e-12)


def recompute(context, result):
    """The surrogate rebuilt from the reported prototypes and temperature: (attention, prototype positions)."""
    gallery = table(result, "prototypes")
    position = {str(label): k for k, label in enumerate(context.reference.X.index)}
    P = [position[r] for r in gallery["row"]]
    space = FeatureSpace.fit(context.reference.X, context.categorical)
    D = cdist(space.transform(context.current.X), space.transform(context.reference.X.iloc[P]), "sqeuclidean")
    tau = float(result.info["temperature"])
    assert tau == pytest.approx(np.median(D.min(axis=1)), rel=1e-9)
    A = np.exp(-(D - D.min(axis=1, keepdims=True)) / tau)
    return A / A.sum(axis=1, keepdims=True), P, space


def test_classifier_fidelity_accuracy_and_mmd2_match_a_recomputation(classifier_context):
    ctx = classifier_context
    result = PrototypesAudit().compute(ctx)
    A, P, space = recompute(ctx, result)
    surrogate = A @ ctx.reference.predictions.proba[P]
    labels = np.asarray(ctx.model.classes)[surrogate.argmax(axis=1)]
    assert result.metrics["fidelity"] == pytest.approx(accuracy_score(ctx.current.predictions.labels, labels), abs=1e-12)
    assert result.metrics["accuracy"] == pytest.approx(accuracy_score(ctx.current.y, labels), abs=1e-12)
    assert result.metrics["mean_max_attention"] == pytest.approx(A.max(axis=1).mean(), rel=1e-9)
    assert result.metrics["prototypes"] == 3 * len(ctx.model.classes) == len(P)

    Z = space.transform(ctx.reference.X)  # 250 rows < max_reference_rows: all of them
    gamma = float(result.info["gamma"])
    assert gamma == pytest.approx(1 / np.median(pdist(Z, "sqeuclidean")), rel=1e-12)
    K = np.exp(-gamma * cdist(Z, Z, "sqeuclidean"))
    assert result.metrics["mmd2"] == pytest.approx(direct_mmd2(K, P), rel=1e-9)

    gallery = table(result, "prototypes")
    assert (gallery["model_label"] == gallery["group"]).all()  # groups: the model's predicted class
    assert gallery.groupby("group")["order"].apply(list).tolist() == [[1, 2, 3]] * len(ctx.model.classes)
    shown = table(result, "attention")
    pos = {str(label): k for k, label in enumerate(ctx.current.X.index)}
    at = [pos[r] for r in shown["row"]]
    np.testing.assert_allclose(shown["attention_1"], A[at].max(axis=1), rtol=1e-9)
    assert shown["prototype_1"].tolist() == [gallery["row"][j] for j in A[at].argmax(axis=1)]
    critics = table(result, "criticisms")
    assert len(critics) == 5 and not set(critics["row"]) & set(gallery["row"])


def test_regressor_fidelity_matches_r2_and_groups_are_prediction_quantiles(regressor_context):
    ctx = regressor_context
    result = PrototypesAudit().compute(ctx)
    A, P, _ = recompute(ctx, result)
    surrogate = A @ ctx.reference.predictions.labels[P].astype(float)
    assert result.metrics["fidelity"] == pytest.approx(r2_score(ctx.current.predictions.labels, surrogate), abs=1e-12)
    assert result.metrics["accuracy"] == pytest.approx(r2_score(ctx.current.y, surrogate), abs=1e-12)

    gallery = table(result, "prototypes")
    assert result.metrics["prototypes"] == 12 and gallery["group"].nunique() == 4
    edges = np.quantile(ctx.reference.predictions.labels.astype(float), [0, 0.25, 0.5, 0.75, 1])
    expected_bin = np.searchsorted(edges[1:-1], gallery["model_prediction"], side="left") + 1
    assert [int(g.split()[0][1:]) for g in gallery["group"]] == expected_bin.tolist()


def test_unlabelled_current_data_reports_no_accuracy(tabular):
    X, y = tabular
    model = ModelUnderAudit.from_estimator(make_pipeline_model(X, y, "gbm"))
    ctx = build_context(model, (X.iloc[:250], y.iloc[:250]), (X.iloc[250:], None), seed=0)
    result = PrototypesAudit().compute(ctx)
    assert "accuracy" not in result.metrics and 0 <= result.metrics["fidelity"] <= 1


# --- the metric can fail ----------------------------------------------------------------------------


def synthetic_context(separable: bool, n: int = 400, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 4)), columns=["a", "b", "c", "d"])
    y = pd.Series(rng.choice(["p", "q"], n), name="label")
    if separable:
        X.loc[y == "q"] += 6.0  # classes 12 standard deviations apart along the diagonal
        model = LogisticRegression().fit(X.iloc[:250], y.iloc[:250])
    else:  # labels unrelated to the features; a fully grown tree memorises the noise
        model = DecisionTreeClassifier(random_state=0).fit(X.iloc[:250], y.iloc[:250])
    return context_for(model, X, y, split=250)


def test_fidelity_is_high_on_separable_classes_and_low_when_the_model_fits_noise():
    audit = PrototypesAudit()
    separable = run_planned(PlannedAudit("prototypes", audit, audit.default_thresholds), synthetic_context(True))
    noise = run_planned(PlannedAudit("prototypes", audit, audit.default_thresholds), synthetic_context(False))
    assert separable.metrics["prototypes.fidelity"] >= 0.9 and separable.verdict is Verdict.PASS
    assert noise.metrics["prototypes.fidelity"] < 0.7 and noise.verdict is Verdict.WARN
    assert separable.metrics["prototypes.fidelity"] - noise.metrics["prototypes.fidelity"] > 0.25


# --- seeds, contract, requirements ------------------------------------------------------------------


def test_same_seed_same_result_and_another_seed_samples_other_reference_rows(tabular):
    X, y = tabular
    model = make_pipeline_model(X, y, "gbm")
    config = PrototypesConfig(max_reference_rows=100)
    a1, a2 = (PrototypesAudit(config).compute(context_for(model, X, y, seed=1)) for _ in range(2))
    b = PrototypesAudit(config).compute(context_for(model, X, y, seed=2))
    assert a1.metrics == a2.metrics
    for x, z in zip(a1.artifacts, a2.artifacts, strict=True):
        if x.kind == "table":
            pd.testing.assert_frame_equal(x.content, z.content)
        else:
            assert x.content == z.content
    assert a1.info["reference_rows_used"] == "100 of 250"
    seeds = [context_for(model, X, y, seed=s).random_state("prototypes.reference_rows") for s in (1, 2)]
    first, second = (set(reference_sample(250, 100, s).tolist()) for s in seeds)
    assert len(first) == len(second) == 100 and first != second
    assert table(a1, "prototypes")["row"].tolist() != table(b, "prototypes")["row"].tolist()
    np.testing.assert_array_equal(reference_sample(80, 100, seeds[0]), np.arange(80))  # under the cap: every row


def test_contract_on_the_classifier(classifier_context):
    check_audit_contract(PrototypesAudit, classifier_context)


def test_contract_on_the_regressor(regressor_context):
    check_audit_contract(PrototypesAudit, regressor_context)


def test_a_classifier_without_predict_proba_is_skipped_with_a_reason(classifier_context):
    model = dataclasses.replace(classifier_context.model, predict_proba=None)
    ctx = dataclasses.replace(classifier_context, model=model)
    result = run_planned(PlannedAudit("prototypes", PrototypesAudit(), PrototypesAudit.default_thresholds), ctx)
    assert result.verdict is Verdict.SKIPPED and "predict_proba" in result.reason


@pytest.mark.parametrize("bad", [{"prototypes_per_group": 0}, {"max_reference_rows": 1}, {"gamma": 0}, {"temperature": -1}, {"unknown": 1}])
def test_invalid_configs_are_rejected(bad):
    with pytest.raises(ValueError):
        PrototypesConfig(**bad)
