"""The comparison page's table of summary metrics, the best value of each column marked."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MetricColumn:
    """One column of the comparison table; lower is better for every core metric."""

    key: str
    label: str
    unit: str = ""
    digits: int = 3


SUMMARY_COLUMNS = (
    MetricColumn("cost", "cost"),
    MetricColumn("violations", "constraint violations", "samples", 0),
    MetricColumn("worst_violation", "worst violation", "limit's unit"),
    MetricColumn("fallbacks", "fallback steps", "steps", 0),
    MetricColumn("plan_ms_median", "planning time median", "ms", 1),
    MetricColumn("plan_ms_p99", "planning time p99", "ms", 1),
)


def summary_table(
    metrics_by_run: Mapping[int, Mapping[str, Any]],
    columns: Sequence[MetricColumn] = SUMMARY_COLUMNS,
) -> dict[str, Any]:
    """Cells of the comparison table, with the best (lowest) value of each column marked.

    `{"columns": [...], "rows": {run_id: [{"text", "best"}]}}`; a run without the
    metric (a live loop still running) gets "—" and is not ranked."""
    best: dict[str, float] = {}
    for column in columns:
        values = [_number(m.get(column.key)) for m in metrics_by_run.values()]
        finite = [v for v in values if v is not None]
        if len(finite) > 1 and min(finite) < max(finite):
            best[column.key] = min(finite)
    rows = {}
    for run_id, metrics in metrics_by_run.items():
        cells = []
        for column in columns:
            value = _number(metrics.get(column.key))
            text = "—" if value is None else f"{value:.{column.digits}f}"
            cells.append(
                {"text": text, "best": value is not None and best.get(column.key) == value}
            )
        rows[run_id] = cells
    return {
        "columns": [{"key": c.key, "label": c.label, "unit": c.unit} for c in columns],
        "rows": rows,
    }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
