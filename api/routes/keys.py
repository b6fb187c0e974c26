"""API keys and the audit log: admin role.

The first admin key comes from the command line (`twin keys create --role admin
--name NAME`), which needs only access to the database. The audit log is admin-only
too: it is a security record (which key did what, and when), and reading it is part
of deciding which keys to keep.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.contract import API_ERRORS, MAX_ID, KeyIdPath, StrictJSONRoute, error_responses
from api.deps import AdminDep, SessionDep, SettingsDep, require
from api.orm import Role
from api.schemas import AuditOut, KeyCreate, KeyCreated, KeyOut
from api.services import audit, auth

router = APIRouter(
    prefix="/api",
    dependencies=[require(Role.ADMIN)],
    route_class=StrictJSONRoute,
    responses=error_responses(*API_ERRORS),
)


@router.post("/keys", response_model=KeyCreated, status_code=201, tags=["keys"])
def create_key(body: KeyCreate, session: SessionDep, actor: AdminDep) -> KeyCreated:
    """Create a key; its token is in this response only (store it now, it is not kept)."""
    key, token = auth.create_key(session, body.name, body.role, actor)
    return KeyCreated.with_token(key, token)


@router.get("/keys", response_model=list[KeyOut], tags=["keys"])
def list_keys(
    session: SessionDep,
    settings: SettingsDep,
    include_revoked: bool = True,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[KeyOut]:
    keys = auth.list_keys(
        session,
        include_revoked=include_revoked,
        limit=min(limit, settings.max_list_limit),
        offset=offset,
    )
    return [KeyOut.of(k) for k in keys]


@router.post("/keys/{key_id}/revoke", response_model=KeyOut, tags=["keys"])
def revoke_key(key_id: KeyIdPath, session: SessionDep, actor: AdminDep) -> KeyOut:
    """Revoke at once: the next request with this key gets 401. Revoking twice is harmless.
    Refused (409): the caller's own key, and the last admin key (keys are managed here only
    while one exists)."""
    return KeyOut.of(auth.revoke_key(session, key_id, actor, keep_an_admin=True))


@router.get("/audit", response_model=list[AuditOut], tags=["audit"])
def list_audit(
    session: SessionDep,
    settings: SettingsDep,
    key_id: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    action: str | None = None,
    target: str | None = None,
    limit: Annotated[int, Query(ge=1)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[AuditOut]:
    """Changes, newest first; filter by key, action (e.g. job.cancel) or target (run:12)."""
    entries = audit.list_audit(
        session,
        key_id=key_id,
        action=action,
        target=target,
        limit=min(limit, settings.max_list_limit),
        offset=offset,
    )
    return [AuditOut.of(e) for e in entries]
