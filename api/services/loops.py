"""Live control loops: a program posts measurements each sample and gets actuator values.

Each loop is a `control` run. Its controller (with its history window) is kept in
memory in this OS process, keyed by run id; one step at a time per loop (a lock per
loop), any number of loops in parallel. If the process restarts, the controller is
rebuilt from the stored model on the next step (its history window starts empty).
The database, not memory, is the authority on step numbers, time order, whether the
loop still runs and which model drives it, so a step is handled the same way whichever
API worker receives it (a worker notices a model switched on another one at its next
step and rebuilds its controller).

A rejected step stores nothing and leaves the controller untouched: everything is
validated before `controller.step` is called (api.services.loop_checks: tags, time
plausibility, units, actuator read-backs). What a key may start (planners, how many
loops, build time and memory) is bounded by api.services.loop_limits.

The first step needs each actuator's current value, so that it moves from there: its
read-back, else the loop's last stored command, else `initial_actuators` given at the
start, else the tag's nominal; an actuator with none of them is refused, never guessed.

The manager's parts: starting (api.services.loop_starts), switching models
(api.services.loop_models), the operator's controls (api.services.loop_operator: mode,
actuators in service, dropped sensors, read from the run before every step), reading
(api.services.loop_views), finding and rebuilding loops (api.services.loop_registry);
what they share is in api.services.loop_base.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.errors import Conflict, Invalid, PayloadTooLarge
from api.orm import Run, RunKind, RunStatus, RunStep, utcnow
from api.services import alarms
from api.services.audit import Actor, record
from api.services.loop_base import (
    STALE_AFTER_PERIODS as STALE_AFTER_PERIODS,
)
from api.services.loop_base import (
    SYSTEM_ACTOR as SYSTEM_ACTOR,
)
from api.services.loop_base import (  # the names others import from here, too
    Clock,
    Controller,
    ControllerFactory,
    Loop,
    aware,
    hand_over,
)
from api.services.loop_checks import (
    check_finite,
    check_measurements,
    check_setpoint_limits,
    check_setpoint_tags,
    check_time,
    check_units,
    first_step_reference,
    plausible_readbacks,
    within_reach_of_command,
)
from api.services.loop_limits import (
    ControllerBuilder,
    LoopLimits,
)
from api.services.loop_models import LoopModels
from api.services.loop_operator import CONFIG_KEY, LoopOperator, follow_operator
from api.services.loop_registry import LoopRegistry
from api.services.loop_starts import LoopStarts
from api.services.loop_views import LoopReading
from api.services.loop_views import LoopView as LoopView
from api.services.runs import (
    finish_run,
    get_run,
    last_step,
    write_steps,
)
from twin.errors import InvalidInput
from twin.operator import OperatorSettings
from twin.records import EventKind, SafetyEvent, StepRecord, StepStatus
from twin.safety import clip_setpoint


def default_controller_factory(checkpoint: bytes, planner: str) -> Controller:
    # Imported late: torch and casadi load only when a loop actually starts.
    # late: torch, CasADi and the simulators load when the first loop starts, not at import
    from processes import plant_parts
    from twin.assembly import build_controller
    from twin.twin_model import Twin

    twin = Twin.from_bytes(checkpoint)
    # A built-in process lends its baseline and limit protection, bound to the variant the
    # twin was trained for (a glucose patient); a file-defined one its declared PI loops.
    return build_controller(twin, planner, parts=plant_parts(twin.spec))


class LoopManager(LoopStarts, LoopModels, LoopOperator, LoopReading, LoopRegistry):
    def __init__(
        self,
        factory: ControllerFactory = default_controller_factory,
        *,
        lock_timeout_s: float = 10.0,
        max_tags: int = 2_000,
        clock: Clock = utcnow,
        limits: LoopLimits | None = None,
    ) -> None:
        """`clock` gives the server time (timezone-aware) that staleness is judged by."""
        self._factory = factory
        self._lock_timeout_s = lock_timeout_s
        self._max_tags = max_tags
        self._clock = clock
        self.limits = limits or LoopLimits()
        self._builder = ControllerBuilder(self.limits)
        self._loops: dict[int, Loop] = {}
        self._registry_lock = threading.Lock()
        # One restore per loop at a time, without holding the registry (other loops step on).
        self._restoring: dict[int, threading.Lock] = {}
        # Starts with the same idempotency key wait for each other; admission is serial.
        self._start_gates: dict[tuple[int | None, str], threading.Lock] = {}
        self._admission = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def stop(self, session: Session, run_id: int, *, actor: Actor | None = None) -> Run:
        """Stop the loop (audited as "loop.stop" with an actor); stopping twice is harmless."""
        run = get_run(session, run_id)
        if run.kind != RunKind.CONTROL:
            raise Conflict(f"run {run_id} is a {run.kind} run, not a control loop")
        with self._registry_lock:
            self._loops.pop(run_id, None)
        if run.status == RunStatus.STOPPED:
            return run  # stopping twice is harmless: the caller may retry after a timeout
        if run.status != RunStatus.RUNNING:
            raise Conflict(f"run {run_id} is {run.status}; only a running loop can be stopped")
        try:
            run = finish_run(session, run_id, RunStatus.STOPPED, commit=False)
            record(session, actor, "loop.stop", f"run:{run_id}", {"process": run.process.name})
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return run

    # ------------------------------------------------------------ one step

    def step(
        self,
        session: Session,
        run_id: int,
        time_s: float,
        measurements: Mapping[str, float | None],
        setpoints: Mapping[str, float] | None = None,
    ) -> tuple[int, StepRecord]:
        """Validate, ask the controller, store; returns (step number, stored record)."""
        setpoints = dict(setpoints or {})
        self._check_size(measurements, setpoints)
        check_finite("time_s", {"time_s": time_s})
        check_finite("measurements", measurements, allow_null=True)
        check_finite("setpoints", setpoints)
        loop = self._loop(session, run_id)
        if not loop.lock.acquire(timeout=self._lock_timeout_s):
            raise Conflict(f"loop {run_id} is still busy with the previous step")
        try:
            self._follow_database(session, loop)
            return self._step_locked(session, loop, time_s, dict(measurements), setpoints)
        finally:
            loop.lock.release()

    def _follow_database(self, session: Session, loop: Loop) -> None:
        """Another API worker may have stopped the loop, switched its model or applied an
        operator's change."""
        status, model_id, config = session.execute(
            select(Run.status, Run.model_id, Run.config).where(Run.id == loop.run_id)
        ).one()
        planner = config.get("planner")
        if status != RunStatus.RUNNING or model_id is None:
            with self._registry_lock:
                self._loops.pop(loop.run_id, None)
            raise Conflict(f"loop {loop.run_id} is {status}; start a new loop")
        if model_id != loop.model_id:
            controller = self._build(session, model_id, planner or "casadi")
            hand_over(controller, loop.applied)
            loop.controller, loop.model_id = controller, model_id
            loop.last_step = None  # the new twin refills its window from the stored steps
            loop.operator = OperatorSettings()  # the new controller is told them below
        follow_operator(loop, config.get(CONFIG_KEY))

    def _step_locked(
        self,
        session: Session,
        loop: Loop,
        time_s: float,
        measurements: dict[str, float | None],
        setpoints: dict[str, float],
    ) -> tuple[int, StepRecord]:
        spec = loop.spec
        check_measurements(spec, measurements)
        check_setpoint_tags(spec, setpoints)
        check_setpoint_limits(spec, setpoints)
        previous = last_step(session, loop.run_id)
        self._check_time(session, loop, time_s, previous)
        if previous is not None and time_s <= previous.time_s:
            raise Conflict(f"time_s {time_s} is not after the last step's {previous.time_s}")
        edge_events = check_units(
            spec,
            measurements,
            _training_ranges(loop.controller),
            sigmas=self.limits.unit_check_sigmas,
            ratio=self.limits.unit_check_ratio,
        )
        if previous is not None and previous.step != loop.last_step:
            self._catch_up(session, loop, previous.step)
        dt = None if previous is None else time_s - previous.time_s
        measurements, ignored = plausible_readbacks(spec, measurements, loop.applied, dt)
        if previous is None:
            first_step_reference(spec, measurements, loop.applied)
        merged = {**loop.setpoints, **setpoints}
        try:
            record = loop.controller.step(time_s, measurements, merged)
        except InvalidInput as exc:
            raise Invalid(str(exc)) from None
        record = _guard(loop, record, time_s, measurements, merged, dt)
        record = _held_to_command(loop, record, dt, edge_events + ignored)
        number = 0 if previous is None else previous.step + 1
        try:
            write_steps(session, loop.run_id, loop.spec, [(number, record)])
            # Alarms change in the same transaction as the step that raised them.
            alarms.evaluate_step(session, loop.run_id, number, record, loop.spec)
            session.execute(
                update(Run)
                .where(Run.id == loop.run_id)
                .values(last_step_at=self._clock())
                .execution_options(synchronize_session=False)
            )
            session.commit()
        except BaseException:
            session.rollback()
            raise
        loop.setpoints, loop.applied = merged, dict(record.actuators)
        loop.last_step = number
        return number, dataclasses.replace(record, step=number)

    def _check_time(
        self, session: Session, loop: Loop, time_s: float, previous: RunStep | None
    ) -> None:
        now = self._clock()
        arrived = session.scalar(select(Run.last_step_at).where(Run.id == loop.run_id))
        elapsed = (now - aware(arrived)).total_seconds() if arrived is not None else 0.0
        check_time(
            time_s,
            previous.time_s if previous is not None else None,
            now_epoch_s=now.timestamp(),
            wall_elapsed_s=elapsed,
            sample_period_s=loop.spec.sample_period_s,
            window=self.limits.time_window,
        )

    # ------------------------------------------------------------ helpers

    def _check_size(self, *mappings: Mapping[str, float]) -> None:
        count = sum(len(m) for m in mappings)
        if count > self._max_tags:
            raise PayloadTooLarge(f"{count} tags in one request (at most {self._max_tags})")


