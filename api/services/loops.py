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

Models: the loop's active model is `runs.model_id`, and `model_activations` its
history (the model it started with, then every switch). A switch builds the new
controller before touching anything, so a model that cannot drive the loop (wrong
process, corrupted checkpoint) changes nothing; the new controller starts from the
actuator values last applied (bumpless: its safety layer rate-limits from there).

Status of a loop, as clients see it: `stopped` when the run no longer runs; `stale`
when no step arrived for more than STALE_AFTER_PERIODS sample periods (or the last
step itself held on stale data); else the last step's `ok` or `fallback`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.errors import ChecksumMismatch, Conflict, Invalid, NotFound, PayloadTooLarge
from api.orm import ModelActivation, Run, RunKind, RunStatus, RunStep, TwinModel, utcnow
from api.services import alarms
from api.services.audit import Actor, record
from api.services.loop_checks import (
    check_finite,
    check_measurements,
    check_setpoint_limits,
    check_setpoint_tags,
    check_time,
    check_units,
    first_step_reference,
    initial_actuators,
    initial_setpoints,
    plausible_readbacks,
    within_reach_of_command,
)
from api.services.loop_limits import (
    ControllerBuilder,
    LoopLimits,
    check_loop_count,
    check_planner,
)
from api.services.models import get_model, load_model_bytes
from api.services.processes import process_or_builtin, spec_of
from api.services.runs import (
    create_run,
    finish_run,
    get_run,
    last_step,
    step_values,
    stored_history,
    write_steps,
)
from twin.errors import InvalidInput
from twin.planner_names import PLANNER_NAMES as PLANNERS
from twin.records import EventKind, SafetyEvent, StepRecord, StepStatus
from twin.safety import clip_setpoint
from twin.spec import ProcessSpec

STALE_AFTER_PERIODS = 3  # sample periods without a step before a running loop is stale
SYSTEM_ACTOR = "system"  # history's actor for changes made without one (CLI, tests)

Clock = Callable[[], datetime]


# Steps read back to refill a controller whose window size is not known.
CATCH_UP_STEPS = 64

class Controller(Protocol):
    """What `twin.controller.TwinController` offers; tests inject fakes with this shape.

    A controller may also offer `reset(applied)` (TwinController does): it is called with
    the actuator values last applied when the controller takes over a running loop."""

    spec: ProcessSpec

    def step(self, time_s: float, measurements: Mapping[str, float | None],
             setpoints: Mapping[str, float]) -> StepRecord: ...


ControllerFactory = Callable[[bytes, str], Controller]


def default_controller_factory(checkpoint: bytes, planner: str) -> Controller:
    # Imported late: torch and casadi load only when a loop actually starts.
    from processes import plant_parts
    from twin.assembly import build_controller
    from twin.twin_model import Twin

    twin = Twin.from_bytes(checkpoint)
    # A built-in process lends its baseline and limit protection, bound to the variant the
    # twin was trained for (a glucose patient); a file-defined one its declared PI loops.
    return build_controller(twin, planner, parts=plant_parts(twin.spec))


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

    @property
    def spec(self) -> ProcessSpec:
        return self.controller.spec


@dataclass(frozen=True)
class LoopView:
    """What a client or a person reads about a loop (GET /api/loops...)."""

    run: Run
    status: str  # ok / fallback / stale / stopped
    model: TwinModel | None
    last: RunStep | None
    age_s: float  # seconds since the last step (since the start before the first)
    stale_after_s: float
    setpoints: dict[str, float]  # latest sensor setpoints (engineering units)
    actuators: dict[str, float]  # latest actuator values sent


