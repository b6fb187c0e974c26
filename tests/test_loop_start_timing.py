"""A loop's planner is timed on its twin when the loop starts (api.services.loop_timing):
one that cannot keep up with the process is refused with its p99, the sample period and a
planner that does fit; one that keeps up starts, its timing kept in the loop's config; a
test's fake controller is not timed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from twin_fixtures import cold_controller, tiny_twin

from api import services
from api.app import create_app
from api.errors import Invalid
from api.orm import Run
from api.services.loop_timing import check_planner_timing
from api.settings import Settings
from twin.planning import PlannerSettings, PlanningProblem, PlanResult
from twin.twin_model import Twin


@dataclass
class SlowPlanner:
    """Takes `delay_s` per plan and holds the actuators; its deadline is 100 ms."""

    delay_s: float
    name: str = "slow"
    settings: PlannerSettings = field(
        default_factory=lambda: PlannerSettings(horizon=4, deadline_ms=100.0)
    )
    plans: int = 0

    def plan(self, problem: PlanningProblem) -> PlanResult:
        self.plans += 1
        time.sleep(self.delay_s)
        h = self.settings.horizon
        actions = np.tile(problem.u_prev, (h, 1))
        return PlanResult(True, actions, np.zeros((h, len(problem.z0))), self.delay_s * 1e3, 0.0)


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


def _app(db_url: str, twin: Twin, delay_s: float, planners: list[str]):
    built = []

    def factory(checkpoint: bytes, planner: str):
        built.append(cold_controller(twin, SlowPlanner(delay_s)))
        return built[-1]

    settings = Settings(database_url=db_url, loop_planners=planners)
    return create_app(settings, controller_factory=factory), built


def _start(client: TestClient, session: Session, planner: str):
    model = services.register_model(session, "cstr", "tiny", b"weights", {}, {}).id
    body = {"process": "cstr", "model_id": model, "planner": planner, "setpoints": {"T": 360.0}}
    return client.post("/api/loops", json=body)


def test_a_planner_too_slow_for_the_process_is_refused_with_one_that_fits(
    db_url: str, session: Session, twin: Twin
) -> None:
    app, built = _app(db_url, twin, 0.15, ["cem", "mppi"])
    with TestClient(app) as client:
        response = _start(client, session, "cem")
    assert response.status_code == 422, response.text
    message = response.json()["detail"]
    assert "planner cem cannot keep up with process 'cstr'" in message
    p99 = float(message.split("it took ")[1].split(" ms p99")[0])
    assert p99 >= 150.0  # what it measured
    assert "budget of 100 ms (sample period 6 s, planner deadline 100 ms)" in message
    assert "Planner mppi keeps up" in message and '"planner": "mppi"' in message
    assert built[0].planner.plans == 6  # one untimed plan, then five timed: cheap
    session.expire_all()
    assert session.scalars(select(Run)).all() == []  # nothing was started


def test_a_planner_that_keeps_up_starts_with_its_timing_kept(
    db_url: str, session: Session, twin: Twin
) -> None:
    app, built = _app(db_url, twin, 0.0, ["cem"])
    with TestClient(app) as client:
        response = _start(client, session, "cem")
    assert response.status_code == 201, response.text
    run = session.get(Run, response.json()["run_id"])
    timing = run.config["planner_timing"]
    assert timing["plans"] == 5 and timing["budget_ms"] == 100.0
    assert 0.0 <= timing["p99_ms"] < 100.0


def test_no_suggestion_when_no_other_planner_may_be_used(twin: Twin) -> None:
    controller = cold_controller(twin, SlowPlanner(0.12))
    with pytest.raises(Invalid, match="No other planner is enabled for you here to suggest"):
        check_planner_timing(controller, "cem", ["cem"])


def test_a_controller_without_a_twin_is_not_timed(fake_factory) -> None:
    fake = fake_factory(b"", "cem")  # a test's fake: a planner name, no twin
    assert check_planner_timing(fake, "cem", ["cem", "mppi"]) is None
