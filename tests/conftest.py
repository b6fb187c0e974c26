"""Shared fixtures for the platform tests (api/, migrations/, dashboards/).

Every database fixture is parametrised over SQLite (a file in tmp_path) and
PostgreSQL. PostgreSQL runs only when TWIN_TEST_POSTGRES_URL is set; the tests get
a schema with a random name for the whole session (reset before each test and
dropped at the end), so they never touch anything else in that database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from api.app import create_app
from api.db import make_engine, make_session_factory, normalize_url
from api.migrate import upgrade
from api.orm import Role
from api.settings import Settings
from twin.records import EpisodeResult, Plan, SafetyEvent, StepRecord, StepStatus
from twin.spec import ProcessSpec

PG_ENV = "TWIN_TEST_POSTGRES_URL"
PG_SKIP_REASON = "set TWIN_TEST_POSTGRES_URL to run PostgreSQL tests"


@dataclass
class PgSchema:
    url: str  # points at the schema through search_path
    admin: Engine
    name: str

    def reset(self) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))


@pytest.fixture(scope="session")
def pg_schema() -> Iterator[PgSchema]:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(PG_SKIP_REASON)
    base = normalize_url(base)
    name = f"twin_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    url = make_url(base).update_query_dict({"options": f"-csearch_path={name}"})
    schema = PgSchema(url.render_as_string(hide_password=False), admin, name)
    schema.reset()
    try:
        yield schema
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """URL of an empty database (no tables), one per test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'twin.db'}"
    schema: PgSchema = request.getfixturevalue("pg_schema")
    schema.reset()
    return schema.url


@pytest.fixture
def db_url(empty_db_url: str) -> str:
    """URL of a database migrated to head."""
    upgrade(empty_db_url)
    return empty_db_url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as session:
        yield session


@pytest.fixture
def cstr_spec() -> ProcessSpec:
    from processes import get_spec

    return get_spec("cstr")


# ---------------------------------------------------------------- synthetic data


def synthetic_episode(
    n_steps: int = 40, *, process: str = "cstr", event_every: int = 10, dt: float = 6.0
) -> EpisodeResult:
    """A CSTR-shaped episode with plans, margins, events and one missing sample."""
    steps = []
    for k in range(n_steps):
        t = 350.0 + 0.5 * k
        plan = Plan(
            time_s=[dt * (i + 1) for i in range(5)],
            actuators={"Tc": [300.0 + 0.1 * i for i in range(5)]},
            sensors={"T": [t + 0.2 * (i + 1) for i in range(5)], "Ca": [0.5] * 5},
            spread={"T": [0.1 * (i + 1) for i in range(5)]},
            cost=float(k),
        )
        events = (
            [SafetyEvent("rate_limited", f"Tc move limited at step {k}", "Tc")]
            if k % event_every == 0
            else []
        )
        measurements = {"Ca": 0.5 - 0.001 * k, "T": t, "Caf": 1.0, "Tf": 350.0}
        if k == 3:
            measurements["Ca"] = float("nan")  # a dropped sample: must stay missing
        steps.append(
            StepRecord(
                step=k,
                time_s=dt * k,
                measurements=measurements,
                setpoints={"T": 365.0},
                actuators={"Tc": 300.0 + 0.05 * k},
                status=StepStatus.FALLBACK if events else StepStatus.OK,
                solve_ms=1.5,
                events=events,
                plan=plan,
                margins={"T": 385.0 - t},
            )
        )
    return EpisodeResult(
        process=process,
        controller="twin/casadi",
        config={"seed": 7, "horizon": 20},
        steps=steps,
        metrics={"iae": 12.5, "violations": 0.0},
    )


@pytest.fixture
def make_episode() -> Callable[..., EpisodeResult]:
    return synthetic_episode


class FakeController:
    """Same interface as twin.controller.TwinController; a P controller on T through Tc."""

    def __init__(self, spec: ProcessSpec, planner: str, output: float | None = None) -> None:
        self.spec, self.planner, self.output, self.calls = spec, planner, output, 0

    def step(
        self, time_s: float, measurements: dict[str, float], setpoints: dict[str, float]
    ) -> StepRecord:
        from twin.errors import InvalidInput

        if measurements.get("Caf", 1.0) < 0:
            raise InvalidInput("Caf cannot be negative")
        self.calls += 1
        error = setpoints["T"] - measurements["T"]
        tc = self.output if self.output is not None else 300.0 + 0.1 * error
        plan = Plan(
            time_s=[6.0, 12.0, 18.0],
            actuators={"Tc": [tc, tc, tc]},
            sensors={"T": [measurements["T"] + 0.1 * i for i in (1, 2, 3)]},
        )
        return StepRecord(
            step=self.calls - 1,
            time_s=time_s,
            measurements=dict(measurements),
            setpoints=dict(setpoints),
            actuators={"Tc": tc},
            solve_ms=2.0,
            plan=plan,
            margins={"T": 385.0 - measurements["T"]},
        )


@pytest.fixture
def fake_factory(cstr_spec: ProcessSpec) -> Callable[[bytes, str], FakeController]:
    """A controller factory; `.output` forces the actuator value of the next controllers
    built, `.built` lists the controllers it made."""

    def factory(checkpoint: bytes, planner: str) -> FakeController:
        controller = FakeController(cstr_spec, planner, factory.output)
        factory.built.append(controller)
        return controller

    factory.built = []
    factory.output = None
    return factory


@pytest.fixture
def app(db_url: str, fake_factory) -> FastAPI:
    return create_app(
        Settings(database_url=db_url, max_body_bytes=50_000), controller_factory=fake_factory
    )


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


# ---------------------------------------------------------------- access control


@pytest.fixture
def tokens(session: Session) -> dict[Role, str]:
    """One key per role, made the way the first key is: from the command line's service."""
    from api.services import auth

    return {
        role: auth.create_key(session, f"{role}-key", role, auth.cli_actor())[1] for role in Role
    }


@pytest.fixture
def secure_app(db_url: str, fake_factory) -> FastAPI:
    """The app with keys required (the fake controller factory, as `app`)."""
    return create_app(
        Settings(database_url=db_url, auth_required=True), controller_factory=fake_factory
    )


@pytest.fixture
def secure(secure_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(secure_app) as test_client:
        yield test_client