class LoopManager:
    def __init__(self, factory: ControllerFactory = default_controller_factory, *,
                 lock_timeout_s: float = 10.0, max_tags: int = 2_000,
                 clock: Clock = utcnow, limits: LoopLimits | None = None) -> None:
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

    def start(self, session: Session, process: str, model_id: int, planner: str,
              setpoints: Mapping[str, float], *, actor: Actor | None = None,
              initial: Mapping[str, float] | None = None,
              idempotency_key: str | None = None) -> Run:
        """Build the controller, then store the run and its first model activation
        (audited as "loop.start" with an actor). `initial`: the actuator values the plant
        applies now. A start repeated with the same `idempotency_key` (per key) returns
        the loop the first one started; the key with another request is refused (409)."""
        if planner not in PLANNERS:
            raise Invalid(f"unknown planner '{planner}' (one of: {', '.join(PLANNERS)})")
        self._check_size(setpoints, initial or {})
        check_finite("setpoints", setpoints)
        check_finite("initial_actuators", initial or {})
        request = {"process": process, "model_id": model_id, "planner": planner,
                   "setpoints": dict(setpoints), "initial_actuators": dict(initial or {})}
        key_id = actor.key_id if actor is not None else None
        if idempotency_key is None:
            return self._start(session, request, actor, None)
        with self._registry_lock:
            gate = self._start_gates.setdefault((key_id, idempotency_key), threading.Lock())
        with gate:
            earlier = _started_with(session, key_id, idempotency_key)
            if earlier is not None:
                if earlier.config.get("request") != request:
                    raise Conflict(f"Idempotency-Key '{idempotency_key}' was used for another "
                                   f"start (loop {earlier.id}); use a new key")
                return earlier
            return self._start(session, request, actor, idempotency_key)

    def _start(self, session: Session, request: dict, actor: Actor | None,
               idempotency_key: str | None) -> Run:
        process, model_id, planner = request["process"], request["model_id"], request["planner"]
        if actor is not None:
            check_planner(self.limits, planner, actor)
        key_id = actor.key_id if actor is not None else None
        check_loop_count(session, self.limits, key_id)
        proc = process_or_builtin(session, process)
        if get_model(session, model_id).process_id != proc.id:
            raise Invalid(f"model {model_id} was not trained for process '{process}'")
        spec = spec_of(proc)
        check_setpoint_tags(spec, request["setpoints"])
        check_setpoint_limits(spec, request["setpoints"])
        initial_actuators(spec, request["initial_actuators"])
        controller = self._build(session, model_id, planner)
        if controller.spec.name != process:
            raise Invalid(f"model {model_id} controls '{controller.spec.name}', not '{process}'")
        full_setpoints = initial_setpoints(controller.spec, request["setpoints"])
        given = request["initial_actuators"]
        applied = initial_actuators(controller.spec, given)
        config = {"planner": planner, "model_id": model_id, "setpoints": full_setpoints,
                  "initial_actuators": given, "started_by_key": key_id, "request": request}
        if idempotency_key is not None:
            config["idempotency_key"] = idempotency_key
        with self._admission:  # the count again: other starts may have finished meanwhile
            session.expire_all()
            check_loop_count(session, self.limits, key_id)
            run = self._store_start(session, process, model_id, planner, config, actor)
        if given:  # else the controller starts from the nominals itself
            _hand_over(controller, applied)
        with self._registry_lock:
            self._loops[run.id] = Loop(run.id, controller, full_setpoints, dict(given),
                                       model_id=model_id)
        return run

    def _store_start(self, session: Session, process: str, model_id: int, planner: str,
                     config: dict, actor: Actor | None) -> Run:
        try:
            run = create_run(session, kind=RunKind.CONTROL, process=process,
                             controller=f"twin/{planner}", model_id=model_id,
                             config=config, commit=False)
            run.started_at = self._clock()
            session.add(ModelActivation(run_id=run.id, model_id=model_id,
                                        activated_at=run.started_at, actor=_name(actor),
                                        reason="loop started"))
            record(session, actor, "loop.start", f"run:{run.id}",
                   {"process": process, "model_id": model_id, "planner": planner})
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return run

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

    # ------------------------------------------------------------ models

    def switch_model(self, session: Session, run_id: int, model_id: int, reason: str, *,
                     actor: Actor | None = None) -> Run:
        """Make `model_id` the loop's model (audited as "loop.model_switch" with an actor).

        Refused, changing nothing, for a model of another process (422), an unknown model
        (404), a corrupted checkpoint or a stopped loop (409). Switching to the model that
        is already active succeeds and records nothing."""
        run = _control_run(session, run_id)
        if run.status != RunStatus.RUNNING:
            raise Conflict(f"loop {run_id} is {run.status}; only a running loop can switch "
                           "models")
        model = get_model(session, model_id)
        if model.process_id != run.process_id:
            raise Invalid(f"model {model_id} ('{model.name}' v{model.version}) was trained "
                          f"for process '{model.process.name}', not for this loop's "
                          f"'{run.process.name}'")
        if run.model_id == model_id:
            return run
        planner = str(run.config.get("planner", "casadi"))
        try:
            controller = self._build(session, model_id, planner)
        except ChecksumMismatch as exc:
            raise Conflict(f"model {model_id} cannot be activated: {exc}") from None
        if controller.spec.name != run.process.name:
            raise Invalid(f"model {model_id} controls '{controller.spec.name}', "
                          f"not '{run.process.name}'")
        loop = self._loop(session, run_id, prebuilt=(controller, model_id))
        if not loop.lock.acquire(timeout=self._lock_timeout_s):
            raise Conflict(f"loop {run_id} is busy with a step; try the switch again")
        try:
            self._switch_locked(session, loop, run, model, controller, reason, actor)
        finally:
            loop.lock.release()
        return run

    def _switch_locked(self, session: Session, loop: Loop, run: Run, model: TwinModel,
                       controller: Controller, reason: str, actor: Actor | None) -> None:
        session.refresh(run)  # a step or a stop may have committed while we waited
        if run.status != RunStatus.RUNNING:
            raise Conflict(f"loop {run.id} was {run.status} meanwhile; nothing switched")
        previous = run.model_id
        if previous == model.id:  # a concurrent request made the same switch first
            return
        try:
            run.model_id = model.id
            session.add(ModelActivation(run_id=run.id, model_id=model.id,
                                        previous_model_id=previous,
                                        activated_at=self._clock(), actor=_name(actor),
                                        reason=reason))
            record(session, actor, "loop.model_switch", f"run:{run.id}",
                   {"model_id": model.id, "previous_model_id": previous,
                    "name": model.name, "version": model.version, "sha256": model.sha256,
                    "reason": reason})
            session.commit()
        except BaseException:
            session.rollback()
            if loop.controller is controller:  # restored for this switch: forget it
                with self._registry_lock:
                    self._loops.pop(run.id, None)
            raise
        _hand_over(controller, loop.applied)
        loop.controller, loop.model_id = controller, model.id
        loop.last_step = None  # the new twin refills its window from the stored steps

    def history(self, session: Session, run_id: int) -> list[ModelActivation]:
        """The loop's model activations, newest first."""
        _control_run(session, run_id)
        return list(session.scalars(
            select(ModelActivation).where(ModelActivation.run_id == run_id)
            .order_by(ModelActivation.activated_at.desc(), ModelActivation.id.desc())))

    # ------------------------------------------------------------ reading

    def view(self, session: Session, run_id: int) -> LoopView:
        return self._view(session, _control_run(session, run_id), self._clock())

    def list_loops(self, session: Session, *, process: str | None = None,
                   running: bool | None = None, limit: int = 100,
                   offset: int = 0) -> list[LoopView]:
        """Loops newest first; optionally of one process, running (or not) only."""
        query = (select(Run).where(Run.kind == RunKind.CONTROL).order_by(Run.id.desc())
                 .limit(limit).offset(offset))
        if process is not None:
            query = query.where(Run.process.has(name=process))
        if running is not None:
            status_is_running = Run.status == RunStatus.RUNNING
            query = query.where(status_is_running if running else ~status_is_running)
        now = self._clock()
        return [self._view(session, run, now) for run in session.scalars(query)]

    def latest_setpoint(self, session: Session, run_id: int) -> LoopView:
        """The loop with its latest step; NotFound before the first step."""
        view = self.view(session, run_id)
        if view.last is None:
            raise NotFound(f"loop {run_id} has no setpoint yet: nothing was posted to "
                           f"POST /api/loops/{run_id}/step")
        return view

    def _view(self, session: Session, run: Run, now: datetime) -> LoopView:
        spec = spec_of(run.process)
        stale_after_s = STALE_AFTER_PERIODS * spec.sample_period_s
        last = last_step(session, run.id)
        values = step_values(session, run.id, last.step) if last is not None else {}
        since = _aware(run.last_step_at if last is not None and run.last_step_at
                       else run.started_at)
        age_s = max(0.0, (now - since).total_seconds())
        model = session.get(TwinModel, run.model_id) if run.model_id is not None else None
        return LoopView(
            run=run, status=_loop_status(run, last, age_s, stale_after_s), model=model,
            last=last, age_s=age_s, stale_after_s=stale_after_s,
            setpoints=values.get("setpoint") or dict(run.config.get("setpoints", {})),
            actuators=values.get("actuator", {}))

    # ------------------------------------------------------------ one step

    def step(self, session: Session, run_id: int, time_s: float,
             measurements: Mapping[str, float | None],
             setpoints: Mapping[str, float] | None = None) -> tuple[int, StepRecord]:
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
        """Another API worker may have stopped the loop or switched its model."""
        status, model_id, planner = session.execute(
            select(Run.status, Run.model_id, Run.config["planner"].as_string())
            .where(Run.id == loop.run_id)).one()
        if status != RunStatus.RUNNING or model_id is None:
            with self._registry_lock:
                self._loops.pop(loop.run_id, None)
            raise Conflict(f"loop {loop.run_id} is {status}; start a new loop")
        if model_id != loop.model_id:
            controller = self._build(session, model_id, planner or "casadi")
            _hand_over(controller, loop.applied)
            loop.controller, loop.model_id = controller, model_id
            loop.last_step = None  # the new twin refills its window from the stored steps

    def _step_locked(self, session: Session, loop: Loop, time_s: float,
                     measurements: dict[str, float | None],
                     setpoints: dict[str, float]) -> tuple[int, StepRecord]:
        spec = loop.spec
        check_measurements(spec, measurements)
        check_setpoint_tags(spec, setpoints)
        check_setpoint_limits(spec, setpoints)
        previous = last_step(session, loop.run_id)
        self._check_time(session, loop, time_s, previous)
        if previous is not None and time_s <= previous.time_s:
            raise Conflict(f"time_s {time_s} is not after the last step's {previous.time_s}")
        edge_events = check_units(spec, measurements, _training_ranges(loop.controller),
                                  sigmas=self.limits.unit_check_sigmas,
                                  ratio=self.limits.unit_check_ratio)
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
            session.execute(update(Run).where(Run.id == loop.run_id)
                            .values(last_step_at=self._clock())
                            .execution_options(synchronize_session=False))
            session.commit()
        except BaseException:
            session.rollback()
            raise
        loop.setpoints, loop.applied = merged, dict(record.actuators)
        loop.last_step = number
        return number, dataclasses.replace(record, step=number)

    def _check_time(self, session: Session, loop: Loop, time_s: float,
                    previous: RunStep | None) -> None:
        now = self._clock()
        arrived = session.scalar(select(Run.last_step_at).where(Run.id == loop.run_id))
        elapsed = (now - _aware(arrived)).total_seconds() if arrived is not None else 0.0
        check_time(time_s, previous.time_s if previous is not None else None,
                   now_epoch_s=now.timestamp(), wall_elapsed_s=elapsed,
                   sample_period_s=loop.spec.sample_period_s, window=self.limits.time_window)

    # ------------------------------------------------------------ helpers

    def _loop(self, session: Session, run_id: int,
              prebuilt: tuple[Controller, int] | None = None) -> Loop:
        # A loop is never built twice (two controllers, two histories): one restore per
        # loop at a time. The registry lock is not held while it builds, so other loops'
        # steps go on.
        with self._registry_lock:
            loop = self._loops.get(run_id)
            if loop is not None:
                return loop
            gate = self._restoring.setdefault(run_id, threading.Lock())
        with gate:
            with self._registry_lock:
                loop = self._loops.get(run_id)
            if loop is None:
                loop = self._restore(session, run_id, prebuilt)
                with self._registry_lock:
                    loop = self._loops.setdefault(run_id, loop)
            with self._registry_lock:
                self._restoring.pop(run_id, None)
            return loop

    def _restore(self, session: Session, run_id: int,
                 prebuilt: tuple[Controller, int] | None = None) -> Loop:
        """Rebuild a loop after a restart (or on another worker) from what is stored;
        with `prebuilt` (controller, model id), around that controller instead."""
        run = get_run(session, run_id)
        if run.kind != RunKind.CONTROL:
            raise Conflict(f"run {run_id} is a {run.kind} run, not a control loop")
        if run.status != RunStatus.RUNNING or run.model_id is None:
            raise Conflict(f"loop {run_id} is {run.status}; start a new loop")
        if prebuilt is None:
            planner = str(run.config.get("planner", "casadi"))
            prebuilt = (self._build(session, run.model_id, planner), run.model_id)
        controller, model_id = prebuilt
        setpoints = dict(run.config.get("setpoints", {}))
        # Before the first step: the actuator values the plant applied at the start.
        applied = dict(run.config.get("initial_actuators") or {})
        previous = last_step(session, run_id)
        if previous is not None:
            values = step_values(session, run_id, previous.step)
            setpoints.update(values.get("setpoint", {}))
            applied = values.get("actuator", {})
        if applied:
            _hand_over(controller, initial_actuators(controller.spec, applied))
        return Loop(run_id, controller, setpoints, applied, model_id=model_id)

    def _catch_up(self, session: Session, loop: Loop, last: int) -> None:
        """Refill the controller's context window from the stored steps it did not see.

        Loops are served by whichever API worker holds the client's connection; after a
        reconnect to another worker, or a restart, the window would otherwise miss samples
        (or be empty), and the twin would plan from a wrong picture of the plant."""
        prime = getattr(loop.controller, "prime", None)
        if prime is None:
            return
        window = getattr(getattr(loop.controller, "twin", None), "config", None)
        depth = int(getattr(window, "window", CATCH_UP_STEPS))
        history = stored_history(session, loop.run_id, max(0, last - depth + 1), last)
        prime(history)
        if history:
            loop.applied = dict(history[-1][2])
        loop.last_step = last

    def _build(self, session: Session, model_id: int, planner: str) -> Controller:
        checkpoint = load_model_bytes(session, model_id)
        try:
            return self._builder.build(f"model {model_id}, planner {planner}",
                                       lambda: self._factory(checkpoint, planner))
        except InvalidInput as exc:
            raise Invalid(f"model {model_id} cannot drive a loop: {exc}") from None

    def _check_size(self, *mappings: Mapping[str, float]) -> None:
        count = sum(len(m) for m in mappings)
        if count > self._max_tags:
            raise PayloadTooLarge(f"{count} tags in one request (at most {self._max_tags})")


