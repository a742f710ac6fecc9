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
import pandas as pd
import pytest

from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.explain.network_attributions import (
    ADDITIVITY_TOLERANCE,
    NetworkAttributionAudit,
    NetworkAttributionConfig,
    shap_values,
    shown_rows,
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
    assert {a.name for a in result.artifacts} == {"shap_grid.png", "shap_rows.json", "methods.png", "mean_maps.json",
                                                  "methods.json"}  # no planted column: no planted figure


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


# --- the SHAP figures: which rows, and what is drawn ------------------------------------------------------------------
@pytest.fixture(scope="module")
def planted_context(digits_network):
    """Held-out digits, 10 of them inverted, and noise images labelled as the network predicts them ("correct"); the
    surest noise image is surer of its class than every clean digit of that class left in: (context, that class)."""
    from audits.methods.synthetic import corrupt

    model, X, y = digits_network
    noise = corrupt(X[1200:1240], "noise", seed=1)
    p_noise = model.predict_proba(noise.reshape(len(noise), -1))
    trap = int(np.argmax(p_noise.max(axis=1)))
    c = int(np.argmax(p_noise[trap]))
    clean, truth = X[1240:1440], y[1240:1440]
    p_clean = model.predict_proba(clean.reshape(len(clean), -1))
    keep = ~((p_clean.argmax(axis=1) == c) & (p_clean[:, c] >= p_noise[trap, c]))
    clean, truth = clean[keep], truth[keep]
    inverted = corrupt(X[1440:1450], "inverted")
    current = np.concatenate([noise, inverted, clean])
    labels = np.concatenate([p_noise.argmax(axis=1), y[1440:1450], truth])
    kinds = ["noise"] * len(noise) + ["inverted"] * len(inverted) + ["none"] * len(clean)
    context = image_context_for(model, np.concatenate([X[:300], current]), np.concatenate([y[:300], labels]), split=300)
    segments = pd.DataFrame({"fault": kinds}, index=context.current.X.index)
    return replace(context, current=replace(context.current, segments=segments)), c


def test_the_grid_shows_one_correct_unplanted_row_per_class_even_where_a_noise_image_is_surer(planted_context):
    context, trap_class = planted_context
    current = context.current
    fault, truth, predicted = current.segments["fault"].to_numpy(), current.y.to_numpy(), current.predictions.labels

    unaware = shown_rows(context, NetworkAttributionConfig())  # the trap is armed: without the planted column ...
    assert fault[unaware.grid[list(context.model.classes).index(trap_class)]] == "noise"  # ... a noise image stands for its class

    shown = shown_rows(context, NetworkAttributionConfig(planted="fault"))
    assert len(shown.grid) == 10  # every class has a correct clean row here
    assert all(fault[p] == "none" and truth[p] == predicted[p] for p in shown.grid)
    assert [truth[p] for p in shown.grid] == list(context.model.classes)
    for p in shown.grid:  # the surest such row of its class
        k = list(context.model.classes).index(truth[p])
        same = (fault == "none") & (truth == truth[p]) & (predicted == truth[p])
        assert current.predictions.proba[p, k] == current.predictions.proba[same, k].max()
    assert sorted(fault[p] for p in shown.planted) == ["inverted", "noise"]  # one per planted kind, none clean
    assert shown_rows(context, NetworkAttributionConfig(planted="fault")).grid == shown.grid  # deterministic
    rows = shown.table
    assert list(rows["row"][rows["figure"] == "shap_grid"]) == [str(current.X.index[p]) for p in shown.grid]


def test_without_labels_the_grid_takes_the_surest_prediction_of_each_class_and_says_so(planted_context):
    context, _ = planted_context
    unlabelled = replace(context, current=replace(context.current, y=None))
    shown = shown_rows(unlabelled, NetworkAttributionConfig(planted="fault"))
    proba, predicted = unlabelled.current.predictions.proba, unlabelled.current.predictions.labels
    fault = unlabelled.current.segments["fault"].to_numpy()
    for p in shown.grid:
        same = (fault == "none") & (predicted == predicted[p])
        assert fault[p] == "none" and proba[p].max() == proba[same].max(axis=1).max()
    assert "without labels" in shown.basis


def test_rows_other_audits_flagged_are_not_examples_but_are_shown_with_the_planted(planted_context):
    context, _ = planted_context
    first = shown_rows(context, NetworkAttributionConfig(planted="fault"))
    flagged_position = first.grid[3]
    flagged = context.current.X.iloc[[flagged_position]].assign(row="part-0.npz:17", flagged_by="ood (knn)")
    shown = shown_rows(replace(context, flagged=flagged.reset_index(drop=True)), NetworkAttributionConfig(planted="fault"))
    assert flagged_position not in shown.grid and len(shown.grid) == 10
    np.testing.assert_array_equal(shown.flagged[0], context.images(context.current)[flagged_position])
    assert shown.table["flagged_by"].tolist()[-1] == "ood (knn)" and "not flagged" in shown.basis


def test_an_unknown_planted_column_is_refused_by_name(planted_context):
    context, _ = planted_context
    with pytest.raises(ValueError, match="'faults' is not a segment column.*fault"):
        shown_rows(context, NetworkAttributionConfig(planted="faults"))


def test_the_shap_figures_draw_each_input_beneath_its_attributions(planted_context):
    """shap.image_plot's grid: the input first, then per class the faded input (grey, alpha < 1) under the SHAP values;
    the planted inputs in a figure of their own."""
    import matplotlib.pyplot as plt

    context, _ = planted_context
    images = context.images(context.current)
    position = {str(index): i for i, index in enumerate(context.current.X.index)}
    fault = context.current.segments["fault"]
    flagged = context.current.X.iloc[[len(images) - 1]].assign(row="part-3.npz:9", flagged_by="ood (knn)")  # a clean digit
    position["part-3.npz:9"] = len(images) - 1
    context = replace(context, flagged=flagged.reset_index(drop=True))
    result = NetworkAttributionAudit(NetworkAttributionConfig(**SMALL, methods=("shap",), planted="fault")).compute(context)
    assert plt.get_fignums() == []
    artifacts = {a.name: a for a in result.artifacts}
    table = artifacts["shap_rows.json"].content
    classes = len(context.model.classes)
    for name, clean in (("shap_grid.png", True), ("shap_planted.png", False)):
        rows = table["row"][table["figure"] == name.removesuffix(".png")].tolist()
        assert len(rows) == (classes if clean else 3)
        assert str(context.current.X.index[-1]) not in rows  # the flagged digit is not an example of its class
        if clean:
            assert all(fault.iloc[position[r]] == "none" for r in rows)
        else:  # the planted figure: only planted rows, and the flagged one
            assert [fault.iloc[position[r]] for r in rows[:2]] == ["noise", "inverted"] and rows[2] == "part-3.npz:9"
        fig = artifacts[name].payload  # the Figure, not yet rendered
        grid = np.array(fig.axes[: len(rows) * (classes + 1)], dtype=object).reshape(len(rows), classes + 1)
        if not clean:
            assert [ax.get_title().split(" · ")[0] for ax in grid[:, 0]] == ["noise", "inverted", "ood (knn)"]
        for r, row in enumerate(rows):
            drawn = -images[position[row], 0]  # one channel: drawn negated, as shap's MNIST example draws it
            (shown,) = grid[r, 0].images
            np.testing.assert_array_equal(shown.get_array(), drawn)
            for ax in grid[r, 1:]:
                faded, attribution = ax.images
                assert faded.get_cmap().name == "gray" and 0 < faded.get_alpha() < 1
                np.testing.assert_array_equal(faded.get_array(), drawn)
                assert faded.get_extent() == attribution.get_extent()  # pixel under pixel
                assert attribution.get_cmap().name == "red_transparent_blue" and attribution.get_array().shape == drawn.shape
    width, height = png_size(artifacts["shap_grid.png"].content)
    assert width <= 1400 and height <= 1400


def test_shap_image_plot_figures_drawn_in_threads_each_keep_their_own_inputs():
    """image_plot draws through pyplot's global state; audits run in threads: each call must get its own figure."""
    from concurrent.futures import ThreadPoolExecutor

    import matplotlib.pyplot as plt

    from audits.rendering.figures import shap_image_figure

    rng = np.random.default_rng(0)
    inputs = [rng.uniform(size=(2, 1, 6, 6)) for _ in range(6)]
    values = rng.normal(size=(2, 1, 6, 6, 3))
    with ThreadPoolExecutor(3) as pool:
        figures = list(pool.map(lambda x: shap_image_figure(values, x, ["a", "b", "c"], ["one", "two"], "t"), inputs))
    assert plt.get_fignums() == []
    for x, fig in zip(inputs, figures, strict=True):
        np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), x[0, 0])
        np.testing.assert_array_equal(fig.axes[4].images[0].get_array(), x[1, 0])  # row 2: after the input and 3 classes
        assert [ax.get_title() for ax in fig.axes[1:4]] == ["class a", "class b", "class c"]
