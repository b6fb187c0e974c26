"""An actuator's economic push while the ranged sensors are free (twin.economic_push): the
free ranged sensor whose bound the push reaches first, by the twin's gains, is chased to
that bound; nothing is chased without a planned actuator to spare, so setpoints and range
chases win. Through the controller on the tiny CSTR twin of the other operator tests."""

from __future__ import annotations

import numpy as np
import pytest
import test_operator_economic as economic
from test_operator_controls import GreedyPlanner, _controller

from processes import cstr
from twin import economic_push
from twin.economic_push import ActuatorPush
from twin.gains import TwinGain
from twin.operator import OperatorSettings
from twin.twin_model import Twin

twin = economic.twin
FREE = {"dropped": frozenset({"Ca"}), "ranges": {"T": (340.0, 365.0)}}


def _push(gains: dict[tuple[str, str], float], pushable=("u1", "u2")) -> ActuatorPush:
    push = ActuatorPush()
    push.gains, push.pushable = gains, frozenset(pushable)
    return push


def test_the_sensor_the_push_reaches_first_is_chased_to_the_bound_it_moves_to() -> None:
    push = _push({("u1", "a"): 2.0, ("u1", "b"): -1.0, ("u2", "a"): -0.5})
    free = {"a": ((0.0, 10.0), 6.0), "b": ((0.0, 10.0), 3.0)}
    # u1 up: a rises 4 to its high (2 stds of u1), b falls 3 to its low (3 stds)
    assert push.target({"u1": "maximise"}, free, 0) == ("a", 10.0)
    # u1 down: a falls 6 to its low (3 stds), b rises 7 to its high (7 stds)
    assert push.target({"u1": "minimise"}, free, 0) == ("a", 0.0)
    assert push.target({"u1": "minimise"}, {"b": free["b"]}, 0) == ("b", 10.0)
    # both pushed: a moves 2 + 0.5 per std up, b 1 down
    assert push.target({"u1": "maximise", "u2": "minimise"}, free, 0) == ("a", 10.0)
    # a sensor the pushes do not move is not chased
    assert push.target({"u2": "maximise"}, {"b": free["b"]}, 0) is None


def test_nothing_is_chased_without_a_push_or_an_actuator_to_spare() -> None:
    push = _push({("u1", "a"): 2.0, ("u2", "a"): 1.0})
    free = {"a": ((0.0, 10.0), 6.0)}
    assert push.target({}, free, 0) is None
    assert push.target({"a": "maximise"}, free, 0) is None  # a sensor's own is elsewhere
    assert push.target({"u1": "maximise"}, free, 1) == ("a", 10.0)  # one goal, two actuators
    assert push.target({"u1": "maximise"}, free, 2) is None  # both taken: the goals win
    assert _push(push.gains, ["u2"]).target({"u1": "maximise"}, free, 0) is None  # u1 held
    assert ActuatorPush().target({"u1": "maximise"}, free, 0) is None  # no twin met yet


def test_the_twins_own_gains_are_learnt_once_and_only_for_a_push(twin: Twin) -> None:
    push = ActuatorPush()
    push.learn(twin, {}, ())
    assert push.gains is None and push.pushable == {"Tc"}
    push.learn(twin, {"Tc": "minimise"}, ())
    assert push.gains is not None and push.gains[("Tc", "T")] > 0.0  # cooler feed, cooler T
    push.learn(twin, {"Tc": "minimise"}, ("Tc",))  # out of service: nothing to push
    assert push.pushable == frozenset()
    settings = OperatorSettings(**FREE, economic={"Tc": "minimise"})
    assert settings.tracked({}, {"T": 350.0}) == {}  # before the loop met its twin
    settings.push.learn(twin, settings.economic, ())
    assert settings.tracked({}, {"T": 350.0}) == {"T": 340.0}
    assert settings.tracked({"T": 355.0}, {"T": 350.0}) == {"T": 355.0}  # a setpoint wins
    assert settings.tracked({}, {"T": 366.0}) == {"T": 365.0}  # and so does a range chase


def test_a_sign_the_twin_is_not_sure_of_is_not_pushed_to(twin: Twin, monkeypatch) -> None:
    """A gain whose sign differs between the gain check's horizon and the horizon the twin
    was trained over, or too small to be clear, leaves its sensor out of the push."""
    ca_gain = {"early": -1e-3, "late": -0.02}

    def gains(twin: Twin, horizon_steps: int | None = None, sensors=None) -> list[TwinGain]:
        early = horizon_steps == twin.train_config["rollout_steps"]
        return [
            TwinGain("Tc", "T", 2.0 if early else -1.5, 1.0, 6.0, 16),
            TwinGain("Tc", "Ca", ca_gain["early" if early else "late"], 1.0, 6.0, 16),
        ]

    monkeypatch.setattr(economic_push, "twin_gains", gains)
    push = ActuatorPush()
    push.learn(twin, {"Tc": "minimise"}, ())
    std = float(twin.norm.std[twin.norm.index("Tc")])
    assert push.gains == {("Tc", "Ca"): pytest.approx(-0.02 * std)}
    ca_gain.update(early=-1e-9, late=-1e-9)
    push = ActuatorPush()
    push.learn(twin, {"Tc": "minimise"}, ())
    assert push.gains == {}


def test_a_pushed_actuator_moves_until_the_free_sensor_reaches_its_bound(twin: Twin) -> None:
    """T ranged [340, 365] K, inside it and free (Ca dropped): without a push Tc holds;
    Tc pushed down drives T down to 340 K, within Tc's bounds and rates (`_run`)."""
    held, held_t = economic._run(twin, OperatorSettings(**FREE), {"Ca": 0.5}, steps=40)
    down, down_t = economic._run(
        twin, OperatorSettings(**FREE, economic={"Tc": "minimise"}), {"Ca": 0.5}, steps=40
    )
    assert np.all(held == cstr.TC_NOMINAL)
    assert down[20:].mean() < held[20:].mean() - 3.0
    assert abs(down_t[20:].mean() - 340.0) < 1.5
    assert down_t.min() > 340.0 - 0.1 * 25.0  # a transient past the bound, a small one


def test_an_out_of_service_actuator_is_not_pushed(twin: Twin) -> None:
    planner = GreedyPlanner()
    controller = _controller(twin, planner)
    controller.set_operator(
        OperatorSettings(**FREE, out_of_service=frozenset({"Tc"}), economic={"Tc": "minimise"})
    )
    sim = cstr.CSTRSimulator(seed=2)
    record = controller.step(0.0, sim.measure(), {"Ca": 0.5})
    assert not planner.problems  # nothing to chase: the loop holds, Tc where it was
    assert record.actuators["Tc"] == cstr.TC_NOMINAL
