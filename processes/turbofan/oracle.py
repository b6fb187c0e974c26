"""Turbofan oracle: NMPC on the true model."""

from __future__ import annotations

import time
from collections.abc import Mapping

import casadi as ca
import numpy as np

from .gas_path import (
    N1_DESIGN_RPM,
    N2_DESIGN_RPM,
    NC_MAX_RPM,
    NF_MAX_RPM,
    PHI_MIN,
    RATE_PER_SAMPLE,
    SM_MIN_PCT,
    T50_MAX_K,
    WF_HIGH,
    WF_LOW,
    Flight,
    Health,
    Scalar,
    rk4_step,
    sensors,
)

# -- oracle: NMPC on the true model -------------------------------------------------------------

FN_SCALE_KN = 10.0
MOVE_WEIGHT = 0.05
N_SCALE = np.array([N1_DESIGN_RPM, N2_DESIGN_RPM])


def _step_function() -> ca.Function:
    """(relative speeds, fuel, flight, health) -> next relative speeds and the sensors at the
    interval's start and end, as one SX function the NLP calls at every stage."""
    x = ca.SX.sym("x", 2)
    u = ca.SX.sym("u")
    p = ca.SX.sym("p", 9)
    flight, health = Flight(*[p[i] for i in range(3)]), Health(*[p[i] for i in range(3, 9)])
    n1, n2 = x[0] * N1_DESIGN_RPM, x[1] * N2_DESIGN_RPM
    nxt = rk4_step((n1, n2), u, flight, health)
    names = ("T50", "SM_hpc", "phi", "Fn")

    def picked(a: Scalar, b: Scalar) -> ca.SX:
        values = sensors(a, b, u, flight, health)
        return ca.vertcat(*[values[k] for k in names])

    return ca.Function(
        "turbofan_step",
        [x, u, p],
        [ca.vertcat(nxt[0] / N1_DESIGN_RPM, nxt[1] / N2_DESIGN_RPM), picked(n1, n2), picked(*nxt)],
    )


class OracleNMPC:
    """NMPC on the true equations, the true state and the true health: the bar for learned
    control. Multiple shooting (RK4 per stage), hard bounds and rate limits on Wf, and every
    hard sensor limit as a constraint at both ends of each interval, softened by a heavily
    penalised slack. Cost: ((Fn - demand) / 10 kN)^2 + 0.05 (dWf / max step)^2, as scored.
    """

    def __init__(self, horizon: int = 20, margins: Mapping[str, float] | None = None) -> None:
        self.horizon = horizon
        margins = {
            "T50": 3.0,
            "SM_hpc": 0.5,
            "phi": 0.005,
            "Nf": 10.0,
            "Nc": 15.0,
            **(margins or {}),
        }
        step = _step_function()
        opti = ca.Opti()
        x = opti.variable(2, horizon + 1)
        u = opti.variable(1, horizon)
        slack = opti.variable(5, horizon)
        self.p_x0, self.p_uprev = opti.parameter(2), opti.parameter()
        self.p_sp, self.p_plant = opti.parameter(), opti.parameter(9)
        opti.subject_to(x[:, 0] == self.p_x0)
        cost = 0
        for k in range(horizon):
            x_next, y_start, y_end = step(x[:, k], u[0, k], self.p_plant)
            opti.subject_to(x[:, k + 1] == x_next)
            prev = self.p_uprev if k == 0 else u[0, k - 1]
            opti.subject_to(opti.bounded(-RATE_PER_SAMPLE, u[0, k] - prev, RATE_PER_SAMPLE))
            for y in (y_start, y_end):
                opti.subject_to(y[0] <= T50_MAX_K - margins["T50"] + 10.0 * slack[0, k])
                opti.subject_to(y[1] >= SM_MIN_PCT + margins["SM_hpc"] - slack[1, k])
                opti.subject_to(y[2] >= PHI_MIN + margins["phi"] - 0.01 * slack[2, k])
            opti.subject_to(
                x[0, k + 1] * N1_DESIGN_RPM <= NF_MAX_RPM - margins["Nf"] + 10.0 * slack[3, k]
            )
            opti.subject_to(
                x[1, k + 1] * N2_DESIGN_RPM <= NC_MAX_RPM - margins["Nc"] + 10.0 * slack[4, k]
            )
            cost += ((y_end[3] - self.p_sp) / FN_SCALE_KN) ** 2
            cost += MOVE_WEIGHT * ((u[0, k] - prev) / RATE_PER_SAMPLE) ** 2
            cost += 1e3 * ca.sum1(slack[:, k])
        opti.subject_to(opti.bounded(WF_LOW, u, WF_HIGH))
        opti.subject_to(opti.bounded(0.2, x, 1.3))
        opti.subject_to(ca.vec(slack) >= 0)
        opti.minimize(cost)
        opti.solver(
            "ipopt",
            {
                "print_time": False,
                "expand": True,
                "ipopt.print_level": 0,
                "ipopt.sb": "yes",
                "ipopt.max_iter": 100,
                "ipopt.tol": 1e-6,
                "ipopt.acceptable_tol": 1e-4,
                # quasi-Newton: half the time of the exact Hessian, same plans
                "ipopt.hessian_approximation": "limited-memory",
            },
        )
        self.opti, self.x, self.u, self.slack = opti, x, u, slack
        self.last_plan_ms = 0.0
        self.last_status = ""
        self._warm: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        self._warm = None

    def __call__(
        self,
        state: tuple[float, float],
        u_prev: float,
        thrust_demand: float,
        flight: Flight,
        health: Health,
    ) -> float:
        opti = self.opti
        x0 = np.array(state) / N_SCALE
        opti.set_value(self.p_x0, x0)
        opti.set_value(self.p_uprev, u_prev)
        opti.set_value(self.p_sp, thrust_demand)
        opti.set_value(self.p_plant, np.array([*flight, *health], dtype=float))
        if self._warm is None:
            opti.set_initial(self.x, np.tile(x0[:, None], (1, self.horizon + 1)))
            opti.set_initial(self.u, u_prev)
        else:  # the last plan shifted by one sample
            xs, us = self._warm
            opti.set_initial(self.x, np.hstack([x0[:, None], xs[:, 2:], xs[:, -1:]]))
            opti.set_initial(self.u, np.concatenate([us[1:], us[-1:]]))
        opti.set_initial(self.slack, 0.0)
        start = time.perf_counter()
        try:
            sol = opti.solve()
            xs, us = np.atleast_2d(sol.value(self.x)), np.atleast_1d(sol.value(self.u))
        except RuntimeError:
            xs = np.atleast_2d(opti.debug.value(self.x))
            us = np.atleast_1d(opti.debug.value(self.u))
        self.last_plan_ms = (time.perf_counter() - start) * 1e3
        self.last_status = str(opti.stats()["return_status"])
        self._warm = (xs, us) if np.all(np.isfinite(us)) else None
        return float(us[0]) if np.isfinite(us[0]) else u_prev
