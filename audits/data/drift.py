"""Data drift between the reference and the current data: per feature, jointly, and in the model's output.

Per feature, a test suited to the type, corrected for testing many features at once:

- numeric: the two-sample Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``, on non-missing values)
  for significance, and the Wasserstein distance (``scipy.stats.wasserstein_distance``) divided by the
  reference's standard deviation (ddof=1; or its interquartile range, ``scale: iqr``) as the effect
  size: "how far, in reference standard deviations, the distribution moved". A mean shift of d sd
  has a normalised Wasserstein distance of exactly d. A change in a numeric column's missing rate
  shows in its PSI (which has a missing bin) and in the table's missing shares, not in the KS decision.
- categorical (``context.categorical``; missing values are a category of their own, "(missing)";
  categories beyond the ``max_categories`` most frequent are pooled into "(other)"): the chi-squared
  test of homogeneity on the 2 x K contingency table (``scipy.stats.chi2_contingency``, with its
  default Yates correction when the table has one degree of freedom) for significance, and the
  Population Stability Index as the effect size.

PSI = sum over bins i of (c_i - r_i) * ln(c_i / r_i), where r_i and c_i are the reference's and the
current's shares of rows in bin i, each floored at ``psi_epsilon`` (so that an empty bin gives a
large but finite term). Bins: the categories for categoricals; for numerics (PSI reported beside the
Wasserstein effect) the reference deciles (``numpy.quantile``, linear interpolation, repeated edges
merged), right-closed, open-ended at both ends, plus a "(missing)" bin when either side has missing
values. The usual reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift. For a normal
feature, a mean shift of d sd has PSI of about d^2, so the default floors (normalised Wasserstein 0.1,
PSI 0.1) flag numeric shifts from 0.1 sd and categorical mixes from a "moderate" shift.

Why significance alone is not enough: with 20,000 rows a side every shift a model would never notice
is "significant" (KS detects a 0.05-sd mean shift at p < 0.05). A feature is therefore *drifted* only
when its corrected p-value is below ``alpha`` AND its effect size exceeds ``min_effect`` for its
type. The p-values of all features are corrected together: Benjamini-Hochberg
(``scipy.stats.false_discovery_control``, the default: controls the share of false alarms among the
flagged features), Bonferroni (controls the chance of any false alarm) or none.

Jointly, a domain classifier (``HistGradientBoostingClassifier`` with native categorical support) is
trained to tell reference rows from current rows on a balanced sample; its cross-validated ROC-AUC
(``StratifiedKFold(5, shuffle=True)``) is 0.5 when the two are indistinguishable, and also sees shifts
in the joint distribution that no single feature shows. Its permutation importance (drop in held-out
AUC, ``sklearn.inspection.permutation_importance`` on each held-out fold, averaged) says where the
drift is.

In the model's output: predicted labels (PSI and chi-squared) and the predicted score (P(positive
class) for binary classifiers, the top-class probability for multiclass; KS and normalised
Wasserstein; the score decides ``prediction.drifted`` when there is one, else the labels), or the
predictions of a regressor (KS, normalised Wasserstein, decile PSI). When both
datasets are labelled, the same for the labels (class balance, target distribution).

Rows are capped at ``max_rows`` a side by a seeded sample.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from audits.core import Artifact, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.context import Dataset
from audits.core.partial import PartialAudit, State
from audits.core.result import key_part
from audits.methods.metrics import _histogram_auc
from audits.methods.shift import (
    MISSING,
    OTHER,
    as_categories,
    binned_numeric_drift,
    category_counts,
    correct,
    counts_table,
    domain_classifier,
    domain_scores,
    fine_edges,
    kept_categories,
    merge_numeric,
    name_counts,
    numeric_drift,
    numeric_part,
    table_drift,
)

MIN_ROWS = 10  # per side; fewer and the audit is skipped
REFERENCE_COLOUR, CURRENT_COLOUR, DRIFT_COLOUR = "#9aa0a6", "#1f77b4", "#d62728"


class MinEffect(BaseModel):
    """Effect-size floors below which a significant difference is not called drift."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    numeric: float = Field(0.1, ge=0)  # Wasserstein distance / reference scale
    categorical: float = Field(0.1, ge=0)  # PSI


