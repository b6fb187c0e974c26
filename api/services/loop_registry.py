"""The live loops of this OS process, by run id: finding a loop, rebuilding it from what
is stored after a restart (or on another API worker), refilling its controller's window
from the stored steps it did not see, and building a controller from a stored model."""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session

from api.errors import Conflict, Invalid
from api.orm import RunKind, RunStatus
from api.services.loop_base import (
    CATCH_UP_STEPS,
    Controller,
    ControllerFactory,
    Loop,
    hand_over,
)
from api.services.loop_checks import initial_actuators
from api.services.loop_limits import ControllerBuilder
from api.services.models import load_model_bytes
from api.services.runs import get_run, last_step, step_values, stored_history
from twin.errors import InvalidInput


class LoopRegistry:
    """The registry part of api.services.loops.LoopManager."""

    _factory: ControllerFactory
    _builder: ControllerBuilder
    _loops: dict[int, Loop]
    _registry_lock: threading.Lock
    _restoring: dict[int, threading.Lock]

    def _loop(
        self, session: Session, run_id: int, prebuilt: tuple[Controller, int] | None = None
    ) -> Loop:
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

    def _restore(
        self, session: Session, run_id: int, prebuilt: tuple[Controller, int] | None = None
    ) -> Loop:
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
            hand_over(controller, initial_actuators(controller.spec, applied))
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
            return self._builder.build(
                f"model {model_id}, planner {planner}", lambda: self._factory(checkpoint, planner)
            )
        except InvalidInput as exc:
            raise Invalid(f"model {model_id} cannot drive a loop: {exc}") from None
