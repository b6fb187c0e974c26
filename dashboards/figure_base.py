"""What every figure shares: colours, sizes, the trace-data shape, tag helpers and the
stacked subplots (see dashboards.figures)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from twin.spec import ProcessSpec, Tag, TagRole

LIMIT_COLOR = "rgba(214, 39, 40, 0.15)"
LIMIT_LINE = "rgb(214, 39, 40)"
MEASURED_COLOR = "rgb(31, 119, 180)"
SETPOINT_COLOR = "rgb(44, 160, 44)"
ACTUATOR_COLOR = "rgb(148, 103, 189)"
DISTURBANCE_COLOR = "rgb(127, 127, 127)"
PLAN_COLOR = "rgb(255, 127, 14)"
SPREAD_COLOR = "rgba(255, 127, 14, 0.2)"
EVENT_COLOR = "rgb(214, 39, 40)"
SPAN_COLORS = {
    "fallback": "rgba(255, 165, 0, 0.18)",
    "stale": "rgba(148, 103, 189, 0.18)",
    "stopped": "rgba(127, 127, 127, 0.18)",
}
# One colour per compared run (Plotly's qualitative palette, colour-blind friendlier order).
RUN_COLORS = (
    "rgb(31, 119, 180)",
    "rgb(255, 127, 14)",
    "rgb(44, 160, 44)",
    "rgb(214, 39, 40)",
    "rgb(148, 103, 189)",
    "rgb(140, 86, 75)",
    "rgb(227, 119, 194)",
    "rgb(23, 190, 207)",
)
ROW_HEIGHT_PX = 210
LEGEND_MARGIN_PX = 110  # room under the plots for the x-axis title and the legend
# Beyond this many fallback/stale spans, neighbours are merged: a band per step would
# bury the trends and slow the browser down.
MAX_SPANS = 300
_CHANNEL_OF_ROLE = {
    TagRole.SENSOR: "sensor",
    TagRole.ACTUATOR: "actuator",
    TagRole.DISTURBANCE: "disturbance",
}

TraceData = dict[str, dict[str, list[Any]]]
"""meta -> {"x": [...], "y": [...]} (and "hovertext" for events): what a page applies."""


def axis_title(tag: Tag) -> str:
    return f"{tag.name} [{tag.unit}]"


def channel_of(tag: Tag) -> str:
    return _CHANNEL_OF_ROLE[tag.role]


def limit_bands(
    low: float | None, high: float | None, values: Sequence[float | None]
) -> list[tuple[float, float]]:
    """Bands beyond each limit, wide enough to see next to the data (and the limit itself)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    points = finite + [v for v in (low, high) if v is not None]
    if not points or (low is None and high is None):
        return []
    span = max(points) - min(points)
    width = max(0.15 * span, 0.02 * max(abs(p) for p in points), 1e-6)
    bands = []
    if low is not None:
        bands.append((low - width, low))
    if high is not None:
        bands.append((high, high + width))
    return bands


def plotted_tags(
    spec: ProcessSpec, series: dict[str, Any], only: Sequence[str] | None = None
) -> list[Tag]:
    """Sensors, then actuators, then disturbances; a disturbance only if it was recorded;
    with `only`, those tags alone."""
    recorded = series.get("series", {})
    tags = list(spec.sensors) + list(spec.actuators)
    tags += [t for t in spec.disturbances if t.name in recorded.get("disturbance", {})]
    return tags if only is None else [t for t in tags if t.name in set(only)]


def focus_tags(spec: ProcessSpec, max_rows: int = 16) -> list[str]:
    """What a page shows first: every tag of a small process; of a large one (Tennessee
    Eastman has 53), the controlled and limited sensors and the actuators."""
    if len(spec.sensors) + len(spec.actuators) + len(spec.disturbances) <= max_rows:
        return [t.name for t in spec.tags]
    watched = [t for t in spec.sensors if t.controlled or t.low is not None or t.high is not None]
    return [t.name for t in watched + list(spec.actuators)]


def subplots(tags: Sequence[Tag], height_px: int) -> go.Figure:
    # Spacing in pixels, not a fraction: dozens of rows must still fit.
    return make_subplots(
        rows=max(len(tags), 1),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=min(0.03, 40 / height_px),
        subplot_titles=[t.description or t.name for t in tags],
    )
