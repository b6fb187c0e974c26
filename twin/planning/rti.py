"""`casadi` (the default): Gauss-Newton SQP in real-time-iteration form, condensed to one
dense QP in the moves per step."""

from __future__ import annotations

import time

import numpy as np

from ..twin_model import Twin
from .casadi_export import CasadiLinearisation, action_gain
from .constraints import Constraints, project_moves
from .cost import PlanningCost
from .dense_qp import CasadiQPSolver, DAQPSolver, QPSolution, QPSolver
from .linearisation import NumpyLinearisation
from .problem import PlannerSettings, PlanningProblem, PlanResult, failed_plan, problem_error

RTI_QP_SOLVERS = ("daqp", "casadi-daqp", "qpoases", "highs", "proxqp", "osqp", "qrqp")


class RTIPlanner:
    """Gauss-Newton SQP, real-time iterations, single shooting condensed to a dense QP.

    Per iteration: the twin is rolled out along the current moves with each stage's
    Jacobians (`linearisation.py`: numpy by default, CasADi's own functions on
    request); numpy condenses them into dZ/dU (the embeddings are eliminated, so the QP has
    only the moves and the sensor slacks); a dense QP solver takes the Gauss-Newton step
    (the cost is a sum of squares plus linear slack and economic terms, so its Gauss-Newton
    Hessian is exact but for the twin's curvature); a backtracking line search on the exact
    cost keeps the plan no worse than the warm start. The warm start is the previous plan
    shifted by one sample, projected onto the new rate window; the QP starts from the
    previous QP's active set, shifted by one sample the same way (`dense_qp.py`).

    `sqp_iterations=1` is the acados-style real-time iteration; more iterations converge to
    the same local optimum as IPOPT. `qp_solver`: "daqp" (the DAQP package, warm-started;
    default) or a CasADi conic plugin ("casadi-daqp", "qpoases", ...). `linearisation`:
    "numpy" (default) or "casadi"; `compile=True` compiles the CasADi linearisation with the
    system C compiler (cached on disk per model), falling back to the CasADi VM.
    """

    name = "casadi"
    slack_regularisation = 1e-5  # keeps the QP strictly convex (and solvable) in the slacks
    # Levenberg-Marquardt damping of each step, |U - U_bar|^2: keeps the QP well conditioned
    # where the twin is flat in some move; it shortens steps but leaves the optimum alone
    step_damping = 1e-4
    line_search = (1.0, 0.5, 0.25, 0.1)

    def __init__(
        self,
        twin: Twin,
        settings: PlannerSettings | None = None,
        qp_solver: str = "daqp",
        sqp_iterations: int = 1,
        step_tolerance: float = 1e-4,
        compile: bool = False,
        linearisation: str | None = None,
    ) -> None:
        if qp_solver not in RTI_QP_SOLVERS:
            raise ValueError(
                f"unknown QP solver '{qp_solver}' (choose {', '.join(RTI_QP_SOLVERS)})"
            )
        linearisation = linearisation or ("casadi" if compile else "numpy")
        if linearisation not in ("numpy", "casadi") or (compile and linearisation != "casadi"):
            raise ValueError("linearisation is 'numpy' or 'casadi' (compile=True: 'casadi')")
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self.qp_solver_name, self.sqp_iterations = qp_solver, sqp_iterations
        self.step_tolerance = step_tolerance
        self.d, self.a = twin.config.embed_dim, len(self.limits.u_low)
        self.n_lim = len(self.limits.limit_rows)
        self.cost = PlanningCost.of(self.settings, self.limits)
        rows = self.limits.limit_rows.tolist()
        if linearisation == "numpy":
            self._model: NumpyLinearisation | CasadiLinearisation = NumpyLinearisation(
                twin.model.predictor.net, twin.model.readout.net, self.d, rows, action_gain(twin)
            )
        else:
            self._model = CasadiLinearisation(twin, self.settings.horizon, rows, compile)
        self.linearisation = linearisation
        self.compiled = getattr(self._model, "compiled", False)
        self._build_qp()
        self._warm: np.ndarray | None = None
        self._multipliers: np.ndarray | None = None  # the last QP's, to seed the next one

    # -- construction ------------------------------------------------------------------
    def _build_qp(self) -> None:
        """The QP's constant parts: bounds, rate rows, the move penalty M (cost |M U - c|^2),
        the solver, and where each constraint sits one sample later (for warm starts)."""
        lim, a, horizon = self.limits, self.a, self.settings.horizon
        n_u, n_s = a * horizon, self.n_lim * horizon
        difference = np.eye(n_u) - np.eye(n_u, k=-a)  # U stage-major: rows u_k - u_{k-1}
        self._move = self.cost.move_least_squares(horizon)
        self._rate_rows = difference[a:]  # the first move is bounded through lbx/ubx
        high = np.isfinite(lim.y_high)
        low = np.isfinite(lim.y_low)
        self._high_rows = np.flatnonzero(np.tile(high, horizon))  # over (stage, sensor)
        self._low_rows = np.flatnonzero(np.tile(low, horizon))
        n_g = len(self._rate_rows) + len(self._high_rows) + len(self._low_rows)
        self._dims = (n_u, n_s, n_g)
        self._qp: QPSolver = (
            DAQPSolver()
            if self.qp_solver_name == "daqp"
            else CasadiQPSolver(self.qp_solver_name.removeprefix("casadi-"), n_u + n_s, n_g)
        )
        self._next_stage = self._constraints_one_sample_later()

    def _constraints_one_sample_later(self) -> np.ndarray:
        """For each constraint (bounds on moves, on slacks, then the rows), the index of the
        same constraint one stage later, or -1 at the horizon's end: the previous plan's
        multipliers, shifted like its moves, seed the next plan's QP."""
        a, n = self.a, self.n_lim
        n_u, n_s, _ = self._dims

        def along(count: int, width: int, offset: int) -> np.ndarray:
            index = np.arange(count)
            return np.where(index + width < count, offset + index + width, -1)

        def sensor_rows(rows: np.ndarray, offset: int) -> np.ndarray:
            later = {flat: offset + i for i, flat in enumerate(rows)}
            return np.array([later.get(flat + n, -1) for flat in rows], dtype=int)

        n_rate = len(self._rate_rows)
        high_at = n_u + n_s + n_rate
        return np.concatenate(
            [
                along(n_u, a, 0),
                along(n_s, n, n_u),
                along(n_rate, a, n_u + n_s),
                sensor_rows(self._high_rows, high_at),
                sensor_rows(self._low_rows, high_at + len(self._high_rows)),
            ]
        ).astype(int)

    def reset(self) -> None:
        self._warm = None
        self._multipliers = None

    # -- one plan ----------------------------------------------------------------------
    def plan(self, problem: PlanningProblem) -> PlanResult:
        start = time.perf_counter()
        why = problem_error(problem, self.limits, (self.d, self.a), self.settings.horizon)
        if why is not None:
            self.reset()
            return self._failed(problem, start, why)
        U = self._initial_moves(problem)
        Z, Y = self._rollout(problem.z0, U)
        cost = self.cost.numpy(problem, U, Z, Y)
        iterations, qp_iterations, message = 0, 0, "converged"
        seed = self._shifted_multipliers() if self._warm is not None else None
        for iteration in range(1, self.sqp_iterations + 1):
            iterations = iteration
            solution = self._qp_step(problem, U, seed)
            if solution is None:
                self.reset()
                return self._failed(problem, start, f"QP solver {self.qp_solver_name} failed")
            step, seed = solution.x, solution.multipliers
            qp_iterations += solution.iterations
            U, Z, Y, cost, moved = self._line_search(problem, U, step, cost, Z, Y)
            if moved < self.step_tolerance:
                break
            if (time.perf_counter() - start) * 1e3 > 0.5 * self.settings.deadline_ms:
                message = "stopped early for the deadline"
                break
        else:
            message = f"{self.sqp_iterations} iterations"
        ok = bool(np.isfinite(cost) and np.all(np.isfinite(U)) and np.all(np.isfinite(Z)))
        self._warm = U if ok else None
        self._multipliers = seed if ok else None
        solve_ms = (time.perf_counter() - start) * 1e3
        return PlanResult(
            ok,
            U.copy(),
            Z.T.copy(),
            float(cost),
            solve_ms,
            message=f"rti/{self.qp_solver_name}: {message}",
            stats={"iterations": float(iterations), "qp_iterations": float(qp_iterations)},
        )

    def _shifted_multipliers(self) -> np.ndarray | None:
        if self._multipliers is None or len(self._multipliers) != len(self._next_stage):
            return None
        later = self._next_stage
        return np.where(later >= 0, self._multipliers[np.maximum(later, 0)], 0.0)

    def _failed(self, problem: PlanningProblem, start: float, why: str) -> PlanResult:
        return failed_plan(
            problem, self.limits, self.settings.horizon, self.d, start, f"rti: {why}"
        )

    def _initial_moves(self, problem: PlanningProblem) -> np.ndarray:
        if self._warm is not None:
            guess = np.vstack([self._warm[1:], self._warm[-1:]])
        else:
            guess = np.tile(problem.u_prev, (self.settings.horizon, 1))
        # u_prev is at most one rate step outside the bounds here, so this meets both (and
        # pinned columns are feasible on their own: rate limits are per actuator)
        return problem.with_pinned(project_moves(guess, problem.u_prev, self.limits))

    def _rollout(self, z0: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._model.simulate(np.asarray(z0, dtype=float), np.ascontiguousarray(U.T))

    def _qp_step(
        self, problem: PlanningProblem, U: np.ndarray, seed: np.ndarray | None = None
    ) -> QPSolution | None:
        """The Gauss-Newton QP around U; its x is the QP's moves (H, A), or None on failure.
        `seed`: multipliers of a nearby QP, to start the solver's active set from."""
        lim, horizon, a = self.limits, self.settings.horizon, self.a
        n_u, n_s, _ = self._dims
        Z, A, B, Y, C = self._model.linearise(
            np.asarray(problem.z0, dtype=float), np.ascontiguousarray(U.T)
        )
        G = self._condense(A, B)  # (D*H, n_u): d vec(Z) / d vec(U), stage-major
        u_bar = U.ravel()
        residual = Z.ravel(order="F") - np.tile(problem.z_goal, horizon) - G @ u_bar
        G_cost = G
        if problem.metric is not None:  # W on every stage's block of D rows
            w = np.asarray(problem.metric, dtype=float)
            residual = (residual.reshape(horizon, self.d) @ w.T).ravel()
            G_cost = np.einsum("ij,hjn->hin", w, G.reshape(horizon, self.d, n_u)).reshape(
                horizon * self.d, n_u
            )
        c = self.cost.move_offset(problem.u_prev, horizon)
        hess = np.zeros((n_u + n_s, n_u + n_s))
        hess[:n_u, :n_u] = 2.0 * (
            G_cost.T @ G_cost + self._move.T @ self._move + self.step_damping * np.eye(n_u)
        )
        hess[n_u:, n_u:] = 2.0 * self.slack_regularisation * np.eye(n_s)
        grad = np.concatenate(
            [
                2.0 * (G_cost.T @ residual - self._move.T @ c - self.step_damping * u_bar),
                np.full(n_s, self.cost.slack_weight),
            ]
        )
        if problem.economic is not None:  # linear in U through the linearised embeddings
            e_u, e_z = problem.economic_parts()
            grad[:n_u] += np.tile(e_u, horizon) + G.T @ np.tile(e_z, horizon)
        lbx = np.concatenate([np.tile(lim.u_low, horizon), np.zeros(n_s)])
        ubx = np.concatenate([np.tile(lim.u_high, horizon), np.full(n_s, np.inf)])
        lbx[:a] = np.maximum(lbx[:a], problem.u_prev - lim.rate)
        ubx[:a] = np.minimum(ubx[:a], problem.u_prev + lim.rate)
        if problem.pinned is not None:  # U stage-major, as the pinned moves ravel
            given = np.flatnonzero(np.isfinite(problem.pinned).ravel())
            lbx[given] = ubx[given] = np.asarray(problem.pinned).ravel()[given]
        if np.any(lbx > ubx):
            return None
        rows, lba, uba = self._constraint_rows(G, Y, C, u_bar, problem)
        solution = self._qp.solve(
            hess,
            grad,
            rows,
            lba,
            uba,
            lbx,
            ubx,
            start=seed,
            x0=np.concatenate([u_bar, np.zeros(n_s)]),
        )
        if solution is None or not np.all(np.isfinite(solution.x)):
            return None
        # clip the solver's round-off: the line search then mixes feasible points only
        moves = problem.with_pinned(
            project_moves(solution.x[:n_u].reshape(horizon, a), problem.u_prev, lim)
        )
        return QPSolution(moves, solution.multipliers, solution.iterations)

    def _condense(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """A (H, D, D), B (H, D, Act) -> (D*H, Act*H), the stages' sensitivities to U."""
        d, a, horizon = self.d, self.a, self.settings.horizon
        G = np.zeros((d * horizon, a * horizon))
        block = np.zeros((d, a * horizon))
        for k in range(horizon):
            block = A[k] @ block
            block[:, k * a : (k + 1) * a] = B[k]
            G[k * d : (k + 1) * d] = block
        return G

    def _constraint_rows(
        self,
        G: np.ndarray,
        Y: np.ndarray,
        C: np.ndarray,
        u_bar: np.ndarray,
        problem: PlanningProblem,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rate rows on U, then linearised sensor rows with their slacks: y - s <= high,
        y + s >= low (one slack per sensor and stage serves both sides)."""
        lim, horizon, d, n = self.limits, self.settings.horizon, self.d, self.n_lim
        n_u, n_s, n_g = self._dims
        rows = np.zeros((n_g, n_u + n_s))
        n_rate = len(self._rate_rows)
        rows[:n_rate, :n_u] = self._rate_rows
        rate = np.tile(lim.rate, horizon)[self._rate_rows.argmax(axis=1)] if n_rate else []
        lba, uba = [-np.asarray(rate)], [np.asarray(rate)]
        if n:
            sens = np.einsum("hld,hdn->hln", C, G.reshape(horizon, d, n_u)).reshape(
                horizon * n, n_u
            )  # (H*n, n_u)
            offset = Y.ravel(order="F") - sens @ u_bar
            low, high = problem.sensor_bounds(lim)
            y_high, y_low = np.tile(high, horizon), np.tile(low, horizon)
            at = n_rate
            for side, idx in ((1.0, self._high_rows), (-1.0, self._low_rows)):
                rows[at : at + len(idx), :n_u] = sens[idx]
                rows[at + np.arange(len(idx)), n_u + idx] = -side
                bound = (y_high if side > 0 else y_low)[idx] - offset[idx]
                lba.append(np.full(len(idx), -np.inf) if side > 0 else bound)
                uba.append(bound if side > 0 else np.full(len(idx), np.inf))
                at += len(idx)
        return rows, np.concatenate(lba), np.concatenate(uba)

    def _line_search(
        self,
        problem: PlanningProblem,
        U: np.ndarray,
        target: np.ndarray,
        cost: float,
        Z: np.ndarray,
        Y: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        """Backtrack from the full step; every trial mixes two feasible plans, so it is
        feasible. Returns the accepted plan and the largest move it made (0: none)."""
        step = target - U
        for alpha in self.line_search:
            trial = U + alpha * step
            Z_t, Y_t = self._rollout(problem.z0, trial)
            trial_cost = self.cost.numpy(problem, trial, Z_t, Y_t)
            if trial_cost < cost:
                return trial, Z_t, Y_t, trial_cost, float(np.abs(alpha * step).max())
        return U, Z, Y, cost, 0.0
