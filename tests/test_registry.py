"""The model registry and the loop endpoints, through HTTP, on SQLite and PostgreSQL.

Provenance of every model's training data; the active model of a loop, switched
bumplessly with a history and an audit row, or refused with nothing changed; the
loops' read endpoints (status ok / fallback / stale / stopped, the latest setpoint).
Time is an injected clock: staleness is tested without sleeping.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeController
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from api import services
from api.app import create_app
from api.cli import app as cli
from api.orm import AuditEntry, ModelActivation, Role, Run, TwinModel
from api.services.loops import STALE_AFTER_PERIODS, LoopManager
from api.settings import Settings
from processes import cstr
from twin.records import StepRecord
from twin.spec import ProcessSpec

GOOD = {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}
PERIOD_S = cstr.SPEC.sample_period_s
MOVE_K = 0.25  # what a handed-over controller adds to the coolant each step


# ---------------------------------------------------------------- fixtures


class Clock:
    """The server time the loops see; tests move it forward instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class HandoverController(FakeController):
    """The conftest's P controller; once handed over (`reset`), it moves the coolant by
    MOVE_K per step from the value it was handed, so a bump would show."""

    def __init__(self, spec: ProcessSpec, planner: str, checkpoint: bytes) -> None:
        super().__init__(spec, planner)
        self.checkpoint = checkpoint
        self.handovers: list[dict[str, float]] = []
        self.coolant: float | None = None

    def reset(self, applied: dict[str, float]) -> None:
        self.handovers.append(dict(applied))
        self.coolant = applied["Tc"]

    def step(
        self, time_s: float, measurements: dict[str, float], setpoints: dict[str, float]
    ) -> StepRecord:
        record = super().step(time_s, measurements, setpoints)
        if self.coolant is None:
            return record
        self.coolant += MOVE_K
        return dataclasses.replace(record, actuators={"Tc": self.coolant})


@pytest.fixture
def built() -> list[HandoverController]:
    return []


@pytest.fixture
def factory(
    cstr_spec: ProcessSpec, built: list[HandoverController]
) -> Callable[[bytes, str], HandoverController]:
    def make(checkpoint: bytes, planner: str) -> HandoverController:
        controller = HandoverController(cstr_spec, planner, checkpoint)
        built.append(controller)
        return controller

    return make


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _app(db_url: str, factory: Callable[..., Any], clock: Clock, **settings: Any) -> FastAPI:
    app = create_app(Settings(database_url=db_url, **settings), controller_factory=factory)
    app.state.loops = LoopManager(factory, clock=clock)
    return app


@pytest.fixture
def api(db_url: str, factory, clock: Clock) -> Iterator[TestClient]:
    with TestClient(_app(db_url, factory, clock)) as test_client:
        yield test_client


@pytest.fixture
def models(session: Session) -> dict[str, int]:
    """Two cstr models (a, b) and one of another process."""
    return {
        "a": services.register_model(session, "cstr", "jepa", b"model-a", {}, {}).id,
        "b": services.register_model(session, "cstr", "jepa", b"model-b", {}, {}).id,
        "other": services.register_model(session, "turbofan", "jepa", b"fan", {}, {}).id,
    }


@pytest.fixture
def loop(api: TestClient, models: dict[str, int]) -> int:
    response = api.post(
        "/api/loops", json={"process": "cstr", "model_id": models["a"], "setpoints": {"T": 360.0}}
    )
    assert response.status_code == 201, response.text
    return response.json()["run_id"]


def _step(client: TestClient, run_id: int, time_s: float, **extra: Any) -> dict[str, Any]:
    response = client.post(
        f"/api/loops/{run_id}/step", json={"time_s": time_s, "measurements": GOOD, **extra}
    )
    assert response.status_code == 200, response.text
    return response.json()


def _switch(
    client: TestClient, run_id: int, model_id: int, reason: str = "better twin", **headers: str
) -> Any:
    return client.put(
        f"/api/loops/{run_id}/model", headers=headers, json={"model_id": model_id, "reason": reason}
    )


def _history(client: TestClient, run_id: int) -> list[dict[str, Any]]:
    response = client.get(f"/api/loops/{run_id}/models")
    assert response.status_code == 200, response.text
    return response.json()


def _count(session: Session, table: type) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(table)) or 0


# ---------------------------------------------------------------- provenance