class DriftConfig(AuditConfig):
    alpha: float = Field(0.05, gt=0, lt=1)
    correction: Literal["bh", "bonferroni", "none"] = "bh"
    min_effect: MinEffect = MinEffect()
    scale: Literal["std", "iqr"] = "std"  # what the Wasserstein distance of a numeric feature is divided by
    psi_bins: int = Field(10, ge=2, le=100)  # quantile bins of the reference for a numeric PSI (10: deciles)
    psi_epsilon: float = Field(1e-4, gt=0, le=0.01)  # floor of a bin's share in the PSI
    max_categories: int = Field(50, ge=1, le=250)  # the rest of a categorical's values are pooled into "(other)"
    # rows per side up to which the values are kept and the tests are scipy's on them; beyond, every row is counted
    # into bins (numeric: ``bins`` reference-sample quantiles) and the tests read off the bins, with their error bounds
    max_rows: int = Field(20000, ge=MIN_ROWS)
    bins: int = Field(2000, ge=10, le=100_000)
    max_distinct: int = Field(10_000, ge=1, le=1_000_000)  # names a categorical column is counted by, exactly
    domain_bins: int = Field(4096, ge=16, le=1_000_000)  # bins of the domain classifier's score, beyond max_rows
    domain_classifier: bool = True
    domain_rows: int = Field(5000, ge=MIN_ROWS)  # rows per side for the domain classifier (balanced)
    domain_folds: int = Field(5, ge=2, le=10)
    importance_repeats: int = Field(3, ge=1, le=20)  # permutation repeats per held-out fold
    top: int = Field(6, ge=1, le=12)  # features in the distribution plots


# ---------------------------------------------------------------------------------------------- tests


# --------------------------------------------------------------------------------- domain classifier


# ------------------------------------------------------------------------------------ every row, in bins


# ---------------------------------------------------------------------------------------------- audit


def _sample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))


