"""`casadi-fatrop`: the multiple-shooting NLP laid out for fatrop's structure detection."""

from __future__ import annotations

import os
import tempfile
import time

import casadi as ca
import numpy as np

from ..twin_model import Twin
from .casadi_export import casadi_dynamics
from .compile_cache import find_compiler
from .constraints import Constraints, SensorRows, add_sensor_limit_rows, project_moves
from .cost import PlanningCost
from .problem import PlannerSettings, PlanningProblem, PlanResult, failed_plan, problem_error


class StructuredNLPPlanner:
    """The multiple-shooting NLP laid out the way fatrop detects an optimal-control problem.

    Stage k has the state x_k = [z_k; u_{k-1}] (the previous input rides along, so the rate
    limit is a stage constraint) and the controls [u_k; s_k]; x_0 is fixed by its bounds;
    each stage's constraints open with its dynamics x_{k+1} = F(x_k, u_k); costs and
    constraints of a stage involve that stage's variables only. Solved by fatrop
    (structure detection) or IPOPT. `compile=True` compiles the NLP's functions with CasADi's
    jit at construction (tens of seconds per model, and no faster than the virtual machine
    for these dense MX graphs: see `benchmarks/planning_speed.py`).
    """

    name = "casadi-fatrop"

    def __init__(
        self,
        twin: Twin,
        settings: PlannerSettings | None = None,
        solver: str = "fatrop",
        compile: bool = False,
    ) -> None:
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self.solver_name = solver
        self.compile = compile and find_compiler() is not None
        self.d, self.a = twin.config.embed_dim, len(self.limits.u_low)
        self.n_lim = len(self.limits.limit_rows)
        self.cost = PlanningCost.of(self.settings, self.limits)
        self._build()
        self._warm: np.ndarray | None = None

    def _build(self) -> None:
        s, lim, d, a, n = self.settings, self.limits, self.d, self.a, self.n_lim
        f, h = casadi_dynamics(self.twin, ca.MX)
        horizon, nx, nu = s.horizon, d + a, a + n
        z_goal, metric = ca.MX.sym("z_goal", d), ca.MX.sym("metric", d, d)
        economic = ca.MX.sym("economic", a + d)
        X = [ca.MX.sym(f"x{k}", nx) for k in range(horizon + 1)]
        W = [ca.MX.sym(f"w{k}", nu) for k in range(horizon)]
        g, lbg, ubg, cost = [], [], [], 0
        self._sensor_rows = rows = SensorRows()
        terms = self.cost
        for k in range(horizon):
            z, before, u, slack = X[k][:d], X[k][d:], W[k][:a], W[k][a:]
            z_next = f(z, u)
            g.append(X[k + 1] - ca.vertcat(z_next, u))  # dynamics first: fatrop's structure
            lbg += [0.0] * nx
            ubg += [0.0] * nx
            g.append(u - before)
            lbg += list(-lim.rate)
            ubg += list(lim.rate)
            if n:
                # on f(z_k, u_k), not z_{k+1}: a stage's constraints see only its own stage
                add_sensor_limit_rows(
                    h(z_next)[lim.limit_rows.tolist()], slack, lim, g, lbg, ubg, rows
                )
            # stage k's cost sees its own variables: z_k (z_0 is fixed), u_k, s_k
            if k:
                cost += terms.casadi_tracking(z, z_goal, metric)
            cost += terms.casadi_move(u, before)
            cost += terms.casadi_slack(slack)
            cost += terms.casadi_economic(economic, u, z if k else None)
        cost += terms.casadi_tracking(X[horizon][:d], z_goal, metric)
        cost += terms.casadi_economic(economic, None, X[horizon][:d])
        variables = []
        for k in range(horizon):
            variables += [X[k], W[k]]
        variables.append(X[horizon])
        nlp = {
            "x": ca.vertcat(*variables),
            "p": ca.vertcat(z_goal, ca.vec(metric), economic),
            "f": cost,
            "g": ca.vertcat(*g),
        }
        options: dict = {"print_time": False, "error_on_fail": False}
        if self.compile:
            options.update(
                {
                    "jit": True,
                    "compiler": "shell",
                    "jit_options": {"flags": ["-O1"], "verbose": False},
                }
            )
        if self.solver_name == "fatrop":
            options.update(
                {
                    "structure_detection": "auto",
                    "expand": False,
                    "equality": [lo == hi for lo, hi in zip(lbg, ubg, strict=True)],
                    "fatrop": {"print_level": 0, "max_iter": s.max_iterations, "tol": 1e-6},
                }
            )
        else:
            options.update(
                {
                    "ipopt": {
                        "print_level": 0,
                        "sb": "yes",
                        "max_iter": s.max_iterations,
                        "tol": 1e-6,
                        "max_cpu_time": s.deadline_ms / 1e3,
                        "acceptable_tol": 1e-4,
                        "mu_strategy": "adaptive",
                    }
                }
            )
        here = os.getcwd()
        with tempfile.TemporaryDirectory() as scratch:
            os.chdir(scratch)  # CasADi's jit writes its sources to the working directory
            try:
                self.solver = ca.nlpsol("latent_ocp", self.solver_name, nlp, options)
            finally:
                os.chdir(here)
        self.lbg, self.ubg = np.array(lbg), np.array(ubg)
        self._layout = (nx, nu, horizon)
        self._f = f

    def reset(self) -> None:
        self._warm = None

    def _bounds(self, problem: PlanningProblem) -> tuple[np.ndarray, np.ndarray]:
        lim, (nx, _, horizon) = self.limits, self._layout
        x0 = np.concatenate([problem.z0, problem.u_prev])
        free_x = np.full(nx, np.inf)
        u_low = problem.with_pinned(np.tile(lim.u_low, (horizon, 1)))
        u_high = problem.with_pinned(np.tile(lim.u_high, (horizon, 1)))
        slack_low, slack_high = np.zeros(self.n_lim), np.full(self.n_lim, np.inf)
        low, high = [x0], [x0]
        for k in range(horizon):
            low += [np.concatenate([u_low[k], slack_low]), -free_x]
            high += [np.concatenate([u_high[k], slack_high]), free_x]
        return np.concatenate(low), np.concatenate(high)

    def _guess(self, problem: PlanningProblem) -> np.ndarray:
        horizon = self.settings.horizon
        if self._warm is not None:
            U = np.vstack([self._warm[1:], self._warm[-1:]])
        else:
            U = np.tile(problem.u_prev, (horizon, 1))
        U = problem.with_pinned(
            project_moves(
                U, np.clip(problem.u_prev, self.limits.u_low, self.limits.u_high), self.limits
            )
        )
        parts, z, before = [], problem.z0, problem.u_prev
        parts.append(np.concatenate([z, before]))
        for k in range(horizon):
            parts.append(np.concatenate([U[k], np.zeros(self.n_lim)]))
            z = np.asarray(self._f(z, U[k])).ravel()
            parts.append(np.concatenate([z, U[k]]))
        return np.concatenate(parts)

    def plan(self, problem: PlanningProblem) -> PlanResult:
        nx, nu, horizon = self._layout
        start = time.perf_counter()
        why = problem_error(problem, self.limits, (self.d, self.a), horizon)
        if why is not None:
            self.reset()
            return failed_plan(
                problem, self.limits, horizon, self.d, start, f"{self.solver_name}: {why}"
            )
        lbx, ubx = self._bounds(problem)
        p = np.concatenate(
            [
                problem.z_goal,
                problem.metric_or_identity().ravel(order="F"),
                problem.economic_or_zeros(),
            ]
        )
        lbg, ubg = self._sensor_rows.bounds(self.lbg, self.ubg, problem.limit_shift)
        try:
            sol = self.solver(x0=self._guess(problem), p=p, lbx=lbx, ubx=ubx, lbg=lbg, ubg=ubg)
        except RuntimeError as exc:  # CasADi's evaluation errors: a failed plan, not a crash
            self.reset()
            return failed_plan(
                problem, self.limits, horizon, self.d, start, f"{self.solver_name}: {exc}"
            )
        solve_ms = (time.perf_counter() - start) * 1e3
        stats = self.solver.stats()
        x = np.asarray(sol["x"]).ravel()
        stride = nx + nu
        U = np.array([x[k * stride + nx : k * stride + nx + self.a] for k in range(horizon)])
        Z = np.array([x[(k + 1) * stride : (k + 1) * stride + self.d] for k in range(horizon)])
        ok = bool(stats.get("success", False)) and bool(np.all(np.isfinite(x)))
        U = np.clip(U, self.limits.u_low, self.limits.u_high)
        self._warm = U if ok else None
        return PlanResult(
            ok,
            U,
            Z,
            float(sol["f"]),
            solve_ms,
            message=f"{self.solver_name}: {stats.get('return_status', '')}",
            stats={"iterations": float(stats.get("iter_count", -1))},
        )