def test_log_provenance_of_a_file_and_of_a_generated_log(tmp_path: Path) -> None:
    log = cstr.generate_training_log(hours=0.1, seed=4)
    path = tmp_path / "log.csv"
    log.to_csv(path, index=False)
    from_file = services.log_provenance(log, cstr.SPEC, source=f"file:{path}", path=path)
    assert from_file.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert from_file.rows == len(log)
    assert (from_file.start_s, from_file.end_s) == (log["time_s"].min(), log["time_s"].max())
    # A generated log hashes as the CSV it would be saved as: the same bytes, the same hash.
    generated = services.log_provenance(log, cstr.SPEC, source="simulator:cstr")
    assert generated.sha256 == from_file.sha256
    changed = log.copy()
    changed.loc[5, "T"] += 0.001
    assert services.log_provenance(changed, cstr.SPEC, source="x").sha256 != from_file.sha256


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"sha256": "abc"}, "pattern"),
        ({"rows": -1}, "greater than or equal"),
        ({"start_s": 10.0, "end_s": 5.0}, "after end_s"),
        ({"start_s": 1.0, "end_s": None}, "both"),
        ({"start_s": float("nan"), "end_s": 1.0}, "finite"),
    ],
)
def test_provenance_is_validated(fields: dict[str, Any], message: str) -> None:
    good = {"sha256": "0" * 64, "rows": 3, "start_s": 0.0, "end_s": 12.0, "source": "x"}
    with pytest.raises(ValueError, match=message):
        services.DataProvenance(**{**good, **fields})


def test_provenance_is_stored_and_listed_per_process(
    api: TestClient, session: Session, tmp_path: Path
) -> None:
    log = cstr.generate_training_log(hours=0.1, seed=2)
    provenance = services.log_provenance(log, cstr.SPEC, source="simulator:cstr seed=2")
    config = {"train": {"epochs": 3}}
    first = services.register_model(
        session, "cstr", "jepa", b"v1", config, {"loss": 0.5}, provenance=provenance
    ).id
    second = services.register_model(
        session, "cstr", "jepa", b"v2", config, {"loss": 0.4}, provenance=provenance
    ).id
    services.register_model(session, "turbofan", "jepa", b"fan", {}, {})

    listed = api.get("/api/models", params={"process": "cstr"}).json()
    assert [(m["id"], m["version"]) for m in listed] == [(second, 2), (first, 1)]
    model = api.get(f"/api/models/{first}").json()
    assert model["provenance"] == {
        "sha256": provenance.sha256,
        "rows": len(log),
        "start_s": 0.0,
        "end_s": log["time_s"].iloc[-1],
        "source": "simulator:cstr seed=2",
    }
    assert model["config"] == config and model["metrics"] == {"loss": 0.5}
    assert model["active_loops"] == []
    same_data = api.get("/api/models", params={"dataset_sha256": provenance.sha256.upper()})
    assert [m["id"] for m in same_data.json()] == [second, first]
    assert api.get("/api/models", params={"dataset_sha256": "nope"}).status_code == 422
    fan = api.get("/api/models", params={"process": "turbofan"}).json()
    assert [m["provenance"] for m in fan] == [None]  # registered without data


def test_training_job_records_the_provenance_of_its_data(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    from test_jobs import tiny

    from api.worker import run_worker

    path = tmp_path / "log.csv"
    cstr.generate_training_log(hours=0.3, seed=2).to_csv(path, index=False)
    simulated = services.enqueue_training(session, "cstr", tiny())
    from_file = services.enqueue_training(
        session, "cstr", tiny(data={"source": "csv", "path": str(path)}, model_name="csv")
    )
    assert run_worker(db_url, poll_seconds=0.01, once=True) == 2

    session.expire_all()
    by_job = {
        run.id: services.get_model(session, run.model_id)
        for run in (session.get(Run, simulated.id), session.get(Run, from_file.id))
        if run is not None and run.model_id is not None
    }
    generated = cstr.generate_training_log(hours=0.3, seed=1)  # what the job simulated
    model = by_job[simulated.id]
    assert (
        model.dataset_sha256 == hashlib.sha256(generated.to_csv(index=False).encode()).hexdigest()
    )
    assert model.dataset_rows == len(generated)
    assert (model.data_start_s, model.data_end_s) == (0.0, generated["time_s"].iloc[-1])
    assert model.data_source == "simulator:cstr hours=0.3 seed=1"
    model = by_job[from_file.id]
    assert model.dataset_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.data_source == f"file:{path.resolve()}" and model.dataset_rows > 0


def test_twin_train_records_the_provenance_of_its_file(
    db_url: str, session: Session, tmp_path: Path
) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("the command line path is the same on both databases")
    path = tmp_path / "log.csv"
    log = cstr.generate_training_log(hours=0.3, seed=5)
    log.to_csv(path, index=False)
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--process",
            "cstr",
            "--data",
            str(path),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "t.pt"),
            "--database-url",
            db_url,
        ],
    )
    assert result.exit_code == 0, result.output
    model = services.list_models(session, "cstr")[0]
    assert model.dataset_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.dataset_rows == len(log)
    assert model.data_end_s == log["time_s"].iloc[-1]
    assert model.config["train"]["epochs"] == 1 and "holdout_prediction" in model.metrics


