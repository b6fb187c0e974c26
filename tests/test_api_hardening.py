"""What one operator key may ask of live loops: limits, builds, idempotent starts, time.

Each test names the defect it guards against; a fake controller is injected, so these
run in seconds. The threads here wait on events, never on the clock.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import services
from api.app import create_app
from api.orm import Role, Run
from api.services.loops import LoopManager
from api.settings import Settings
from processes import get_spec

GOOD = {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}
PERIOD_S = 6.0


@pytest.fixture
def model_id(session: Session) -> int:
    return services.register_model(session, "cstr", "jepa", b"weights", {}, {}).id


def _app(db_url: str, factory, **settings) -> FastAPI:
    return create_app(Settings(database_url=db_url, **settings), controller_factory=factory)


def _start(client: TestClient, model_id: int, headers=None, **body):
    payload = {"process": "cstr", "model_id": model_id, "planner": "cem", **body}
    return client.post("/api/loops", json=payload, headers=headers or {})


def _step(client: TestClient, run_id: int, time_s: float, measurements=None, **extra):
    body = {"time_s": time_s, "measurements": measurements or GOOD, **extra}
    return client.post(f"/api/loops/{run_id}/step", json=body)


def _runs(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Run)) or 0


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Gate:
    """A controller factory whose builds wait until the test opens the gate."""

    def __init__(self, factory) -> None:
        self.factory, self.entered, self.open = factory, threading.Event(), threading.Event()
        self.finished = threading.Event()

    def __call__(self, checkpoint: bytes, planner: str):
        self.entered.set()
        self.open.wait(timeout=60)
        try:
            return self.factory(checkpoint, planner)
        finally:
            self.finished.set()


# ---------------------------------------------------------------- 1: limits as settings


def test_safe_defaults() -> None:
    settings = Settings(database_url="sqlite://")
    assert "casadi-ipopt" not in settings.loop_planners + settings.engineer_loop_planners
    assert "casadi-fatrop" not in settings.loop_planners + settings.engineer_loop_planners
    assert settings.max_server_memory_mb <= 2048
    assert settings.max_loops_per_key < settings.max_loops
    assert settings.planner_build_timeout_s < 60  # below a client's usual timeout


def test_heavy_planners_off_or_engineer_only(
    db_url: str, fake_factory, model_id: int, tokens: dict[Role, str]
) -> None:
    with TestClient(_app(db_url, fake_factory)) as client:
        refused = _start(client, model_id, planner="casadi-ipopt")
        assert refused.status_code == 422 and "not enabled" in refused.json()["detail"]
    app = _app(db_url, fake_factory, auth_required=True, engineer_loop_planners=["casadi-ipopt"])
    with TestClient(app) as client:
        operator = _start(client, model_id, _bearer(tokens[Role.OPERATOR]), planner="casadi-ipopt")
        assert operator.status_code == 403 and "engineer" in operator.json()["detail"]
        engineer = _start(client, model_id, _bearer(tokens[Role.ENGINEER]), planner="casadi-ipopt")
        assert engineer.status_code == 201, engineer.text
    assert len(fake_factory.built) == 1  # nothing was built for the refused ones


def test_loops_per_key_and_per_server(
    db_url: str, fake_factory, model_id: int, tokens: dict[Role, str], session: Session
) -> None:
    app = _app(db_url, fake_factory, auth_required=True, max_loops=3, max_loops_per_key=2)
    operator, engineer = _bearer(tokens[Role.OPERATOR]), _bearer(tokens[Role.ENGINEER])
    with TestClient(app) as client:
        first = [_start(client, model_id, operator).json()["run_id"] for _ in range(2)]
        third = _start(client, model_id, operator)
        assert third.status_code == 503 and "TWIN_MAX_LOOPS_PER_KEY" in third.json()["detail"]
        assert third.headers["Retry-After"]
        assert _start(client, model_id, engineer).status_code == 201
        full = _start(client, model_id, engineer)
        assert full.status_code == 503 and "TWIN_MAX_LOOPS=3" in full.json()["detail"]
        assert _runs(session) == 3
        assert client.post(f"/api/loops/{first[0]}/stop", headers=operator).status_code == 200
        assert _start(client, model_id, operator).status_code == 201


def test_a_build_does_not_hold_up_other_loops(db_url: str, fake_factory, model_id: int) -> None:
    """While one loop's controller builds (as long as the test keeps it waiting), another
    loop's steps are served."""
    gate = Gate(fake_factory)
    gate.open.set()
    app = _app(db_url, gate)
    with TestClient(app) as client:
        running = _start(client, model_id).json()["run_id"]
        gate.open.clear()
        gate.entered.clear()
        gate.finished.clear()
        answers: list[int] = []
        starter = threading.Thread(
            target=lambda: answers.append(_start(client, model_id).status_code)
        )
        starter.start()
        assert gate.entered.wait(timeout=30)
        for k in range(5):
            assert _step(client, running, PERIOD_S * k).status_code == 200
        assert not gate.finished.is_set()  # every step above was served during the build
        gate.open.set()
        starter.join(timeout=30)
    assert answers == [201]