def _control_run(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id)
    if run is None or run.kind != RunKind.CONTROL:
        raise NotFound(f"no control loop with id {run_id}")
    return run


def _hand_over(controller: Controller, applied: Mapping[str, float]) -> None:
    """Bumpless transfer: the controller continues from the actuator values last applied."""
    reset = getattr(controller, "reset", None)
    if reset is not None and applied:
        reset(dict(applied))


def _loop_status(run: Run, last: RunStep | None, age_s: float, stale_after_s: float) -> str:
    if run.status != RunStatus.RUNNING:
        return StepStatus.STOPPED
    if age_s > stale_after_s:
        return StepStatus.STALE
    if last is None:
        return StepStatus.OK
    return last.status if last.status in (StepStatus.FALLBACK, StepStatus.STALE) \
        else StepStatus.OK


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _name(actor: Actor | None) -> str:
    return actor.name if actor is not None else SYSTEM_ACTOR


def _started_with(session: Session, key_id: int | None, idempotency_key: str) -> Run | None:
    """The loop a start with this idempotency key (of this API key) made, if any."""
    query = select(Run).where(Run.kind == RunKind.CONTROL,
                              Run.config["idempotency_key"].as_string() == idempotency_key)
    for run in session.scalars(query.order_by(Run.id)):
        if run.config.get("started_by_key") == key_id:
            return run
    return None