# ---------------------------------------------------------------- switching models


def test_switch_is_bumpless_recorded_and_audited(
    api: TestClient,
    loop: int,
    session: Session,
    models: dict[str, int],
    built: list[HandoverController],
) -> None:
    _step(api, loop, 0.0)
    last = _step(api, loop, PERIOD_S)["actuators"]["Tc"]
    response = _switch(api, loop, models["b"], reason="retrained on March data")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_id"] == models["b"] and body["model"]["version"] == 2
    assert body["status"] == "ok" and body["actuators"] == {"Tc": last}

    new = built[-1]
    assert new.checkpoint == b"model-b" and new.handovers == [{"Tc": last}]
    after = _step(api, loop, 2 * PERIOD_S)
    assert after["actuators"]["Tc"] == pytest.approx(last + MOVE_K)  # no bump
    assert after["status"] == "ok" and not after["events"]  # the guard had nothing to do

    history = _history(api, loop)
    assert [(h["model"]["id"], h["previous_model_id"], h["reason"]) for h in history] == [
        (models["b"], models["a"], "retrained on March data"),
        (models["a"], None, "loop started"),
    ]
    assert history[0]["actor"] == "anonymous"
    assert api.get(f"/api/models/{models['b']}").json()["active_loops"] == [loop]
    assert api.get(f"/api/models/{models['a']}").json()["active_loops"] == []
    session.expire_all()
    entry = session.scalars(
        select(AuditEntry).where(AuditEntry.action == "loop.model_switch")
    ).one()
    assert entry.target == f"run:{loop}"
    assert entry.detail["model_id"] == models["b"]
    assert entry.detail["previous_model_id"] == models["a"]
    assert entry.detail["reason"] == "retrained on March data"


def _corrupt(session: Session, model_id: int) -> None:
    session.execute(
        update(TwinModel).where(TwinModel.id == model_id).values(checkpoint=b"tampered")
    )
    session.commit()


@pytest.mark.parametrize(
    "target, prepare, status, message",
    [
        ("other", None, 422, "trained for process 'turbofan'"),
        ("unknown", None, 404, "unknown model id"),
        ("b", _corrupt, 409, "corrupted"),
    ],
)
def test_refused_switch_changes_nothing(
    api: TestClient,
    loop: int,
    session: Session,
    models: dict[str, int],
    built: list[Any],
    target: str,
    prepare: Any,
    status: int,
    message: str,
) -> None:
    model_id = models.get(target, 4242)
    if prepare is not None:
        prepare(session, model_id)
    before_tc = _step(api, loop, 0.0)["actuators"]["Tc"]
    history, audit, n_built = _history(api, loop), _count(session, AuditEntry), len(built)

    response = _switch(api, loop, model_id)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert _history(api, loop) == history and _count(session, AuditEntry) == audit
    assert api.get(f"/api/loops/{loop}").json()["model_id"] == models["a"]
    assert len(built) == n_built  # nothing was even built
    # The loop goes on with its own controller, as if nothing had been asked.
    assert _step(api, loop, PERIOD_S)["actuators"]["Tc"] == pytest.approx(before_tc)
    assert built[-1].checkpoint == b"model-a" and built[-1].handovers == []


def test_switch_edge_cases(
    api: TestClient, loop: int, session: Session, models: dict[str, int]
) -> None:
    history = _history(api, loop)
    same = _switch(api, loop, models["a"])
    assert same.status_code == 200 and _history(api, loop) == history  # nothing to record
    for body in (
        {"model_id": models["b"]},
        {"model_id": models["b"], "reason": "  "},
        {"model_id": models["b"], "reason": "x", "extra": 1},
    ):
        response = api.put(f"/api/loops/{loop}/model", json=body)
        assert response.status_code == 422, body
    assert api.post(f"/api/loops/{loop}/stop").status_code == 200
    stopped = _switch(api, loop, models["b"])
    assert stopped.status_code == 409 and "stopped" in stopped.json()["detail"]
    assert _history(api, loop) == history
    assert _switch(api, 4242, models["b"]).status_code == 404
    train = services.create_run(session, kind="train", process="cstr", controller="jepa", config={})
    assert _switch(api, train.id, models["b"]).status_code == 404
    assert api.get(f"/api/loops/{train.id}").status_code == 404


