"""Logging in to the dashboards: an API key exchanged for a signed session cookie.

`/login` takes an API key once (a form post) and answers with the `twin_session`
cookie: HttpOnly (no script can read it), SameSite=Lax (another site's form or fetch
does not carry it), Secure over HTTPS, valid for one shift. The cookie holds only the
key's id and a fragment of its hash, signed with the server's secret (itsdangerous), never
the key: every request looks the key up again, so revoking it ends its sessions at once.

The secret comes from TWIN_SESSION_SECRET, or from the file TWIN_SESSION_SECRET_FILE
names (a docker secret); without either, each server process draws its own at start, so
sessions end when it restarts and several worker processes need the variable set.

Every HTML page asks `page_actor` who is calling: a key in a header (scripts), the session
cookie, or the older `twin_key` cookie. Without any and with TWIN_AUTH_REQUIRED=true a page
redirects to /login; the role found is shown in the page's header.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep
from api.errors import ServiceError, Unauthorized
from api.orm import ApiKey, Role
from api.services.audit import ANONYMOUS, Actor
from api.services.auth import authenticate, check_role, presented_token

SESSION_COOKIE = "twin_session"
LEGACY_COOKIE = "twin_key"
SESSION_MAX_AGE_S = 12 * 3600  # one shift
HASH_FRAGMENT = 16  # characters of the key's hash kept in the cookie: a new key, a new session
MAX_FORM_BYTES = 4_096
templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
router = APIRouter(include_in_schema=False)


class LoginRequired(Exception):
    """A page asked for without a session while keys are required: go to /login."""

    def __init__(self, next_path: str, reason: str = "") -> None:
        super().__init__(reason or "log in to see this page")
        self.next_path, self.reason = next_path, reason


def session_secret() -> str:
    """TWIN_SESSION_SECRET, else the file TWIN_SESSION_SECRET_FILE, else a random one."""
    value = os.environ.get("TWIN_SESSION_SECRET", "").strip()
    path = os.environ.get("TWIN_SESSION_SECRET_FILE", "").strip()
    if not value and path:
        value = Path(path).read_text().strip()
    return value or secrets.token_urlsafe(32)


def session_signer(secret: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt="twin-dashboard-session")


def _signer(request: Request) -> URLSafeTimedSerializer:
    return request.app.state.session_signer


def _session_key(request: Request, session: Session) -> Actor | None:
    """The actor of a valid session cookie, or None (absent, forged, expired, revoked)."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    try:
        key_id, fragment = _signer(request).loads(cookie, max_age=SESSION_MAX_AGE_S)
        key = session.get(ApiKey, int(key_id))
    except (BadSignature, ValueError, TypeError):
        return None
    if key is None or key.revoked_at is not None or key.key_hash[:HASH_FRAGMENT] != fragment:
        return None
    return Actor(name=key.name, role=Role(key.role), key_id=key.id)


def page_actor(request: Request, session: SessionDep, settings: SettingsDep) -> Actor:
    """Who asks for a page: a key in a header, the session cookie, the older key cookie;
    else, with keys required, LoginRequired (a redirect to /login)."""
    token = presented_token(request.headers.get("authorization"), request.headers.get("x-api-key"))
    actor = None
    if token is not None:
        actor = authenticate(session, token, required=True)
    else:
        actor = _session_key(request, session)
        legacy = request.cookies.get(LEGACY_COOKIE, "").strip()
        if actor is None and legacy:
            actor = authenticate(session, legacy, required=True)
    if actor is None and settings.auth_required:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        expired = (
            " (your session ended or its key was revoked)"
            if SESSION_COOKIE in request.cookies
            else ""
        )
        raise LoginRequired(target, f"log in with an API key to see this page{expired}")
    request.state.actor = actor or ANONYMOUS
    request.state.logged_in = actor is not None
    return actor or ANONYMOUS


def require_page_role(role: Role = Role.VIEWER) -> DependsParam:
    """For a page router: the role from `page_actor` (the header shows it)."""

    def check(actor: Annotated[Actor, Depends(page_actor)]) -> Actor:
        check_role(actor, role)
        return actor

    check.__name__ = f"require_page_{role}"
    return Depends(check)


def _safe_next(path: str | None) -> str:
    """Only a path on this site: never another host (`//evil`, `https://...`)."""
    if not path or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def login_redirect(exc: LoginRequired) -> RedirectResponse:
    return RedirectResponse(f"/login?next={quote(_safe_next(exc.next_path))}", status_code=303)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, session: SessionDep, next: str = "/") -> HTMLResponse:
    current = _session_key(request, session)
    return templates.TemplateResponse(
        request, "login.html", {"next": _safe_next(next), "error": None, "current": current}
    )


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, session: SessionDep) -> Response:
    body = await request.body()
    form = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace"))
    key_text = (form.get("api_key") or [""])[0].strip()
    target = _safe_next((form.get("next") or ["/"])[0])
    try:
        if not key_text:
            raise Unauthorized(
                "enter an API key (an admin makes one with "
                "`twin keys create --role viewer --name NAME`)"
            )
        actor = authenticate(session, key_text, required=True)
    except ServiceError as exc:
        return templates.TemplateResponse(
            request,
            "login.html",
            {"next": target, "error": str(exc), "current": None},
            status_code=401,
        )
    key = session.get(ApiKey, actor.key_id)
    assert key is not None  # authenticate found it
    value = _signer(request).dumps([key.id, key.key_hash[:HASH_FRAGMENT]])
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=SESSION_MAX_AGE_S,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )
    return response


@router.api_route("/logout", methods=["GET", "POST"])
def logout() -> RedirectResponse:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    response.delete_cookie(LEGACY_COOKIE, path="/")
    return response
