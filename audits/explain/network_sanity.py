"""Sanity checks for a network's saliency maps (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

An attribution method that explains the model must change when the model stops knowing anything. Two
randomisations test that, on the same rows, always explaining the class the ORIGINAL network predicted:

- cascading model randomisation: on a deep copy of the module, the parameterised layers are re-initialised
  one after the other, from the output layer down (in the order the forward pass calls them, reversed) and
  cumulatively: step k randomises the top k layers. A layer's parameters are replaced by normal draws at each
  parameter tensor's trained scale (RMS), as ``audits.methods.randomize`` does for scikit-learn MLPs;
- label randomisation: a network of the same architecture retrained from fresh seeded weights
  (``sklearn.base.clone`` + ``fit``, fewer epochs allowed) on the reference rows with their labels shuffled.

Each explanation is compared with the original one row by row, and averaged over rows: the Spearman rank
correlation of absolute attributions (and of signed ones for integrated gradients, whose sign carries
meaning), and SSIM (scikit-image) between the maps summed over channels and scaled to [0, 1] per image.
A map that became constant shares no ranking with the original (counted 0); two identical maps count 1.

``edge_detector`` is a deliberately model-independent "explanation" (the Sobel edge magnitude of the input,
scikit-image) that exists to show the check failing: it never changes, similarity 1 at every step. It is
reported as the expected failure and carries no threshold (like ``feature_variance`` in the tabular sanity
checks).

``<method>.max_spearman`` is the larger of its Spearman correlations after the full cascade (every layer
randomised) and under label randomisation; a method that keeps the original ranking explains the input rather
than the model. The default thresholds put the bound at 0.5: on the digits CNN over 6 seeds gradients stay
<= 0.28, SmoothGrad <= 0.39, |IG| >= 0.89 and the edge control at 1.0, and 0.5 sits between the two groups. The default thresholds FAIL the audit when gradients or SmoothGrad fail, and WARN
when integrated gradients fail (see ``default_thresholds`` for why); the control carries none.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.result import metric_key
from audits.methods.network import evaluating, module_tensor, network_of, require_torch

Method = Literal["gradients", "smoothgrad", "integrated_gradients", "edge_detector"]
DEFAULT_BOUND = 0.5  # the default thresholds' bound on <method>.max_spearman (drawn on the cascade figure)
CONTROL = "edge_detector"
SIGNED = ("integrated_gradients",)  # methods whose sign means something: compared signed too


class NetworkSanityConfig(AuditConfig):
    methods: tuple[Method, ...] = Field(("gradients", "smoothgrad", "integrated_gradients", CONTROL), min_length=1)
    dataset: Literal["current", "reference"] = "current"  # the rows explained
    rows: int = Field(16, ge=1)
    label_epochs: int | None = Field(10, ge=1)  # epochs of the shuffled-label retrain (None: the model's own)
    max_refit_rows: int = Field(1000, ge=10)  # reference rows the shuffled-label network is trained on
    smoothgrad_samples: int = Field(25, ge=1)
    smoothgrad_noise: float = Field(0.15, gt=0)  # noise sd as a share of the rows' value range
    ig_steps: int = Field(32, ge=2)
    example_rows: int = Field(1, ge=1, le=8)  # rows drawn in the grid of maps


@dataclass(frozen=True)
class Similarity:
    spearman: float  # mean per-row Spearman correlation of |attributions|
    spearman_signed: float  # the same on signed attributions (NaN for unsigned methods)
    ssim: float  # mean per-row SSIM of the channel-summed |maps| scaled to [0, 1]


# --- comparing maps ----------------------------------------------------------------------------------


def rank_similarities(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Spearman correlation of matching rows of two ``(N, D)`` matrices (Pearson on average ranks, as scipy's
    ``spearmanr``); 1 where two rows are identical, 0 where exactly one is constant, NaN where both are."""
    from scipy.stats import rankdata

    ra, rb = rankdata(A, axis=1), rankdata(B, axis=1)
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean(axis=1, keepdims=True)
    norm = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.clip((ra * rb).sum(axis=1) / norm, -1.0, 1.0)
    constant_a, constant_b = np.ptp(A, axis=1) == 0, np.ptp(B, axis=1) == 0
    rho = np.where(constant_a != constant_b, 0.0, np.where(constant_a & constant_b, np.nan, rho))
    return np.where((A == B).all(axis=1), 1.0, rho)


