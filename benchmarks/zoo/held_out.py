"""Plants added to the zoo after the controller's defaults were set, each measured first
with the code as it stood (docs/benchmarks.md says what each one changed, if anything).
Defined like `plants.py`: true equations in seconds, turned into a simulator, a log, a tag
file, a scored episode and an oracle by `benchmarks.zoo.base.Plant`.
"""

from __future__ import annotations

import casadi as ca
import numpy as np

from .base import Actuator, Disturbance, Plant, Segment, Sensor

MINUTE = 60.0


def quadruple_tank() -> Plant:
    """Johansson (2000) quadruple tank, minimum-phase setting: two pumps each feed a lower
    tank and, crossed, the upper tank above the other; the lower levels h1 and h2 are
    controlled, the upper ones must not overflow. Torricelli outflows make it nonlinear
    and the cross flows make every input move both controlled levels."""
    area = np.array([28.0, 32.0, 28.0, 32.0])  # cm^2
    outlet = np.array([0.071, 0.057, 0.071, 0.057])  # cm^2
    pump, split, g = (3.33, 3.35), (0.70, 0.60), 981.0  # cm^3/(V s), -, cm/s^2

    def rhs(x, v):
        out = [outlet[i] * ca.sqrt(2 * g * ca.fmax(x[i], 0.0)) for i in range(4)]
        return ca.vertcat(
            (-out[0] + out[2] + split[0] * pump[0] * v[0]) / area[0],
            (-out[1] + out[3] + split[1] * pump[1] * v[1]) / area[1],
            (-out[2] + (1 - split[1]) * pump[1] * v[1]) / area[2],
            (-out[3] + (1 - split[0]) * pump[0] * v[0]) / area[3],
        )

    def steady(v: np.ndarray) -> np.ndarray:
        inflow = np.array(
            [
                split[0] * pump[0] * v[0] + (1 - split[1]) * pump[1] * v[1],
                split[1] * pump[1] * v[1] + (1 - split[0]) * pump[0] * v[0],
                (1 - split[1]) * pump[1] * v[1],
                (1 - split[0]) * pump[0] * v[0],
            ]
        )
        return (inflow / outlet) ** 2 / (2 * g)

    return Plant(
        name="quadruple_tank",
        description="quadruple tank, Johansson (held-out zoo)",
        sample_period_s=5.0,
        sensors=(
            Sensor("h1", "cm", (0.0, 20.0), low=3.0, high=19.0, controlled=True),
            Sensor("h2", "cm", (0.0, 20.0), low=3.0, high=19.0, controlled=True),
            Sensor("h3", "cm", (0.0, 20.0), high=19.0),
            Sensor("h4", "cm", (0.0, 20.0), high=19.0),
        ),
        actuators=(
            Actuator("v1", "V", 0.0, 6.0, 0.05, 3.0),
            Actuator("v2", "V", 0.0, 6.0, 0.05, 3.0),
        ),
        channels=((0, 0), (1, 0)),
        rhs=rhs,
        outputs=lambda x: x,
        x0=steady(np.array([3.0, 3.0])),
        pairing=(("h1", "v1"), ("h2", "v2")),
        episode=(
            Segment(60, {"h1": 12.3, "h2": 12.8}),
            Segment(100, {"h1": 14.0, "h2": 12.8}),
            Segment(100, {"h1": 14.0, "h2": 11.5}),
            Segment(100, {"h1": 11.5, "h2": 13.5}),
        ),
        excitation_hold_s=(30.0, 300.0),
        excitation_band=(0.7, 0.7),
        oracle_horizon=40,
    )


