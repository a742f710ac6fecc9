"""Text explanations: the planted words of the job adverts come first (synthetic truth), word drop equals a
closed form and a direct recomputation, the highlighted HTML escapes what it shows, determinism, SKIPPED on tables."""

from __future__ import annotations

import html
import re

import numpy as np
import pandas as pd
import pytest

from audits.core import ModelUnderAudit, Verdict
from audits.core.context import build_context
from audits.core.plan import PlannedAudit
from audits.core.runner import run_planned
from audits.explain.text_explanations import TextExplanationAudit, TextExplanationConfig
from audits.methods.synthetic import HIGH_WORDS, LOW_WORDS
from audits.testing import check_audit_contract

PLANTED = set(HIGH_WORDS) | set(LOW_WORDS)


def run(context, **config):
    audit = TextExplanationAudit(TextExplanationConfig(**config))
    return run_planned(PlannedAudit(audit.name, audit, audit.default_thresholds), context)


def artifact(result, name):
    return next(a for a in result.artifacts if a.name == name).content


@pytest.fixture(scope="module")
def text_result(text_context):
    return run(text_context)


class SoftmaxBagOfWords:
    """A linear model on word presence, not scikit-learn: p = softmax(bias + sum of the weights of the words present)."""

    def __init__(self, weights: dict[str, np.ndarray], bias: np.ndarray) -> None:
        self.weights, self.bias = weights, bias

    def logits(self, text: str) -> np.ndarray:
        return self.bias + sum((self.weights.get(w, 0.0) for w in set(re.findall(r"\w+", text))), np.zeros_like(self.bias))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        z = np.array([self.logits(t) for t in frame["text"]])
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def toy_context(texts: list[str], model: SoftmaxBagOfWords, classes: tuple[str, ...], seed: int = 0):
    X = pd.DataFrame({"text": texts})

    def predict(frame):
        return np.asarray(classes)[model.predict_proba(frame).argmax(axis=1)]

    m = ModelUnderAudit(task="classification", predict=predict, predict_proba=model.predict_proba, classes=classes,
                        flavor="pyfunc", uri="test://toy")  # fmt: skip
    return build_context(m, (X, None), (X, None), seed=seed, baseline_note="no baseline in this test", modality="text")


def test_planted_words_come_first_in_every_row(text_result, text_context):
    assert text_result.verdict is Verdict.PASS, text_result.reason
    effects = artifact(text_result, "row_words.json")
    texts = text_context.current.X["text"]
    rows = artifact(text_result, "rows.json")
    assert len(rows) == 8 and set(rows["reason"]) >= {"most confident high", "most confident low", "least confident"}
    for row, words in effects.groupby("row", sort=False):
        planted = PLANTED & set(texts.iloc[int(row)].split())
        assert len(planted) == 1
        for method in ("word_drop", "lime"):
            top = words.loc[words[method].abs().idxmax()]
            assert top["word"] in planted, (row, method, top["word"])
            assert top[method] > 0  # evidence for the (correctly) predicted class
            others = words[words["word"] != top["word"]][method].abs().max()
            assert top[method] > 3 * others, (row, method)


def test_global_top_six_words_are_the_planted_ones(text_result):
    words = artifact(text_result, "words.json")
    assert set(words["word"].head(6)) == PLANTED
    signed = words.set_index("word")["word_drop_toward[high]"]
    assert all(signed[w] > 0.3 for w in HIGH_WORDS) and all(signed[w] < -0.3 for w in LOW_WORDS)
    m = text_result.metrics
    assert m["text_explanations.agreement.top1_match"] == 1.0
    assert m["text_explanations.agreement.spearman_mean"] > 0.6
    assert m["text_explanations.global.top_k_share"] > 0.7  # the planted words carry most of the effect
    assert m["text_explanations.lime.fidelity_min"] > 0.8
    assert m["text_explanations.stability.split_half_top_k_jaccard"] >= 6 / 14  # the six planted words in both halves


def test_word_drop_matches_a_direct_recomputation(text_result, text_context):
    effects = artifact(text_result, "row_words.json")
    rows = artifact(text_result, "rows.json").set_index("row")
    proba = text_context.model.predict_proba
    classes = list(text_context.model.classes)
    for row, words in effects.groupby("row", sort=False):
        text = text_context.current.X["text"].iloc[int(row)]
        k = classes.index(rows.loc[row, "predicted"])
        shortened = [" ".join(t for t in text.split() if t != w) for w in words["word"]]
        without = proba(pd.DataFrame({"text": shortened}))[:, k]
        full = proba(pd.DataFrame({"text": [text]}))[0, k]
        np.testing.assert_allclose(words["word_drop"].to_numpy(), full - without, atol=1e-12)