def test_a_restore_does_not_hold_up_other_loops(db_url: str, fake_factory, model_id: int) -> None:
    """After a restart each loop's controller is rebuilt at its next step; one slow rebuild
    must not block the lookup of every other loop (it did: under the registry lock)."""
    with TestClient(_app(db_url, fake_factory)) as client:
        slow, fast = (_start(client, model_id).json()["run_id"] for _ in range(2))
    gate = Gate(fake_factory)
    restarted = _app(db_url, gate)
    with TestClient(restarted) as client:
        gate.open.set()
        assert _step(client, fast, 0.0).status_code == 200  # rebuilt at once
        gate.open.clear()
        gate.entered.clear()
        gate.finished.clear()
        waiting = threading.Thread(target=lambda: _step(client, slow, 0.0))
        waiting.start()
        assert gate.entered.wait(timeout=30)
        for k in range(1, 4):
            assert _step(client, fast, PERIOD_S * k).status_code == 200
        assert not gate.finished.is_set()
        gate.open.set()
        waiting.join(timeout=30)


# ---------------------------------------------------------------- 2: timed-out starts


def test_a_timed_out_start_leaves_no_loop(
    db_url: str, fake_factory, model_id: int, session: Session
) -> None:
    gate = Gate(fake_factory)
    app = _app(db_url, gate, planner_build_timeout_s=0.2)
    with TestClient(app) as client:
        response = _start(client, model_id)
        assert response.status_code == 503, response.text
        assert "nothing was started" in response.json()["detail"]
        gate.open.set()  # the abandoned build finishes now
        assert gate.finished.wait(timeout=30)
        assert _runs(session) == 0
        assert client.get("/api/loops").json() == []
        assert _start(client, model_id).status_code == 201  # its slot was given back


def test_idempotent_start(
    client: TestClient, model_id: int, session: Session, fake_factory
) -> None:
    key = {"Idempotency-Key": "start-0001"}
    first = _start(client, model_id, key, setpoints={"T": 360.0})
    again = _start(client, model_id, key, setpoints={"T": 360.0})
    assert first.status_code == again.status_code == 201
    assert first.json()["run_id"] == again.json()["run_id"]
    assert _runs(session) == 1 and len(fake_factory.built) == 1
    other = _start(client, model_id, key, setpoints={"T": 355.0})
    assert other.status_code == 409 and "Idempotency-Key" in other.json()["detail"]
    fresh = _start(client, model_id, {"Idempotency-Key": "start-0002"})
    assert fresh.json()["run_id"] != first.json()["run_id"]


def test_concurrent_starts_with_one_key_make_one_loop(
    db_url: str, fake_factory, model_id: int, session: Session
) -> None:
    gate = Gate(fake_factory)
    with TestClient(_app(db_url, gate)) as client:
        ids: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: ids.append(
                    _start(client, model_id, {"Idempotency-Key": "same"}).json()["run_id"]
                )
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        assert gate.entered.wait(timeout=30)
        gate.open.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(ids) == 2 and ids[0] == ids[1] and _runs(session) == 1


# ---------------------------------------------------------------- 3: time plausibility


@pytest.fixture
def loop(client: TestClient, model_id: int) -> int:
    return _start(client, model_id, setpoints={"T": 360.0}).json()["run_id"]


def test_an_absurd_time_is_refused_and_does_not_brick_the_loop(
    client: TestClient, loop: int
) -> None:
    assert _step(client, loop, 0.0).status_code == 200
    refused = _step(client, loop, 1.7976931348623157e308)
    assert refused.status_code == 422 and "implausible" in refused.json()["detail"]
    assert _step(client, loop, PERIOD_S).status_code == 200


