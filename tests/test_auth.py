"""Access control: API keys with roles, stored hashed; the audit log; `twin keys`.

Every database test runs on SQLite and (with TWIN_TEST_POSTGRES_URL) PostgreSQL.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from api import migrate, services
from api.app import create_app
from api.cli import app as cli
from api.db import make_engine
from api.errors import Unauthorized
from api.orm import ApiKey, AuditEntry, Role, Run
from api.services import auth
from api.settings import Settings

runner = CliRunner()
ROLES = list(Role)
JOB = {
    "process": "cstr",
    "data": {"source": "simulator", "hours": 0.3, "seed": 1},
    "train": {"epochs": 1},
    "model_name": "tiny",
}
MY_PROCESS = {
    "name": "my_reactor",
    "sample_period_s": 6,
    "tags": [
        {"name": "T", "role": "sensor", "unit": "K", "high": 385.0, "controlled": True},
        {
            "name": "Tc",
            "role": "actuator",
            "unit": "K",
            "low": 280.0,
            "high": 360.0,
            "rate_limit": 0.5,
        },
    ],
}
GOOD_STEP = {"time_s": 0.0, "measurements": {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def model_id(session: Session) -> int:
    return services.register_model(session, "cstr", "jepa", b"weights", {}, {}).id


def _audit(session: Session) -> list[AuditEntry]:
    session.expire_all()
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def _count(session: Session, table: type) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(table)) or 0


# ---------------------------------------------------------------- storage


def test_tokens_are_stored_hashed(session: Session, tokens: dict[Role, str]) -> None:
    token = tokens[Role.ENGINEER]
    assert token.startswith("twin_") and len(token) >= 60
    assert len(set(tokens.values())) == len(Role)
    key = session.scalars(select(ApiKey).where(ApiKey.name == "engineer-key")).one()
    assert key.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token.split("_")[1] == key.prefix
    # The secret is nowhere in the database: not in api_keys, not in the audit log.
    with session.bind.connect() as conn:  # type: ignore[union-attr]
        rows = [
            *conn.execute(text("SELECT * FROM api_keys")),
            *conn.execute(text("SELECT * FROM audit_log")),
        ]
    dumped = " ".join(str(value) for row in rows for value in row)
    secret = token.split("_", 2)[2]
    assert all(t not in dumped for t in tokens.values()) and secret not in dumped


# ---------------------------------------------------------------- 401


def test_requests_without_a_valid_key_get_401(secure: TestClient, tokens: dict[Role, str]) -> None:
    missing = secure.get("/api/runs")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="twin"'
    assert "twin keys create" in missing.json()["detail"]
    wrong_secret = tokens[Role.ADMIN][:-4] + "AAAA"
    for token, message in [
        (wrong_secret, "unknown API key"),
        ("twin_000000000000_nope", "unknown API key"),
        ("not-a-key", "malformed"),
        ("x" * 500, "malformed"),
    ]:
        response = secure.get("/api/runs", headers=_bearer(token))
        assert response.status_code == 401 and message in response.json()["detail"]
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert secure.get("/api/runs", headers={"Authorization": "Bearer "}).status_code == 401
    assert secure.get("/api/runs", headers={"Authorization": "Basic dTpw"}).status_code == 401
    # Public: the healthcheck and the API's own description.
    assert secure.get("/api/health").status_code == 200
    assert secure.get("/openapi.json").status_code == 200


def test_both_headers_are_accepted_but_must_agree(
    secure: TestClient, tokens: dict[Role, str]
) -> None:
    viewer, admin = tokens[Role.VIEWER], tokens[Role.ADMIN]
    assert secure.get("/api/runs", headers={"X-API-Key": viewer}).status_code == 200
    assert (
        secure.get("/api/runs", headers={**_bearer(viewer), "X-API-Key": viewer}).status_code == 200
    )
    clash = secure.get("/api/runs", headers={**_bearer(viewer), "X-API-Key": admin})
    assert clash.status_code == 401 and "different keys" in clash.json()["detail"]
    assert secure.get("/api/runs", headers={"X-API-Key": " "}).status_code == 401
    assert secure.get("/api/runs", headers={"authorization": f"bearer {viewer}"}).status_code == 200


# ---------------------------------------------------------------- roles


# (method, path, body, least role); a request that passes the role check fails later
# (404/422) or succeeds, never with 401/403.
ROUTES: list[tuple[str, str, dict[str, Any] | None, Role]] = [
    ("GET", "/api/runs", None, Role.VIEWER),
    ("GET", "/api/models", None, Role.VIEWER),
    ("GET", "/api/models/999", None, Role.VIEWER),
    ("GET", "/api/jobs", None, Role.VIEWER),
    ("GET", "/api/loops", None, Role.VIEWER),
    ("GET", "/api/loops/999", None, Role.VIEWER),
    ("GET", "/api/loops/999/setpoint", None, Role.VIEWER),
    ("GET", "/api/loops/999/models", None, Role.VIEWER),
    ("POST", "/api/loops", {"process": "cstr", "model_id": 999}, Role.OPERATOR),
    ("POST", "/api/loops/999/step", GOOD_STEP, Role.OPERATOR),
    ("POST", "/api/loops/999/stop", None, Role.OPERATOR),
    ("PUT", "/api/loops/999/model", {"model_id": 999, "reason": "r"}, Role.ENGINEER),
    ("POST", "/api/jobs/train", {"process": "cstr"}, Role.ENGINEER),
    ("POST", "/api/jobs/999/cancel", None, Role.ENGINEER),
    ("POST", "/api/processes", {"name": "x"}, Role.ENGINEER),
    ("GET", "/api/keys", None, Role.ADMIN),
    ("POST", "/api/keys", {"name": "n", "role": "emperor"}, Role.ADMIN),
    ("POST", "/api/keys/999/revoke", None, Role.ADMIN),
    ("GET", "/api/audit", None, Role.ADMIN),
    ("GET", "/api/alarms", None, Role.VIEWER),
    ("GET", "/api/alarms/999", None, Role.VIEWER),
    ("POST", "/api/alarms/999/acknowledge", None, Role.OPERATOR),
    ("POST", "/api/alarms/999/shelve", {"minutes": 5, "reason": "test"}, Role.OPERATOR),
    ("POST", "/api/alarms/999/unshelve", None, Role.OPERATOR),
]


@pytest.mark.parametrize(
    "method, path, body, need", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES]
)
def test_each_role_reaches_exactly_its_routes(
    secure: TestClient,
    tokens: dict[Role, str],
    method: str,
    path: str,
    body: dict[str, Any] | None,
    need: Role,
) -> None:
    assert secure.request(method, path, json=body).status_code == 401
    for role in Role:
        response = secure.request(method, path, json=body, headers=_bearer(tokens[role]))
        if ROLES.index(role) >= ROLES.index(need):
            assert response.status_code not in (401, 403), (role, response.text)
        else:
            assert response.status_code == 403, (role, response.text)
            detail = response.json()["detail"]
            assert f"'{need}' role" in detail and f"'{role}-key'" in detail


def test_role_order() -> None:
    assert auth.role_allows(Role.ADMIN, Role.VIEWER)
    assert auth.role_allows(Role.ENGINEER, Role.OPERATOR)
    assert not auth.role_allows(Role.OPERATOR, Role.ENGINEER)
    assert not auth.role_allows(Role.VIEWER, Role.OPERATOR)


def test_pages_take_the_key_from_a_cookie_but_writes_do_not(
    secure_app: FastAPI, tokens: dict[Role, str]
) -> None:
    with TestClient(secure_app) as anonymous:
        # a browser without a session is sent to the login page
        assert anonymous.get("/", follow_redirects=False).status_code == 303
        assert anonymous.get("/", headers=_bearer(tokens[Role.VIEWER])).status_code == 200
    with TestClient(secure_app, cookies={"twin_key": tokens[Role.ADMIN]}) as browser:
        assert browser.get("/").status_code == 200
        # A cookie rides along on cross-site requests: it never authorises the JSON API.
        assert browser.get("/api/runs").status_code == 401
        assert browser.post("/api/keys", json={"name": "x", "role": "admin"}).status_code == 401
    with TestClient(secure_app, cookies={"twin_key": "twin_bad_key"}) as browser:
        assert browser.get("/").status_code == 401


# ---------------------------------------------------------------- open mode


def test_without_auth_required_a_presented_key_is_still_checked(
    client: TestClient, tokens: dict[Role, str], session: Session
) -> None:
    assert client.get("/api/runs").status_code == 200  # no key: anonymous admin
    assert client.get("/api/keys").status_code == 200
    unknown = client.get("/api/runs", headers=_bearer("twin_000000000000_nope"))
    assert unknown.status_code == 401
    weak = client.post("/api/processes", json=MY_PROCESS, headers=_bearer(tokens[Role.VIEWER]))
    assert weak.status_code == 403 and _count(session, AuditEntry) == len(Role)
    assert client.post("/api/processes", json=MY_PROCESS).status_code == 201
    entry = _audit(session)[-1]
    assert (entry.actor, entry.key_id, entry.action) == ("anonymous", None, "process.define")


def test_auth_required_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().auth_required is False
    monkeypatch.setenv("TWIN_AUTH_REQUIRED", "true")
    assert Settings().auth_required is True


# ---------------------------------------------------------------- keys through the API


def test_admin_creates_lists_and_revokes_keys(
    secure: TestClient, tokens: dict[Role, str], session: Session
) -> None:
    admin = _bearer(tokens[Role.ADMIN])
    created = secure.post(
        "/api/keys", json={"name": "historian", "role": "operator"}, headers=admin
    )
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["token"].startswith(f"twin_{new['prefix']}_") and new["revoked_at"] is None
    listed = secure.get("/api/keys", headers=admin).json()
    assert [k["name"] for k in listed][-1] == "historian"
    assert all("token" not in k and "key_hash" not in k for k in listed)
    assert secure.get("/api/runs", headers=_bearer(new["token"])).status_code == 200

    revoked = secure.post(f"/api/keys/{new['id']}/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = secure.get("/api/runs", headers=_bearer(new["token"]))
    assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
    again = secure.post(f"/api/keys/{new['id']}/revoke", headers=admin)
    assert again.status_code == 200  # harmless, and not audited twice
    active = secure.get("/api/keys", params={"include_revoked": False}, headers=admin).json()
    assert new["id"] not in {k["id"] for k in active}

    actions = [(e.action, e.target, e.actor) for e in _audit(session)[len(Role) :]]
    assert actions == [
        ("key.create", f"key:{new['id']}", "admin-key"),
        ("key.revoke", f"key:{new['id']}", "admin-key"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x", "role": "root"},
        {"name": "", "role": "viewer"},
        {"name": "   ", "role": "viewer"},
        {"name": "x", "role": "viewer", "extra": 1},
        {"name": "tab\there", "role": "viewer"},
    ],
)
def test_bad_key_requests_change_nothing(
    secure: TestClient, tokens: dict[Role, str], session: Session, body: dict[str, Any]
) -> None:
    response = secure.post("/api/keys", json=body, headers=_bearer(tokens[Role.ADMIN]))
    assert response.status_code == 422, response.text
    assert _count(session, ApiKey) == len(Role) and _count(session, AuditEntry) == len(Role)


def test_revoking_an_unknown_key_is_404(secure: TestClient, tokens: dict[Role, str]) -> None:
    response = secure.post("/api/keys/4242/revoke", headers=_bearer(tokens[Role.ADMIN]))
    assert response.status_code == 404 and "4242" in response.json()["detail"]


# ---------------------------------------------------------------- audit


def test_every_write_is_audited_and_steps_are_not(
    secure: TestClient, tokens: dict[Role, str], model_id: int, session: Session
) -> None:
    operator, engineer = _bearer(tokens[Role.OPERATOR]), _bearer(tokens[Role.ENGINEER])
    loop = secure.post(
        "/api/loops", json={"process": "cstr", "model_id": model_id}, headers=operator
    ).json()["run_id"]
    for k in range(3):
        step = secure.post(
            f"/api/loops/{loop}/step", headers=operator, json={**GOOD_STEP, "time_s": 6.0 * k}
        )
        assert step.status_code == 200, step.text
    assert secure.post(f"/api/loops/{loop}/stop", headers=operator).status_code == 200
    assert secure.post(f"/api/loops/{loop}/stop", headers=operator).status_code == 200
    job = secure.post("/api/jobs/train", json=JOB, headers=engineer).json()["id"]
    assert secure.post(f"/api/jobs/{job}/cancel", headers=engineer).status_code == 200
    assert secure.post(f"/api/jobs/{job}/cancel", headers=engineer).status_code == 200
    assert secure.post("/api/processes", json=MY_PROCESS, headers=engineer).status_code == 201
    assert secure.post("/api/processes", json=MY_PROCESS, headers=engineer).status_code == 201

    key_ids = {e.actor: e.key_id for e in _audit(session)}
    got = [(e.action, e.target, e.actor) for e in _audit(session)[len(Role) :]]
    assert got == [
        ("loop.start", f"run:{loop}", "operator-key"),
        ("loop.stop", f"run:{loop}", "operator-key"),
        ("job.enqueue", f"run:{job}", "engineer-key"),
        ("job.cancel", f"run:{job}", "engineer-key"),
        ("process.define", "process:my_reactor", "engineer-key"),
    ]
    assert key_ids["operator-key"] is not None and key_ids["cli:" + _user()] is None
    listed = secure.get(
        "/api/audit", headers=_bearer(tokens[Role.ADMIN]), params={"target": f"run:{loop}"}
    ).json()
    assert [e["action"] for e in listed] == ["loop.stop", "loop.start"]  # newest first
    assert listed[1]["detail"] == {"process": "cstr", "model_id": model_id, "planner": "casadi"}
    by_key = secure.get(
        "/api/audit",
        headers=_bearer(tokens[Role.ADMIN]),
        params={"key_id": key_ids["engineer-key"], "action": "job.cancel"},
    )
    assert [e["target"] for e in by_key.json()] == [f"run:{job}"]


def _user() -> str:
    return auth.cli_actor().name.removeprefix("cli:")


def test_rejected_writes_record_nothing(
    secure: TestClient, tokens: dict[Role, str], model_id: int, session: Session
) -> None:
    viewer, engineer = _bearer(tokens[Role.VIEWER]), _bearer(tokens[Role.ENGINEER])
    refused = [
        secure.post(
            "/api/loops", json={"process": "cstr", "model_id": model_id}, headers=viewer
        ),  # 403
        secure.post("/api/loops", json={"process": "cstr", "model_id": model_id}),  # 401
        secure.post(
            "/api/loops",
            json={"process": "cstr", "model_id": model_id, "setpoints": {"Tc": 1.0}},
            headers=engineer,
        ),  # 422
        secure.post("/api/jobs/train", json={**JOB, "process": "nope"}, headers=engineer),
        secure.post("/api/jobs/777/cancel", headers=engineer),  # 404
        secure.post("/api/processes", json={**MY_PROCESS, "name": "cstr"}, headers=engineer),  # 409
    ]
    assert [r.status_code for r in refused] == [403, 401, 422, 422, 404, 409]
    assert _count(session, AuditEntry) == len(Role)  # the key creations only
    assert _count(session, Run) == 0


def test_the_audit_row_shares_the_transaction_of_the_write(
    secure: TestClient, tokens: dict[Role, str], session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the audit row cannot be written, the change is not made either."""
    from api.services import jobs

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(jobs, "record", broken)
    with pytest.raises(RuntimeError, match="audit log unavailable"):
        secure.post("/api/jobs/train", json=JOB, headers=_bearer(tokens[Role.ENGINEER]))
    assert _count(session, Run) == 0


