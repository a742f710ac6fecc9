"""Great Expectations for auditlens: expectations as config, the baseline suite inferred from the reference, validating
a partition natively where counts add up (and through GX otherwise), reading GX results."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator


def _compact(kwargs: dict) -> dict:
    """Kwargs for a table cell: long value lists shortened (the full suite is its own artifact)."""
    compact = {}
    for key, value in kwargs.items():
        if key == "batch_id":
            continue
        if isinstance(value, list) and len(value) > 6:
            value = [*value[:3], f"... {len(value)} values"]
        compact[key] = value
    return compact


def _error(result: dict) -> str | None:
    """The message of the exception GX caught while evaluating the expectation; None when there was none."""
    exception = result.get("exception_info") or {}
    # GX reports either one exception, or one per metric it failed to compute
    reports = [exception] if "raised_exception" in exception else [v for v in exception.values() if isinstance(v, dict)]
    raised = [r for r in reports if r.get("raised_exception")]
    return str(raised[0].get("exception_message") or "") if raised else None


NUMERIC_TYPES = [
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "Int8", "Int16", "Int32", "Int64", "Float32", "Float64",
]  # fmt: skip


def _gx() -> Any:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations

    return great_expectations


class Expectation(BaseModel):
    """One GX expectation as data, e.g. ``{type: expect_column_values_to_not_be_null, kwargs: {column: age}}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_to_gx(self) -> Expectation:
        _gx()
        from great_expectations.exceptions import ExpectationNotFoundError
        from great_expectations.expectations.registry import get_expectation_impl

        try:
            impl = get_expectation_impl(self.type)
        except ExpectationNotFoundError:
            raise ValueError(
                f"Great Expectations has no expectation {self.type!r}; see "
                "https://greatexpectations.io/expectations for the names (snake_case)"
            ) from None
        try:
            impl(**self.kwargs)
        except Exception as exc:  # GX raises pydantic v1 ValidationErrors: keep their text, drop the type
            raise ValueError(f"invalid kwargs for {self.type}: {' '.join(str(exc).split())}") from None
        return self


