"""What a live control loop's client sends and reads (re-exported by api.schemas).

Requests are strict: numbers must be JSON numbers (`true` or `"350"` are refused, not
coerced), finite, and no key may repeat (api.contract). What the fields mean is written
here, in the OpenAPI a client is generated from.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from api.contract import DbId, UtcDatetime
from api.orm import ModelActivation, RunEvent, TwinModel
from api.services.jsonsafe import json_safe
from api.services.loop_operator import stored_settings
from api.services.loops import LoopView
from twin.operator import OperatorSettings
from twin.planner_names import PlannerName
from twin.records import StepRecord

TIME_S = (
    "the client's clock in seconds (relative, e.g. 0, 6, 12, or Unix time), strictly "
    "increasing from step to step; never further from zero than the server's Unix "
    "time plus TWIN_MAX_CLOCK_LEAD_S, nor more than TWIN_MAX_GAP_PERIODS sample "
    "periods ahead of the last step (plus the server time passed since it). "
    "Milliseconds are refused with that named"
)
STEP_STATUS = (
    "ok: the twin's plan went out, or the operator's mode chose the move "
    "(standby: the baseline's, off: a hold; see GET /api/loops/{id}/operator); "
    "fallback: the baseline or a safety check "
    "decided (solver failure, limit guard, model mismatch, a guarded or "
    "implausible value: see events); stale: measurements too old or missing, "
    "actuators held"
)
LoopStatus = Literal["ok", "fallback", "stale", "stopped"]
StepStatusName = Literal["ok", "fallback", "stale"]
TagValue = Annotated[FiniteFloat, Field(description="in the tag's engineering unit")]


class ModelRef(BaseModel):
    """A model as named from elsewhere (a loop, an activation)."""

    id: int
    name: str
    version: int
    sha256: str

    @classmethod
    def of(cls, model: TwinModel) -> ModelRef:
        return cls(id=model.id, name=model.name, version=model.version, sha256=model.sha256)


class EventOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    step: int | None = None
    time_s: float | None = None
    kind: str = Field(
        description="e.g. rate_limited, clipped_bounds, limit_guard, "
        "model_mismatch, implausible_readback, api_guard"
    )
    message: str
    tag: str | None = None

    @classmethod
    def of(cls, event: RunEvent) -> EventOut:
        return cls.model_validate(event)


class LoopCreate(BaseModel):
    """Start a live loop of `process`, driven by model `model_id`.

    `setpoints`: sensor -> target, in the sensor's unit; a controlled sensor left out
    gets its tag's nominal. Each must lie strictly inside its sensor's limits (else 422).
    `initial_actuators`: actuator -> the value the plant applies now; the first step moves
    from there. Left out: the first step's read-back, else the tag's nominal; an actuator
    with neither is refused at its first step, never guessed.
    `planner` makes a few timed plans on the model first: one whose p99 is over the shorter
    of its deadline and the sample period is refused (422, with a planner that keeps up).
    Send an `Idempotency-Key` header to retry a start safely: the same key (per API key)
    returns the loop the first request started."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "process": "cstr",
                    "model_id": 1,
                    "planner": "casadi",
                    "setpoints": {"T": 360.0},
                    "initial_actuators": {"Tc": 300.0},
                }
            ]
        },
    )

    process: str = Field(min_length=1, max_length=100, description="a process name")
    model_id: DbId = Field(description="a model trained for that process")
    planner: PlannerName = Field(
        default="casadi",
        description="the server enables some for live loops "
        "(TWIN_LOOP_PLANNERS; the NLP planners casadi-ipopt and casadi-fatrop are off by "
        "default, or for engineers only with TWIN_ENGINEER_LOOP_PLANNERS)",
    )
    setpoints: dict[str, TagValue] = Field(
        default_factory=dict, max_length=2_000, description="sensor -> setpoint"
    )
    initial_actuators: dict[str, TagValue] = Field(
        default_factory=dict,
        max_length=2_000,
        description="actuator -> the value applied now, within its bounds",
    )