def _categorical_summary(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "no values"
    ranked = sorted(sorted(counts.items()), key=lambda item: -item[1])[:3]  # by share, ties by name
    return ", ".join(f"{name} {count / total:.0%}" for name, count in ranked)


def _numeric_summary(part: dict) -> str:
    if not part["n"]:
        return "no values"
    sd = np.sqrt(part["m2"] / (part["n"] - 1)) if part["n"] > 1 else 0.0
    return f"mean {part['mean']:.4g}, sd {sd:.4g}"


FEATURE, OUTPUT = "feature:", "output:"  # state keys: a feature's name, or what of the model's output


class DriftAudit(PartialAudit):
    """Per-feature drift tests (KS / chi-squared, BH-corrected, with effect-size floors), a domain
    classifier, and drift in the model's predictions and in the labels.

    Hybrid: bins, categories and the domain classifier are fitted on the sample; every row of both sides is counted
    into them (and scored by the domain classifier). Up to ``max_rows`` rows a side the values themselves are kept and
    the tests are scipy's on them, as on one frame."""

    name = "drift"
    question = "data"
    typical_cost_s = 6.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "drifted_features", "drifted_share", "domain_auc", "domain_auc_bound", "effect_bound_max", "ks_bound_max",
        "feature.*.{drifted,effect,pvalue_corrected}", "*.{chi2_pvalue,ks_pvalue,ks_statistic,psi,wasserstein}",
        "{prediction,label}.drifted", "rows.{reference,current}",
    )
    mode = "hybrid"
    requires = Requirements(modalities=("tabular", "image"))
    Config = DriftConfig
    description = "Which features, and how much of the joint distribution and the model's output, moved from reference to current."
    # Warn on any drifted feature: each is a significant AND material shift (see the module docstring).
    # Domain AUC: for one normal feature whose mean moves by d sd the AUC is Phi(d / sqrt 2), so 0.6 is a
    # 0.36-sd shift (PSI about 0.13, a "moderate" shift) and 0.8 a 1.2-sd shift, where most current rows
    # are told apart from the reference and its validation results no longer describe the population
    # scored. Chance alone stays below: with no drift the AUC's standard deviation is ~0.006 at 5,000 rows
    # a side, and ~0.04 at 150 (measured: 0.6 is then 2.6 sd, about one false warning in 200 runs).
    default_thresholds = (
        Threshold(metric="drifted_features", max=0, severity="warn"),
        Threshold(metric="domain_auc", max=0.6, severity="warn"),
        Threshold(metric="domain_auc", max=0.8, severity="fail"),
    )

    @classmethod
    def thresholds_for(cls, config: DriftConfig) -> tuple[Threshold, ...]:
        if config.domain_classifier:
            return cls.default_thresholds
        return tuple(t for t in cls.default_thresholds if not t.metric.startswith("domain_"))

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        small = [f"{ds.name} has {len(ds)}" for ds in (context.reference, context.current) if len(ds) < MIN_ROWS]
        if small:
            return f"drift tests need at least {MIN_ROWS} rows a side; " + ", ".join(small)
        return None

    # ------------------------------------------------------------------------------------------ columns

    @staticmethod
    def _columns(ds: Dataset, context: AuditContext) -> list[tuple[str, bool, Any]]:
        """(state key, categorical?, values) of every column compared: the features, then the model's output and labels."""
        out: list[tuple[str, bool, Any]] = [(FEATURE + str(f), f in context.categorical, ds.X[f]) for f in context.features]
        if context.task == "classification":
            out.append((OUTPUT + "predicted label", True, ds.predictions.labels))
            if context.reference.predictions.proba is not None and context.current.predictions.proba is not None:
                name, score = _score(context)
                out.append((OUTPUT + name, False, score(ds.predictions.proba)))
        else:
            out.append((OUTPUT + "prediction", False, np.asarray(ds.predictions.labels, dtype=float)))
        if context.reference.labelled and context.current.labelled and ds.y is not None:
            if context.task == "classification":
                out.append((OUTPUT + "label", True, ds.y.to_numpy()))
            else:
                out.append((OUTPUT + "label", False, ds.y.to_numpy(dtype=float)))
        return out

    # ------------------------------------------------------------------------------------------ reducer

    def fit(self, context: AuditContext) -> dict:
        """On the sample: the bins of each numeric column (reference quantiles), the categories kept when a column has
        too many to count exactly, and the domain classifier (cross-validated, as on one frame)."""
        cfg: DriftConfig = self.config
        ref_rows = _sample(len(context.reference), cfg.max_rows, context.rng("drift.sample.reference"))
        cur_rows = _sample(len(context.current), cfg.max_rows, context.rng("drift.sample.current"))
        edges, kept = {}, {}
        ref_columns = self._columns(context.reference, context)
        cur_values = {key: values for key, _, values in self._columns(context.current, context)}
        for key, categorical, values in ref_columns:
            if categorical:
                names = pd.concat([as_categories(values), as_categories(cur_values[key])], ignore_index=True)
                chosen = kept_categories(names, cfg.max_categories)
                kept[key] = chosen if OTHER in chosen else [*chosen, OTHER]
            else:
                x = np.asarray(values, dtype=float)
                present = x[~np.isnan(x)]
                if len(present):
                    edges[key] = fine_edges(present, cfg.bins, cfg.psi_bins)
                else:
                    edges[key] = (np.zeros(0), np.zeros(1, dtype=np.int64))
        domain = None
        if cfg.domain_classifier:
            X_ref = context.reference.X.iloc[ref_rows][list(context.features)]
            X_cur = context.current.X.iloc[cur_rows][list(context.features)]
            n = min(cfg.domain_rows, len(X_ref), len(X_cur))
            rng = context.rng("drift.domain.rows")
            A = X_ref.iloc[_sample(len(X_ref), n, rng)]
            B = X_cur.iloc[_sample(len(X_cur), n, rng)]
            domain = domain_classifier(A, B, context.categorical, context.random_state("drift.domain.model"),
                                       cfg.domain_folds, cfg.importance_repeats, cfg.max_categories)
            domain["rows_per_side"] = n
        return {"rows": (ref_rows, cur_rows), "edges": edges, "kept": kept, "domain": domain}

    def init(self, context: AuditContext, fitted: dict) -> State:
        sides = ("reference", "current")
        return {"rows": dict.fromkeys(sides, 0), "numeric": {s: {} for s in sides}, "categorical": {s: {} for s in sides},
                "raw": {s: {} for s in sides}, "domain": {s: None for s in sides}, "kept": dict(fitted["kept"])}

    def update(self, state: State, partition: Dataset, context: AuditContext, fitted: dict) -> State:
        cfg: DriftConfig = self.config
        side = partition.name
        if len(partition) == 0:
            return state
        rows = state["rows"][side] + len(partition)
        raw = state["raw"][side] if state["raw"][side] is not None and rows <= cfg.max_rows else None
        raw = dict(raw) if raw is not None else None
        numeric, categorical = dict(state["numeric"][side]), dict(state["categorical"][side])
        for key, is_categorical, values in self._columns(partition, context):
            if is_categorical:
                part = {"counts": name_counts(values), "lumped": False}
                categorical[key] = self._merge_categories(categorical.get(key), part, state["kept"][key])
            else:
                x = pd.Series(values).to_numpy(dtype=float, na_value=np.nan) if isinstance(values, pd.Series) else np.asarray(values, dtype=float)
                numeric[key] = merge_numeric(numeric.get(key), numeric_part(x, fitted["edges"][key][0]))
                if raw is not None:
                    raw[key] = np.concatenate([raw[key], x]) if key in raw else x
        domain = state["domain"][side]
        if fitted["domain"] is not None:
            scores = domain_scores(fitted["domain"], partition.X, context.categorical)
            cells = np.clip((scores * cfg.domain_bins).astype(np.int64), 0, cfg.domain_bins - 1)
            counted = np.bincount(cells, minlength=cfg.domain_bins).astype(np.int64)
            domain = counted if domain is None else domain + counted
        return {**state, "rows": {**state["rows"], side: rows}, "numeric": {**state["numeric"], side: numeric},
                "categorical": {**state["categorical"], side: categorical}, "raw": {**state["raw"], side: raw},
                "domain": {**state["domain"], side: domain}}

    def _merge_categories(self, a: dict | None, b: dict | None, kept: list[str]) -> dict | None:
        """Exact counts of every name, until a column has more than max_distinct names: then the sample's kept
        categories and "(other)"."""
        if a is None or b is None:
            out = b if a is None else a
        else:
            counts = dict(a["counts"])
            for name, count in b["counts"].items():
                counts[name] = counts.get(name, 0) + count
            out = {"counts": counts, "lumped": a["lumped"] or b["lumped"]}
        if out is not None and (out["lumped"] or len(out["counts"]) > self.config.max_distinct):
            out = self._lumped(out, kept)
        return out

    def merge(self, a: State, b: State) -> State:
        cfg: DriftConfig = self.config
        out = self.init(None, {"kept": a["kept"] or b["kept"]})  # type: ignore[arg-type]
        for side in ("reference", "current"):
            rows = a["rows"][side] + b["rows"][side]
            out["rows"][side] = rows
            for key in {**a["numeric"][side], **b["numeric"][side]}:
                out["numeric"][side][key] = merge_numeric(a["numeric"][side].get(key), b["numeric"][side].get(key))
            for key in {**a["categorical"][side], **b["categorical"][side]}:
                out["categorical"][side][key] = self._merge_categories(
                    a["categorical"][side].get(key), b["categorical"][side].get(key), out["kept"][key])
            raws = (a["raw"][side], b["raw"][side])
            if raws[0] is None or raws[1] is None or rows > cfg.max_rows:
                out["raw"][side] = None
            else:
                out["raw"][side] = {key: np.concatenate([r[key] for r in raws if key in r]) for key in {**raws[0], **raws[1]}}
            domains = [d for d in (a["domain"][side], b["domain"][side]) if d is not None]
            out["domain"][side] = sum(domains[1:], domains[0]) if domains else None
        return out

    # ------------------------------------------------------------------------------------------ result

    @staticmethod
    def _lumped(part: dict | None, kept: list[str]) -> dict:
        """The counts of ``kept``'s names, every other name's under "(other)"."""
        part = part or {"counts": {}, "lumped": False}
        counts: dict[str, int] = {}
        for name, count in part["counts"].items():
            name = name if name in kept else OTHER
            counts[name] = counts.get(name, 0) + count
        return {"counts": counts, "lumped": True}

    def _compare(self, key: str, is_categorical: bool, state: State, fitted: dict, exact: bool) -> dict[str, Any]:
        """One column's test, effect and PSI, with its missing shares and summaries, from the merged state."""
        cfg: DriftConfig = self.config
        if is_categorical:
            ref, cur = (state["categorical"][s].get(key) or {"counts": {}, "lumped": False} for s in ("reference", "current"))
            kept = None
            if ref["lumped"] or cur["lumped"]:
                kept = state["kept"][key]
                ref, cur = self._lumped(ref, kept), self._lumped(cur, kept)
            result = table_drift(counts_table(ref["counts"], cur["counts"], cfg.max_categories, kept), cfg.psi_epsilon)
            result.update(ks_bound=0.0, effect_bound=0.0)
            shares = [part["counts"].get(MISSING, 0) / max(1, sum(part["counts"].values())) for part in (ref, cur)]
            summaries = [_categorical_summary(part["counts"]) for part in (ref, cur)]
        else:
            empty = numeric_part(np.zeros(0), fitted["edges"][key][0])
            ref, cur = (state["numeric"][s].get(key) or empty for s in ("reference", "current"))
            if exact:
                values = [state["raw"][s].get(key, np.zeros(0)) for s in ("reference", "current")]
                result = {**numeric_drift(*values, cfg.scale, cfg.psi_bins, cfg.psi_epsilon), "ks_bound": 0.0, "effect_bound": 0.0}
            else:
                result = binned_numeric_drift(ref, cur, *fitted["edges"][key], cfg.scale, cfg.psi_epsilon)
            shares = [part["missing"] / max(1, part["missing"] + part["n"]) for part in (ref, cur)]
            summaries = [_numeric_summary(part) for part in (ref, cur)]
        return {**result, "missing": shares, "summaries": summaries}

    def finalize(self, state: State, context: AuditContext, fitted: dict, population: dict[str, int]) -> AuditResult:
        cfg: DriftConfig = self.config
        exact = state["raw"]["reference"] is not None and state["raw"]["current"] is not None
        columns = {key: is_categorical for key, is_categorical, _ in self._columns(context.reference, context)}
        compared = {key: self._compare(key, is_categorical, state, fitted, exact) for key, is_categorical in columns.items()}

        rows = []
        for feature in context.features:
            is_cat = feature in context.categorical
            result = compared[FEATURE + str(feature)]
            rows.append({
                "feature": str(feature),
                "type": "categorical" if is_cat else "numeric",
                "test": "chi-squared" if is_cat else "kolmogorov-smirnov",
                "statistic": result["statistic"],
                "pvalue": result["pvalue"],
                "effect_measure": "psi" if is_cat else f"wasserstein / reference {cfg.scale}",
                "effect": result["effect"],
                "psi": result["psi"],
                "min_effect": cfg.min_effect.categorical if is_cat else cfg.min_effect.numeric,
                "missing_reference": result["missing"][0],
                "missing_current": result["missing"][1],
                "reference_summary": result["summaries"][0],
                "current_summary": result["summaries"][1],
                "ks_bound": result["ks_bound"],
                "effect_bound": result["effect_bound"],
            })
        table = pd.DataFrame(rows)
        table.insert(5, "pvalue_corrected", correct(table["pvalue"].to_numpy(), cfg.correction))
        table.insert(6, "drifted", (table["pvalue_corrected"] < cfg.alpha) & (table["effect"] > table["min_effect"]))

        ref_rows, cur_rows = fitted["rows"]
        metrics: dict[str, float] = {
            "drifted_features": float(table["drifted"].sum()),
            "drifted_share": float(table["drifted"].mean()),
            "rows.reference": float(state["rows"]["reference"]),
            "rows.current": float(state["rows"]["current"]),
            "ks_bound_max": float(np.nanmax(table["ks_bound"], initial=0.0)),
            "effect_bound_max": float(np.nanmax(table["effect_bound"], initial=0.0)),
        }
        info = {
            "tests": "numeric: KS + Wasserstein / reference " + cfg.scale + "; categorical: chi-squared + PSI",
            "rule": f"drifted when {cfg.correction}-corrected p < {cfg.alpha:g} and effect > "
                    f"{cfg.min_effect.numeric:g} (numeric) / {cfg.min_effect.categorical:g} (categorical PSI)",
            "drifted": ", ".join(table.loc[table["drifted"], "feature"]) or "none",
        }
        if not exact:
            info["every_row"] = (
                f"every row counted: numeric columns in {cfg.bins} bins at the reference sample's quantiles (KS and "
                f"Wasserstein from the bins, within ks_bound / effect_bound, largest {metrics['ks_bound_max']:.2g} / "
                f"{metrics['effect_bound_max']:.2g}; PSI exact on the sample's {cfg.psi_bins}-quantile bins), categories "
                f"counted exactly (up to {cfg.max_distinct:,} distinct names a column; beyond, the sample's "
                f"{cfg.max_categories} most frequent and \"(other)\"); the figures show the sample")
        artifacts: list[Artifact] = []

        domain = fitted["domain"]
        if domain is not None:
            table["domain_importance"] = domain["importance"]
            auc, bound = domain["auc"], 0.0
            record = {"auc": domain["auc"], "fold_auc": domain["fold_auc"], "rows_per_side": domain["rows_per_side"]}
            if not exact and state["domain"]["reference"] is not None and state["domain"]["current"] is not None:
                auc, ties = _histogram_auc(state["domain"]["current"], state["domain"]["reference"])
                # the rows the classifier trained on are among those scored: each pair with one of them may be
                # misjudged, a share of at most trained / rows per side
                trained = sum(domain["trained"][s] / max(1, state["rows"][s]) for s in ("reference", "current"))
                bound = ties + trained
                record.update(every_row_auc=auc, every_row_auc_bound=bound)
                info["domain_auc"] = (f"a classifier trained on {domain['rows_per_side']:,} sampled rows a side, scoring "
                                      f"every row (AUC within {bound:.2g}: score bins and its own training rows); its "
                                      f"cross-validated AUC on the sample is {domain['auc']:.3f}")
            metrics["domain_auc"] = auc
            metrics["domain_auc_bound"] = bound
            ranked = table.sort_values("domain_importance", ascending=False, kind="stable").head(5)
            info["domain_top_features"] = ", ".join(f"{r.feature} ({r.domain_importance:.3f})" for r in ranked.itertuples())
            artifacts.append(Artifact.json("domain_classifier", {
                **record,
                "importance": {f: float(v) for f, v in zip(table["feature"], domain["importance"], strict=True)},
                "importance_std": {f: float(v) for f, v in zip(table["feature"], domain["importance_std"], strict=True)},
            }, "Domain classifier: cross-validated AUC and permutation importance (drop in AUC)"))

        for row in table.itertuples():
            key = key_part(row.feature)
            metrics[f"feature.{key}.pvalue_corrected"] = float(row.pvalue_corrected)
            metrics[f"feature.{key}.effect"] = float(row.effect)
            metrics[f"feature.{key}.drifted"] = float(row.drifted)

        outputs, output_metrics, output_info = self._outputs(context, compared, cfg)
        metrics.update(output_metrics)
        info.update(output_info)

        X_ref = context.reference.X.iloc[ref_rows][list(context.features)]
        X_cur = context.current.X.iloc[cur_rows][list(context.features)]
        artifacts = [
            Artifact.table("features", table, "Per-feature drift: tests, corrected p-values, effect sizes"),
            Artifact.table("outputs", outputs, "Drift in the model's predictions and in the labels"),
            *artifacts,
            _effect_figure(table, cfg),
            _distribution_figure(table, X_ref, X_cur, context.categorical, cfg),
            _prediction_figure(context, ref_rows, cur_rows),
        ]
        return AuditResult(audit=self.name, metrics=metrics, artifacts=tuple(artifacts), info=info)

    @staticmethod
    def _outputs(context: AuditContext, compared: dict[str, dict], cfg: DriftConfig
                 ) -> tuple[pd.DataFrame, dict[str, float], dict[str, str]]:
        """Drift of the predictions (and of the labels when both sides are labelled)."""
        rows: list[dict] = []
        metrics: dict[str, float] = {}
        info: dict[str, str] = {}

        def get(target: str, test: str) -> dict[str, Any]:
            result = compared[OUTPUT + target]
            rows.append({"target": target, "test": test, **{k: result[k] for k in ("statistic", "pvalue", "effect", "psi",
                                                                                 "ks_bound", "effect_bound")}})
            return result

        if context.task == "classification":
            predicted = get("predicted label", "chi-squared")
            metrics.update({"prediction.psi": predicted["psi"], "prediction.chi2_pvalue": predicted["pvalue"]})
            drifted = predicted["pvalue"] < cfg.alpha and predicted["effect"] > cfg.min_effect.categorical
            if context.reference.predictions.proba is not None and context.current.predictions.proba is not None:
                name, _ = _score(context)
                info["prediction_score"] = name
                result = get(name, "kolmogorov-smirnov")
                # the score is the richer signal: it decides when there is one
                drifted = result["pvalue"] < cfg.alpha and result["effect"] > cfg.min_effect.numeric
                metrics.update({"prediction.ks_pvalue": result["pvalue"], "prediction.ks_statistic": result["statistic"],
                                "prediction.wasserstein": result["effect"]})
        else:
            result = get("prediction", "kolmogorov-smirnov")
            drifted = result["pvalue"] < cfg.alpha and result["effect"] > cfg.min_effect.numeric
            metrics.update({"prediction.ks_pvalue": result["pvalue"], "prediction.ks_statistic": result["statistic"],
                            "prediction.wasserstein": result["effect"], "prediction.psi": result["psi"]})
        metrics["prediction.drifted"] = float(drifted)

        ref, cur = context.reference, context.current
        if ref.labelled and cur.labelled:
            if context.task == "classification":
                result = get("label", "chi-squared")
                metrics.update({"label.psi": result["psi"], "label.chi2_pvalue": result["pvalue"]})
            else:
                result = get("label", "kolmogorov-smirnov")
                metrics.update({"label.ks_pvalue": result["pvalue"], "label.wasserstein": result["effect"],
                                "label.psi": result["psi"]})
        else:
            info["labels"] = "label drift needs labels on both sides; " + ", ".join(
                f"{ds.name}: {'labelled' if ds.labelled else 'unlabelled'}" for ds in (ref, cur))
        table = pd.DataFrame(rows, columns=["target", "test", "statistic", "pvalue", "effect", "psi", "ks_bound", "effect_bound"])
        table["effect_measure"] = np.where(table["test"] == "chi-squared", "psi", f"wasserstein / reference {cfg.scale}")
        return table, metrics, info


