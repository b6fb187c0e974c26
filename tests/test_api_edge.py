"""The edge of a live loop and the HTTP contract: forged read-backs, strict JSON, units,
error bodies without SQL, documented answers, key revocation that cannot lock out."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import services
from api.app import create_app
from api.orm import Role, RunStep
from api.settings import Settings
from processes import get_spec
from twin.records import StepRecord

GOOD = {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}
PERIOD_S = 6.0
SQL_WORDS = (
    "SELECT",
    "INSERT",
    "UPDATE ",
    "COPY ",
    "[SQL",
    "psycopg",
    "sqlite3",
    "UniqueViolation",
)


@pytest.fixture
def model_id(session: Session) -> int:
    return services.register_model(session, "cstr", "jepa", b"weights", {}, {}).id


@pytest.fixture
def loop(client: TestClient, model_id: int) -> int:
    response = client.post(
        "/api/loops",
        json={"process": "cstr", "model_id": model_id, "planner": "cem", "setpoints": {"T": 360.0}},
    )
    return response.json()["run_id"]


def _step(client: TestClient, run_id: int, time_s: float, measurements=None):
    return client.post(
        f"/api/loops/{run_id}/step", json={"time_s": time_s, "measurements": measurements or GOOD}
    )


def _stored(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(RunStep)) or 0


# ---------------------------------------------------------------- 4: forged read-backs


class Reckless:
    """A controller that asks for any coolant value at all, and trusts the read-back."""

    def __init__(self, rng: random.Random) -> None:
        self.spec, self.rng = get_spec("cstr"), rng

    def step(self, time_s, measurements, setpoints) -> StepRecord:
        return StepRecord(
            step=0,
            time_s=time_s,
            measurements={},
            setpoints=dict(setpoints),
            actuators={"Tc": self.rng.choice([-1e9, 200.0, 280.0, 360.0, 1e9])},
        )


def test_forged_read_backs_never_widen_a_move(db_url: str, model_id: int) -> None:
    """Adversarial: 300 steps, each with a forged coolant read-back (far, out of bounds,
    1e9, or just inside the rate limit), a reckless controller, dt of 1 to 6 s. No
    setpoint may leave the bounds or move farther from the last command than the rate
    limit allows in the time since (as the safety layer counts it)."""
    rng = random.Random(25)
    coolant = get_spec("cstr").tag("Tc")
    app = create_app(Settings(database_url=db_url), controller_factory=lambda _c, _p: Reckless(rng))
    with TestClient(app) as client:
        run_id = client.post(
            "/api/loops", json={"process": "cstr", "model_id": model_id, "planner": "cem"}
        ).json()["run_id"]
        time_s, last = 0.0, None
        violations = ignored = 0
        for _ in range(300):
            dt = rng.choice([1.0, 3.0, 6.0])
            time_s += dt
            reach = coolant.rate_limit * min(dt, PERIOD_S)
            base = last if last is not None else 330.0
            forged = rng.choice(
                [
                    base + 80.0,
                    base - 80.0,
                    1e9,
                    -1e9,
                    360.0,
                    280.0,
                    base + 0.999 * reach,
                    base - 0.999 * reach,
                ]
            )
            body = _step(client, run_id, time_s, {**GOOD, "Tc": forged}).json()
            sent = body["actuators"]["Tc"]
            ignored += any(e["kind"] == "implausible_readback" for e in body["events"])
            if not coolant.low <= sent <= coolant.high:
                violations += 1
            if last is not None and abs(sent - last) > reach + 1e-9:
                violations += 1
            last = sent
    assert violations == 0
    assert ignored > 100  # most of the forged values were seen as such


def test_the_reported_case(client: TestClient, loop: int, fake_factory) -> None:
    """Last command Tc = 280 K; a step reports Tc 360 (or 1e9): the answer stays 3 K away."""
    fake_factory.built[-1].output = 280.0
    for k in range(20):  # walk the coolant down to 280 K at the rate limit
        _step(client, loop, PERIOD_S * k)
    assert _step(client, loop, 120.0).json()["actuators"]["Tc"] == pytest.approx(280.0)
    fake_factory.built[-1].output = 360.0
    for time_s, forged in ((126.0, 360.0), (132.0, 1e9)):
        body = _step(client, loop, time_s, {**GOOD, "Tc": forged}).json()
        assert body["status"] == "fallback"
        assert "implausible_readback" in [e["kind"] for e in body["events"]]
    assert body["actuators"]["Tc"] == pytest.approx(280.0 + 2 * 0.5 * PERIOD_S)


# ---------------------------------------------------------------- 7: strict numbers


@pytest.mark.parametrize(
    "payload, message",
    [
        ('{"time_s": 0, "measurements": {"Ca": 0.5, "T": true, "Caf": 1, "Tf": 350}}', "number"),
        ('{"time_s": 0, "measurements": {"Ca": 0.5, "T": "350", "Caf": 1, "Tf": 350}}', "number"),
        ('{"time_s": "12", "measurements": {"Ca": 0.5, "T": 350, "Caf": 1, "Tf": 350}}', "number"),
        (
            '{"time_s": 0, "measurements": {"Ca": 0.5, "T": 350, "T": 1, "Caf": 1, "Tf": 350}}',
            "appears twice",
        ),
        (
            '{"time_s": 0, "time_s": 6, "measurements": {"Ca": 0.5, "T": 350, "Caf": 1, "Tf": 350}}',  # noqa: E501
            "appears twice",
        ),
    ],
)
def test_measurements_are_strict_numbers(
    client: TestClient, loop: int, session: Session, payload: str, message: str
) -> None:
    response = client.post(
        f"/api/loops/{loop}/step", content=payload, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert message in json.dumps(response.json())
    assert _stored(session) == 0


# ---------------------------------------------------------------- 12: units at the edge


class Holding:
    """Holds every actuator at its nominal: a controller for any spec."""

    def __init__(self, spec) -> None:
        self.spec = spec

    def step(self, time_s, measurements, setpoints) -> StepRecord:
        return StepRecord(
            step=0,
            time_s=time_s,
            measurements={},
            setpoints=dict(setpoints),
            actuators={t.name: t.nominal for t in self.spec.actuators},
        )


@pytest.fixture
def glucose_loop(db_url: str, session: Session):
    model = services.register_model(session, "glucose", "jepa", b"weights", {}, {}).id
    app = create_app(
        Settings(database_url=db_url),
        controller_factory=lambda _c, _p: Holding(get_spec("glucose")),
    )
    with TestClient(app) as client:
        run_id = client.post(
            "/api/loops", json={"process": "glucose", "model_id": model, "planner": "cem"}
        ).json()["run_id"]
        yield client, run_id


@pytest.mark.parametrize("cgm, mix_up", [(7.8, "mmol/L"), (3.9, "mmol/L"), (22.0, "mmol/L")])
def test_glucose_in_mmol_per_litre_is_named(
    glucose_loop, session: Session, cgm: float, mix_up: str
) -> None:
    client, run_id = glucose_loop
    response = _step(client, run_id, 0.0, {"CGM": cgm, "IOB": 1.0, "CHO": 0.0})
    assert response.status_code == 422 and mix_up in response.json()["detail"]
    assert _stored(session) == 0
    fine = _step(client, run_id, 0.0, {"CGM": cgm * 18.016, "IOB": 1.0, "CHO": 0.0})
    assert fine.status_code == 200, fine.text


def test_celsius_for_kelvin_is_named(client: TestClient, loop: int) -> None:
    response = _step(client, loop, 0.0, {**GOOD, "T": 76.85})
    assert response.status_code == 422 and "degC" in response.json()["detail"]


def test_a_real_excursion_is_not_refused(client: TestClient, loop: int) -> None:
    """A runaway reactor is a measurement the controller must see, not a unit error."""
    assert _step(client, loop, 0.0, {**GOOD, "T": 395.0}).status_code == 200


def test_an_unexplained_implausible_value_goes_through_with_an_alarm(
    client: TestClient, loop: int
) -> None:
    """2000 K is no reactor temperature in any unit we know: the controller still sees it
    (its limit guard must), the step is marked fallback and the event says why."""
    body = _step(client, loop, 0.0, {**GOOD, "T": 2000.0}).json()
    assert body["status"] == "fallback"
    assert "implausible_measurement" in [e["kind"] for e in body["events"]]


# ---------------------------------------------------------------- 5: no SQL in bodies


def test_a_unique_race_answers_409_without_sql(
    client: TestClient, loop: int, session: Session, monkeypatch
) -> None:
    assert _step(client, loop, 0.0).status_code == 200
    try:  # a real unique violation, as a racing worker would cause it
        session.execute(
            text(
                "INSERT INTO run_steps (run_id, step, time_s, status, solve_ms) "
                "SELECT run_id, step, time_s, status, solve_ms FROM run_steps"
            )
        )
        session.flush()
        raise AssertionError("the unique constraint did not hold")
    except IntegrityError as exc:
        race = exc
        session.rollback()
    assert "INSERT" in str(race)  # what used to reach the client

    def racing(*_args, **_kwargs):
        raise race

    monkeypatch.setattr("api.services.loops.write_steps", racing)
    response = _step(client, loop, PERIOD_S)
    assert response.status_code == 409
    assert not any(word in response.text for word in SQL_WORDS), response.text


# ---------------------------------------------------------------- 6: the contract


@pytest.mark.parametrize(
    "path",
    [
        "/api/runs/2147483648",
        "/api/loops/99999999999999999999",
        "/api/models/0",
        "/api/alarms/-1",
        "/api/runs/1/steps/99999999999999999999",
    ],
)
def test_out_of_range_ids_are_refused_at_the_edge(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


def test_every_operation_documents_its_errors(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    missing = []
    for path, item in schema["paths"].items():
        if not path.startswith("/api/") or path == "/api/health":
            continue
        for method, operation in item.items():
            codes = set(operation["responses"])
            missing += [
                f"{method} {path} {c}"
                for c in ("400", "401", "403", "404", "409", "413", "422")
                if c not in codes
            ]
    assert missing == []
    detail = schema["components"]["schemas"]["ValidationErrorOut"]["properties"]["detail"]
    assert {"type": "string"} in detail["anyOf"]  # a service's 422 is a sentence


def test_a_405_lists_every_method(client: TestClient) -> None:
    response = client.delete("/api/loops")
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["allow"].split(",")} >= {"GET", "POST"}
    keys = client.put("/api/keys")
    assert {m.strip() for m in keys.headers["allow"].split(",")} >= {"GET", "POST"}


def test_the_loop_schemas_say_enough_to_write_a_client(db_url: str, fake_factory) -> None:
    with TestClient(
        create_app(Settings(database_url=db_url), controller_factory=fake_factory)
    ) as client:
        schema = client.get("/openapi.json").json()
    parts = schema["components"]["schemas"]
    time_s = parts["StepIn"]["properties"]["time_s"]["description"]
    assert "seconds" in time_s and "increasing" in time_s
    assert parts["StepOut"]["properties"]["status"]["enum"] == ["ok", "fallback", "stale"]
    assert "initial_actuators" in parts["LoopCreate"]["description"]
    measurements = parts["StepIn"]["properties"]["measurements"]["description"]
    assert "read-back" in measurements and "disturbance" in measurements
    start = schema["paths"]["/api/loops"]["post"]
    assert {} in start["security"]  # auth is off by default: a key is optional
    with TestClient(
        create_app(
            Settings(database_url=db_url, auth_required=True), controller_factory=fake_factory
        )
    ) as client:
        secured = client.get("/openapi.json").json()["paths"]["/api/loops"]["post"]
    assert {} not in secured["security"]


# ---------------------------------------------------------------- 8: no lock-out


def test_an_admin_cannot_revoke_their_own_key(secure: TestClient, tokens: dict[Role, str]) -> None:
    admin = {"Authorization": f"Bearer {tokens[Role.ADMIN]}"}
    keys = secure.get("/api/keys", headers=admin).json()
    own = next(k["id"] for k in keys if k["role"] == "admin")
    refused = secure.post(f"/api/keys/{own}/revoke", headers=admin)
    assert refused.status_code == 409 and "their own key" in refused.json()["detail"]
    other = secure.post("/api/keys", json={"name": "second", "role": "admin"}, headers=admin).json()
    assert secure.post(f"/api/keys/{other['id']}/revoke", headers=admin).status_code == 200


def test_the_last_admin_key_cannot_be_revoked(client: TestClient, tokens: dict[Role, str]) -> None:
    keys = client.get("/api/keys").json()  # keyless: auth is not required here
    admin = next(k["id"] for k in keys if k["role"] == "admin")
    refused = client.post(f"/api/keys/{admin}/revoke")
    assert refused.status_code == 409 and "last active admin" in refused.json()["detail"]
    viewer = next(k["id"] for k in keys if k["role"] == "viewer")
    assert client.post(f"/api/keys/{viewer}/revoke").status_code == 200