class LoopOut(BaseModel):
    run_id: int
    status: LoopStatus = Field(
        description="stopped: the loop no longer runs; stale: no step for more than "
        "stale_after_s (or the last step held on stale data); else the last "
        "step's ok or fallback"
    )
    run_status: str = Field(description="the run's own status: running or stopped")
    process: str
    model_id: int | None = Field(description="the active model")
    model: ModelRef | None
    planner: str
    setpoints: dict[str, float] = Field(description="latest sensor setpoints")
    actuators: dict[str, float] = Field(
        description="latest actuator values sent; {} before the first step"
    )
    last_step: int | None
    last_time_s: float | None = Field(description="the client's time of the last step, s")
    age_s: float = Field(
        description="seconds since the last step arrived (since the start before the first)"
    )
    stale_after_s: float = Field(description="3 sample periods, s")
    started_at: UtcDatetime
    finished_at: UtcDatetime | None
    operator: dict[str, Any] = Field(
        description="the operator's settings: mode (on, standby, off), out_of_service "
        "(actuators), dropped (sensors), ranges (sensor -> {low, high}; absent when none), "
        "economic (actuator or sensor -> maximise or minimise; absent when none)"
    )

    @classmethod
    def of(cls, view: LoopView) -> LoopOut:
        run, last = view.run, view.last
        return cls(
            run_id=run.id,
            status=view.status,
            run_status=run.status,
            process=run.process.name,
            model_id=run.model_id,
            model=ModelRef.of(view.model) if view.model is not None else None,
            planner=str(run.config.get("planner", "")),
            setpoints=view.setpoints,
            actuators=view.actuators,
            last_step=last.step if last else None,
            last_time_s=last.time_s if last else None,
            age_s=view.age_s,
            stale_after_s=view.stale_after_s,
            started_at=run.started_at,
            finished_at=run.finished_at,
            operator=stored_settings(run).to_dict(),
        )


class SetpointOut(BaseModel):
    """The latest actuator setpoints of a loop: what its last step returned."""

    run_id: int
    step: int
    time_s: float = Field(description="the client's time of that step, s")
    status: LoopStatus = Field(description="the loop's status now (see LoopOut.status)")
    step_status: str = Field(description="that step's own status: " + STEP_STATUS)
    age_s: float = Field(description="seconds since that step arrived")
    actuators: dict[str, float]
    setpoints: dict[str, float] = Field(description="the sensor setpoints of that step")
    model_id: int | None

    @classmethod
    def of(cls, view: LoopView) -> SetpointOut:
        last = view.last
        assert last is not None  # LoopManager.latest_setpoint refuses a loop without steps
        return cls(
            run_id=view.run.id,
            step=last.step,
            time_s=last.time_s,
            status=view.status,
            step_status=last.status,
            age_s=view.age_s,
            actuators=view.actuators,
            setpoints=view.setpoints,
            model_id=view.run.model_id,
        )


class ModelSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model_id: DbId = Field(description="a model of the loop's process")
    reason: str = Field(
        min_length=1,
        max_length=500,
        pattern=r"\S",
        description="why: kept in the loop's model history",
    )


class SensorRange(BaseModel):
    """An operator's range of a sensor, in its engineering units: strictly inside the
    sensor's engineering limits, low below high."""

    model_config = ConfigDict(extra="forbid", strict=True)

    low: FiniteFloat
    high: FiniteFloat


