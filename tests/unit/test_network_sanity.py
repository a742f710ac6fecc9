"""Sanity checks for a network's saliency maps (Adebayo et al. 2018) on the digits CNN: randomising the
layers from the output down, or retraining on shuffled labels, must change gradient explanations, while a
model-independent control (Sobel edges, scikit-image) stays identical and fails.

Measured on ``image_context`` (seed 0, default config, 16 current rows), mean per-row Spearman |attribution|
correlation with the original after randomising head -> hidden.0 -> features.2 -> features.0, then labels shuffled:
gradients 0.30 0.17 0.053 0.047 | 0.094; smoothgrad 0.45 0.36 0.20 0.22 | 0.21;
integrated gradients |abs| 0.92 0.92 0.91 0.92 | 0.91 (signed 0.18 0.00 0.05 0.05 | 0.01); edge detector 1.0 throughout.
"""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from audits.core.plan import PlannedAudit
from audits.core.result import Verdict, is_valid_key
from audits.core.runner import run_planned, verdict_from_checks
from audits.core.thresholds import Threshold
from audits.explain.network_sanity import (
    NetworkSanityAudit,
    NetworkSanityConfig,
    layers_top_down,
    rank_similarities,
    ssim,
    unit_map,
)
from audits.testing import fingerprint

LAYERS = ("head", "hidden.0", "features.2", "features.0")  # SmallCNN's parameterised layers, output first
K = "network_sanity"


@pytest.fixture(scope="module")
def runs(image_context, digits_network):
    """Two runs of the default plan on the same context, with what they could have touched before and after."""
    network = digits_network[0].network()
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    data = fingerprint(image_context)
    planned = PlannedAudit(K, NetworkSanityAudit(), NetworkSanityAudit.default_thresholds)
    first, second = run_planned(planned, image_context), run_planned(planned, image_context)
    untouched = fingerprint(image_context) == data and all(
        np.array_equal(v.numpy(), weights[k].numpy()) for k, v in network.state_dict().items())
    return first, second, untouched


def curve(metrics, method, measure="spearman"):
    return [1.0, *[metrics[f"{K}.{method}.cascade.{layer}.{measure}"] for layer in LAYERS]]


def test_cascading_randomisation_changes_gradient_maps_layer_by_layer(runs):
    result = runs[0]
    m = result.metrics
    assert result.info["cascade"].endswith(" -> ".join(LAYERS))
    assert m[f"{K}.layers"] == 4 and m[f"{K}.rows_explained"] == 16
    assert m[f"{K}.full_randomisation.changed_predictions"] >= 0.5  # measured 0.875: the randomised network is another model
    for method, first_step, full in (("gradients", 0.45, 0.15), ("smoothgrad", 0.6, 0.35)):
        spearman = curve(m, method)
        # measured gradients 1, 0.30, 0.17, 0.053, 0.047; smoothgrad 1, 0.45, 0.36, 0.20, 0.22
        assert spearman[1] < first_step and spearman[-1] < full, (method, spearman)
        assert all(b <= a + 0.05 for a, b in zip(spearman, spearman[1:])), (method, spearman)  # generally decreasing
        assert m[f"{K}.{method}.full_randomisation.spearman"] == spearman[-1]
        ssims = curve(m, method, "ssim")  # measured gradients 1, 0.27, 0.15, 0.025, 0.054
        assert ssims[-1] < 0.2 and ssims[-1] < ssims[1] < 0.5, (method, ssims)


def test_gradients_and_smoothgrad_pass_integrated_gradients_keep_the_input_and_the_control_fails(runs):
    m = runs[0].metrics
    assert m[f"{K}.gradients.max_spearman"] < 0.5 and m[f"{K}.smoothgrad.max_spearman"] < 0.5
    # |IG| from a zero baseline is zero wherever the digit is: the outline survives any weights (0.92 measured),
    # while the signed maps decorrelate (0.05)
    assert m[f"{K}.integrated_gradients.full_randomisation.spearman"] > 0.8
    assert abs(m[f"{K}.integrated_gradients.full_randomisation.spearman_signed"]) < 0.2
    assert abs(m[f"{K}.integrated_gradients.label_randomisation.spearman_signed"]) < 0.2
    assert m[f"{K}.integrated_gradients.max_spearman"] > 0.8
    control = {k: v for k, v in m.items() if k.startswith(f"{K}.edge_detector.") and not k.endswith(".max_spearman")}
    assert len(control) == 2 * (len(LAYERS) + 2) and set(control.values()) == {1.0}  # identical maps at every step
    assert m[f"{K}.edge_detector.max_spearman"] == 1.0


def test_label_randomisation_lowers_similarity(runs):
    m = runs[0].metrics
    assert m[f"{K}.label_randomisation.accuracy_true_labels"] < 0.3  # measured 0.14 (chance: 0.1): it learned no digits
    assert m[f"{K}.label_randomisation.changed_predictions"] >= 0.5  # measured 0.875
    assert m[f"{K}.gradients.label_randomisation.spearman"] < 0.25  # measured 0.094
    assert m[f"{K}.smoothgrad.label_randomisation.spearman"] < 0.35  # measured 0.21
    assert m[f"{K}.gradients.label_randomisation.ssim"] < 0.15  # measured 0.019
    assert m[f"{K}.edge_detector.label_randomisation.spearman"] == 1.0


