"""Segment labels: the value names segments and strata share."""

from __future__ import annotations

import pandas as pd

from audits.core.strata import stratum_labels


def labels_of(values: pd.Series) -> pd.Series:
    """Each value as a segment label: its string, '(missing)' for a missing value (the names strata have too)."""
    return pd.Series(stratum_labels(values), index=values.index, name=values.name)
