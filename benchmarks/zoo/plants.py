"""Seven plants from the literature, none of them built into the project; the last two
(HELD_OUT) were added after the defaults were set, to measure them untouched.

Each is defined by its true equations (in seconds); `benchmarks.zoo.base.Plant` turns them
into a simulator, an excitation log, a tag file, a scored episode and an oracle.
"""

from __future__ import annotations

import casadi as ca
import numpy as np

from .base import Actuator, Plant, Segment, Sensor

MINUTE = 60.0


def wood_berry() -> Plant:
    """Wood & Berry (1973) methanol-water column: distillate and bottoms compositions from
    reflux R and steam S, four first-order channels with dead times 1, 3, 7 and 3 min.
    The model is linear in deviations; the bottoms composition is taken around 3 mol %
    (the paper's 0.5 mol % would go negative under the log's moves)."""
    # channel: (actuator, dead time in samples); sample period one minute
    gains = np.array([12.8, -18.9, 6.6, -19.4])
    taus = np.array([16.7, 21.0, 10.9, 14.4]) * MINUTE
    channels = ((0, 1), (1, 3), (0, 7), (1, 3))
    u0 = np.array([1.95, 1.71])
    x_d0, x_b0 = 96.25, 3.0

    def rhs(x, v):
        nominal = ca.vertcat(u0[0], u0[1], u0[0], u0[1])
        return (gains * (v - nominal) - x) / taus

    def outputs(x):
        return ca.vertcat(x_d0 + x[0] + x[1], x_b0 + x[2] + x[3])

    return Plant(
        name="wood_berry",
        description="Wood-Berry 2x2 distillation column (zoo)",
        sample_period_s=MINUTE,
        sensors=(
            Sensor("xD", "mol%", (90.0, 100.0), low=92.5, controlled=True),
            Sensor("xB", "mol%", (0.0, 8.0), high=7.0, controlled=True),
        ),
        actuators=(
            Actuator("R", "lb/min", 1.45, 2.45, 0.0005, 1.95),
            Actuator("S", "lb/min", 1.35, 2.05, 0.0005, 1.71),
        ),
        channels=channels,
        rhs=rhs,
        outputs=outputs,
        x0=np.zeros(4),
        pairing=(("xD", "R"), ("xB", "S")),
        episode=(
            Segment(60, {"xD": 96.25, "xB": 3.0}),
            Segment(80, {"xD": 97.0, "xB": 3.0}),
            Segment(80, {"xD": 97.0, "xB": 2.5}),
            Segment(80, {"xD": 95.5, "xB": 3.5}),
        ),
        excitation_hold_s=(10 * MINUTE, 60 * MINUTE),
        excitation_band=(0.2, 0.1),
        oracle_horizon=30,
    )


def van_de_vusse() -> Plant:
    """Isothermal van de Vusse reactor A -> B -> C, 2A -> D (Sistu & Bequette 1995
    parameters): the product B responds to the dilution rate with an inverse response
    at the nominal point D = 4/7 1/min (a right-half-plane zero)."""
    k1, k2, k3, c_af = 5 / 6 / MINUTE, 5 / 3 / MINUTE, 1 / 6 / MINUTE, 10.0

    def rhs(x, v):
        dilution = v[0] / MINUTE
        return ca.vertcat(
            -k1 * x[0] - k3 * x[0] ** 2 + dilution * (c_af - x[0]),
            k1 * x[0] - k2 * x[1] - dilution * x[1],
        )

    return Plant(
        name="van_de_vusse",
        description="van de Vusse reactor, inverse response (zoo)",
        sample_period_s=6.0,
        sensors=(
            Sensor("Cb", "mol/L", (0.0, 1.5), controlled=True),
            Sensor("Ca", "mol/L", (0.0, 6.0), high=4.0),
        ),
        actuators=(Actuator("D", "1/min", 0.2, 1.2, 0.002, 4 / 7),),
        channels=((0, 0),),
        rhs=rhs,
        outputs=lambda x: ca.vertcat(x[1], x[0]),
        x0=np.array([3.0, 1.117]),
        pairing=(("Cb", "D"),),
        episode=(
            Segment(50, {"Cb": 1.117}),
            Segment(80, {"Cb": 1.18}),
            Segment(80, {"Cb": 1.0}),
            Segment(80, {"Cb": 1.15}),
        ),
        excitation_hold_s=(30.0, 240.0),
        excitation_band=(0.35,),
        oracle_horizon=25,
    )


PK1, PK2 = 6.35, 10.33  # carbonate buffer


def _charge_balance(ph, w):
    """Reaction-invariant charge balance of the Hall & Seborg (1989) pH neutraliser."""
    return (
        w[0]
        + 10 ** (ph - 14)
        - 10 ** (-ph)
        + w[1] * (1 + 2 * 10 ** (ph - PK2)) / (1 + 10 ** (PK1 - ph) + 10 ** (ph - PK2))
    )


def _ph_solver() -> ca.Function:
    ph, w = ca.MX.sym("ph"), ca.MX.sym("w", 2)
    residual = ca.asinh(_charge_balance(ph, w) * 1e5)  # asinh: Newton converges from pH 7
    return ca.rootfinder(
        "ph",
        "newton",
        {"x": ph, "p": w, "g": residual},
        {"abstol": 1e-12, "max_iter": 100, "error_on_fail": False},
    )


