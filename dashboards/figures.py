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

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
SPAN_COLORS = {"fallback": "rgba(255, 165, 0, 0.18)", "stale": "rgba(148, 103, 189, 0.18)",
               "stopped": "rgba(127, 127, 127, 0.18)"}
# One colour per compared run (Plotly's qualitative palette, colour-blind friendlier order).
RUN_COLORS = ("rgb(31, 119, 180)", "rgb(255, 127, 14)", "rgb(44, 160, 44)",
              "rgb(214, 39, 40)", "rgb(148, 103, 189)", "rgb(140, 86, 75)",
              "rgb(227, 119, 194)", "rgb(23, 190, 207)")
ROW_HEIGHT_PX = 210
LEGEND_MARGIN_PX = 110  # room under the plots for the x-axis title and the legend
# Beyond this many fallback/stale spans, neighbours are merged: a band per step would
# bury the trends and slow the browser down.
MAX_SPANS = 300
_CHANNEL_OF_ROLE = {TagRole.SENSOR: "sensor", TagRole.ACTUATOR: "actuator",
                    TagRole.DISTURBANCE: "disturbance"}

TraceData = dict[str, dict[str, list[Any]]]
"""meta -> {"x": [...], "y": [...]} (and "hovertext" for events): what a page applies."""


def axis_title(tag: Tag) -> str:
    return f"{tag.name} [{tag.unit}]"


def channel_of(tag: Tag) -> str:
    return _CHANNEL_OF_ROLE[tag.role]


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


def plotted_tags(spec: ProcessSpec, series: dict[str, Any],
                 only: Sequence[str] | None = None) -> list[Tag]:
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
    watched = [t for t in spec.sensors
               if t.controlled or t.low is not None or t.high is not None]
    return [t.name for t in watched + list(spec.actuators)]


def _subplots(tags: Sequence[Tag], height_px: int) -> go.Figure:
    # Spacing in pixels, not a fraction: dozens of rows must still fit.
    return make_subplots(rows=max(len(tags), 1), cols=1, shared_xaxes=True,
                         vertical_spacing=min(0.03, 40 / height_px),
                         subplot_titles=[t.description or t.name for t in tags])


# ---------------------------------------------------------------- data keyed by trace meta


def series_traces(spec: ProcessSpec, series: dict[str, Any], prefix: str = "",
                  only: Sequence[str] | None = None) -> TraceData:
    """x/y of every measured, applied and setpoint trace of a series (of `only` tags)."""
    time_s = list(series.get("time_s", []))
    recorded = series.get("series", {})
    out: TraceData = {}
    for tag in spec.tags:
        if only is not None and tag.name not in only:
            continue
        channel = channel_of(tag)
        values = recorded.get(channel, {}).get(tag.name)
        if values is not None or tag.role is not TagRole.DISTURBANCE:
            out[f"{prefix}{channel}/{tag.name}"] = {
                "x": time_s, "y": list(values) if values is not None else [None] * len(time_s)}
        setpoints = recorded.get("setpoint", {}).get(tag.name)
        if tag.role is TagRole.SENSOR and setpoints is not None:
            out[f"{prefix}setpoint/{tag.name}"] = {"x": time_s, "y": list(setpoints)}
    return out


def plan_traces(spec: ProcessSpec, plan_at: dict[str, Any] | None) -> TraceData:
    """The plan of one step drawn ahead of it, and the +/- spread band around each sensor's
    plan (empty lists where the plan has no such tag, so a page clears an old plan)."""
    plan = (plan_at or {}).get("plan") or {}
    out: TraceData = {}
    for tag in list(spec.sensors) + list(spec.actuators):
        group = "actuators" if tag.role is TagRole.ACTUATOR else "sensors"
        values = list(plan.get(group, {}).get(tag.name) or [])
        offsets = list(plan.get("time_s", []))[: len(values)]
        x = [plan_at["time_s"] + dt for dt in offsets] if plan_at else []
        values = values[: len(x)]
        out[f"plan/{tag.name}"] = {"x": x, "y": values}
        if tag.role is TagRole.SENSOR:
            spread = list(plan.get("spread", {}).get(tag.name) or [])
            out[f"spread/{tag.name}"] = _spread_polygon(x, values, spread)
    return out


