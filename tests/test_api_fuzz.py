"""Property-based tests of the whole HTTP API, generated from its own OpenAPI (schemathesis).

Every operation is called with generated requests (valid and invalid) under a key of
each role, on SQLite and, when TWIN_TEST_POSTGRES_URL is set, on PostgreSQL. Every
answer must: not be a 5xx; have a status code, content type and body the OpenAPI
documents; carry no SQL or database-driver text. The number of examples is bounded
(FUZZ_EXAMPLES per operation and role) so the suite takes seconds, not hours; raise it
with TWIN_FUZZ_EXAMPLES for a deeper run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api import services
from api.app import create_app
from api.migrate import upgrade
from api.orm import Role
from api.services import auth
from api.settings import Settings
from processes import get_spec
from twin.records import StepRecord

FUZZ_EXAMPLES = int(os.environ.get("TWIN_FUZZ_EXAMPLES", "3"))
SQL_TEXT = re.compile(
    r"\[SQL:|\bINSERT INTO\b|\bSELECT\b.+\bFROM\b|\bUPDATE\b \w+ \bSET\b|"
    r"\bDELETE FROM\b|\bCOPY\b \w+|psycopg|sqlite3\.|UniqueViolation|"
    r"IntegrityError|\(Background on this error",
    re.IGNORECASE,
)


class Holding:
    """A controller for the CSTR that holds its coolant: enough to serve steps."""

    def __init__(self) -> None:
        self.spec = get_spec("cstr")

    def step(self, time_s, measurements, setpoints) -> StepRecord:
        return StepRecord(
            step=0,
            time_s=time_s,
            measurements={},
            setpoints=dict(setpoints),
            actuators={"Tc": 300.0},
        )


@dataclass
class FuzzTarget:
    app: FastAPI
    tokens: dict[Role, str]


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def target(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[FuzzTarget]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'twin.db'}"
    else:
        schema = request.getfixturevalue("pg_schema")
        schema.reset()
        url = schema.url
    upgrade(url)
    app = create_app(
        Settings(database_url=url, auth_required=True, max_body_bytes=50_000, max_loops=8),
        controller_factory=lambda _c, _p: Holding(),
    )
    with TestClient(app) as client, app.state.session_factory() as session:
        tokens = {
            role: auth.create_key(session, f"{role}-key", role, auth.cli_actor())[1]
            for role in Role
        }
        model = services.register_model(session, "cstr", "jepa", b"weights", {}, {}).id
        operator = {"Authorization": f"Bearer {tokens[Role.OPERATOR]}"}
        run_id = client.post(
            "/api/loops", json={"process": "cstr", "model_id": model}, headers=operator
        ).json()["run_id"]
        for k in range(3):  # a loop with steps, so that ids and series exist
            client.post(
                f"/api/loops/{run_id}/step",
                headers=operator,
                json={
                    "time_s": 6.0 * k,
                    "measurements": {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0},
                },
            )
        yield FuzzTarget(app, tokens)


def no_sql_in_body(ctx, response, case) -> bool | None:
    found = SQL_TEXT.search(response.text or "")
    if found:
        raise AssertionError(
            f"database text in a {response.status_code} answer: "
            f"{found.group(0)!r} in {response.text[:300]!r}"
        )
    return None


def no_server_error(ctx, response, case) -> bool | None:
    if response.status_code >= 500:
        raise AssertionError(
            f"{response.status_code} from {case.method} {case.path}: {response.text[:300]!r}"
        )
    return None


CHECKS = [
    no_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    no_sql_in_body,
]


def test_every_operation_keeps_its_contract(target: FuzzTarget) -> None:
    """Valid and invalid requests to every operation, each sent under every role's key."""
    api = schemathesis.openapi.from_asgi("/openapi.json", target.app)
    failures: list[str] = []
    operations = 0
    for result in api.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += _fuzz(operation, mode, target.tokens)
    assert operations >= 30  # every operation of the API was generated for
    assert failures == [], "\n\n".join(failures[:10])


def _text(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_text(inner) for inner in exc.exceptions)
    return str(exc)


def _fuzz(operation, mode: GenerationMode, tokens: dict[Role, str]) -> list[str]:
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    def each(case) -> None:
        for role in Role:  # the same request under each role's key
            try:
                case.call_and_validate(
                    headers={"Authorization": f"Bearer {tokens[role]}"}, checks=CHECKS
                )
            except (AssertionError, FailureGroup) as exc:  # collected, shown at the end
                failures.append(f"{operation.label} ({mode}, {role}): {_text(exc)}"[:1500])

    try:
        each()
    except Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing to get wrong: no parameters, no body
    return failures
