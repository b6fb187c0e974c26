"""`casadi-ipopt`: the multiple-shooting NLP solved by IPOPT with exact Hessians, the
reference optimum the faster planners are measured against."""

from __future__ import annotations

import time

import casadi as ca
import numpy as np

from ..twin_model import Twin
from .casadi_export import casadi_dynamics
from .constraints import Constraints, SensorRows, add_sensor_limit_rows
from .cost import PlanningCost
from .problem import PlannerSettings, PlanningProblem, PlanResult, failed_plan, problem_error


class CasadiPlanner:
    """Multiple-shooting NLP solved by IPOPT with exact Hessians; built once per twin.

    The problem is parametric in (z0, u_prev, z_goal, metric, economic), so each step only updates
    numbers and warm-starts from the previous solution shifted by one sample.
    """

    name = "casadi-ipopt"

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None) -> None:
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self.cost = PlanningCost.of(self.settings, self.limits)
        self._build()
        self._warm: tuple[np.ndarray, np.ndarray] | None = None

    def _build(self) -> None:
        s, lim = self.settings, self.limits
        f, h = casadi_dynamics(self.twin)
        d, a, n_lim, horizon = (
            self.twin.config.embed_dim,
            len(lim.u_low),
            len(lim.limit_rows),
            s.horizon,
        )
        Z, U = ca.SX.sym("Z", d, horizon), ca.SX.sym("U", a, horizon)
        S = ca.SX.sym("S", max(n_lim, 1), horizon)
        z0, u_prev, z_goal = ca.SX.sym("z0", d), ca.SX.sym("u_prev", a), ca.SX.sym("z_goal", d)
        metric, economic = ca.SX.sym("metric", d, d), ca.SX.sym("economic", a + d)
        g, lbg, ubg, cost = [], [], [], 0
        self._sensor_rows = rows = SensorRows()
        z_k, u_before = z0, u_prev
        for k in range(horizon):
            g.append(Z[:, k] - f(z_k, U[:, k]))
            lbg += [0.0] * d
            ubg += [0.0] * d
            g.append(U[:, k] - u_before)
            lbg += list(-lim.rate)
            ubg += list(lim.rate)
            if n_lim:
                add_sensor_limit_rows(
                    h(Z[:, k])[lim.limit_rows.tolist()], S[:, k], lim, g, lbg, ubg, rows
                )
            cost += self.cost.casadi_stage(
                Z[:, k], z_goal, metric, U[:, k], u_before, S[:, k], economic
            )
            z_k, u_before = Z[:, k], U[:, k]
        x = ca.vertcat(ca.vec(Z), ca.vec(U), ca.vec(S))
        nlp = {
            "x": x,
            "p": ca.vertcat(z0, u_prev, z_goal, ca.vec(metric), economic),
            "f": cost,
            "g": ca.vertcat(*g),
        }
        options = {
            "print_time": False,
            "error_on_fail": False,
            "ipopt": {
                "print_level": 0,
                "sb": "yes",
                "max_iter": s.max_iterations,
                "max_cpu_time": s.deadline_ms / 1e3,
                "tol": 1e-6,
                "acceptable_tol": 1e-4,
                "mu_strategy": "adaptive",
            },
        }
        self.solver = ca.nlpsol("latent_mpc", "ipopt", nlp, options)
        inf_z = np.full(d * horizon, np.inf)
        self.lbx = np.concatenate([-inf_z, np.tile(lim.u_low, horizon), np.zeros(S.numel())])
        self.ubx = np.concatenate([inf_z, np.tile(lim.u_high, horizon), np.full(S.numel(), np.inf)])
        self.lbg, self.ubg = np.array(lbg), np.array(ubg)
        self._dims = (d, a, S.numel(), horizon)
        self._f, self._h = f, h

    def _initial_guess(self, problem: PlanningProblem) -> np.ndarray:
        d, a, n_s, horizon = self._dims
        if self._warm is not None:
            z_prev, u_prev = self._warm
            Z = np.hstack([z_prev[:, 1:], z_prev[:, -1:]])
            U = np.hstack([u_prev[:, 1:], u_prev[:, -1:]])
        else:
            U = np.tile(problem.u_prev[:, None], (1, horizon))
            Z = np.empty((d, horizon))
            z = problem.z0
            for k in range(horizon):
                z = np.asarray(self._f(z, U[:, k])).ravel()
                Z[:, k] = z
        U = np.clip(U, self.limits.u_low[:, None], self.limits.u_high[:, None])
        U = problem.with_pinned(U.T).T
        return np.concatenate([Z.ravel(order="F"), U.ravel(order="F"), np.zeros(n_s)])

    def reset(self) -> None:
        self._warm = None

    def plan(self, problem: PlanningProblem) -> PlanResult:
        d, a, n_s, horizon = self._dims
        start = time.perf_counter()
        why = problem_error(problem, self.limits, (d, a), horizon)
        if why is not None:
            self.reset()
            return failed_plan(problem, self.limits, horizon, d, start, f"ipopt: {why}")
        p = np.concatenate(
            [
                problem.z0,
                problem.u_prev,
                problem.z_goal,
                problem.metric_or_identity().ravel(order="F"),
                problem.economic_or_zeros(),
            ]
        )
        lbg, ubg = self._sensor_rows.bounds(self.lbg, self.ubg, problem.limit_shift)
        lbx, ubx = self.lbx.copy(), self.ubx.copy()
        if problem.pinned is not None:  # U is stored (A, H) column-major: stage-major
            given = np.isfinite(problem.pinned).ravel()
            at = d * horizon + np.flatnonzero(given)
            lbx[at] = ubx[at] = np.asarray(problem.pinned).ravel()[given]
        try:
            sol = self.solver(
                x0=self._initial_guess(problem), p=p, lbx=lbx, ubx=ubx, lbg=lbg, ubg=ubg
            )
        except RuntimeError as exc:  # CasADi's evaluation errors: a failed plan, not a crash
            self.reset()
            return failed_plan(problem, self.limits, horizon, d, start, f"ipopt: {exc}")
        solve_ms = (time.perf_counter() - start) * 1e3
        stats = self.solver.stats()
        x = np.asarray(sol["x"]).ravel()
        Z = x[: d * horizon].reshape((d, horizon), order="F")
        U = x[d * horizon : d * horizon + a * horizon].reshape((a, horizon), order="F")
        ok = bool(stats.get("success", False)) and bool(np.all(np.isfinite(x)))
        self._warm = (Z, U) if ok else None
        return PlanResult(
            ok,
            U.T.copy(),
            Z.T.copy(),
            float(sol["f"]),
            solve_ms,
            message=str(stats.get("return_status", "")),
            stats={"iterations": float(stats.get("iter_count", -1))},
        )
