"""A live loop through HTTP with the real TwinController (a tiny twin trained in the test)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api import services
from api.app import create_app
from api.settings import Settings
from processes import cstr

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_checkpoint() -> bytes:
    pytest.importorskip("twin.controller")
    from processes.cstr import SPEC, generate_training_log
    from twin.train import TrainConfig, train_twin

    log = generate_training_log(hours=0.5, seed=1)
    twin, _ = train_twin(log, SPEC, TrainConfig(epochs=1, seed=0), show_progress=False)
    return twin.to_bytes()


@pytest.mark.parametrize("planner", ["cem", "casadi"])
def test_real_controller_loop(
    db_url: str, session: Session, tiny_checkpoint: bytes, planner: str
) -> None:
    model = services.register_model(session, "cstr", "tiny", tiny_checkpoint, {}, {})
    coolant = cstr.SPEC.tag("Tc")
    app = create_app(Settings(database_url=db_url))  # the default controller factory
    with TestClient(app) as client:
        start = client.post(
            "/api/loops",
            json={
                "process": "cstr",
                "model_id": model.id,
                "planner": planner,
                "setpoints": {"T": 360.0},
            },
        )
        assert start.status_code == 201, start.text
        run_id = start.json()["run_id"]
        previous = None
        for k in range(4):
            body = {
                "time_s": 6.0 * k,
                "measurements": {"Ca": 0.5, "T": 350.0 + k, "Caf": 1.0, "Tf": 350.0},
            }
            response = client.post(f"/api/loops/{run_id}/step", json=body)
            assert response.status_code == 200, response.text
            out = response.json()
            tc = out["actuators"]["Tc"]
            assert coolant.low <= tc <= coolant.high
            if previous is not None:
                assert abs(tc - previous) <= coolant.rate_limit * 6.0 + 1e-6
            previous = tc
        assert client.get(f"/api/runs/{run_id}").json()["n_steps"] == 4
        assert client.post(f"/api/loops/{run_id}/stop").json()["status"] == "stopped"


def test_units_are_judged_from_the_training_log(
    db_url: str, session: Session, tiny_checkpoint: bytes
) -> None:
    """With a real twin the plausible range is the training log's (its normaliser's mean
    and std), not the tag file's: a reactor temperature in degC is refused, named."""
    from api.services.loops import _training_ranges
    from twin.twin_model import Twin

    ranges = _training_ranges(type("WithTwin", (), {"twin": Twin.from_bytes(tiny_checkpoint)}))
    mean, std = ranges["T"]
    assert 330.0 < mean < 380.0 and std > 0  # the CSTR log's temperatures, in K
    model = services.register_model(session, "cstr", "tiny", tiny_checkpoint, {}, {})
    with TestClient(create_app(Settings(database_url=db_url))) as client:
        run_id = client.post(
            "/api/loops", json={"process": "cstr", "model_id": model.id, "planner": "cem"}
        ).json()["run_id"]
        celsius = client.post(
            f"/api/loops/{run_id}/step",
            json={
                "time_s": 0.0,
                "measurements": {"Ca": 0.5, "T": mean - 273.15, "Caf": 1.0, "Tf": 350.0},
            },
        )
        assert celsius.status_code == 422 and "degC" in celsius.json()["detail"]
        kelvin = client.post(
            f"/api/loops/{run_id}/step",
            json={"time_s": 0.0, "measurements": {"Ca": 0.5, "T": mean, "Caf": 1.0, "Tf": 350.0}},
        )
        assert kelvin.status_code == 200, kelvin.text


LOOP_HOURS = {"turbofan": 0.1, "glucose": 8.0, "tennessee_eastman": 1.0}


