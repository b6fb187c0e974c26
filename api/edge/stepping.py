"""What every edge connector shares: one loop stepped through the HTTP path's service.

`LoopStepper.step` calls `LoopManager.step`, the function behind `POST
/api/loops/{id}/step`: the same validation, controller, safety layer, storage and alarm
evaluation. An edge connector adds only what the HTTP client would otherwise do:

* a **stale hold** (`hold`): every sensor sent as null, so the controller holds its
  actuators and stores the step as `stale` (its `missing_data` event raises the loop's
  stale-data alarm); the edge's own reason (bad status code, frozen timestamp, lost
  connection, gateway death) is stored as a run event of kind `edge_stale` at that step;
* a **refused write** (`write_refused`): a run event `write_refused` at the step whose
  setpoint did not reach the plant, and the actuator's alarm point raised (kind
  `fallback`: the plant keeps an older move than the controller's), never a silent loss;
* `edge_event` for anything else worth a row (a Sparkplug sequence jump).

Every value leaving through a connector passes `outgoing`, which refuses (raises) a value
outside the actuator's bounds or its rate limit from the last value written: the step path
already guards both, this is the last check before the wire.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.orm import Alarm, AlarmKind, RunEvent, RunStep, utcnow
from api.services import alarms
from api.services.loops import LoopManager
from api.services.processes import spec_of
from api.services.runs import get_run
from twin.records import StepRecord
from twin.spec import ProcessSpec

EDGE_STALE = "edge_stale"
WRITE_REFUSED = "write_refused"
SEQUENCE_GAP = "sequence_gap"
# A hold carries no plant time of its own: it is stamped just after the last step.
HOLD_TIME_STEP_S = 1e-3


class UnsafeSetpoint(RuntimeError):
    """A value about to leave is outside its actuator's bounds or rate limit."""


@dataclass
class EdgeStep:
    """One stored step as a connector sees it."""

    step: int
    time_s: float
    record: StepRecord
    held: bool  # a stale hold made by the edge (nothing new to write)
    step_ms: float = 0.0  # time in the step path (controller, safety layer, storage)

    @property
    def actuators(self) -> dict[str, float]:
        return dict(self.record.actuators)


@dataclass
class EdgeStats:
    """What a connector did; the tests and benchmarks read it."""

    steps: int = 0
    holds: Counter[str] = field(default_factory=Counter)  # by reason kind
    refused_writes: int = 0
    unsafe: int = 0  # setpoints the last check refused to send (a step-path bug if any)
    db_errors: int = 0  # samples whose step the database did not take (nothing written out)
    reconnects: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # sample in -> setpoint out
    step_ms: list[float] = field(default_factory=list)  # of which: the step path's call
    # (loop time, values written, the plant's read-back of them in that step's sample)
    written: list[tuple[float, dict[str, float], dict[str, float]]] = field(default_factory=list)