def _training_ranges(controller: Controller) -> dict[str, tuple[float, float]]:
    """Each tag's (mean, std) in the twin's training log, where the controller has a twin."""
    norm = getattr(getattr(controller, "twin", None), "norm", None)
    if norm is None:
        return {}
    return {
        tag: (float(m), float(sd))
        for tag, m, sd in zip(norm.tags, norm.mean, norm.std, strict=True)
    }


def _held_to_command(
    loop: Loop, record: StepRecord, dt: float | None, edge_events: list[SafetyEvent]
) -> StepRecord:
    """Read-backs narrow moves, never widen them; what the edge found is stored with the
    step and makes it a fallback step, which raises the loop's fallback alarm."""
    actuators, held = within_reach_of_command(loop.spec, record.actuators, loop.applied, dt)
    if not (edge_events or held):
        return record
    status = StepStatus.FALLBACK if record.status is StepStatus.OK else record.status
    return dataclasses.replace(
        record, actuators=actuators, status=status, events=[*record.events, *edge_events, *held]
    )


# ---------------------------------------------------------------- last line of defence


def _guard(
    loop: Loop,
    record: StepRecord,
    time_s: float,
    measurements: dict[str, float | None],
    setpoints: dict[str, float],
    dt: float | None,
) -> StepRecord:
    """Never send an actuator value outside its bounds or rate limit, whatever the controller
    returned (the twin's safety layer should already ensure it; this catches its bugs): the
    same clip (`twin.safety.clip_setpoint`). The rate limit counts from what the plant
    reports it applied, else from what we sent."""
    actuators, events = {}, list(record.events)
    for tag in loop.spec.actuators:
        readback = measurements.get(tag.name)
        previous = readback if readback is not None else loop.applied.get(tag.name)
        value, changes = clip_setpoint(
            tag, record.actuators.get(tag.name), previous, loop.spec.sample_period_s, dt
        )
        actuators[tag.name] = value
        if changes:
            why = "; ".join(change.message for change in changes)
            events.append(SafetyEvent(EventKind.API_GUARD, f"{tag.name}: {why}", tag.name))
    guarded = len(events) > len(record.events)
    status = StepStatus.FALLBACK if guarded and record.status is StepStatus.OK else record.status
    return dataclasses.replace(
        record,
        time_s=time_s,
        measurements=record.measurements
        or {k: v for k, v in measurements.items() if v is not None},
        setpoints=record.setpoints or setpoints,
        actuators=actuators,
        events=events,
        status=status,
    )
