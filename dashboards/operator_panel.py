"""The operator's controls on a live loop's page: the controller's mode, each actuator in or
out of service, each sensor dropped or enabled and its range, each actuator's and sensor's
economic direction (none, maximise or minimise), with a form to change them.

The form sends the same change as `PUT /api/loops/{id}/operator` (api.loop_schemas.
OperatorChange, a reason required) to the page's own endpoint `PUT /dash/api/loops/{id}/
operator`, which knows the person from the page's session and takes a cookie only with
the page's CSRF token in a header, as the alarm page's actions do (dashboards.alarms_page).
The change goes through the same service, so it is validated, audited and shown on the
trends as through the API. Only the operator role (and above) sees the form; a viewer
sees the settings read-only.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRouter

from api.deps import LoopsDep, SessionDep
from api.errors import Forbidden
from api.loop_schemas import OperatorChange, OperatorOut
from api.orm import Role, Run, RunKind, RunStatus
from api.services.audit import Actor
from api.services.auth import check_role, role_allows
from api.services.loop_operator import stored_settings
from dashboards.alarms_page import CSRF_HEADER, csrf_token
from dashboards.login import page_actor
from twin.operator import DIRECTIONS, Mode, OperatorSettings
from twin.spec import ProcessSpec

router = APIRouter(include_in_schema=False)


def panel(request: Request, run: Run, spec: ProcessSpec) -> dict[str, Any] | None:
    """What the run page shows of a running control loop's operator settings (None for any
    other run), and whether this person may change them."""
    if run.kind != RunKind.CONTROL or run.status != RunStatus.RUNNING:
        return None
    settings = stored_settings(run)
    actor: Actor | None = getattr(request.state, "actor", None)
    return {
        "run_id": run.id,
        "mode": str(settings.mode),
        "modes": [m.value for m in Mode],
        "directions": list(DIRECTIONS),
        "actuators": [
            {
                "name": t.name,
                "unit": t.unit,
                "out_of_service": t.name in settings.out_of_service,
                "economic": settings.economic.get(t.name),
            }
            for t in spec.actuators
        ],
        "sensors": [_sensor_row(t, settings) for t in spec.sensors],
        "can_change": actor is not None and role_allows(actor.role, Role.OPERATOR),
        "csrf": csrf_token(request),
        "url": f"/dash/api/loops/{run.id}/operator",
    }


def _sensor_row(tag, settings: OperatorSettings) -> dict[str, Any]:
    low, high = settings.ranges.get(tag.name, (None, None))
    return {
        "name": tag.name,
        "unit": tag.unit,
        "limit_low": tag.low,
        "limit_high": tag.high,
        "dropped": tag.name in settings.dropped,
        "range_low": low,
        "range_high": high,
        "economic": settings.economic.get(tag.name),
    }


@router.put("/dash/api/loops/{run_id}/operator")
def change_operator(
    request: Request,
    run_id: int,
    body: OperatorChange,
    session: SessionDep,
    loops: LoopsDep,
    actor: Annotated[Actor, Depends(page_actor)],
) -> JSONResponse:
    """The run page's form: the change `PUT /api/loops/{id}/operator` takes, same rules."""
    if not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), csrf_token(request)):
        raise Forbidden(
            "this change must come from the loop's page (its CSRF token is missing or "
            "wrong): reload the page"
        )
    check_role(actor, Role.OPERATOR)
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
    return JSONResponse(OperatorOut.of(run_id, settings).model_dump(mode="json", exclude_none=True))