# ---------------------------------------------------------------- command line


def test_cli_bootstraps_the_first_admin_key(db_url: str, fake_factory) -> None:
    created = runner.invoke(
        cli, ["keys", "create", "--role", "admin", "--name", "root", "--database-url", db_url]
    )
    assert created.exit_code == 0, created.output
    token = created.output.strip().splitlines()[-1]
    assert token.startswith("twin_") and "shown only now" in created.output

    listed = runner.invoke(cli, ["keys", "list", "--database-url", db_url])
    assert listed.exit_code == 0 and "root" in listed.output and "admin" in listed.output
    assert token.split("_", 2)[2] not in listed.output

    app = create_app(
        Settings(database_url=db_url, auth_required=True), controller_factory=fake_factory
    )
    with TestClient(app) as secure:
        made = secure.post(
            "/api/keys", json={"name": "bob", "role": "viewer"}, headers=_bearer(token)
        )
        assert made.status_code == 201
        audit = secure.get("/api/audit", headers=_bearer(token)).json()
        assert [(e["action"], e["actor"]) for e in audit] == [
            ("key.create", "root"),
            ("key.create", auth.cli_actor().name),
        ]

        revoked = runner.invoke(cli, ["keys", "revoke", "1", "--database-url", db_url])
        assert revoked.exit_code == 0 and "revoked" in revoked.output
        assert secure.get("/api/runs", headers=_bearer(token)).status_code == 401


