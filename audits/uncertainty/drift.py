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

from typing import Literal

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.result import key_part

MISSING = "(missing)"
OTHER = "(other)"
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
    max_rows: int = Field(20000, ge=MIN_ROWS)  # rows per side, sampled with the seed
    domain_classifier: bool = True
    domain_rows: int = Field(5000, ge=MIN_ROWS)  # rows per side for the domain classifier (balanced)
    domain_folds: int = Field(5, ge=2, le=10)
    importance_repeats: int = Field(3, ge=1, le=20)  # permutation repeats per held-out fold
    top: int = Field(6, ge=1, le=12)  # features in the distribution plots


# ---------------------------------------------------------------------------------------------- tests


def psi(reference_counts: np.ndarray, current_counts: np.ndarray, epsilon: float = 1e-4) -> float:
    """Population Stability Index of two aligned count vectors (shares floored at ``epsilon``)."""
    r = np.maximum(np.asarray(reference_counts, dtype=float) / np.sum(reference_counts), epsilon)
    c = np.maximum(np.asarray(current_counts, dtype=float) / np.sum(current_counts), epsilon)
    return float(np.sum((c - r) * np.log(c / r)))


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (deciles for 10 bins), repeated edges merged."""
    return np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))


def binned_counts(values: np.ndarray, edges: np.ndarray, with_missing: bool) -> np.ndarray:
    """Counts in the right-closed bins (-inf, e0], (e0, e1], ..., (e_last, inf), then missing when asked."""
    values = np.asarray(values, dtype=float)
    present = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)
    return np.append(counts, np.isnan(values).sum()) if with_missing else counts


def numeric_psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, epsilon: float = 1e-4) -> float:
    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    present = reference[~np.isnan(reference)]
    if len(present) == 0:
        return float("nan")
    edges = quantile_edges(present, bins)
    with_missing = bool(np.isnan(reference).any() or np.isnan(current).any())
    return psi(binned_counts(reference, edges, with_missing), binned_counts(current, edges, with_missing), epsilon)


def reference_scale(reference: np.ndarray, current: np.ndarray, scale: str = "std") -> float:
    """The reference's sd (ddof=1) or IQR; the pooled one if the reference is constant; 1 if both are."""
    def spread(x: np.ndarray) -> float:
        if len(x) < 2:
            return 0.0
        if scale == "iqr":
            q1, q3 = np.quantile(x, [0.25, 0.75])
            return float(q3 - q1)
        return float(np.std(x, ddof=1))

    return spread(reference) or spread(np.concatenate([reference, current])) or 1.0


def numeric_drift(reference: np.ndarray, current: np.ndarray, scale: str = "std", bins: int = 10,
                  epsilon: float = 1e-4) -> dict[str, float]:
    """KS statistic and p-value, normalised Wasserstein effect and decile PSI of two numeric samples."""
    from scipy.stats import ks_2samp, wasserstein_distance

    reference, current = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    r, c = reference[~np.isnan(reference)], current[~np.isnan(current)]
    out = {"psi": numeric_psi(reference, current, bins, epsilon)}
    if len(r) == 0 or len(c) == 0:  # nothing to compare: not testable
        return {**out, "statistic": float("nan"), "pvalue": float("nan"), "effect": float("nan")}
    ks = ks_2samp(r, c)
    return {
        **out,
        "statistic": float(ks.statistic),
        "pvalue": float(ks.pvalue),
        "effect": float(wasserstein_distance(r, c) / reference_scale(r, c, scale)),
    }


def as_categories(values: pd.Series | np.ndarray) -> pd.Series:
    """Values as category names: strings, numbers written without a trailing '.0', missing as "(missing)"."""
    series = pd.Series(values).reset_index(drop=True)
    missing = series.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        names = [np.format_float_positional(float(v), trim="-") if not m else MISSING
                 for v, m in zip(series.to_numpy(dtype=float, na_value=np.nan), missing, strict=True)]
    else:
        names = [MISSING if m else str(v) for v, m in zip(series.to_numpy(dtype=object), missing, strict=True)]
    return pd.Series(names, dtype=object)


def category_counts(reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray,
                    max_categories: int = 50) -> pd.DataFrame:
    """Contingency table (categories x [reference, current]), categories sorted by name; values beyond the
    ``max_categories`` most frequent (pooled; ties by name) counted under "(other)", listed last."""
    r, c = as_categories(reference), as_categories(current)
    index = kept_categories(pd.concat([r, c]), max_categories)
    table = pd.DataFrame({"reference": lump(r, index).value_counts(), "current": lump(c, index).value_counts()})
    return table.reindex(index).fillna(0).astype(int)