@dataclass
class LoopStepper:
    """Steps one control loop (a running `control` run) from an edge connector.

    Thread-safe: connectors call it from worker threads (`asyncio.to_thread`)."""

    manager: LoopManager
    sessions: sessionmaker[Session]
    run_id: int
    spec: ProcessSpec = field(init=False)
    last_time_s: float | None = field(init=False, default=None)
    written: dict[str, tuple[float, float]] = field(init=False, default_factory=dict)
    _lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        with self.sessions() as session:
            view = self.manager.view(session, self.run_id)  # NotFound for a wrong id
            self.spec = spec_of(view.run.process)
            if view.last is not None:
                self.last_time_s = float(view.last.time_s)

    # ------------------------------------------------------------ steps

    def step(
        self,
        time_s: float,
        measurements: Mapping[str, float | None],
        setpoints: Mapping[str, float] | None = None,
    ) -> EdgeStep:
        """One sample through the HTTP path's service; raises its errors unchanged."""
        with self._lock, self.sessions() as session:
            started = time.perf_counter()
            number, record = self.manager.step(
                session, self.run_id, time_s, measurements, setpoints
            )
            self.last_time_s = float(time_s)
            return EdgeStep(
                number,
                float(time_s),
                record,
                held=False,
                step_ms=(time.perf_counter() - started) * 1000.0,
            )

    def hold(self, reason: str, time_s: float | None = None) -> EdgeStep:
        """A recorded stale hold: the controller holds, the edge says why."""
        with self._lock, self.sessions() as session:
            if time_s is None or (self.last_time_s is not None and time_s <= self.last_time_s):
                time_s = (self.last_time_s or 0.0) + HOLD_TIME_STEP_S
            nulls: dict[str, float | None] = {t.name: None for t in self.spec.sensors}
            number, record = self.manager.step(session, self.run_id, time_s, nulls)
            self.last_time_s = float(time_s)
            _add_event(session, self.run_id, number, time_s, EDGE_STALE, reason, None)
            session.commit()
            return EdgeStep(number, float(time_s), record, held=True)

    def edge_event(self, kind: str, message: str, tag: str | None = None) -> None:
        """A run event at the loop's latest step (e.g. a Sparkplug sequence jump)."""
        with self._lock, self.sessions() as session:
            last = session.scalar(
                select(RunStep)
                .where(RunStep.run_id == self.run_id)
                .order_by(RunStep.step.desc())
                .limit(1)
            )
            step, time_s = (last.step, last.time_s) if last is not None else (0, 0.0)
            _add_event(session, self.run_id, step, time_s, kind, message, tag)
            session.commit()

    def write_refused(self, done: EdgeStep, tag: str, message: str) -> None:
        """The plant refused the setpoint of `done` for `tag`: an event and an alarm."""
        text = f"write of {tag} = {done.record.actuators.get(tag)!r} refused: {message}"
        with self._lock, self.sessions() as session:
            _add_event(session, self.run_id, done.step, done.time_s, WRITE_REFUSED, text, tag)
            _raise_alarm(session, self.run_id, self.spec, done, tag, text)
            session.commit()
        self.written.pop(tag, None)  # the plant's value is unknown: no rate check from it

    # ------------------------------------------------------------ the last check

    def outgoing(self, done: EdgeStep) -> dict[str, float]:
        """The actuator values of a step, checked against bounds and rate limits."""
        out = {}
        for tag in self.spec.actuators:
            value = done.record.actuators.get(tag.name)
            if value is None or not math.isfinite(value):
                raise UnsafeSetpoint(f"{tag.name}: no finite value to write ({value!r})")
            if (tag.low is not None and value < tag.low) or (
                tag.high is not None and value > tag.high
            ):
                raise UnsafeSetpoint(f"{tag.name} = {value} is outside [{tag.low}, {tag.high}]")
            previous = self.written.get(tag.name)
            if previous is not None and tag.rate_limit is not None:
                # As in the step path, the move counts from what the plant reports it
                # applied (this step's read-back) or else from what was last written.
                dt = max(done.time_s - previous[0], 0.0)
                bases = [previous[1], done.record.measurements.get(tag.name)]
                if not any(
                    base is not None
                    and abs(value - base) <= tag.rate_limit * dt * (1 + 1e-9) + 1e-9
                    for base in bases
                ):
                    raise UnsafeSetpoint(
                        f"{tag.name}: {previous[1]} -> {value} in {dt:.3g} s "
                        f"exceeds {tag.rate_limit} {tag.unit}/s"
                    )
            out[tag.name] = float(value)
        return out

    def confirm_written(self, done: EdgeStep, values: Mapping[str, float]) -> None:
        for tag, value in values.items():
            self.written[tag] = (done.time_s, float(value))

    def loop_status(self) -> str:
        with self.sessions() as session:
            return self.manager.view(session, self.run_id).status

    def describe(self) -> dict[str, Any]:
        with self.sessions() as session:
            run = get_run(session, self.run_id)
            return {"run_id": run.id, "process": run.process.name, "status": run.status}


def _add_event(
    session: Session,
    run_id: int,
    step: int,
    time_s: float,
    kind: str,
    message: str,
    tag: str | None,
) -> None:
    session.add(
        RunEvent(
            run_id=run_id, step=step, time_s=float(time_s), kind=kind, message=message, tag=tag
        )
    )


def _raise_alarm(
    session: Session, run_id: int, spec: ProcessSpec, done: EdgeStep, tag: str, message: str
) -> None:
    """Raise (or keep raised) the actuator's point through the alarm module's own state
    machine, so acknowledging, shelving and clearing work as for any other alarm."""
    cond = alarms.Condition(tag, AlarmKind.FALLBACK, message)
    view = alarms.StepView(done.step, done.time_s, "fallback", {})
    alarm = session.scalar(
        select(Alarm).where(
            Alarm.run_id == run_id, Alarm.tag == tag, Alarm.kind == AlarmKind.FALLBACK
        )
    )
    now = utcnow()
    if alarm is None:
        alarm = alarms.new_point(session, run_id, cond, view, now)
    alarms.activate(session, alarm, cond, view, now)
