"""`cem` and `mppi`: the classic JEPA sampling planners, batched in torch.

Every sampled sequence is projected onto the actuator bounds and rate limits before it is
scored (`project_moves_torch`), so every candidate is feasible for the actuators; sensor
limits enter through the slack penalty of the shared objective (`PlanningCost.torch`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..twin_model import Twin
from .constraints import Constraints, TorchLimits, project_moves_torch
from .cost import PlanningCost, TorchProblem
from .problem import PlannerSettings, PlanningProblem, PlanResult, failed_plan, problem_error

CEM_SAMPLES, CEM_ELITES, CEM_ITERATIONS = 256, 24, 6
MPPI_SAMPLES, MPPI_ITERATIONS = 256, 4
DEADLINE_SHARE = 0.5
"""Iterating stops once a plan has used this share of the deadline (as the RTI planner's
iterations do): the best sequence so far goes out, not a deadline overrun."""


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Torch on one thread while planning (torch keeps its OpenMP thread count per calling
    thread, so other threads keep theirs). The batches here are small and gain little
    from intra-op threads, and on a loaded 2-core machine OpenMP threads waiting on each
    other made a default CEM plan on a CSTR twin take 2,076 ms median and 12,959 ms p99
    with two threads against 143 and 162 ms with one (load average 16)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class SamplingPlanner:
    """What CEM and MPPI share: the problem's tensors, the projection, the batched score,
    the warm start (the last plan shifted by one sample) and the failed plan."""

    name = "sampling"

    def __init__(
        self,
        twin: Twin,
        settings: PlannerSettings | None = None,
        samples: int = CEM_SAMPLES,
        iterations: int = CEM_ITERATIONS,
        seed: int = 0,
    ) -> None:
        if samples < 2 or iterations < 1:
            raise ValueError(
                f"a sampling planner needs samples >= 2 and iterations >= 1 "
                f"(got {samples} and {iterations})"
            )
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self.cost = PlanningCost.of(self.settings, self.limits)
        self.samples, self.iterations = samples, iterations
        self.generator = torch.Generator().manual_seed(seed)
        self._torch_limits = TorchLimits.of(self.limits)
        self._rows = self.limits.limit_rows.tolist()
        self._mean: torch.Tensor | None = None
        self._pinned: torch.Tensor | None = None  # the current problem's, NaN where free

    def reset(self) -> None:
        self._mean = None

    def _start(self, problem: PlanningProblem) -> tuple[TorchProblem, torch.Tensor]:
        """The problem as tensors and the warm-started mean (H, A)."""
        horizon, a = self.settings.horizon, len(self.limits.u_low)
        tensors = TorchProblem.of(problem, self.limits)
        self._pinned = (
            None if problem.pinned is None else torch.as_tensor(problem.pinned, dtype=torch.float32)
        )
        if self._mean is None:
            mean = tensors.u_prev.expand(horizon, a).clone()
        else:
            mean = torch.cat([self._mean[1:], self._mean[-1:]])
        return tensors, mean

    def _candidates(
        self, mean: torch.Tensor, std: torch.Tensor, u_prev: torch.Tensor
    ) -> torch.Tensor:
        """`samples` sequences around the mean, the mean itself first, all projected."""
        horizon, a = mean.shape
        noise = torch.randn(self.samples, horizon, a, generator=self.generator)
        raw = mean + std * noise
        raw[0] = mean  # the incumbent always competes
        return self.project(raw, u_prev)

    def project(self, u: torch.Tensor, u_prev: torch.Tensor) -> torch.Tensor:
        return project_moves_torch(u, u_prev, self._torch_limits, self._pinned)

    @torch.no_grad()
    def score(self, u: torch.Tensor, problem: TorchProblem) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared objective for each sequence in u (S, H, A), and its embeddings."""
        model = self.twin.model
        z = model.predictor.rollout(problem.z0.expand(u.shape[0], -1), u)
        y = model.readout(z)[..., self._rows] if self._rows else None
        return self.cost.torch(u, z, y, problem, self._torch_limits.rate), z

    def _failed(self, problem: PlanningProblem, started: float, why: str) -> PlanResult:
        self.reset()
        return failed_plan(
            problem,
            self.limits,
            self.settings.horizon,
            self.twin.config.embed_dim,
            started,
            f"{self.name}: {why}",
        )

    def _out_of_time(self, started: float, done: int) -> bool:
        """After at least one iteration: has the plan used its share of the deadline?"""
        elapsed_ms = (time.perf_counter() - started) * 1e3
        return done > 0 and elapsed_ms > DEADLINE_SHARE * self.settings.deadline_ms

    def _message(self, done: int, started: float) -> str:
        if done == self.iterations or not self._out_of_time(started, done):
            return self.name
        return (
            f"{self.name}: stopped early for the deadline ({done} of {self.iterations} iterations)"
        )

    def plan(self, problem: PlanningProblem) -> PlanResult:
        start = time.perf_counter()
        why = problem_error(
            problem,
            self.limits,
            (self.twin.config.embed_dim, len(self.limits.u_low)),
            self.settings.horizon,
        )
        if why is not None:
            return self._failed(problem, start, why)
        with single_threaded_torch():
            return self._plan(problem, start)

    def _plan(self, problem: PlanningProblem, start: float) -> PlanResult:
        raise NotImplementedError  # CEM and MPPI search in their own ways


