"""The economic objective in closed loop: on two processes, an operator range with an
actuator's economic direction reaches a better steady cost (the linear cost of the pushed
actuator over the run's last part) than setpoint control at the range's midpoint, with
every move inside the actuator's limits and rate limits, the sensors inside their
engineering limits throughout and inside the range once steady.

- CSTR (the tiny twin of the other operator tests): T ranged [340, 365] K, coolant Tc
  pushed down (a cheaper coolant) against T held at 352.5 K.
- Van de Vusse reactor (the plant zoo's, through the files a plant engineer has: its tag
  file and historian log, a tiny twin trained here in seconds): Ca ranged [2.5, 3.5]
  mol/L, the dilution rate D (the throughput) pushed up against Ca held at 3.0 mol/L.

A range bound the push ends at is a target like a setpoint: the measurement sits at it
with noise on either side and a transient may pass it on the way, so the range is checked
on the steady mean (within `STEADY_MISS` of the range's width) and on every sample with
`TRANSIENT_MISS` of the width."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import test_operator_economic as economic
from twin_fixtures import TINY_MODEL, assert_within_bounds_and_rate, cold_controller

from processes import cstr
from twin.logs import read_log
from twin.operator import OperatorSettings
from twin.planning import PlannerSettings, RTIPlanner
from twin.spec import ProcessSpec
from twin.train import TrainConfig, train_twin
from twin.twin_model import Twin

# the zoo lives with the benchmarks, which are run from the repository root, not installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.zoo import PLANTS, Plant  # noqa: E402

twin = economic.twin
STEADY_MISS = 0.05
TRANSIENT_MISS = 0.15


@dataclass
class Run:
    actuator: np.ndarray  # what the controller sent, per sample
    sensor: np.ndarray  # the ranged sensor, per sample
    statuses: set[str]

    def steady_cost(self, sign: float, tail: int) -> float:
        """The economic direction's linear cost: `sign` (+1 minimise, -1 maximise) times
        the actuator's mean over the last `tail` samples."""
        return sign * float(self.actuator[-tail:].mean())


def _assert_in_range(run: Run, low: float, high: float, tail: int) -> None:
    width = high - low
    steady = float(run.sensor[-tail:].mean())
    assert low - STEADY_MISS * width <= steady <= high + STEADY_MISS * width, steady
    assert run.sensor.min() >= low - TRANSIENT_MISS * width, run.sensor.min()
    assert run.sensor.max() <= high + TRANSIENT_MISS * width, run.sensor.max()


def _assert_in_limits(values: np.ndarray, low: float | None, high: float | None) -> None:
    assert low is None or values.min() > low, values.min()
    assert high is None or values.max() < high, values.max()


# ---------------------------------------------------------------- CSTR


def _cstr_run(twin: Twin, settings: OperatorSettings, setpoints, steps: int = 60) -> Run:
    planner = RTIPlanner(twin, PlannerSettings(horizon=10))
    controller = cold_controller(
        twin, planner, disagreement_trip=float("inf"), mismatch_trip=float("inf")
    )
    controller.set_operator(settings)
    sim, records, temperatures = cstr.CSTRSimulator(seed=5), [], []
    for k in range(steps):
        records.append(controller.step(k * cstr.SAMPLE_PERIOD_S, sim.measure(), setpoints))
        sim.step(records[-1].actuators["Tc"])
        temperatures.append(sim.state[1])  # the true temperature, without noise
    tc = np.array([r.actuators["Tc"] for r in records])
    tag = cstr.SPEC.tag("Tc")
    rate = cstr.SPEC.rate_limit_per_sample(tag)
    assert_within_bounds_and_rate(tc, cstr.TC_NOMINAL, tag.low, tag.high, rate)
    t_tag = cstr.SPEC.tag("T")
    _assert_in_limits(np.array(temperatures), t_tag.low, t_tag.high)
    return Run(tc, np.array(temperatures), {r.status.value for r in records})


