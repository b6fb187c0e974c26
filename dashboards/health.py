"""The health cards of a run page: is the unit safe, is the controller doing well, can
the model be trusted, each judged on the run's latest steps."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.services import alarms as alarm_service
from api.services import runs as run_service
from api.services import trend_reads as reads
from twin.spec import ProcessSpec, Tag

# The health cards judge the latest steps: long enough to average, short enough to be "now".
RECENT_STEPS = 300


@dataclass(frozen=True)
class HealthCard:
    """One answer at a glance: is the unit safe, is the controller doing well, can I
    trust the model. `verdict` is ok / warn / bad / unknown."""

    key: str
    title: str
    verdict: str
    headline: str
    detail: str


@dataclass(frozen=True)
class Recent:
    """The latest steps of a run: statuses and values aligned on `steps`."""

    steps: list[int]
    statuses: list[str]
    values: dict[str, dict[str, list[float | None]]]  # channel -> tag -> aligned values


def recent(session: Session, run_id: int, spec: ProcessSpec, count: int = RECENT_STEPS) -> Recent:
    last = run_service.last_step(session, run_id)
    if last is None:
        return Recent([], [], {})
    rows = reads.step_rows_between(session, run_id, last.step - count + 1, last.step)
    steps = [r.step for r in rows]
    column = {step: i for i, step in enumerate(steps)}
    values: dict[str, dict[str, list[float | None]]] = {}
    sensors = [t.name for t in spec.sensors]
    for channel, tag, step, value in reads.values_of_tags(
        session, run_id, ["sensor", "setpoint", "prediction"], sensors, steps[0], steps[-1]
    ):
        values.setdefault(channel, {}).setdefault(tag, [None] * len(steps))[column[step]] = value
    return Recent(steps, [r.status for r in rows], values)


def health_cards(spec: ProcessSpec, recent: Recent, status: str | None) -> list[HealthCard]:
    return [
        _safety_card(spec, recent),
        _controller_card(spec, recent, status),
        _model_card(spec, recent),
    ]


def _last_value(values: Sequence[float | None]) -> float | None:
    return next((v for v in reversed(values) if v is not None), None)


def _safety_card(spec: ProcessSpec, recent: Recent) -> HealthCard:
    """The sensor closest to (or beyond) a hard limit at the latest step. Margins are
    compared as fractions of each sensor's operating span (as the alarms judge an
    approach), so kelvins and mol/L can be ranked together."""
    margins: list[tuple[float, float, Tag, str, float]] = []
    for tag in spec.sensors:
        value = _last_value(recent.values.get("sensor", {}).get(tag.name, []))
        if value is None:
            continue
        setpoint = _last_value(recent.values.get("setpoint", {}).get(tag.name, []))
        span = alarm_service.approach_band(tag, setpoint, fraction=1.0)
        for side, limit in (("high", tag.high), ("low", tag.low)):
            if limit is None:
                continue
            margin = limit - value if side == "high" else value - limit
            scale = span if span else max(abs(limit), 1e-9)
            margins.append((margin / scale, margin, tag, side, limit))
    if not margins:
        return HealthCard(
            "safety",
            "Unit safe?",
            "unknown",
            "no limited sensor measured",
            "sensors with hard limits have no recent value",
        )
    fraction, margin, tag, side, limit = min(margins, key=lambda m: m[0])
    where = f"its {side} limit {limit:g} {tag.unit}"
    if margin < 0:
        return HealthCard(
            "safety",
            "Unit safe?",
            "bad",
            f"{tag.name} beyond {where}",
            f"{tag.name} is {-margin:.3g} {tag.unit} past {where}",
        )
    near = fraction < alarm_service.APPROACH_FRACTION
    return HealthCard(
        "safety",
        "Unit safe?",
        "warn" if near else "ok",
        f"{tag.name} close to {where}" if near else "all sensors inside their limits",
        f"closest: {tag.name}, {margin:.3g} {tag.unit} from {where} "
        f"({100 * fraction:.0f} % of its operating span)",
    )


def _controller_card(spec: ProcessSpec, recent: Recent, status: str | None) -> HealthCard:
    """Fallback share and tracking error over the latest steps."""
    if not recent.steps:
        return HealthCard(
            "controller",
            "Controller doing well?",
            "unknown",
            "no step yet",
            "waiting for the first measurements",
        )
    warm_up = _warm_up_steps(recent)
    n = len(recent.steps) - warm_up
    fallback = sum(s != "ok" for s in recent.statuses[warm_up:]) / max(n, 1)
    errors = []
    for tag in spec.controlled:
        measured = recent.values.get("sensor", {}).get(tag.name, [])
        setpoints = recent.values.get("setpoint", {}).get(tag.name, [])
        gaps = [
            abs(m - s)
            for m, s in zip(measured, setpoints, strict=False)
            if m is not None and s is not None
        ]
        if gaps:
            errors.append(
                f"{tag.name} off its setpoint by {statistics.fmean(gaps):.3g} {tag.unit} on average"
            )
    status = status or recent.statuses[-1]
    verdict = (
        "bad" if status == "stale" else "warn" if status == "fallback" or fallback > 0.1 else "ok"
    )
    return HealthCard(
        "controller",
        "Controller doing well?",
        verdict,
        f"{status} · {100 * fallback:.0f} % fallback/stale over {n} steps"
        + (f" after {warm_up} of warm-up" if warm_up else ""),
        "; ".join(errors) or "no controlled sensor with a setpoint",
    )


def _warm_up_steps(recent: Recent) -> int:
    """The fallback steps that open a run before the twin's first prediction: its window
    filling, by design (an event, not an alarm), so not held against the controller."""
    if not recent.steps or recent.steps[0] != 0:
        return 0
    predicted = [
        i for values in recent.values.get("prediction", {}).values() for i, v in enumerate(values)
        if v is not None
    ]  # fmt: skip
    first = min(predicted, default=len(recent.steps))
    leading = 0
    while leading < first and recent.statuses[leading] == "fallback":
        leading += 1
    return leading if leading < len(recent.steps) else 0


def _model_card(spec: ProcessSpec, recent: Recent) -> HealthCard:
    """The twin's one-step prediction error against persistence (tomorrow = today): a
    model worse than persistence is not worth trusting."""
    ratios: list[tuple[float, str]] = []
    for tag in spec.sensors:
        measured = recent.values.get("sensor", {}).get(tag.name, [])
        predicted = recent.values.get("prediction", {}).get(tag.name, [])
        pairs = [
            (p, m0, m1)
            for k, (p, m0, m1) in enumerate(zip(predicted, measured, measured[1:], strict=False))
            if recent.steps[k + 1] == recent.steps[k] + 1 and None not in (p, m0, m1)
        ]
        if len(pairs) < 2:
            continue
        twin = statistics.fmean(abs(p - m1) for p, _, m1 in pairs)
        naive = statistics.fmean(abs(m1 - m0) for _, m0, m1 in pairs)
        ratio = twin / naive if naive > 0 else (0.0 if twin == 0 else math.inf)
        ratios.append(
            (ratio, f"{tag.name}: {twin:.3g} {tag.unit} (persistence {naive:.3g} {tag.unit})")
        )
    if not ratios:
        return HealthCard(
            "model",
            "Model trustworthy?",
            "unknown",
            "no predictions recorded",
            "the controller stored no plan (baseline or fallback only)",
        )
    worst, text = max(ratios, key=lambda r: r[0])
    verdict = "ok" if worst < 1 else "warn" if worst < 2 else "bad"
    headline = (
        "one-step error below persistence"
        if worst < 1
        else f"one-step error {worst:.1f}x persistence"
    )
    return HealthCard(
        "model",
        "Model trustworthy?",
        verdict,
        headline,
        f"worst sensor, mean abs one-step error {text}",
    )
