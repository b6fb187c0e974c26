"""Starting a live loop: within the server's limits, idempotent per key, with a planner
that keeps up with the process (api.services.loop_timing)."""

from __future__ import annotations

import threading
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Conflict, Invalid
from api.orm import ModelActivation, Run, RunKind
from api.services.audit import Actor, record
from api.services.loop_base import Clock, Loop, actor_name, hand_over
from api.services.loop_checks import (
    check_finite,
    check_setpoint_limits,
    check_setpoint_tags,
    initial_actuators,
    initial_setpoints,
)
from api.services.loop_limits import ControllerBuilder, LoopLimits, check_loop_count, check_planner
from api.services.loop_timing import allowed_planners, check_planner_timing
from api.services.models import get_model
from api.services.processes import process_or_builtin, spec_of
from api.services.runs import create_run
from twin.planner_names import PLANNER_NAMES as PLANNERS


class LoopStarts:
    """The starting part of api.services.loops.LoopManager."""

    limits: LoopLimits
    _clock: Clock
    _loops: dict[int, Loop]
    _registry_lock: threading.Lock
    _start_gates: dict[tuple[int | None, str], threading.Lock]
    _admission: threading.Lock
    _builder: ControllerBuilder

    def start(
        self,
        session: Session,
        process: str,
        model_id: int,
        planner: str,
        setpoints: Mapping[str, float],
        *,
        actor: Actor | None = None,
        initial: Mapping[str, float] | None = None,
        idempotency_key: str | None = None,
    ) -> Run:
        """Build the controller and time its planner (one that cannot keep up with the
        sample period is refused, 422, with a planner that can suggested), then store the
        run and its first model activation (audited as "loop.start" with an actor).
        `initial`: the actuator values the plant applies now. A start repeated with the
        same `idempotency_key` (per key) returns the loop the first one started; the key
        with another request is refused (409)."""
        if planner not in PLANNERS:
            raise Invalid(f"unknown planner '{planner}' (one of: {', '.join(PLANNERS)})")
        self._check_size(setpoints, initial or {})
        check_finite("setpoints", setpoints)
        check_finite("initial_actuators", initial or {})
        request = {
            "process": process,
            "model_id": model_id,
            "planner": planner,
            "setpoints": dict(setpoints),
            "initial_actuators": dict(initial or {}),
        }
        key_id = actor.key_id if actor is not None else None
        if idempotency_key is None:
            return self._start(session, request, actor, None)
        with self._registry_lock:
            gate = self._start_gates.setdefault((key_id, idempotency_key), threading.Lock())
        with gate:
            earlier = started_with(session, key_id, idempotency_key)
            if earlier is not None:
                if earlier.config.get("request") != request:
                    raise Conflict(
                        f"Idempotency-Key '{idempotency_key}' was used for another "
                        f"start (loop {earlier.id}); use a new key"
                    )
                return earlier
            return self._start(session, request, actor, idempotency_key)

    def _start(
        self, session: Session, request: dict, actor: Actor | None, idempotency_key: str | None
    ) -> Run:
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
        # within the builder's time limit: a planner far too slow is refused, not waited for
        timing = self._builder.build(
            f"model {model_id}, planner {planner}: timing its plans",
            lambda: check_planner_timing(controller, planner, allowed_planners(self.limits, actor)),
        )
        full_setpoints = initial_setpoints(controller.spec, request["setpoints"])
        given = request["initial_actuators"]
        applied = initial_actuators(controller.spec, given)
        config = {
            "planner": planner,
            "model_id": model_id,
            "setpoints": full_setpoints,
            "initial_actuators": given,
            "started_by_key": key_id,
            "request": request,
        }
        if timing is not None:
            config["planner_timing"] = timing
        if idempotency_key is not None:
            config["idempotency_key"] = idempotency_key
        with self._admission:  # the count again: other starts may have finished meanwhile
            session.expire_all()
            check_loop_count(session, self.limits, key_id)
            run = self._store_start(session, process, model_id, planner, config, actor)
        if given:  # else the controller starts from the nominals itself
            hand_over(controller, applied)
        with self._registry_lock:
            self._loops[run.id] = Loop(
                run.id, controller, full_setpoints, dict(given), model_id=model_id
            )
        return run

    def _store_start(
        self,
        session: Session,
        process: str,
        model_id: int,
        planner: str,
        config: dict,
        actor: Actor | None,
    ) -> Run:
        try:
            run = create_run(
                session,
                kind=RunKind.CONTROL,
                process=process,
                controller=f"twin/{planner}",
                model_id=model_id,
                config=config,
                commit=False,
            )
            run.started_at = self._clock()
            session.add(
                ModelActivation(
                    run_id=run.id,
                    model_id=model_id,
                    activated_at=run.started_at,
                    actor=actor_name(actor),
                    reason="loop started",
                )
            )
            record(
                session,
                actor,
                "loop.start",
                f"run:{run.id}",
                {"process": process, "model_id": model_id, "planner": planner},
            )
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return run


def started_with(session: Session, key_id: int | None, idempotency_key: str) -> Run | None:
    """The loop a start with this idempotency key (of this API key) made, if any."""
    query = select(Run).where(
        Run.kind == RunKind.CONTROL, Run.config["idempotency_key"].as_string() == idempotency_key
    )
    for run in session.scalars(query.order_by(Run.id)):
        if run.config.get("started_by_key") == key_id:
            return run
    return None