def test_cstr_coolant_pushed_down_inside_a_range_beats_the_midpoint_setpoint(
    twin: Twin,
) -> None:
    low, high, tail = 340.0, 365.0, 20
    ranged = {"dropped": frozenset({"Ca"}), "ranges": {"T": (low, high)}}
    setpoint = _cstr_run(twin, OperatorSettings(**ranged), {"T": (low + high) / 2, "Ca": 0.5})
    pushed = _cstr_run(twin, OperatorSettings(**ranged, economic={"Tc": "minimise"}), {"Ca": 0.5})
    for run in (setpoint, pushed):
        assert run.statuses == {"ok"}
        _assert_in_range(run, low, high, tail)
    # the push holds T at its low bound, a few kelvin of coolant below the midpoint's
    assert pushed.steady_cost(1.0, tail) < setpoint.steady_cost(1.0, tail) - 3.0
    assert pushed.sensor[-tail:].mean() < setpoint.sensor[-tail:].mean() - 8.0


# ---------------------------------------------------------------- van de Vusse


@pytest.fixture(scope="module")
def reactor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Plant, Twin]:
    plant = PLANTS["van_de_vusse"]()
    tags, log = plant.export(tmp_path_factory.mktemp("van_de_vusse"), seed=7)
    config = TrainConfig(epochs=10, rollout_steps=4, seed=0, model=TINY_MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        twin, _ = train_twin(read_log(log), ProcessSpec.load(tags), config, show_progress=False)
    return plant, twin


def _reactor_run(
    plant: Plant, twin: Twin, settings: OperatorSettings, setpoints, steps: int = 150
) -> Run:
    planner = RTIPlanner(twin, PlannerSettings(horizon=20))
    controller = cold_controller(
        twin, planner, disagreement_trip=float("inf"), mismatch_trip=float("inf")
    )
    controller.set_operator(settings)
    rng, state = np.random.default_rng(1), plant.start()
    records, true = [], []
    for k in range(steps):
        measured = plant.measure(state) + rng.normal(0.0, plant.noise_std())
        measurements = {"Cb": float(measured[0]), "Ca": float(measured[1])}
        measurements["D"] = float(state.history[-1][0])  # the pump reports its rate
        records.append(controller.step(k * plant.sample_period_s, measurements, setpoints))
        state = plant.advance(
            state, plant.clip(np.array([records[-1].actuators["D"]]), state.history[-1])
        )
        true.append(plant.measure(state))
    dilution = np.array([r.actuators["D"] for r in records])
    tag = twin.spec.tag("D")
    rate = twin.spec.rate_limit_per_sample(tag)
    assert_within_bounds_and_rate(dilution, plant.nominal_u[0], tag.low, tag.high, rate)
    outputs = np.array(true)
    for column, sensor in enumerate(plant.sensors):
        _assert_in_limits(outputs[:, column], sensor.low, sensor.high)
    return Run(dilution, outputs[:, 1], {r.status.value for r in records})


def test_reactor_throughput_pushed_up_inside_a_range_beats_the_midpoint_setpoint(
    reactor: tuple[Plant, Twin],
) -> None:
    plant, twin = reactor
    low, high, tail = 2.5, 3.5, 50
    ranged = {"dropped": frozenset({"Cb"}), "ranges": {"Ca": (low, high)}}
    setpoint = _reactor_run(
        plant, twin, OperatorSettings(**ranged), {"Ca": (low + high) / 2, "Cb": 1.1}
    )
    pushed = _reactor_run(
        plant, twin, OperatorSettings(**ranged, economic={"D": "maximise"}), {"Cb": 1.1}
    )
    for run in (setpoint, pushed):
        assert run.statuses == {"ok"}
        _assert_in_range(run, low, high, tail)
    # Ca at its high bound takes about a third more feed through than at the midpoint
    assert pushed.steady_cost(-1.0, tail) < setpoint.steady_cost(-1.0, tail) - 0.1
    assert pushed.sensor[-tail:].mean() > high - 0.1 * (high - low)
