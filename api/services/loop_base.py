"""What a live loop is made of, shared by the manager's parts (api.services.loops)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy.orm import Session

from api.errors import NotFound
from api.orm import Run, RunKind
from api.services.audit import Actor
from twin.operator import OperatorSettings
from twin.records import StepRecord
from twin.spec import ProcessSpec

STALE_AFTER_PERIODS = 3  # sample periods without a step before a running loop is stale
SYSTEM_ACTOR = "system"  # history's actor for changes made without one (CLI, tests)
# Steps read back to refill a controller whose window size is not known.
CATCH_UP_STEPS = 64

Clock = Callable[[], datetime]


class Controller(Protocol):
    """What `twin.controller.TwinController` offers; tests inject fakes with this shape.

    A controller may also offer `reset(applied)` (TwinController does): it is called with
    the actuator values last applied when the controller takes over a running loop."""

    spec: ProcessSpec

    def step(
        self,
        time_s: float,
        measurements: Mapping[str, float | None],
        setpoints: Mapping[str, float],
    ) -> StepRecord: ...


ControllerFactory = Callable[[bytes, str], Controller]


@dataclass
class Loop:
    run_id: int
    controller: Controller
    setpoints: dict[str, float]
    applied: dict[str, float] = field(default_factory=dict)  # last actuator values sent
    lock: threading.Lock = field(default_factory=threading.Lock)
    model_id: int | None = None  # the model `controller` was built from
    # The last step this worker's controller saw; when the database's last step differs,
    # another worker (or this process before a restart) served the steps in between.
    last_step: int | None = None
    # The operator's settings this worker's controller was given (api.services.loop_operator)
    operator: OperatorSettings = field(default_factory=OperatorSettings)

    @property
    def spec(self) -> ProcessSpec:
        return self.controller.spec


def control_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None or run.kind != RunKind.CONTROL:
        raise NotFound(f"no control loop with id {run_id}")
    return run


def hand_over(controller: Controller, applied: Mapping[str, float]) -> None:
    """Bumpless transfer: the controller continues from the actuator values last applied."""
    reset = getattr(controller, "reset", None)
    if reset is not None and applied:
        reset(dict(applied))


def aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def actor_name(actor: Actor | None) -> str:
    return actor.name if actor is not None else SYSTEM_ACTOR
