"""Reading Great Expectations results: an expectation's kwargs without defaults, its error if it raised."""

from __future__ import annotations


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