class BaselineSuite(BaseModel):
    """How the reference data becomes expectations for the current data."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    types: bool = True
    # Current data may exceed the reference null rate by this much, or by 3 standard errors of a
    # binomial rate at the current sample size when that is larger (small samples are noisy).
    null_rate_tolerance: float = Field(0.02, ge=0, le=1)
    # Shares of current values that must lie in the reference [min, max] / the reference categories.
    # Loosened where chance alone would break them: a fresh draw from the reference distribution falls
    # outside the sample's range with probability 2/(n+1), and outside its categories with the
    # Good-Turing estimate (categories seen once)/n; the allowed share is that rate plus 3 standard errors.
    range_mostly: float = Field(0.99, gt=0, le=1)
    domain_mostly: float = Field(0.99, gt=0, le=1)
    max_domain_size: int = Field(50, ge=1)  # larger categorical domains get no in-set expectation


def _python(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _mostly(configured: float, chance_rate: float, current_rows: int | None) -> float:
    """The configured share, or less when the rate expected by chance (plus 3 standard errors) needs it."""
    noise = 3 * np.sqrt(chance_rate * (1 - chance_rate) / current_rows) if current_rows else 0.0
    return round(1.0 - max(1.0 - configured, chance_rate + noise), 6)


def infer_baseline(reference: pd.DataFrame, categorical: tuple[str, ...], cfg: BaselineSuite, current_rows: int | None = None) -> list[dict]:
    """Expectations that the reference data satisfies by construction (columns, types, nulls, ranges, domains)."""
    expectations: list[dict] = [
        {"type": "expect_table_columns_to_match_set", "kwargs": {"column_set": list(reference.columns), "exact_match": True}}
    ]
    for column in reference.columns:
        series = reference[column]
        if cfg.types:
            if column not in categorical and pd.api.types.is_numeric_dtype(series):
                expectations.append(
                    {"type": "expect_column_values_to_be_in_type_list", "kwargs": {"column": column, "type_list": NUMERIC_TYPES}}
                )
            elif pd.api.types.is_string_dtype(series):
                # pandas 3 stores strings as 'str'; GX's in-type-list check never matches them
                expectations.append({"type": "expect_column_values_to_be_of_type", "kwargs": {"column": column, "type_": "str"}})
        null_rate = float(series.isna().mean())
        noise = 3 * np.sqrt(null_rate * (1 - null_rate) / current_rows) if current_rows else 0.0
        mostly = round(1.0 - null_rate - max(cfg.null_rate_tolerance, noise), 6)  # nulls have a base rate of their own
        if mostly > 0:
            expectations.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": column, "mostly": mostly}})
        present = series.dropna()
        if present.empty:
            continue
        if column not in categorical and pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            expectations.append(
                {
                    "type": "expect_column_values_to_be_between",
                    "kwargs": {
                        "column": column,
                        "min_value": _python(present.min()),
                        "max_value": _python(present.max()),
                        "mostly": _mostly(cfg.range_mostly, 2 / (len(present) + 1), current_rows),
                    },
                }
            )
        elif present.nunique() <= cfg.max_domain_size:
            counts = present.value_counts()
            domain = sorted({_python(v) for v in counts.index}, key=str)
            unseen_rate = float((counts == 1).sum()) / len(present)
            expectations.append(
                {
                    "type": "expect_column_values_to_be_in_set",
                    "kwargs": {"column": column, "value_set": domain, "mostly": _mostly(cfg.domain_mostly, unseen_rate, current_rows)},
                }
            )
    return expectations


def column_profile(reference: pd.DataFrame, current: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for column in reference.columns:
        ref, cur = reference[column], current[column] if column in current else None
        rows.append(
            {
                "column": column,
                "dtype_reference": str(ref.dtype),
                "dtype_current": str(cur.dtype) if cur is not None else "(missing)",
                "null_rate_reference": float(ref.isna().mean()),
                "null_rate_current": float(cur.isna().mean()) if cur is not None else float("nan"),
                "distinct_reference": int(ref.nunique()),
                "distinct_current": int(cur.nunique()) if cur is not None else 0,
            }
        )
    return pd.DataFrame(rows)


def _observed(result: dict) -> str:
    detail = result.get("result", {}) or {}
    if "observed_value" in detail:
        text = json.dumps(detail["observed_value"], default=str)
    elif "unexpected_count" in detail:
        partial = detail.get("partial_unexpected_list") or []
        text = f"{detail['unexpected_count']} unexpected, e.g. {json.dumps(partial[:5], default=str)}"
    else:
        text = ""
    error = _error(result)
    if error is not None:
        text = f"error: {error}"
    return text[:300]


# Expectations whose outcome on all the data follows from their outcome on each partition: row-wise ("map") expectations
# add their counts, and `mostly` is judged after the merge; schema expectations must hold in every partition. The rest
# (a column's mean, its distinct values, a row count...) do not add up over partitions: they are judged on the sample.
EVERY_PARTITION = frozenset({
    "expect_table_columns_to_match_set", "expect_table_columns_to_match_ordered_list", "expect_column_to_exist",
    "expect_table_column_count_to_equal", "expect_table_column_count_to_be_between",
})


KEPT_UNEXPECTED = 20  # unexpected values kept over all partitions (GX's SUMMARY keeps 20 per validation)


def scope(expectation_type: str) -> str:
    """'every row' for expectations that add up over partitions, 'sample' for the others."""
    _gx()
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )
    from great_expectations.expectations.registry import get_expectation_impl

    if expectation_type in EVERY_PARTITION:
        return "every row"
    impl = get_expectation_impl(expectation_type)
    return "every row" if issubclass(impl, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation)) else "sample"


# Expectations counted here, vectorised, when they come with only these kwargs: GX spends 2 to 5 s on each validation
# call whatever the rows (its metric graph), which per partition would cost more than reading and scoring the data.
# Each is tested equal to GX's own outcome and counts (tests/unit/test_data_quality.py); any other expectation, or
# other kwargs (strict bounds, parse_strings_as_datetimes...), goes to GX.
NATIVE = {
    "expect_column_values_to_not_be_null": {"column", "mostly"},
    "expect_column_values_to_be_between": {"column", "min_value", "max_value", "mostly"},
    "expect_column_values_to_be_in_set": {"column", "value_set", "mostly"},
    "expect_column_values_to_be_in_type_list": {"column", "type_list", "mostly"},
    "expect_column_values_to_be_of_type": {"column", "type_", "mostly"},
    "expect_table_columns_to_match_set": {"column_set", "exact_match"},
}


def native_outcome(expectation: dict, frame: pd.DataFrame) -> dict | None:
    """The outcome of ``expectation`` on ``frame`` as GX would give it, or None where GX must judge it."""
    kind, kwargs = expectation["type"], expectation["kwargs"]
    if kind not in NATIVE or set(kwargs) - NATIVE[kind]:
        return None
    out = {**_empty_outcome(), "partitions": 1}
    if kind == "expect_table_columns_to_match_set":
        if not kwargs.get("exact_match", True):
            return None
        out["success"] = set(frame.columns) == set(kwargs["column_set"])
        out["observed"] = json.dumps([str(c) for c in frame.columns])
        return out
    column = kwargs.get("column")
    if column not in frame.columns:
        return None  # GX reports its own error for a missing column
    values = frame[column]
    if kind == "expect_column_values_to_be_in_type_list":
        if values.dtype == object or not pd.api.types.is_numeric_dtype(values):
            return None
        out["observed"] = json.dumps(str(values.dtype))
        out["success"] = str(values.dtype) in (kwargs.get("type_list") or [])
        return out
    if kind == "expect_column_values_to_be_of_type":
        if str(values.dtype) != "str":
            return None
        out["observed"] = json.dumps("str")
        out["success"] = kwargs.get("type_") == "str"
        return out
    present = values.notna().to_numpy()
    if kind == "expect_column_values_to_not_be_null":
        unexpected = ~present
        missing = 0
    elif kind == "expect_column_values_to_be_between":
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            return None
        numbers = values.to_numpy(dtype=float, na_value=np.nan)
        inside = present.copy()
        if kwargs.get("min_value") is not None:
            inside &= numbers >= kwargs["min_value"]
        if kwargs.get("max_value") is not None:
            inside &= numbers <= kwargs["max_value"]
        unexpected, missing = present & ~inside, int((~present).sum())
    else:  # in_set
        unexpected = present & ~values.isin(list(kwargs.get("value_set") or [])).to_numpy()
        missing = int((~present).sum())
    out.update(counted=True, element_count=len(values), unexpected_count=int(unexpected.sum()), missing_count=missing,
               unexpected=[clipped(_python(v)) for v in values[unexpected].head(KEPT_UNEXPECTED).tolist()])
    out["success"] = _judged(out, kwargs.get("mostly", 1.0))
    return out


def _judged(outcome: dict, mostly: float) -> bool:
    nonmissing = outcome["element_count"] - outcome["missing_count"]
    return nonmissing == 0 or (nonmissing - outcome["unexpected_count"]) / nonmissing >= mostly


def _empty_outcome() -> dict:
    return {"partitions": 0, "success": True, "element_count": 0, "unexpected_count": 0, "missing_count": 0,
            "counted": False, "unexpected": [], "observed": None, "error": None}


def _outcome(result: dict) -> dict:
    """What one partition's GX result contributes: counts (row-wise), or success and observed value (schema, types)."""
    detail = result.get("result", {}) or {}
    out = _empty_outcome()
    out["partitions"] = 1
    out["success"] = bool(result["success"])
    out["error"] = _error(result)
    if "unexpected_count" in detail:
        out["counted"] = True
        out["element_count"] = int(detail.get("element_count") or 0)
        out["unexpected_count"] = int(detail.get("unexpected_count") or 0)
        out["missing_count"] = int(detail.get("missing_count") or 0)
        out["unexpected"] = [clipped(v) for v in (detail.get("partial_unexpected_list") or [])][:KEPT_UNEXPECTED]
    if "observed_value" in detail:
        out["observed"] = json.dumps(clipped(detail["observed_value"]), default=str)
    return out


