"""What every process module offers, so the CLI, the API and the benchmarks need no special cases.

A process module (``processes/<name>.py``) is a plain module, not a class: a simulator
with its tag spec, an excitation-data generator, a baseline controller, an oracle where
one exists, and a closed-loop episode runner that scores on the *true* plant state.
`ProcessModule` names that contract; `check_module` enforces it when a module registers.

Episode metrics share a core every benchmark table reads (`CORE_METRICS`); each process
adds its own (time in range, operating cost, ...) and lists what the CLI prints in
`EPISODE_SUMMARY`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import pandas as pd

from twin.records import FALLBACK_REASONS, EpisodeResult, EventKind, StepRecord, StepStatus
from twin.safety import Fallback
from twin.spec import ProcessSpec
from twin.train import TrainConfig

Policy = Callable[..., StepRecord]
"""A controller inside an episode; each module documents the arguments its runner passes."""


class Controller(Protocol):
    """What an episode runner needs of the controller it is given (`twin_policy`): a
    process never builds one (`twin.assembly.build_controller` does)."""

    spec: ProcessSpec
    fallback: Fallback | None

    def step(
        self,
        time_s: float,
        measurements: Mapping[str, float | None],
        setpoints: Mapping[str, float],
    ) -> StepRecord: ...


CORE_METRICS = (
    "cost",
    "violations",
    "worst_violation",
    "fallbacks",
    "plan_ms_median",
    "plan_ms_p99",
)
"""Keys every `run_episode` result carries: cost (the process's own economic/tracking
cost, lower is better), violations (samples beyond a hard sensor limit on the true state),
worst_violation (largest excess, in the limit's unit, normalised by nothing), fallbacks
(steps on the baseline), plan_ms_median / plan_ms_p99 (controller time per step)."""


@dataclass(frozen=True)
class SummaryRow:
    """One line of the CLI's episode table: metric key, label, unit, format."""

    key: str
    label: str
    unit: str = ""
    fmt: str = ".2f"


CONTROLLER_ROWS = (
    SummaryRow("fallbacks", "fallback steps", "", "d"),
    SummaryRow("plan_ms_median", "planning median", "ms", ".1f"),
    SummaryRow("plan_ms_p99", "planning p99", "ms", ".1f"),
)
"""The rows of `plan_time_metrics`, which every EPISODE_SUMMARY ends with."""


@dataclass(frozen=True)
class TrainingRecipe:
    """How much excitation data and training a twin of this process needs (benchmarks, demo),
    and where its closed loop needs other than the default twin, which choice (the module
    says why)."""

    hours: float
    epochs: int
    max_minutes: float = 5.0
    predictor_layers: int | None = None  # None: JEPAConfig's default
    predicted_readout_weight: float | None = None  # None: TrainConfig's default
    embed_dim: int | None = None  # None: JEPAConfig's default

    def train_config(self, **fields: Any) -> TrainConfig:
        """TrainConfig's defaults with this recipe's model and loss choices, then `fields`."""
        config = TrainConfig()
        model = {
            name: value
            for name, value in (
                ("predictor_layers", self.predictor_layers),
                ("embed_dim", self.embed_dim),
            )
            if value is not None
        }
        if model:
            config = replace(config, model=replace(config.model, **model))
        if self.predicted_readout_weight is not None:
            config = replace(config, predicted_readout_weight=self.predicted_readout_weight)
        return replace(config, **fields)


class ProcessModule(Protocol):
    SPEC: ProcessSpec
    EPISODE_SUMMARY: Sequence[SummaryRow]
    TRAINING_RECIPE: TrainingRecipe

    def generate_training_log(
        self, hours: float, seed: int, show_progress: bool = False
    ) -> pd.DataFrame: ...

    def baseline_policy(self) -> Policy: ...

    def oracle_policy(self) -> Policy | None: ...

    def baseline_fallback(self) -> Fallback: ...

    def twin_policy(self, controller: Controller) -> Policy: ...

    def run_episode(
        self,
        policy: Policy,
        controller_name: str,
        seed: int = 7,
        config: dict[str, Any] | None = None,
        show_progress: bool = False,
    ) -> EpisodeResult: ...


REQUIRED = (
    "SPEC",
    "EPISODE_SUMMARY",
    "TRAINING_RECIPE",
    "generate_training_log",
    "baseline_policy",
    "oracle_policy",
    "baseline_fallback",
    "twin_policy",
    "run_episode",
)


def check_module(module: ModuleType) -> ModuleType:
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise TypeError(f"process module {module.__name__} lacks {', '.join(missing)}")
    return module


# -- shared pieces of excitation and scoring ---------------------------------------------


def aprbs_levels(
    rng: np.random.Generator, n: int, low: float, high: float, min_hold: int, max_hold: int
) -> np.ndarray:
    """Amplitude-modulated PRBS: random levels in [low, high] held for random durations."""
    out = np.empty(n)
    k = 0
    while k < n:
        hold = int(rng.integers(min_hold, max_hold + 1))
        out[k : k + hold] = rng.uniform(low, high)
        k += hold
    return out


def prbs_levels(
    rng: np.random.Generator, n: int, low: float, high: float, min_hold: int, max_hold: int
) -> np.ndarray:
    """Binary PRBS between two levels, each held for a random duration."""
    out = np.empty(n)
    k, level = 0, bool(rng.integers(0, 2))
    while k < n:
        hold = int(rng.integers(min_hold, max_hold + 1))
        out[k : k + hold] = high if level else low
        level = not level
        k += hold
    return out


def rate_clip(target: float, previous: float, max_step: float, low: float, high: float) -> float:
    """The actuator move a real valve allows: within max_step of the last value, then bounds."""
    return float(np.clip(np.clip(target, previous - max_step, previous + max_step), low, high))


def planning_times_ms(steps: Sequence[StepRecord]) -> list[float]:
    """Time per step of the steps on which the policy planned: stale steps and a twin's
    warm-up run no planner, and their 0 ms would flatter the median."""
    return [
        s.solve_ms
        for s in steps
        if s.status != StepStatus.STALE
        and not any(e.kind == EventKind.WARMING_UP for e in s.events)
    ]


def fallback_reasons(steps: Sequence[StepRecord]) -> dict[str, int]:
    """Fallback steps by their first recorded reason, and the steps on which the plant's
    own limit protection changed the move (those may be fallbacks or not)."""
    counts = {str(kind): 0 for kind in FALLBACK_REASONS}
    for step in steps:
        if step.status == StepStatus.FALLBACK:
            reason = next((e.kind for e in step.events if e.kind in counts), None)
            if reason is not None:
                counts[reason] += 1
    counts[str(EventKind.LIMIT_PROTECTION)] = sum(
        any(e.kind == EventKind.LIMIT_PROTECTION for e in s.events) for s in steps
    )
    return counts


def plan_time_metrics(steps: Sequence[StepRecord]) -> dict[str, float]:
    plan_ms = np.array(planning_times_ms(steps) or [0.0])
    return {
        "fallbacks": int(sum(s.status == StepStatus.FALLBACK for s in steps)),
        "plan_ms_median": float(np.median(plan_ms)),
        "plan_ms_p99": float(np.percentile(plan_ms, 99)),
    }


def benchmark_cases(module: ModuleType) -> list[dict[str, Any]]:
    """Extra keyword arguments for `run_episode`, one dict per benchmark case.

    Optional in a module (`BENCHMARK_CASES`): glucose runs one case per virtual patient,
    Tennessee Eastman one per disturbance; most processes have the single case `{}`.
    """
    return [dict(case) for case in getattr(module, "BENCHMARK_CASES", ({},))]