@pytest.mark.parametrize("first, second", [(0.0, 6000.0), (1.7e12, None)])
def test_milliseconds_are_named(
    client: TestClient, loop: int, first: float, second: float | None
) -> None:
    response = _step(client, loop, first)
    if second is not None:
        assert response.status_code == 200
        response = _step(client, loop, second)
    assert response.status_code == 422
    assert "milliseconds" in response.json()["detail"]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_real_outage_is_not_refused(db_url: str, fake_factory, model_id: int) -> None:
    app = _app(db_url, fake_factory)
    clock = Clock()
    app.state.loops = LoopManager(fake_factory, clock=clock)
    with TestClient(app) as client:
        run_id = _start(client, model_id).json()["run_id"]
        assert _step(client, run_id, 0.0).status_code == 200
        too_far = 200 * PERIOD_S  # beyond 100 sample periods, with no server time passed
        assert _step(client, run_id, too_far).status_code == 422
        clock.now += timedelta(hours=2)  # the plant really was away for two hours
        assert _step(client, run_id, 7200.0).status_code == 200


# ---------------------------------------------------------------- 11: setpoints at the start


@pytest.mark.parametrize("process, setpoints", [("cstr", {"T": 400.0}), ("glucose", {"CGM": 6.7})])
def test_a_setpoint_outside_its_limits_is_refused_at_the_start(
    client: TestClient, session: Session, process: str, setpoints: dict
) -> None:
    model = services.register_model(session, process, "jepa", b"weights", {}, {}).id
    response = client.post(
        "/api/loops", json={"process": process, "model_id": model, "setpoints": setpoints}
    )
    assert response.status_code == 422 and "inside its limits" in response.json()["detail"]
    assert _runs(session) == 0


# ---------------------------------------------------------------- bumpless first step


class Resettable:
    """The fake controller with TwinController's `reset(applied)`, on a spec whose coolant
    has no nominal value."""

    def __init__(self, inner) -> None:
        self.inner, self.spec, self.handed = inner, inner.spec, []

    def reset(self, applied: dict[str, float]) -> None:
        self.handed.append(dict(applied))

    def step(self, *args):
        return self.inner.step(*args)


@pytest.fixture
def no_nominal_factory(fake_factory):
    spec = get_spec("cstr")
    tags = [t.model_copy(update={"nominal": None}) if t.name == "Tc" else t for t in spec.tags]
    spec = spec.model_copy(update={"tags": tags})
    built: list[Resettable] = []

    def factory(checkpoint: bytes, planner: str) -> Resettable:
        inner = fake_factory(checkpoint, planner)
        inner.spec = spec
        built.append(Resettable(inner))
        return built[-1]

    factory.built = built
    return factory


def test_first_step_never_guesses_an_actuator(
    db_url: str, no_nominal_factory, model_id: int
) -> None:
    with TestClient(_app(db_url, no_nominal_factory)) as client:
        blind = _start(client, model_id).json()["run_id"]
        refused = _step(client, blind, 0.0)
        assert refused.status_code == 422 and "no current value" in refused.json()["detail"]
        read_back = _step(client, blind, 0.0, measurements={**GOOD, "Tc": 300.0})
        assert read_back.status_code == 200
        told = _start(client, model_id, initial_actuators={"Tc": 300.0}).json()["run_id"]
        assert no_nominal_factory.built[-1].handed == [{"Tc": 300.0}]
        no_nominal_factory.built[-1].inner.output = 360.0  # a bump the rate limit stops
        first = _step(client, told, 0.0)
        assert first.status_code == 200
        assert first.json()["actuators"]["Tc"] == pytest.approx(300.0 + 0.5 * PERIOD_S)
        outside = _start(client, model_id, initial_actuators={"Tc": 500.0})
        assert outside.status_code == 422 and "outside its bounds" in outside.json()["detail"]


def test_initial_actuators_survive_a_restart(
    db_url: str, no_nominal_factory, model_id: int
) -> None:
    with TestClient(_app(db_url, no_nominal_factory)) as client:
        run_id = _start(client, model_id, initial_actuators={"Tc": 300.0}).json()["run_id"]
    with TestClient(_app(db_url, no_nominal_factory)) as client:
        assert _step(client, run_id, 0.0).status_code == 200
    assert no_nominal_factory.built[-1].handed == [{"Tc": 300.0}]