def _merged_outcome(a: dict, b: dict) -> dict:
    if a["partitions"] == 0:
        return b
    if b["partitions"] == 0:
        return a
    return {
        "partitions": a["partitions"] + b["partitions"],
        "success": a["success"] and b["success"],
        "element_count": a["element_count"] + b["element_count"],
        "unexpected_count": a["unexpected_count"] + b["unexpected_count"],
        "missing_count": a["missing_count"] + b["missing_count"],
        "counted": a["counted"] or b["counted"],
        "unexpected": (a["unexpected"] + b["unexpected"])[:KEPT_UNEXPECTED],
        # the observed value of a partition where the expectation failed, if one did
        "observed": a["observed"] if (not a["success"] or b["success"]) and a["observed"] is not None else b["observed"],
        "error": a["error"] or b["error"],
    }


def _result_from(expectation: dict, outcome: dict) -> dict:
    """A GX-shaped result (as ``to_json_dict`` gives) for an expectation judged over every partition: counts summed,
    ``mostly`` judged on the sums (the share of non-missing rows that meet the expectation, as GX judges it)."""
    detail: dict[str, Any] = {}
    success = outcome["success"]
    if outcome["counted"]:
        nonmissing = outcome["element_count"] - outcome["missing_count"]
        unexpected = outcome["unexpected_count"]
        success = _judged(outcome, expectation["kwargs"].get("mostly", 1.0))
        detail = {"element_count": outcome["element_count"], "unexpected_count": unexpected,
                  "unexpected_percent": 100.0 * unexpected / nonmissing if nonmissing else None,
                  "missing_count": outcome["missing_count"],
                  "missing_percent": 100.0 * outcome["missing_count"] / outcome["element_count"] if outcome["element_count"] else None,
                  "partial_unexpected_list": outcome["unexpected"]}
    elif outcome["observed"] is not None:
        detail = {"observed_value": json.loads(outcome["observed"])}
    exception = {"raised_exception": outcome["error"] is not None, "exception_message": outcome["error"]}
    return {"success": bool(success) and outcome["error"] is None, "expectation_config": {"type": expectation["type"], "kwargs": expectation["kwargs"]},
            "result": detail, "exception_info": exception, "meta": {"auditlens_scope": "every row", "partitions": outcome["partitions"]}}


