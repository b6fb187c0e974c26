"""Switching a live loop's model, and its history of models.

The loop's active model is `runs.model_id`, and `model_activations` its history (the
model it started with, then every switch). A switch builds the new controller before
touching anything, so a model that cannot drive the loop (wrong process, corrupted
checkpoint) changes nothing; the new controller starts from the actuator values last
applied (bumpless: its safety layer rate-limits from there).
"""

from __future__ import annotations

import threading

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import ChecksumMismatch, Conflict, Invalid
from api.orm import ModelActivation, Run, RunStatus, TwinModel
from api.services.audit import Actor, record
from api.services.loop_base import Clock, Controller, Loop, actor_name, control_run, hand_over
from api.services.models import get_model
from twin.operator import OperatorSettings


class LoopModels:
    """The model part of api.services.loops.LoopManager."""

    _clock: Clock
    _lock_timeout_s: float
    _loops: dict[int, Loop]
    _registry_lock: threading.Lock

    def switch_model(
        self,
        session: Session,
        run_id: int,
        model_id: int,
        reason: str,
        *,
        actor: Actor | None = None,
    ) -> Run:
        """Make `model_id` the loop's model (audited as "loop.model_switch" with an actor).

        Refused, changing nothing, for a model of another process (422), an unknown model
        (404), a corrupted checkpoint or a stopped loop (409). Switching to the model that
        is already active succeeds and records nothing."""
        run = control_run(session, run_id)
        if run.status != RunStatus.RUNNING:
            raise Conflict(f"loop {run_id} is {run.status}; only a running loop can switch models")
        model = get_model(session, model_id)
        if model.process_id != run.process_id:
            raise Invalid(
                f"model {model_id} ('{model.name}' v{model.version}) was trained "
                f"for process '{model.process.name}', not for this loop's "
                f"'{run.process.name}'"
            )
        if run.model_id == model_id:
            return run
        planner = str(run.config.get("planner", "casadi"))
        try:
            controller = self._build(session, model_id, planner)
        except ChecksumMismatch as exc:
            raise Conflict(f"model {model_id} cannot be activated: {exc}") from None
        if controller.spec.name != run.process.name:
            raise Invalid(
                f"model {model_id} controls '{controller.spec.name}', not '{run.process.name}'"
            )
        loop = self._loop(session, run_id, prebuilt=(controller, model_id))
        if not loop.lock.acquire(timeout=self._lock_timeout_s):
            raise Conflict(f"loop {run_id} is busy with a step; try the switch again")
        try:
            self._switch_locked(session, loop, run, model, controller, reason, actor)
        finally:
            loop.lock.release()
        return run

    def _switch_locked(
        self,
        session: Session,
        loop: Loop,
        run: Run,
        model: TwinModel,
        controller: Controller,
        reason: str,
        actor: Actor | None,
    ) -> None:
        session.refresh(run)  # a step or a stop may have committed while we waited
        if run.status != RunStatus.RUNNING:
            raise Conflict(f"loop {run.id} was {run.status} meanwhile; nothing switched")
        previous = run.model_id
        if previous == model.id:  # a concurrent request made the same switch first
            return
        try:
            run.model_id = model.id
            session.add(
                ModelActivation(
                    run_id=run.id,
                    model_id=model.id,
                    previous_model_id=previous,
                    activated_at=self._clock(),
                    actor=actor_name(actor),
                    reason=reason,
                )
            )
            record(
                session,
                actor,
                "loop.model_switch",
                f"run:{run.id}",
                {
                    "model_id": model.id,
                    "previous_model_id": previous,
                    "name": model.name,
                    "version": model.version,
                    "sha256": model.sha256,
                    "reason": reason,
                },
            )
            session.commit()
        except BaseException:
            session.rollback()
            if loop.controller is controller:  # restored for this switch: forget it
                with self._registry_lock:
                    self._loops.pop(run.id, None)
            raise
        hand_over(controller, loop.applied)
        loop.controller, loop.model_id = controller, model.id
        loop.last_step = None  # the new twin refills its window from the stored steps
        loop.operator = OperatorSettings()  # the operator's settings follow at the next step

    def history(self, session: Session, run_id: int) -> list[ModelActivation]:
        """The loop's model activations, newest first."""
        control_run(session, run_id)
        return list(
            session.scalars(
                select(ModelActivation)
                .where(ModelActivation.run_id == run_id)
                .order_by(ModelActivation.activated_at.desc(), ModelActivation.id.desc())
            )
        )
