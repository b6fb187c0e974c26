"""Plain records that leave the twin: one control step, one episode.

These are the contract between `twin`/`processes` (which produce them) and `api`
(which stores and serves them). Everything is in engineering units and JSON-safe.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class StepStatus(StrEnum):
    OK = "ok"
    FALLBACK = "fallback"
    STALE = "stale"
    STOPPED = "stopped"


class EventKind(StrEnum):
    """What a step's event is about. The values are stored with every step and read by the
    alarms and the API: they never change."""

    # the safety clip
    NO_PREVIOUS = "no_previous"
    INVALID_PROPOSAL = "invalid_proposal"
    RATE_LIMITED = "rate_limited"
    CLIPPED_BOUNDS = "clipped_bounds"
    API_GUARD = "api_guard"  # the API's last line caught what the controller sent
    # the data
    STALE_DATA = "stale_data"
    MISSING_DATA = "missing_data"
    # why the baseline (or a hold) replaced the plan
    WARMING_UP = "warming_up"
    SOLVER_FAILED = "solver_failed"
    DEADLINE = "deadline"
    ENSEMBLE_DISAGREEMENT = "ensemble_disagreement"
    INVALID_PLAN = "invalid_plan"
    LIMIT_GUARD = "limit_guard"
    MODEL_MISMATCH = "model_mismatch"
    SETPOINT_MISSED = "setpoint_missed"  # twin.setpoint_watch
    # what cut a move that went out
    DATA_ENVELOPE = "data_envelope"
    LIMIT_PROTECTION = "limit_protection"
    IOB_LIMIT = "iob_limit"


FALLBACK_REASONS = (
    EventKind.WARMING_UP,
    EventKind.SOLVER_FAILED,
    EventKind.DEADLINE,
    EventKind.ENSEMBLE_DISAGREEMENT,
    EventKind.INVALID_PLAN,
    EventKind.LIMIT_GUARD,
    EventKind.MODEL_MISMATCH,
    EventKind.SETPOINT_MISSED,
)
"""The event kinds the controller records when the baseline (or a hold) replaces the plan."""


@dataclass(frozen=True)
class SafetyEvent:
    """Something the safety layer did or saw. `kind` is an `EventKind` (a str: stored and
    compared as its value); a plant's own code may use a word of its own."""

    kind: EventKind | str
    message: str
    tag: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "message": self.message, "tag": self.tag}


@dataclass
class Plan:
    """A planner's proposal over its horizon, already in engineering units.

    `time_s[k]` is seconds after the step's own time; `sensors` holds the readout of the
    predicted embeddings (what the twin expects to measure), `actuators` the planned moves.
    """

    time_s: list[float]
    actuators: dict[str, list[float]]
    sensors: dict[str, list[float]] = field(default_factory=dict)
    spread: dict[str, list[float]] = field(default_factory=dict)
    cost: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StepRecord:
    """One sample of a run: what was measured, asked, applied and planned."""

    step: int
    time_s: float
    measurements: dict[str, float]  # sensors and measured disturbances
    setpoints: dict[str, float]  # targets of controlled sensors
    actuators: dict[str, float]  # values actually applied (after the safety layer)
    status: StepStatus = StepStatus.OK
    solve_ms: float = 0.0
    events: list[SafetyEvent] = field(default_factory=list)
    plan: Plan | None = None
    margins: dict[str, float] = field(default_factory=dict)  # distance to each sensor limit

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = str(self.status)
        return out


@dataclass
class EpisodeResult:
    """A closed-loop or replay run, ready to be stored."""

    process: str
    controller: str
    config: dict[str, Any]
    steps: list[StepRecord]
    metrics: dict[str, float]
