"""Global importance three ways, side by side: occlusion, permutation importance and SHAP.

- occlusion: replace one feature with values drawn from the reference (the others kept) and measure
  how much the model's output moves, averaged over rows and draws;
- permutation importance: scikit-learn's ``permutation_importance``, the drop in a score when one
  feature is shuffled (needs labels: current data when labelled, else the reference, in-sample);
- SHAP: mean |SHAP value|, from the same explainer the ``shap`` audit uses.

They measure different things (output sensitivity vs dependence of the score), so disagreement is
a finding worth a look rather than an error; rank correlations summarise it.

Occlusion and permutation average something random (donor draws, shuffles): each spends only the repeats its
figures need (audits.methods.repeats). Permutation shuffles in batches (``min_repeats`` first, then as many as
the spread says are missing, up to ``max_repeats``) until every feature's t interval is at most ``ci_tolerance``
times the largest importance (or ``permutation_ci_floor`` in score units, whichever is larger); occlusion draws
``draws`` donors per row and feature first, then more up to ``max_draws``, until its interval (delta method over
the draws) meets the same tolerance. Both intervals are Monte Carlo intervals for the rows sampled (how far the
figure could still move with more shuffles or draws), recorded as ``*_ci_halfwidth_max`` beside the repeats spent.
Occlusion's first batch stays at 20 draws although its interval is often met with fewer: each row's |mean - f(x)|
is biased upwards by up to ~0.8 sd/sqrt(draws) where the mean is near f(x), which the interval does not include
(with 5 draws, 78-93% of features were inside their 95% interval on the bench and test worlds; 85-96% with 20).

Each batch calls the model on all features' occluded or shuffled copies at once, concatenated into frames of at
most ``max_call_values`` values, rather than once per feature and repeat. A permutation batch reproduces scikit-learn's
``permutation_importance(n_repeats=batch, random_state=seed)`` exactly (the same shuffles, the same scores), so a
fixed ``n_repeats`` is scikit-learn's own figure; tests hold it to that.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field, model_validator

from audits.core import (
    Artifact,
    Audit,
    AuditConfig,
    AuditContext,
    AuditResult,
    ModelUnderAudit,
    Requirements,
    Threshold,
)
from audits.core.result import key_part
from audits.methods.compare import spearman
from audits.methods.permutation import batched_output, output_scorer, permutation_batch
from audits.methods.repeats import Estimate, normal_quantile, sequential, t_halfwidth
from audits.methods.shap_values import explain


MIN_RANKED = 3  # features a rank correlation needs to say anything


class ImportanceConfig(AuditConfig):
    rows: int = Field(200, ge=1)  # rows for occlusion and SHAP
    draws: int = Field(20, ge=1)  # occlusion: reference values substituted per row and feature, first batch
    max_draws: int = Field(100, ge=1)  # occlusion: at most this many draws when the interval is still wide
    background_rows: int = Field(50, ge=1)  # SHAP's background sample
    n_repeats: int | None = Field(None, ge=1)  # permutation: a fixed number of shuffles per feature (no stopping rule)
    min_repeats: int = Field(5, ge=2)  # permutation: shuffles per feature in the first batch
    max_repeats: int = Field(50, ge=2)  # permutation: at most this many shuffles per feature
    permutation_rows: int = Field(2000, ge=10)  # rows scored by permutation importance
    # the interval half-width enough for both methods, as a share of the method's largest importance: features whose
    # importances differ by more than about twice this share of the top one are ranked apart
    ci_tolerance: float = Field(0.1, gt=0)
    permutation_ci_floor: float = Field(0.002, ge=0)  # a half-width enough whatever the largest (score units: AUC, R^2, log loss)
    confidence: float = Field(0.95, gt=0, lt=1)  # of the recorded intervals
    # values (rows x columns) per model call: occluded or shuffled copies of the rows, concatenated (5M: 40 MB of floats)
    max_call_values: int = Field(5_000_000, ge=1)

    @model_validator(mode="after")
    def _bounds_in_order(self) -> ImportanceConfig:
        if self.max_draws < self.draws:
            raise ValueError(f"max_draws ({self.max_draws}) must be at least draws ({self.draws})")
        if self.max_repeats < self.min_repeats:
            raise ValueError(f"max_repeats ({self.max_repeats}) must be at least min_repeats ({self.min_repeats})")
        return self


def output_function(model: ModelUnderAudit):
    """The output whose movement occlusion measures: P(positive class) for binary classifiers, the
    probability vector for multiclass (moved by half its L1 change: total variation), the prediction
    for regressors."""
    if model.task == "regression":
        return lambda X: np.asarray(model.predict(X), dtype=float)[:, None]
    if len(model.classes) == 2:
        return lambda X: np.asarray(model.predict_proba(X), dtype=float)[:, 1:]
    return lambda X: np.asarray(model.predict_proba(X), dtype=float) / 2


def occlusion_estimate(model: ModelUnderAudit, X: pd.DataFrame, donors: pd.DataFrame, rng: np.random.Generator, *,
                       draws: int, max_draws: int | None = None, tolerance: float = 0.1, confidence: float = 0.95,
                       max_call_values: int = 5_000_000) -> Estimate:
    """Occlusion importance per feature (see ``occlusion_importance``) with its interval: ``draws`` donors per row
    and feature, then more batches up to ``max_draws`` while the widest half-width exceeds ``tolerance`` times the
    largest importance. The half-width is the delta method's over the draws: each row's term |mean f - f(x)| moves
    with its mean along the sign of (mean f - f(x)), whose variance is the draws' variance over their number."""
    f = output_function(model)
    base = f(X)  # (rows, outputs)
    n, names = len(X), list(X.columns)
    # each column's values, then the donors': position i < n is row i's own value, n + r is donor r's
    pooled = {c: pd.concat([X[c], donors[c]], ignore_index=True) for c in names}
    batches: list[np.ndarray] = []  # (features, rows, draws, outputs)
    z = normal_quantile(confidence)

    def draw(_batch: int, d: int) -> None:
        donor_rows = rng.integers(0, len(donors), size=(len(names), n, d))

        def positions(flat: np.ndarray) -> dict:
            feature, within = np.divmod(flat, n * d)
            row = within // d
            occluded = n + donor_rows.reshape(-1)[flat]
            return {c: np.where(feature == j, occluded, row) for j, c in enumerate(names)}

        out = batched_output(f, pooled, positions, len(names) * n * d, max_call_values)
        batches.append(out.reshape(len(names), n, d, -1))

    def assess() -> tuple[np.ndarray, np.ndarray]:
        out = np.concatenate(batches, axis=2) - base[None, :, None, :]  # each draw's move: exactly 0 where nothing moved
        moved = out.mean(axis=2)  # (features, rows, outputs)
        importance = np.abs(moved).sum(axis=2).mean(axis=1)
        total = out.shape[2]
        if total < 2:
            return importance, np.full(len(names), np.nan)
        along = (out * np.sign(moved)[:, :, None, :]).sum(axis=3)  # (features, rows, draws)
        variance = along.var(axis=2, ddof=1).sum(axis=1) / (total * n**2)
        return importance, z * np.sqrt(variance)

    return sequential(draw, assess, min_repeats=draws, max_repeats=max(draws, max_draws or draws), relative=tolerance)


