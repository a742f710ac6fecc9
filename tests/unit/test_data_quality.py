"""Data quality: the inferred suite holds on its own reference, planted faults are caught with the right
counts (checked against pandas), the user suite gates the verdict, the validation page shows every outcome."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from audits.core.plan import PlannedAudit
from audits.core.result import Verdict
from audits.core.runner import run_planned
from audits.data.data_quality import DataQualityAudit, DataQualityConfig
from audits.methods.expectations import BaselineSuite, infer_baseline
from tests.conftest import context_for, make_pipeline_model, make_tabular


def run(context, **config):
    audit = DataQualityAudit(DataQualityConfig.model_validate(config))
    return run_planned(PlannedAudit("data_quality", audit, DataQualityAudit.default_thresholds), context)


def table(result, name="expectations.json"):
    return next(a.content for a in result.artifacts if a.name == name)


class Tables(HTMLParser):
    """The text of every cell of every table on a page: tables -> rows -> cells (header rows included)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self.tags: list[str] = []
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
        elif tag == "br" and self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1] += "\n"

    def handle_data(self, data):
        if self.tables and self.tables[-1] and self.tables[-1][-1]:
            self.tables[-1][-1][-1] += data


def test_baseline_expectations_describe_the_reference():
    X, _ = make_tabular(200)
    suite = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in infer_baseline(X, ("colour",), BaselineSuite())}
    assert suite[("expect_table_columns_to_match_set", None)]["column_set"] == list(X.columns)
    between = suite[("expect_column_values_to_be_between", "x1")]
    assert (between["min_value"], between["max_value"]) == (X["x1"].min(), X["x1"].max())
    assert between["mostly"] == pytest.approx(0.99)  # without a current size: the configured share
    assert suite[("expect_column_values_to_not_be_null", "x3")]["mostly"] == pytest.approx(1 - X["x3"].isna().mean() - 0.02)
    assert suite[("expect_column_values_to_be_in_set", "colour")]["value_set"] == ["blue", "green", "red"]
    assert suite[("expect_column_values_to_be_of_type", "colour")]["type_"] == "str"
    assert ("expect_column_values_to_be_in_set", "x1") not in suite  # numeric: a range, not a domain


def test_the_reference_satisfies_its_own_baseline(tabular):
    X, y = tabular
    model = make_pipeline_model(X, y, "gbm")
    context = context_for(model, pd.concat([X, X]), pd.concat([y, y]), split=len(X))  # current == reference
    result = run(context)
    assert result.metrics["data_quality.baseline.failed"] == 0
    assert result.metrics["data_quality.baseline.evaluated"] > 10
    assert result.verdict is Verdict.PASS


def test_planted_faults_are_caught_with_pandas_counts(tabular):
    X, y = tabular
    model = make_pipeline_model(X, y, "gbm")
    current = X.iloc[250:].copy()
    rng = np.random.default_rng(0)
    current.loc[rng.random(len(current)) < 0.2, "x1"] = np.nan
    current.loc[current.index[:9], "colour"] = "purple"
    current.loc[current.index[10:20], "x2"] = 1e6
    context = context_for(model, pd.concat([X.iloc[:250], current]), y, split=250)
    result = run(context)
    outcomes = table(result).set_index(["expectation", "column"])
    null_row = outcomes.loc[("expect_column_values_to_not_be_null", "x1")]
    assert not null_row["success"]
    assert null_row["unexpected_percent"] == pytest.approx(100 * current["x1"].isna().mean())
    in_set = outcomes.loc[("expect_column_values_to_be_in_set", "colour")]
    assert not in_set["success"] and in_set["unexpected_percent"] == pytest.approx(100 * 9 / len(current))
    assert not outcomes.loc[("expect_column_values_to_be_between", "x2")]["success"]
    assert outcomes.loc[("expect_column_values_to_be_between", "x3")]["success"]
    assert result.metrics["data_quality.baseline.failed"] == 3
    assert result.metrics["data_quality.current.null_rate"] == pytest.approx(
        pd.concat([current, y.iloc[250:]], axis=1).isna().to_numpy().mean())
    assert result.verdict is Verdict.WARN  # baseline failures warn by default
    assert "x1" in result.info["failing_expectations"]


