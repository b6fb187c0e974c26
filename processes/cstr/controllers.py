"""CSTR scenarios, PI baseline, NMPC oracle on the true model, and the logging rig's
training data."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import casadi as ca
import numpy as np
import pandas as pd

from ..base import (
    aprbs_levels,
)
from .model import (
    CAF_NOMINAL,
    RATE_PER_SAMPLE,
    SAMPLE_PERIOD_S,
    T_LIMIT_K,
    TC_HIGH,
    TC_LOW,
    TC_NOMINAL,
    TF_NOMINAL,
    CSTRSimulator,
    Disturbances,
    rk4_step,
)


@dataclass
class Scenario:
    """A setpoint schedule and disturbance steps, indexed by sample."""

    steps: int
    setpoints: list[tuple[int, float]]
    caf_steps: list[tuple[int, float]] = field(default_factory=list)
    tf_steps: list[tuple[int, float]] = field(default_factory=list)

    @staticmethod
    def _at(schedule: list[tuple[int, float]], k: int, default: float) -> float:
        value = default
        for start, v in schedule:
            if k >= start:
                value = v
        return value

    def setpoint(self, k: int) -> float:
        return self._at(self.setpoints, k, self.setpoints[0][1])

    def disturbances(self, k: int) -> Disturbances:
        return Disturbances(
            self._at(self.caf_steps, k, CAF_NOMINAL), self._at(self.tf_steps, k, TF_NOMINAL)
        )


def benchmark_scenario() -> Scenario:
    """The standard episode: setpoint steps towards the limit, then feed disturbances."""
    return Scenario(
        steps=240,
        setpoints=[(0, 350.0), (20, 365.0), (90, 375.0), (160, 355.0)],
        caf_steps=[(120, 1.08)],
        tf_steps=[(200, 354.0)],
    )


class PIController:
    """Velocity-form PI on T through Tc, with bound and rate clamping (no windup)."""

    def __init__(self, kp: float = 0.8, ti_s: float = 30.0, u0: float = TC_NOMINAL) -> None:
        self.kp, self.ti_s, self.u = kp, ti_s, u0
        self.prev_error: float | None = None

    def reset(self, u0: float = TC_NOMINAL) -> None:
        self.u, self.prev_error = u0, None

    def __call__(self, measured_t: float, setpoint: float) -> float:
        error = setpoint - measured_t
        prev = error if self.prev_error is None else self.prev_error
        du = self.kp * (error - prev) + self.kp * SAMPLE_PERIOD_S / self.ti_s * error
        du = float(np.clip(du, -RATE_PER_SAMPLE, RATE_PER_SAMPLE))
        self.u = float(np.clip(self.u + du, TC_LOW, TC_HIGH))
        self.prev_error = error
        return self.u


class OracleNMPC:
    """NMPC on the true equations and the true (noise-free) state: the bar for learned control.

    Multiple shooting with RK4, hard bounds and rate limits on Tc, and the temperature
    limit as a hard state constraint softened by a heavily penalised slack.
    """

    def __init__(
        self, horizon: int = 20, move_weight: float = 0.05, limit_margin_k: float = 1.0
    ) -> None:
        self.horizon = horizon
        dt_min = SAMPLE_PERIOD_S / 60.0
        opti = ca.Opti()
        x = opti.variable(2, horizon + 1)
        u = opti.variable(1, horizon)
        slack = opti.variable(1, horizon)
        self.p_x0 = opti.parameter(2)
        self.p_uprev = opti.parameter()
        self.p_sp = opti.parameter()
        self.p_dist = opti.parameter(2)
        opti.subject_to(x[:, 0] == self.p_x0)
        cost = 0
        for k in range(horizon):
            ca_next, t_next = rk4_step(
                (x[0, k], x[1, k]), u[0, k], self.p_dist[0], self.p_dist[1], dt_min, exp=ca.exp
            )
            opti.subject_to(x[0, k + 1] == ca_next)
            opti.subject_to(x[1, k + 1] == t_next)
            prev = self.p_uprev if k == 0 else u[0, k - 1]
            opti.subject_to(opti.bounded(-RATE_PER_SAMPLE, u[0, k] - prev, RATE_PER_SAMPLE))
            opti.subject_to(x[1, k + 1] <= T_LIMIT_K - limit_margin_k + slack[0, k])
            cost += ((x[1, k + 1] - self.p_sp) / 10.0) ** 2
            cost += move_weight * ((u[0, k] - prev) / RATE_PER_SAMPLE) ** 2
            cost += 1e3 * slack[0, k]
        opti.subject_to(opti.bounded(TC_LOW, u, TC_HIGH))
        opti.subject_to(slack >= 0)
        opti.minimize(cost)
        opti.solver(
            "ipopt",
            {"print_time": False, "ipopt.print_level": 0, "ipopt.sb": "yes", "ipopt.max_iter": 200},
        )
        self.opti, self.x, self.u, self.slack = opti, x, u, slack
        self.last_plan_ms = 0.0

    def __call__(
        self, state: tuple[float, float], u_prev: float, setpoint: float, dist: Disturbances
    ) -> float:
        opti = self.opti
        opti.set_value(self.p_x0, np.array(state))
        opti.set_value(self.p_uprev, u_prev)
        opti.set_value(self.p_sp, setpoint)
        opti.set_value(self.p_dist, np.array([dist.caf, dist.tf]))
        opti.set_initial(self.u, u_prev)
        opti.set_initial(self.x, np.tile(np.array(state)[:, None], (1, self.horizon + 1)))
        start = time.perf_counter()
        try:
            sol = opti.solve()
            u0 = float(sol.value(self.u)[0])
        except RuntimeError:
            u0 = float(opti.debug.value(self.u)[0])
        self.last_plan_ms = (time.perf_counter() - start) * 1e3
        return u0


def _would_run_away(
    sim: CSTRSimulator, u: float, lookahead: int = 5, margin_k: float = 4.0
) -> bool:
    """Supervisory guard of the logging rig: would holding `u` approach the limit soon?

    A cold reactor full of reactant ignites within two samples, faster than any
    measurement-based trip, so the rig looks ahead on the plant model.
    """
    x = sim.state
    dist = sim.disturbances
    for _ in range(lookahead):
        x = rk4_step(x, u, dist.caf, dist.tf, SAMPLE_PERIOD_S / 60.0)
        if x[1] > T_LIMIT_K - margin_k:
            return True
    return False


def generate_training_log(hours: float, seed: int, show_progress: bool = False) -> pd.DataFrame:
    """Excitation data: PI on random setpoints with dither, alternating with open-loop APRBS.

    Every phase keeps actuator bounds and rate limits; a supervisory guard lowers the
    coolant whenever holding it would bring the reactor near its limit within 30 s, so
    the log never shows a runaway the real plant would have tripped on.
    """
    rng = np.random.default_rng(seed)
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    sim = CSTRSimulator(seed=seed + 10_000, ca0=0.5, t0=350.0)
    pi = PIController()
    sp_levels = aprbs_levels(rng, n, 330.0, 380.0, 30, 120)
    open_loop_offset = aprbs_levels(rng, n, -4.0, 4.0, 5, 30)
    mode_closed = aprbs_levels(rng, n, 0.0, 1.0, 60, 240) < 0.6
    caf = aprbs_levels(rng, n, 0.9, 1.1, 100, 400)
    tf = aprbs_levels(rng, n, 345.0, 355.0, 100, 400)
    rows: list[dict[str, float]] = []
    meas = sim.measure()
    u = anchor = TC_NOMINAL
    for k in range(n):
        sim.disturbances = Disturbances(float(caf[k]), float(tf[k]))
        if mode_closed[k]:
            target = pi(meas["T"], float(sp_levels[k])) + rng.normal(0.0, 0.5)
            anchor = u
        else:
            # open-loop steps around where the loop last held the plant: local excitation
            target = anchor + float(open_loop_offset[k])
            pi.reset(u)
        u_next = float(
            np.clip(np.clip(target, u - RATE_PER_SAMPLE, u + RATE_PER_SAMPLE), TC_LOW, TC_HIGH)
        )
        if _would_run_away(sim, u_next):
            u_next = max(TC_LOW, u - RATE_PER_SAMPLE)
            anchor = min(anchor, u_next - 4.0)
            pi.reset(u_next)
        u = u_next
        rows.append({"time_s": sim.time_s, **meas, "Tc": u})
        meas = sim.step(u)
    df = pd.DataFrame(rows, columns=["time_s", "Ca", "T", "Tc", "Caf", "Tf"])
    return df
