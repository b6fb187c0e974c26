"""Live control loops: read them (viewer), start, step and stop them (operator), switch
their model (engineer), set the operator's controls (operator).

A client either posts measurements and gets setpoints in the same call (`/step`), or
polls `GET /api/loops/{id}/setpoint` for the latest. Starting, stopping, model
switches and operator changes are audited; steps are not (see api.services.audit).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, status

from api.contract import API_ERRORS, RunIdPath, StrictJSONRoute, error_responses
from api.deps import EngineerDep, LoopsDep, OperatorDep, SessionDep, require
from api.loop_schemas import OperatorChange, OperatorOut
from api.orm import Role
from api.schemas import (
    ActivationOut,
    LoopCreate,
    LoopOut,
    ModelSwitch,
    SetpointOut,
    StepIn,
    StepOut,
)

router = APIRouter(
    prefix="/api/loops",
    tags=["loops"],
    dependencies=[require(Role.VIEWER)],
    route_class=StrictJSONRoute,
    responses=error_responses(*API_ERRORS, 503),
)


@router.get("", response_model=list[LoopOut])
def list_loops(
    session: SessionDep,
    loops: LoopsDep,
    process: str | None = None,
    running: Annotated[
        bool | None, Query(description="true: running loops only; false: stopped ones only")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[LoopOut]:
    """Control loops, newest first, with their status, active model and latest values."""
    views = loops.list_loops(session, process=process, running=running, limit=limit, offset=offset)
    return [LoopOut.of(view) for view in views]


@router.post("", response_model=LoopOut, status_code=status.HTTP_201_CREATED)
def start_loop(
    body: LoopCreate,
    session: SessionDep,
    loops: LoopsDep,
    actor: OperatorDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=200,
            pattern=r"^[\x21-\x7e]+$",
            description="retry a start safely: a start with a key this API key "
            "already used returns that loop (the same request) or 409 "
            "(another request)",
        ),
    ] = None,
) -> LoopOut:
    """Start a loop (see LoopCreate). Its controller is built within the server's limits
    (TWIN_PLANNER_BUILD_TIMEOUT_S and memory): past them the answer is 503 and nothing
    was started. Operator role."""
    run = loops.start(
        session,
        body.process,
        body.model_id,
        body.planner,
        body.setpoints,
        actor=actor,
        initial=body.initial_actuators,
        idempotency_key=idempotency_key,
    )
    return LoopOut.of(loops.view(session, run.id))


@router.get("/{run_id}", response_model=LoopOut)
def get_loop(run_id: RunIdPath, session: SessionDep, loops: LoopsDep) -> LoopOut:
    return LoopOut.of(loops.view(session, run_id))


@router.get("/{run_id}/setpoint", response_model=SetpointOut)
def latest_setpoint(run_id: RunIdPath, session: SessionDep, loops: LoopsDep) -> SetpointOut:
    """The actuator setpoints the last step returned, its status and age (404 before the
    first step). Poll it every sample period; `stale` means no step arrived lately."""
    return SetpointOut.of(loops.latest_setpoint(session, run_id))


@router.post("/{run_id}/step", response_model=StepOut, dependencies=[require(Role.OPERATOR)])
def step_loop(run_id: RunIdPath, body: StepIn, session: SessionDep, loops: LoopsDep) -> StepOut:
    """Post one sample (see StepIn); the answer's actuators are to be applied now.

    Refused (422), storing nothing: unknown tags, a missing sensor, a time_s that is not
    plausible, a unit mix-up. 409: time_s not after the last step's, or a stopped loop."""
    _, record = loops.step(session, run_id, body.time_s, body.measurements, body.setpoints)
    return StepOut.of(run_id, record)


@router.post("/{run_id}/stop", response_model=LoopOut)
def stop_loop(
    run_id: RunIdPath, session: SessionDep, loops: LoopsDep, actor: OperatorDep
) -> LoopOut:
    loops.stop(session, run_id, actor=actor)
    return LoopOut.of(loops.view(session, run_id))


@router.get("/{run_id}/models", response_model=list[ActivationOut])
def model_history(run_id: RunIdPath, session: SessionDep, loops: LoopsDep) -> list[ActivationOut]:
    """The models this loop was driven by, newest first (the first is the active one)."""
    return [ActivationOut.of(a) for a in loops.history(session, run_id)]


@router.put("/{run_id}/model", response_model=LoopOut)
def switch_model(
    run_id: RunIdPath, body: ModelSwitch, session: SessionDep, loops: LoopsDep, actor: EngineerDep
) -> LoopOut:
    """Make another model of the loop's process drive it, from the next step on.

    The new controller is built (checkpoint verified) before anything changes, and
    continues from the actuator values last applied. Engineer role."""
    loops.switch_model(session, run_id, body.model_id, body.reason, actor=actor)
    return LoopOut.of(loops.view(session, run_id))


@router.get("/{run_id}/operator", response_model=OperatorOut, response_model_exclude_none=True)
def get_operator(run_id: RunIdPath, session: SessionDep, loops: LoopsDep) -> OperatorOut:
    """The loop's controller mode, actuators out of service, dropped sensors, sensors'
    ranges and economic directions."""
    return OperatorOut.of(run_id, loops.operator(session, run_id))


@router.put("/{run_id}/operator", response_model=OperatorOut, response_model_exclude_none=True)
def change_operator(
    run_id: RunIdPath,
    body: OperatorChange,
    session: SessionDep,
    loops: LoopsDep,
    actor: OperatorDep,
) -> OperatorOut:
    """Change the controller mode, put actuators in or out of service, drop or enable
    sensors, set or clear sensors' ranges and economic directions, from the next step on;
    audited with the key's name and the reason, and shown on the trends as an event. An
    unknown mode, actuator or sensor, a range that is empty or reaches the sensor's
    engineering limits, or a direction other than maximise or minimise, is refused (422)
    and changes nothing. Operator role."""
    settings = loops.change_operator(
        session,
        run_id,
        body.reason,
        mode=body.mode,
        out_of_service=body.out_of_service,
        dropped=body.dropped,
        ranges=body.range_bounds(),
        economic=body.economic,
        actor=actor,
    )
    return OperatorOut.of(run_id, settings)