def _score(context: AuditContext):
    """The predicted score compared across datasets: P(positive class) when binary, else the top probability."""
    classes = context.model.classes
    if len(classes) == 2:
        return f"P({classes[1]})", lambda proba: proba[:, 1]
    return "max probability", lambda proba: proba.max(axis=1)


# -------------------------------------------------------------------------------------------- figures


def _effect_figure(table: pd.DataFrame, cfg: DriftConfig) -> Artifact:
    panels = [(kind, table[table["type"] == kind]) for kind in ("numeric", "categorical") if (table["type"] == kind).any()]
    heights = [min(len(part), 30) for _, part in panels]
    fig = Figure(figsize=(8, 0.32 * sum(heights) + 1.4 * len(panels) + 0.4), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, height_ratios=[h + 2 for h in heights])[:, 0]
    for ax, (kind, part) in zip(axes, panels, strict=True):
        shown = part.sort_values("effect", ascending=True, kind="stable", na_position="first").tail(30)
        positions = np.arange(len(shown))
        colours = [DRIFT_COLOUR if d else REFERENCE_COLOUR for d in shown["drifted"]]
        ax.barh(positions, shown["effect"].fillna(0), color=colours)
        ax.set_yticks(positions, shown["feature"])
        floor = cfg.min_effect.numeric if kind == "numeric" else cfg.min_effect.categorical
        ax.axvline(floor, color="black", linestyle="--", linewidth=1, label=f"min_effect {floor:g}")
        ax.set_xlabel(f"wasserstein distance / reference {cfg.scale}" if kind == "numeric" else "PSI")
        ax.set_title(f"{kind} features (red: drifted)")
        ax.legend(loc="best")
    return Artifact.figure("effect_sizes", fig, "Effect size per feature; drifted features in red")