def kept_categories(names: pd.Series, max_categories: int) -> list[str]:
    """The ``max_categories`` most frequent names (ties by name), sorted, then "(other)" if any were left out."""
    ranked = sorted(names.value_counts().items(), key=lambda item: (-item[1], item[0]))
    return sorted(name for name, _ in ranked[:max_categories]) + ([OTHER] if len(ranked) > max_categories else [])


def lump(names: pd.Series, kept: list[str]) -> pd.Series:
    return names.where(names.isin(kept), OTHER)


def categorical_drift(reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray, max_categories: int = 50,
                      epsilon: float = 1e-4) -> dict[str, float]:
    """Chi-squared test of homogeneity and PSI over the categories (missing included)."""
    from scipy.stats import chi2_contingency

    table = category_counts(reference, current, max_categories)
    effect = psi(table["reference"].to_numpy(), table["current"].to_numpy(), epsilon)
    if len(table) < 2:  # one category on both sides: identical by construction
        return {"statistic": 0.0, "pvalue": 1.0, "effect": effect, "psi": effect}
    test = chi2_contingency(table.to_numpy().T)
    return {"statistic": float(test.statistic), "pvalue": float(test.pvalue), "effect": effect, "psi": effect}


def correct(pvalues: np.ndarray, method: str = "bh") -> np.ndarray:
    """Multiple-testing correction of the finite p-values (NaN stays NaN)."""
    from scipy.stats import false_discovery_control

    pvalues = np.asarray(pvalues, dtype=float)
    out = np.full(len(pvalues), np.nan)
    finite = np.isfinite(pvalues)
    if not finite.any():
        return out
    if method == "bh":
        out[finite] = false_discovery_control(pvalues[finite], method="bh")
    elif method == "bonferroni":
        out[finite] = np.minimum(pvalues[finite] * finite.sum(), 1.0)
    else:
        out[finite] = pvalues[finite]
    return out


# --------------------------------------------------------------------------------- domain classifier


def domain_matrix(frames: list[pd.DataFrame], categorical: tuple[str, ...], max_categories: int) -> np.ndarray:
    """Numeric columns as floats (NaN kept), categorical columns as codes of their pooled categories."""
    pooled = pd.concat(frames, ignore_index=True)
    columns = []
    for column in pooled.columns:
        if column in categorical:
            names = as_categories(pooled[column])
            kept = kept_categories(names, max_categories)
            columns.append(pd.Index(kept).get_indexer(lump(names, kept)).astype(float))
        else:
            columns.append(pooled[column].to_numpy(dtype=float, na_value=np.nan))
    return np.column_stack(columns)


