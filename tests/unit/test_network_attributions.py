"""Attribution and occlusion audits for image networks.

Truth: on quadrant images only the top-left quadrant decides the class, so every method must put most of
its |attribution| there. Measured on 200 held-out rows (seed 0, 1 CPU thread; the thresholds leave room):
occlusion 0.62 mean per-row share (0.95 for class-1 rows, 0.24 for class-0 rows, whose probability is
saturated at 1 so no patch moves it: pooled over rows 0.94), gradients 0.71, SmoothGrad 0.75, SHAP
(DeepExplainer, predicted class, 100 rows) 0.83, integrated gradients from a zero baseline 0.59. Through the
audits (40 rows, mean maps): SHAP 0.82, gradients 0.75, SmoothGrad 0.76, integrated gradients 0.63, occlusion 0.67.
SHAP additivity: about 3e-6 (digits CNN, quadrant CNN) against a tolerance of 1e-3.
"""

from __future__ import annotations

import struct
from dataclasses import replace

import numpy as np
import pytest

from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.explain.network_attributions import (
    ADDITIVITY_TOLERANCE,
    NetworkAttributionAudit,
    NetworkAttributionConfig,
    shap_values,
)
from audits.explain.occlusion import OcclusionAudit, OcclusionConfig, occlusion_drops
from audits.methods.gradients import attribute
from audits.methods.image_maps import mass_share, top_share
from audits.methods.synthetic import quadrant_mask
from audits.testing import check_audit_contract
from tests.conftest import image_context_for

SMALL = {"rows": 8, "background_rows": 20}  # keeps the digits runs (10 classes in the SHAP grid) quick


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On two busy cores torch's two intra-op threads fight the other processes: SHAP ran 5-10x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def quadrant_context(quadrant_network):
    """Reference: 200 held-out quadrant images; current: the other 200."""
    model, X, y = quadrant_network
    return image_context_for(model, X, y, split=200)


def held_out(quadrant_network, n: int = 200):
    model, X, y = quadrant_network
    x = X[-n:]
    predicted = np.argmax(model.predict_proba(x.reshape(n, -1)), axis=1)
    return model, x, y[-n:], predicted


def png_size(content: bytes) -> tuple[int, int]:
    return struct.unpack(">II", content[16:24])


@pytest.mark.parametrize(("method", "at_least"), [("gradients", 0.6), ("smoothgrad", 0.6), ("integrated_gradients", 0.5)])
def test_gradient_maps_put_their_mass_in_the_informative_quadrant(quadrant_network, method, at_least):
    model, x, _, predicted = held_out(quadrant_network)
    maps = attribute(model.network(), x, predicted, method)
    assert mass_share(maps, quadrant_mask()).mean() > at_least  # measured 0.71, 0.75, 0.59


def test_shap_puts_its_mass_in_the_informative_quadrant(quadrant_network):
    model, x, _, predicted = held_out(quadrant_network)
    _, X, _ = quadrant_network
    outcome = shap_values(model.network(), x[:100], X[:50], top=1)
    assert outcome.explainer == "DeepExplainer" and (outcome.classes[:, 0] == predicted[:100]).all()
    assert mass_share(outcome.values[..., 0], quadrant_mask()).mean() > 0.7  # measured 0.83
    assert outcome.additivity_error < ADDITIVITY_TOLERANCE


def test_occlusion_of_the_true_class_puts_its_mass_in_the_informative_quadrant(quadrant_network):
    model, x, y, _ = held_out(quadrant_network)
    _, X, _ = quadrant_network
    drops = occlusion_drops(model.network(), x, y, patch=2, stride=1, fill=float(X[:200].mean()))
    assert drops.shape == (len(x), 8, 8)
    share = mass_share(drops[:, None], quadrant_mask())
    assert share.mean() > 0.5  # measured 0.62: class-0 rows barely move (p = 1.0), their tiny mass is spread
    assert share[y == 1].mean() > 0.85  # measured 0.95
    assert top_share(drops[:, None]).mean() > 0.3


def test_the_audits_find_the_informative_quadrant(quadrant_context):
    mask = quadrant_mask()[0]
    result = NetworkAttributionAudit(NetworkAttributionConfig(rows=40)).compute(quadrant_context)
    mean_maps = next(a for a in result.artifacts if a.name == "mean_maps.json").content
    shares = {m: float(np.asarray(v)[mask].sum()) for m, v in mean_maps.items()}
    assert min(shares["shap"], shares["gradients"], shares["smoothgrad"]) > 0.6, shares
    assert shares["integrated_gradients"] > 0.5, shares
    assert result.metrics["shap.additivity_max_error"] < ADDITIVITY_TOLERANCE
    assert result.metrics["integrated_gradients.relative_delta_max"] < 0.05
    assert result.metrics["agreement.gradients.smoothgrad"] > result.metrics["agreement.gradients.integrated_gradients"]

    occlusion = OcclusionAudit(OcclusionConfig(rows=40)).compute(quadrant_context)
    table = next(a for a in occlusion.artifacts if a.name == "rows.json").content
    bright = table[table["true"] == "1"]
    in_quadrant = [int(r.split(",")[0].split()[1]) < 4 and int(r.split()[-1]) < 4 for r in bright["max_drop_at"]]
    assert len(bright) > 10 and all(in_quadrant)
    assert float(np.asarray(next(a for a in occlusion.artifacts if a.name == "mean_map.json").content)[mask].sum()) > 0.5
    assert occlusion.metrics["mean_max_drop"] > 0.2


