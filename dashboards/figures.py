"""Figure builders: plain data in, `go.Figure` out (no database, no HTTP), so they test alone.

`series` is the dict `api.services.get_series` returns; `events` are dicts with
time_s/kind/message/tag; `plan_at` is {"step", "time_s", "plan"} with `plan` as
stored (`twin.records.Plan.to_dict()`: time offsets in seconds after the step).
"""

from __future__ import annotations

import math
from bisect import bisect_right
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
EVENT_COLOR = "rgb(214, 39, 40)"
ROW_HEIGHT_PX = 210
_CHANNEL_OF_ROLE = {TagRole.SENSOR: "sensor", TagRole.ACTUATOR: "actuator",
                    TagRole.DISTURBANCE: "disturbance"}


def axis_title(tag: Tag) -> str:
    return f"{tag.name} [{tag.unit}]"


def limit_bands(low: float | None, high: float | None,
                values: Sequence[float | None]) -> list[tuple[float, float]]:
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


def plotted_tags(spec: ProcessSpec, series: dict[str, Any]) -> list[Tag]:
    """Sensors, then actuators, then disturbances; a disturbance only if it was recorded."""
    recorded = series.get("series", {})
    tags = list(spec.sensors) + list(spec.actuators)
    tags += [t for t in spec.disturbances if t.name in recorded.get("disturbance", {})]
    return tags


def run_figure(spec: ProcessSpec, series: dict[str, Any],
               events: Sequence[dict[str, Any]] = (),
               plan_at: dict[str, Any] | None = None) -> go.Figure:
    tags = plotted_tags(spec, series)
    fig = make_subplots(rows=len(tags), cols=1, shared_xaxes=True, vertical_spacing=0.03,
                        subplot_titles=[t.description or t.name for t in tags])
    for row, tag in enumerate(tags, start=1):
        _draw_tag(fig, row, tag, series)
        if plan_at and plan_at.get("plan"):
            _draw_plan(fig, row, tag, plan_at)
    _draw_events(fig, tags, series, events)
    if plan_at is not None:
        fig.add_vline(x=plan_at["time_s"], line_dash="dot", line_color="black", row="all",
                      col=1)
        fig.add_annotation(x=plan_at["time_s"], y=1.0, xref="x", yref="paper", yanchor="bottom",
                           text=f"now (step {plan_at['step']})", showarrow=False)
    fig.update_xaxes(title_text="time [s]", row=len(tags), col=1)
    fig.update_layout(height=ROW_HEIGHT_PX * len(tags) + 120, hovermode="x unified",
                      margin={"l": 70, "r": 20, "t": 60, "b": 50},
                      legend={"orientation": "h", "y": -0.05 / len(tags)},
                      template="plotly_white")
    return fig


def _draw_tag(fig: go.Figure, row: int, tag: Tag, series: dict[str, Any]) -> None:
    time_s = series.get("time_s", [])
    channel = _CHANNEL_OF_ROLE[tag.role]
    values = series.get("series", {}).get(channel, {}).get(tag.name, [])
    color = {TagRole.SENSOR: MEASURED_COLOR, TagRole.ACTUATOR: ACTUATOR_COLOR}.get(
        tag.role, DISTURBANCE_COLOR)
    # Actuators hold their value for the whole sample: draw them as steps.
    shape = "hv" if tag.role is TagRole.ACTUATOR else "linear"
    label = "measured" if tag.role is not TagRole.ACTUATOR else "applied"
    fig.add_trace(go.Scatter(x=time_s, y=values, name=f"{tag.name} {label}", mode="lines",
                             line={"color": color, "shape": shape}), row=row, col=1)
    setpoints = series.get("series", {}).get("setpoint", {}).get(tag.name)
    if tag.role is TagRole.SENSOR and setpoints:
        fig.add_trace(go.Scatter(x=time_s, y=setpoints, name=f"{tag.name} setpoint",
                                 mode="lines", line={"color": SETPOINT_COLOR, "dash": "dash",
                                                     "shape": "hv"}), row=row, col=1)
    _draw_limits(fig, row, tag, values)
    fig.update_yaxes(title_text=axis_title(tag), row=row, col=1)


