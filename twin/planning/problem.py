"""The planning problem every planner solves, its settings, and what a planner returns.

A planner never raises for a problem it cannot solve: it answers `PlanResult(ok=False)`
with the reason and a plan that still keeps the actuator bounds (`failed_plan`), and the
caller falls back. Bad construction arguments (an unknown solver, a twin without the
predictor a planner needs) raise `ValueError` at construction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..response import move_scales
from ..twin_model import Twin
from .constraints import Constraints


@dataclass(frozen=True)
class PlannerSettings:
    horizon: int = 20
    move_weight: float = 0.5
    slack_weight: float = 1e4
    limit_margin: float = 0.25  # back-off from sensor limits, normalised units (model error)
    deadline_ms: float = 1000.0
    max_iterations: int = 60
    # per actuator, the move (normalised units per sample) the move penalty counts as one;
    # None: the rate limits (`twin.response.move_scales`)
    move_scale: tuple[float, ...] | None = None

    @classmethod
    def for_twin(cls, twin: Twin) -> PlannerSettings:
        """The defaults, with the horizon, move weight and limit margin of the twin's
        process spec (training sets the horizon from the log, `twin.time_scales`) and the
        move scales of its own step response (`twin.response.move_scales`)."""
        control = twin.spec.control
        horizon = control.horizon or cls.horizon
        scales = move_scales(twin, horizon)
        return cls(
            horizon=horizon,
            move_weight=control.move_weight,
            limit_margin=control.limit_margin,
            move_scale=None if scales is None else tuple(map(float, scales)),
        )


@dataclass
class PlanningProblem:
    """One instance: where we are, what we applied last, where we want to go."""

    z0: np.ndarray  # (D,)
    u_prev: np.ndarray  # (A,) normalised, last applied
    z_goal: np.ndarray  # (D,)
    # (D, D) factor W of the stage cost |W (z - z_goal)|^2; None is the identity
    metric: np.ndarray | None = None
    # (L,) per limited sensor (`Constraints.limit_rows` order), normalised: how far the plant
    # has read above the twin's forecast of late (below: negative); see `sensor_bounds`
    limit_shift: np.ndarray | None = None
    # (H, A) normalised moves given from outside (a baseline drives these actuators: the
    # spec's `control.baseline_actuators`), NaN where the planner chooses; each actuator's
    # column is pinned whole or free
    pinned: np.ndarray | None = None
    # (A + D,) the operator's economic push: linear weights per stage on the normalised
    # moves u_k (first A) and the embeddings z_k (last D); None: no push
    economic: np.ndarray | None = None

    def economic_parts(self) -> tuple[np.ndarray, np.ndarray]:
        """(e_u (A,), e_z (D,)) of `economic` (zeros without one)."""
        d, a = len(self.z_goal), len(self.u_prev)
        if self.economic is None:
            return np.zeros(a), np.zeros(d)
        economic = np.asarray(self.economic, dtype=float)
        return economic[:a], economic[a:]

    def economic_or_zeros(self) -> np.ndarray:
        return np.concatenate(self.economic_parts())

    def with_pinned(self, actions: np.ndarray) -> np.ndarray:
        """(H, A) moves with the pinned ones in their place."""
        if self.pinned is None:
            return actions
        return np.where(np.isfinite(self.pinned), self.pinned, actions)

    def sensor_bounds(self, lim: Constraints) -> tuple[np.ndarray, np.ndarray]:
        """The sensor limits the twin's readouts must keep in this problem: (low, high).

        With a `limit_shift` both the readout and the readout plus the shift must keep the
        limits: a plant that reads above its forecast brings the high limit nearer and
        leaves the low one where it is (and the other way round), so a bias only ever
        tightens the plan."""
        if self.limit_shift is None:
            return lim.y_low, lim.y_high
        shift = np.asarray(self.limit_shift, dtype=float)
        return lim.y_low - np.minimum(shift, 0.0), lim.y_high - np.maximum(shift, 0.0)

    def weighted(self, z: np.ndarray) -> np.ndarray:
        """W z for embeddings along the first axis (D, ...)."""
        return z if self.metric is None else np.tensordot(self.metric, z, axes=1)

    def metric_or_identity(self) -> np.ndarray:
        return (
            np.eye(len(self.z_goal))
            if self.metric is None
            else np.asarray(self.metric, dtype=float)
        )


@dataclass
class PlanResult:
    ok: bool
    actions: np.ndarray  # (H, A) normalised
    embeddings: np.ndarray  # (H, D) predicted z_1..z_H
    cost: float
    solve_ms: float
    message: str = ""
    stats: dict[str, float] = field(default_factory=dict)


class Planner(Protocol):
    name: str
    settings: PlannerSettings

    def plan(self, problem: PlanningProblem) -> PlanResult: ...


def failed_plan(
    problem: PlanningProblem,
    lim: Constraints,
    horizon: int,
    embed_dim: int,
    started: float,
    why: str,
) -> PlanResult:
    """ok=False with a plan that still keeps the bounds: hold the previous action, clipped
    (mid-range where it is unusable). `started`: the plan's `time.perf_counter()` start."""
    a = len(lim.u_low)
    given = np.asarray(problem.u_prev, dtype=float).ravel()
    u_prev = np.broadcast_to(given[:a], (a,)) if given.size else np.zeros(a)
    hold = np.where(np.isfinite(u_prev), u_prev, (lim.u_low + lim.u_high) / 2)
    actions = np.tile(np.clip(hold, lim.u_low, lim.u_high), (horizon, 1))
    return PlanResult(
        False,
        actions,
        np.full((horizon, embed_dim), np.nan),
        float("nan"),
        (time.perf_counter() - started) * 1e3,
        message=why,
    )