def test_another_worker_follows_a_switch_and_a_stop(
    db_url: str,
    factory,
    clock: Clock,
    api: TestClient,
    loop: int,
    models: dict[str, int],
    built: list[HandoverController],
) -> None:
    """Two API workers on one database: the one that did not switch notices at its
    next step, rebuilds the new model's controller and hands over bumplessly."""
    with TestClient(_app(db_url, factory, clock)) as other:
        _step(api, loop, 0.0)
        last = _step(other, loop, PERIOD_S)["actuators"]["Tc"]  # `other` caches the loop
        assert _switch(api, loop, models["b"]).status_code == 200
        after = _step(other, loop, 2 * PERIOD_S)
        assert after["actuators"]["Tc"] == pytest.approx(last + MOVE_K)
        assert built[-1].checkpoint == b"model-b" and built[-1].handovers == [{"Tc": last}]
        assert api.post(f"/api/loops/{loop}/stop").status_code == 200
        refused = other.post(
            f"/api/loops/{loop}/step", json={"time_s": 3 * PERIOD_S, "measurements": GOOD}
        )
        assert refused.status_code == 409 and "stopped" in refused.json()["detail"]


# ---------------------------------------------------------------- reading loops


def test_setpoint_polling_returns_what_the_last_step_returned(
    api: TestClient, loop: int, clock: Clock
) -> None:
    before = api.get(f"/api/loops/{loop}/setpoint")
    assert before.status_code == 404 and "no setpoint yet" in before.json()["detail"]
    _step(api, loop, 0.0)
    posted = _step(api, loop, PERIOD_S, setpoints={"T": 355.0})
    clock.advance(2.5)
    polled = api.get(f"/api/loops/{loop}/setpoint").json()
    assert polled["actuators"] == posted["actuators"]
    assert (polled["step"], polled["time_s"]) == (posted["step"], posted["time_s"])
    assert (polled["status"], polled["step_status"]) == ("ok", "ok")
    assert polled["age_s"] == pytest.approx(2.5)
    assert polled["setpoints"] == {"T": 355.0}
    assert api.get("/api/loops/4242/setpoint").status_code == 404


def test_status_goes_stale_when_steps_stop(api: TestClient, loop: int, clock: Clock) -> None:
    stale_after_s = STALE_AFTER_PERIODS * PERIOD_S
    assert api.get(f"/api/loops/{loop}").json()["status"] == "ok"
    clock.advance(stale_after_s + 1)
    assert api.get(f"/api/loops/{loop}").json()["status"] == "stale"  # never stepped
    _step(api, loop, 0.0)
    clock.advance(stale_after_s)
    view = api.get(f"/api/loops/{loop}").json()
    assert (view["status"], view["age_s"], view["stale_after_s"]) == (
        "ok",
        stale_after_s,
        stale_after_s,
    )
    clock.advance(0.5)
    assert api.get(f"/api/loops/{loop}").json()["status"] == "stale"
    polled = api.get(f"/api/loops/{loop}/setpoint").json()
    assert polled["status"] == "stale" and polled["age_s"] == pytest.approx(stale_after_s + 0.5)
    _step(api, loop, PERIOD_S)
    assert api.get(f"/api/loops/{loop}").json()["status"] == "ok"  # steps resumed
    api.post(f"/api/loops/{loop}/stop")
    assert api.get(f"/api/loops/{loop}/setpoint").json()["status"] == "stopped"


def test_fallback_status_and_the_loop_list(
    api: TestClient, loop: int, models: dict[str, int], built: list[HandoverController]
) -> None:
    second = api.post("/api/loops", json={"process": "cstr", "model_id": models["b"]})
    second_id = second.json()["run_id"]
    built[-1].output = 1_000.0  # far outside the coolant's bounds: the guard clips it
    assert _step(api, second_id, 0.0)["status"] == "fallback"
    _step(api, loop, 0.0, setpoints={"T": 358.0})
    listed = api.get("/api/loops").json()
    assert [(v["run_id"], v["status"]) for v in listed] == [(second_id, "fallback"), (loop, "ok")]
    mine = listed[1]
    assert mine["model"]["id"] == models["a"] and mine["setpoints"] == {"T": 358.0}
    assert mine["last_step"] == 0 and mine["actuators"]["Tc"] == pytest.approx(300.8)
    api.post(f"/api/loops/{loop}/stop")
    running = api.get("/api/loops", params={"running": True}).json()
    assert [v["run_id"] for v in running] == [second_id]
    stopped = api.get("/api/loops", params={"running": False}).json()
    assert [(v["run_id"], v["status"], v["run_status"]) for v in stopped] == [
        (loop, "stopped", "stopped")
    ]
    assert api.get("/api/loops", params={"process": "turbofan"}).json() == []