def unit_map(attribution: np.ndarray) -> np.ndarray:
    """A (C, H, W) attribution as a (H, W) map of |attribution| summed over channels, scaled to [0, 1]."""
    m = np.abs(attribution).sum(axis=0)
    spread = float(np.ptp(m))
    return (m - m.min()) / spread if spread > 0 else np.zeros_like(m)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    window = min(7, side if side % 2 else side - 1)
    if window < 3:  # too small an image for a structural comparison
        return float("nan")
    return float(structural_similarity(a, b, data_range=1.0, win_size=window))


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def similarity(original: np.ndarray, other: np.ndarray, signed: bool) -> Similarity:
    """Row-averaged similarity of two attribution batches ``(N, C, H, W)``."""
    flat_o, flat_x = original.reshape(len(original), -1), other.reshape(len(other), -1)
    return Similarity(
        spearman=_mean(rank_similarities(np.abs(flat_o), np.abs(flat_x))),
        spearman_signed=_mean(rank_similarities(flat_o, flat_x)) if signed else float("nan"),
        ssim=_mean([ssim(unit_map(a), unit_map(b)) for a, b in zip(original, other, strict=True)]),
    )


# --- explanations --------------------------------------------------------------------------------------


def edge_map(x: np.ndarray) -> np.ndarray:
    """Sobel edge magnitude of every channel of every image: the model-independent control."""
    from skimage.filters import sobel

    return np.stack([np.stack([sobel(channel.astype(float)) for channel in image]) for image in x])


def explain(module, x: np.ndarray, targets: np.ndarray, methods: list[str], cfg: NetworkSanityConfig, seed: int) -> dict[str, np.ndarray]:
    from audits.methods.gradients import attribute

    out = {}
    for method in methods:
        if method == CONTROL:
            out[method] = edge_map(x)
        else:
            out[method] = attribute(module, x, targets, method, seed=seed, smoothgrad_samples=cfg.smoothgrad_samples,
                                    smoothgrad_noise=cfg.smoothgrad_noise, ig_steps=cfg.ig_steps)  # fmt: skip
    return out


# --- randomising ------------------------------------------------------------------------------------------


def layers_top_down(module, x: np.ndarray) -> tuple[list[tuple[str, Any]], str]:
    """The modules that own parameters, output first, and how that order was found.

    The order is the one a forward pass calls them in, reversed; modules never called do not affect the output
    and are left out. A graph that reads parameters without calling their modules (a torch.export program,
    MLflow's pt2 format) calls none: then registration order, reversed. Names come from ``named_modules``,
    stable across runs of the same architecture."""
    torch = require_torch()

    owners = [(name or "root", m) for name, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]
    called: list[str] = []
    hooks = [m.register_forward_hook(lambda _m, _i, _o, name=name: called.append(name)) for name, m in owners]
    try:
        with torch.no_grad():
            module(module_tensor(module, x[:2]))
    finally:
        for hook in hooks:
            hook.remove()
    if not called:
        return owners[::-1], "registration order (no parameterised module is called as such in the forward pass)"
    by_name = dict(owners)
    return [(name, by_name[name]) for name in reversed(list(dict.fromkeys(called)))], "forward-pass order"


