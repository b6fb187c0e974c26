"""Dense convex QPs for the real-time-iteration planner, warm-started across control steps.

    minimise 0.5 x' H x + g' x   subject to   lbx <= x <= ubx,   lba <= A x <= uba

`DAQPSolver` calls DAQP (the dual active-set solver CasADi also ships) through its own
Python package, because CasADi's interface to it ignores the multipliers it is given: each
control step would start from an empty active set. Consecutive plans share most of their
active constraints (rate limits riding at their bound, a sensor held at its limit), so
starting from the last solution's active set cuts DAQP's iterations from hundreds to a few
tens on a 4-actuator plan (`benchmarks/planning_speed.py`). A warm start that DAQP cannot use
is retried cold, so a warm start can only make a solve faster, never fail one.
`CasadiQPSolver` keeps CasADi's `conic` plugins (qpOASES, HiGHS, OSQP, ProxQP, qrqp, and
DAQP through CasADi) for comparison.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import casadi as ca
import daqp
import numpy as np

INFINITY = 1e30  # DAQP's own bound for "no bound"
PROXIMAL = 1e-8
"""DAQP's proximal regularisation, tried when the plain solve fails: its active set cycled
(exit flag -2) on 22 QPs of a turbofan episode once moves were counted by the twin's step
response (Hessian condition number about 1e7); proximal-point iterations solve the same
QP, and solved all 22."""
EQUALITY = 5  # DAQP's sense flag for a constraint held with equality (IMMUTABLE + ACTIVE)


@dataclass
class QPSolution:
    x: np.ndarray
    multipliers: np.ndarray  # bounds first, then rows (DAQP's order); zeros where unknown
    iterations: int


class QPSolver(Protocol):
    name: str

    def solve(
        self,
        hess: np.ndarray,
        grad: np.ndarray,
        rows: np.ndarray,
        lba: np.ndarray,
        uba: np.ndarray,
        lbx: np.ndarray,
        ubx: np.ndarray,
        start: np.ndarray | None = None,
        x0: np.ndarray | None = None,
    ) -> QPSolution | None: ...


class DAQPSolver:
    """DAQP on the dense problem; `start` (multipliers of a nearby QP) seeds its active set."""

    name = "daqp"

    def __init__(self, iteration_limit: int = 2000) -> None:
        self.iteration_limit = iteration_limit

    def solve(
        self,
        hess: np.ndarray,
        grad: np.ndarray,
        rows: np.ndarray,
        lba: np.ndarray,
        uba: np.ndarray,
        lbx: np.ndarray,
        ubx: np.ndarray,
        start: np.ndarray | None = None,
        x0: np.ndarray | None = None,
    ) -> QPSolution | None:
        upper = np.clip(np.concatenate([ubx, uba]), -INFINITY, INFINITY)
        lower = np.clip(np.concatenate([lbx, lba]), -INFINITY, INFINITY)
        sense = np.where(lower == upper, EQUALITY, 0).astype(np.int32)
        args = (
            np.ascontiguousarray(hess, dtype=float),
            np.ascontiguousarray(grad, dtype=float),
            np.ascontiguousarray(rows, dtype=float),
            upper,
            lower,
            sense,
        )
        usable = (
            start is not None
            and len(start) == len(upper)
            and bool(np.all(np.isfinite(start)))
            and bool(np.any(start))
        )
        attempts: list[dict[str, Any]] = (
            [{"dual_start": np.asarray(start, float)}] if usable else []
        )
        attempts += [{}, {"eps_prox": PROXIMAL}]
        for extra in attempts:
            x, _, flag, info = daqp.solve(*args, iter_limit=self.iteration_limit, **extra)
            if flag > 0 and np.all(np.isfinite(x)):
                return QPSolution(np.asarray(x), np.asarray(info["lam"]), int(info["iterations"]))
        return None


class CasadiQPSolver:
    """A CasADi `conic` plugin on the dense problem (no warm start reaches the solvers)."""

    def __init__(self, plugin: str, n_x: int, n_rows: int) -> None:
        self.name = plugin
        options: dict = {"error_on_fail": False}
        if plugin == "qpoases":
            options.update({"printLevel": "none", "sparse": False})
        elif plugin == "osqp":
            options.update(
                {
                    "osqp": {
                        "verbose": False,
                        "eps_abs": 1e-7,
                        "eps_rel": 1e-7,
                        "max_iter": 20000,
                        "polish": True,
                    }
                }
            )
        elif plugin == "qrqp":
            options.update({"print_iter": False, "print_header": False, "print_info": False})
        elif plugin == "highs":
            options.update({"highs": {"output_flag": False}})
        elif plugin == "proxqp":
            options.update({"proxqp": {"eps_abs": 1e-9}})
        self._conic = ca.conic(
            "latent_qp",
            plugin,
            {"h": ca.Sparsity.dense(n_x, n_x), "a": ca.Sparsity.dense(n_rows, n_x)},
            options,
        )
        self.n_x, self.n_rows = n_x, n_rows

    def solve(
        self,
        hess: np.ndarray,
        grad: np.ndarray,
        rows: np.ndarray,
        lba: np.ndarray,
        uba: np.ndarray,
        lbx: np.ndarray,
        ubx: np.ndarray,
        start: np.ndarray | None = None,
        x0: np.ndarray | None = None,
    ) -> QPSolution | None:
        guess = {} if x0 is None else {"x0": x0}
        try:
            solution = self._conic(
                h=hess, g=grad, a=rows, lba=lba, uba=uba, lbx=lbx, ubx=ubx, **guess
            )
        except RuntimeError:  # CasADi's evaluation errors (a NaN in the data): a failed QP
            return None
        if not self._conic.stats().get("success", False):
            return None
        x = np.asarray(solution["x"]).ravel()
        if not np.all(np.isfinite(x)):
            return None
        return QPSolution(x, np.zeros(self.n_x + self.n_rows), 0)
