"""Metric names and values as a plant engineer reads them: "max T (K)", "2.85 MB".

A process module's EPISODE_SUMMARY names its own metrics (label and unit); any other
key is read from its shape: words joined by "_", a trailing unit (`max_T_K` -> "max T
(K)"). Training metrics have fixed names. Numbers get four significant digits, sizes
kB/MB, durations s/min/h.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# a key's trailing word that is a unit, and how it is written
UNIT_SUFFIXES = {
    "K": "K",
    "C": "°C",
    "kPa": "kPa",
    "bar": "bar",
    "ms": "ms",
    "s": "s",
    "h": "h",
    "pct": "%",
    "kg": "kg",
    "kN": "kN",
    "rpm": "rpm",
    "m3h": "m³/h",
    "mgdl": "mg/dL",
    "W": "W",
    "kW": "kW",
}
# training metrics (`twin.train`) and a few common episode ones
KNOWN = {
    "epochs": ("epochs run", ""),
    "epochs_asked": ("epochs asked", ""),
    "epochs_done": ("epochs done (fractional: the budget cut one short)", ""),
    "stopped_by_budget": ("cut short by the time budget", ""),
    "budget_note": ("time budget", ""),
    "train_seconds": ("training time", "s"),
    "train_loss": ("training loss (normalised)", ""),
    "holdout_prediction": ("held-out embedding prediction error (MSE)", ""),
    "effective_rank": ("effective rank of embeddings", ""),
    "dim_std_min": ("smallest per-dimension std", ""),
    "readout_rmse": ("readout RMSE (held-out)", ""),
    "forecast_rmse": ("one-step forecast RMSE (held-out)", ""),
    "windows": ("training windows", ""),
    "cost": ("cost", ""),
    "violations": ("samples beyond a limit", ""),
    "fallbacks": ("fallback steps", ""),
    "steps": ("steps", ""),
}
HIDDEN = {"history", "readout_carry"}  # curves and per-step tables, never a cell


@dataclass(frozen=True)
class MetricRow:
    key: str
    label: str
    text: str


def metric_label(key: str, summary: Mapping[str, tuple[str, str]] | None = None) -> str:
    """ "max_T_K" -> "max T (K)"; a process's own label wins."""
    label, unit = (summary or {}).get(key) or KNOWN.get(key) or _from_shape(key)
    return f"{label} ({unit})" if unit else label


def _from_shape(key: str) -> tuple[str, str]:
    words = key.split("_")
    if len(words) > 1 and words[-1] in UNIT_SUFFIXES:
        return " ".join(words[:-1]), UNIT_SUFFIXES[words[-1]]
    return " ".join(words), ""


def number(value: float) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ")
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def human_bytes(size: float) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{int(size)} B"


def human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def value_text(value: Any, units: Mapping[str, str] | None = None) -> str:
    """A number, a yes/no, or a per-tag dict ("Ca ±0.02 mol/L · T ±0.31 K")."""
    if isinstance(value, bool | int | float):
        return number(value)
    if isinstance(value, Mapping):
        return " · ".join(
            f"{k} {value_text(v)}{' ' + units[k] if units and k in units else ''}"
            for k, v in value.items()
        )
    if isinstance(value, list | tuple):
        return ", ".join(value_text(v) for v in value)
    return str(value)


def metric_rows(
    metrics: Mapping[str, Any],
    summary: Mapping[str, tuple[str, str]] | None = None,
    units: Mapping[str, str] | None = None,
) -> list[MetricRow]:
    """Every metric but the curves, named and formatted; the process's own first."""
    order = list(summary or {}) + [k for k in metrics if k not in (summary or {})]
    rows = []
    for key in order:
        if key not in metrics or key in HIDDEN:
            continue
        value = metrics[key]
        if key.endswith("_seconds") and isinstance(value, int | float):
            text = human_seconds(float(value))
        else:
            text = value_text(value, units)
        rows.append(MetricRow(key, metric_label(key, summary), text))
    return rows


def summary_of(process_name: str) -> dict[str, tuple[str, str]]:
    """A process's own names for its episode metrics (empty for a process of files)."""
    from processes import find_process  # late: simulators are not free to import

    module = find_process(process_name)
    rows = getattr(module, "EPISODE_SUMMARY", None) or ()
    return {row.key: (row.label, row.unit) for row in rows}