def _indexed(expectation: dict, index: int) -> dict:
    return {**expectation, "meta": {**(expectation.get("meta") or {}), "auditlens_index": index}}


def _with_target(ds: Any) -> pd.DataFrame:
    if ds.y is None:
        return ds.X
    return pd.concat([ds.X, ds.y.rename(ds.y.name)], axis=1)


def clipped(value: Any, limit: int = 1000) -> Any:
    """``value`` with every string longer than ``limit`` cut short (and saying so): GX copies unexpected values whole into
    its results, and one 5 MB cell of the data would otherwise be written several times into the record."""
    if isinstance(value, str):
        return value if len(value) <= limit else f"{value[:limit]}... ({len(value):,} characters)"
    if isinstance(value, dict):
        return {clipped(k, limit): clipped(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clipped(v, limit) for v in value]
    return value


def _validate(current: pd.DataFrame, suites: dict[str, list[dict]]) -> dict[str, dict]:
    """Validate each non-empty suite on ``current``; the JSON results by suite."""
    gx = _gx()
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # GX's default ephemeral context reserves a temporary folder for a Data Docs site; nothing here builds one
    config = DataContextConfig(store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
                               progress_bars=ProgressBarsConfig(globally=False))
    ctx = gx.get_context(project_config=config, mode="ephemeral")
    batch = ctx.data_sources.add_pandas("auditlens").add_dataframe_asset("current").add_batch_definition_whole_dataframe("all")
    definitions = []
    for suite_name, expectations in suites.items():
        if not expectations:
            continue
        suite = ctx.suites.add(gx.ExpectationSuite(name=suite_name, expectations=expectations))
        definitions.append(ctx.validation_definitions.add(gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)))
    if not definitions:
        return {}
    checkpoint = ctx.checkpoints.add(
        gx.Checkpoint(name="auditlens", validation_definitions=definitions, result_format={"result_format": "SUMMARY"})
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": current})
    validations: dict[str, dict] = {}
    for result in outcome.run_results.values():
        data = result.to_json_dict()
        validations[data["suite_name"]] = data
    return validations
