"""Reading live loops: what a client or a person sees of each (GET /api/loops...).

Status of a loop, as clients see it: `stopped` when the run no longer runs; `stale`
when no step arrived for more than STALE_AFTER_PERIODS sample periods (or the last
step itself held on stale data); else the last step's `ok` or `fallback`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import NotFound
from api.orm import Run, RunKind, RunStatus, RunStep, TwinModel
from api.services.loop_base import STALE_AFTER_PERIODS, Clock, aware, control_run
from api.services.processes import spec_of
from api.services.runs import last_step, step_values
from twin.records import StepStatus


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


class LoopReading:
    """The reading part of api.services.loops.LoopManager."""

    _clock: Clock

    def view(self, session: Session, run_id: int) -> LoopView:
        return self._view(session, control_run(session, run_id), self._clock())

    def list_loops(
        self,
        session: Session,
        *,
        process: str | None = None,
        running: bool | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[LoopView]:
        """Loops newest first; optionally of one process, running (or not) only."""
        query = (
            select(Run)
            .where(Run.kind == RunKind.CONTROL)
            .order_by(Run.id.desc())
            .limit(limit)
            .offset(offset)
        )
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
            raise NotFound(
                f"loop {run_id} has no setpoint yet: nothing was posted to "
                f"POST /api/loops/{run_id}/step"
            )
        return view

    def _view(self, session: Session, run: Run, now: datetime) -> LoopView:
        spec = spec_of(run.process)
        stale_after_s = STALE_AFTER_PERIODS * spec.sample_period_s
        last = last_step(session, run.id)
        values = step_values(session, run.id, last.step) if last is not None else {}
        since = aware(run.last_step_at if last is not None and run.last_step_at else run.started_at)
        age_s = max(0.0, (now - since).total_seconds())
        model = session.get(TwinModel, run.model_id) if run.model_id is not None else None
        return LoopView(
            run=run,
            status=loop_status(run, last, age_s, stale_after_s),
            model=model,
            last=last,
            age_s=age_s,
            stale_after_s=stale_after_s,
            setpoints=values.get("setpoint") or dict(run.config.get("setpoints", {})),
            actuators=values.get("actuator", {}),
        )


def loop_status(run: Run, last: RunStep | None, age_s: float, stale_after_s: float) -> str:
    if run.status != RunStatus.RUNNING:
        return StepStatus.STOPPED
    if age_s > stale_after_s:
        return StepStatus.STALE
    if last is None:
        return StepStatus.OK
    return last.status if last.status in (StepStatus.FALLBACK, StepStatus.STALE) else StepStatus.OK
