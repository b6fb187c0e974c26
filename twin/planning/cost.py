"""The planning objective, defined once; every planner calls it.

In normalised units, for moves u_1..u_H from the last applied u_0 and the twin's predicted
embeddings z_1..z_H with their limited-sensor readouts y_k:

    J = sum_k w_k |W (z_k - z_goal)|^2                    tracking (W: the problem's metric)
      + move_weight * sum_k |(u_k - u_{k-1}) / scale|^2    move suppression
      + slack_weight * sum_k w_k * sum_j s_kj              sensor-limit slack, s >= 0 with
                                                            low_j - s <= y_kj <= high_j + s
      + sum_k (e_u . u_k + w_k e_z . z_k)                  the operator's economic push, with
                                                            e = [e_u; e_z] the problem's
                                                            `economic` (absent: zero)

`scale` is each actuator's move counted as one: its rate limit, or less where the twin's
own step response says a move that large shifts a controlled sensor by more than
`MOVE_EFFECT` training stds (`twin.response.move_scales`). w_k = 1 for a sample-by-sample
plan; the hierarchical planner's coarse level scores block ends that each stand for `k`
samples (w = k). At the optimum each slack is the violation max(0, y - high, low - y),
which is how the sampling planners and the real-time iteration's line search read it.

The same definition is written three times, side by side here, for the three kinds of
numbers the planners compute with: CasADi expressions (the NLP planners build their
objective from them), numpy float64 (the real-time iteration's exact cost and its
Gauss-Newton least-squares form), and batched torch float32 (CEM, MPPI and the coarse
level). tests/test_planning.py checks that the three agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import casadi as ca
import numpy as np
import torch

from .constraints import Constraints
from .problem import PlannerSettings, PlanningProblem


def weighted_distance(
    z: torch.Tensor, z_goal: torch.Tensor, metric: torch.Tensor | None
) -> torch.Tensor:
    """|W (z - z_goal)|^2 per embedding, over the last axis (the identity without a
    metric)."""
    delta = z - z_goal
    if metric is not None:
        delta = delta @ metric.T
    return (delta**2).sum(dim=-1)


@dataclass(frozen=True)
class TorchProblem:
    """A problem's numbers as float32 tensors, for batched scoring."""

    z0: torch.Tensor  # (1, D)
    u_prev: torch.Tensor  # (1, A)
    z_goal: torch.Tensor  # (D,)
    metric: torch.Tensor | None  # (D, D)
    y_low: torch.Tensor  # (L,) the problem's sensor bounds (`sensor_bounds`)
    y_high: torch.Tensor
    economic: torch.Tensor | None = None  # (A + D,) linear weights on [u; z]

    @classmethod
    def of(
        cls, problem: PlanningProblem, lim: Constraints, u_prev: np.ndarray | None = None
    ) -> TorchProblem:
        """`u_prev`: in place of the problem's (the coarse level starts from it clipped)."""

        def tensor(value: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(value, dtype=torch.float32)

        low, high = problem.sensor_bounds(lim)
        return cls(
            tensor(problem.z0).unsqueeze(0),
            tensor(problem.u_prev if u_prev is None else u_prev).reshape(1, -1),
            tensor(problem.z_goal),
            None if problem.metric is None else tensor(problem.metric),
            tensor(low),
            tensor(high),
            None if problem.economic is None else tensor(problem.economic),
        )


@dataclass(frozen=True)
class PlanningCost:
    """The objective above for one planner's settings and constraints."""

    move_weight: float
    slack_weight: float
    limits: Constraints
    move_scale: np.ndarray  # (A,) normalised, the move counted as one

    @classmethod
    def of(cls, settings: PlannerSettings, limits: Constraints) -> PlanningCost:
        scale = limits.rate if settings.move_scale is None else np.array(settings.move_scale)
        if scale.shape != limits.rate.shape:
            raise ValueError(f"move scale of {scale.shape} for {limits.rate.shape} actuators")
        return cls(settings.move_weight, settings.slack_weight, limits, scale)

    # -- CasADi: one stage's terms, for the NLP planners --------------------------------
    @staticmethod
    def casadi_tracking(
        z: ca.SX | ca.MX, z_goal: ca.SX | ca.MX, metric: ca.SX | ca.MX
    ) -> ca.SX | ca.MX:
        return ca.sumsqr(metric @ (z - z_goal))

    def casadi_move(self, u: ca.SX | ca.MX, before: ca.SX | ca.MX) -> ca.SX | ca.MX:
        return self.move_weight * ca.sumsqr((u - before) / ca.DM(self.move_scale))

    def casadi_slack(self, slack: ca.SX | ca.MX) -> ca.SX | ca.MX:
        return self.slack_weight * ca.sum1(slack)

    @staticmethod
    def casadi_economic(
        economic: ca.SX | ca.MX, u: ca.SX | ca.MX | None, z: ca.SX | ca.MX | None
    ) -> ca.SX | ca.MX:
        """e_u . u + e_z . z for `economic` = [e_u; e_z] (either part left out: None)."""
        a = u.numel() if u is not None else economic.numel() - z.numel()
        term = 0 if u is None else ca.dot(economic[:a], u)
        return term if z is None else term + ca.dot(economic[a:], z)

    def casadi_stage(
        self,
        z: ca.SX | ca.MX,
        z_goal: ca.SX | ca.MX,
        metric: ca.SX | ca.MX,
        u: ca.SX | ca.MX,
        before: ca.SX | ca.MX,
        slack: ca.SX | ca.MX,
        economic: ca.SX | ca.MX | None = None,
    ) -> ca.SX | ca.MX:
        """Stage k's whole cost: tracking of z_k, the move u_k - u_{k-1}, the slack s_k,
        and the economic push on u_k and z_k (`economic`: [e_u; e_z], None: none)."""
        cost = (
            self.casadi_tracking(z, z_goal, metric)
            + self.casadi_move(u, before)
            + self.casadi_slack(slack)
        )
        return cost if economic is None else cost + self.casadi_economic(economic, u, z)

    # -- numpy float64: the exact cost, and its Gauss-Newton least-squares form -----------
    def numpy(self, problem: PlanningProblem, U: np.ndarray, Z: np.ndarray, Y: np.ndarray) -> float:
        """J for moves U (H, A), embeddings Z (D, H) and limited readouts Y (L, H), each
        slack at its optimum (the violation)."""
        lim = self.limits
        moves = np.diff(np.vstack([problem.u_prev, U]), axis=0) / self.move_scale
        cost = float((problem.weighted(Z - problem.z_goal[:, None]) ** 2).sum())
        cost += self.move_weight * float((moves**2).sum())
        if len(lim.limit_rows):
            low, high = problem.sensor_bounds(lim)
            over = np.maximum(Y - high[:, None], low[:, None] - Y)
            cost += self.slack_weight * float(np.maximum(over, 0.0).sum())
        if problem.economic is not None:
            e_u, e_z = problem.economic_parts()
            cost += float(e_u @ U.sum(axis=0)) + float(e_z @ Z.sum(axis=1))
        return cost

    def move_least_squares(self, horizon: int) -> np.ndarray:
        """M (A*H, A*H) with the move term = |M vec(U) - c|^2 (U stage-major; c from
        `move_offset`)."""
        a = len(self.move_scale)
        n_u = a * horizon
        difference = np.eye(n_u) - np.eye(n_u, k=-a)  # rows u_k - u_{k-1}
        return np.sqrt(self.move_weight) * difference / np.tile(self.move_scale, horizon)[:, None]

    def move_offset(self, u_prev: np.ndarray, horizon: int) -> np.ndarray:
        """c of `move_least_squares`: the first move is taken from u_prev."""
        a = len(self.move_scale)
        c = np.zeros(a * horizon)
        c[:a] = np.sqrt(self.move_weight) * u_prev / self.move_scale
        return c

    # -- torch float32, batched: the sampling planners and the coarse level ----------------
    @cached_property
    def _move_share(self) -> torch.Tensor:
        """The move scale as a share of the rate limit (made once per planner)."""
        return torch.as_tensor(self.move_scale / self.limits.rate)

    def torch(
        self,
        u: torch.Tensor,
        z: torch.Tensor,
        y: torch.Tensor | None,
        problem: TorchProblem,
        rate: torch.Tensor,
        stage_weight: float = 1.0,
    ) -> torch.Tensor:
        """J per sample for moves u (S, H, A), embeddings z (S, H, D) and limited readouts
        y (S, H, L) (None without limited sensors); `rate` the rate limits as a tensor (a
        coarse level's, stretched), which the move scale shrinks as it does the limits'."""
        cost = stage_weight * weighted_distance(z, problem.z_goal, problem.metric).sum(dim=1)
        du = torch.diff(torch.cat([problem.u_prev.expand(u.shape[0], 1, -1), u], dim=1), dim=1)
        scale = rate * self._move_share.to(rate.dtype)
        cost = cost + self.move_weight * ((du / scale) ** 2).sum(dim=(1, 2))
        if y is not None:
            violation = torch.clamp_min(torch.maximum(y - problem.y_high, problem.y_low - y), 0.0)
            cost = cost + self.slack_weight * stage_weight * violation.sum(dim=(1, 2))
        if problem.economic is not None:
            a = u.shape[-1]
            cost = cost + (u.sum(dim=1) @ problem.economic[:a])
            cost = cost + stage_weight * (z.sum(dim=1) @ problem.economic[a:])
        return cost
