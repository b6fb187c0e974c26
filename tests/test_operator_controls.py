"""The operator's controls of a live loop (twin.operator, api.services.loop_operator): the
controller's mode, actuators out of service, dropped sensors; through the controller with
the tiny test twin, and through the API with its audit, validation and persistence."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from twin_fixtures import cold_controller, rate_per_sample, tiny_twin

from api import services
from api.app import create_app
from api.orm import AuditEntry, Role, Run, RunEvent
from api.settings import Settings
from processes import cstr, glucose
from twin.errors import InvalidInput
from twin.operator import Mode, OperatorSettings
from twin.planning import PlannerSettings, PlanningProblem, PlanResult
from twin.twin_model import Twin

GOOD = {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}


@dataclass
class GreedyPlanner:
    """Wants every actuator at its upper bound at once; `obey_pins=False` ignores the
    problem's pinned moves, as a faulty planner would."""

    obey_pins: bool = True
    name: str = "greedy"
    settings: PlannerSettings = field(default_factory=lambda: PlannerSettings(horizon=4))
    problems: list[PlanningProblem] = field(default_factory=list)
    resets: int = 0

    def reset(self) -> None:
        self.resets += 1

    def plan(self, problem: PlanningProblem) -> PlanResult:
        self.problems.append(problem)
        h = self.settings.horizon
        wanted = np.full((h, len(problem.u_prev)), 3.0)  # far above, in training stds
        actions = problem.with_pinned(wanted) if self.obey_pins else wanted
        return PlanResult(True, actions, np.zeros((h, len(problem.z0))), 0.0, 1.0)


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


def _controller(twin: Twin, planner: GreedyPlanner, fallback=None):
    # the guards that would hand a wild plan to the baseline are off: the plan goes out
    return cold_controller(
        twin,
        planner,
        fallback,
        disagreement_trip=float("inf"),
        mismatch_trip=float("inf"),
        envelope_neighbours=0,
    )


def _run(controller, sim: cstr.CSTRSimulator, steps: int, start: int, setpoints):
    records = []
    for k in range(start, start + steps):
        record = controller.step(k * cstr.SAMPLE_PERIOD_S, sim.measure(), setpoints)
        sim.step(record.actuators["Tc"])
        records.append(record)
    return records


@pytest.mark.parametrize("obey_pins", [True, False], ids=["planner-obeys", "planner-ignores"])
def test_out_of_service_actuator_never_moves(twin: Twin, obey_pins: bool) -> None:
    planner = GreedyPlanner(obey_pins=obey_pins)
    controller = _controller(twin, planner)
    sim = cstr.CSTRSimulator(seed=1)
    first = _run(controller, sim, 3, 0, {"T": 360.0})
    assert first[-1].actuators["Tc"] > cstr.TC_NOMINAL  # in service, the greedy plan moves it
    held = first[-1].actuators["Tc"]
    controller.set_operator(OperatorSettings(out_of_service=frozenset({"Tc"})))
    records = _run(controller, sim, 40, 3, {"T": 360.0})
    assert [r.actuators["Tc"] for r in records] == [held] * 40
    # the plan was told: Tc pinned for the whole horizon at its measured value
    pinned = planner.problems[-1].pinned
    assert pinned is not None
    expected = twin.normalise_actions(np.array([held]))[0]
    np.testing.assert_allclose(pinned[:, 0], expected)
    controller.set_operator(OperatorSettings())  # back in service: it moves, rate-limited
    back = _run(controller, sim, 2, 43, {"T": 360.0})
    assert held < back[0].actuators["Tc"] <= held + rate_per_sample() + 1e-9


def test_dropped_sensor_setpoint_is_not_chased(twin: Twin) -> None:
    setpoints = {"T": 360.0, "Ca": 0.3}
    problems = {}
    for label, dropped, given in (
        ("dropped", {"Ca"}, setpoints),
        ("without", set(), {"T": 360.0}),
        ("enabled", set(), setpoints),
    ):
        planner = GreedyPlanner()
        controller = _controller(twin, planner)
        controller.set_operator(OperatorSettings(dropped=frozenset(dropped)))
        _run(controller, cstr.CSTRSimulator(seed=2), 2, 0, given)
        problems[label] = planner.problems[-1]
    # with Ca dropped, the plan's target and tracking metric are those without its setpoint
    np.testing.assert_allclose(problems["dropped"].z_goal, problems["without"].z_goal)
    np.testing.assert_allclose(problems["dropped"].metric, problems["without"].metric)
    assert not np.allclose(problems["dropped"].metric, problems["enabled"].metric)


