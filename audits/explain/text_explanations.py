"""Which words a text classifier's predictions rest on: word drop (leave one word out) and LIME's text explainer,
side by side for a few informative rows, aggregated per word, and shown as highlighted text.

Tokens are LIME's own: ``lime.lime_text.IndexedString`` with its default split expression ``\\W+`` and
bag-of-words indexing (a word is case-sensitive and counts once however often it occurs). Both methods therefore
score exactly the same words, and removing a word removes every occurrence of it, separators kept, as LIME does.

- Word drop: ``p_c(text) - p_c(text without the word)`` for every class ``c``; for a row, the effect of a word is
  that difference for the predicted class (positive: the word is evidence for the prediction). All perturbed texts
  go to the model in batched ``predict_proba`` calls; the model is only ever called on DataFrames of the text column.
- LIME: ``LimeTextExplainer`` with every word of the row in the surrogate (``feature_selection="none"``), explaining
  every class from the same perturbation sample; the row's effect is the weight for the predicted class, and
  LIME's weighted R^2 of that surrogate is its fidelity.

Rows: round robin over the most confident rows of each predicted class, the least confident rows and (with labels)
the most confident mistakes. The global view aggregates word drop over a larger seeded sample of current rows (the
explained rows included; one leave-one-out pass is cheap, and eight rows are an anecdote) and LIME over the
explained rows. Metric keys name summaries and rank positions, never words, so they stay identical across versions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from pydantic import Field

from audits.core import Artifact, Audit, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.methods.text import SPLIT_EXPRESSION, indexed
from audits.rendering.html import highlighted_fragment

WORD = re.compile(r"\w")
LIME_SEED = "text_explanations.lime"
SAMPLE_SEED = "text_explanations.global_rows"
SPLIT_SEED = "text_explanations.split_half"


class TextExplanationConfig(AuditConfig):
    rows: int = Field(8, ge=1, le=200)  # informative rows explained by both methods and highlighted
    num_samples: int = Field(500, ge=50)  # LIME's perturbed texts per row
    global_rows: int = Field(200, ge=0)  # word-drop sample for the global view (the explained rows always count)
    top_k: int = Field(3, ge=1)  # words compared per row between the methods
    global_top_k: int = Field(10, ge=1)  # words compared globally (split-half stability, method overlap)
    top_words: int = Field(20, ge=1)  # words in the global table and figure
    batch_size: int = Field(4096, ge=1)  # texts per predict_proba call


class TextFrame:
    """Texts in, probabilities out: the model sees a DataFrame with the text column only."""

    def __init__(self, predict_proba, column: str, batch_size: int) -> None:
        self.predict_proba, self.column, self.batch_size = predict_proba, column, batch_size

    def __call__(self, texts) -> np.ndarray:
        texts = list(texts)
        parts = [np.asarray(self.predict_proba(pd.DataFrame({self.column: texts[i:i + self.batch_size]})), dtype=float)
                 for i in range(0, len(texts), self.batch_size)]  # fmt: skip
        return np.concatenate(parts) if parts else np.zeros((0, 0))


def as_text(value) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


@dataclass(frozen=True)
class WordDrop:
    words: list[list[str]]  # per row, its distinct words in order of first occurrence
    effects: list[np.ndarray]  # per row, (words, classes): p(text) - p(text without the word)
    proba: np.ndarray  # (rows, classes) on the unchanged texts


def word_drop(texts: list[str], predict: TextFrame) -> WordDrop:
    """Leave each distinct word out (every occurrence), all perturbed texts in one batched pass."""
    docs = [indexed(t) for t in texts]
    batch = list(texts)
    for doc in docs:
        batch.extend(doc.inverse_removing([i]) for i in range(doc.num_words()))
    proba = predict(batch)
    full, start, effects = proba[: len(texts)], len(texts), []
    for r, doc in enumerate(docs):
        n = doc.num_words()
        effects.append(full[r] - proba[start:start + n])
        start += n
    return WordDrop([list(doc.inverse_vocab) for doc in docs], effects, full)


@dataclass(frozen=True)
class LimeWords:
    weights: list[np.ndarray]  # per row, (words, classes): the surrogate's weight of each word for each class
    fidelity: np.ndarray  # (rows,): weighted R^2 of the predicted class's surrogate


def lime_words(texts: list[str], targets: np.ndarray, predict: TextFrame, classes: list[str], seed: int,
               num_samples: int) -> LimeWords:  # fmt: skip
    from lime.lime_text import LimeTextExplainer

    explainer = LimeTextExplainer(class_names=classes, feature_selection="none", split_expression=SPLIT_EXPRESSION,
                                  bow=True, random_state=seed)  # fmt: skip
    weights, fidelity = [], []
    for text, target in zip(texts, targets, strict=True):
        n = indexed(text).num_words()
        labels = [c for c in range(len(classes)) if c != target] + [int(target)]  # LIME keeps the last label's score
        explanation = explainer.explain_instance(text, predict, labels=labels, num_features=n, num_samples=num_samples)
        row = np.zeros((n, len(classes)))
        for label in labels:
            for word, weight in explanation.as_map()[label]:
                row[word, label] = weight
        weights.append(row)
        fidelity.append(float(explanation.score))
    return LimeWords(weights, np.array(fidelity))


def choose_rows(context: AuditContext, n: int, texts: list[str]) -> pd.DataFrame:
    """Up to ``n`` rows with at least one word: columns position, row, reason. Deterministic, no row twice."""
    ds = context.current
    proba = ds.predictions.proba
    predicted = predicted_index(context, ds.predictions.labels, proba)
    confidence = proba[np.arange(len(proba)), predicted]
    usable = np.array([WORD.search(t) is not None for t in texts], dtype=bool)  # LIME finds at least one word
    candidates: list[tuple[str, np.ndarray]] = []
    for c, name in enumerate(context.model.classes):
        mine = np.flatnonzero(usable & (predicted == c))
        candidates.append((f"most confident {name}", mine[np.argsort(-confidence[mine], kind="stable")]))
    everyone = np.flatnonzero(usable)
    candidates.append(("least confident", everyone[np.argsort(confidence[everyone], kind="stable")]))
    if ds.y is not None:
        wrong = np.flatnonzero(usable & (np.asarray(ds.predictions.labels) != ds.y.to_numpy()))
        candidates.append(("misclassified", wrong[np.argsort(-confidence[wrong], kind="stable")]))
    chosen: dict[int, str] = {}
    cursors = [0] * len(candidates)
    while len(chosen) < n and any(cur < len(order) for cur, (_, order) in zip(cursors, candidates, strict=True)):
        for i, (reason, order) in enumerate(candidates):  # round robin over the reasons
            while cursors[i] < len(order) and int(order[cursors[i]]) in chosen:
                cursors[i] += 1
            if cursors[i] < len(order) and len(chosen) < n:
                chosen[int(order[cursors[i]])] = reason
    positions = list(chosen)
    return pd.DataFrame({"position": positions, "row": [str(r) for r in ds.X.index[positions]],
                         "reason": [chosen[p] for p in positions]})  # fmt: skip


def predicted_index(context: AuditContext, labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """The predicted class as a column of ``proba`` (argmax where a label is not one of the model's classes)."""
    lookup = {c: i for i, c in enumerate(context.model.classes)}
    return np.array([lookup.get(label, int(np.argmax(p))) for label, p in zip(labels, proba, strict=True)], dtype=int)


def ranking(effects: np.ndarray) -> np.ndarray:
    """Word positions by decreasing |effect|; ties keep the order of first occurrence."""
    return np.argsort(-np.abs(effects), kind="stable")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def nan_mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else float("nan")


def nan_min(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.min()) if len(values) else float("nan")


def per_word(words: list[list[str]], effects: list[np.ndarray], targets: np.ndarray, n_classes: int) -> pd.DataFrame:
    """Per word over the rows given: 'rows' containing it, 'abs_sum' of |effect on the row's predicted class| and
    'signed_<c>', the sum of its effects on class c."""
    frame = pd.DataFrame({
        "word": [w for ws in words for w in ws],
        "abs": np.concatenate([np.abs(e[:, t]) for e, t in zip(effects, targets, strict=True)] or [np.zeros(0)]),
        **{f"signed_{c}": np.concatenate([e[:, c] for e in effects] or [np.zeros(0)]) for c in range(n_classes)},
    })  # fmt: skip
    grouped = frame.groupby("word", sort=True)
    out = grouped[[f"signed_{c}" for c in range(n_classes)]].sum()
    out.insert(0, "abs_sum", grouped["abs"].sum())
    out.insert(0, "rows", grouped.size())
    return out


def top_words(per_word_frame: pd.DataFrame, n_rows: int, k: int) -> list[str]:
    importance = per_word_frame["abs_sum"] / max(n_rows, 1)
    order = sorted(importance.index, key=lambda w: (-importance[w], w))
    return order[:k]


class TextExplanationAudit(Audit):
    """Word drop and LIME for a text classifier: highlighted rows, per-word aggregates, agreement of the methods."""

    name = "text_explanations"
    question = "behaviour"
    metric_keys = (
        "agreement.{global_top_k_overlap,spearman_mean,spearman_min,top1_match,top_k_overlap}",
        "global.{rank_*.mean_abs_effect,rows,top_k_share,vocabulary}", "lime.fidelity_{mean,min}", "rows_explained",
        "stability.split_half_top_k_jaccard", "word_drop.{max_abs_effect_mean,top_word_share_mean}",
    )
    Config = TextExplanationConfig
    requires = Requirements(modalities=("text",), probabilities=True, tasks=("classification",))
    description = ("Which words a text classifier relies on: leave-one-word-out and LIME for informative rows, "
                   "highlighted, aggregated per word, and how far the two methods agree.")  # fmt: skip
    # Two honest methods that rank a row's words very differently mean at least one of them misdescribes the model
    # there (LIME's surrogate misses interactions, or one word alone changes nothing while groups of words do).
    # A warning, not a failure: it is a reason to distrust the explanations, not evidence against the model.
    default_thresholds = (Threshold(metric="agreement.top1_match", min=0.5, severity="warn"),)

    def compute(self, context: AuditContext) -> AuditResult:
        cfg: TextExplanationConfig = self.config
        column, classes = context.text_column, [str(c) for c in context.model.classes]
        n_classes = len(classes)
        predict = TextFrame(context.model.predict_proba, column, cfg.batch_size)
        texts = [as_text(v) for v in context.current.X[column]]
        chosen = choose_rows(context, cfg.rows, texts)
        if chosen.empty:
            raise ValueError(f"no current row of {column!r} has a word to explain")
        positions = chosen["position"].to_numpy()
        others = np.setdiff1d(np.flatnonzero([WORD.search(t) is not None for t in texts]), positions)
        extra = max(0, cfg.global_rows - len(positions))
        if len(others) > extra:
            others = np.sort(context.rng(SAMPLE_SEED).choice(others, size=extra, replace=False))
        sample = np.concatenate([positions, others]).astype(int)

        drop = word_drop([texts[p] for p in sample], predict)
        sample_target = predicted_index(context, np.asarray(context.current.predictions.labels)[sample], drop.proba)
        target = sample_target[: len(positions)]
        local_texts = [texts[p] for p in positions]
        lime = lime_words(local_texts, target, predict, classes, context.random_state(LIME_SEED), cfg.num_samples)

        n = len(positions)
        row_drop = [drop.effects[r][:, target[r]] for r in range(n)]
        row_lime = [lime.weights[r][:, target[r]] for r in range(n)]
        words = drop.words[:n]

        # per row: how the two rankings compare
        spearmans, top1, overlaps, top_share = [], [], [], []
        for d, w in zip(row_drop, row_lime, strict=True):
            k = min(cfg.top_k, len(d))
            spearmans.append(spearman(d, w))
            found = np.abs(d).max() > 0 and np.abs(w).max() > 0  # a method that sees no effect names no top word
            top1.append(float(found and ranking(d)[0] == ranking(w)[0]))
            overlaps.append(len(set(ranking(d)[:k]) & set(ranking(w)[:k])) / k)
            top_share.append(float(np.abs(d).max() / np.abs(d).sum()) if np.abs(d).sum() > 0 else float("nan"))

        global_drop = per_word(drop.words, drop.effects, sample_target, n_classes)
        local_drop = per_word(words, drop.effects[:n], target, n_classes)
        local_lime = per_word(words, lime.weights, target, n_classes)
        kg = cfg.global_top_k
        halves = context.rng(SPLIT_SEED).permutation(len(sample))
        first, second = np.sort(halves[: len(sample) // 2]), np.sort(halves[len(sample) // 2:])
        split_tops = [set(top_words(per_word([drop.words[i] for i in half], [drop.effects[i] for i in half],
                                             sample_target[half], n_classes),
                                    len(half), kg)) for half in (first, second)]  # fmt: skip
        union = split_tops[0] | split_tops[1]
        drop_top, lime_top = top_words(local_drop, n, kg), top_words(local_lime, n, kg)
        importance = (global_drop["abs_sum"] / len(sample)).sort_values(ascending=False, kind="stable")
        total = float(global_drop["abs_sum"].sum())

        metrics = {
            "rows_explained": float(n),
            "global.rows": float(len(sample)),
            "global.vocabulary": float(len(global_drop)),
            "global.rank_1.mean_abs_effect": float(importance.iloc[0]) if len(importance) else float("nan"),
            "global.top_k_share": float(importance.iloc[:kg].sum() * len(sample) / total) if total > 0 else float("nan"),
            "word_drop.max_abs_effect_mean": nan_mean([np.abs(d).max() for d in row_drop]),
            "word_drop.top_word_share_mean": nan_mean(top_share),
            "lime.fidelity_mean": nan_mean(lime.fidelity),
            "lime.fidelity_min": nan_min(lime.fidelity),
            "agreement.spearman_mean": nan_mean(spearmans),
            "agreement.spearman_min": nan_min(spearmans),
            "agreement.top1_match": float(np.mean(top1)),
            "agreement.top_k_overlap": float(np.mean(overlaps)),
            "agreement.global_top_k_overlap": len(set(drop_top) & set(lime_top)) / max(min(kg, len(drop_top)), 1),
            "stability.split_half_top_k_jaccard": len(split_tops[0] & split_tops[1]) / len(union) if union else float("nan"),
        }

        words_table = global_table(global_drop, local_lime, len(sample), n, classes, cfg.top_words)
        rows = rows_table(chosen, context, target, drop.proba[:n], classes, words, row_drop, row_lime, lime.fidelity,
                          spearmans, overlaps, cfg.top_k)  # fmt: skip
        effects = pd.DataFrame({
            "row": [chosen["row"].iloc[r] for r in range(n) for _ in words[r]],
            "word": [w for ws in words for w in ws],
            "word_drop": np.concatenate(row_drop), "lime": np.concatenate(row_lime),
        })  # fmt: skip
        fragment = highlighted_fragment(chosen, context, local_texts, target, drop.proba[:n], classes, row_drop, row_lime,
                                        lime.fidelity)  # fmt: skip
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=(
                Artifact.fragment("highlighted", fragment, "Explained rows, words coloured by their effect on the predicted class"),
                Artifact.figure("top_words", top_words_figure(words_table, classes),
                                "Top words: mean |effect| and signed effect per class"),
                Artifact.table("words", words_table,
                               "Top words over the rows: word drop (global sample) and LIME (explained rows)"),
                Artifact.table("rows", rows, "Explained rows: why chosen, prediction, each method's top words, agreement"),
                Artifact.table("row_words", effects,
                               "Every word of every explained row: word drop and LIME weight for the predicted class"),
            ),  # fmt: skip
            info={
                "rows_by_reason": ", ".join(f"{k}: {v}" for k, v in chosen["reason"].value_counts(sort=False).items()),
                "top_words": ", ".join(words_table["word"].head(6)),
                "tokens": f"LIME's IndexedString: split on {SPLIT_EXPRESSION!r}, bag of words, case-sensitive",
                "effect": "p(predicted class | text) - p(predicted class | text without every occurrence of the word); "
                          "LIME: the surrogate's weight for the predicted class",
                "global_view": f"word drop over {len(sample)} current rows; LIME over the {n} explained rows",
                "num_samples": str(cfg.num_samples),
            },
        )


def global_table(global_drop: pd.DataFrame, local_lime: pd.DataFrame, n_sample: int, n_explained: int,
                 classes: list[str], top: int) -> pd.DataFrame:  # fmt: skip
    importance = global_drop["abs_sum"] / n_sample
    order = sorted(importance.index, key=lambda w: (-importance[w], w))[:top]
    frame = pd.DataFrame({"rank": np.arange(1, len(order) + 1), "word": order})
    frame["rows"] = global_drop.loc[order, "rows"].to_numpy()
    frame["word_drop_mean_abs"] = importance[order].to_numpy()
    frame["word_drop_mean_abs_where_present"] = (global_drop.loc[order, "abs_sum"] / global_drop.loc[order, "rows"]).to_numpy()
    for c, name in enumerate(classes):
        frame[f"word_drop_toward[{name}]"] = (global_drop.loc[order, f"signed_{c}"] / global_drop.loc[order, "rows"]).to_numpy()
    lime = local_lime.reindex(order)
    frame["lime_rows"] = lime["rows"].fillna(0).astype(int).to_numpy()
    frame["lime_mean_abs"] = (lime["abs_sum"].fillna(0.0) / max(n_explained, 1)).to_numpy()
    for c, name in enumerate(classes):
        frame[f"lime_toward[{name}]"] = (lime[f"signed_{c}"] / lime["rows"]).to_numpy()
    return frame


def rows_table(chosen, context, target, proba, classes, words, row_drop, row_lime, fidelity, spearmans, overlaps, k):
    y = context.current.y

    def top(effects, r):
        return ", ".join(words[r][j] for j in ranking(effects[r])[:k])

    return pd.DataFrame({
        "row": chosen["row"].to_numpy(),
        "reason": chosen["reason"].to_numpy(),
        "label": ["" if y is None else str(y.iloc[p]) for p in chosen["position"]],
        "predicted": [classes[t] for t in target],
        "probability": proba[np.arange(len(target)), target],
        "words": [len(w) for w in words],
        "word_drop_top": [top(row_drop, r) for r in range(len(target))],
        "lime_top": [top(row_lime, r) for r in range(len(target))],
        "spearman": spearmans,
        f"top_{k}_overlap": overlaps,
        "lime_fidelity_r2": fidelity,
    })  # fmt: skip


def top_words_figure(table: pd.DataFrame, classes: list[str]) -> Figure:
    shown = table.head(20).iloc[::-1]
    y = np.arange(len(shown))
    fig = Figure(figsize=(11, 0.28 * max(len(shown), 4) + 1.6), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": (3, 2)})
    left.barh(y + 0.2, shown["word_drop_mean_abs"], height=0.4, color="#7f7f7f", label="word drop (global sample)")
    left.barh(y - 0.2, shown["lime_mean_abs"], height=0.4, color="#ff7f0e", label="LIME (explained rows)")
    left.set_yticks(y, shown["word"].tolist(), fontsize=8)
    left.set_xlabel("mean |effect| over the rows (0 where the word is absent)")
    left.legend(fontsize=8, loc="lower right")
    left.set_title("Top words")
    signed = shown[[f"word_drop_toward[{c}]" for c in classes]].to_numpy(dtype=float)
    bound = float(np.nanmax(np.abs(signed))) if signed.size and np.isfinite(signed).any() else 1.0
    image = right.imshow(signed, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound, interpolation="nearest", origin="lower")
    right.set_yticks(y, shown["word"].tolist(), fontsize=8)
    right.set_xticks(np.arange(len(classes)), classes, fontsize=8, rotation=30)
    right.set_title("Word drop toward each class\n(mean where present; red: evidence for)", fontsize=9)
    fig.colorbar(image, ax=right, shrink=0.8)
    return fig