def ph_neutraliser() -> Plant:
    """Hall & Seborg (1989) pH neutralisation: acid (HNO3) and buffer (NaHCO3) streams
    neutralised by base (NaOH) in a 2.9 L stirred tank; the titration curve is steep near
    pH 7. A 30 s transport delay on the base line."""
    volume = 2900.0  # mL
    q_acid, q_buffer = 16.6, 0.55  # mL/s
    acid, buffer, base = (0.003, 0.0), (-0.03, 0.03), (-0.00305, 0.00005)
    solver = _ph_solver()

    def rhs(x, v):
        q_base = v[0]
        inflow = q_acid * (np.array(acid)) + q_buffer * np.array(buffer)
        total = q_acid + q_buffer + q_base
        return (ca.DM(inflow) + q_base * ca.DM(base) - total * x) / volume

    def outputs(x):
        return solver(7.0, x)

    def steady(q_base: float) -> np.ndarray:
        total = q_acid + q_buffer + q_base
        return (
            q_acid * np.array(acid) + q_buffer * np.array(buffer) + q_base * np.array(base)
        ) / total

    return Plant(
        name="ph_neutraliser",
        description="pH neutralisation, Hall-Seborg (zoo)",
        sample_period_s=10.0,
        sensors=(Sensor("pH", "pH", (2.0, 12.0), low=4.0, high=10.0, controlled=True),),
        actuators=(Actuator("q_base", "mL/s", 8.0, 25.0, 0.05, 15.55),),
        channels=((0, 3),),
        rhs=rhs,
        outputs=outputs,
        x0=steady(15.55),
        pairing=(("pH", "q_base"),),
        episode=(
            Segment(60, {"pH": 7.0}),
            Segment(90, {"pH": 8.0}),
            Segment(90, {"pH": 6.0}),
            Segment(90, {"pH": 7.5}),
        ),
        excitation_hold_s=(60.0, 600.0),
        excitation_band=(4.0,),
        oracle_horizon=25,
        output_residual=lambda y, x: 1e3 * _charge_balance(y[0], x),
    )


def level_tank() -> Plant:
    """A 2 m^2 tank drained by a constant-flow pump: the level integrates the difference
    between the inflow valve's flow (a 15 s lag behind a 10 s dead time) and the pump's.
    Logged under the operators' proportional level loop with random setpoints: an
    integrating process cannot be logged open loop for long."""
    area, height, q_out = 2.0, 2.0, 10.0  # m^2, m, L/s

    def rhs(x, v):
        return ca.vertcat((x[1] - q_out) / 1000.0 / area / height * 100.0, (v[0] - x[1]) / 15.0)

    def operators(
        measured: np.ndarray, targets: np.ndarray, rng: np.random.Generator
    ) -> np.ndarray:
        if rng.random() < 1 / 120:  # a new level target every ten minutes or so
            operators.target = rng.uniform(25.0, 75.0)  # type: ignore[attr-defined]
        wanted = q_out + 0.5 * (operators.target - measured[0])  # type: ignore[attr-defined]
        return np.array([wanted + (targets[0] - q_out)])  # the excitation as dither

    operators.target = 50.0  # type: ignore[attr-defined]
    return Plant(
        name="level_tank",
        description="integrating tank level (zoo)",
        sample_period_s=5.0,
        sensors=(Sensor("level", "%", (0.0, 100.0), low=10.0, high=90.0, controlled=True),),
        actuators=(Actuator("q_in", "L/s", 0.0, 20.0, 0.2, 10.0),),
        channels=((0, 2),),
        rhs=rhs,
        outputs=lambda x: x[0],
        x0=np.array([50.0, q_out]),
        pairing=(("level", "q_in"),),
        episode=(
            Segment(50, {"level": 50.0}),
            Segment(100, {"level": 65.0}),
            Segment(100, {"level": 35.0}),
            Segment(100, {"level": 55.0}),
        ),
        excitation_hold_s=(20.0, 120.0),
        excitation_band=(3.0,),
        oracle_horizon=30,
        logging_loop=operators,
    )


def heat_exchanger() -> Plant:
    """An electric heater feeding a 150 s pipeline to the sensor: the outlet temperature
    follows the heater power through a 40 s heater lag, the transport delay (12.5 % heat
    loss to 20 degC ambient on the way) and a 20 s sensor lag. Delay-dominated: the dead
    time is 2.5 times the lags together."""
    t_in, t_ambient, gain, loss = 20.0, 20.0, 0.5, 0.125

    def rhs(x, v):
        heater = (t_in + gain * v[0] - x[0]) / 40.0
        outlet = t_ambient + (1 - loss) * (x[0] - t_ambient)
        return ca.vertcat(heater, (outlet - x[1]) / 20.0)

    heater0 = t_in + gain * 50.0
    return Plant(
        name="heat_exchanger",
        description="delay-dominated heater and pipeline (zoo)",
        sample_period_s=10.0,
        sensors=(Sensor("T_out", "degC", (20.0, 80.0), high=62.0, controlled=True),),
        actuators=(Actuator("power", "kW", 0.0, 100.0, 0.5, 50.0),),
        channels=((0, 15),),
        rhs=rhs,
        outputs=lambda x: x[1],
        x0=np.array([heater0, t_ambient + (1 - loss) * (heater0 - t_ambient)]),
        pairing=(("T_out", "power"),),
        episode=(
            Segment(50, {"T_out": 41.875}),
            Segment(90, {"T_out": 52.0}),
            Segment(90, {"T_out": 36.0}),
            Segment(90, {"T_out": 58.0}),
        ),
        excitation_hold_s=(60.0, 600.0),
        excitation_band=(40.0,),
        oracle_horizon=40,
    )


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


PLANTS = {
    "wood_berry": wood_berry,
    "van_de_vusse": van_de_vusse,
    "ph_neutraliser": ph_neutraliser,
    "level_tank": level_tank,
    "heat_exchanger": heat_exchanger,
}
# added after the defaults were set and measured without tuning anything on them
HELD_OUT = {
    "quadruple_tank": quadruple_tank,
    "shell_fractionator": shell_fractionator,
}
