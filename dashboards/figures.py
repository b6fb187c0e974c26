"""Figure builders: plain data in, `go.Figure` (or plain dicts) out, no database, no HTTP,
so they test alone.

`series` is the dict `api.services.get_series` returns; `events` are dicts with
time_s/kind/message/tag; `plan_at` is {"step", "time_s", "plan"} with `plan` as
stored (`twin.records.Plan.to_dict()`: time offsets in seconds after the step).

Every trace a page updates in place carries a `meta` string ("sensor/T", "plan/Tc",
"events/T", "run3/actuator/Tc", ...): the pages' JSON endpoints return new data keyed
by the same strings (`series_traces`, `plan_traces`, `event_traces`), so the browser
never has to know how a figure was laid out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

# Re-exported: pages import every figure name from this module.
from dashboards.figure_base import (  # noqa: F401
    ACTUATOR_COLOR,
    DISTURBANCE_COLOR,
    EVENT_COLOR,
    LEGEND_MARGIN_PX,
    LIMIT_COLOR,
    LIMIT_LINE,
    MEASURED_COLOR,
    PLAN_COLOR,
    ROW_HEIGHT_PX,
    RUN_COLORS,
    SETPOINT_COLOR,
    SPAN_COLORS,
    SPREAD_COLOR,
    TraceData,
    axis_title,
    channel_of,
    focus_tags,
    limit_bands,
    plotted_tags,
    subplots,
)
from dashboards.figure_summary import SUMMARY_COLUMNS, MetricColumn, summary_table  # noqa: F401
from dashboards.figure_traces import (  # noqa: F401
    Span,
    event_traces,
    plan_traces,
    series_traces,
    span_shapes,
    status_spans,
)
from twin.spec import ProcessSpec, Tag, TagRole

# ---------------------------------------------------------------- the run (live) figure


def run_figure(
    spec: ProcessSpec,
    series: dict[str, Any],
    events: Sequence[dict[str, Any]] = (),
    plan_at: dict[str, Any] | None = None,
    *,
    spans: Sequence[Span] = (),
    live: bool = False,
    x_range: tuple[float, float] | None = None,
    only: Sequence[str] | None = None,
) -> go.Figure:
    """Sensors with limits shaded and their setpoints, actuators with their bounds, the
    plan of `plan_at` drawn ahead of it with its spread, events as markers and
    fallback/stale spans as bands. `live` adds empty plan and event traces on every row,
    for the page to fill as new steps arrive; `only` limits the rows to those tags."""
    tags = plotted_tags(spec, series, only)
    height = ROW_HEIGHT_PX * len(tags) + 120
    fig = subplots(tags, height)
    plans = plan_traces(spec, plan_at)
    marks = event_traces(tags, series, events) if tags else {}
    for row, tag in enumerate(tags, start=1):
        _draw_tag(fig, row, tag, series)
        _draw_plan(fig, row, tag, plans, live)
        _draw_events(fig, row, tag, marks.get(f"events/{tag.name}"), live, first=row == 1)
    for shape in span_shapes(spans):
        fig.add_shape(shape)
    if plan_at is not None:
        _draw_now(fig, plan_at, live)
    # the page writes UTC clock times on the ticks; the hover keeps the run's seconds
    fig.update_xaxes(
        title_text="time, UTC (hover: seconds since the run's start)", row=len(tags), col=1
    )
    fig.update_xaxes(hoverformat=".1f")
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    fig.update_layout(
        height=height,
        hovermode="x unified",
        margin={"l": 70, "r": 20, "t": 60, "b": LEGEND_MARGIN_PX},
        legend=_legend_below(height),
        template="plotly_white",
        uirevision="keep",
    )
    return fig


def _legend_below(height_px: int) -> dict[str, Any]:
    """A horizontal legend under the x-axis title, whatever the number of rows."""
    plot_px = max(height_px - 60 - LEGEND_MARGIN_PX, 1)
    return {"orientation": "h", "yanchor": "top", "y": -45 / plot_px, "x": 0}


def _draw_tag(fig: go.Figure, row: int, tag: Tag, series: dict[str, Any]) -> None:
    time_s = series.get("time_s", [])
    channel = channel_of(tag)
    values = series.get("series", {}).get(channel, {}).get(tag.name, [])
    color = {TagRole.SENSOR: MEASURED_COLOR, TagRole.ACTUATOR: ACTUATOR_COLOR}.get(
        tag.role, DISTURBANCE_COLOR
    )
    # Actuators hold their value for the whole sample: draw them as steps.
    shape = "hv" if tag.role is TagRole.ACTUATOR else "linear"
    label = "measured" if tag.role is not TagRole.ACTUATOR else "applied"
    fig.add_trace(
        go.Scatter(
            x=time_s,
            y=values,
            name=f"{tag.name} {label}",
            mode="lines",
            meta=f"{channel}/{tag.name}",
            line={"color": color, "shape": shape},
        ),
        row=row,
        col=1,
    )
    setpoints = series.get("series", {}).get("setpoint", {}).get(tag.name)
    if tag.role is TagRole.SENSOR and setpoints:
        fig.add_trace(
            go.Scatter(
                x=time_s,
                y=setpoints,
                name=f"{tag.name} setpoint",
                mode="lines",
                meta=f"setpoint/{tag.name}",
                line={"color": SETPOINT_COLOR, "dash": "dash", "shape": "hv"},
            ),
            row=row,
            col=1,
        )
    _draw_limits(fig, row, tag, values)
    fig.update_yaxes(title_text=axis_title(tag), row=row, col=1)


def _draw_limits(fig: go.Figure, row: int, tag: Tag, values: Sequence[float | None]) -> None:
    for y0, y1 in limit_bands(tag.low, tag.high, values):
        fig.add_hrect(
            y0=y0, y1=y1, fillcolor=LIMIT_COLOR, line_width=0, layer="below", row=row, col=1
        )
    for limit in (tag.low, tag.high):
        if limit is not None:
            fig.add_hline(
                y=limit, line_color=LIMIT_LINE, line_width=1, line_dash="dot", row=row, col=1
            )


def _draw_plan(fig: go.Figure, row: int, tag: Tag, plans: TraceData, live: bool) -> None:
    if tag.role is TagRole.DISTURBANCE:
        return
    plan = plans.get(f"plan/{tag.name}", {"x": [], "y": []})
    if not plan["y"] and not live:
        return
    spread = plans.get(f"spread/{tag.name}")
    if spread is not None and (spread["x"] or live):
        fig.add_trace(
            go.Scatter(
                x=spread["x"],
                y=spread["y"],
                fill="toself",
                fillcolor=SPREAD_COLOR,
                line={"width": 0},
                meta=f"spread/{tag.name}",
                name=f"{tag.name} plan spread",
                hoverinfo="skip",
                showlegend=False,
            ),
            row=row,
            col=1,
        )
    fig.add_trace(
        go.Scatter(
            x=plan["x"],
            y=plan["y"],
            name=f"{tag.name} plan",
            mode="lines",
            meta=f"plan/{tag.name}",
            line={
                "color": PLAN_COLOR,
                "dash": "dash",
                "shape": "hv" if tag.role is TagRole.ACTUATOR else "linear",
            },
        ),
        row=row,
        col=1,
    )


def _draw_now(fig: go.Figure, plan_at: dict[str, Any], live: bool = True) -> None:
    """A dotted line through every subplot at the step whose plan is drawn: "now" on a
    live loop, the chosen step on a stored run (it has no now)."""
    fig.add_shape(
        type="line",
        xref="x",
        yref="paper",
        x0=plan_at["time_s"],
        x1=plan_at["time_s"],
        y0=0,
        y1=1,
        name="now",
        line={"dash": "dot", "color": "black", "width": 1},
    )
    fig.add_annotation(
        x=plan_at["time_s"],
        y=1.0,
        xref="x",
        yref="paper",
        yanchor="bottom",
        text=(f"now (step {plan_at['step']})" if live else f"plan made at step {plan_at['step']}"),
        showarrow=False,
        name="now",
        yshift=14,
    )  # above the first row's title


def _draw_events(
    fig: go.Figure, row: int, tag: Tag, marks: dict[str, list[Any]] | None, live: bool, first: bool
) -> None:
    if not marks and not live:
        return
    marks = marks or {"x": [], "y": [], "hovertext": []}
    fig.add_trace(
        go.Scatter(
            x=marks["x"],
            y=marks["y"],
            hovertext=marks["hovertext"],
            mode="markers",
            name="safety events",
            legendgroup="events",
            showlegend=first,
            meta=f"events/{tag.name}",
            marker={"symbol": "x", "size": 9, "color": EVENT_COLOR},
            hoverinfo="text+x",
        ),
        row=row,
        col=1,
    )


# ---------------------------------------------------------------- comparison


@dataclass(frozen=True)
class ComparedRun:
    """One run of a comparison: its id, a short label and its (downsampled) series."""

    run_id: int
    label: str
    series: dict[str, Any]

    @property
    def prefix(self) -> str:
        return f"run{self.run_id}/"


def compare_figure(
    spec: ProcessSpec, runs: Sequence[ComparedRun], only: Sequence[str] | None = None
) -> go.Figure:
    """Runs of one process overlaid, one colour per run, one row per tag, limits shaded."""
    recorded: dict[str, Any] = {"series": {}}
    for run in runs:  # a disturbance is plotted when any run recorded it
        for channel, tags in run.series.get("series", {}).items():
            recorded["series"].setdefault(channel, {}).update(tags)
    tags = plotted_tags(spec, recorded, only)
    height = ROW_HEIGHT_PX * len(tags) + 140
    fig = subplots(tags, height)
    for index, run in enumerate(runs):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        traces = series_traces(spec, run.series, run.prefix)
        for row, tag in enumerate(tags, start=1):
            _draw_compared(fig, row, tag, run, traces, color)
    for row, tag in enumerate(tags, start=1):
        values = [
            v
            for run in runs
            for v in run.series.get("series", {}).get(channel_of(tag), {}).get(tag.name, [])
        ]
        _draw_limits(fig, row, tag, values)
        fig.update_yaxes(title_text=axis_title(tag), row=row, col=1)
    fig.update_xaxes(title_text="time [s]", row=len(tags), col=1)
    fig.update_layout(
        height=height,
        hovermode="x unified",
        margin={"l": 70, "r": 20, "t": 60, "b": LEGEND_MARGIN_PX},
        legend=_legend_below(height),
        template="plotly_white",
        uirevision="keep",
    )
    return fig


def _draw_compared(
    fig: go.Figure, row: int, tag: Tag, run: ComparedRun, traces: TraceData, color: str
) -> None:
    meta = f"{run.prefix}{channel_of(tag)}/{tag.name}"
    data = traces.get(meta)
    if data is None:
        return
    shape = "hv" if tag.role is TagRole.ACTUATOR else "linear"
    fig.add_trace(
        go.Scatter(
            x=data["x"],
            y=data["y"],
            name=run.label,
            meta=meta,
            mode="lines",
            legendgroup=run.label,
            showlegend=row == 1,
            line={"color": color, "shape": shape},
        ),
        row=row,
        col=1,
    )
    setpoint = traces.get(f"{run.prefix}setpoint/{tag.name}")
    if setpoint is not None:
        fig.add_trace(
            go.Scatter(
                x=setpoint["x"],
                y=setpoint["y"],
                name=f"{run.label} setpoint",
                mode="lines",
                meta=f"{run.prefix}setpoint/{tag.name}",
                legendgroup=run.label,
                showlegend=False,
                line={"color": color, "dash": "dash", "width": 1, "shape": "hv"},
            ),
            row=row,
            col=1,
        )


def to_json(fig: go.Figure) -> str:
    """The figure as JSON that is safe inside a <script> element (no "</script>" in it)."""
    return fig.to_json().replace("<", "\\u003c").replace(">", "\\u003e")
