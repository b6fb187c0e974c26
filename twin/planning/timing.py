"""How long a planner takes on a twin, measured before a loop starts, against its budget.

A plan slower than the planner's deadline is a fallback (the controller discards it), and
a loop must finish a step within the process's sample period. `time_planner` runs a short
closed sequence on the twin itself (plan, apply the first move, step the twin's predictor;
the goal is a state the twin has been in, and it moves halfway), so warm starts act as in
service, and reports the wall time per plan: median and p99 (with a handful of plans the
p99 is close to the slowest). `PlannerTiming.fits` asks the p99 to stay within a share of
the budget, the shorter of deadline and sample period: the step also encodes, checks and
stores, and the machine's load varies. `planner_that_fits` times a planner by name and, for
the sampling planners, steps samples and iterations down until one fits.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..twin_model import Twin
from .constraints import Constraints, project_moves
from .factory import make_planner
from .problem import Planner, PlannerSettings, PlanningProblem
from .sampling import CEMPlanner, MPPIPlanner

TIMING_PLANS = 10
BUDGET_SHARE = 0.5
MIN_SAMPLES, MIN_ITERATIONS = 32, 2
SHRINK_ROUNDS = 4


@dataclass(frozen=True)
class PlannerTiming:
    """Wall time per plan of one planner on one twin, and the budget it is judged by."""

    planner: str
    plans: int
    median_ms: float
    p99_ms: float
    max_ms: float
    failed: int  # plans that came back ok=False
    deadline_ms: float
    sample_period_s: float
    budget_share: float = BUDGET_SHARE

    @property
    def budget_ms(self) -> float:
        return min(self.deadline_ms, self.sample_period_s * 1e3)

    @property
    def fits(self) -> bool:
        return self.p99_ms <= self.budget_share * self.budget_ms

    def summary(self) -> str:
        """One line for the loop's start: what the planner takes and what it must fit."""
        verdict = "within" if self.fits else "over"
        share = f"{self.budget_share:.0%} of " if self.budget_share < 1 else ""
        return (
            f"planner {self.planner} takes {self.p99_ms:.0f} ms p99 (median "
            f"{self.median_ms:.0f} ms, {self.plans} plans) for this twin, {verdict} "
            f"{share}its {self.budget_ms:.0f} ms budget (deadline "
            f"{self.deadline_ms:.0f} ms, sample period {self.sample_period_s:g} s)"
        )


def time_planner(
    planner: Planner,
    twin: Twin,
    plans: int = TIMING_PLANS,
    budget_share: float = BUDGET_SHARE,
    seed: int = 0,
) -> PlannerTiming:
    """Time `plans` consecutive plans of `planner` on `twin` (after one untimed plan, which
    pays one-off costs); the planner is reset afterwards, so a loop starts it cold."""
    if plans < 1 or not 0.0 < budget_share <= 1.0:
        raise ValueError("time_planner needs plans >= 1 and 0 < budget_share <= 1")
    settings = planner.settings
    lim = Constraints.from_twin(twin, settings.limit_margin)
    bank = twin.bank.embeddings.double().numpy()
    rng = np.random.default_rng(seed)
    start, first_goal, second_goal = rng.choice(len(bank), size=3, replace=len(bank) < 3)
    z, u_prev = bank[start].copy(), (lim.u_low + lim.u_high) / 2
    times, failed = [], 0
    for k in range(plans + 1):
        goal = bank[first_goal if k <= plans // 2 else second_goal]
        began = time.perf_counter()
        result = planner.plan(PlanningProblem(z, u_prev, goal))
        if k:
            times.append((time.perf_counter() - began) * 1e3)
            failed += int(not result.ok)
        move = result.actions[:1] if result.ok else u_prev[None, :]
        u_prev = project_moves(np.asarray(move, dtype=float), u_prev, lim)[0]
        z = _step(twin, z, u_prev)
    _reset(planner)
    values = np.asarray(times)
    return PlannerTiming(
        planner.name,
        plans,
        float(np.median(values)),
        float(np.percentile(values, 99)),
        float(values.max()),
        failed,
        settings.deadline_ms,
        twin.spec.sample_period_s,
        budget_share,
    )


def planner_that_fits(
    name: str,
    twin: Twin,
    settings: PlannerSettings | None = None,
    plans: int = TIMING_PLANS,
    budget_share: float = BUDGET_SHARE,
) -> tuple[Planner, PlannerTiming]:
    """The planner by name and its timing; a sampling planner (`cem`, `mppi`) over its
    budget is rebuilt with fewer iterations, then fewer samples, in proportion to how far
    over it is, until it fits or reaches the floor (`MIN_ITERATIONS`, `MIN_SAMPLES`). The
    timing says whether the planner returned fits: the caller refuses or warns."""
    planner = make_planner(name, twin, settings)
    timing = time_planner(planner, twin, plans, budget_share)
    for _ in range(SHRINK_ROUNDS):
        if timing.fits or not isinstance(planner, CEMPlanner | MPPIPlanner):
            break
        smaller = _smaller_sampler(planner, timing)
        if smaller is None:
            break
        planner = smaller
        timing = time_planner(planner, twin, plans, budget_share)
    return planner, timing


def _smaller_sampler(
    planner: CEMPlanner | MPPIPlanner, timing: PlannerTiming
) -> CEMPlanner | MPPIPlanner | None:
    """The same planner with its work (samples x iterations) scaled to fit the budget with
    a fifth to spare, iterations first; None at the floor."""
    samples, iterations = planner.samples, planner.iterations
    scale = 0.8 * timing.budget_share * timing.budget_ms / max(timing.p99_ms, 1e-9)
    fewer_iterations = max(MIN_ITERATIONS, min(iterations, math.floor(iterations * scale)))
    work = samples * iterations * scale
    fewer_samples = max(MIN_SAMPLES, min(samples, math.floor(work / fewer_iterations)))
    if (fewer_samples, fewer_iterations) == (samples, iterations):
        return None
    twin, settings = planner.twin, planner.settings
    seed = int(planner.generator.initial_seed())
    if isinstance(planner, CEMPlanner):
        elites = max(2, round(planner.elites * fewer_samples / samples))
        return CEMPlanner(twin, settings, fewer_samples, elites, fewer_iterations, seed)
    return MPPIPlanner(
        twin,
        settings,
        fewer_samples,
        fewer_iterations,
        planner.temperature,
        planner.noise_rate_multiple,
        seed,
    )


def _step(twin: Twin, z: np.ndarray, u: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z_next = twin.model.predictor(
            torch.as_tensor(z, dtype=torch.float32)[None],
            torch.as_tensor(u, dtype=torch.float32)[None],
        )
    return z_next[0].double().numpy()


def _reset(planner: Planner) -> None:
    reset = getattr(planner, "reset", None)  # every planner here has one; the protocol not
    if callable(reset):
        reset()
