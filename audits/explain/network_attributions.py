"""Where in the image does a network look? SHAP values and three gradient maps of its logits, compared.

- SHAP: shap's ``DeepExplainer`` (DeepLIFT with a background sample, Lundberg & Lee 2017) on the logits.
  Its values add up exactly: sum(values) + expected value = logit, for every row and class; the audit
  measures that gap (``shap.additivity_max_error``) and fails when it exceeds ``ADDITIVITY_TOLERANCE``.
  DeepExplainer only hooks ``nn.Module`` layers it knows: with in-place or functional activations it raises
  or silently stops adding up, so it runs on a deep copy of the network (its hooks never touch the audited
  one) and, when it raises, the audit falls back to ``GradientExplainer`` (expected gradients, which add up
  only in expectation) and says so in ``info``.
- The SHAP figures are shap's own ``image_plot`` (every class's SHAP values over the faded input). The grid shows one
  current row per class that the model classifies correctly (without labels: predicts most confidently), the one of
  highest probability, never a planted row (``planted``: a segment column, ``clean`` its untouched value) nor one other
  audits flagged as unfamiliar; the planted and flagged inputs get a figure of their own (``shap_planted``), and the
  table ``shap_rows`` names every row shown.
- gradients, SmoothGrad, integrated gradients: Captum, through ``audits.methods.gradients.attribute``, for the
  predicted class. Integrated gradients report their largest completeness gap |sum(attr) - (f(x) - f(baseline))|
  relative to the mean |f(x) - f(baseline)|, and warn above ``IG_RELATIVE_DELTA`` (more ``ig_steps`` lower it).

Per method, ``concentration`` is the mean share of a row's |attribution| mass in its top 10 % of pixels
(1 = a few pixels decide, 0.1 = spread evenly); ``agreement.<a>.<b>`` is the mean Spearman rank correlation
of two methods' per-pixel |attribution| on the same rows. There is no universally right value for either:
they are for comparing versions. Channels are summed (|.|) into one value per pixel.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import AfterValidator, Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.result import metric_key
from audits.methods.compare import spearman
from audits.methods.gradients import attribute
from audits.methods.image_maps import class_example_positions, mean_map, most_confident_of_each, pixel_mass, sample_positions, top_share
from audits.methods.network import module_tensor, network_of
from audits.methods.planted import planted_column
from audits.rendering.figures import shap_image_figure, show_image, show_map

Method = Literal["shap", "gradients", "smoothgrad", "integrated_gradients"]
METHODS: tuple[Method, ...] = ("shap", "gradients", "smoothgrad", "integrated_gradients")
SIGNED = {"shap", "integrated_gradients"}  # gradients and SmoothGrad maps are absolute values
ADDITIVITY_TOLERANCE = 1e-3  # logit units; DeepExplainer measured 2e-6 on the digits CNN (float32 sums)
IG_RELATIVE_DELTA = 0.05  # max completeness gap / mean |f(x) - f(baseline)|: 0.025 (quadrant) and 0.002 (digits) at 32 steps
GRADIENT_EXPLAINER_SAMPLES = 200


def _distinct(value: tuple[str, ...]) -> tuple[str, ...]:
    if len(set(value)) != len(value):
        raise ValueError("each method may be named once")
    return value


Methods = Annotated[tuple[Method, ...], Field(min_length=1), AfterValidator(_distinct)]


class NetworkAttributionConfig(AuditConfig):
    methods: Methods = METHODS
    rows: int = Field(20, ge=1)  # current rows explained (sampled with the seed)
    background_rows: int = Field(50, ge=1)  # reference rows SHAP integrates over (sampled with the seed)
    smoothgrad_samples: int = Field(25, ge=1)
    smoothgrad_noise: float = Field(0.15, gt=0, le=1)  # noise sd as a share of the images' value range
    ig_steps: int = Field(32, ge=2)
    ig_baseline: float = 0.0  # the constant image integrated gradients start from
    examples: int = Field(4, ge=1, le=20)  # explained rows shown in the methods figure
    # the SHAP grid shows one unmodified row per class: ``planted`` names a column of data.segments that says per current
    # row what was planted on it (as concordance's ``planted``), ``clean`` its value on the untouched rows; the planted
    # rows are drawn in a figure of their own. None: no row is known to be planted
    planted: str | None = Field(None, min_length=1)
    clean: str = "none"
    # one-channel inputs drawn negated, as shap's MNIST example draws them (image_plot(values, -x)): bright strokes on a
    # dark ground (digits) show dark on a light ground, under the attributions too
    negate_grey: bool = True


def rank_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, the Spearman correlation of two methods' per-pixel |attribution| (NaN where one map is flat)."""
    ma, mb = pixel_mass(a), pixel_mass(b)
    return np.array([spearman(ma[i].ravel(), mb[i].ravel()) for i in range(len(ma))])