def test_word_drop_of_a_linear_model_is_its_closed_form():
    classes = ("a", "b", "c")
    weights = {"alpha": np.array([2.0, 0.0, -1.0]), "beta": np.array([0.0, 1.5, 0.0]), "gamma": np.array([-0.5, 0.0, 1.0])}
    model = SoftmaxBagOfWords(weights, np.array([0.1, 0.0, -0.1]))
    texts = ["alpha beta, alpha! filler", "gamma beta words here", "beta gamma alpha", "alpha gamma gamma end",
             "just filler text", "beta"]  # fmt: skip
    result = run(toy_context(texts, model, classes), rows=6, num_samples=300)
    assert result.verdict is not Verdict.ERROR, result.reason

    def softmax(z):
        e = np.exp(z - z.max())
        return e / e.sum()

    rows = artifact(result, "rows.json").set_index("row")
    effects = artifact(result, "row_words.json")
    assert set(effects["row"]) == {str(i) for i in range(6)}
    for row, words in effects.groupby("row", sort=False):
        z = model.logits(texts[int(row)])
        k = classes.index(rows.loc[row, "predicted"])
        expected = [softmax(z)[k] - softmax(z - weights.get(w, 0.0))[k] for w in words["word"]]
        np.testing.assert_allclose(words["word_drop"].to_numpy(), expected, atol=1e-12)
    assert set(effects.loc[effects["row"] == "0", "word"]) == {"alpha", "beta", "filler"}  # 'alpha' once, all dropped


def test_highlighted_fragment_escapes_the_text():
    model = SoftmaxBagOfWords({"senior": np.array([3.0, 0.0]), "junior": np.array([0.0, 3.0])}, np.zeros(2))
    texts = ['<script>alert("x")</script> senior role', "junior <b>R&D</b> onclick='y' role",
             "senior <img src=x onerror=alert(1)>", "junior plain words"]  # fmt: skip
    result = run(toy_context(texts, model, ("high", "low")), rows=4, num_samples=100)
    fragment = artifact(result, "highlighted.html")
    assert result.verdict is not Verdict.ERROR, result.reason
    lowered = fragment.lower()
    assert "<script" not in lowered and "<img" not in lowered and "<b>" not in lowered
    shown = re.sub(r"<span [^>]*>|</span>", "", fragment)  # the text as displayed, highlighting removed
    for text in texts:
        assert html.escape(text) in shown
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in shown and "R&amp;D" in shown
    assert fragment.count('title="') == 2 * sum(len(re.findall(r"\w+", t)) for t in texts)  # every occurrence, both methods
    assert "rgba(214,39,40" in fragment and "rgba(31,119,180" in fragment  # red and blue, with the legend


def test_deterministic_under_a_seed_and_keeps_the_contract(text_context):
    first = check_audit_contract(TextExplanationAudit, text_context)
    assert not any(re.search("|".join(PLANTED), key) for key in first.metrics)  # no words in metric keys
    again = run(text_context)
    assert first.metrics == again.metrics


def test_skipped_on_tabular_data(classifier_context):
    reason = TextExplanationAudit().skip_reason(classifier_context)
    assert reason is not None and "text" in reason
    assert run(classifier_context).verdict is Verdict.SKIPPED


def test_warns_when_the_methods_disagree():
    """Redundant evidence: 'senior' OR 'principal' makes an advert high. With both present, leaving one out changes
    nothing (word drop is zero everywhere) while LIME, removing many words at once, finds both: the methods disagree."""

    class EitherWord:
        def predict_proba(self, frame):
            high = np.array([bool({"senior", "principal"} & set(re.findall(r"\w+", t))) for t in frame["text"]])
            return np.where(high[:, None], [[0.95, 0.05]], [[0.05, 0.95]])

    texts = ["we hire senior principal staff now", "our team wants a principal and senior lead",
             "join as senior principal engineer", "apply today senior principal role"]  # fmt: skip
    result = run(toy_context(texts, EitherWord(), ("high", "low")), rows=4, num_samples=300)
    m = result.metrics
    assert m["text_explanations.word_drop.max_abs_effect_mean"] == 0.0
    assert m["text_explanations.agreement.top1_match"] == 0.0
    lime = artifact(result, "row_words.json")
    top = lime.loc[lime.groupby("row", sort=False)["lime"].idxmax(), "word"]
    assert set(top) <= {"senior", "principal"}
    assert result.verdict is Verdict.WARN and "top1_match" in result.reason
