"""Calibration: do the classifier's probabilities mean what they say, and would recalibrating help?

On labelled current data (and on the reference, for comparison):

- the top-label ECE (the confidence of the predicted class, argmax of the probabilities, against
  whether it is right) with equal-width and equal-mass bins, the MCE (largest bin gap), the
  class-wise ECE (binary: the ECE of P(positive class); multiclass: the mean over classes of each
  class's one-vs-rest ECE), the Brier score and the log loss (``sklearn.metrics``);
- a noise floor by consistency resampling (Broecker & Smith, 2007): labels drawn from the model's
  own confidences give the ECE a perfectly calibrated model would show on this many rows with
  these bins. ``ece_excess`` = ECE - its 95th percentile is the miscalibration sampling cannot
  explain; the default thresholds sit on it, so a small batch does not warn on noise alone;
- suggested recalibrations fitted on the reference (or on half of the labelled current rows) and
  evaluated on current: temperature scaling and isotonic regression, both scikit-learn's own
  ``CalibratedClassifierCV(FrozenEstimator(...), method=...)``.

The binning follows the ``uncertainty-calibration`` package (Kumar et al., 2019) exactly: bins are
closed on the right, ``(lower, upper]`` (the first one includes 0); equal-width upper edges are
``k / bins``; equal-mass bins split the sorted confidences into ``bins`` nearly equal parts
(``np.array_split``), cut halfway between neighbouring parts, merge cuts that coincide, and end at 1.

Every row (a partial audit, ``audits.core.partial``). A side's state keeps its labelled rows' probabilities and class
indices while the side has at most ``exact_rows`` of them, so every figure is the one-frame answer above. Beyond that
the side is reduced to sums, which merge over partitions by addition:

- a fine grid of ``cells`` equal-width confidence cells (``histogram_bins`` rounded up to a multiple of ``bins``, so
  each equal-width bin is a union of whole cells: edge ``k / bins`` is cell edge ``k m / (bins m)``, the same float),
  each holding rows, sum of confidence, sum of correct, sum of |confidence - correct|. The equal-width ECE, the MCE,
  the accuracy and the mean confidence follow exactly (sums of the same numbers; only the order of the additions
  differs);
- per class, the equal-width bins of P(class) against the class's one-vs-rest outcome: the class-wise ECE and table,
  exactly;
- the sums of each row's Brier term and log loss term (scikit-learn's: the true class's probability clipped to
  ``[eps, 1 - eps]``): exact.

Equal-mass bins do not add up (their cuts depend on every row), so they are placed on the grid: where the two rows
either side of a cut lie in different cells, cutting at the cell edge between them splits the rows exactly as the
midpoint does; where both lie in one cell of a single value (each cell keeps its least and largest value), the whole
cell goes left, exactly as the cut at that value does; otherwise the cell goes whole to the side holding most of its
rows. Only the rows D of the last kind of cell can be binned differently from the exact cuts, and moving a row
changes at most two bins'
|sum of confidence - sum of correct| by |confidence - correct| each, so
``|ECE_equal_mass - exact| <= 2 / n * sum over D of |confidence - correct|``, reported as
``<side>.ece_equal_mass_bound`` (0 when exact; small where the rows pile up near confidence 1, since there
|confidence - correct| is small for the rows the model gets right).

The noise floor beyond ``exact_rows`` pools each equal-width bin's cells into at most 64 runs of neighbouring cells
and draws each run's correct count as Binomial(its rows, their mean confidence) instead of one Bernoulli per row: the
same mean, and a variance larger by the spread of the confidences within the run, at most rows / (4 (64 bins)^2)
(against rows p (1 - p) for the draws themselves), so the floor is, if anything, a hair conservative. Under
``exact_rows`` the draws are row by row as above, over the rows in the context's order when the context holds every
row of the side (the one-frame case, draw for draw), else over the confidences sorted (any partition order gives the
same draws). The recalibrations are fits, which do not merge: they are fitted and evaluated on the rows the context
holds (a seeded sample when the data is larger), and ``info`` says so.
"""
from __future__ import annotations