@pytest.mark.parametrize(
    "args, message",
    [
        (["keys", "create", "--role", "emperor", "--name", "x"], "unknown role 'emperor'"),
        (["keys", "create", "--role", "viewer", "--name", " "], "key name"),
        (["keys", "revoke", "99"], "unknown API key id 99"),
    ],
)
def test_cli_errors_are_one_clear_line(db_url: str, args: list[str], message: str) -> None:
    result = runner.invoke(cli, [*args, "--database-url", db_url])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_cli_refuses_an_unmigrated_database(empty_db_url: str) -> None:
    result = runner.invoke(
        cli, ["keys", "create", "--role", "admin", "--name", "root", "--database-url", empty_db_url]
    )
    assert result.exit_code == 2 and "twin db upgrade" in result.output


# ---------------------------------------------------------------- migration and schema


def test_migration_0002_up_and_down_keeps_the_data(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, "0001")
    engine = make_engine(empty_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO processes (name, spec, created_at) "
                    "VALUES ('p', '{}', CURRENT_TIMESTAMP)"
                )
            )
        migrate.upgrade(empty_db_url)
        tables = set(inspect(engine).get_table_names())
        assert {"api_keys", "audit_log"} <= tables
        indexes = {ix["name"] for ix in inspect(engine).get_indexes("audit_log")}
        assert {"ix_audit_log_key_id", "ix_audit_log_target"} <= indexes
        migrate.downgrade(empty_db_url, "0001")
        assert migrate.current_revision(empty_db_url) == "0001"
        assert not {"api_keys", "audit_log"} & set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            assert conn.execute(text("SELECT name FROM processes")).scalar() == "p"
        migrate.upgrade(empty_db_url)
        assert migrate.is_up_to_date(empty_db_url)
    finally:
        engine.dispose()


def test_the_database_refuses_an_unknown_role(session: Session) -> None:
    session.add(ApiKey(name="x", role="emperor", prefix="p", key_hash="h", created_by="t"))
    with pytest.raises(Exception, match="ck_api_keys_role|CHECK"):
        session.flush()
    session.rollback()


def test_openapi_declares_the_security_schemes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BearerKey"] == {**schemes["BearerKey"], "type": "http", "scheme": "bearer"}
    assert schemes["ApiKeyHeader"]["name"] == "X-API-Key"
    assert {"BearerKey": []} in spec["paths"]["/api/runs"]["get"]["security"]
    assert {"BearerKey": []} in spec["paths"]["/api/keys"]["post"]["security"]
    assert "security" not in spec["paths"]["/api/health"]["get"]


def test_malformed_headers_never_reach_the_database() -> None:
    with pytest.raises(Unauthorized, match="malformed"):
        auth.authenticate(None, "twin__x", required=False)  # type: ignore[arg-type]
    assert auth.presented_token("Basic dTpw", None) is None
    assert auth.presented_token(None, None, cookie="") is None
    assert auth.presented_token("Bearer a", None, cookie="b") == "a"