def draw_layer(layer, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """New values for a layer's own parameters: normal draws at each tensor's trained RMS."""
    draws = {}
    for name, p in layer.named_parameters(recurse=False):
        values = p.detach().cpu().numpy().astype(float)
        rms = float(np.sqrt(np.mean(np.square(values)))) if values.size else 0.0
        draws[name] = rng.normal(0.0, rms, size=values.shape).astype(np.float32)
    return draws


def set_layer(layer, draws: dict[str, np.ndarray]) -> None:
    torch = require_torch()

    with torch.no_grad():
        for name, p in layer.named_parameters(recurse=False):
            p.copy_(torch.from_numpy(draws[name]).to(p.device))


def label_randomised(context: AuditContext, cfg: NetworkSanityConfig) -> tuple[Any, dict[str, float], str]:
    """The audited network's architecture retrained from fresh seeded weights on reference rows with shuffled labels."""
    from sklearn.base import clone

    reference = context.reference
    positions = np.arange(len(reference))
    if len(positions) > cfg.max_refit_rows:
        positions = np.sort(context.rng("network_sanity.refit_rows").choice(positions, size=cfg.max_refit_rows, replace=False))
    X = reference.X.iloc[positions]
    true = reference.y.to_numpy()[positions]
    shuffled = context.rng("network_sanity.label_shuffle").permutation(true)
    model = clone(context.model.estimator)
    settable = model.get_params(deep=False)
    params = {"random_state": context.random_state("network_sanity.label_refit")}
    if cfg.label_epochs is not None:
        params["epochs"] = cfg.label_epochs
    model.set_params(**{k: v for k, v in params.items() if k in settable}).fit(X, shuffled)
    predicted = model.predict(X)
    stats = {"fit_shuffled_labels": float(np.mean(predicted == shuffled)), "accuracy_true_labels": float(np.mean(predicted == true))}
    epochs = f", {settable['epochs'] if cfg.label_epochs is None else cfg.label_epochs} epochs" if "epochs" in settable else ""
    return model, stats, f"reference labels shuffled, {len(positions)} rows{epochs}, from fresh seeded weights"


def label_model_targets(original_classes: np.ndarray, model: Any, targets: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The original predicted classes as indices of the shuffled-label network's outputs (its own prediction
    where it never saw that class)."""
    position = {c: i for i, c in enumerate(model.classes_.tolist())}
    fallback = np.argmax(model.logits(x.reshape(len(x), -1)), axis=1)
    return np.array([position.get(original_classes[t].item(), f) for t, f in zip(targets, fallback, strict=True)])


# --- the checks ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    metrics: dict[str, float]
    table: pd.DataFrame
    info: dict[str, str]
    layers: list[str]
    x: np.ndarray  # the explained rows
    maps: dict[str, list[np.ndarray]]  # per method: original, after each cascade step, label-randomised


def run_checks(context: AuditContext, cfg: NetworkSanityConfig) -> Outcome:
    torch = require_torch()

    estimator = network_of(context)
    source = context.dataset(cfg.dataset).X
    rows = source.sample(n=min(cfg.rows, len(source)), random_state=context.random_state("network_sanity.rows"))
    x = context.images(rows).copy()  # writable and contiguous, for torch.from_numpy
    methods = list(dict.fromkeys(cfg.methods))
    seed = context.random_state("network_sanity.smoothgrad")  # one noise seed for every model: only the model differs

    original_module = estimator.network()
    module = evaluating(copy.deepcopy(original_module))  # the audited model is never touched
    with torch.no_grad():
        original_logits = module(module_tensor(module, x)).cpu().numpy()
    targets = np.argmax(original_logits, axis=1)
    original = explain(module, x, targets, methods, cfg, seed)

    layers, order = layers_top_down(module, x)
    rng = context.rng("network_sanity.cascade")
    steps: list[dict[str, np.ndarray]] = []
    for _, layer in layers:  # cumulative: layer k is randomised on top of the k - 1 above it
        set_layer(layer, draw_layer(layer, rng))
        steps.append(explain(module, x, targets, methods, cfg, seed))
    with torch.no_grad():
        randomised_labels = np.argmax(module(module_tensor(module, x)).cpu().numpy(), axis=1)

    classes = np.asarray(estimator.classes_)
    label_model, label_stats, label_note = label_randomised(context, cfg)
    label_targets = label_model_targets(classes, label_model, targets, x)
    by_label = explain(label_model.network(), x, label_targets, methods, cfg, seed)

    names = [name for name, _ in layers]
    metrics: dict[str, float] = {
        "rows_explained": float(len(x)),
        "layers": float(len(layers)),
        "full_randomisation.changed_predictions": float(np.mean(randomised_labels != targets)),
        "label_randomisation.changed_predictions": float(np.mean(label_model.predict(x.reshape(len(x), -1)) != classes[targets])),
        "label_randomisation.fit_shuffled_labels": label_stats["fit_shuffled_labels"],
        "label_randomisation.accuracy_true_labels": label_stats["accuracy_true_labels"],
    }
    records: list[dict[str, Any]] = []
    unchanged: list[str] = []  # beyond the default thresholds' bound
    for method in methods:
        signed = method in SIGNED
        cascade = [similarity(original[method], step[method], signed) for step in steps]
        label = similarity(original[method], by_label[method], signed)
        full = cascade[-1] if cascade else Similarity(float("nan"), float("nan"), float("nan"))
        for k, (name, s) in enumerate(zip(names, cascade, strict=True), start=1):
            _put(metrics, (method, "cascade", name), s, signed)
            records.append(_record(method, "cascade", k, name, s))
        _put(metrics, (method, "full_randomisation"), full, signed)
        _put(metrics, (method, "label_randomisation"), label, signed)
        records.append(_record(method, "labels shuffled", None, "whole network retrained", label))
        measured = [v for v in (full.spearman, label.spearman) if np.isfinite(v)]
        metrics[metric_key(method, "max_spearman")] = max(measured) if measured else float("nan")
        if measured and max(measured) > DEFAULT_BOUND and method != CONTROL:
            unchanged.append(method)

    info = {
        "rows": f"{len(x)} rows of {cfg.dataset} data; every model explains the class the original network predicts",
        "cascade": f"layers re-initialised cumulatively from the output down ({order}; normal draws at each parameter's "
                   f"trained RMS): " + " -> ".join(names),
        "label_randomisation": label_note,
        "pass_rule": "<method>.max_spearman is the larger mean per-row Spearman |attribution| correlation with the "
                     "original, after the full cascade or under label randomisation; its threshold (default: at most "
                     f"{DEFAULT_BOUND:g}) fails a method whose maps barely changed",
        "methods": ", ".join(methods),
    }
    if CONTROL in methods:
        info[CONTROL] = "a model-independent control (Sobel edges of the input): it must fail, and its failure does not fail the audit"
    if unchanged:
        info["unchanged"] = f"above {DEFAULT_BOUND:g}: " + ", ".join(unchanged)
    if "integrated_gradients" in unchanged:
        info["integrated_gradients"] = ("|attributions| keep the input's structure: from a zero baseline IG is zero wherever "
                                        "the input is zero, whatever the weights; compare the signed correlations")
    maps = {m: [original[m], *[s[m] for s in steps], by_label[m]] for m in methods}
    table = pd.DataFrame.from_records(records, columns=["method", "randomisation", "step", "layer", "spearman", "spearman_signed", "ssim"])
    return Outcome(metrics, table, info, names, x, maps)


def _put(metrics: dict[str, float], prefix: tuple[str, ...], s: Similarity, signed: bool) -> None:
    metrics[metric_key(*prefix, "spearman")] = s.spearman
    metrics[metric_key(*prefix, "ssim")] = s.ssim
    if signed:
        metrics[metric_key(*prefix, "spearman_signed")] = s.spearman_signed


def _record(method: str, randomisation: str, step: int | None, layer: str, s: Similarity) -> dict[str, Any]:
    return {"method": method, "randomisation": randomisation, "step": step, "layer": layer,
            "spearman": s.spearman, "spearman_signed": s.spearman_signed, "ssim": s.ssim}


class NetworkSanityAudit(Audit):
    """Do a network's saliency maps change when its layers or its labels are randomised?"""

    name = "network_sanity"
    question = "behaviour"
    typical_cost_s = 4.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "{gradients,smoothgrad,integrated_gradients,edge_detector}.cascade.*.{spearman,spearman_signed,ssim}",
        "{gradients,smoothgrad,integrated_gradients,edge_detector}.{full,label}_randomisation.{spearman,spearman_signed,ssim}",
        "{gradients,smoothgrad,integrated_gradients,edge_detector}.max_spearman", "full_randomisation.changed_predictions",
        "label_randomisation.{accuracy_true_labels,changed_predictions,fit_shuffled_labels}", "layers",
        "rows_explained",
    )
    Config = NetworkSanityConfig
    requires = Requirements(modalities=("image",), network=True, tasks=("classification",), labels="reference")
    description = "Adebayo et al. sanity checks for saliency maps: cascading layer randomisation and label randomisation of a network."
    default_thresholds = (
        Threshold(metric="gradients.max_spearman", max=DEFAULT_BOUND, severity="fail"),
        Threshold(metric="smoothgrad.max_spearman", max=DEFAULT_BOUND, severity="fail"),
        # |IG| from a zero baseline is (input x mean gradient): zero wherever the input is zero, so on sparse images it
        # keeps the input's outline under any model (0.89-0.94 after full randomisation on the digits CNN, while its
        # signed maps fall to about 0; Adebayo et al. report the same for IG). A finding about the method on such
        # data rather than about the model: WARN.
        Threshold(metric="integrated_gradients.max_spearman", max=DEFAULT_BOUND, severity="warn"),
    )

    def compute(self, context: AuditContext) -> AuditResult:
        cfg = self.config
        outcome = run_checks(context, cfg)
        return AuditResult(
            audit=self.name,
            metrics=outcome.metrics,
            artifacts=(
                Artifact.table("similarity", outcome.table, "Similarity of each method's explanations of the randomised and the original network"),
                _cascade_figure(outcome.table, list(outcome.maps), outcome.layers, DEFAULT_BOUND),
                _maps_figure(outcome, cfg.example_rows),
            ),
            info=outcome.info,
        )


