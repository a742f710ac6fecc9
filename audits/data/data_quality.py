"""Data quality with Great Expectations: a suite written in YAML, plus a baseline suite inferred
from the reference data, both validated on the current data.

Expectations stay plain ``{type, kwargs}`` data in our configuration; GX objects are built only
inside ``compute`` (GX's models are pydantic v1 and do not belong inside our v2 configuration).
GX runs here with an ephemeral context without a Data Docs site: nothing is written to disk.

The validation results are shown on one page of our own (``data_docs.html``), not GX's Data Docs: those pages
insert column names and values from the data unescaped (a value ``<script>...`` runs in MLflow's artifact
preview, an iframe that allows scripts on MLflow's origin), load their styling and scripts from public CDNs, and
cost about 4 MB of files per build. Ours escapes every value and loads nothing.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from pydantic import Field, field_validator

from audits.core import Artifact, AuditConfig, AuditContext, AuditResult, Requirements, Threshold
from audits.core.partial import PartialAudit
from audits.methods.expectations import (
    BaselineSuite,
    Expectation,
    _compact,
    _empty_outcome,
    _gx,
    _indexed,
    _merged_outcome,
    _observed,
    _outcome,
    _result_from,
    _validate,
    _with_target,
    clipped,
    column_profile,
    infer_baseline,
    native_outcome,
    scope,
)
from audits.rendering.html import validation_page

SUITES = ("user", "baseline")


class DataQualityConfig(AuditConfig):
    expectations: list[Expectation] = Field(default_factory=list)
    baseline: BaselineSuite = BaselineSuite()
    data_docs: bool = True  # the validation page, data_docs.html (the name is kept from GX's Data Docs, which it replaces)

    @field_validator("expectations", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return [] if value is None else value


class DataQualityAudit(PartialAudit):
    """Great Expectations suites (user-written and inferred from reference) validated on current data: the expectations
    that add up over partitions on every row, the others on the sample."""

    name = "data_quality"
    imports = ("great_expectations",)  # imported when it runs (audits.core.audit)
    question = "data"
    typical_cost_s = 2.0  # for the scheduler (audits.core.audit)
    metric_keys = (
        "{user,baseline}.{evaluated,failed,success_rate}", "failed_expectations", "{reference,current}.null_rate",
    )
    mode = "hybrid"  # the baseline suite is inferred from the reference sample, then validated on every current row
    requires = Requirements(modalities=("tabular", "image", "text"))
    Config = DataQualityConfig
    description = "Great Expectations: a user suite and a baseline suite inferred from reference data."
    default_thresholds = (
        Threshold(metric="user.failed", max=0, severity="fail"),
        Threshold(metric="baseline.failed", max=0, severity="warn"),
    )

    def fit(self, context: AuditContext) -> dict:
        """The suites, which expectations run on every row, and the outcome of the others on the current sample."""
        cfg: DataQualityConfig = self.config
        reference, current = _with_target(context.reference), _with_target(context.current)
        shared = [c for c in reference.columns if c in current.columns]
        suites = {
            "user": [e.model_dump() for e in cfg.expectations],
            "baseline": infer_baseline(reference[shared], context.categorical, cfg.baseline, len(current))
            if cfg.baseline.enabled
            else [],
        }
        scopes = {suite: [scope(e["type"]) for e in expectations] for suite, expectations in suites.items()}
        on_sample = {suite: [_indexed(e, i) for i, (e, where) in enumerate(zip(expectations, scopes[suite], strict=True))
                             if where == "sample"]
                     for suite, expectations in suites.items()}
        validated = _validate(current, on_sample) if any(on_sample.values()) else {}
        sample_results = {suite: {r["expectation_config"]["meta"]["auditlens_index"]: r for r in validation["results"]}
                          for suite, validation in validated.items()}
        return {"suites": suites, "scopes": scopes, "sample_results": sample_results}

    def init(self, context: AuditContext, fitted: Any) -> dict:
        return {
            "outcomes": {suite: [_empty_outcome() for _ in expectations] for suite, expectations in fitted["suites"].items()},
            "nulls": {side: {"cells": 0, "missing": 0} for side in ("reference", "current")},
        }

    def update(self, state: dict, partition: Any, context: AuditContext, fitted: Any) -> dict:
        frame = _with_target(partition)
        nulls = {**state["nulls"], partition.name: {"cells": state["nulls"][partition.name]["cells"] + int(frame.size),
                                                   "missing": state["nulls"][partition.name]["missing"] + int(frame.isna().to_numpy().sum())}}
        if partition.name != "current" or len(frame) == 0:
            return {**state, "nulls": nulls}
        outcomes = {suite: list(items) for suite, items in state["outcomes"].items()}
        to_gx: dict[str, list[dict]] = {}
        for suite, expectations in fitted["suites"].items():
            for i, (expectation, where) in enumerate(zip(expectations, fitted["scopes"][suite], strict=True)):
                if where != "every row":
                    continue
                native = native_outcome(expectation, frame)
                if native is None:
                    to_gx.setdefault(suite, []).append(_indexed(expectation, i))
                else:
                    outcomes[suite][i] = _merged_outcome(outcomes[suite][i], native)
        validations = _validate(frame, to_gx) if to_gx else {}
        for suite, validation in validations.items():
            for result in validation["results"]:
                i = result["expectation_config"]["meta"]["auditlens_index"]
                outcomes[suite][i] = _merged_outcome(outcomes[suite][i], _outcome(result))
        return {"outcomes": outcomes, "nulls": nulls}

    def merge(self, a: dict, b: dict) -> dict:
        return {
            "outcomes": {suite: [_merged_outcome(x, y) for x, y in zip(a["outcomes"][suite], b["outcomes"][suite], strict=True)]
                         for suite in a["outcomes"]},
            "nulls": {side: {k: a["nulls"][side][k] + b["nulls"][side][k] for k in ("cells", "missing")} for side in a["nulls"]},
        }

    def finalize(self, state: dict, context: AuditContext, fitted: Any, population: dict[str, int]) -> AuditResult:
        cfg: DataQualityConfig = self.config
        suites = fitted["suites"]
        validations: dict[str, dict] = {}
        for suite, expectations in suites.items():
            if not expectations:
                continue
            results = []
            for i, (expectation, where, outcome) in enumerate(zip(expectations, fitted["scopes"][suite], state["outcomes"][suite], strict=True)):
                if where == "every row":
                    results.append(_result_from(expectation, outcome))
                else:
                    result = dict(fitted["sample_results"][suite][i])
                    result["meta"] = {**(result.get("meta") or {}), "auditlens_scope": f"sample of {len(context.current):,} rows"}
                    results.append(result)
            validations[suite] = {"suite_name": suite, "success": all(r["success"] for r in results), "results": results,
                                  "meta": {"great_expectations_version": _gx().__version__}}
        reference, current = _with_target(context.reference), _with_target(context.current)
        metrics: dict[str, float] = {}
        rows = []
        for suite in SUITES:
            results = validations.get(suite, {}).get("results", [])
            failed = sum(not r["success"] for r in results)
            metrics[f"{suite}.evaluated"] = float(len(results))
            metrics[f"{suite}.failed"] = float(failed)
            metrics[f"{suite}.success_rate"] = 1.0 - failed / len(results) if results else float("nan")
            for r in results:
                config = r["expectation_config"]
                detail = r.get("result", {}) or {}
                rows.append(
                    {
                        "suite": suite,
                        "expectation": config["type"],
                        "column": config["kwargs"].get("column", ""),
                        "success": bool(r["success"]),
                        "unexpected_percent": detail.get("unexpected_percent"),
                        "observed": _observed(r),
                        "rows": r["meta"]["auditlens_scope"],
                        "kwargs": json.dumps(_compact(config["kwargs"]), default=str)[:500],
                    }
                )
        metrics["failed_expectations"] = metrics["user.failed"] + metrics["baseline.failed"]
        for side in ("current", "reference"):
            cells = state["nulls"][side]["cells"]
            metrics[f"{side}.null_rate"] = state["nulls"][side]["missing"] / cells if cells else 0.0

        table = pd.DataFrame(rows, columns=["suite", "expectation", "column", "success", "unexpected_percent", "observed", "rows", "kwargs"])
        table = table.sort_values(["success", "suite"], kind="stable").reset_index(drop=True)
        artifacts = [
            Artifact.table("expectations", table, "Every expectation and its outcome on current data (failures first)"),
            Artifact.table("columns", column_profile(reference, current),
                           f"Column profile: types, null rates, distinct values (on {len(reference):,} reference and "
                           f"{len(current):,} current rows)"),
            Artifact.json("gx_validation_results", clipped(validations), "Great Expectations validation results (JSON)"),
            Artifact.json("baseline_suite", clipped({"name": "baseline", "expectations": suites["baseline"]}), "The inferred baseline suite"),
        ]
        if cfg.data_docs:
            artifacts.append(Artifact.html("data_docs", validation_page({suite: validations.get(suite, {}) for suite in SUITES}, context.model.label, population["current"]),
                                           "Every expectation with its outcome on the current data (self-contained page)"))
        failing = table[~table["success"]].head(8)
        summary = "; ".join(f"{r.suite}: {r.expectation}({r.column})" for r in failing.itertuples())
        on_sample = sum(where == "sample" for scopes in fitted["scopes"].values() for where in scopes)
        return AuditResult(
            audit=self.name,
            metrics=metrics,
            artifacts=tuple(artifacts),
            info={"failing_expectations": summary or "none",
                  "expectations_on_every_row": f"{sum(len(v) for v in suites.values()) - on_sample} "
                                               f"({population['current']:,} current rows)",
                  "expectations_on_the_sample": f"{on_sample} ({len(current):,} current rows): they do not add up over partitions"},
        )


# ---------------------------------------------------------------------------------------------
# The validation page: every value from the data passes through html.escape, nothing is loaded