# ---------------------------------------------------------------- roles


def test_roles_read_step_and_switch(
    db_url: str,
    factory,
    clock: Clock,
    session: Session,
    models: dict[str, int],
    tokens: dict[Role, str],
) -> None:
    def key(role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[role]}"}

    app = _app(db_url, factory, clock, auth_required=True)
    with TestClient(app) as secure:
        start = {"process": "cstr", "model_id": models["a"]}
        assert secure.post("/api/loops", json=start, headers=key(Role.VIEWER)).status_code == 403
        loop = secure.post("/api/loops", json=start, headers=key(Role.OPERATOR)).json()["run_id"]
        step = {"time_s": 0.0, "measurements": GOOD}
        assert (
            secure.post(f"/api/loops/{loop}/step", json=step, headers=key(Role.VIEWER)).status_code
            == 403
        )
        assert (
            secure.post(
                f"/api/loops/{loop}/step", json=step, headers=key(Role.OPERATOR)
            ).status_code
            == 200
        )
        for path in ("", f"/{loop}", f"/{loop}/setpoint", f"/{loop}/models"):
            assert secure.get(f"/api/loops{path}", headers=key(Role.VIEWER)).status_code == 200, (
                path
            )
            assert secure.get(f"/api/loops{path}").status_code == 401
        for role in (Role.VIEWER, Role.OPERATOR):
            refused = _switch(secure, loop, models["b"], **key(role))
            assert refused.status_code == 403 and "'engineer' role" in refused.json()["detail"]
        assert _count(session, ModelActivation) == 1
        switched = _switch(secure, loop, models["b"], **key(Role.ENGINEER))
        assert switched.status_code == 200, switched.text
        history = secure.get(f"/api/loops/{loop}/models", headers=key(Role.VIEWER)).json()
        assert [(h["actor"], h["model"]["id"]) for h in history] == [
            ("engineer-key", models["b"]),
            ("operator-key", models["a"]),
        ]


# ---------------------------------------------------------------- the real controller


@pytest.fixture(scope="module")
def two_tiny_checkpoints() -> tuple[bytes, bytes]:
    pytest.importorskip("twin.controller")
    from twin.train import TrainConfig, train_twin

    log = cstr.generate_training_log(hours=0.5, seed=1)
    return tuple(
        train_twin(log, cstr.SPEC, TrainConfig(epochs=1, seed=seed), show_progress=False)[
            0
        ].to_bytes()
        for seed in (0, 1)
    )


def test_real_controllers_hand_over_without_a_bump(
    db_url: str, session: Session, two_tiny_checkpoints: tuple[bytes, bytes]
) -> None:
    """TwinController.reset(applied): the new twin's own safety layer rate-limits from
    the coolant last applied, so the API's last-line guard has nothing to correct."""
    first, second = (
        services.register_model(session, "cstr", "tiny", checkpoint, {}, {}).id
        for checkpoint in two_tiny_checkpoints
    )
    coolant = cstr.SPEC.tag("Tc")
    with TestClient(create_app(Settings(database_url=db_url))) as client:
        run_id = client.post(
            "/api/loops", json={"process": "cstr", "model_id": first, "planner": "cem"}
        ).json()["run_id"]
        applied = [
            _step(client, run_id, PERIOD_S * k, measurements={**GOOD, "T": 350.0 + 3 * k})[
                "actuators"
            ]["Tc"]
            for k in range(4)
        ]
        assert _switch(client, run_id, second).status_code == 200
        loop = client.app.state.loops._loops[run_id]
        assert loop.controller.applied == {"Tc": applied[-1]}
        after = _step(client, run_id, PERIOD_S * 4, measurements={**GOOD, "T": 362.0})
    assert abs(after["actuators"]["Tc"] - applied[-1]) <= coolant.rate_limit * PERIOD_S + 1e-9
    assert "api_guard" not in {event["kind"] for event in after["events"]}
