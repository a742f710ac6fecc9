"""Concordance: are the rows the model is unsure about also the unfamiliar ones, and the wrong ones?

Per current row, up to three kinds of signal:

- uncertainty: classifiers, the entropy of the model's own probabilities (``scores.entropy``);
  regressors, the standard deviation of a small bootstrap ensemble of clones of the model
  (``ensemble.bootstrap_members``, fitted on the labelled reference rows);
- unfamiliarity: OOD scores fitted on the reference (``ood.fit_ood``; knn distance and PCA
  reconstruction error by default);
- error, when the current rows are labelled: classifiers, 1 if misclassified else 0; regressors,
  the absolute residual.

Metrics: the Spearman rank correlation of every pair of signals and, for classifiers, the ROC-AUC of
each uncertainty and OOD score at telling misclassified rows from correct ones (0.5: no better than
chance). No default threshold: how strongly uncertainty should track errors depends on the model and
the data, and an AUROC near 0.5 on a model that makes few errors is not a defect in itself.

Planted shifts (``planted``: a column of ``data.segments`` that says per current row which corruption or shift was
planted on it, ``clean`` on the untouched rows): for every planted kind, the ROC-AUC of every uncertainty and
unfamiliarity signal at telling that kind's rows from the clean ones (``audits.methods.planted``), so that the
report shows which signal catches what and which misses it. The signals, each where it applies (otherwise the
info says why not):

- ``mc_dropout``: networks with dropout, the mutual information of ``passes`` MC-dropout passes
  (``dropout.score_images``, as the mc_dropout audit);
- ``ensemble``: native scikit-learn models with labelled reference rows, the disagreement of ``members`` bootstrap
  clones (classifiers: their mutual information, as the disagreement audit; regressors: their std). Never for a
  network: this audit trains no networks (MC dropout is a network's own ensemble);
- ``autoencoder``, ``knn``, ``pca``: ``ood.fit_ood``'s scorers fitted on the reference (on images, the pixels);
- ``confidence`` (1 - the top probability) and ``entropy``: classifiers with probabilities.

The costly signals score at most ``planted_rows`` current rows (seeded); every AUROC is computed on those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field
from scipy.stats import rankdata

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements
from audits.core.result import key_part
from audits.methods.compare import spearman
from audits.methods.ensemble import bootstrap_members, decompose, member_predictions, member_probabilities, regressor_uncertainty
from audits.methods.ood import SCORERS, Scorers, fit_ood
from audits.methods.planted import planted_aurocs, planted_column
from audits.methods.sampling import reference_sample
from audits.methods.scores import confidence, entropy

PLOT_POINTS = 5000  # scatter plots draw at most this many rows (sampled with the seed)
# the signals compared on planted shifts, in the heat map's order: a network's own spread, the model class's, then
# unfamiliarity of the inputs, then the model's own probabilities
PLANTED_SIGNALS = ("mc_dropout", "ensemble", "autoencoder", "knn", "pca", "confidence", "entropy")
SIGNAL_LABELS = {"mc_dropout": "MC dropout\n(mutual inf.)", "ensemble": "ensemble\ndisagreement", "autoencoder": "autoencoder\nerror",
                 "knn": "kNN\ndistance", "pca": "PCA\nerror", "confidence": "1 - max\nprobability", "entropy": "entropy"}


class ConcordanceConfig(AuditConfig):
    scorers: Scorers = ("knn", "pca")  # OOD scorers compared
    k: int = Field(5, ge=1, le=100)  # neighbours averaged by the knn scorer
    max_rows: int = Field(5000, ge=20)  # reference rows for the OOD scorers and per ensemble member
    members: int = Field(5, ge=2, le=100)  # regressors: bootstrap clones whose spread is the uncertainty
    rows: int = Field(20, ge=1)  # worst rows in the table
    # a column of data.segments naming, per current row, the corruption or shift planted on it; its value on the
    # untouched rows is ``clean``. None: no planted view
    planted: str | None = Field(None, min_length=1)
    clean: str = "none"
    passes: int = Field(30, ge=2, le=1000)  # MC-dropout passes per row (planted view, networks with dropout)
    planted_rows: int = Field(20_000, ge=20)  # current rows the planted view scores (sampled with the seed)


def uncertainty(context: AuditContext, cfg: ConcordanceConfig) -> tuple[np.ndarray | None, str]:
    """(per-row uncertainty of the current rows or None, what it is or why it is missing)."""
    current, reference = context.current, context.reference
    if context.task == "classification":
        if current.predictions.proba is None:
            return None, f"no uncertainty column: {context.model.label} ({context.model.flavor}) has no predict_proba"
        return entropy(current.predictions.proba), "entropy of the model's predicted probabilities (nats)"
    if context.model.estimator is None:
        return None, f"no uncertainty column: a bootstrap ensemble needs a native scikit-learn model; {context.model.label} loads as {context.model.flavor}"
    if not reference.labelled:
        return None, "no uncertainty column: a bootstrap ensemble needs labelled reference rows"
    members = bootstrap_members(context.model.estimator, reference.X, reference.y, cfg.members, cfg.max_rows,
                                context.rng("concordance.members"))
    spread = regressor_uncertainty(member_predictions(members, current.X))["std"].to_numpy()
    return spread, f"std of {cfg.members} bootstrap clones' predictions"


def error(context: AuditContext) -> tuple[np.ndarray | None, str]:
    current = context.current
    if not current.labelled:
        return None, f"no error column: target {context.target!r} is absent from the current data"
    if context.task == "classification":
        return (current.predictions.labels != current.y.to_numpy()).astype(float), "1 if misclassified, else 0"
    return np.abs(current.y.to_numpy(dtype=float) - current.predictions.labels.astype(float)), "absolute residual"


def ood_scores(context: AuditContext, cfg: ConcordanceConfig, scorers: tuple[str, ...]) -> dict[str, np.ndarray]:
    """``scorers`` fitted on the reference, scored on every current row. Fitting more scorers leaves the others'
    scores as they were (fit_ood seeds each alike whatever else it fits)."""
    ood = fit_ood(context.reference.X, context.categorical, context.random_state("concordance.ood"), scorers=scorers,
                  k=cfg.k, max_rows=cfg.max_rows, holdout=0.0)  # thresholds unused: (all but one) rows for fitting
    return ood.scores(context.current.X)


def signals(context: AuditContext, cfg: ConcordanceConfig,
            scores: dict[str, np.ndarray] | None = None) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per current row (positions): uncertainty, the OOD scores, error; the columns that exist, and notes.
    ``scores``: the OOD scores of the current rows when already computed (holding at least ``cfg.scorers``)."""
    if scores is None:
        scores = ood_scores(context, cfg, cfg.scorers)
    spread, spread_note = uncertainty(context, cfg)
    wrong, error_note = error(context)
    columns = {"uncertainty": spread, **{name: scores[name] for name in cfg.scorers}, "error": wrong}
    frame = pd.DataFrame({name: values for name, values in columns.items() if values is not None})
    return frame, {"uncertainty": spread_note, "ood": f"fit_ood scorers {', '.join(cfg.scorers)} fitted on the reference",
                   "error": error_note}