def _spread_polygon(x: list[float], values: Sequence[float | None],
                    spread: Sequence[float | None]) -> dict[str, list[Any]]:
    """A closed +/- spread outline around the plan: how unsure the twin is of itself."""
    if not x or len(spread) != len(values):
        return {"x": [], "y": []}
    pairs = list(zip(values, spread, strict=True))
    upper = [None if v is None or s is None else v + s for v, s in pairs]
    lower = [None if v is None or s is None else v - s for v, s in pairs]
    return {"x": x + x[::-1], "y": upper + lower[::-1]}


def event_traces(tags: Sequence[Tag], series: dict[str, Any],
                 events: Sequence[dict[str, Any]]) -> TraceData:
    """One marker per event, on its tag's row (untagged ones on the first row), placed on
    the plotted value at that time so the marker sits on its trace."""
    by_tag = {t.name: t for t in tags}
    out: TraceData = {}
    for event in events:
        tag = by_tag.get(event.get("tag") or "", tags[0])
        data = out.setdefault(f"events/{tag.name}", {"x": [], "y": [], "hovertext": []})
        data["x"].append(event["time_s"])
        data["y"].append(_value_near(series, tag, event["time_s"]))
        data["hovertext"].append(f"{event['kind']}: {event['message']}")
    return out


def _value_near(series: dict[str, Any], tag: Tag, time_s: float) -> float | None:
    """The plotted value at (or just before) `time_s`."""
    times = series.get("time_s", [])
    values = series.get("series", {}).get(channel_of(tag), {}).get(tag.name)
    if not times or not values:
        return None
    index = max(0, bisect_right(times, time_s) - 1)
    return values[index]


# ---------------------------------------------------------------- status spans


@dataclass(frozen=True)
class Span:
    """Steps the controller was not in normal operation: [x0, x1) in the run's seconds."""

    x0: float
    x1: float
    status: str

    def to_dict(self) -> dict[str, Any]:
        return {"x0": self.x0, "x1": self.x1, "status": self.status}


def status_spans(times: Sequence[float], statuses: Sequence[str],
                 sample_period_s: float, max_spans: int = MAX_SPANS) -> list[Span]:
    """Contiguous runs of non-"ok" steps; each step covers one sample period."""
    spans: list[Span] = []
    for time_s, status in zip(times, statuses, strict=True):
        if status == "ok":
            continue
        end = time_s + sample_period_s
        last = spans[-1] if spans else None
        if last and last.status == status and time_s <= last.x1 + 1e-9 * max(1.0, abs(end)):
            spans[-1] = Span(last.x0, end, status)
        else:
            spans.append(Span(time_s, end, status))
    return _coalesce(spans, max_spans)


def _coalesce(spans: list[Span], max_spans: int) -> list[Span]:
    """Merge neighbours of the same status across ever larger gaps until few enough remain."""
    if len(spans) <= max_spans:
        return spans
    gap = (spans[-1].x1 - spans[0].x0) / max_spans
    while len(spans) > max_spans:
        merged = [spans[0]]
        for span in spans[1:]:
            last = merged[-1]
            if span.status == last.status and span.x0 - last.x1 <= gap:
                merged[-1] = Span(last.x0, span.x1, span.status)
            else:
                merged.append(span)
        spans, gap = merged, gap * 2
    return spans


