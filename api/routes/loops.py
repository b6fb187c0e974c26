"""Live control loops: start, step every sample period, stop. Operator role.

Starting and stopping are audited; steps are not (see api.services.audit).
"""

from __future__ import annotations

from fastapi import APIRouter, status

from api.deps import LoopsDep, OperatorDep, SessionDep, require
from api.orm import Role
from api.schemas import LoopCreate, LoopOut, StepIn, StepOut

router = APIRouter(prefix="/api/loops", tags=["loops"], dependencies=[require(Role.OPERATOR)])


@router.post("", response_model=LoopOut, status_code=status.HTTP_201_CREATED)
def start_loop(body: LoopCreate, session: SessionDep, loops: LoopsDep,
               actor: OperatorDep) -> LoopOut:
    run = loops.start(session, body.process, body.model_id, body.planner, body.setpoints,
                      actor=actor)
    return LoopOut.of(run)


@router.post("/{run_id}/step", response_model=StepOut)
def step_loop(run_id: int, body: StepIn, session: SessionDep, loops: LoopsDep) -> StepOut:
    _, record = loops.step(session, run_id, body.time_s, body.measurements, body.setpoints)
    return StepOut.of(run_id, record)


@router.post("/{run_id}/stop", response_model=LoopOut)
def stop_loop(run_id: int, session: SessionDep, loops: LoopsDep,
              actor: OperatorDep) -> LoopOut:
    return LoopOut.of(loops.stop(session, run_id, actor=actor))