def occlusion_importance(model: ModelUnderAudit, X: pd.DataFrame, donors: pd.DataFrame, draws: int,
                         rng: np.random.Generator, max_call_values: int = 5_000_000) -> np.ndarray:
    """Mean over rows of |f(x) - mean over draws of f(x with feature j from a donor row)|, per feature."""
    return occlusion_estimate(model, X, donors, rng, draws=draws, max_call_values=max_call_values).mean


def scorer_for(model: ModelUnderAudit):
    """A scorer(estimator, X, y) as sklearn's permutation_importance takes: ROC-AUC (binary), negative log loss
    (multiclass), R^2 (regression). The estimator argument is ignored: the model may be pyfunc-only."""
    score, output, name = output_scorer(model)
    return (lambda _estimator, X, y: float(score(y, np.asarray(output(X))[None])[0])), name


def permutation_estimate(model: ModelUnderAudit, X: pd.DataFrame, y: pd.Series, seed_for: Callable[[int], int], *,
                         min_repeats: int, max_repeats: int, tolerance: float = 0.1, floor: float = 0.0,
                         confidence: float = 0.95, max_call_values: int = 5_000_000) -> tuple[Estimate, np.ndarray]:
    """Permutation importance per feature with its t interval over the shuffles, in batches (batch b is scikit-learn's
    permutation_importance with ``random_state=seed_for(b)``) until the widest half-width is at most ``tolerance``
    times the largest importance, or ``floor``; and every shuffle's importance (features, repeats)."""
    repeats: list[np.ndarray] = []

    def draw(batch: int, n: int) -> None:
        repeats.append(permutation_batch(model, X, y, n, seed_for(batch), max_call_values))

    def assess() -> tuple[np.ndarray, np.ndarray]:
        importances = np.concatenate(repeats, axis=1)
        return importances.mean(axis=1), t_halfwidth(importances.T, confidence)

    estimate = sequential(draw, assess, min_repeats=min_repeats, max_repeats=max_repeats, relative=tolerance, absolute=floor)
    return estimate, np.concatenate(repeats, axis=1)