def shell_fractionator() -> Plant:
    """Shell heavy-oil fractionator (Prett & Garcia 1988), the three outputs of the Shell
    control problem: top and side end points (controlled) and the bottom reflux
    temperature (kept above -0.5) from top draw, side draw and bottom reflux duty, nine
    first-order channels with dead times of 0-28 min (rounded to 4 min samples).
    Normalised units, as in the problem statement. Logged under the operators' slow
    integral loops (top draw on the top end point, side draw on the side end point) with
    random targets: open-loop steps would drive the end points far outside their range."""
    gains = np.array([4.05, 1.77, 5.88, 5.39, 5.72, 6.90, 4.38, 4.42, 7.20])
    taus = np.array([50, 60, 50, 50, 60, 40, 33, 44, 19]) * MINUTE
    delays = (7, 7, 7, 5, 4, 4, 5, 6, 0)  # 27, 28, 27, 18, 14, 15, 20, 22, 0 min
    channels = tuple((i % 3, d) for i, d in enumerate(delays))

    def rhs(x, v):
        return (gains * v - x) / taus

    def outputs(x):
        return ca.vertcat(x[0] + x[1] + x[2], x[3] + x[4] + x[5], x[6] + x[7] + x[8])

    def operators(
        measured: np.ndarray, targets: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        if rng.random() < 1 / 60:  # new end-point targets every four hours or so
            operators.target = rng.uniform(-0.4, 0.4, size=2)  # type: ignore[attr-defined]
        miss = operators.target - measured[:2]  # type: ignore[attr-defined]
        operators.draws = np.clip(operators.draws + 0.01 * miss, -0.4, 0.4)  # type: ignore[attr-defined]
        return targets + np.append(operators.draws, 0.0)  # type: ignore[attr-defined]

    operators.target = np.zeros(2)  # type: ignore[attr-defined]
    operators.draws = np.zeros(2)  # type: ignore[attr-defined]
    return Plant(
        name="shell_fractionator",
        description="Shell heavy-oil fractionator 3x3 (held-out zoo)",
        sample_period_s=4 * MINUTE,
        sensors=(
            Sensor("top_end_point", "-", (-1.0, 1.0), controlled=True),
            Sensor("side_end_point", "-", (-1.0, 1.0), controlled=True),
            Sensor("bottom_reflux_T", "-", (-1.0, 1.0), low=-0.5),
        ),
        actuators=(
            Actuator("top_draw", "-", -0.5, 0.5, 0.05 / MINUTE, 0.0),
            Actuator("side_draw", "-", -0.5, 0.5, 0.05 / MINUTE, 0.0),
            Actuator("bottom_duty", "-", -0.5, 0.5, 0.05 / MINUTE, 0.0),
        ),
        channels=channels,
        rhs=rhs,
        outputs=outputs,
        x0=np.zeros(9),
        pairing=(("top_end_point", "top_draw"), ("side_end_point", "side_draw")),
        episode=(
            Segment(40, {"top_end_point": 0.0, "side_end_point": 0.0}),
            Segment(70, {"top_end_point": 0.3, "side_end_point": 0.0}),
            Segment(70, {"top_end_point": 0.3, "side_end_point": -0.3}),
            Segment(70, {"top_end_point": -0.2, "side_end_point": 0.2}),
        ),
        excitation_hold_s=(40 * MINUTE, 300 * MINUTE),
        excitation_band=(0.05, 0.05, 0.1),
        oracle_horizon=40,
        logging_loop=operators,
    )


def _drum_level(x, u):
    """Bell & Astrom's drum level deviation (m): the water volume from the fluid density
    and the steam quality, plus the evaporation rate, which swells the level at once when
    the steam valve opens."""
    quality = (1 - 0.001538 * x[2]) * (0.8 * x[0] - 25.6) / (x[2] * (1.0394 - 0.0012304 * x[0]))
    evaporation = (0.854 * u[1] - 0.147) * x[0] + 45.59 * u[0] - 2.514 * u[2] - 2.096
    return 0.05 * (0.13073 * x[2] + 100 * quality + evaporation / 9 - 67.975)


def boiler_turbine() -> Plant:
    """Bell & Astrom (1987) 160 MW oil-fired boiler-turbine unit, third-order nonlinear:
    drum pressure, electric output and drum level from the fuel, steam and feedwater
    valves. The level integrates the feedwater-steam imbalance and swells the wrong way
    when the steam valve opens; fuel moves at most 0.007 of its range per second.
    Logged under the operators' feedwater loop on the level (it would drain open loop)."""

    def rhs(x, v):
        pressure_term = x[0] ** (9 / 8)
        return ca.vertcat(
            -0.0018 * v[1] * pressure_term + 0.9 * v[0] - 0.15 * v[2],
            ((0.73 * v[1] - 0.16) * pressure_term - x[1]) / 10,
            (141 * v[2] - (1.1 * v[1] - 0.19) * x[0]) / 85,
        )

    def with_transmitter(x, v):
        # the level depends on the valves directly (swell); the level transmitter's 2 s
        # lag, a fourth state, makes the sensors a function of the state alone
        return ca.vertcat(rhs(x, v), (_drum_level(x, v) - x[3]) / 2.0)

    pressure, steam = 108.0, 0.69  # operating point 4 of the paper
    feed = (1.1 * steam - 0.19) * pressure / 141
    u0 = np.array([(0.0018 * steam * pressure ** (9 / 8) + 0.15 * feed) / 0.9, steam, feed])
    density = _level_zero_density(pressure, u0)
    x0 = np.array([pressure, (0.73 * steam - 0.16) * pressure ** (9 / 8), density, 0.0])

    def operators(
        measured: np.ndarray, targets: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        miss = -measured[2]  # the level kept at zero
        operators.feed = np.clip(operators.feed + 0.02 * miss, -0.3, 0.3)  # type: ignore[attr-defined]
        # the feedwater follows the steam valve (the operators' feedforward) and the loop
        feed = targets[2] + 0.84 * (targets[1] - steam) + 0.5 * miss + operators.feed  # type: ignore[attr-defined]
        return np.array([targets[0], targets[1], feed])

    operators.feed = 0.0  # type: ignore[attr-defined]
    return Plant(
        name="boiler_turbine",
        description="Bell-Astrom boiler-turbine unit 3x3 (held-out zoo)",
        sample_period_s=10.0,
        sensors=(
            Sensor("drum_pressure", "kg/cm2", (60.0, 160.0), low=70.0, high=150.0, controlled=True),
            Sensor("power", "MW", (0.0, 160.0), controlled=True),
            Sensor("drum_level", "m", (-0.5, 0.5), low=-0.3, high=0.3, controlled=True),
        ),
        actuators=(
            Actuator("fuel_valve", "-", 0.0, 1.0, 0.007, float(u0[0])),
            Actuator("steam_valve", "-", 0.0, 1.0, 2.0, float(u0[1])),
            Actuator("feedwater_valve", "-", 0.0, 1.0, 0.05, float(u0[2])),
        ),
        channels=((0, 0), (1, 0), (2, 0)),
        rhs=with_transmitter,
        outputs=lambda x: ca.vertcat(x[0], x[1], x[3]),
        x0=x0,
        pairing=(
            ("drum_pressure", "fuel_valve"),
            ("power", "steam_valve"),
            ("drum_level", "feedwater_valve"),
        ),
        episode=(
            Segment(40, {"drum_pressure": 108.0, "power": 66.65, "drum_level": 0.0}),
            Segment(90, {"drum_pressure": 108.0, "power": 80.0, "drum_level": 0.0}),
            Segment(90, {"drum_pressure": 116.0, "power": 80.0, "drum_level": 0.0}),
            Segment(90, {"drum_pressure": 100.0, "power": 55.0, "drum_level": 0.0}),
        ),
        excitation_hold_s=(60.0, 900.0),
        excitation_band=(0.06, 0.08, 0.02),
        oracle_horizon=40,
        logging_loop=operators,
    )


def _level_zero_density(pressure: float, u: np.ndarray) -> float:
    """The fluid density (kg/m^3) at which the drum level is zero, by bisection."""
    low, high = 200.0, 650.0
    for _ in range(80):
        middle = (low + high) / 2
        level = float(_drum_level(np.array([pressure, 0.0, middle]), u))
        low, high = (middle, high) if level < 0 else (low, middle)
    return (low + high) / 2


def mixing_tank() -> Plant:
    """A 1 m^2 tank blending hot (70 degC) and cold water, drained by a downstream demand
    valve through a square-root outflow: the level and the outlet temperature are
    controlled, and both valves move both. The demand valve's opening and the cold water's
    temperature are measured disturbances the PI does not use. The hot line has a 15 s
    transport delay and the thermocouple a 10 s lag. Logged under the operators'
    proportional level loop on the cold valve (the level drifts far on open-loop steps)."""
    area, hot_t, valve_flow = 1.0, 70.0, 0.03  # m^2, degC, L/s per % opening
    outflow_coefficient = 2.0 / (0.5 * np.sqrt(0.5))  # 2 L/s at 0.5 m, 50 % open

    def rhs(x, v):
        cold, hot, demand, cold_t = v[0] * valve_flow, v[1] * valve_flow, v[2] / 100, v[3]
        level = ca.fmax(x[0], 0.01)
        outflow = outflow_coefficient * demand * ca.sqrt(level)
        volume = 1000 * area * level  # L
        return ca.vertcat(
            (cold + hot - outflow) / (1000 * area),
            (cold * (cold_t - x[1]) + hot * (hot_t - x[1])) / volume,
            (x[1] - x[2]) / 10.0,
        )

    cold0, hot0 = 2.0 * 30 / 55 / valve_flow, 2.0 * 25 / 55 / valve_flow  # 40 degC at 2 L/s

    def operators(
        measured: np.ndarray, targets: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        if rng.random() < 1 / 240:  # a new level target every twenty minutes or so
            operators.target = rng.uniform(0.35, 0.75)  # type: ignore[attr-defined]
        wanted = targets[0] + 60.0 * (operators.target - measured[0])  # type: ignore[attr-defined]
        return np.array([wanted, targets[1]])

    operators.target = 0.5  # type: ignore[attr-defined]
    return Plant(
        name="mixing_tank",
        description="hot and cold water mixing tank, measured disturbances (held-out zoo)",
        sample_period_s=5.0,
        sensors=(
            Sensor("level", "m", (0.0, 1.0), low=0.15, high=0.9, controlled=True),
            Sensor("T_out", "degC", (10.0, 80.0), high=55.0, controlled=True),
        ),
        actuators=(
            Actuator("cold_valve", "%", 0.0, 100.0, 1.0, float(cold0)),
            Actuator("hot_valve", "%", 0.0, 100.0, 1.0, float(hot0)),
        ),
        channels=((0, 0), (1, 3)),
        rhs=rhs,
        outputs=lambda x: ca.vertcat(x[0], x[2]),
        x0=np.array([0.5, 40.0, 40.0]),
        pairing=(("level", "cold_valve"), ("T_out", "hot_valve")),
        episode=(
            Segment(40, {"level": 0.5, "T_out": 40.0}),
            Segment(80, {"level": 0.5, "T_out": 43.0}),
            Segment(80, {"level": 0.5, "T_out": 43.0}, {"demand_valve": 60.0}),
            Segment(80, {"level": 0.55, "T_out": 43.0}, {"demand_valve": 60.0, "T_cold": 12.0}),
        ),
        excitation_hold_s=(30.0, 400.0),
        # wide enough that every operating point of the episode needs valve openings the
        # log has applied (its first version asked for the hot valve at 47-55 % where the
        # log reached 40 %; docs/benchmarks.md)
        excitation_band=(16.0, 16.0),
        oracle_horizon=40,
        logging_loop=operators,
        disturbances=(
            Disturbance("demand_valve", "%", 50.0, 15.0),
            Disturbance("T_cold", "degC", 15.0, 6.0),
        ),
    )


HELD_OUT = {
    "quadruple_tank": quadruple_tank,
    "shell_fractionator": shell_fractionator,
    "boiler_turbine": boiler_turbine,
    "mixing_tank": mixing_tank,
}