class CEMPlanner(SamplingPlanner):
    """Cross-entropy method over action sequences: sample around the mean, refit the mean
    and spread to the elites, keep the best sequence seen."""

    name = "cem"

    def __init__(
        self,
        twin: Twin,
        settings: PlannerSettings | None = None,
        samples: int = CEM_SAMPLES,
        elites: int = CEM_ELITES,
        iterations: int = CEM_ITERATIONS,
        seed: int = 0,
    ) -> None:
        super().__init__(twin, settings, samples, iterations, seed)
        if not 2 <= elites <= samples:
            raise ValueError(f"CEM needs 2 <= elites <= samples (got {elites}, {samples})")
        self.elites = elites

    def _plan(self, problem: PlanningProblem, start: float) -> PlanResult:
        horizon, a = self.settings.horizon, len(self.limits.u_low)
        tensors, mean = self._start(problem)
        std = torch.as_tensor(self.limits.rate * 3.0, dtype=torch.float32).expand(horizon, a)
        best_u, best_cost, best_z = mean, float("inf"), None
        done = 0
        while done < self.iterations and not self._out_of_time(start, done):
            done += 1
            u = self._candidates(mean, std, tensors.u_prev)
            cost, z = self.score(u, tensors)
            order = torch.argsort(cost)[: self.elites]
            if float(cost[order[0]]) < best_cost:
                best_cost, best_u, best_z = float(cost[order[0]]), u[order[0]], z[order[0]]
            elite = u[order]
            mean, std = elite.mean(dim=0), elite.std(dim=0).clamp_min(1e-3)
        if best_z is None:  # every candidate scored NaN or inf: nothing to trust
            return self._failed(problem, start, "no finite cost")
        self._mean = best_u
        return PlanResult(
            True,
            best_u.numpy().astype(float),
            best_z.numpy().astype(float),
            best_cost,
            (time.perf_counter() - start) * 1e3,
            message=self._message(done, start),
            stats={"iterations": float(done)},
        )


class MPPIPlanner(SamplingPlanner):
    """Model-predictive path integral control (the PLDM / TD-MPC2 planner).

    Each iteration perturbs the mean sequence with Gaussian noise (a multiple of the rate
    limit), projects the samples onto bounds and rate limits, and moves the mean to the
    samples' average weighted by exp(-cost / temperature). The temperature is relative to
    the spread of this batch's costs, so the same setting works whatever the cost's scale.
    A weighted average of feasible sequences is feasible (the set is convex), so the mean
    keeps bounds and rate limits too. Returns the better of the final mean and the best
    sample seen.
    """

    name = "mppi"

    def __init__(
        self,
        twin: Twin,
        settings: PlannerSettings | None = None,
        samples: int = MPPI_SAMPLES,
        iterations: int = MPPI_ITERATIONS,
        temperature: float = 0.1,
        noise_rate_multiple: float = 2.0,
        seed: int = 0,
    ) -> None:
        super().__init__(twin, settings, samples, iterations, seed)
        self.temperature, self.noise_rate_multiple = temperature, noise_rate_multiple

    def _plan(self, problem: PlanningProblem, start: float) -> PlanResult:
        horizon, a = self.settings.horizon, len(self.limits.u_low)
        tensors, mean = self._start(problem)
        std = torch.as_tensor(
            self.limits.rate * self.noise_rate_multiple, dtype=torch.float32
        ).expand(horizon, a)
        best: tuple[float, torch.Tensor, torch.Tensor] | None = None
        done = 0
        while done < self.iterations and not self._out_of_time(start, done):
            done += 1
            u = self._candidates(mean, std, tensors.u_prev)
            cost, z = self.score(u, tensors)
            finite = torch.isfinite(cost)
            if not bool(finite.any()):
                break
            cost = torch.where(finite, cost, torch.full_like(cost, float("inf")))
            lowest = int(torch.argmin(cost))
            if best is None or float(cost[lowest]) < best[0]:
                best = (float(cost[lowest]), u[lowest], z[lowest])
            excess = cost - cost[lowest]
            scale = torch.quantile(excess[finite], 0.5).clamp_min(1e-9) * self.temperature
            weights = torch.softmax(-excess / scale, dim=0)
            mean = (weights[:, None, None] * u).sum(dim=0)
        if best is None:
            return self._failed(problem, start, "no finite cost")
        final = self.project(mean.unsqueeze(0), tensors.u_prev)
        cost, z = self.score(final, tensors)
        if bool(torch.isfinite(cost[0])) and float(cost[0]) <= best[0]:
            best = (float(cost[0]), final[0], z[0])
        self._mean = best[1]
        return PlanResult(
            True,
            best[1].numpy().astype(float),
            best[2].numpy().astype(float),
            best[0],
            (time.perf_counter() - start) * 1e3,
            message=self._message(done, start),
            stats={"iterations": float(done)},
        )
