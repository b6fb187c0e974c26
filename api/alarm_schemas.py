"""What the alarm routes read and send: ISA-18.2 alarm points, their transitions, and a
shelve request (re-exported by api.schemas)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from api.contract import UtcDatetime
from api.orm import Alarm, AlarmEvent


class AlarmOut(BaseModel):
    """An alarm point of a control loop and its ISA-18.2 state."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    loop: int = Field(description="the control loop (run id)")
    process: str
    tag: str = Field(description="the sensor; empty for a point of the whole loop")
    kind: str = Field(description="limit_approach, limit_violation, fallback or stale_data")
    priority: str = Field(description="critical, high, medium or low")
    state: str = Field(
        description="normal, unacknowledged, acknowledged, "
        "rtn_unacknowledged (returned to normal, not yet "
        "acknowledged) or shelved"
    )
    active: bool = Field(description="whether the condition is present now")
    message: str
    value: float | None = Field(description="when last raised, in `unit`")
    worst_value: float | None = Field(description="most severe while active, in `unit`")
    unit: str
    step: int = Field(description="loop step when last raised")
    time_s: float = Field(description="loop time when last raised, s")
    raised_at: UtcDatetime
    cleared_at: UtcDatetime | None
    acknowledged_at: UtcDatetime | None
    acknowledged_by: str | None
    shelved_at: UtcDatetime | None
    shelved_by: str | None
    shelved_until: UtcDatetime | None
    shelve_reason: str | None
    updated_at: UtcDatetime

    @classmethod
    def of(cls, alarm: Alarm, process: str) -> AlarmOut:
        fields = {
            name: getattr(alarm, name)
            for name in cls.model_fields
            if name not in ("loop", "process")
        }
        return cls(**fields, loop=alarm.run_id, process=process)


class AlarmEventOut(BaseModel):
    """One transition of an alarm; `actor` is null for the alarm system itself."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: UtcDatetime
    action: str = Field(
        description="raised, cleared, acknowledged, shelved, unshelved or shelve_expired"
    )
    from_state: str
    to_state: str
    step: int | None
    value: float | None
    actor: str | None
    note: str

    @classmethod
    def of(cls, event: AlarmEvent) -> AlarmEventOut:
        return cls.model_validate(event)


class AlarmDetailOut(AlarmOut):
    history: list[AlarmEventOut]


class ShelveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    minutes: FiniteFloat = Field(gt=0, le=24 * 60, description="how long, at most 24 h")
    reason: str = Field(
        min_length=1, max_length=500, pattern=r"\S", description="why, for the next shift"
    )