# --- SHAP ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapOutcome:
    values: np.ndarray  # (N, C, H, W, K'): class last
    classes: np.ndarray  # (N, K'): the class index each value slice explains (all K, or the top ones by logit)
    expected: np.ndarray  # (K,): the mean background logits
    logits: np.ndarray  # (N, K)
    explainer: str  # "DeepExplainer" or "GradientExplainer"
    note: str = ""  # why DeepExplainer was not used

    @property
    def additivity_error(self) -> float:
        """max |sum(values) + expected - logit| over rows and explained classes."""
        if not len(self.values):
            return 0.0
        sums = self.values.reshape(len(self.values), -1, self.values.shape[-1]).sum(axis=1)
        logits = np.take_along_axis(self.logits, self.classes, axis=1)
        return float(np.max(np.abs(sums + self.expected[self.classes] - logits)))


def shap_values(module: Any, x: np.ndarray, background: np.ndarray, *, top: int | None = None, seed: int = 0) -> ShapOutcome:
    """SHAP values of ``module``'s logits for ``x`` against ``background`` (both ``(N, C, H, W)``): every class,
    or with ``top`` only each row's ``top`` largest logits (DeepExplainer's cost grows with the classes explained).

    DeepExplainer runs on a deep copy of the module, so its hooks (which it leaves behind when it fails)
    never stay on the audited network; if it raises, GradientExplainer runs on another fresh copy."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # importing shap warns about matplotlib colormap deprecations
        import shap
    inputs, reference = module_tensor(module, x), module_tensor(module, background)
    with torch.no_grad():
        logits = module.eval()(inputs).cpu().numpy().astype(float)
        expected = module(reference).cpu().numpy().astype(float).mean(axis=0)
    every = np.tile(np.arange(logits.shape[1]), (len(x), 1))
    # ranked_outputs with check_additivity=True always fails in shap 0.51 (it compares ranked values with
    # class-ordered logits): additivity is measured here instead and judged by a threshold.
    ranked = {} if top is None else {"ranked_outputs": top}

    def unpack(out):
        values, classes = out if top is not None else (out, every)
        if hasattr(classes, "cpu"):  # ranked_outputs come back as a tensor on the network's device
            classes = classes.cpu().numpy()
        return np.asarray(values, dtype=float), np.asarray(classes, dtype=np.int64)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shap's NumPy 2 deprecations and "unrecognized nn.Module" notes
        try:
            explainer = shap.DeepExplainer(copy.deepcopy(module), reference)
            values, classes = unpack(explainer.shap_values(inputs, check_additivity=False, **ranked))
            expected = np.asarray(explainer.expected_value, dtype=float).reshape(-1)
            return ShapOutcome(values, classes, expected, logits, "DeepExplainer")
        except Exception as exc:  # noqa: BLE001 - any DeepExplainer failure means: use the fallback
            note = (f"DeepExplainer failed ({type(exc).__name__}: {str(exc)[:200]}); GradientExplainer used instead, "
                    "whose values add up only in expectation")
        explainer = shap.GradientExplainer(copy.deepcopy(module), reference)
        values, classes = unpack(explainer.shap_values(inputs, nsamples=GRADIENT_EXPLAINER_SAMPLES, rseed=seed, **ranked))
    return ShapOutcome(values, classes, expected, logits, "GradientExplainer", note)


def _methods_figure(images: np.ndarray, maps: dict[str, np.ndarray], row_labels: list[str]) -> Figure:
    n_rows, n_cols = len(images), len(maps) + 1
    fig = Figure(figsize=(1.6 * n_cols, 1.6 * n_rows + 0.5), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        show_image(axes[r, 0], images[r])
        axes[r, 0].set_ylabel(row_labels[r], fontsize=8)
        for c, (method, values) in enumerate(maps.items(), start=1):
            summed = values[r].sum(axis=0)
            show_map(axes[r, c], summed, signed=method in SIGNED)
    axes[0, 0].set_title("input", fontsize=9)
    for c, method in enumerate(maps, start=1):
        axes[0, c].set_title(method.replace("_", " "), fontsize=9)
    fig.suptitle("Attributions of the predicted class (shap, integrated gradients: red for, blue against; "
                 "gradients, SmoothGrad: |gradient|)", fontsize=9)
    return fig


SUSPECT_ROWS = 10  # planted or flagged inputs drawn at most (one per planted kind, one per flagging signal)


@dataclass(frozen=True)
class ShownRows:
    """The rows the SHAP figures show: current positions (grid: one per class; planted: one per planted kind), the
    flagged rows' images (data read by partition: other audits' flags, not rows of the sample), and a table of them."""

    grid: list[int]
    planted: list[int]
    flagged: np.ndarray  # (M, C, H, W)
    table: pd.DataFrame
    basis: str  # how the grid's rows were chosen, in words


def flagged_positions(context: AuditContext) -> np.ndarray:
    """Which current rows other audits flagged on every row (``context.flagged``, data read by partition): the flagged
    rows carry their pixels, not a position in the sample, so they are matched by value."""
    flagged = np.zeros(len(context.current), dtype=bool)
    if context.flagged is None or not len(context.flagged):
        return flagged
    features = list(context.features)
    seen = {row.tobytes() for row in context.flagged[features].to_numpy(dtype=np.float32)}
    for i, row in enumerate(context.current.X[features].to_numpy(dtype=np.float32)):
        flagged[i] = row.tobytes() in seen
    return flagged


def shown_rows(context: AuditContext, cfg: NetworkAttributionConfig) -> ShownRows:
    """The SHAP grid's row per class, chosen among rows neither planted nor flagged (``class_example_positions``), and
    the planted and flagged inputs the second figure shows instead: of each planted kind the row the model is surest
    about, of each flagging signal its first flagged row."""
    current = context.current
    proba, predicted = current.predictions.proba, current.predictions.labels
    truth = np.asarray(current.y, dtype=object) if current.labelled else None
    kinds = planted_column(context.current.segments, cfg.planted)
    flagged = flagged_positions(context)
    eligible = ~flagged if kinds is None else ~flagged & (kinds == cfg.clean)
    grid = class_example_positions(context.model.classes, proba, predicted, truth, eligible)
    planted = {} if kinds is None else most_confident_of_each(kinds, proba, skip=(cfg.clean,))
    planted = dict(list(planted.items())[:SUSPECT_ROWS])
    others = context.flagged if context.flagged is not None else pd.DataFrame(columns=["row", "flagged_by"])
    firsts = others.drop_duplicates("flagged_by").head(SUSPECT_ROWS - len(planted))

    if truth is not None:
        basis = "the correctly classified current row with the highest probability of its class"
    else:
        basis = ("without labels, the current row predicted as the class with the highest probability (whether it is "
                 "correct is not known)")
    excluded = [f"not planted ({cfg.planted!r} = {cfg.clean!r})"] if kinds is not None else []
    if flagged.any() or (context.flagged is not None and len(context.flagged)):
        excluded.append("not flagged as unfamiliar by another audit")
    if excluded:
        basis += ", among rows " + " and ".join(excluded)
    index = current.X.index
    record = []
    for label, position in grid.items():
        record.append({"figure": "shap_grid", "shown_for": str(label), "row": str(index[position]),
                       "true": None if truth is None else str(truth[position]), "predicted": str(predicted[position]),
                       "probability": float(np.max(proba[position])), "planted": None if kinds is None else kinds[position],
                       "flagged_by": None})  # fmt: skip
    for kind, position in planted.items():
        record.append({"figure": "shap_planted", "shown_for": f"planted: {kind}", "row": str(index[position]),
                       "true": None if truth is None else str(truth[position]), "predicted": str(predicted[position]),
                       "probability": float(np.max(proba[position])), "planted": kind, "flagged_by": None})  # fmt: skip
    for row in firsts.itertuples(index=False):
        record.append({"figure": "shap_planted", "shown_for": f"flagged by {row.flagged_by}", "row": str(row.row),
                       "true": None, "predicted": None, "probability": float("nan"), "planted": None,
                       "flagged_by": str(row.flagged_by)})  # fmt: skip
    images = context.images(firsts[list(context.features)]) if len(firsts) else np.zeros((0, *context.input_shape), np.float32)
    return ShownRows(list(grid.values()), list(planted.values()), images, pd.DataFrame(record, columns=list(SHOWN_COLUMNS)), basis)


SHOWN_COLUMNS = ("figure", "shown_for", "row", "true", "predicted", "probability", "planted", "flagged_by")


class NetworkAttributionAudit(Audit):
    """SHAP (DeepExplainer), gradients, SmoothGrad and integrated gradients of a network, with their agreement."""

    name = "network_attributions"
    question = "behaviour"
    typical_cost_s = 5.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "agreement.*", "{gradients,smoothgrad,integrated_gradients,shap}.concentration",
        "integrated_gradients.relative_delta_max", "shap.additivity_max_error", "rows",
    )
    requires = Requirements(modalities=("image",), network=True, tasks=("classification",), probabilities=True)
    Config = NetworkAttributionConfig
    description = "Pixel attributions of an image classifier four ways, how concentrated they are and how much they agree."
    default_thresholds = (
        Threshold(metric="shap.additivity_max_error", max=ADDITIVITY_TOLERANCE),
        Threshold(metric="integrated_gradients.relative_delta_max", max=IG_RELATIVE_DELTA, severity="warn"),
    )

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: NetworkAttributionConfig = self.config
        module = network_of(context).network()
        current = context.images(context.current)
        positions = sample_positions(len(current), cfg.rows, context.rng("network_attributions.rows"))
        x = current[positions]
        predicted = np.argmax(context.current.predictions.proba[positions], axis=1)
        class_names = [str(c) for c in context.model.classes]

        maps: dict[str, np.ndarray] = {}
        metrics: dict[str, float] = {"rows": float(len(x))}
        info: dict[str, str] = {"rows": f"{len(x)} current rows sampled with the seed; the predicted class is explained"}
        timings: dict[str, float] = {}
        artifacts: list[Artifact] = []
        for method in (m for m in METHODS if m in cfg.methods):  # one order, so a pair always has one key
            started = time.perf_counter()
            if method == "shap":
                maps[method], shap_classes, shap_metrics, shap_info, shap_artifacts = self._shap(context, module, x, class_names)
                if not np.array_equal(shap_classes, predicted):  # ties between logits only
                    info["shap_classes"] = f"SHAP explained another class than the predicted one on {int((shap_classes != predicted).sum())} row(s)"
                metrics.update(shap_metrics)
                info.update(shap_info)
                artifacts.extend(shap_artifacts)
            else:
                seed = context.random_state("network_attributions.smoothgrad")
                result = attribute(module, x, predicted, method, seed=seed, smoothgrad_samples=cfg.smoothgrad_samples,
                                   smoothgrad_noise=cfg.smoothgrad_noise, ig_steps=cfg.ig_steps, baseline=cfg.ig_baseline,
                                   return_delta=method == "integrated_gradients")  # fmt: skip
                if method == "integrated_gradients":
                    maps[method], delta = result
                    metrics[metric_key(method, "relative_delta_max")] = _relative_delta(module, x, predicted, delta, cfg.ig_baseline)
                else:
                    maps[method] = result
            timings[method] = time.perf_counter() - started

        concentration = {m: float(np.nanmean(top_share(v))) for m, v in maps.items()}
        for method, value in concentration.items():
            metrics[metric_key(method, "concentration")] = value
        agreement = {(a, b): float(np.nanmean(rank_agreement(maps[a], maps[b]))) for a, b in combinations(maps, 2)}
        for (a, b), value in agreement.items():
            metrics[metric_key("agreement", a, b)] = value
        if agreement:
            metrics["agreement.mean"] = float(np.nanmean(list(agreement.values())))

        shown = np.arange(min(cfg.examples, len(x)))
        labels = [f"row {context.current.X.index[positions[i]]}\npred {class_names[predicted[i]]}" for i in shown]
        artifacts.append(Artifact.figure("methods", _methods_figure(x[shown], {m: v[shown] for m, v in maps.items()}, labels),
                                         f"Attribution maps of {len(shown)} explained rows, one column per method"))
        artifacts.append(Artifact.json("mean_maps", {m: mean_map(v).round(6).tolist() for m, v in maps.items()},
                                       "Per method: the mean over explained rows of each row's |attribution| share per pixel (H x W)"))
        artifacts.append(Artifact.table("methods", _methods_table(concentration, agreement),
                                        "Per method: mean share of |attribution| in the top 10 % of pixels, and mean Spearman "
                                        "rank agreement of |attribution| with every other method"))
        info["timings"] = ", ".join(f"{m} {t:.2f} s" for m, t in timings.items())
        info["concentration"] = "mean share of a row's |attribution| in its top 10 % of pixels"
        return AuditResult(audit=self.name, metrics=metrics, artifacts=tuple(artifacts), info=info)

    def _shap(self, context: AuditContext, module, x: np.ndarray, class_names: list[str]):
        """(values of each explained row's top class, the classes explained, metrics, info, the SHAP figures and the
        table of the rows they show)."""
        cfg: NetworkAttributionConfig = self.config
        reference = context.images(context.reference)
        background = reference[sample_positions(len(reference), cfg.background_rows, context.rng("network_attributions.background"))]
        seed = context.random_state("network_attributions.shap")
        explained = shap_values(module, x, background, top=1, seed=seed)  # the predicted class only: 1/K of the cost
        shown = shown_rows(context, cfg)
        current = context.images(context.current)
        images = np.concatenate([current[shown.grid], current[shown.planted], shown.flagged])
        every = shap_values(module, images, background, seed=seed) if len(images) else None  # every class, for the figures
        metrics = {"shap.additivity_max_error": max(explained.additivity_error, every.additivity_error if every else 0.0)}
        info = {"shap": f"{explained.explainer} on the logits, {len(background)} reference rows as background; "
                        f"additivity checked on the explained rows' predicted class and on every class of the figures' rows",
                "shap_grid": f"one row per class: {shown.basis}"}
        if explained.note:
            info["shap_fallback"] = explained.note
        shown_classes = set(shown.table.loc[shown.table["figure"] == "shap_grid", "shown_for"])
        missing = [str(c) for c in context.model.classes if str(c) not in shown_classes]
        if missing:
            info["shap_grid_missing"] = f"no such row for class(es) {', '.join(missing)}: left out of the grid"
        table = shown.table.copy()
        flagged = (table["figure"] == "shap_planted") & table["flagged_by"].notna()
        if flagged.any():  # the flagged rows are not in the sample: their prediction is the network's logits here
            logits = every.logits[len(shown.grid) + len(shown.planted):]
            table.loc[flagged, "predicted"] = [str(context.model.classes[k]) for k in np.argmax(logits, axis=1)]
            probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
            table.loc[flagged, "probability"] = (probabilities.max(axis=1) / probabilities.sum(axis=1)).tolist()

        artifacts = [Artifact.table("shap_rows", table, "The rows the SHAP figures show: per class of the grid, "
                                    f"{shown.basis}; in the planted figure, the planted and flagged inputs")]
        if context.with_figures and len(shown.grid):
            grid = table[table["figure"] == "shap_grid"]
            titles = [f"row {r.row} · {'pred' if pd.isna(r.true) else 'true'} {r.shown_for}" for r in grid.itertuples()]
            labelled = "correctly classified, unmodified" if context.current.labelled else "most confidently predicted (no labels)"
            figure = shap_image_figure(every.values[: len(shown.grid)], self._drawn(images[: len(shown.grid)]), class_names, titles,
                                       f"SHAP values of each class's logit over the faded input, one {labelled} current row "
                                       "per class: red = evidence for the class, blue = against")  # fmt: skip
            artifacts.append(Artifact.figure("shap_grid", figure, f"SHAP grid: per class, {shown.basis} (rows); "
                                             "every class's SHAP values over the faded input (columns)"))
        suspects = table[table["figure"] == "shap_planted"]
        if context.with_figures and len(suspects):
            titles = [f"{r.flagged_by if pd.isna(r.planted) else r.planted} · row {r.row}\n"
                      f"{'' if pd.isna(r.true) else f'true {r.true}, '}pred {r.predicted}" for r in suspects.itertuples()]
            figure = shap_image_figure(every.values[len(shown.grid):], self._drawn(images[len(shown.grid):]), class_names, titles,
                                       "Planted or flagged inputs, not examples of their class: SHAP values of each class's "
                                       "logit over the faded input (red = evidence for the class, blue = against)")  # fmt: skip
            artifacts.append(Artifact.figure("shap_planted", figure, "SHAP values on planted or flagged inputs: of each planted "
                                             "kind the row the model is surest about, of each flagging signal its first row"))
        return explained.values[..., 0], explained.classes[:, 0], metrics, info, artifacts

    def _drawn(self, images: np.ndarray) -> np.ndarray:
        """The images as the figures draw them: one-channel inputs negated (``negate_grey``), as shap's MNIST example does."""
        return -images if self.config.negate_grey and images.shape[1] == 1 else images