def test_shap_adds_up_on_the_digits_network(digits_network):
    model, X, _ = digits_network
    outcome = shap_values(model.network(), X[1200:1206], X[:30])
    assert outcome.values.shape == (6, 1, 8, 8, 10) and outcome.explainer == "DeepExplainer"
    assert outcome.additivity_error < ADDITIVITY_TOLERANCE  # measured about 3e-6


def test_a_network_deepexplainer_cannot_take_falls_back_and_keeps_no_hooks():
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(inplace=True),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 3)).eval()  # fmt: skip
    x = np.random.default_rng(0).uniform(size=(3, 1, 8, 8)).astype(np.float32)
    outcome = shap_values(net, x, x, seed=0)
    assert outcome.explainer == "GradientExplainer" and "DeepExplainer failed" in outcome.note
    assert outcome.values.shape == (3, 1, 8, 8, 3)
    assert all(not m._forward_hooks and not m._backward_hooks for m in net.modules())


def test_attribution_audit_keeps_the_contract_and_passes_on_digits(image_context):
    result = check_audit_contract(NetworkAttributionAudit, image_context, SMALL)
    assert result.verdict is Verdict.PASS, result.reason
    keys = set(result.metrics)
    for method in ("shap", "gradients", "smoothgrad", "integrated_gradients"):
        assert f"network_attributions.{method}.concentration" in keys
    assert {"network_attributions.agreement.shap.gradients", "network_attributions.agreement.mean",
            "network_attributions.shap.additivity_max_error",
            "network_attributions.integrated_gradients.relative_delta_max"} <= keys  # fmt: skip
    assert all(0.1 <= result.metrics[f"network_attributions.{m}.concentration"] <= 1 for m in ("shap", "gradients"))
    grid = next(a for a in result.artifacts if a.name == "shap_grid.png")
    width, height = png_size(grid.content)
    assert width <= 1400 and height <= 1400
    assert {a.name for a in result.artifacts} == {"shap_grid.png", "methods.png", "mean_maps.json", "methods.json"}


def test_a_method_subset_changes_the_keys_but_not_the_values(image_context):
    full = NetworkAttributionAudit(NetworkAttributionConfig(**SMALL, methods=("gradients", "integrated_gradients"))).compute(image_context)
    assert "shap.additivity_max_error" not in full.metrics
    assert set(full.metrics) == {"rows", "gradients.concentration", "integrated_gradients.concentration",
                                 "integrated_gradients.relative_delta_max", "agreement.gradients.integrated_gradients",
                                 "agreement.mean"}  # fmt: skip
    alone = NetworkAttributionAudit(NetworkAttributionConfig(**SMALL, methods=("gradients",))).compute(image_context)
    assert alone.metrics["gradients.concentration"] == full.metrics["gradients.concentration"]


def test_occlusion_audit_keeps_the_contract_on_digits(image_context):
    result = check_audit_contract(OcclusionAudit, image_context, {"rows": 10})
    assert result.verdict is Verdict.PASS
    assert 0 < result.metrics["occlusion.mean_max_drop"] <= 1 and 0.1 <= result.metrics["occlusion.top10_share"] <= 1
    other = OcclusionAudit(OcclusionConfig(rows=10, fill=0.0)).compute(image_context)
    assert other.metrics["mean_max_drop"] != result.metrics["occlusion.mean_max_drop"]


def test_invalid_configurations_are_refused():
    with pytest.raises(ValueError, match="once"):
        NetworkAttributionConfig(methods=("shap", "shap"))
    with pytest.raises(ValueError):
        NetworkAttributionConfig(methods=("lime",))
    with pytest.raises(ValueError):
        OcclusionConfig(fill="median")
    with pytest.raises(ValueError):
        OcclusionConfig(patchsize=3)


@pytest.mark.parametrize("audit", [NetworkAttributionAudit, OcclusionAudit])
def test_the_audits_skip_tabular_models(audit, classifier_context):
    reason = audit().skip_reason(classifier_context)
    assert reason and "image" in reason
    result = run_planned(PlannedAudit(audit.name, audit(), audit.default_thresholds), classifier_context)
    assert result.verdict is Verdict.SKIPPED and result.reason == reason and not result.metrics


def test_occlusion_needs_labels_on_the_current_images(quadrant_network):
    model, X, y = quadrant_network
    context = image_context_for(model, X, y, split=200)
    unlabelled = replace(context, current=replace(context.current, y=None))
    assert "labels" in OcclusionAudit().skip_reason(unlabelled)
    assert NetworkAttributionAudit().skip_reason(unlabelled) is None