from functools import reduce
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.context import Dataset
from audits.core.partial import PartialAudit, State
from audits.methods.reliability import (
    CELL_FIELDS,
    NULL_CELLS_PER_BIN,
    add_summaries,
    binned_consistency_ece,
    calibration_from_sums,
    consistency_ece,
    equal_mass_from_cells,
    expected_calibration_error,
    fit_recalibration,
    fitted_temperature,
    grid_cells,
    grouped,
    labelled_probabilities,
    probability_metrics,
    summarise,
)
from audits.methods.scores import confidence as top_confidence

RECALIBRATIONS = ("temperature", "isotonic")
SIDES = ("reference", "current")


class CalibrationConfig(AuditConfig):
    bins: int = Field(15, ge=2, le=100)  # bins for the ECE, the MCE and the reliability diagrams
    null_resamples: int = Field(200, ge=20, le=5000)  # consistency resamples for the ECE noise floor
    null_quantile: float = Field(0.95, gt=0.5, lt=1)  # ece_excess = ECE - this quantile of the noise floor
    # held_out: the holdout (data.holdout) when there is one, else the reference (the training data, said so);
    # reference or current_split: those, whatever else there is
    recalibration_data: Literal["held_out", "reference", "current_split"] = "held_out"
    # Every figure is the one-frame answer up to this many labelled rows per side (the state keeps the rows); beyond,
    # the side is reduced to bins that add up over partitions (equal-mass ECE within a stated bound)
    exact_rows: int = Field(200_000, ge=0, le=50_000_000)
    # confidence cells on [0, 1] beyond exact_rows (equal-mass cuts, noise floor); rounded up to a multiple of bins
    histogram_bins: int = Field(16_384, ge=100, le=1_000_000)


# ---------------------------------------------------------------------------------------------
# Pure calibration maths


# ---------------------------------------------------------------------------------------------
# Sums that add up over partitions (a side beyond exact_rows)


# ---------------------------------------------------------------------------------------------
# Recalibration with scikit-learn's CalibratedClassifierCV, on probabilities already computed


# ---------------------------------------------------------------------------------------------


def _empty_side() -> State:
    """A side's state: its labelled rows (``raw``) while there are at most exact_rows of them, else their ``summary``."""
    return {"rows": 0, "dropped": 0, "raw": None, "summary": None}


def _merge_side(a: State, b: State, cfg: CalibrationConfig) -> State:
    rows = a["rows"] + b["rows"]
    out = {"rows": rows, "dropped": a["dropped"] + b["dropped"], "raw": None, "summary": None}
    held = [s for s in (a, b) if s["raw"] is not None or s["summary"] is not None]
    if not held:
        return out
    if all(s["summary"] is None for s in held):
        raws = [s["raw"] for s in held]
        raw = raws[0] if len(raws) == 1 else {key: np.concatenate([r[key] for r in raws]) for key in ("proba", "index")}
        if rows <= cfg.exact_rows:
            out["raw"] = raw
            return out
        held = [{"raw": raw, "summary": None}]
    cells = grid_cells(cfg.histogram_bins, cfg.bins)
    out["summary"] = reduce(add_summaries, [s["summary"] if s["summary"] is not None
                                            else summarise(s["raw"]["proba"], s["raw"]["index"], cfg.bins, cells)
                                            for s in held])
    return out