def domain_classifier(reference: pd.DataFrame, current: pd.DataFrame, categorical: tuple[str, ...], seed: int,
                      folds: int = 5, repeats: int = 3, max_categories: int = 50) -> dict:
    """Cross-validated ROC-AUC of a classifier telling current rows (1) from reference rows (0), and the
    permutation importance (drop in AUC) of each column on the held-out folds."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.inspection import permutation_importance
    from sklearn.model_selection import StratifiedKFold, cross_validate
    from threadpoolctl import threadpool_limits

    X = domain_matrix([reference, current], categorical, max_categories)
    usable = ~np.isnan(X).all(axis=0)  # a column with no values at all tells nothing (and breaks the binning)
    X = X[:, usable]
    y = np.r_[np.zeros(len(reference), dtype=int), np.ones(len(current), dtype=int)]
    model = HistGradientBoostingClassifier(
        categorical_features=np.array([c in categorical for c in reference.columns])[usable],
        max_iter=100, max_leaf_nodes=15, early_stopping=False, random_state=seed,
    )
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    importances = []
    # One OpenMP thread (the limit applies to the calling thread only): on small data and busy machines,
    # HistGradientBoosting's per-split thread synchronisation costs more than it saves.
    with threadpool_limits(limits=1, user_api="openmp"):
        scores = cross_validate(model, X, y, cv=cv, scoring="roc_auc", return_estimator=True, return_indices=True)
        for k, (estimator, test) in enumerate(zip(scores["estimator"], scores["indices"]["test"], strict=True)):
            result = permutation_importance(estimator, X[test], y[test], scoring="roc_auc", n_repeats=repeats,
                                            random_state=seed + k)
            importances.append(result.importances_mean)
    importance, spread = np.zeros(len(usable)), np.zeros(len(usable))
    importance[usable], spread[usable] = np.mean(importances, axis=0), np.std(importances, axis=0)
    return {
        "auc": float(np.mean(scores["test_score"])),
        "fold_auc": [float(v) for v in scores["test_score"]],
        "importance": importance,
        "importance_std": spread,
    }


# ---------------------------------------------------------------------------------------------- audit


def _sample(n: int, cap: int, rng: np.random.Generator) -> np.ndarray:
    return np.arange(n) if n <= cap else np.sort(rng.choice(n, size=cap, replace=False))


def _summary(values: pd.Series, categorical: bool) -> str:
    if categorical:
        shares = as_categories(values).value_counts(normalize=True)
        shares = shares.sort_index().sort_values(ascending=False, kind="stable").head(3)
        return ", ".join(f"{name} {share:.0%}" for name, share in shares.items())
    x = values.to_numpy(dtype=float, na_value=np.nan)
    x = x[~np.isnan(x)]
    return f"mean {np.mean(x):.4g}, sd {np.std(x, ddof=1) if len(x) > 1 else 0.0:.4g}" if len(x) else "no values"


class DriftAudit(Audit):
    """Per-feature drift tests (KS / chi-squared, BH-corrected, with effect-size floors), a domain
    classifier, and drift in the model's predictions and in the labels."""

    name = "drift"
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
        Threshold(metric="drift.drifted_features", max=0, severity="warn"),
        Threshold(metric="drift.domain_auc", max=0.6, severity="warn"),
        Threshold(metric="drift.domain_auc", max=0.8, severity="fail"),
    )

    def skip_reason(self, context: AuditContext) -> str | None:
        reason = super().skip_reason(context)
        if reason:
            return reason
        small = [f"{ds.name} has {len(ds)}" for ds in (context.reference, context.current) if len(ds) < MIN_ROWS]
        if small:
            return f"drift tests need at least {MIN_ROWS} rows a side; " + ", ".join(small)
        return None

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: DriftConfig = self.config
        ref_rows = _sample(len(context.reference), cfg.max_rows, context.rng("drift.sample.reference"))
        cur_rows = _sample(len(context.current), cfg.max_rows, context.rng("drift.sample.current"))
        X_ref = context.reference.X.iloc[ref_rows][list(context.features)]
        X_cur = context.current.X.iloc[cur_rows][list(context.features)]

        table = self._feature_table(X_ref, X_cur, context.categorical, cfg)
        metrics: dict[str, float] = {
            "drifted_features": float(table["drifted"].sum()),
            "drifted_share": float(table["drifted"].mean()),
            "rows.reference": float(len(X_ref)),
            "rows.current": float(len(X_cur)),
        }
        info = {
            "tests": "numeric: KS + Wasserstein / reference " + cfg.scale + "; categorical: chi-squared + PSI",
            "rule": f"drifted when {cfg.correction}-corrected p < {cfg.alpha:g} and effect > "
                    f"{cfg.min_effect.numeric:g} (numeric) / {cfg.min_effect.categorical:g} (categorical PSI)",
            "drifted": ", ".join(table.loc[table["drifted"], "feature"]) or "none",
        }
        artifacts: list[Artifact] = []

        if cfg.domain_classifier:
            n = min(cfg.domain_rows, len(X_ref), len(X_cur))
            rng = context.rng("drift.domain.rows")
            A = X_ref.iloc[_sample(len(X_ref), n, rng)]
            B = X_cur.iloc[_sample(len(X_cur), n, rng)]
            domain = domain_classifier(A, B, context.categorical, context.random_state("drift.domain.model"),
                                       cfg.domain_folds, cfg.importance_repeats, cfg.max_categories)
            metrics["domain_auc"] = domain["auc"]
            table["domain_importance"] = domain["importance"]
            ranked = table.sort_values("domain_importance", ascending=False, kind="stable").head(5)
            info["domain_top_features"] = ", ".join(f"{r.feature} ({r.domain_importance:.3f})" for r in ranked.itertuples())
            artifacts.append(Artifact.json("domain_classifier", {
                "auc": domain["auc"], "fold_auc": domain["fold_auc"], "rows_per_side": n,
                "importance": {f: float(v) for f, v in zip(table["feature"], domain["importance"], strict=True)},
                "importance_std": {f: float(v) for f, v in zip(table["feature"], domain["importance_std"], strict=True)},
            }, "Domain classifier: cross-validated AUC and permutation importance (drop in AUC)"))

        for row in table.itertuples():
            key = key_part(row.feature)
            metrics[f"feature.{key}.pvalue_corrected"] = float(row.pvalue_corrected)
            metrics[f"feature.{key}.effect"] = float(row.effect)
            metrics[f"feature.{key}.drifted"] = float(row.drifted)

        outputs, output_metrics, output_info = self._outputs(context, ref_rows, cur_rows, cfg)
        metrics.update(output_metrics)
        info.update(output_info)

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
    def _feature_table(X_ref: pd.DataFrame, X_cur: pd.DataFrame, categorical: tuple[str, ...],
                       cfg: DriftConfig) -> pd.DataFrame:
        rows = []
        for feature in X_ref.columns:
            is_cat = feature in categorical
            if is_cat:
                result = categorical_drift(X_ref[feature], X_cur[feature], cfg.max_categories, cfg.psi_epsilon)
            else:
                result = numeric_drift(X_ref[feature].to_numpy(dtype=float, na_value=np.nan),
                                       X_cur[feature].to_numpy(dtype=float, na_value=np.nan),
                                       cfg.scale, cfg.psi_bins, cfg.psi_epsilon)
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
                "missing_reference": float(X_ref[feature].isna().mean()),
                "missing_current": float(X_cur[feature].isna().mean()),
                "reference_summary": _summary(X_ref[feature], is_cat),
                "current_summary": _summary(X_cur[feature], is_cat),
            })
        table = pd.DataFrame(rows)
        table.insert(5, "pvalue_corrected", correct(table["pvalue"].to_numpy(), cfg.correction))
        table.insert(6, "drifted", (table["pvalue_corrected"] < cfg.alpha) & (table["effect"] > table["min_effect"]))
        return table

    @staticmethod
    def _outputs(context: AuditContext, ref_rows: np.ndarray, cur_rows: np.ndarray,
                 cfg: DriftConfig) -> tuple[pd.DataFrame, dict[str, float], dict[str, str]]:
        """Drift of the predictions (and of the labels when both sides are labelled)."""
        ref, cur = context.reference, context.current
        rows: list[dict] = []
        metrics: dict[str, float] = {}
        info: dict[str, str] = {}

        def numeric(target: str, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
            result = numeric_drift(a, b, cfg.scale, cfg.psi_bins, cfg.psi_epsilon)
            rows.append({"target": target, "test": "kolmogorov-smirnov", **result})
            return result

        def labels(target: str, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
            result = categorical_drift(a, b, cfg.max_categories, cfg.psi_epsilon)
            rows.append({"target": target, "test": "chi-squared", **result})
            return result

        if context.task == "classification":
            predicted = labels("predicted label", ref.predictions.labels[ref_rows], cur.predictions.labels[cur_rows])
            metrics.update({"prediction.psi": predicted["psi"], "prediction.chi2_pvalue": predicted["pvalue"]})
            drifted = predicted["pvalue"] < cfg.alpha and predicted["effect"] > cfg.min_effect.categorical
            if ref.predictions.proba is not None and cur.predictions.proba is not None:
                name, score = _score(context)
                info["prediction_score"] = name
                result = numeric(name, score(ref.predictions.proba[ref_rows]), score(cur.predictions.proba[cur_rows]))
                # the score is the richer signal: it decides when there is one
                drifted = result["pvalue"] < cfg.alpha and result["effect"] > cfg.min_effect.numeric
                metrics.update({"prediction.ks_pvalue": result["pvalue"], "prediction.ks_statistic": result["statistic"],
                                "prediction.wasserstein": result["effect"]})
        else:
            result = numeric("prediction", ref.predictions.labels[ref_rows].astype(float),
                             cur.predictions.labels[cur_rows].astype(float))
            drifted = result["pvalue"] < cfg.alpha and result["effect"] > cfg.min_effect.numeric
            metrics.update({"prediction.ks_pvalue": result["pvalue"], "prediction.ks_statistic": result["statistic"],
                            "prediction.wasserstein": result["effect"], "prediction.psi": result["psi"]})
        metrics["prediction.drifted"] = float(drifted)

        if ref.labelled and cur.labelled:
            a, b = ref.y.to_numpy()[ref_rows], cur.y.to_numpy()[cur_rows]
            if context.task == "classification":
                result = labels("label", a, b)
                metrics.update({"label.psi": result["psi"], "label.chi2_pvalue": result["pvalue"]})
            else:
                result = numeric("label", a.astype(float), b.astype(float))
                metrics.update({"label.ks_pvalue": result["pvalue"], "label.wasserstein": result["effect"],
                                "label.psi": result["psi"]})
        else:
            info["labels"] = "label drift needs labels on both sides; " + ", ".join(
                f"{ds.name}: {'labelled' if ds.labelled else 'unlabelled'}" for ds in (ref, cur))
        table = pd.DataFrame(rows, columns=["target", "test", "statistic", "pvalue", "effect", "psi"])
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
