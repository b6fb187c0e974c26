"""Live control loops through HTTP, with a fake controller injected into create_app.

A rejected step must store nothing and must not reach the controller.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import services
from api.app import create_app
from api.orm import RunStep, RunValue
from api.settings import Settings
from processes import cstr

GOOD = {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}


@pytest.fixture
def model_id(session: Session) -> int:
    return services.register_model(session, "cstr", "jepa", b"weights", {}, {}).id


@pytest.fixture
def loop(client: TestClient, model_id: int) -> int:
    response = client.post(
        "/api/loops",
        json={"process": "cstr", "model_id": model_id, "planner": "cem", "setpoints": {"T": 360.0}},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["status"], body["run_status"]) == ("ok", "running")
    assert body["setpoints"] == {"T": 360.0} and body["actuators"] == {}
    return body["run_id"]


def _step(client: TestClient, run_id: int, time_s: float, measurements=None, **extra):
    body = {"time_s": time_s, "measurements": measurements or GOOD, **extra}
    return client.post(f"/api/loops/{run_id}/step", json=body)


def _stored_steps(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(RunStep)) or 0


def test_loop_round_trip(client: TestClient, loop: int, fake_factory, session: Session) -> None:
    assert [c.planner for c in fake_factory.built] == ["cem"]
    first = _step(client, loop, 0.0).json()
    assert first["step"] == 0 and first["status"] == "ok"
    assert first["actuators"]["Tc"] == pytest.approx(301.0)
    assert first["plan"]["actuators"]["Tc"][0] == pytest.approx(301.0)
    second = _step(client, loop, 6.0, setpoints={"T": 355.0}).json()
    assert second["step"] == 1
    assert second["actuators"]["Tc"] == pytest.approx(300.5)
    run = client.get(f"/api/runs/{loop}").json()
    assert (run["kind"], run["status"], run["n_steps"]) == ("control", "running", 2)
    series = client.get(f"/api/runs/{loop}/series").json()
    assert series["series"]["setpoint"]["T"] == [360.0, 355.0]
    assert series["series"]["sensor"]["T"] == [350.0, 350.0]
    stopped = client.post(f"/api/loops/{loop}/stop").json()
    assert stopped["status"] == "stopped"
    assert _step(client, loop, 12.0).status_code == 409
    assert client.post(f"/api/loops/{loop}/stop").status_code == 200  # idempotent


@pytest.mark.parametrize(
    "payload, status, message",
    [
        ('{"time_s": NaN, "measurements": {"Ca": 0.5, "T": 350.0}}', 422, "finite"),
        ('{"time_s": 6.0, "measurements": {"Ca": NaN, "T": 350.0}}', 422, "finite"),
        ('{"time_s": 6.0, "measurements": {"Ca": 0.5, "T": Infinity}}', 422, "finite"),
        ('{"time_s": 6.0, "measurements": {"Ca": 0.5, "T": 350.0, "X": 1}}', 422, "unknown tag"),
        ('{"time_s": 6.0, "measurements": {"Ca": 0.5}}', 422, "missing sensor"),
        ('{"time_s": 6.0, "measurements": {"Ca": 0.5, "T": 350, "Caf": -1}}', 422, "negative"),
        (
            '{"time_s": 6.0, "measurements": {"Ca": 0.5, "T": 350}, "setpoints": {"Tc": 1}}',
            422,
            "only sensors",
        ),
        ('{"time_s": 0.0, "measurements": {"Ca": 0.5, "T": 350.0}}', 409, "not after"),
        ('{"time_s": -5.0, "measurements": {"Ca": 0.5, "T": 350.0}}', 409, "not after"),
        ('{"time_s": 6.0, "measurements": {"Ca": 0.5, "T": 350.0}, "extra": 1}', 422, "extra"),
    ],
)
def test_rejected_step_stores_nothing(
    client: TestClient, loop: int, session: Session, payload: str, status: int, message: str
) -> None:
    assert _step(client, loop, 0.0).status_code == 200
    response = client.post(
        f"/api/loops/{loop}/step", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()).lower()
    assert _stored_steps(session) == 1
    assert _step(client, loop, 6.0).json()["step"] == 1  # the loop still works


def test_null_measurement_is_a_missing_sample(client: TestClient, loop: int) -> None:
    response = _step(client, loop, 0.0, measurements={**GOOD, "Ca": None})
    assert response.status_code == 200, response.text
    series = client.get(f"/api/runs/{loop}/series").json()
    assert "Ca" not in series["series"]["sensor"]


def test_oversized_payload(client: TestClient, loop: int, session: Session) -> None:
    huge = {f"tag{i}": 1.0 for i in range(5_000)}
    assert _step(client, loop, 0.0, measurements=huge).status_code == 413
    assert _stored_steps(session) == 0


def test_unknown_loop_and_model(client: TestClient, model_id: int) -> None:
    assert _step(client, 4242, 0.0).status_code == 404
    assert client.post("/api/loops/4242/stop").status_code == 404
    body = {"process": "cstr", "model_id": 999, "setpoints": {"T": 360.0}}
    assert client.post("/api/loops", json=body).status_code == 404
    body = {"process": "cstr", "model_id": model_id, "planner": "pid"}
    assert client.post("/api/loops", json=body).status_code == 422
    body = {"process": "cstr", "model_id": model_id, "setpoints": {"T": float("nan")}}
    response = client.post(
        "/api/loops", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


def test_guard_clips_a_misbehaving_controller(client: TestClient, loop: int, fake_factory) -> None:
    coolant = cstr.SPEC.tag("Tc")
    fake_factory.output = 1_000.0  # far above the coolant's upper bound
    # The loop's controller was built before: make a new loop with the broken one.
    model = client.get(f"/api/runs/{loop}").json()["model_id"]
    run_id = client.post("/api/loops", json={"process": "cstr", "model_id": model}).json()["run_id"]
    first = _step(client, run_id, 0.0).json()
    assert first["actuators"]["Tc"] == coolant.high
    assert first["status"] == "fallback"
    assert first["events"][-1]["kind"] == "api_guard"
    controller = fake_factory.built[-1]
    controller.output = coolant.low  # inside the bounds, but far too far in one second
    second = _step(client, run_id, 1.0).json()
    assert second["actuators"]["Tc"] == pytest.approx(coolant.high - coolant.rate_limit * 1.0)
    assert "rate limited" in second["events"][-1]["message"]
    controller.output = float("nan")
    held = _step(client, run_id, 2.0).json()
    assert held["actuators"]["Tc"] == second["actuators"]["Tc"]
    assert "holding" in held["events"][-1]["message"]


def test_rate_limit_counts_from_a_plausible_read_back(
    client: TestClient, loop: int, fake_factory
) -> None:
    assert _step(client, loop, 0.0).json()["actuators"]["Tc"] == pytest.approx(301.0)
    # The plant reports 301.4 K applied (within 0.5 K/s x 1 s of the command): the move
    # counts from there, and stays within the rate limit of the command too.
    fake_factory.built[-1].output = 290.0
    response = _step(client, loop, 1.0, measurements={**GOOD, "Tc": 301.4})
    assert response.status_code == 200, response.text
    assert response.json()["actuators"]["Tc"] == pytest.approx(300.9)


def test_implausible_read_back_is_ignored_and_raises_an_alarm(
    client: TestClient, loop: int
) -> None:
    assert _step(client, loop, 0.0).json()["actuators"]["Tc"] == pytest.approx(301.0)
    # 310 K is 9 K from the last command, where 0.5 K/s allows 0.5 K in 1 s.
    body = _step(client, loop, 1.0, measurements={**GOOD, "Tc": 310.0}).json()
    assert body["actuators"]["Tc"] == pytest.approx(301.0)  # counted from the command
    assert body["status"] == "fallback"
    assert [e["kind"] for e in body["events"]] == ["implausible_readback"]
    alarms = client.get("/api/alarms", params={"loop": loop}).json()
    assert any(
        a["kind"] == "fallback" and "implausible_readback" in a["message"] for a in alarms
    ), alarms


def test_loop_survives_a_restart(db_url: str, client: TestClient, loop: int, fake_factory) -> None:
    _step(client, loop, 0.0, setpoints={"T": 362.0})
    restarted = create_app(Settings(database_url=db_url), controller_factory=fake_factory)
    with TestClient(restarted) as other:
        response = _step(other, loop, 0.0)
        assert response.status_code == 409  # the database remembers time order
        after = _step(other, loop, 6.0).json()
    assert after["step"] == 1
    assert after["actuators"]["Tc"] == pytest.approx(301.2)  # setpoint 362 restored
    assert len(fake_factory.built) == 2


def test_corrupted_model_cannot_start_a_loop(
    client: TestClient, model_id: int, session: Session
) -> None:
    from sqlalchemy import update

    from api.orm import TwinModel

    session.execute(update(TwinModel).values(checkpoint=b"tampered"))
    session.commit()
    response = client.post("/api/loops", json={"process": "cstr", "model_id": model_id})
    assert response.status_code == 500
    assert "corrupted" in response.json()["detail"]


def test_value_rows_of_a_step(client: TestClient, loop: int, session: Session) -> None:
    _step(client, loop, 0.0)
    session.expire_all()
    channels = set(session.scalars(select(RunValue.channel).distinct()))
    assert channels == {"sensor", "disturbance", "actuator", "setpoint", "margin", "prediction"}