def test_the_control_failing_does_not_fail_the_audit_but_a_real_method_would(runs):
    result = runs[0]
    assert all(K + ".edge_detector" not in c.metric for c in result.checks)
    by_metric = {c.metric: c for c in result.checks}
    assert by_metric[f"{K}.gradients.max_spearman"].passed and by_metric[f"{K}.smoothgrad.max_spearman"].passed
    ig = by_metric[f"{K}.integrated_gradients.max_spearman"]
    assert ig.passed is False and ig.severity == "warn"
    assert result.verdict is Verdict.WARN
    assert verdict_from_checks([c for c in result.checks if c is not ig])[0] is Verdict.PASS
    # the check has power: held to the same rule, the model-independent control FAILs
    control = Threshold(metric=f"{K}.edge_detector.max_spearman", max=0.5).evaluate(result.metrics)
    assert verdict_from_checks([control])[0] is Verdict.FAIL
    assert "must fail" in result.info["edge_detector"]


def test_same_seed_same_metrics_and_figures_inputs_and_network_untouched(runs):
    first, second, untouched = runs
    assert first.metrics.keys() == second.metrics.keys()
    assert all(np.array_equal(first.metrics[k], second.metrics[k], equal_nan=True) for k in first.metrics)
    assert [a.name for a in first.artifacts] == ["similarity.json", "cascade.png", "maps.png"]
    assert all(a.content == b.content for a, b in zip(first.artifacts[1:], second.artifacts[1:], strict=True))
    assert first.artifacts[0].content.equals(second.artifacts[0].content)
    assert untouched, "the audit changed the context's data or the audited network's weights"
    assert all(is_valid_key(k) and k.startswith(f"{K}.") for k in first.metrics)
    assert f"{K}.gradients.cascade.hidden.0.spearman" in first.metrics
    assert json.loads(json.dumps(first.to_dict()))["audit"] == K
    assert plt.get_fignums() == []


def test_skipped_on_a_tabular_context(classifier_context):
    reason = NetworkSanityAudit().skip_reason(classifier_context)
    assert reason is not None and "image" in reason
    result = run_planned(PlannedAudit(K, NetworkSanityAudit(), NetworkSanityAudit.default_thresholds), classifier_context)
    assert result.verdict is Verdict.SKIPPED and not result.metrics


def test_similarity_helpers_against_their_definitions():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    A, B = rng.random((5, 64)), rng.random((5, 64))
    B[0] = A[0] + 0.1 * rng.random(64)
    B[1] = np.round(B[1], 1)  # ties: average ranks, like scipy
    expected = [spearmanr(a, b).statistic for a, b in zip(A, B, strict=True)]
    np.testing.assert_allclose(rank_similarities(A, B), expected, rtol=0, atol=1e-12)
    a = A[:1]
    np.testing.assert_array_equal(rank_similarities(np.vstack([a, a, np.ones_like(a)]),
                                                    np.vstack([a, np.zeros_like(a), np.zeros_like(a)])), [1.0, 0.0, np.nan])
    m = unit_map(rng.normal(size=(3, 8, 8)))
    assert m.shape == (8, 8) and m.min() == 0.0 and m.max() == 1.0
    assert ssim(m, m) == pytest.approx(1.0) and ssim(m, rng.random((8, 8))) < 0.5
    assert np.isnan(ssim(np.zeros((2, 2)), np.zeros((2, 2))))  # too small for a window


def test_layers_follow_the_forward_pass_not_the_registration_order():
    import torch

    class Backwards(torch.nn.Module):  # registers the output layer first
        def __init__(self):
            super().__init__()
            self.out = torch.nn.Linear(4, 2)
            self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 4), torch.nn.ReLU())
            self.unused = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.out(self.body(x))

    layers, order = layers_top_down(Backwards(), np.zeros((2, 1, 2, 2), dtype=np.float32))
    assert [name for name, _ in layers] == ["out", "body.1"] and order == "forward-pass order"


def test_an_exported_program_is_randomised_in_registration_order():
    import torch

    from audits.methods.architectures import SmallCNN

    # MLflow's pt2 format loads a torch.export program: it reads parameters without calling their modules
    exported = torch.export.export(SmallCNN().eval(), (torch.zeros(2, 1, 8, 8),),
                                   dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    layers, order = layers_top_down(exported, np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert [name for name, _ in layers] == list(LAYERS) and order.startswith("registration order")


def test_config_is_validated():
    with pytest.raises(ValueError):
        NetworkSanityConfig(max_spearman=1.5)
    with pytest.raises(ValueError):
        NetworkSanityConfig(methods=("occlusion",))
    with pytest.raises(ValueError):
        NetworkSanityConfig(rowz=3)