def test_the_user_suite_fails_the_audit_and_the_page_shows_every_outcome(classifier_context):
    result = run(
        classifier_context,
        expectations=[
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x1", "min_value": -0.5, "max_value": 0.5}},
            {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "colour"}},
        ],
    )
    assert result.metrics["data_quality.user.evaluated"] == 2 and result.metrics["data_quality.user.failed"] == 1
    assert result.verdict is Verdict.FAIL and "data_quality.user.failed" in result.reason
    pages = {a.name: a.content for a in result.artifacts if a.kind == "html"}
    assert set(pages) == {"data_docs.html"}
    page = pages["data_docs.html"]
    parsed = Tables(page)
    assert "script" not in parsed.tags and "link" not in parsed.tags and not re.search("https?:", page)  # self-contained, inert

    user, baseline = parsed.tables
    header, failed, passed = user
    assert header == ["outcome", "expectation", "column", "kwargs", "observed", "unexpected", "unexpected %", "unexpected values"]
    x1 = classifier_context.current.X["x1"]
    outside = x1[(x1 < -0.5) | (x1 > 0.5)]
    assert failed[:3] == ["fail", "expect_column_values_to_be_between", "x1"]
    assert json.loads(failed[3]) == {"column": "x1", "min_value": -0.5, "max_value": 0.5}
    assert failed[5] == str(len(outside)) and float(failed[6]) == pytest.approx(100 * len(outside) / len(x1), rel=1e-3)
    shown = [line.rsplit(" (\u00d7", 1) for line in failed[7].split("\n")]
    assert len(shown) == 5 and all(count == "1)" for _, count in shown)
    assert all(float(value) in set(outside) for value, _ in shown)  # the first unexpected values, as GX listed them
    assert passed[:3] == ["pass", "expect_column_values_to_not_be_null", "colour"] and passed[5] == "0"
    # the baseline suite: one row per expectation, failures first
    outcomes = [row[0] for row in baseline[1:]]
    assert len(outcomes) == result.metrics["data_quality.baseline.evaluated"]
    assert outcomes == sorted(outcomes, key=lambda o: o == "pass") and outcomes.count("fail") == result.metrics["data_quality.baseline.failed"]