class ImportanceAudit(Audit):
    """Occlusion and permutation importance, compared with SHAP global importance."""

    name = "importance"
    question = "behaviour"
    typical_cost_s = 1.5  # for the scheduler (audits.core.audit)
    metric_keys = (
        "{occlusion,permutation}.*", "spearman.{occlusion_vs_permutation,occlusion_vs_shap,permutation_vs_shap}",
        "rows", "{occlusion,permutation}_ci_halfwidth_max", "occlusion_draws", "permutation_repeats",
    )
    Config = ImportanceConfig
    requires = Requirements(labels="any", probabilities=True)
    description = ("Occlusion and permutation importance beside SHAP, with their rank correlations; occlusion and "
                   "permutation repeat until their intervals are tight enough.")
    default_thresholds = (Threshold(metric="spearman.occlusion_vs_shap", min=0.5, severity="warn"),)

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: ImportanceConfig = self.config
        model, features = context.model, list(context.features)
        X = context.current.X.sample(n=min(cfg.rows, len(context.current)), random_state=context.random_state("importance.rows"))
        donors = context.reference.X
        occlusion = occlusion_estimate(model, X, donors, context.rng("importance.occlusion"), draws=cfg.draws,
                                       max_draws=cfg.max_draws, tolerance=cfg.ci_tolerance, confidence=cfg.confidence,
                                       max_call_values=cfg.max_call_values)

        labelled = context.current if context.current.labelled else context.reference
        sample = labelled.X.sample(n=min(cfg.permutation_rows, len(labelled)), random_state=context.random_state("importance.perm_rows"))
        _, _, score_name = output_scorer(model)
        # batch 0 takes the seed the fixed-repeat figure always had: stopped there, the figure is the one it was
        first, rest = (cfg.n_repeats, cfg.n_repeats) if cfg.n_repeats is not None else (cfg.min_repeats, cfg.max_repeats)
        permuted, shuffles = permutation_estimate(
            model, sample, labelled.y.loc[sample.index],
            lambda b: context.random_state("importance.permutation" if b == 0 else f"importance.permutation.{b}"),
            min_repeats=first, max_repeats=rest, tolerance=cfg.ci_tolerance, floor=cfg.permutation_ci_floor,
            confidence=cfg.confidence, max_call_values=cfg.max_call_values,
        )  # fmt: skip

        background = donors.sample(n=min(cfg.background_rows, len(donors)), random_state=context.random_state("importance.background"))
        attribution = explain(context, X, background)
        by_feature = dict(zip(attribution.features, np.abs(attribution.values).mean(axis=0).sum(axis=1), strict=True))
        shap_importance = np.array([by_feature.get(f, 0.0) for f in features])

        table = pd.DataFrame({
            "feature": features,
            "occlusion": occlusion.mean,
            "occlusion_ci_halfwidth": occlusion.halfwidth,
            "permutation": permuted.mean,
            "permutation_std": shuffles.std(axis=1),  # as scikit-learn's importances_std (ddof=0)
            "permutation_ci_halfwidth": permuted.halfwidth,
            "shap": shap_importance,
        })  # fmt: skip
        for method in ("occlusion", "permutation", "shap"):
            table[f"rank_{method}"] = table[method].rank(ascending=False, method="min").astype(int)
        table = table.sort_values("shap", ascending=False, kind="stable")

        def ranked(a: np.ndarray, b: np.ndarray) -> float:  # 2 features agree (+1) or not (-1) by a coin's toss
            return spearman(a, b) if len(a) >= MIN_RANKED else float("nan")

        metrics: dict[str, float] = {
            "spearman.occlusion_vs_shap": ranked(occlusion.mean, shap_importance),
            "spearman.permutation_vs_shap": ranked(permuted.mean, shap_importance),
            "spearman.occlusion_vs_permutation": ranked(occlusion.mean, permuted.mean),
            "rows": float(len(X)),
            # beside the per-feature keys, not under them: a feature may be called 'repeats'
            "occlusion_ci_halfwidth_max": occlusion.widest,
            "occlusion_draws": float(occlusion.repeats),
            "permutation_ci_halfwidth_max": permuted.widest,
            "permutation_repeats": float(permuted.repeats),
        }
        for row in table.itertuples():
            metrics[f"occlusion.{key_part(row.feature)}"] = float(row.occlusion)
            metrics[f"permutation.{key_part(row.feature)}"] = float(row.permutation)
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.table("importance", table, "Occlusion, permutation and SHAP importance per feature, with ranks "
                               f"and {cfg.confidence:.0%} Monte Carlo interval half-widths"),
                _figure(table),
            ),
            info={
                "permutation_scored_on": f"{labelled.name} data ({score_name}, {len(sample)} rows, {permuted.repeats} repeats)"
                + (" - in-sample" if labelled.name == "reference" else ""),
                "permutation_repeats": _spent(permuted, "shuffles", fixed=cfg.n_repeats is not None),
                "occlusion_draws": _spent(occlusion, "draws", fixed=occlusion.repeats == cfg.draws == cfg.max_draws),
                "occlusion_output": "P(positive class)" if model.task == "classification" and len(model.classes) == 2
                else ("probability vector (total variation)" if model.task == "classification" else "prediction"),
                "shap_explainer": attribution.explainer,
            },
        )


