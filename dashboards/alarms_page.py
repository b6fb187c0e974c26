"""The alarm summary page (`/alarms`): every alarm point of the control loops with its
ISA-18.2 state, refreshed by itself; acknowledge, shelve and unshelve from the table.

The page reads and acts through its own endpoints (`/dash/api/alarms...`), which know the
person from the page's session (dashboards.login), as every page does. The JSON API never
takes a cookie; these endpoints take one only with the page's CSRF token in a header (a
value no other site can read), and an action needs the operator role and is recorded,
with the key's name, in the alarm's history and the audit log, as through the API.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, Field

from api.deps import SessionDep, SettingsDep
from api.errors import Forbidden
from api.orm import Role, utcnow
from api.schemas import AlarmOut
from api.services import alarms
from api.services.audit import Actor
from api.services.auth import check_role
from dashboards.login import SESSION_COOKIE, page_actor

REFRESH_S = 5
CSRF_HEADER = "X-CSRF-Token"
ACTIONS = ("acknowledge", "shelve", "unshelve")
templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
router = APIRouter(include_in_schema=False)


def csrf_token(request: Request) -> str:
    """A token bound to this browser's session and the server's secret."""
    secret = request.app.state.session_signer.secret_key
    secret = secret if isinstance(secret, bytes) else str(secret).encode()
    session = request.cookies.get(SESSION_COOKIE, "")
    return hmac.new(secret, f"alarms:{session}".encode(), hashlib.sha256).hexdigest()


def _rows(session: SessionDep, loop: int | None, limit: int) -> list[dict]:
    found = alarms.list_alarms(session, run_id=loop, now=utcnow(), limit=limit)
    names = alarms.process_names(session, [a.run_id for a in found])
    return [AlarmOut.of(a, names[a.run_id]).model_dump(mode="json") for a in found]


@router.get("/alarms", response_class=HTMLResponse)
def alarms_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    loop: Annotated[int | None, Query()] = None,
    show: Annotated[str, Query(pattern="^(open|all)$")] = "open",
) -> HTMLResponse:
    """`show=open` (default): every alarm that is not normal; `show=all`: also normal ones."""
    context = {
        "alarms": _rows(session, loop, settings.max_list_limit),
        "loop": loop,
        "show": show,
        "refresh_ms": REFRESH_S * 1000,
        "limit": settings.max_list_limit,
        "nav_active": "alarms",
        "csrf": csrf_token(request),
    }
    return templates.TemplateResponse(request, "alarms.html", context)


@router.get("/dash/api/alarms")
def alarms_json(
    session: SessionDep, settings: SettingsDep, loop: Annotated[int | None, Query(ge=1)] = None
) -> JSONResponse:
    return JSONResponse(_rows(session, loop, settings.max_list_limit))


class ShelveBody(BaseModel):
    minutes: float = Field(gt=0, le=alarms.MAX_SHELVE_MINUTES)
    reason: str = Field(min_length=1, max_length=500)


@router.post("/dash/api/alarms/{alarm_id}/{action}")
def alarm_action(
    request: Request,
    alarm_id: int,
    action: str,
    session: SessionDep,
    actor: Annotated[Actor, Depends(page_actor)],
    body: ShelveBody | None = None,
) -> JSONResponse:
    if not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""), csrf_token(request)):
        raise Forbidden(
            "this action must come from the alarm page (its CSRF token is "
            "missing or wrong): reload the page"
        )
    check_role(actor, Role.OPERATOR)
    if action == "acknowledge":
        alarm = alarms.acknowledge(session, alarm_id, actor, now=utcnow())
    elif action == "unshelve":
        alarm = alarms.unshelve(session, alarm_id, actor, now=utcnow())
    elif action == "shelve" and body is not None:
        alarm = alarms.shelve(session, alarm_id, actor, body.minutes, body.reason, now=utcnow())
    else:
        raise Forbidden(
            f"unknown alarm action '{action}' (one of {', '.join(ACTIONS)}; "
            "shelve needs minutes and a reason)"
        )
    names = alarms.process_names(session, [alarm.run_id])
    return JSONResponse(AlarmOut.of(alarm, names[alarm.run_id]).model_dump(mode="json"))
