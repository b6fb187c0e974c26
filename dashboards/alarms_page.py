"""The alarm summary page (`/alarms`): every alarm point of the control loops with its
ISA-18.2 state, refreshed by itself; acknowledge, shelve and unshelve from the table.

The page reads and acts through the JSON API (`/api/alarms`), sending the `twin_key`
cookie's key as a header: the API never takes a key from a cookie, so another site can
neither read nor act with it, and the action is recorded under that key's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from api.deps import SessionDep, SettingsDep
from api.schemas import AlarmOut
from api.services import alarms

REFRESH_S = 5
templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
router = APIRouter(include_in_schema=False)


@router.get("/alarms", response_class=HTMLResponse)
def alarms_page(request: Request, session: SessionDep, settings: SettingsDep,
                loop: Annotated[int | None, Query()] = None,
                show: Annotated[str, Query(pattern="^(open|all)$")] = "open") -> HTMLResponse:
    """`show=open` (default): every alarm that is not normal; `show=all`: also normal ones."""
    found = alarms.list_alarms(session, run_id=loop, limit=settings.max_list_limit)
    names = alarms.process_names(session, [a.run_id for a in found])
    rows = [AlarmOut.of(a, names[a.run_id]).model_dump(mode="json") for a in found]
    context = {"alarms": rows, "loop": loop, "show": show, "refresh_ms": REFRESH_S * 1000,
               "limit": settings.max_list_limit, "nav_active": "alarms"}
    return templates.TemplateResponse(request, "alarms.html", context)
