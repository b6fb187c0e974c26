"""Five plants from the literature, none of them built into the project, on which the
defaults were set (`held_out.py` holds the plants added afterwards).

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


PLANTS = {
    "wood_berry": wood_berry,
    "van_de_vusse": van_de_vusse,
    "ph_neutraliser": ph_neutraliser,
    "level_tank": level_tank,
    "heat_exchanger": heat_exchanger,
}