def test_a_user_expectation_on_a_missing_column_fails_instead_of_crashing(classifier_context):
    result = run(classifier_context, expectations=[{"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "nope"}}])
    assert result.metrics["data_quality.user.failed"] == 1
    row = table(result).query("suite == 'user'").iloc[0]
    assert not row["success"] and "error" in row["observed"]
    page = next(a.content for a in result.artifacts if a.name == "data_docs.html")
    [cells] = Tables(page).tables[0][1:]
    assert cells[0] == "error" and cells[2] == "nope" and cells[4].startswith("error: ") and "nope" in cells[4]


def test_no_data_docs_when_disabled(classifier_context):
    result = run(classifier_context, data_docs=False, baseline={"enabled": False})
    assert not [a for a in result.artifacts if a.kind == "html"]
    assert result.metrics["data_quality.baseline.evaluated"] == 0


def test_null_tolerance_widens_with_sampling_noise_on_small_current_data():
    X = pd.DataFrame({"v": [np.nan] * 5 + list(range(95))})
    [nulls] = [e for e in infer_baseline(X, (), BaselineSuite(), current_rows=50) if e["type"] == "expect_column_values_to_not_be_null"]
    assert nulls["kwargs"]["mostly"] == pytest.approx(1 - 0.05 - 3 * np.sqrt(0.05 * 0.95 / 50), abs=1e-6)
    [large] = [e for e in infer_baseline(X, (), BaselineSuite(), current_rows=100_000) if e["type"] == "expect_column_values_to_not_be_null"]
    assert large["kwargs"]["mostly"] == pytest.approx(1 - 0.05 - 0.02)


def test_range_and_domain_tolerances_follow_chance_rates():
    rng = np.random.default_rng(0)
    small = pd.DataFrame({"v": rng.normal(size=99), "c": pd.Series(["a"] * 90 + [f"rare{i}" for i in range(9)], dtype="str")})
    suite = {e["type"]: e["kwargs"] for e in infer_baseline(small, ("c",), BaselineSuite(), current_rows=150)}
    p = 2 / 100  # a fresh draw lands outside the range of 99 values with probability 2/(n+1)
    assert suite["expect_column_values_to_be_between"]["mostly"] == pytest.approx(1 - p - 3 * np.sqrt(p * (1 - p) / 150), abs=1e-6)
    q = 9 / 99  # nine categories seen once: Good-Turing unseen mass
    assert suite["expect_column_values_to_be_in_set"]["mostly"] == pytest.approx(1 - q - 3 * np.sqrt(q * (1 - q) / 150), abs=1e-6)
    big = pd.DataFrame({"v": rng.normal(size=20_000)})
    [between] = [e for e in infer_baseline(big, (), BaselineSuite(), 20_000) if e["type"] == "expect_column_values_to_be_between"]
    assert between["kwargs"]["mostly"] == pytest.approx(0.99)  # large samples keep the configured share


def test_a_wider_spread_on_a_large_reference_is_caught():
    rng = np.random.default_rng(1)
    reference, current = rng.normal(size=20_000), 1.8 * rng.normal(size=20_000)
    X = pd.DataFrame({"v": np.concatenate([reference, current])})
    y = pd.Series(np.where(X["v"] > 0, "yes", "no"), name="label")
    from sklearn.linear_model import LogisticRegression

    context = context_for(LogisticRegression().fit(X, y), X, y, split=20_000)
    result = run(context, data_docs=False)
    outcomes = table(result).set_index(["expectation", "column"])
    assert not outcomes.loc[("expect_column_values_to_be_between", "v")]["success"]


def test_every_row_outcomes_equal_great_expectations_on_the_whole_frame(tabular):
    """Validated partition by partition and merged, each row-wise expectation has the counts and the verdict GX gives on
    the whole frame; an expectation that does not add up (a mean) is judged on the sample and says so."""
    from audits.methods.expectations import _indexed, _validate, native_outcome, scope
    from tests.unit.test_partial import merged_result

    X, y = tabular
    model = make_pipeline_model(X, y, "gbm")
    rng = np.random.default_rng(5)
    current = X.iloc[250:].copy()
    current.loc[current.index[rng.choice(len(current), 6, replace=False)], "x1"] = np.nan
    current.loc[current.index[rng.choice(len(current), 4, replace=False)], "x2"] = 50.0
    current.loc[current.index[rng.choice(len(current), 3, replace=False)], "colour"] = "purple"
    context = context_for(model, pd.concat([X.iloc[:250], current]), pd.concat([y.iloc[:250], y.iloc[250:]]), split=250)
    user = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x1", "mostly": 0.9}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "x1"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x2", "min_value": -10, "max_value": 10, "mostly": 0.95}},
        {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "colour", "value_set": ["red", "green", "blue"]}},
        {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x3", "min_value": -1, "max_value": 1}},
        # row-wise, but not counted by auditlens: GX validates it partition by partition
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "colour", "regex": "^(red|green|blue)$"}},
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "x2", "min_value": -10, "max_value": 10, "strict_min": True}},
    ]
    assert [scope(e["type"]) for e in user] == ["every row"] * 4 + ["sample"] + ["every row"] * 2
    assert [native_outcome(e, context.current.X) is None for e in user] == [False] * 4 + [True] * 3
    audit = DataQualityAudit(DataQualityConfig.model_validate({"expectations": user}))
    suites = {"user": user, "baseline": audit.fit(context)["suites"]["baseline"]}
    whole = _validate(pd.concat([context.current.X, context.current.y], axis=1),
                      {suite: [_indexed(e, i) for i, e in enumerate(items)] for suite, items in suites.items()})
    for pieces in (1, 4):
        result = merged_result(audit, context, pieces, seed=pieces)
        merged = next(a.content for a in result.artifacts if a.name == "gx_validation_results.json")
        for suite in ("user", "baseline"):
            by_index = {r["expectation_config"]["meta"]["auditlens_index"]: r for r in whole[suite]["results"]}
            assert len(merged[suite]["results"]) == len(by_index) > 0
            for i, r in enumerate(merged[suite]["results"]):
                reference = by_index[i]
                assert r["expectation_config"]["type"] == reference["expectation_config"]["type"]
                assert r["success"] == reference["success"], (suite, r["expectation_config"])
                assert r["result"].get("unexpected_count") == reference["result"].get("unexpected_count"), r["expectation_config"]
    user_results = merged["user"]["results"]
    assert [r["success"] for r in user_results] == [True, False, True, False, user_results[4]["success"], False, False]
    assert user_results[5]["result"]["unexpected_count"] == 3 and user_results[6]["result"]["unexpected_count"] == 4
    assert user_results[1]["result"]["unexpected_count"] == 6 and user_results[3]["result"]["unexpected_count"] == 3
    assert user_results[4]["meta"]["auditlens_scope"].startswith("sample of")
    assert "purple" in user_results[3]["result"]["partial_unexpected_list"]