def _relative_delta(module, x: np.ndarray, targets: np.ndarray, delta: np.ndarray, baseline: float) -> float:
    """The largest |completeness gap| over rows, relative to the mean |f(x) - f(baseline)| of the target logit.

    Not row by row: a row whose logit barely moves from the baseline has almost nothing to distribute, and
    its ratio (0.03 / 0.034 on the quadrant CNN) would decide the maximum whatever the number of steps."""
    import torch

    with torch.no_grad():
        inputs = module_tensor(module, x)
        gap = module(inputs) - module(torch.full_like(inputs, float(baseline)))
    gap = gap.cpu().numpy().astype(float)[np.arange(len(x)), targets]
    return float(np.max(np.abs(delta)) / max(float(np.mean(np.abs(gap))), 1e-12))


def _methods_table(concentration: dict[str, float], agreement: dict[tuple[str, str], float]) -> pd.DataFrame:
    methods = list(concentration)

    def pair(a: str, b: str) -> float:
        return 1.0 if a == b else agreement.get((a, b), agreement.get((b, a), float("nan")))

    rows = []
    for m in methods:
        others = [pair(m, o) for o in methods if o != m]
        rows.append({"method": m, "mean_concentration": concentration[m],
                     "mean_agreement_with_others": float(np.nanmean(others)) if others and not np.all(np.isnan(others)) else float("nan"),
                     **{f"agreement_with_{o}": pair(m, o) for o in methods}})  # fmt: skip
    return pd.DataFrame(rows)
