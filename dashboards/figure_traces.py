"""Data keyed by trace meta ("sensor/T", "plan/Tc", "events/T", ...), which the pages'
JSON endpoints return for the browser to apply, and the fallback/stale status spans."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dashboards.figure_base import MAX_SPANS, SPAN_COLORS, TraceData, channel_of
from twin.spec import ProcessSpec, Tag, TagRole


def series_traces(
    spec: ProcessSpec, series: dict[str, Any], prefix: str = "", only: Sequence[str] | None = None
) -> TraceData:
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
                "x": time_s,
                "y": list(values) if values is not None else [None] * len(time_s),
            }
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


def _spread_polygon(
    x: list[float], values: Sequence[float | None], spread: Sequence[float | None]
) -> dict[str, list[Any]]:
    """A closed +/- spread outline around the plan: how unsure the twin is of itself."""
    if not x or len(spread) != len(values):
        return {"x": [], "y": []}
    pairs = list(zip(values, spread, strict=True))
    upper = [None if v is None or s is None else v + s for v, s in pairs]
    lower = [None if v is None or s is None else v - s for v, s in pairs]
    return {"x": x + x[::-1], "y": upper + lower[::-1]}


def event_traces(
    tags: Sequence[Tag], series: dict[str, Any], events: Sequence[dict[str, Any]]
) -> TraceData:
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


def status_spans(
    times: Sequence[float],
    statuses: Sequence[str],
    sample_period_s: float,
    max_spans: int = MAX_SPANS,
) -> list[Span]:
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
    return [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": s.x0,
            "x1": s.x1,
            "y0": 0,
            "y1": 1,
            "fillcolor": SPAN_COLORS.get(s.status, SPAN_COLORS["fallback"]),
            "line": {"width": 0},
            "layer": "below",
            "name": f"span:{s.status}",
        }
        for s in spans
    ]
