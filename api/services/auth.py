"""API keys and roles: create, list, revoke, and authenticate a presented token.

Roles are ordered, each including the ones before it:

    viewer    read everything (GET routes, dashboards)
    operator  + run control loops (start, step, stop)
    engineer  + train (queue and cancel jobs), define processes, manage models
    admin     + manage keys and read the audit log

A token looks like `twin_<prefix>_<secret>`: 6 random bytes of public prefix (hex), then
32 random bytes of secret (urlsafe base64). Only the prefix and the sha256 of the whole
token are stored; the token is shown once, when the key is created.

Why sha256 and not a slow password hash (scrypt, argon2): slow hashes exist to make
guessing *low-entropy* secrets (passwords people choose) expensive. A token carries
256 random bits; no amount of hashing speed makes a search of that space feasible, so
a leaked `api_keys` table gives nothing away either way. A slow hash would, however,
cost tens of milliseconds of CPU on every request (a control loop steps every sample
period), and hand anyone who can send requests a cheap way to burn the server's CPU.

The prefix finds the row through a unique index; the hashes are then compared in
constant time. Revocation takes effect on the next request: every request looks its
key up in the database (one indexed read), nothing is cached.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from api.orm import ApiKey, Role, utcnow
from api.services.audit import ANONYMOUS, Actor, record
from api.services.transactions import rollback_on_error

TOKEN_PREFIX = "twin"
MAX_TOKEN_CHARS = 200  # real tokens have 62; anything far longer is not one of ours
ROLE_RANK = {role: rank for rank, role in enumerate(Role)}
HOW_TO_SEND = "send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
MISSING_KEY = (
    f"this API requires a key: {HOW_TO_SEND}; an admin creates one with "
    "`twin keys create --role viewer --name NAME`"
)


# ---------------------------------------------------------------- roles


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise Invalid(f"unknown role '{value}' (one of: {', '.join(Role)})") from None


def role_allows(have: Role, need: Role) -> bool:
    return ROLE_RANK[have] >= ROLE_RANK[need]


def check_role(actor: Actor, need: Role) -> None:
    """Raise Forbidden unless the actor's role includes `need`."""
    if role_allows(actor.role, need):
        return
    raise Forbidden(
        f"this request needs the '{need}' role or higher; key '{actor.name}' "
        f"(id {actor.key_id}) has the '{actor.role}' role"
    )


# ---------------------------------------------------------------- tokens


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> tuple[str, str]:
    """(prefix, token); the prefix is part of the token."""
    prefix = secrets.token_hex(6)
    return prefix, f"{TOKEN_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"


def _prefix_of(token: str) -> str:
    parts = token.split("_", 2)  # the secret may itself contain '_'
    if (
        len(token) > MAX_TOKEN_CHARS
        or len(parts) != 3
        or parts[0] != TOKEN_PREFIX
        or not parts[1]
        or not parts[2]
    ):
        raise Unauthorized(
            "malformed API key: expected 'twin_<prefix>_<secret>' as printed by `twin keys create`",
            invalid_token=True,
        )
    return parts[1]


def presented_token(
    authorization: str | None, api_key: str | None, cookie: str | None = None
) -> str | None:
    """The token a request carries, or None. Headers win over the cookie (pages only).

    An Authorization header with another scheme (e.g. Basic, added by a proxy in front)
    is not an API key and is ignored; two headers carrying different keys are refused.
    """
    bearer = _bearer(authorization)
    header = None if api_key is None else api_key.strip()
    if header == "":
        raise Unauthorized("empty X-API-Key header", invalid_token=True)
    if bearer is not None and header is not None and bearer != header:
        raise Unauthorized(
            "the Authorization and X-API-Key headers carry different keys; send one",
            invalid_token=True,
        )
    if bearer is not None or header is not None:
        return bearer or header
    if cookie is None:
        return None
    return cookie.strip() or None  # an emptied cookie (logged out) is no key


