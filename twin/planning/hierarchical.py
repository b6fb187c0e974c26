"""Hierarchical planning: the coarse predictor looks far ahead, the fine planner follows.

The twin's coarse predictor jumps `k = coarse_steps` samples per call, so a plan of
`blocks` coarse steps spans `blocks * k` samples (15 x 4 = 60 by default, three times and
more the fine horizon) for the price of `blocks` network calls. Each step:

1. **Coarse** (cross-entropy method, batched in torch): candidates are one actuator level
   per block; each is turned into a sample-by-sample sequence that ramps towards the level
   at most at the rate limit (so every candidate keeps bounds and rate limits), rolled out
   through the coarse predictor block by block and scored like the fine problem:
   distance of the coarse embeddings to the far goal (each weighing for the `k` samples it
   stands for; weighted by the problem's tracking metric when it has one), move
   suppression, and the sensor-limit penalty through the readout.
2. **Subgoal**: the coarse embedding at the first block end at or beyond the fine horizon,
   a state the coarse model says the plant can be in by then on the way to the goal.
3. **Fine**: `RTIPlanner` (the default `casadi` planner) solves its usual
   problem with the subgoal in place of the far goal, on the plain embedding distance:
   its hard bounds, rate limits and sensor-limit slacks are untouched, and its first move
   is the one applied.

Worth it where the effect of a move shows beyond the fine horizon: a flat planner then
sees mostly the cost of moving and too little of the benefit (`benchmarks/hierarchy.py`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..twin_model import Twin
from .constraints import Constraints, TorchLimits, project_moves_torch
from .cost import PlanningCost, TorchProblem
from .problem import PlannerSettings, PlanningProblem, PlanResult, failed_plan, problem_error
from .rti import RTIPlanner
from .sampling import single_threaded_torch


@dataclass(frozen=True)
class CoarseSettings:
    """The coarse search. `blocks=None`: enough blocks for 60 samples, and at least three
    times the fine horizon."""

    blocks: int | None = None
    samples: int = 128
    elites: int = 16
    iterations: int = 5
    seed: int = 0


@dataclass
class CoarsePlan:
    """What the coarse level proposed, normalised units."""

    actions: np.ndarray  # (blocks * k, A) sample-by-sample moves
    embeddings: np.ndarray  # (blocks, D) coarse embeddings after each block
    subgoal_block: int  # index into `embeddings` of the subgoal
    cost: float

    @property
    def subgoal(self) -> np.ndarray:
        return self.embeddings[self.subgoal_block]


class HierarchicalPlanner:
    """Coarse CEM over a long horizon for a subgoal, `RTIPlanner` tracking it (see module)."""

    name = "hierarchical"

    def __init__(
        self,
        twin: Twin,
        settings: PlannerSettings | None = None,
        coarse: CoarseSettings | None = None,
    ) -> None:
        if twin.config.coarse_steps <= 0:
            raise ValueError(
                "hierarchical planning needs a twin with a coarse predictor "
                "(JEPAConfig.coarse_steps > 0); this checkpoint has none"
            )
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.coarse_settings = coarse or CoarseSettings()
        self.k = twin.config.coarse_steps
        horizon = self.settings.horizon
        self.blocks = self.coarse_settings.blocks or max(
            math.ceil(60 / self.k), math.ceil(3 * horizon / self.k)
        )
        # the first block end at or past the fine horizon (never past the coarse plan)
        self.subgoal_block = min(math.ceil(horizon / self.k), self.blocks) - 1
        self.fine = RTIPlanner(twin, self.settings)
        self.limits: Constraints = self.fine.limits
        self.cost = PlanningCost.of(self.settings, self.limits)
        self._torch_limits = TorchLimits.of(self.limits)
        self.generator = torch.Generator().manual_seed(self.coarse_settings.seed)
        self.last_coarse: CoarsePlan | None = None
        self._levels: torch.Tensor | None = None  # warm start (blocks, A)

    def reset(self) -> None:
        self.fine.reset()
        self._levels, self.last_coarse = None, None
        self.generator.manual_seed(self.coarse_settings.seed)

    def plan(self, problem: PlanningProblem) -> PlanResult:
        start = time.perf_counter()
        why = problem_error(problem, self.limits, (self.fine.d, self.fine.a), self.settings.horizon)
        if why is not None:
            self.reset()
            return failed_plan(
                problem,
                self.limits,
                self.settings.horizon,
                self.fine.d,
                start,
                f"hierarchical: {why}",
            )
        with single_threaded_torch():
            coarse = self._coarse_plan(problem)
        coarse_ms = (time.perf_counter() - start) * 1e3
        if coarse is None:
            self.reset()
            result = self.fine.plan(problem)  # no usable subgoal: plan for the far goal
            result.message = f"hierarchical: coarse search found no finite cost; {result.message}"
            result.stats = {**result.stats, "coarse_ms": coarse_ms}
            result.solve_ms = (time.perf_counter() - start) * 1e3
            return result
        self.last_coarse = coarse
        # the tracking metric is built at the far goal and weighs its setpoint error; at a
        # subgoal it would chase the coarse model's readout error instead (CSTR benchmark,
        # seeds 7, 11, 13: cost 34.1 with it, 28.3 without), so it shapes the coarse search.
        # Pinned moves bind the fine plan, the one that goes out; the coarse search only
        # picks a subgoal and leaves them free. The economic push shapes both levels.
        fine = self.fine.plan(
            PlanningProblem(
                problem.z0,
                problem.u_prev,
                coarse.subgoal,
                limit_shift=problem.limit_shift,
                pinned=problem.pinned,
                economic=problem.economic,
            )
        )
        fine.solve_ms = (time.perf_counter() - start) * 1e3
        fine.message = f"hierarchical ({self.blocks}x{self.k} samples): {fine.message}"
        fine.stats = {**fine.stats, "coarse_ms": coarse_ms, "coarse_cost": coarse.cost}
        return fine

    # -- the coarse level ------------------------------------------------------------------
    def _coarse_plan(self, problem: PlanningProblem) -> CoarsePlan | None:
        s, a = self.coarse_settings, self.fine.a
        u_start = np.clip(problem.u_prev, self.limits.u_low, self.limits.u_high)
        tensors = TorchProblem.of(problem, self.limits, u_prev=u_start)
        low, high = self._torch_limits.u_low, self._torch_limits.u_high
        mean = self._warm_levels(tensors.u_prev[0])
        std = (high - low).expand(self.blocks, a) / 4.0
        best: tuple[float, torch.Tensor, torch.Tensor] | None = None
        for _ in range(s.iterations):
            noise = torch.randn(s.samples, self.blocks, a, generator=self.generator)
            levels = torch.clamp(mean + std * noise, low, high)
            levels[0] = mean  # the incumbent always competes
            actions = self.ramps(levels, tensors.u_prev)
            cost, z = self.score(actions, tensors)
            cost = torch.where(torch.isfinite(cost), cost, torch.full_like(cost, math.inf))
            order = torch.argsort(cost)[: s.elites]
            if math.isfinite(float(cost[order[0]])) and (
                best is None or float(cost[order[0]]) < best[0]
            ):
                i = int(order[0])
                best = (float(cost[i]), actions[i], z[i])
                self._levels = levels[i]
            finite = order[torch.isfinite(cost[order])]
            if len(finite) == 0:
                break
            mean = levels[finite].mean(dim=0)
            std = (
                levels[finite].std(dim=0, unbiased=False).clamp_min(0.02)
                if len(finite) > 1
                else std / 2
            )
        if best is None:
            return None
        return CoarsePlan(
            best[1].numpy().astype(float),
            best[2].numpy().astype(float),
            self.subgoal_block,
            best[0],
        )

    def _warm_levels(self, u_prev: torch.Tensor) -> torch.Tensor:
        """Last step's best levels shifted by one sample (a block is `k` samples, so each
        level moves 1/k of the way to its successor), or a hold on the first step."""
        if self._levels is None:
            return u_prev.expand(self.blocks, -1).clone()
        nxt = torch.cat([self._levels[1:], self._levels[-1:]])
        return self._levels + (nxt - self._levels) / self.k

    def ramps(self, levels: torch.Tensor, u_prev: torch.Tensor) -> torch.Tensor:
        """(S, blocks, A) levels -> (S, blocks * k, A) moves that head to each block's level
        at most at the rate limit, inside the bounds (from u_prev (1, A) inside them)."""
        return project_moves_torch(
            levels.repeat_interleave(self.k, dim=1), u_prev, self._torch_limits
        )

    @torch.no_grad()
    def score(
        self, actions: torch.Tensor, problem: TorchProblem
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared objective read at block ends: each coarse embedding stands for `k`
        samples (tracking and sensor slack weigh `k` times); the moves are sample by
        sample, as in the fine problem."""
        model = self.twin.model
        z = model.coarse_rollout(problem.z0.expand(actions.shape[0], -1), actions)
        rows = self.limits.limit_rows.tolist()
        y = model.readout(z)[..., rows] if rows else None
        return self.cost.torch(
            actions, z, y, problem, self._torch_limits.rate, stage_weight=self.k
        ), z