class OperatorChange(BaseModel):
    """An operator's change to a live loop, from its next step on (any of the five)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    mode: str | None = Field(
        None,
        description="on: the twin plans; standby: the baseline "
        "drives while the twin keeps estimating; off: actuators hold "
        "at their read-back (doses at zero)",
    )
    out_of_service: dict[str, bool] = Field(
        default_factory=dict,
        description="actuator -> true: out of service (held at its "
        "measured value, the plan works around it); false: back in service",
    )
    dropped: dict[str, bool] = Field(
        default_factory=dict,
        description="sensor -> true: dropped (its setpoint is not chased); false: enabled again",
    )
    ranges: dict[str, SensorRange | None] = Field(
        default_factory=dict,
        description="sensor -> {low, high}: the operator's range. With a setpoint, the "
        "setpoint is moved into the range; without one, the sensor is left free inside the "
        "range and brought back to the nearest bound when outside. null clears the range",
    )
    economic: dict[str, Literal["maximise", "minimise"] | None] = Field(
        default_factory=dict,
        description="actuator or sensor -> maximise or minimise: the plan pushes it that "
        "way as far as the setpoints and limits allow (a small push: setpoints win). "
        "null clears the direction",
    )
    reason: str = Field(
        min_length=1,
        max_length=500,
        pattern=r"\S",
        description="why: kept in the audit log and on the trends",
    )

    def range_bounds(self) -> dict[str, tuple[float, float] | None]:
        """`ranges` as the service takes them: (low, high), or None to clear."""
        return {
            name: None if bounds is None else (bounds.low, bounds.high)
            for name, bounds in self.ranges.items()
        }


class OperatorOut(BaseModel):
    run_id: int
    mode: Literal["on", "standby", "off"]
    out_of_service: list[str] = Field(description="actuators out of service")
    dropped: list[str] = Field(description="sensors whose setpoints are not chased")
    ranges: dict[str, SensorRange] | None = Field(
        None, description="sensor -> the operator's range; absent when no sensor has one"
    )
    economic: dict[str, str] | None = Field(
        None, description="actuator or sensor -> maximise or minimise; absent when none"
    )

    @classmethod
    def of(cls, run_id: int, settings: OperatorSettings) -> OperatorOut:
        data = settings.to_dict()
        return cls(
            run_id=run_id,
            mode=data["mode"],
            out_of_service=data["out_of_service"],
            dropped=data["dropped"],
            ranges=data.get("ranges"),
            economic=data.get("economic"),
        )


class ActivationOut(BaseModel):
    id: int
    run_id: int
    model: ModelRef
    previous_model_id: int | None
    activated_at: UtcDatetime
    actor: str
    reason: str

    @classmethod
    def of(cls, activation: ModelActivation) -> ActivationOut:
        return cls(
            id=activation.id,
            run_id=activation.run_id,
            model=ModelRef.of(activation.model),
            previous_model_id=activation.previous_model_id,
            activated_at=activation.activated_at,
            actor=activation.actor,
            reason=activation.reason,
        )


class StepIn(BaseModel):
    """One sample of the plant; the answer carries the actuator values to apply now."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {
                    "time_s": 6.0,
                    "measurements": {"Ca": 0.5, "T": 350.2, "Caf": 1.0, "Tf": 350.0, "Tc": 300.0},
                }
            ]
        },
    )

    time_s: FiniteFloat = Field(description=TIME_S)
    measurements: dict[str, TagValue | None] = Field(
        description="tag -> value, in the tag's unit. Sensors: all of them, every step "
        "(null marks a missing sample, which the twin masks). Measured "
        "disturbances (e.g. glucose's CHO): absent or null means not measured "
        "this sample, read as nothing happening: a meal not reported gets no "
        "meal bolus. Actuators (optional): read-backs, the value the plant "
        "really applies; the next move is rate-limited from it, and it may "
        "only narrow a move: a read-back outside the actuator's bounds, or "
        "farther from the last command than its rate limit allows since, is "
        "ignored with an implausible_readback event and a fallback alarm. "
        "A value implausible for its tag's range that a unit mix-up explains "
        "(mmol/L for mg/dL, degC for K) is refused (422) with the mix-up named",
        max_length=2_000,
    )
    setpoints: dict[str, TagValue] | None = Field(
        default=None,
        max_length=2_000,
        description="sensor -> new setpoint from this step on (strictly inside its "
        "limits); left out: the previous ones",
    )


class StepOut(BaseModel):
    run_id: int
    step: int = Field(description="the step's number in the loop, from 0")
    time_s: float = Field(description="the step's time_s as sent")
    status: StepStatusName = Field(description=STEP_STATUS)
    actuators: dict[str, float] = Field(
        description="actuator -> value to apply now: always within its bounds and within "
        "its rate limit of the last command"
    )
    events: list[EventOut]
    solve_ms: float
    plan: dict[str, Any] | None
    margins: dict[str, float | None] = Field(description="distance to each sensor limit")

    @classmethod
    def of(cls, run_id: int, record: StepRecord) -> StepOut:
        return cls(
            run_id=run_id,
            step=record.step,
            time_s=record.time_s,
            status=str(record.status),
            actuators=record.actuators,  # type: ignore[arg-type]
            solve_ms=record.solve_ms,
            plan=json_safe(record.plan.to_dict()) if record.plan is not None else None,
            margins=json_safe(record.margins),
            events=[
                EventOut(
                    step=record.step,
                    time_s=record.time_s,
                    kind=e.kind,
                    message=e.message,
                    tag=e.tag,
                )
                for e in record.events
            ],
        )