def _distribution_figure(table: pd.DataFrame, X_ref: pd.DataFrame, X_cur: pd.DataFrame,
                         categorical: tuple[str, ...], cfg: DriftConfig) -> Artifact:
    """Drifted features first, then the largest effects relative to their floors, up to ``cfg.top``."""
    order = table.assign(ratio=table["effect"] / table["min_effect"].replace(0, np.nan))
    order = order.sort_values(["drifted", "ratio"], ascending=[False, False], kind="stable", na_position="last")
    shown = order.head(cfg.top)
    columns = min(3, len(shown))
    lines = -(-len(shown) // columns)
    fig = Figure(figsize=(4.2 * columns, 3.2 * lines), layout="constrained")
    axes = fig.subplots(lines, columns, squeeze=False).ravel()
    for ax, row in zip(axes, shown.itertuples(), strict=False):
        if row.feature in categorical:
            counts = category_counts(X_ref[row.feature], X_cur[row.feature], cfg.max_categories)
            shares = counts / counts.sum()
            shares = shares.loc[shares.max(axis=1).sort_values(ascending=False, kind="stable").index[:10]]
            positions = np.arange(len(shares))
            ax.bar(positions - 0.2, shares["reference"], width=0.4, color=REFERENCE_COLOUR, label="reference")
            ax.bar(positions + 0.2, shares["current"], width=0.4, color=CURRENT_COLOUR, label="current")
            ax.set_xticks(positions, shares.index, rotation=30, ha="right")
            ax.set_ylabel("share of rows")
        else:
            _histograms(ax, X_ref[row.feature].to_numpy(dtype=float, na_value=np.nan),
                        X_cur[row.feature].to_numpy(dtype=float, na_value=np.nan))
        ax.set_title(f"{row.feature}{' (drifted)' if row.drifted else ''}\n{row.effect_measure} = {row.effect:.3g}",
                     fontsize=9)
        _legend(ax, fontsize=7)
    for ax in axes[len(shown):]:
        ax.set_axis_off()
    return Artifact.figure("distributions", fig, "Reference and current distributions of the most drifted features")


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:  # nothing drawn (no values): no legend
        ax.legend(**kwargs)


def _histograms(ax, reference: np.ndarray, current: np.ndarray, label: str = "") -> None:
    r, c = reference[~np.isnan(reference)], current[~np.isnan(current)]
    pooled = np.concatenate([r, c])
    if len(pooled) == 0:
        ax.text(0.5, 0.5, "no values", ha="center", transform=ax.transAxes)
        return
    low, high = np.quantile(pooled, [0.005, 0.995])
    edges = np.histogram_bin_edges(pooled, bins=30, range=(low, high) if high > low else None)
    for values, colour, name in ((r, REFERENCE_COLOUR, "reference"), (c, CURRENT_COLOUR, "current")):
        if len(values):
            ax.hist(values, bins=edges, density=True, histtype="stepfilled" if name == "reference" else "step",
                    color=colour, alpha=0.6 if name == "reference" else 1.0, linewidth=1.5, label=name)
    ax.set_xlabel(label)
    ax.set_ylabel("density")


def _prediction_figure(context: AuditContext, ref_rows: np.ndarray, cur_rows: np.ndarray) -> Artifact:
    ref, cur = context.reference.predictions, context.current.predictions
    if context.task == "regression":
        fig = Figure(figsize=(6, 3.8), layout="constrained")
        ax = fig.add_subplot()
        _histograms(ax, ref.labels[ref_rows].astype(float), cur.labels[cur_rows].astype(float), "prediction")
        _legend(ax)
        ax.set_title("Predictions: reference against current")
        return Artifact.figure("predictions", fig, "Distribution of the predictions, reference against current")
    panels = 2 if ref.proba is not None and cur.proba is not None else 1
    fig = Figure(figsize=(5 * panels, 3.8), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    counts = category_counts(ref.labels[ref_rows], cur.labels[cur_rows], len(context.model.classes) + 10)
    shares = counts / counts.sum()
    positions = np.arange(len(shares))
    axes[0].bar(positions - 0.2, shares["reference"], width=0.4, color=REFERENCE_COLOUR, label="reference")
    axes[0].bar(positions + 0.2, shares["current"], width=0.4, color=CURRENT_COLOUR, label="current")
    axes[0].set_xticks(positions, shares.index, rotation=30, ha="right")
    axes[0].set_ylabel("share of rows")
    axes[0].set_title("Predicted labels")
    axes[0].legend()
    if panels == 2:
        name, score = _score(context)
        _histograms(axes[1], score(ref.proba[ref_rows]), score(cur.proba[cur_rows]), name)
        axes[1].set_title(f"Predicted {name}")
        _legend(axes[1])
    return Artifact.figure("predictions", fig, "Distribution of the predictions, reference against current")