def detection_auroc(is_error: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of ``score`` at ranking misclassified rows above correct ones; NaN with only one kind."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_error, score)) if 0 < is_error.sum() < len(is_error) else float("nan")


def concordance_metrics(frame: pd.DataFrame, task: str) -> dict[str, float]:
    names = list(frame.columns)
    metrics = {"rows": float(len(frame))}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            metrics[f"spearman.{a}_vs_{b}"] = spearman(frame[a].to_numpy(), frame[b].to_numpy())
    if "error" in frame:
        wrong = frame["error"].to_numpy()
        if task == "classification":
            metrics["error_rate"] = float(wrong.mean())
            for name in names[:-1]:
                metrics[f"auroc.{name}_detects_errors"] = detection_auroc(wrong.astype(bool), frame[name].to_numpy())
        else:
            metrics["mean_abs_error"] = float(wrong.mean())
    return metrics


class ConcordanceAudit(Audit):
    """Rank agreement between per-row uncertainty, OOD scores and errors on the current rows."""

    name = "concordance"
    question = "certainty"
    metric_keys = (
        "auroc.*_detects_errors", "spearman.*_vs_*", "error_rate", "mean_abs_error", "rows",
        "planted.*.*.auroc", "planted.*.rows",
    )
    Config = ConcordanceConfig
    requires = Requirements(modalities=("tabular", "image"))
    description = ("Do uncertain rows coincide with out-of-distribution rows and with errors? Spearman correlations, "
                   "error-detection AUROC; with planted shifts, which signal catches each (AUROC per kind and signal).")
    # its scorers fit on at most max_rows reference rows; then each current row costs a score (bench/bench_sample_sizes.py:
    # 1.3 s at 20k rows a side, 7.1 s at 400k), so a larger sample is cheap and ranks rarer errors
    default_sample_rows = 200_000

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: ConcordanceConfig = self.config
        kinds = planted_column(context.current.segments, cfg.planted)
        # the planted view compares every scorer (ood_scores: the others score as they would alone)
        scorers = cfg.scorers if kinds is None else tuple(s for s in SCORERS if s in cfg.scorers or s in PLANTED_SIGNALS)
        scores = ood_scores(context, cfg, scorers)
        frame, notes = signals(context, cfg, scores)
        metrics = concordance_metrics(frame, context.task)
        artifacts = [
            Artifact.table("worst_rows", _worst_rows(context, frame, cfg.rows, kinds),
                           f"The {min(cfg.rows, len(frame))} current rows ranked highest on all signals together"),
            _pairs_figure(frame, context.task, context.rng("concordance.plot")),
        ]
        info = {**notes, "combined_rank": "mean over the signals of each row's percentile rank (1: highest)"}
        if kinds is not None:
            view = planted_view(context, cfg, kinds, frame, scores)
            metrics.update(view.metrics)
            artifacts.extend(view.artifacts)
            info.update(view.info)
        return AuditResult(audit=self.name, metrics=metrics, artifacts=tuple(artifacts), info=info)


# ------------------------------------------------------------------------------------------------ planted shifts


def _not_applicable(reason: str) -> tuple[None, str]:
    return None, f"does not apply: {reason}"


def mc_dropout_signal(context: AuditContext, cfg: ConcordanceConfig, positions: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The mutual information of MC-dropout passes (as the mc_dropout audit), or why it does not apply."""
    estimator = context.model.estimator
    if not hasattr(estimator, "network"):
        kind = type(estimator).__name__ if estimator is not None else "no native estimator"
        return _not_applicable(f"MC dropout samples a network's dropout masks; {context.model.label} is a "
                               f"{context.model.flavor} model ({kind}), not a network")
    from audits.methods.dropout import dropout_layers, score_images
    from audits.methods.network import network_of

    model = network_of(context)
    module = model.network()
    try:
        layers = dropout_layers(module)
    except AttributeError:  # a torch.export program (MLflow's pt2 format) has no modules to switch
        return _not_applicable(f"{context.model.label}'s network is a {type(module).__name__}, whose dropout cannot be switched on")
    if not layers:
        return _not_applicable(f"{context.model.label} has no dropout module: MC dropout needs dropout to sample from")
    inputs = model.as_tensor(context.current.X.iloc[positions]).numpy()
    scores = score_images(module, inputs, cfg.passes, context.random_state("concordance.mc_dropout"))
    return scores.mutual_information, (f"mutual information of {cfg.passes} MC-dropout passes ({len(layers)} dropout module(s) "
                                       "on, everything else in eval mode; nats), as the mc_dropout audit")


def ensemble_signal(context: AuditContext, cfg: ConcordanceConfig, positions: np.ndarray,
                    frame: pd.DataFrame) -> tuple[np.ndarray | None, str]:
    """Disagreement of a bootstrap ensemble of clones of the model (as the disagreement audit), or why it does not apply."""
    estimator, reference = context.model.estimator, context.reference
    if estimator is None:
        return _not_applicable(f"a bootstrap ensemble refits clones of a native scikit-learn model; {context.model.label} "
                               f"loads as {context.model.flavor}")
    if hasattr(estimator, "network"):
        return _not_applicable(f"a bootstrap ensemble would train {cfg.members} copies of the network "
                               f"{context.model.label}, and this audit trains no networks (MC dropout is a network's own ensemble)")
    if not reference.labelled:
        return _not_applicable(f"a bootstrap ensemble needs labelled reference rows; target {context.target!r} is absent there")
    if context.task == "regression":  # the concordance's own uncertainty column: the same members
        return frame["uncertainty"].to_numpy()[positions], f"std of {cfg.members} bootstrap clones' predictions (the uncertainty column)"
    if not hasattr(estimator, "predict_proba") or context.model.classes is None:
        return _not_applicable(f"{context.model.label} has no predict_proba: its clones' probabilities cannot be compared")
    try:
        members = bootstrap_members(estimator, reference.X, reference.y, cfg.members, cfg.max_rows, context.rng("concordance.ensemble"))
        probabilities = member_probabilities(members, context.current.X.iloc[positions], context.model.classes)
    except Exception as error:  # the user's estimator refitted on resamples: its failure costs this column, not the view
        return None, f"could not be computed: refitting a clone of {type(estimator).__name__} failed ({type(error).__name__}: {error})"
    return decompose(probabilities).epistemic, (f"mutual information of {cfg.members} bootstrap clones of "
                                                f"{type(estimator).__name__} fitted on the reference (nats), as the disagreement audit")


def planted_signals(context: AuditContext, cfg: ConcordanceConfig, positions: np.ndarray, frame: pd.DataFrame,
                    scores: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Per scored current row (``positions``), every signal of PLANTED_SIGNALS that applies (higher: more suspicious);
    and for every signal what it is, or why it does not apply."""
    found: dict[str, tuple[np.ndarray | None, str]] = {
        "mc_dropout": mc_dropout_signal(context, cfg, positions),
        "ensemble": ensemble_signal(context, cfg, positions, frame),
    }
    fitted = f"fitted on {min(cfg.max_rows, len(context.reference))} reference rows"
    found["autoencoder"] = (scores["autoencoder"][positions],
                            f"reconstruction error of ood.fit_ood's MLP autoencoder, {fitted} (standardised features)")
    found["knn"] = (scores["knn"][positions], f"mean distance to the {cfg.k} nearest reference rows, {fitted} (standardised features)")
    found["pca"] = (scores["pca"][positions], f"reconstruction error of a PCA keeping 90 % of the variance, {fitted}")
    proba = context.current.predictions.proba
    if context.task != "classification":
        found["confidence"] = found["entropy"] = _not_applicable("a regressor has no class probabilities")
    elif proba is None:
        found["confidence"] = found["entropy"] = _not_applicable(f"{context.model.label} ({context.model.flavor}) has no predict_proba")
    else:
        found["confidence"] = (1.0 - confidence(proba[positions]), "1 - the model's top predicted probability (higher: less confident)")
        found["entropy"] = (entropy(proba[positions]), "entropy of the model's predicted probabilities (nats)")
    values = {name: found[name][0] for name in PLANTED_SIGNALS if found[name][0] is not None}
    return values, {name: found[name][1] for name in PLANTED_SIGNALS}


@dataclass(frozen=True)
class PlantedView:
    metrics: dict[str, float]
    artifacts: tuple[Artifact, ...]
    info: dict[str, str]


def planted_view(context: AuditContext, cfg: ConcordanceConfig, kinds: np.ndarray, frame: pd.DataFrame,
                 scores: dict[str, np.ndarray]) -> PlantedView:
    """For every planted kind, each signal's AUROC against the clean rows: metrics, table, heat map, notes."""
    positions = reference_sample(len(context.current), cfg.planted_rows, context.random_state("concordance.planted_rows"))
    kinds = kinds[positions]
    values, notes = planted_signals(context, cfg, positions, frame, scores)
    table = planted_aurocs(kinds, cfg.clean, values)
    clean_rows = int(np.sum(kinds == cfg.clean))
    metrics = {f"planted.{key_part(cfg.clean)}.rows": float(clean_rows)}
    for row in table.itertuples(index=False):
        metrics[f"planted.{key_part(row.planted)}.rows"] = float(row.rows)
        for name in values:
            metrics[f"planted.{key_part(row.planted)}.{name}.auroc"] = float(getattr(row, name))
    missing = int(sum(k is None for k in kinds))
    sampled = f" (a seeded sample of {len(context.current):,})" if len(positions) < len(context.current) else ""
    summary = (f"column {cfg.planted!r} of data.segments: {len(positions):,} current rows scored{sampled}; each planted kind's "
               f"rows against the {clean_rows:,} {cfg.clean!r} rows: ROC-AUC of each signal (0.5: chance; 1: every planted "
               f"row scores above every clean one; below 0.5: the signal points the wrong way)")
    if missing:
        summary += f"; {missing:,} row(s) with no value take no part"
    if not clean_rows:
        seen = sorted({k for k in kinds if k is not None})[:10]
        summary += (f". No row is {cfg.clean!r}, so there is nothing to compare with and every AUROC is NaN: set clean "
                    f"to the value of the untouched rows (values seen: {seen})")
    if table.empty:
        summary += f". No row carries a planted kind other than {cfg.clean!r}"
    title = f"AUROC of each signal at telling each planted kind's rows from the {clean_rows:,} {cfg.clean!r} rows"
    return PlantedView(
        metrics=metrics,
        artifacts=(Artifact.table("planted_auroc", table, title),
                   _planted_figure(table, notes, cfg.planted, cfg.clean, clean_rows)),
        info={"planted": summary, **{f"planted.{name}": note for name, note in notes.items()}},
    )


def _planted_figure(table: pd.DataFrame, notes: dict[str, str], column: str, clean: str, clean_rows: int) -> Artifact:
    """Kinds (rows) x signals (columns): each cell's AUROC, coloured from red (0) through yellow (0.5, chance) to
    green (1); a signal that does not apply is a grey column of dashes."""
    import matplotlib

    values = np.full((len(table), len(PLANTED_SIGNALS)), np.nan)
    for j, name in enumerate(PLANTED_SIGNALS):
        if name in table:
            values[:, j] = table[name].to_numpy(dtype=float)
    height = 2.6 + 0.55 * max(len(table), 1)
    fig = Figure(figsize=(2.0 + 1.15 * len(PLANTED_SIGNALS), height), layout="constrained")
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#e6e6e6")
    shown = values if len(table) else np.full((1, len(PLANTED_SIGNALS)), np.nan)  # one grey row: nothing was planted
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(len(table)):
        for j, name in enumerate(PLANTED_SIGNALS):
            value = values[i, j]
            dark = np.isfinite(value) and abs(value - 0.5) > 0.35  # the ends of the colour map: white reads better
            ax.text(j, i, f"{value:.2f}" if np.isfinite(value) else "—", ha="center", va="center", fontsize=10,
                    color="dimgrey" if name not in table else "white" if dark else "black")
    ax.set_xticks(range(len(PLANTED_SIGNALS)), labels=[SIGNAL_LABELS[name] for name in PLANTED_SIGNALS], fontsize=8)
    rows = [f"{kind}\n(n={n:,})" for kind, n in zip(table["planted"], table["rows"], strict=True)] or [f"nothing planted besides {clean!r}"]
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=8)
    ax.tick_params(length=0)
    fig.colorbar(image, ax=ax, label="AUROC (0.5: chance)", shrink=0.9)
    absent = [name for name in PLANTED_SIGNALS if name not in table]
    fig.suptitle(f"Which signal catches which planted shift ({column!r}; against {clean_rows:,} {clean!r} rows)", fontsize=10)
    if absent:
        ax.set_xlabel(f"—: does not apply ({', '.join(absent)}; the audit's info says why)", fontsize=8)
    return Artifact.figure("planted_heatmap", fig, "AUROC of each uncertainty and unfamiliarity signal per planted shift")


def combined_rank(frame: pd.DataFrame) -> np.ndarray:
    return np.mean([rankdata(frame[c].to_numpy()) / len(frame) for c in frame.columns], axis=0)


def _worst_rows(context: AuditContext, frame: pd.DataFrame, n: int, kinds: np.ndarray | None = None) -> pd.DataFrame:
    rank = combined_rank(frame)
    order = np.argsort(-rank, kind="stable")[:n]
    current = context.current
    table = frame.iloc[order].reset_index(drop=True)
    table.insert(0, "combined_rank", rank[order])
    if kinds is not None:
        table.insert(0, "planted", kinds[order].tolist())
    if current.labelled:
        table.insert(0, "label", current.y.iloc[order].tolist())
    table.insert(0, "prediction", current.predictions.labels[order].tolist())
    table.insert(0, "row", [str(i) for i in current.X.index[order]])
    return table


def _pairs_figure(frame: pd.DataFrame, task: str, rng: np.random.Generator) -> Artifact:
    """Lower triangle: percentile ranks of each pair of scores (the quantity Spearman correlates);
    diagonal: each score's distribution. Colour: misclassified (classifiers) or |residual| rank."""
    names = [c for c in frame.columns if c != "error"]
    shown = np.sort(rng.choice(len(frame), size=min(PLOT_POINTS, len(frame)), replace=False))
    data = frame.iloc[shown]
    ranks = {c: rankdata(frame[c].to_numpy())[shown] / len(frame) for c in names}
    colour: dict = {"color": "tab:blue"}
    if "error" in data and task == "classification":
        colour = {"c": np.where(data["error"].to_numpy() > 0, "tab:red", "lightgrey")}
    elif "error" in data:
        colour = {"c": rankdata(frame["error"].to_numpy())[shown] / len(frame), "cmap": "viridis"}
    size = len(names)
    fig = Figure(figsize=(3.2 * size, 3.2 * size), layout="constrained")
    axes = fig.subplots(size, size, squeeze=False)
    for i, row_name in enumerate(names):
        for j, column_name in enumerate(names):
            ax = axes[i][j]
            if i == j:
                if "error" in data and task == "classification":
                    wrong = data["error"].to_numpy() > 0
                    bins = np.histogram_bin_edges(data[row_name], bins=30)
                    groups = [(data[row_name][mask], colour_, label) for mask, colour_, label in
                              ((~wrong, "lightgrey", "correct"), (wrong, "tab:red", "misclassified")) if mask.any()]
                    # an empty group has no density (0 / 0): drawn only when it has rows
                    ax.hist([g[0] for g in groups], bins=bins, color=[g[1] for g in groups], label=[g[2] for g in groups],
                            histtype="stepfilled", alpha=0.7, density=True)
                    ax.legend(fontsize="small")
                else:
                    ax.hist(data[row_name], bins=30, color="tab:blue", alpha=0.7)
                ax.set_xlabel(row_name)
            elif i > j:
                ax.scatter(ranks[column_name], ranks[row_name], s=5, alpha=0.6, **colour)
                ax.set_xlabel(f"rank of {column_name}")
                ax.set_ylabel(f"rank of {row_name}")
            else:
                ax.set_axis_off()
    note = {"classification": "red: misclassified", "regression": "colour: rank of |residual|"}[task] if "error" in data else "unlabelled"
    fig.suptitle(f"Current rows (n={len(shown)} shown; {note})")
    return Artifact.figure("scatter_matrix", fig, "Uncertainty and OOD scores against each other, coloured by error")