def _spent(estimate: Estimate, what: str, fixed: bool) -> str:
    batches = "+".join(str(b) for b in estimate.batches)
    if fixed:
        return f"{estimate.repeats} {what} (fixed); widest half-width {estimate.widest:.3g}"
    reached = "reached" if estimate.converged else "not reached: stopped at the maximum"
    return (f"{estimate.repeats} {what} ({batches}); widest half-width {estimate.widest:.3g}, "
            f"aimed at {estimate.tolerance:.3g} ({reached})")


def _figure(table: pd.DataFrame, top: int = 15) -> Artifact:
    shown = table.head(top).iloc[::-1]
    fig = Figure(figsize=(8, 0.35 * len(shown) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    positions = np.arange(len(shown))
    for offset, method in zip((-0.27, 0.0, 0.27), ("shap", "occlusion", "permutation"), strict=True):
        values = shown[method].clip(lower=0)
        total = table[method].clip(lower=0).sum() or 1.0
        ax.barh(positions + offset, values / total, height=0.26, label=method)
    ax.set_yticks(positions, shown["feature"])
    ax.set_xlabel("share of the method's total importance")
    ax.set_title("Global importance: SHAP, occlusion, permutation")
    ax.legend(loc="lower right")
    return Artifact.figure("importance", fig, "Importance shares by method")
