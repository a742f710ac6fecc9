"""Projections audit against references we did not write: scikit-learn's trustworthiness and PCA on
the same arrays, the known cluster structure of make_blobs (a t-SNE map must keep it, a random map
must not, placed rows must land in their own cluster), and the audit's documented blind spot."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import trustworthiness as sk_trustworthiness
from sklearn.neighbors import NearestNeighbors

from audits.core.context import ModelUnderAudit, build_context
from audits.core.feature_space import FeatureSpace
from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.methods.sampling import reference_sample
from audits.methods.shap_values import explain
from audits.methods.tsne import trustworthiness, tsne_embed, tsne_settings
from audits.projections.projections import ProjectionsAudit, ProjectionsConfig, flat_shap, settings_from
from audits.rendering.figures import Colouring
from audits.rendering.html import html_view
from audits.testing import check_audit_contract
from tests.conftest import context_for, make_pipeline_model

SMALL = {"reference_rows": 150, "current_rows": 100, "shap_rows": 60}
COLUMNS = [f"f{i}" for i in range(10)]


def run(context, **config):
    audit = ProjectionsAudit(ProjectionsConfig(**config))
    return run_planned(PlannedAudit("projections", audit, ProjectionsAudit.default_thresholds), context)


def artifact(result, name):
    return next(a for a in result.artifacts if a.name == name)


def rows_of(context, table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    ids = table.loc[table["dataset"] == dataset, "row"].tolist()
    X = context.dataset(dataset).X
    return X.loc[[X.index[[str(i) for i in X.index].index(r)] for r in ids]]


@pytest.fixture(scope="module")
def blobs():
    X, y, centers = make_blobs(n_samples=1000, n_features=10, centers=5, cluster_std=1.0, random_state=0, return_centers=True)
    return X, y, centers


@pytest.fixture(scope="module")
def classifier_result(classifier_context):
    """The contract on the classifier fixture; its first result feeds the value tests below."""
    return check_audit_contract(ProjectionsAudit, classifier_context, SMALL)


# ---------------------------------------------------------------------------------------------
# The map keeps known structure; the metric can fail


def test_tsne_of_separated_clusters_is_trustworthy_and_a_random_map_is_not(blobs):
    X, _, _ = blobs
    embedding, _ = tsne_embed(X, None, settings_from(ProjectionsConfig(), len(X)), random_state=0)
    mapped, k = trustworthiness(X, embedding, 10)
    random_map, _ = trustworthiness(X, np.random.default_rng(0).normal(size=(len(X), 2)), 10)
    assert k == 10
    assert mapped > 0.9
    assert random_map < 0.6 and mapped - random_map > 0.3
    assert mapped == sk_trustworthiness(X, embedding, n_neighbors=10)


def test_trustworthiness_lowers_k_below_half_the_rows_as_sklearn_requires():
    rng = np.random.default_rng(1)
    high, low = rng.normal(size=(9, 4)), rng.normal(size=(9, 2))
    value, k = trustworthiness(high, low, 10)
    assert k == 4  # scikit-learn needs k < n / 2
    assert value == sk_trustworthiness(high, low, n_neighbors=4)
    assert np.isnan(trustworthiness(high[:2], low[:2], 10)[0])


def blob_context(blobs, current: np.ndarray):
    X, y, _ = blobs
    reference = pd.DataFrame(X, columns=COLUMNS)
    labels = pd.Series(y, name="cluster")
    model = ModelUnderAudit.from_estimator(LogisticRegression(max_iter=1000).fit(reference, labels))
    return build_context(model, (reference, labels), (pd.DataFrame(current, columns=COLUMNS), None), target="cluster", seed=0)


def test_current_rows_land_in_their_cluster_and_far_rows_are_flagged_by_ood_not_by_the_map(blobs):
    X, y, centers = blobs
    rng = np.random.default_rng(2)
    own = rng.normal(centers[2], 1.0, size=(150, 10))  # one reference cluster
    far = rng.normal(centers.mean(axis=0) + 15, 1.0, size=(150, 10))  # nowhere near any reference row
    result = run(blob_context(blobs, np.vstack([own, far])), include_shap=False, html=False)
    table = artifact(result, "coordinates.json").content
    reference, current = table[table["dataset"] == "reference"], table[table["dataset"] == "current"]
    from_own = current["row"].astype(int).to_numpy() < 150

    index = NearestNeighbors(n_neighbors=5).fit(reference[["tsne_x", "tsne_y"]].to_numpy())
    neighbours = index.kneighbors(current.loc[from_own, ["tsne_x", "tsne_y"]].to_numpy())[1]
    assert np.mean(reference["label"].to_numpy()[neighbours] == "2") > 0.9

    # Unlabelled current rows: no label, no error.
    assert current["label"].isna().all() and current["error"].isna().all()
    # Feature-space novelty sees the far rows; the t-SNE map, by construction, places them next to reference rows.
    assert current.loc[~from_own, "ood_flag"].mean() > 0.9
    assert current.loc[from_own, "ood_flag"].mean() < 0.2
    assert result.metrics["projections.current_ood_share"] == pytest.approx(current["ood_flag"].mean())
    assert current.loc[~from_own, "tsne_new_region"].mean() < 0.2


def test_an_unshifted_batch_lands_in_new_regions_at_about_the_held_out_rate(blobs):
    _, _, centers = blobs
    current, _ = make_blobs(n_samples=400, n_features=10, centers=centers, cluster_std=1.0, random_state=7)
    result = run(blob_context(blobs, current), include_shap=False, html=False)
    assert result.metrics["projections.current_in_new_region"] < 0.15
    assert result.metrics["projections.current_ood_share"] < 0.15
    assert result.metrics["projections.tsne.trustworthiness_reference"] > 0.9
    assert result.verdict is Verdict.PASS


# ---------------------------------------------------------------------------------------------
# Our metrics equal scikit-learn's on the same arrays


def test_trustworthiness_and_pca_equal_sklearn_on_the_audits_own_arrays(classifier_result, classifier_context):
    context, metrics = classifier_context, classifier_result.metrics
    table = artifact(classifier_result, "coordinates.json").content
    space = FeatureSpace.fit(context.reference.X, context.categorical)
    for dataset in ("reference", "current"):
        high = space.transform(rows_of(context, table, dataset))
        part = table[table["dataset"] == dataset]
        for embedding in ("tsne", "pca"):
            low = part[[f"{embedding}_x", f"{embedding}_y"]].to_numpy()
            assert metrics[f"projections.{embedding}.trustworthiness_{dataset}"] == sk_trustworthiness(high, low, n_neighbors=10)
    reference_high = space.transform(rows_of(context, table, "reference"))
    pca = PCA(n_components=2).fit(reference_high)
    assert metrics["projections.pca.explained_variance"] == pytest.approx(pca.explained_variance_ratio_.sum(), rel=1e-10)
    assert metrics["projections.rows_reference"] == 150 and metrics["projections.rows_current"] == 100


def test_shap_map_trustworthiness_equals_sklearn_on_recomputed_shap_values(classifier_result, classifier_context):
    context, metrics = classifier_context, classifier_result.metrics
    table = artifact(classifier_result, "coordinates.json").content
    explained = table[table["shap_tsne_x"].notna()]
    background = context.reference.X.iloc[reference_sample(len(context.reference.X), 50, context.random_state("projections.shap_background"))]
    for dataset in ("reference", "current"):
        part = explained[explained["dataset"] == dataset]
        values = flat_shap(explain(context, rows_of(context, part, dataset), background).values)
        low = part[["shap_tsne_x", "shap_tsne_y"]].to_numpy()
        assert metrics[f"projections.shap_tsne.trustworthiness_{dataset}"] == pytest.approx(
            sk_trustworthiness(values, low, n_neighbors=10), abs=1e-12)
    assert metrics["projections.shap_tsne.rows"] == 120  # shap_rows per side


def test_flat_shap_concatenates_outputs_class_by_class():
    values = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)  # rows, features, outputs
    flat = flat_shap(values)
    assert flat.shape == (2, 12)
    for c in range(4):
        np.testing.assert_array_equal(flat[:, c * 3:(c + 1) * 3], values[:, :, c])


# ---------------------------------------------------------------------------------------------
# Determinism


def test_same_seed_same_bytes_other_seed_other_map_threads_change_nothing(classifier_result, classifier_context, tabular):
    again = run(classifier_context, **SMALL)
    assert [a.name for a in again.artifacts] == [a.name for a in classifier_result.artifacts]
    for first, second in zip(classifier_result.artifacts, again.artifacts, strict=True):
        if first.kind == "table":
            pd.testing.assert_frame_equal(first.content, second.content, check_exact=True)
        else:
            assert first.content == second.content, first.name

    X, y = tabular
    other_seed = run(context_for(make_pipeline_model(X, y, "gbm"), X, y, seed=1), **SMALL)
    a, b = artifact(classifier_result, "coordinates.json").content, artifact(other_seed, "coordinates.json").content
    assert not np.array_equal(a[["tsne_x", "tsne_y"]].to_numpy(), b[["tsne_x", "tsne_y"]].to_numpy())

    one_thread = run(classifier_context, **SMALL, n_jobs=1, include_shap=False, html=False)
    c = artifact(one_thread, "coordinates.json").content
    assert a[["tsne_x", "tsne_y"]].to_numpy().tobytes() == c[["tsne_x", "tsne_y"]].to_numpy().tobytes()


# ---------------------------------------------------------------------------------------------
# Contract and the rest


def test_contract_on_the_classifier(classifier_result):
    assert classifier_result.verdict in (Verdict.PASS, Verdict.WARN)
    names = [a.name for a in classifier_result.artifacts]
    assert names == ["coordinates.json", "map_pca.png", "map_tsne.png", "map_shap_tsne.png", "maps.html"]
    table = artifact(classifier_result, "coordinates.json").content
    assert set(table["label"].dropna()) <= {"yes", "no"} and table["uncertainty"].between(0, np.log(2)).all()


def test_contract_on_the_regressor(regressor_context):
    result = check_audit_contract(ProjectionsAudit, regressor_context, SMALL)
    assert "note.uncertainty" in result.info
    table = artifact(result, "coordinates.json").content
    assert table["uncertainty"].isna().all()
    reference = table[table["dataset"] == "reference"]
    X = rows_of(regressor_context, reference, "reference")
    truth = regressor_context.reference.y.loc[X.index].to_numpy()
    predicted = regressor_context.model.predict(X)
    np.testing.assert_allclose(reference["error"].to_numpy(), np.abs(truth - predicted), rtol=1e-12)


def test_too_few_reference_rows_is_skipped_with_a_reason(tabular):
    X, y = tabular
    context = context_for(make_pipeline_model(X, y, "gbm"), X, y, split=8)
    result = run(context)
    assert result.verdict is Verdict.SKIPPED and "10 reference rows" in result.reason


def test_auto_settings_follow_the_documented_rules():
    small, mid, large = tsne_settings(10), tsne_settings(10_000, n_jobs=2), tsne_settings(30_000)
    assert small.perplexity == 3 and small.neighbors == "exact" and small.gradient == "bh"
    assert (mid.neighbors, mid.gradient, mid.n_jobs) == ("exact", "fft", 2)
    assert (large.neighbors, large.gradient, large.n_jobs) == ("annoy", "fft", 1)  # Annoy's threaded build is not reproducible


def test_t_sne_takes_the_threads_its_process_is_given(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert tsne_settings(500).n_jobs == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert tsne_settings(500).n_jobs == 1 and tsne_settings(500, n_jobs=4).n_jobs == 4


def test_the_html_view_is_light_and_self_contained_for_4000_points():
    rng = np.random.default_rng(0)
    n = 4000
    table = pd.DataFrame({
        "row": [str(i) for i in range(n)], "dataset": np.where(np.arange(n) < n // 2, "reference", "current"),
        **{f"{e}_{axis}": rng.normal(size=n) * 40 for e in ("pca", "tsne", "shap_tsne") for axis in "xy"},
        "label": rng.choice(["a", "b", "c"], n).astype(object), "prediction": rng.choice(["a", "b", "c"], n).astype(object),
        "error": rng.integers(0, 2, n).astype(float), "uncertainty": rng.random(n), "ood_score": rng.gamma(2.0, size=n),
    })
    colourings = [Colouring("dataset", "dataset", True, ("reference", "current")), Colouring("label", "label", True, ("a", "b", "c")),
                  Colouring("error", "misclassified", True, ("correct", "misclassified")), Colouring("ood_score", "OOD", False)]
    page = html_view(table, ["pca", "tsne", "shap_tsne"], colourings, "test </script>")
    assert len(page.encode()) < 1_000_000
    assert not re.search("https?:", page) and "src=" not in page and page.count("</script>") == 1
    payload = json.loads(page[page.index("const D = ") + len("const D = "):page.index(";\nconst PAL")])
    assert len(payload["coords"]["tsne_x"]) == n and len(payload["tooltip"]) == n
    assert payload["values"]["error"][:5] == [int(v) for v in table["error"][:5]]  # correct=0, misclassified=1