def problem_error(
    problem: PlanningProblem, lim: Constraints, dims: tuple[int, int], horizon: int | None = None
) -> str | None:
    """Why a planning problem cannot be solved as posed, or None."""
    d, a = dims
    shapes = (np.shape(problem.z0), np.shape(problem.u_prev), np.shape(problem.z_goal))
    if shapes != ((d,), (a,), (d,)):
        return f"problem shapes {shapes}, expected {((d,), (a,), (d,))}"
    for label, value in (
        ("z0", problem.z0),
        ("u_prev", problem.u_prev),
        ("z_goal", problem.z_goal),
    ):
        if not np.all(np.isfinite(value)):
            return f"{label} is not finite"
    if np.any(problem.u_prev < lim.u_low - lim.rate) or np.any(
        problem.u_prev > lim.u_high + lim.rate
    ):
        return "previous action is more than one rate step outside its bounds"
    if problem.metric is not None and np.shape(problem.metric) != (d, d):
        return f"metric shape {np.shape(problem.metric)}, expected {(d, d)}"
    if problem.limit_shift is not None:
        if np.shape(problem.limit_shift) != (len(lim.limit_rows),):
            return (
                f"limit_shift shape {np.shape(problem.limit_shift)}, expected "
                f"{(len(lim.limit_rows),)}"
            )
        if not np.all(np.isfinite(problem.limit_shift)):
            return "limit_shift is not finite"
    if problem.economic is not None:
        if np.shape(problem.economic) != (a + d,):
            return f"economic shape {np.shape(problem.economic)}, expected {(a + d,)}"
        if not np.all(np.isfinite(problem.economic)):
            return "economic is not finite"
    if problem.pinned is not None:
        return pinned_error(np.asarray(problem.pinned, dtype=float), problem.u_prev, lim, horizon)
    return None


def pinned_error(
    pinned: np.ndarray, u_prev: np.ndarray, lim: Constraints, horizon: int | None
) -> str | None:
    """Why pinned moves cannot be planned around (shape, a half-pinned actuator, moves
    outside the bounds or rate limits), or None."""
    a = len(lim.u_low)
    if pinned.ndim != 2 or pinned.shape[1] != a or (horizon and pinned.shape[0] != horizon):
        return f"pinned shape {pinned.shape}, expected ({horizon or 'H'}, {a})"
    given = np.isfinite(pinned)
    if np.any(given.any(axis=0) != given.all(axis=0)):
        return "pinned: an actuator is pinned for some steps only"
    path = np.vstack([u_prev, np.where(given, pinned, 0.0)])
    tol = 1e-9
    outside = (pinned < lim.u_low - tol) | (pinned > lim.u_high + tol)
    too_fast = np.abs(np.diff(path, axis=0)) > lim.rate + tol
    if np.any(given & (outside | too_fast)):
        return "pinned moves break the actuator bounds or rate limits"
    return None