def span_shapes(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """Shaded bands across every subplot, Grafana-annotation style."""
    return [{"type": "rect", "xref": "x", "yref": "paper", "x0": s.x0, "x1": s.x1,
             "y0": 0, "y1": 1, "fillcolor": SPAN_COLORS.get(s.status, SPAN_COLORS["fallback"]),
             "line": {"width": 0}, "layer": "below", "name": f"span:{s.status}"}
            for s in spans]


# ---------------------------------------------------------------- the run (live) figure


def run_figure(spec: ProcessSpec, series: dict[str, Any],
               events: Sequence[dict[str, Any]] = (),
               plan_at: dict[str, Any] | None = None, *,
               spans: Sequence[Span] = (), live: bool = False,
               x_range: tuple[float, float] | None = None,
               only: Sequence[str] | None = None) -> go.Figure:
    """Sensors with limits shaded and their setpoints, actuators with their bounds, the
    plan of `plan_at` drawn ahead of it with its spread, events as markers and
    fallback/stale spans as bands. `live` adds empty plan and event traces on every row,
    for the page to fill as new steps arrive; `only` limits the rows to those tags."""
    tags = plotted_tags(spec, series, only)
    height = ROW_HEIGHT_PX * len(tags) + 120
    fig = _subplots(tags, height)
    plans = plan_traces(spec, plan_at)
    marks = event_traces(tags, series, events) if tags else {}
    for row, tag in enumerate(tags, start=1):
        _draw_tag(fig, row, tag, series)
        _draw_plan(fig, row, tag, plans, live)
        _draw_events(fig, row, tag, marks.get(f"events/{tag.name}"), live,
                     first=row == 1)
    for shape in span_shapes(spans):
        fig.add_shape(shape)
    if plan_at is not None:
        _draw_now(fig, plan_at, live)
    # the page writes UTC clock times on the ticks; the hover keeps the run's seconds
    fig.update_xaxes(title_text="time, UTC (hover: seconds since the run's start)",
                     row=len(tags), col=1)
    fig.update_xaxes(hoverformat=".1f")
    if x_range is not None:
        fig.update_xaxes(range=list(x_range))
    fig.update_layout(height=height, hovermode="x unified",
                      margin={"l": 70, "r": 20, "t": 60, "b": LEGEND_MARGIN_PX},
                      legend=_legend_below(height),
                      template="plotly_white", uirevision="keep")
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
        tag.role, DISTURBANCE_COLOR)
    # Actuators hold their value for the whole sample: draw them as steps.
    shape = "hv" if tag.role is TagRole.ACTUATOR else "linear"
    label = "measured" if tag.role is not TagRole.ACTUATOR else "applied"
    fig.add_trace(go.Scatter(x=time_s, y=values, name=f"{tag.name} {label}", mode="lines",
                             meta=f"{channel}/{tag.name}",
                             line={"color": color, "shape": shape}), row=row, col=1)
    setpoints = series.get("series", {}).get("setpoint", {}).get(tag.name)
    if tag.role is TagRole.SENSOR and setpoints:
        fig.add_trace(go.Scatter(x=time_s, y=setpoints, name=f"{tag.name} setpoint",
                                 mode="lines", meta=f"setpoint/{tag.name}",
                                 line={"color": SETPOINT_COLOR, "dash": "dash",
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


def _draw_plan(fig: go.Figure, row: int, tag: Tag, plans: TraceData, live: bool) -> None:
    if tag.role is TagRole.DISTURBANCE:
        return
    plan = plans.get(f"plan/{tag.name}", {"x": [], "y": []})
    if not plan["y"] and not live:
        return
    spread = plans.get(f"spread/{tag.name}")
    if spread is not None and (spread["x"] or live):
        fig.add_trace(go.Scatter(x=spread["x"], y=spread["y"], fill="toself",
                                 fillcolor=SPREAD_COLOR, line={"width": 0},
                                 meta=f"spread/{tag.name}", name=f"{tag.name} plan spread",
                                 hoverinfo="skip", showlegend=False), row=row, col=1)
    fig.add_trace(go.Scatter(x=plan["x"], y=plan["y"], name=f"{tag.name} plan",
                             mode="lines", meta=f"plan/{tag.name}",
                             line={"color": PLAN_COLOR, "dash": "dash",
                                   "shape": "hv" if tag.role is TagRole.ACTUATOR
                                   else "linear"}), row=row, col=1)


def _draw_now(fig: go.Figure, plan_at: dict[str, Any], live: bool = True) -> None:
    """A dotted line through every subplot at the step whose plan is drawn: "now" on a
    live loop, the chosen step on a stored run (it has no now)."""
    fig.add_shape(type="line", xref="x", yref="paper", x0=plan_at["time_s"],
                  x1=plan_at["time_s"], y0=0, y1=1, name="now",
                  line={"dash": "dot", "color": "black", "width": 1})
    fig.add_annotation(x=plan_at["time_s"], y=1.0, xref="x", yref="paper", yanchor="bottom",
                       text=(f"now (step {plan_at['step']})" if live
                             else f"plan made at step {plan_at['step']}"),
                       showarrow=False, name="now",
                       yshift=14)  # above the first row's title


def _draw_events(fig: go.Figure, row: int, tag: Tag, marks: dict[str, list[Any]] | None,
                 live: bool, first: bool) -> None:
    if not marks and not live:
        return
    marks = marks or {"x": [], "y": [], "hovertext": []}
    fig.add_trace(go.Scatter(
        x=marks["x"], y=marks["y"], hovertext=marks["hovertext"], mode="markers",
        name="safety events", legendgroup="events", showlegend=first,
        meta=f"events/{tag.name}", marker={"symbol": "x", "size": 9, "color": EVENT_COLOR},
        hoverinfo="text+x"), row=row, col=1)


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


def compare_figure(spec: ProcessSpec, runs: Sequence[ComparedRun],
                   only: Sequence[str] | None = None) -> go.Figure:
    """Runs of one process overlaid, one colour per run, one row per tag, limits shaded."""
    recorded: dict[str, Any] = {"series": {}}
    for run in runs:  # a disturbance is plotted when any run recorded it
        for channel, tags in run.series.get("series", {}).items():
            recorded["series"].setdefault(channel, {}).update(tags)
    tags = plotted_tags(spec, recorded, only)
    height = ROW_HEIGHT_PX * len(tags) + 140
    fig = _subplots(tags, height)
    for index, run in enumerate(runs):
        color = RUN_COLORS[index % len(RUN_COLORS)]
        traces = series_traces(spec, run.series, run.prefix)
        for row, tag in enumerate(tags, start=1):
            _draw_compared(fig, row, tag, run, traces, color)
    for row, tag in enumerate(tags, start=1):
        values = [v for run in runs for v in run.series.get("series", {})
                  .get(channel_of(tag), {}).get(tag.name, [])]
        _draw_limits(fig, row, tag, values)
        fig.update_yaxes(title_text=axis_title(tag), row=row, col=1)
    fig.update_xaxes(title_text="time [s]", row=len(tags), col=1)
    fig.update_layout(height=height, hovermode="x unified",
                      margin={"l": 70, "r": 20, "t": 60, "b": LEGEND_MARGIN_PX},
                      legend=_legend_below(height),
                      template="plotly_white", uirevision="keep")
    return fig


def _draw_compared(fig: go.Figure, row: int, tag: Tag, run: ComparedRun, traces: TraceData,
                   color: str) -> None:
    meta = f"{run.prefix}{channel_of(tag)}/{tag.name}"
    data = traces.get(meta)
    if data is None:
        return
    shape = "hv" if tag.role is TagRole.ACTUATOR else "linear"
    fig.add_trace(go.Scatter(x=data["x"], y=data["y"], name=run.label, meta=meta,
                             mode="lines", legendgroup=run.label, showlegend=row == 1,
                             line={"color": color, "shape": shape}), row=row, col=1)
    setpoint = traces.get(f"{run.prefix}setpoint/{tag.name}")
    if setpoint is not None:
        fig.add_trace(go.Scatter(x=setpoint["x"], y=setpoint["y"],
                                 name=f"{run.label} setpoint", mode="lines",
                                 meta=f"{run.prefix}setpoint/{tag.name}",
                                 legendgroup=run.label, showlegend=False,
                                 line={"color": color, "dash": "dash", "width": 1,
                                       "shape": "hv"}), row=row, col=1)


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


def summary_table(metrics_by_run: Mapping[int, Mapping[str, Any]],
                  columns: Sequence[MetricColumn] = SUMMARY_COLUMNS) -> dict[str, Any]:
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
            cells.append({"text": text, "best": value is not None
                          and best.get(column.key) == value})
        rows[run_id] = cells
    return {"columns": [{"key": c.key, "label": c.label, "unit": c.unit} for c in columns],
            "rows": rows}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def to_json(fig: go.Figure) -> str:
    """The figure as JSON that is safe inside a <script> element (no "</script>" in it)."""
    return fig.to_json().replace("<", "\\u003c").replace(">", "\\u003e")