def test_every_setpoint_dropped_holds_and_says_so(twin: Twin) -> None:
    planner = GreedyPlanner()
    controller = _controller(twin, planner)
    controller.set_operator(OperatorSettings(dropped=frozenset({"T"})))
    records = _run(controller, cstr.CSTRSimulator(seed=3), 5, 0, {"T": 360.0})
    assert not planner.problems
    assert all(r.actuators["Tc"] == cstr.TC_NOMINAL for r in records)
    assert "every setpoint's sensor is dropped" in records[0].events[0].message


def test_standby_to_on_and_back_is_bumpless(twin: Twin) -> None:
    planner = GreedyPlanner()
    controller = _controller(twin, planner, cstr.pi_fallback())
    controller.set_operator(OperatorSettings(mode=Mode.STANDBY))
    sim = cstr.CSTRSimulator(seed=4)
    standby = _run(controller, sim, 12, 0, {"T": 345.0})
    assert not planner.problems  # the twin did not plan, the baseline drove
    assert controller.estimator.history_samples() >= twin.config.window  # it kept estimating
    last_baseline, resets = standby[-1].actuators["Tc"], planner.resets
    controller.set_operator(OperatorSettings(mode=Mode.ON))
    assert planner.resets == resets + 1  # no warm start from a plan before the switch
    on = _run(controller, sim, 3, 12, {"T": 345.0})
    assert planner.problems and on[0].status.value == "ok"
    assert abs(on[0].actuators["Tc"] - last_baseline) <= rate_per_sample() + 1e-9
    assert on[0].actuators["Tc"] != last_baseline  # the twin's own (greedy) move went out
    last_twin = on[-1].actuators["Tc"]
    controller.set_operator(OperatorSettings(mode=Mode.STANDBY))
    back = _run(controller, sim, 1, 15, {"T": 345.0})
    assert abs(back[0].actuators["Tc"] - last_twin) <= rate_per_sample() + 1e-9


def test_off_holds_what_the_plant_reports(twin: Twin) -> None:
    planner = GreedyPlanner()
    controller = _controller(twin, planner, cstr.pi_fallback())
    controller.set_operator(OperatorSettings(mode=Mode.OFF))
    manual = 303.0  # the operator's own value, read back from the plant
    for k in range(5):
        record = controller.step(k * cstr.SAMPLE_PERIOD_S, {**GOOD, "Tc": manual}, {"T": 360.0})
        assert record.actuators["Tc"] == manual
    assert not planner.problems


def test_a_dose_out_of_service_is_held_at_zero_and_names_are_checked() -> None:
    spec = glucose.SPEC
    settings = OperatorSettings().changed(spec, out_of_service={"bolus": True, "basal": True})
    held = settings.fixed({"basal": 2.0, "bolus": 3.0}, {"basal": 0.8, "bolus": 1.5}, spec)
    assert held == {"basal": 0.8, "bolus": 0.0}  # a dose held would repeat every sample
    for change in (
        {"mode": "manual"},
        {"out_of_service": {"CGM": True}},
        {"dropped": {"bolus": True}},
        {"dropped": {"CGM": 1}},
    ):
        with pytest.raises(InvalidInput):
            settings.changed(spec, **change)
    back = settings.changed(spec, mode="standby", out_of_service={"bolus": False})
    assert back.describe_change(settings) == [
        "controller mode on -> standby",
        "actuator bolus back in service",
    ]
    assert OperatorSettings.from_dict(back.to_dict()) == back


# ---------------------------------------------------------------- through the API


@dataclass
class OperatedFake:
    """A fake controller that takes operator settings, recording what it was given."""

    spec: object
    given: list[OperatorSettings] = field(default_factory=list)

    def set_operator(self, settings: OperatorSettings) -> None:
        self.given.append(settings)

    def step(self, time_s, measurements, setpoints):
        from twin.records import StepRecord

        return StepRecord(
            step=0,
            time_s=time_s,
            measurements=dict(measurements),
            setpoints=dict(setpoints),
            actuators={"Tc": 300.0},
        )


@pytest.fixture
def built() -> list[OperatedFake]:
    return []


@pytest.fixture
def operated_app(db_url: str, built: list[OperatedFake]):
    def factory(checkpoint: bytes, planner: str) -> OperatedFake:
        built.append(OperatedFake(cstr.SPEC))
        return built[-1]

    return create_app(Settings(database_url=db_url, auth_required=True), controller_factory=factory)


@pytest.fixture
def api(operated_app) -> TestClient:
    with TestClient(operated_app) as client:
        yield client


