"""The operator's controls of a live loop: the controller's mode, each actuator in or out
of service, each sensor enabled or dropped, each sensor's range, each economic direction
(`twin.operator`).

The settings live in the loop's run (`runs.config["operator"]`), so they survive a restart
and every API worker reads them before its next step (`follow_operator`). A change is
validated against the process's spec before anything is written (an unknown mode,
actuator or sensor, a range outside the sensor's limits, or an unknown economic direction,
changes nothing), audited as "loop.operator" with the key's name and the reason, and
recorded as a run event at the step it takes effect at, so the trends can show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Conflict, Invalid
from api.orm import Run, RunEvent, RunStatus
from api.services.audit import Actor, record
from api.services.loop_base import Loop, actor_name, control_run
from api.services.processes import spec_of
from api.services.runs import last_step
from twin.errors import InvalidInput
from twin.operator import OPERATOR_EVENT, OperatorSettings

CONFIG_KEY = "operator"


def stored_settings(run: Run) -> OperatorSettings:
    return OperatorSettings.from_dict(run.config.get(CONFIG_KEY))


def follow_operator(loop: Loop, stored: Mapping[str, Any] | None) -> None:
    """Hand the loop's controller the stored settings when they changed (from the next
    step on). A controller without operator controls (a test's fake) is left as it is."""
    settings = OperatorSettings.from_dict(stored)
    if settings == loop.operator:
        return
    setter = getattr(loop.controller, "set_operator", None)
    if setter is not None:
        setter(settings)
    loop.operator = settings


class LoopOperator:
    """The operator part of api.services.loops.LoopManager."""

    def operator(self, session: Session, run_id: int) -> OperatorSettings:
        return stored_settings(control_run(session, run_id))

    def change_operator(
        self,
        session: Session,
        run_id: int,
        reason: str,
        *,
        mode: str | None = None,
        out_of_service: Mapping[str, bool] | None = None,
        dropped: Mapping[str, bool] | None = None,
        ranges: Mapping[str, tuple[float, float] | None] | None = None,
        economic: Mapping[str, str | None] | None = None,
        actor: Actor | None = None,
    ) -> OperatorSettings:
        """Apply an operator's change from the next step on. Refused, changing nothing: an
        unknown mode, actuator or sensor, a range that is empty or reaches its sensor's
        engineering limits, an economic direction other than maximise or minimise (422), a
        stopped loop (409). `ranges`: sensor -> (low, high), or None to clear it;
        `economic`: actuator or sensor -> direction, or None to clear it. A change to what
        is already set succeeds and records nothing."""
        if mode is None and not (out_of_service or dropped or ranges or economic):
            raise Invalid("name a change: mode, out_of_service, dropped, ranges or economic")
        run = session.scalars(
            select(Run)
            .where(Run.id == control_run(session, run_id).id)
            .with_for_update(of=Run)  # not the joined process row
            .execution_options(populate_existing=True)
        ).one()
        if run.status != RunStatus.RUNNING:
            raise Conflict(f"loop {run_id} is {run.status}; only a running loop can change")
        before, spec = stored_settings(run), spec_of(run.process)
        try:
            after = before.changed(spec, mode, out_of_service, dropped, ranges, economic)
        except InvalidInput as exc:
            raise Invalid(str(exc)) from None
        words = after.describe_change(before, spec)
        if not words:
            return after
        try:
            run.config = {**run.config, CONFIG_KEY: after.to_dict()}
            previous = last_step(session, run_id)
            who = actor_name(actor)
            session.add(
                RunEvent(
                    run_id=run_id,
                    step=0 if previous is None else previous.step + 1,
                    time_s=0.0 if previous is None else previous.time_s,
                    kind=OPERATOR_EVENT,
                    message=f"{'; '.join(words)} (by {who}: {reason})",
                    tag=None,
                )
            )
            record(
                session,
                actor,
                "loop.operator",
                f"run:{run_id}",
                {"changes": words, "settings": after.to_dict(), "reason": reason},
            )
            session.commit()
        except BaseException:
            session.rollback()
            raise
        return after
