"""FastAPI dependencies: everything a route needs comes from `app.state`, set by create_app.

Access control: every router states the least role its routes need (viewer for
reading), and each write route asks for its own role through `OperatorDep`,
`EngineerDep` or `AdminDep`, which also hand the route the `Actor` to audit. The key
is looked up once per request (FastAPI caches `_api_actor`), in the request's session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import APIKeyCookie, APIKeyHeader, HTTPBearer
from sqlalchemy.orm import Session

from api.orm import Role
from api.services.audit import Actor
from api.services.auth import authenticate, check_role, presented_token
from api.services.loops import LoopManager
from api.settings import Settings

# Declared for the OpenAPI schema (the "Authorize" button of /docs). auto_error=False:
# the headers are read and judged by `presented_token`, which knows auth_required.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="BearerKey",
    description="An API key: `twin keys create --role ROLE --name NAME`.",
)
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKeyHeader",
    description="The same API key, for clients that cannot send an Authorization header.",
)
# Browsers cannot add headers to a page request: the HTML pages also read this cookie
# (set it once in the browser, e.g. `document.cookie = "twin_key=<token>; path=/"`).
# Only the read-only pages do, so a cookie never authorises a write (no CSRF to defend).
KEY_COOKIE = APIKeyCookie(name="twin_key", auto_error=False, scheme_name="KeyCookie")


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _loops(request: Request) -> LoopManager:
    return request.app.state.loops


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(_settings)]
LoopsDep = Annotated[LoopManager, Depends(_loops)]


def _api_actor(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _bearer: Annotated[object, Depends(BEARER)],
    _header: Annotated[object, Depends(API_KEY_HEADER)],
) -> Actor:
    token = presented_token(request.headers.get("authorization"), request.headers.get("x-api-key"))
    return authenticate(session, token, required=settings.auth_required)


def _page_actor(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _cookie: Annotated[object, Depends(KEY_COOKIE)],
) -> Actor:
    token = presented_token(
        request.headers.get("authorization"),
        request.headers.get("x-api-key"),
        request.cookies.get("twin_key"),
    )
    return authenticate(session, token, required=settings.auth_required)


def _require(role: Role, actor_of: Callable[..., Actor] = _api_actor) -> Callable[..., Actor]:
    # A default, not Annotated[...]: with postponed annotations FastAPI would evaluate the
    # annotation in the module's globals, where the closure's `actor_of` does not exist.
    actor_dependency = Depends(actor_of)

    def check(actor: Actor = actor_dependency) -> Actor:
        check_role(actor, role)
        return actor

    check.__name__ = f"require_{role}"
    return check


def require(role: Role) -> DependsParam:
    """For `dependencies=[...]` of a router or route that does not need the actor."""
    return Depends(_require(role))


def require_page_viewer() -> DependsParam:
    """The HTML pages: the viewer role, from a header or the `twin_key` cookie."""
    return Depends(_require(Role.VIEWER, _page_actor))


OperatorDep = Annotated[Actor, Depends(_require(Role.OPERATOR))]
EngineerDep = Annotated[Actor, Depends(_require(Role.ENGINEER))]
AdminDep = Annotated[Actor, Depends(_require(Role.ADMIN))]