def _draw_limits(fig: go.Figure, row: int, tag: Tag, values: Sequence[float | None]) -> None:
    for y0, y1 in limit_bands(tag.low, tag.high, values):
        fig.add_hrect(y0=y0, y1=y1, fillcolor=LIMIT_COLOR, line_width=0, layer="below",
                      row=row, col=1)
    for limit in (tag.low, tag.high):
        if limit is not None:
            fig.add_hline(y=limit, line_color=LIMIT_LINE, line_width=1, line_dash="dot",
                          row=row, col=1)


def _draw_plan(fig: go.Figure, row: int, tag: Tag, plan_at: dict[str, Any]) -> None:
    plan = plan_at["plan"]
    group = "actuators" if tag.role is TagRole.ACTUATOR else "sensors"
    values = plan.get(group, {}).get(tag.name)
    if not values:
        return
    offsets = plan.get("time_s", [])[: len(values)]
    x = [plan_at["time_s"] + dt for dt in offsets]
    spread = plan.get("spread", {}).get(tag.name)
    if spread and len(spread) == len(values):
        _draw_spread(fig, row, x, values, spread)
    fig.add_trace(go.Scatter(x=x, y=values, name=f"{tag.name} plan @ step {plan_at['step']}",
                             mode="lines", line={"color": PLAN_COLOR, "dash": "dash",
                                                 "shape": "hv" if group == "actuators"
                                                 else "linear"}), row=row, col=1)


def _draw_spread(fig: go.Figure, row: int, x: list[float], values: Sequence[float | None],
                 spread: Sequence[float | None]) -> None:
    """A +/- spread band around the plan: how unsure the twin is of its own prediction."""
    pairs = [(v, s) for v, s in zip(values, spread, strict=True)]
    upper = [None if v is None or s is None else v + s for v, s in pairs]
    lower = [None if v is None or s is None else v - s for v, s in pairs]
    fig.add_trace(go.Scatter(x=x + x[::-1], y=upper + lower[::-1], fill="toself",
                             fillcolor="rgba(255, 127, 14, 0.15)", line={"width": 0},
                             hoverinfo="skip", showlegend=False), row=row, col=1)


def _draw_events(fig: go.Figure, tags: list[Tag], series: dict[str, Any],
                 events: Sequence[dict[str, Any]]) -> None:
    """One marker per event, on its tag's subplot (untagged ones on the first)."""
    rows = {t.name: i for i, t in enumerate(tags, start=1)}
    by_row: dict[int, list[dict[str, Any]]] = {}
    for event in events:
        by_row.setdefault(rows.get(event.get("tag") or "", 1), []).append(event)
    for row, row_events in sorted(by_row.items()):
        tag = tags[row - 1]
        fig.add_trace(go.Scatter(
            x=[e["time_s"] for e in row_events],
            y=[_value_near(series, tag, e["time_s"]) for e in row_events],
            mode="markers", name="safety events", legendgroup="events",
            showlegend=row == min(by_row),
            marker={"symbol": "x", "size": 9, "color": EVENT_COLOR},
            hovertext=[f"{e['kind']}: {e['message']}" for e in row_events],
            hoverinfo="text+x"), row=row, col=1)


def _value_near(series: dict[str, Any], tag: Tag, time_s: float) -> float | None:
    """The plotted value at (or just before) `time_s`, so a marker sits on its trace."""
    times = series.get("time_s", [])
    values = series.get("series", {}).get(_CHANNEL_OF_ROLE[tag.role], {}).get(tag.name)
    if not times or not values:
        return None
    index = max(0, bisect_right(times, time_s) - 1)
    return values[index]