def _bearer(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    if not token.strip():
        raise Unauthorized(f"empty bearer token: {HOW_TO_SEND}", invalid_token=True)
    return token.strip()


def authenticate(session: Session, token: str | None, *, required: bool) -> Actor:
    """The actor behind a request. No token: anonymous admin unless `required` (401).
    A token is always checked, required or not: unknown, malformed or revoked is a 401."""
    if token is None:
        if required:
            raise Unauthorized(MISSING_KEY)
        return ANONYMOUS
    prefix = _prefix_of(token)  # before any query: malformed input never reaches the database
    key = session.scalars(select(ApiKey).where(ApiKey.prefix == prefix)).first()
    # The same message whether the prefix is unknown or the secret wrong: say nothing
    # about which keys exist.
    if key is None or not hmac.compare_digest(key.key_hash, hash_token(token)):
        raise Unauthorized("unknown API key", invalid_token=True)
    if key.revoked_at is not None:
        raise Unauthorized(f"API key '{key.name}' (id {key.id}) was revoked", invalid_token=True)
    return Actor(name=key.name, role=Role(key.role), key_id=key.id)


# ---------------------------------------------------------------- managing keys


def cli_actor() -> Actor:
    """Who runs `twin keys ...`: whoever can reach the database is an admin."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in a bare container (no passwd entry, no $USER)
        user = "unknown"
    return Actor(f"cli:{user}", Role.ADMIN)


def _check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise Invalid(
            "key name must be 1 to 100 printable characters (e.g. a person or "
            "a program: 'alice', 'historian-bridge')"
        )
    return name


def create_key(session: Session, name: str, role: str, actor: Actor) -> tuple[ApiKey, str]:
    """Store a new key; returns it with its token, which is not stored and not shown again.

    Two keys drawing the same 48-bit prefix (about one in 10^10 for a thousand keys) hit
    the unique constraint: an IntegrityError, which the API answers as 409, retryable."""
    name, parsed = _check_name(name), parse_role(role)
    prefix, token = _new_token()
    with rollback_on_error(session):
        key = ApiKey(
            name=name,
            role=str(parsed),
            prefix=prefix,
            key_hash=hash_token(token),
            created_by=actor.name,
        )
        session.add(key)
        session.flush()
        record(
            session,
            actor,
            "key.create",
            f"key:{key.id}",
            {"name": name, "role": str(parsed), "prefix": prefix},
        )
        session.commit()
    return key, token


def get_key(session: Session, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"unknown API key id {key_id}")
    return key


def list_keys(
    session: Session, *, include_revoked: bool = True, limit: int = 1_000, offset: int = 0
) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.id).limit(limit).offset(offset)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query))


def revoke_key(
    session: Session, key_id: int, actor: Actor, *, keep_an_admin: bool = False
) -> ApiKey:
    """Revoke now; revoking a revoked key again is harmless and records nothing.

    `keep_an_admin` (the API): refuse (409) to revoke the caller's own key or the last
    active admin key, which would lock every admin out. The command line may: whoever
    runs it reaches the database and can always create a new key."""
    with rollback_on_error(session):
        key = get_key(session, key_id)
        if keep_an_admin and key.revoked_at is None:
            _check_not_locking_out(session, key, actor)
        # Conditional: of two concurrent revocations, only one changes (and audits) it.
        changed = session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed:
            record(
                session, actor, "key.revoke", f"key:{key_id}", {"name": key.name, "role": key.role}
            )
        session.commit()
    return session.get(ApiKey, key_id, populate_existing=True) or key


def _check_not_locking_out(session: Session, key: ApiKey, actor: Actor) -> None:
    if key.id == actor.key_id:
        raise Conflict(
            f"key {key.id} is the one making this request: an admin cannot "
            "revoke their own key (another admin can)"
        )
    if key.role != Role.ADMIN:
        return
    # Locked (PostgreSQL) so that two admins revoking each other cannot both succeed.
    admins = session.scalars(
        select(ApiKey.id)
        .where(ApiKey.role == str(Role.ADMIN), ApiKey.revoked_at.is_(None))
        .order_by(ApiKey.id)
        .with_for_update()
    ).all()
    if list(admins) == [key.id]:
        raise Conflict(f"key {key.id} is the last active admin key: create another admin key first")