@pytest.mark.parametrize("name", sorted(LOOP_HOURS))
def test_every_process_runs_a_live_loop(db_url: str, session: Session, name: str) -> None:
    """Each built-in process through HTTP: a tiny twin, its baseline as fallback, real
    measurements from a baseline episode; every setpoint inside bounds and rate limits."""
    from processes import get_process
    from processes.base import benchmark_cases
    from twin.train import TrainConfig, train_twin

    module = get_process(name)
    spec = module.SPEC
    log = module.generate_training_log(hours=LOOP_HOURS[name], seed=1)
    twin, _ = train_twin(log, spec, TrainConfig(epochs=1, seed=0), show_progress=False)
    model = services.register_model(session, name, "tiny", twin.to_bytes(), {}, {})
    episode = module.run_episode(
        module.baseline_policy(), "baseline", seed=3, **benchmark_cases(module)[0]
    )
    setpoints = {t.name: float(episode.steps[0].measurements[t.name]) for t in spec.controlled}
    app = create_app(Settings(database_url=db_url))
    with TestClient(app) as client:
        start = client.post(
            "/api/loops",
            json={"process": name, "model_id": model.id, "planner": "cem", "setpoints": setpoints},
        )
        assert start.status_code == 201, start.text
        run_id = start.json()["run_id"]
        previous: dict[str, float] | None = None
        for k, step in enumerate(episode.steps[:4]):
            measured = {
                tag: value
                for tag, value in step.measurements.items()
                if spec.tag(tag).role != "actuator"
            }
            response = client.post(
                f"/api/loops/{run_id}/step",
                json={"time_s": spec.sample_period_s * k, "measurements": measured},
            )
            assert response.status_code == 200, response.text
            actuators = response.json()["actuators"]
            for tag in spec.actuators:
                assert tag.low <= actuators[tag.name] <= tag.high
                if previous is not None:
                    limit = tag.rate_limit * spec.sample_period_s
                    assert abs(actuators[tag.name] - previous[tag.name]) <= limit + 1e-6
            previous = actuators
        assert client.get(f"/api/runs/{run_id}").json()["n_steps"] == 4


def test_two_workers_serving_one_loop_keep_the_same_window(
    db_url: str, session: Session, engine, tiny_checkpoint: bytes
) -> None:
    """Steps of one loop alternating between two API workers (two LoopManagers over one
    database, as after reconnects): each worker refills its controller's context window
    from the stored steps, so it plans from exactly the samples a single worker would see."""
    from api.db import make_session_factory
    from api.services.loops import LoopManager

    model = services.register_model(session, "cstr", "tiny", tiny_checkpoint, {}, {})
    factory = make_session_factory(engine)
    workers = [LoopManager(), LoopManager()]
    single = LoopManager()
    with factory() as s:
        shared = workers[0].start(s, "cstr", model.id, "casadi", {"T": 360.0}).id
        alone = single.start(s, "cstr", model.id, "casadi", {"T": 360.0}).id
    samples = [
        {"Ca": 0.5 - 0.01 * k, "T": 350.0 + k, "Caf": 1.0, "Tf": 350.0 + (k == 5)} for k in range(9)
    ]
    for k, sample in enumerate(samples):
        if k == 4:
            sample = {**sample, "Ca": None}  # a missing sample must stay missing
        with factory() as s:
            workers[k % 2].step(s, shared, 6.0 * k, sample)
            single.step(s, alone, 6.0 * k, sample)
    # The context window is the controller's state estimator's.
    served = workers[len(samples) % 2 - 1]._loops[shared].controller.estimator
    reference = single._loops[alone].controller.estimator

    def present(rows) -> list[dict[str, float]]:  # a missing sample: absent or None alike
        return [{t: v for t, v in row.items() if v is not None} for row in rows]

    assert present(served.rows) == present(reference.rows)
    assert "Ca" not in present(served.rows)[-5]  # the missing sample is still missing
    assert served.last_time_s == reference.last_time_s == 6.0 * (len(samples) - 1)
    # Each row's "applied before" is what this loop really applied then, read back.
    with factory() as s:
        stored = services.step_values(s, shared, len(samples) - 2)["actuator"]
    assert served.before[-1] == pytest.approx(stored)
