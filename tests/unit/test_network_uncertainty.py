"""Network uncertainty audits (MC dropout, autoencoder OOD, embedding t-SNE, embedding prototypes) and the
calibration audit on a network, against truths we did not write: corrupted digits (audits.methods.synthetic),
scikit-learn's trustworthiness and ROC AUC.

Measured on the fixture CNN (trained on 1,200 digits), 597 held-out digits against their corrupted copies
(inverted / noise / rotated): AUROC of the autoencoder's reconstruction error 1.000 / 1.000 / 1.000; of the
MC-dropout mutual information over 100 passes 0.92 / 0.96 / 0.64 (std 0.92 / 0.95 / 0.65). With the audit's
default 30 passes the inverted AUROC is 0.90-0.92 depending on the training run (the fixture trains slightly
differently with 1 or 2 torch threads): Monte Carlo noise in the spread eats the margin, hence 100 passes here.
MC dropout does NOT separate rotated digits: the network answers rotated digits about as confidently as upright
ones, with dropout on or off (1 - max probability: AUROC 0.54-0.58), so a dropout-spread test misses that shift;
the autoencoder catches it. bench/study_mc_dropout.py measures why, over 4 variants x 5 seeds: the zero-padded
CNN puts 99 % of rotated digits in one class (mutual information AUROC 0.48-0.71); valid convolutions reach
0.85-0.90, channel dropout 0.75-0.92, shift augmentation 0.85-0.95. No variant clears 0.9 on every seed.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from audits.core import Verdict
from audits.explain.embedding_prototypes import (
    EmbeddingPrototypesAudit,
    attention,
    attention_scores,
    surrogate_fidelity,
)
from audits.methods.dropout import dropout_layers, score_images
from audits.methods.synthetic import corrupt
from audits.projections.embedding_projections import EmbeddingProjectionsAudit
from audits.uncertainty.autoencoder_ood import AutoencoderOODAudit, AutoencoderOODConfig, fit_autoencoder
from audits.uncertainty.mc_dropout import MCDropoutAudit
from tests.conftest import image_context_for, train_network

KINDS = ("inverted", "noise", "rotated")
AUDITS = (MCDropoutAudit, AutoencoderOODAudit, EmbeddingProjectionsAudit, EmbeddingPrototypesAudit)


def auroc(clean: np.ndarray, shifted: np.ndarray) -> float:
    return float(roc_auc_score(np.r_[np.zeros(len(clean)), np.ones(len(shifted))], np.r_[clean, shifted]))


def state(module) -> tuple:
    return tuple((k, v.clone()) for k, v in module.state_dict().items()), tuple(m.training for m in module.modules())


@pytest.fixture(scope="module")
def results(image_context):
    """Each audit computed once on the image context: {name: AuditResult}."""
    return {audit.name: audit().compute(image_context) for audit in AUDITS}


# --- truth: clean digits against corrupted digits ------------------------------------------------------------------


def test_autoencoder_error_separates_clean_from_corrupted_digits(digits_network):
    model, X, _ = digits_network
    held = X[1200:]
    autoencoder = fit_autoencoder(X[:300], seed=0, epochs=30)
    clean = autoencoder.errors(held)
    scores = {kind: auroc(clean, autoencoder.errors(corrupt(held, kind))) for kind in KINDS}
    assert all(value > 0.9 for value in scores.values()), scores  # measured 1.000 for each kind
    assert autoencoder.losses[-1] < autoencoder.losses[0] / 5


def test_mc_dropout_spread_separates_inverted_and_noisy_digits_but_not_rotated_ones(digits_network):
    model, X, _ = digits_network
    module = model.network()
    before = state(module)
    held = X[1200:]
    clean = score_images(module, held, passes=100, seed=0)
    shifted = {kind: score_images(module, corrupt(held, kind), passes=100, seed=0) for kind in KINDS}
    mi = {kind: auroc(clean.mutual_information, s.mutual_information) for kind, s in shifted.items()}
    std = {kind: auroc(clean.std, s.std) for kind, s in shifted.items()}
    assert mi["inverted"] > 0.9 and mi["noise"] > 0.9, mi  # measured 0.92, 0.96
    assert std["inverted"] > 0.9 and std["noise"] > 0.9, std  # measured 0.92, 0.95
    assert 0.55 < mi["rotated"] < 0.8, mi  # measured 0.64-0.67: a known blind spot, see the module docstring
    # Only dropout was switched on, and everything is back as it was (weights and every module's mode).
    after = state(module)
    assert after[1] == before[1] and all(a[0] == b[0] and (a[1] == b[1]).all() for a, b in zip(after[0], before[0], strict=True))
    again = score_images(module, held[:100], passes=30, seed=0)
    np.testing.assert_array_equal(again.mutual_information, score_images(module, held[:100], passes=30, seed=0).mutual_information)
    assert not np.array_equal(again.std, score_images(module, held[:100], passes=30, seed=1).std)
    assert (clean.mutual_information >= 0).all() and (clean.mutual_information <= clean.predictive_entropy + 1e-12).all()


def test_valid_convolutions_let_mc_dropout_see_rotated_digits(digits_network):
    """The study's finding on one seed: zero padding hides rotated digits from MC dropout, valid convolutions
    do not (bench/study_mc_dropout.py: 0.48-0.71 against 0.85-0.90 over 5 seeds)."""
    from audits.methods.architectures import SmallCNN

    padded, X, y = digits_network
    valid = train_network(SmallCNN(padding=0), X[:1200], y[:1200])
    held = X[1200:]
    rotated = corrupt(held, "rotated")
    mi = {}
    for name, model in (("padded", padded), ("valid", valid)):
        module = model.network()
        mi[name] = auroc(score_images(module, held, passes=100, seed=0).mutual_information,
                         score_images(module, rotated, passes=100, seed=0).mutual_information)
    assert mi["valid"] > 0.8 and mi["valid"] > mi["padded"] + 0.1, mi
    assert np.mean(valid.predict(held.reshape(len(held), -1)) == y[1200:]) > 0.95


@pytest.fixture(scope="module")
def shifted_contexts(digits_network):
    """Reference: 300 held-out clean digits; current: the other 297 held-out digits, clean or corrupted."""
    model, X, y = digits_network
    ref, cur = slice(1200, 1500), slice(1500, None)
    out = {}
    for kind in ("clean", "inverted", "noise", "rotated"):
        images = X[cur] if kind == "clean" else corrupt(X[cur], kind)
        out[kind] = image_context_for(model, np.concatenate([X[ref], images]), np.concatenate([y[ref], y[cur]]), split=300)
    return out


def test_the_audits_flag_a_corrupted_batch_far_more_than_a_clean_one(shifted_contexts):
    mc = {kind: MCDropoutAudit().compute(shifted_contexts[kind]).metrics for kind in ("clean", "inverted", "noise")}
    assert mc["clean"]["mutual_information.flagged_share"] < 0.15 and mc["clean"]["max_excess_z"] < 3
    for kind in ("inverted", "noise"):
        assert mc[kind]["mutual_information.flagged_share"] > 0.4, (kind, mc[kind])
        assert mc[kind]["mutual_information.excess_z"] > 5
    config = AutoencoderOODConfig(epochs=20)
    ae = {kind: AutoencoderOODAudit(config).compute(shifted_contexts[kind]).metrics for kind in ("clean", "inverted", "rotated")}
    assert ae["clean"]["flagged_share"] < 0.15 and ae["clean"]["excess_z"] < 3
    for kind in ("inverted", "rotated"):
        assert ae[kind]["flagged_share"] > 0.9 and ae[kind]["excess_z"] > 5, (kind, ae[kind])
        assert ae[kind]["error_ratio"] > 5


# --- embedding prototypes and the embedding map ---------------------------------------------------------------------


def test_prototype_attention_is_a_softmax_of_inner_products():
    rows = np.array([[1.0, 0.0], [0.0, 2.0]])
    prototypes = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    scores = attention_scores(rows, prototypes)
    np.testing.assert_allclose(scores, [[1, 0, 1], [0, 2, 2]])
    weights = attention(scores, temperature=1.0)
    np.testing.assert_allclose(weights[0], np.exp([1, 0, 1]) / np.exp([1, 0, 1]).sum())
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    answers = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    agree, tv = surrogate_fidelity(weights @ answers, np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert agree == 1.0 and tv == pytest.approx(np.mean(1 - (weights @ answers)[[0, 1], [0, 1]]))


def test_embedding_prototypes_explain_the_network_faithfully(results, image_context):
    result = results["embedding_prototypes"]
    m = result.metrics
    # Measured on the fixture: fidelity 0.87, total variation 0.14, surrogate accuracy 0.845, majority baseline 0.13.
    assert m["fidelity"] > 0.8 and m["fidelity"] > m["fidelity_baseline"] + 0.5
    assert m["total_variation"] < 0.25 and m["accuracy"] > 0.75
    assert m["prototypes"] == 30.0  # 3 per predicted class, 10 classes
    table = next(a.content for a in result.artifacts if a.name == "attention.json")
    assert len(table) == len(image_context.current)
    assert table["agrees"].mean() == pytest.approx(m["fidelity"])
    assert table["total_variation"].mean() == pytest.approx(m["total_variation"])


def test_embedding_map_trustworthiness_is_scikit_learns(results, image_context):
    from sklearn.manifold import trustworthiness

    result = results["embedding_projections"]
    table = next(a.content for a in result.artifacts if a.name == "coordinates.json")
    model = image_context.model.estimator
    for side in ("reference", "current"):
        rows = table[table["dataset"] == side]
        X = image_context.dataset(side).X.loc[rows["row"].astype(int)]
        expected = trustworthiness(model.embed(X), rows[["tsne_x", "tsne_y"]].to_numpy(), n_neighbors=10)
        assert result.metrics[f"trustworthiness_{side}"] == pytest.approx(expected, abs=1e-12)
    # Measured: 0.996 reference, 0.989 current; the classes form separate clusters on the map.
    assert result.metrics["trustworthiness_reference"] > 0.95 and result.metrics["trustworthiness_current"] > 0.9
    assert result.metrics["current.neighbour_agreement"] > 0.9
    assert set(table.columns) >= {"label", "prediction", "error", "uncertainty"}


# --- contract: determinism, no mutation, skipping -------------------------------------------------------------------


def test_the_audits_are_deterministic_and_leave_the_network_alone(results, image_context):
    module = image_context.model.estimator.network()
    before = state(module)
    for audit in AUDITS:
        again = audit().compute(image_context)
        assert again.metrics == results[audit.name].metrics, audit.name
        assert again.verdict == Verdict.PASS and all(np.isfinite(v) for v in again.metrics.values()), audit.name
        figures = [a.content for a in again.artifacts if a.kind == "figure"]
        assert figures == [a.content for a in results[audit.name].artifacts if a.kind == "figure"], audit.name
    after = state(module)
    assert after[1] == before[1] and all((a[1] == b[1]).all() for a, b in zip(after[0], before[0], strict=True))


@pytest.mark.parametrize("audit", AUDITS, ids=lambda a: a.name)
def test_each_audit_skips_a_tabular_context(audit, classifier_context):
    reason = audit().skip_reason(classifier_context)
    assert reason and "image" in reason


def test_mc_dropout_skips_a_network_without_dropout(digits_network):
    import torch

    from audits.methods.network import TorchClassifier

    _, X, y = digits_network
    plain = TorchClassifier.from_trained(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), range(10), (1, 8, 8))
    context = image_context_for(plain, X[:40], y[:40], split=20)
    assert not dropout_layers(plain.network())
    assert "no dropout" in MCDropoutAudit().skip_reason(context)
    assert EmbeddingProjectionsAudit().skip_reason(context) is None  # the others need no dropout


# --- the existing calibration audit on a network --------------------------------------------------------------------


def test_calibration_audit_runs_on_the_image_context(image_context):
    from audits.uncertainty.calibration import CalibrationAudit

    m = CalibrationAudit().compute(image_context).metrics
    assert all(np.isfinite(m[k]) for k in ("current.ece", "recalibrated.temperature.ece", "temperature"))
    # The fixture's reference is the network's training rows (accuracy 1.0): temperature scaling fitted there
    # sharpens (measured T = 0.011) and does not lower the current ECE (0.019 -> 0.025); the audit says so in info.
    assert m["reference.accuracy"] == 1.0 and m["temperature"] < 1


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_network(digits_network):
    import torch

    from audits.methods.architectures import SmallCNN
    from audits.uncertainty.calibration import CalibrationAudit
    from tests.conftest import train_network

    _, X, y = digits_network
    # Overconfident by construction: trained on 100 rows for 60 epochs, then its logits multiplied by 3 (the same
    # answers, said with more confidence). The fixture network itself is too well calibrated on held-out digits
    # (ECE about 0.015, within sampling noise) for a recalibration to show.
    model = train_network(SmallCNN(), X[:100], y[:100], epochs=60)
    with torch.no_grad():
        model.module_.head.weight.mul_(3.0)
        model.module_.head.bias.mul_(3.0)
    held = slice(1200, None)  # rows the network never trained on: reference (fits T) 300, current (evaluates) 297
    m = CalibrationAudit().compute(image_context_for(model, X[held], y[held], split=300)).metrics
    before, after = m["recalibrated.none.ece"], m["recalibrated.temperature.ece"]
    assert m["current.mean_confidence"] > m["current.accuracy"] + 0.04 and m["current.ece_excess"] > 0.02
    assert after < before / 2, (before, after)  # measured 0.077 -> 0.029
    assert m["temperature"] > 2  # softens: measured 4.1
    assert m["recalibrated.temperature.log_loss"] < m["recalibrated.none.log_loss"] / 2  # measured 0.93 -> 0.33