def _training_ranges(controller: Controller) -> dict[str, tuple[float, float]]:
    """Each tag's (mean, std) in the twin's training log, where the controller has a twin."""
    norm = getattr(getattr(controller, "twin", None), "norm", None)
    if norm is None:
        return {}
    return {tag: (float(m), float(sd)) for tag, m, sd in zip(norm.tags, norm.mean, norm.std,
                                                             strict=True)}


def _held_to_command(loop: Loop, record: StepRecord, dt: float | None,
                     edge_events: list[SafetyEvent]) -> StepRecord:
    """Read-backs narrow moves, never widen them; what the edge found is stored with the
    step and makes it a fallback step, which raises the loop's fallback alarm."""
    actuators, held = within_reach_of_command(loop.spec, record.actuators, loop.applied, dt)
    if not (edge_events or held):
        return record
    status = StepStatus.FALLBACK if record.status is StepStatus.OK else record.status
    return dataclasses.replace(record, actuators=actuators, status=status,
                               events=[*record.events, *edge_events, *held])


# ---------------------------------------------------------------- last line of defence


def _guard(loop: Loop, record: StepRecord, time_s: float,
           measurements: dict[str, float | None], setpoints: dict[str, float],
           dt: float | None) -> StepRecord:
    """Never send an actuator value outside its bounds or rate limit, whatever the controller
    returned (the twin's safety layer should already ensure it; this catches its bugs): the
    same clip (`twin.safety.clip_setpoint`). The rate limit counts from what the plant
    reports it applied, else from what we sent."""
    actuators, events = {}, list(record.events)
    for tag in loop.spec.actuators:
        readback = measurements.get(tag.name)
        previous = readback if readback is not None else loop.applied.get(tag.name)
        value, changes = clip_setpoint(tag, record.actuators.get(tag.name), previous,
                                       loop.spec.sample_period_s, dt)
        actuators[tag.name] = value
        if changes:
            why = "; ".join(change.message for change in changes)
            events.append(SafetyEvent(EventKind.API_GUARD, f"{tag.name}: {why}", tag.name))
    guarded = len(events) > len(record.events)
    status = StepStatus.FALLBACK if guarded and record.status is StepStatus.OK else record.status
    return dataclasses.replace(
        record, time_s=time_s,
        measurements=record.measurements or {k: v for k, v in measurements.items()
                                             if v is not None},
        setpoints=record.setpoints or setpoints, actuators=actuators, events=events,
        status=status)

