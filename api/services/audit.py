"""The audit log: who changed what, written in the same transaction as the change.

Rules, so the log can be trusted to mean exactly "this happened":

* `record` only adds the row to the caller's session; the service that makes the
  change commits both together, so a change without its audit row (or a row for a
  change that was rolled back) cannot exist. A refused request records nothing.
* Only real changes are recorded. Repeating an idempotent request that changes
  nothing (stopping a stopped loop, revoking a revoked key, cancelling a job that is
  already stopped or flagged, defining a process with the spec it already has)
  succeeds but adds no row.
* Storing a built-in process the first time it is read is a cache fill, not a change
  anyone made: not audited.
* Control loop steps are not audited: one every sample period per loop would bury
  everything else, and each step is stored in full in the run's own tables anyway.
* The services take `actor=None` from callers that are not a person acting through
  the API (the worker, `twin train`, tests): those writes are not audited. Key
  management from the CLI is audited, with the actor `cli:<os user>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.orm import AuditEntry, Role
from api.services.jsonsafe import json_safe


@dataclass(frozen=True)
class Actor:
    """Who makes a request: a key (its id, name and role) or a keyless caller."""

    name: str
    role: Role
    key_id: int | None = None


ANONYMOUS = Actor("anonymous", Role.ADMIN)  # a keyless request while auth is not required


def record(
    session: Session,
    actor: Actor | None,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> AuditEntry | None:
    """Add an audit row for a change the caller is about to commit (None: not audited)."""
    if actor is None:
        return None
    entry = AuditEntry(
        key_id=actor.key_id,
        actor=actor.name,
        action=action,
        target=target,
        detail=json_safe(detail or {}),
    )
    session.add(entry)
    return entry


def list_audit(
    session: Session,
    *,
    key_id: int | None = None,
    action: str | None = None,
    target: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[AuditEntry]:
    """Newest first, optionally only one key's changes, one action, or one target."""
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    if key_id is not None:
        query = query.where(AuditEntry.key_id == key_id)
    if action is not None:
        query = query.where(AuditEntry.action == action)
    if target is not None:
        query = query.where(AuditEntry.target == target)
    return list(session.scalars(query))