class CalibrationAudit(PartialAudit):
    """ECE (equal width and equal mass), MCE, class-wise ECE, Brier, log loss, reliability diagrams, recalibration.

    On every row: each side's figures, noise floor, bins and diagrams from its merged state; the recalibrations from the
    rows the context holds (see the module docstring).
    """

    name = "calibration"
    question = "certainty"
    metric_keys = (
        "{reference,current}.{accuracy,brier,classwise_ece,ece,ece_equal_mass,ece_equal_mass_bound,ece_excess,ece_null_quantile,log_loss,mce,mean_confidence,rows}",
        "recalibrated.{none,temperature,isotonic}.{brier,ece,log_loss}", "temperature",
    )
    mode = "partial"
    Config = CalibrationConfig
    requires = Requirements(labels="current", probabilities=True, tasks=("classification",), modalities=("tabular", "image", "text"))
    # ece_excess = ECE beyond the 95th percentile of a perfectly calibrated model's ECE on as many rows.
    # WARN at 2 points beyond the noise (stated probabilities measurably off); FAIL at 10 points
    # beyond it (a stated 80 % means 70 % or less: probabilities unfit for decisions as they are).
    default_thresholds = (
        Threshold(metric="current.ece_excess", max=0.02, severity="warn"),
        Threshold(metric="current.ece_excess", max=0.10, severity="fail"),
    )
    description = "Calibration of predicted probabilities, reliability diagrams and a suggested recalibration."

    def init(self, context: AuditContext, fitted: Any) -> State:
        return {side: _empty_side() for side in SIDES}

    def update(self, state: State, partition: Dataset, context: AuditContext, fitted: Any) -> State:
        if not partition.labelled or len(partition) == 0:
            return state
        proba, index, dropped = labelled_probabilities(partition, context.model.classes)
        part = {"rows": len(index), "dropped": dropped, "summary": None,
                "raw": {"proba": proba, "index": index.astype(np.int64)} if len(index) else None}
        return {**state, partition.name: _merge_side(state[partition.name], part, self.config)}

    def merge(self, a: State, b: State) -> State:
        return {side: _merge_side(a[side], b[side], self.config) for side in SIDES}

    def finalize(self, state: State, context: AuditContext, fitted: Any, population: dict[str, int]) -> AuditResult:
        cfg, classes = self.config, context.model.classes
        info: dict[str, str] = {
            "ece": "top-label ECE: confidence of the argmax class against its accuracy; bins are (lower, upper]",
            "classwise_ece": "binary: ECE of P(positive class); multiclass: mean over classes of the one-vs-rest ECE",
            "ece_excess": f"ECE minus the {cfg.null_quantile:g} quantile of the ECE of a perfectly calibrated model "
                          f"with the same confidences and rows ({cfg.null_resamples} consistency resamples)",
        }
        metrics: dict[str, float] = {}
        bin_tables, bands, classwise = [], {}, []
        binned = {}
        for name in SIDES:
            side = state[name]
            if side["dropped"]:
                info[f"{name}_dropped_rows"] = f"{side['dropped']} row(s) with a missing label or a class the model does not know"
            if side["rows"] == 0:
                continue
            rng = context.rng(f"calibration.null.{name}")
            if side["raw"] is not None:
                values, tables, null_ece, null_accuracy, rows = self._exact_side(side["raw"], name, context, population, rng)
            else:
                values, tables, null_ece, null_accuracy, rows = self._binned_side(side["summary"], side["rows"], classes, rng)
                binned[name] = values["ece_equal_mass_bound"]
            values["ece_null_quantile"] = float(np.quantile(null_ece, cfg.null_quantile))
            values["ece_excess"] = values["ece"] - values["ece_null_quantile"]
            metrics.update({f"{name}.{k}": v for k, v in values.items()})
            bin_tables += [table.assign(dataset=name, binning=binning) for binning, table in tables.items()]
            filled = ~np.isnan(null_accuracy[0])
            bands[name] = np.full((2, null_accuracy.shape[1]), np.nan)
            bands[name][:, filled] = np.quantile(null_accuracy[:, filled], [0.05, 0.95], axis=0)
            classwise += [{"dataset": name, "class": str(label), **row} for label, row in zip(classes, rows, strict=True)]
        if state["current"]["rows"] == 0:
            raise ValueError("no labelled current row has a label among the model's classes")
        info["every_row"] = (
            "ECE (both binnings), MCE, class-wise ECE, Brier, log loss, accuracy, the noise floor, the bins and the "
            "diagrams: from every row reduced, " + ", ".join(f"{state[s]['rows']:,} labelled {s} row(s)" for s in SIDES if state[s]["rows"])
        )
        if binned:
            info["binned"] = (
                f"beyond {cfg.exact_rows:,} labelled rows a side is reduced to sums over bins: exact but for the "
                f"equal-mass ECE, whose cuts sit on a {grid_cells(cfg.histogram_bins, cfg.bins):,}-cell confidence grid ("
                + ", ".join(f"{s} within ±{b:.2g}" for s, b in binned.items())
                + ", ece_equal_mass_bound), and the noise floor, drawn per run of grid cells (at most "
                f"{NULL_CELLS_PER_BIN} a bin) at its mean confidence, not per row"
            )

        data: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for ds in (context.reference, context.current):
            if ds.labelled:
                proba, index, _ = labelled_probabilities(ds, classes)
                if len(index):
                    data[ds.name] = (proba, index)
        recal_metrics, recal_table, recal_info = self._recalibrate(context, data)
        metrics.update(recal_metrics)
        info.update(recal_info)
        sampled = [s for s in SIDES if population.get(s, len(context.dataset(s))) > len(context.dataset(s))]
        if sampled:
            info["recalibration_rows"] = (
                "the recalibrations (recalibrated.*, temperature) are fits, which do not merge over partitions: fitted "
                "and evaluated on the sample the context holds (" + ", ".join(
                    f"{len(context.dataset(s)):,} of {population[s]:,} {s} rows" for s in SIDES if s in population)
                + "), not on every row"
            )

        artifacts = (
            Artifact.figure("reliability", _reliability_figure(bin_tables, bands, cfg.bins),
                            "Reliability diagrams (top label, equal-width bins) with bin counts"),
            Artifact.table("bins", pd.concat(bin_tables, ignore_index=True), "Per-bin confidence and accuracy"),
            Artifact.table("classwise", pd.DataFrame(classwise), "One-vs-rest calibration error per class"),
            Artifact.table("recalibration", recal_table, "ECE, Brier and log loss after each recalibration"),
        )
        return AuditResult(audit=self.name, metrics=metrics, artifacts=artifacts, info=info)

    def _exact_side(self, raw: State, name: str, context: AuditContext, population: dict[str, int],
                    rng: np.random.Generator) -> tuple[dict[str, float], dict[str, pd.DataFrame], np.ndarray, np.ndarray, list]:
        """Every figure of one side from its rows, as on one frame."""
        cfg = self.config
        proba, index = raw["proba"], raw["index"]
        values = probability_metrics(proba, index, cfg.bins)
        values["ece_equal_mass_bound"] = 0.0
        conf, correct = top_confidence(proba), proba.argmax(axis=1) == index
        null_ece, null_accuracy = consistency_ece(self._draw_order(conf, name, context, population), cfg.bins, "uniform",
                                                  rng, cfg.null_resamples)
        tables = {("equal width" if strategy == "uniform" else "equal mass"):
                  expected_calibration_error(conf, correct, cfg.bins, strategy)[2] for strategy in ("uniform", "quantile")}
        rows = []
        for c in range(proba.shape[1]):
            ece, mce, _ = expected_calibration_error(proba[:, c], index == c, cfg.bins, "uniform")
            rows.append({"ece": ece, "mce": mce, "mean_probability": float(proba[:, c].mean()),
                         "frequency": float((index == c).mean())})
        return values, tables, null_ece, null_accuracy, rows

    def _draw_order(self, conf: np.ndarray, name: str, context: AuditContext, population: dict[str, int]) -> np.ndarray:
        """The confidences in the order the noise floor's draws go to: the context's, when the context holds every row
        of the side (so the state's rows, in whatever order partitions merged, draw as the one frame does); otherwise
        sorted, which any merge order reaches. Rows of equal confidence are interchangeable in the draws."""
        ds = context.dataset(name)
        if population.get(name) == len(ds) and ds.labelled:
            proba, _, _ = labelled_probabilities(ds, context.model.classes)
            ordered = top_confidence(proba)
            if len(ordered) == len(conf) and np.array_equal(np.sort(ordered), np.sort(conf)):
                return ordered
        return np.sort(conf)

    def _binned_side(self, summary: State, n: int, classes: tuple, rng: np.random.Generator
                     ) -> tuple[dict[str, float], dict[str, pd.DataFrame], np.ndarray, np.ndarray, list]:
        """Every figure of one side from its summary: exact but for the equal-mass ECE (bounded) and the noise floor."""
        cfg, cells = self.config, summary["cells"]
        uniform = cells.reshape(cfg.bins, -1, len(CELL_FIELDS)).sum(axis=1)
        edges = np.arange(1, cfg.bins + 1) / cfg.bins
        ece, mce, uniform_table = calibration_from_sums(edges, np.rint(uniform[:, 0]).astype(np.int64), uniform[:, 1], uniform[:, 2])
        mass_edges, ends, bound = equal_mass_from_cells(cells, cfg.bins, summary["extent"])
        mass = grouped(cells, ends)
        ece_em, _, mass_table = calibration_from_sums(mass_edges, np.rint(mass[:, 0]).astype(np.int64), mass[:, 1], mass[:, 2])
        rows = []
        for c in range(len(classes)):
            counts, p_sum, y_sum = summary["classwise"][c].T
            class_ece, class_mce, _ = calibration_from_sums(edges, np.rint(counts).astype(np.int64), p_sum, y_sum)
            rows.append({"ece": class_ece, "mce": class_mce, "mean_probability": float(p_sum.sum() / n),
                         "frequency": float(y_sum.sum() / n)})
        k = len(classes)
        values = {
            "ece": ece,
            "ece_equal_mass": ece_em,
            "mce": mce,
            "classwise_ece": rows[1]["ece"] if k == 2 else float(np.mean([r["ece"] for r in rows])),
            "brier": summary["brier_sum"] / n,
            "log_loss": summary["log_loss_sum"] / n,
            "accuracy": float(cells[:, 2].sum() / n),
            "mean_confidence": float(cells[:, 1].sum() / n),
            "rows": float(n),
            "ece_equal_mass_bound": bound,
        }
        null_ece, null_accuracy = binned_consistency_ece(cells, cfg.bins, rng, cfg.null_resamples)
        return values, {"equal width": uniform_table, "equal mass": mass_table}, null_ece, null_accuracy, rows

    def _recalibrate(self, context: AuditContext, data: dict[str, tuple[np.ndarray, np.ndarray]]
                     ) -> tuple[dict[str, float], pd.DataFrame, dict[str, str]]:
        cfg = self.config
        source = cfg.recalibration_data
        info: dict[str, str] = {}
        if "current" not in data:  # every row has labelled current rows, but the sample the context holds has none
            nan = {f"recalibrated.{m}.{key}": float("nan") for m in ("none", *RECALIBRATIONS) for key in ("ece", "brier", "log_loss")}
            info["recalibration_data"] = "not fitted: the rows the context holds have no labelled current row"
            return {**nan, "temperature": float("nan")}, pd.DataFrame({"method": ["none", *RECALIBRATIONS]}), info
        if source == "held_out":
            holdout = context.holdout
            if holdout is not None and holdout.labelled and len(holdout):
                proba, index, _ = labelled_probabilities(holdout, context.model.classes)
                if len(index):
                    (fit_proba, fit_index), (eval_proba, eval_index) = (proba, index), data["current"]
                    info["recalibration_data"] = (f"fitted on the holdout ({len(index):,} labelled rows the model did not "
                                                  "train on), evaluated on all labelled current rows")
                    return self._fit_recalibrations(fit_proba, fit_index, eval_proba, eval_index, info)
            source = "reference"
        if source == "reference" and "reference" not in data:
            source = "current_split"
            info["recalibration_fallback"] = "the reference has no usable labels: fitted on half of the labelled current rows"
        cur_proba, cur_index = data["current"]
        if source == "reference":
            (fit_proba, fit_index), (eval_proba, eval_index) = data["reference"], data["current"]
            info["recalibration_data"] = (
                "fitted on the reference, evaluated on all labelled current rows. The reference is usually the "
                "training data, where a model looks better calibrated than on new data (an overfit model is "
                "overconfident only out of sample): the suggestion is then biased; give "
                "labelled rows the model did not train on as data.holdout, or set recalibration_data: current_split"
            )
        else:
            order = context.rng("calibration.recalibration_split").permutation(len(cur_index))
            half = len(order) // 2
            fit_rows, eval_rows = np.sort(order[:half]), np.sort(order[half:])
            fit_proba, fit_index = cur_proba[fit_rows], cur_index[fit_rows]
            eval_proba, eval_index = cur_proba[eval_rows], cur_index[eval_rows]
            info["recalibration_data"] = (
                f"fitted on a seeded half of the labelled current rows ({len(fit_rows)}), evaluated on the other "
                f"half ({len(eval_rows)}); recalibrated.none.* is the uncalibrated model on those same rows"
            )
        return self._fit_recalibrations(fit_proba, fit_index, eval_proba, eval_index, info)

    def _fit_recalibrations(self, fit_proba: np.ndarray, fit_index: np.ndarray, eval_proba: np.ndarray,
                            eval_index: np.ndarray, info: dict[str, str]) -> tuple[dict[str, float], pd.DataFrame, dict[str, str]]:
        cfg = self.config
        rows = {"none": probability_metrics(eval_proba, eval_index, cfg.bins)}
        temperature = float("nan")
        k = eval_proba.shape[1]
        missing = sorted(set(range(k)) - set(np.unique(fit_index).tolist()))
        for method in RECALIBRATIONS:
            try:
                if missing:
                    raise ValueError(f"class(es) {missing} absent from the fitting labels")
                calibrated = fit_recalibration(method, fit_proba, fit_index)
                rows[method] = probability_metrics(calibrated.predict_proba(eval_proba), eval_index, cfg.bins)
                if method == "temperature":
                    temperature = fitted_temperature(calibrated)
            except ValueError as exc:  # too few rows per class for scikit-learn's 5 folds, a class missing, ...
                rows[method] = {key: float("nan") for key in rows["none"]}
                info[f"recalibration_{method}"] = f"not fitted: {exc}"
        metrics = {f"recalibrated.{m}.{key}": values[key] for m, values in rows.items() for key in ("ece", "brier", "log_loss")}
        metrics["temperature"] = temperature
        finite = {m: v["ece"] for m, v in rows.items() if np.isfinite(v["ece"])}
        best = min(finite, key=lambda m: (finite[m], ("none", *RECALIBRATIONS).index(m)))
        info["suggested_recalibration"] = (
            "none: no recalibration lowers the ECE on the evaluation rows" if best == "none" else
            f"{best}: ECE {finite['none']:.4f} -> {finite[best]:.4f} on the evaluation rows"
            + (f" (T = {temperature:.3g}; T > 1 softens overconfident probabilities, T < 1 sharpens underconfident ones)"
               if best == "temperature" else "")
        )
        table = pd.DataFrame(rows).T.rename_axis("method").reset_index()
        return metrics, table, info