@pytest.fixture
def loop_id(api: TestClient, tokens: dict[Role, str], session: Session) -> int:
    model = services.register_model(session, "cstr", "jepa", b"weights", {}, {}).id
    response = api.post(
        "/api/loops",
        json={"process": "cstr", "model_id": model, "planner": "cem", "setpoints": {"T": 360.0}},
        headers=_auth(tokens, Role.OPERATOR),
    )
    assert response.status_code == 201, response.text
    return response.json()["run_id"]


def _auth(tokens: dict[Role, str], role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[role]}"}


def _put(api: TestClient, run_id: int, tokens, body, role: Role = Role.OPERATOR):
    return api.put(f"/api/loops/{run_id}/operator", json=body, headers=_auth(tokens, role))


def test_operator_change_is_audited_stored_and_applied(
    api: TestClient, loop_id: int, tokens, session: Session, built, db_url: str, built_again=None
) -> None:
    body = {"mode": "standby", "out_of_service": {"Tc": True}, "reason": "valve stroke test"}
    response = _put(api, loop_id, tokens, body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "run_id": loop_id,
        "mode": "standby",
        "out_of_service": ["Tc"],
        "dropped": [],
    }
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "loop.operator")).one()
    assert entry.actor == "operator-key" and entry.target == f"run:{loop_id}"
    assert entry.detail["reason"] == "valve stroke test"
    event = session.scalars(select(RunEvent).where(RunEvent.kind == "operator")).one()
    assert (event.run_id, event.step) == (loop_id, 0)
    assert "actuator Tc out of service" in event.message and "operator-key" in event.message
    # taken at the next step
    step = api.post(
        f"/api/loops/{loop_id}/step",
        json={"time_s": 0.0, "measurements": GOOD},
        headers=_auth(tokens, Role.OPERATOR),
    )
    assert step.status_code == 200, step.text
    assert built[-1].given[-1] == OperatorSettings(Mode.STANDBY, frozenset({"Tc"}))
    # seen by another worker (or after a restart): a fresh app restores it from the database
    other: list[OperatedFake] = []

    def factory(checkpoint: bytes, planner: str) -> OperatedFake:
        other.append(OperatedFake(cstr.SPEC))
        return other[-1]

    with TestClient(
        create_app(Settings(database_url=db_url, auth_required=True), controller_factory=factory)
    ) as second:
        got = second.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER))
        assert got.json()["mode"] == "standby"
        view = second.get(f"/api/loops/{loop_id}", headers=_auth(tokens, Role.VIEWER)).json()
        assert view["operator"]["out_of_service"] == ["Tc"]
        step = second.post(
            f"/api/loops/{loop_id}/step",
            json={"time_s": 6.0, "measurements": GOOD},
            headers=_auth(tokens, Role.OPERATOR),
        )
        assert step.status_code == 200, step.text
    assert other[-1].given == [OperatorSettings(Mode.STANDBY, frozenset({"Tc"}))]


@pytest.mark.parametrize(
    "body, named",
    [
        ({"mode": "auto", "reason": "r"}, "auto"),
        ({"out_of_service": {"Tx": True}, "reason": "r"}, "Tx"),
        ({"dropped": {"Tc": True}, "reason": "r"}, "Tc"),  # an actuator is no sensor
        (
            {"mode": "off", "out_of_service": {"Tc": True}, "dropped": {"Q": True}, "reason": "r"},
            "Q",
        ),
        ({"mode": "off"}, "reason"),
        ({"mode": "off", "reason": " "}, "reason"),
        ({"reason": "nothing named"}, "name a change"),
    ],
)
def test_bad_request_changes_nothing(
    api: TestClient, loop_id: int, tokens, session: Session, body, named: str
) -> None:
    response = _put(api, loop_id, tokens, body)
    assert response.status_code == 422, response.text
    assert named in response.text
    session.expire_all()
    assert "operator" not in session.get(Run, loop_id).config
    assert not session.scalars(select(AuditEntry).where(AuditEntry.action == "loop.operator")).all()
    assert not session.scalars(select(RunEvent).where(RunEvent.kind == "operator")).all()


def test_viewer_cannot_change_the_operator_settings(api: TestClient, loop_id: int, tokens) -> None:
    response = _put(api, loop_id, tokens, {"mode": "off", "reason": "r"}, Role.VIEWER)
    assert response.status_code == 403
    got = api.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER))
    assert got.json()["mode"] == "on"
    view = api.get(f"/api/loops/{loop_id}", headers=_auth(tokens, Role.VIEWER)).json()
    assert view["operator"] == {"mode": "on", "out_of_service": [], "dropped": []}