# --- figures -----------------------------------------------------------------------------------------------------


def _cascade_figure(table: pd.DataFrame, methods: list[str], layers: list[str], max_spearman: float) -> Artifact:
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    label_x = len(layers) + 1
    for column, ax, title in (("spearman", axes[0], "Spearman rank correlation of |attributions|"), ("ssim", axes[1], "SSIM of normalised maps")):
        for i, method in enumerate(methods):
            rows = table[table["method"] == method]
            cascade = rows[rows["randomisation"] == "cascade"].sort_values("step")
            style = {"color": f"C{i}", "linestyle": ":" if method == CONTROL else "-"}
            ax.plot([0, *cascade["step"].tolist()], [1.0, *cascade[column].tolist()], marker="o", label=method, **style)
            label = rows[rows["randomisation"] == "labels shuffled"]
            ax.scatter([label_x] * len(label), label[column], marker="*", s=160, color=f"C{i}")
        if column == "spearman":
            ax.axhline(max_spearman, color="red", linestyle="--", linewidth=1, label=f"default threshold {max_spearman:g}")
        ax.set_xticks(range(label_x + 1), ["original", *[f"+{name}" for name in layers], "labels\nshuffled"], rotation=45, ha="right", fontsize=8)
        ax.set_ylim(-0.25 if column == "spearman" else -0.05, 1.05)
        ax.set_title(title)
        ax.set_xlabel("layers randomised, from the output down (cumulative)")
    axes[0].set_ylabel("similarity to the original explanation")
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle("Cascading randomisation: explanations should stop resembling the original's")
    return Artifact.figure("cascade", fig, "Similarity to the original explanation as layers are randomised, per method")


def _maps_figure(outcome: Outcome, example_rows: int) -> Artifact:
    methods, layers = list(outcome.maps), outcome.layers
    examples = min(example_rows, len(outcome.x))
    columns = ["input", "original", *[f"+{name}" for name in layers], "labels shuffled"]
    fig = Figure(figsize=(1.4 * len(columns), 1.5 * len(methods) * examples + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(len(methods) * examples, len(columns), squeeze=False))
    for e in range(examples):
        for m, method in enumerate(methods):
            r = e * len(methods) + m
            image = np.abs(outcome.x[e]).sum(axis=0)
            panels = [image, *[unit_map(maps[e]) for maps in outcome.maps[method]]]
            for c, panel in enumerate(panels):
                ax = axes[r, c]
                ax.imshow(panel, cmap="gray" if c == 0 else "viridis", vmin=0 if c else None, vmax=1 if c else None)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(columns[c], fontsize=7)
            axes[r, 0].set_ylabel(f"{method}\nrow {e + 1}", fontsize=7)
    fig.suptitle("|attribution| maps (scaled to [0, 1]) as the layers are randomised", fontsize=9)
    return Artifact.figure("maps", fig, "Example maps per method across the cascade and under label randomisation")