def _reliability_figure(bin_tables: list[pd.DataFrame], bands: dict[str, Any], bins: int) -> Figure:
    tables = [t for t in bin_tables if t["binning"].iat[0] == "equal width"]
    fig = Figure(figsize=(5 * len(tables), 6), layout="constrained")
    axes = fig.subplots(2, len(tables), squeeze=False, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    width = 1.0 / bins
    for j, table in enumerate(tables):
        name = table["dataset"].iat[0]
        top, bottom = axes[0, j], axes[1, j]
        centres = (table["lower"] + table["upper"]).to_numpy() / 2
        filled = table["count"].to_numpy() > 0
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
        top.bar(centres[filled], table["accuracy"].to_numpy()[filled], width=width * 0.9, alpha=0.6, label="accuracy")
        top.plot(table["mean_confidence"].to_numpy()[filled], table["accuracy"].to_numpy()[filled], "o-", color="C1",
                 label="accuracy at mean confidence")
        band = bands.get(name)
        if band is not None:
            conf = table["mean_confidence"].to_numpy()[filled]
            top.vlines(conf, band[0][filled], band[1][filled], color="black", alpha=0.5, label="90% band if calibrated")
        n = int(table["count"].sum())
        ece = float(np.dot(table["count"][filled] / n, np.abs(table["overconfidence"][filled])))
        top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{name} (n={n}, ECE={ece:.3f})")
        top.legend(loc="upper left", fontsize=7)
        bottom.bar(centres, table["count"].to_numpy(), width=width * 0.9, color="C0")
        bottom.set(xlabel="confidence of the predicted class", ylabel="rows")
    return fig
