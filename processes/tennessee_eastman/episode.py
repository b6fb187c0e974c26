"""Tennessee Eastman closed-loop episodes, their metrics, and the process contract
(processes.base.ProcessModule)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from rich.progress import track

from twin.records import EpisodeResult, EventKind, SafetyEvent, StepRecord
from twin.safety import Fallback

from ..base import (
    CONTROLLER_ROWS,
    Controller,
    SummaryRow,
    TrainingRecipe,
    plan_time_metrics,
    rate_clip,
)
from .baseline import RickerBaseline
from .plant import (
    BASE_SETPOINTS,
    HARD_LIMITS,
    MEAS_INDEX,
    MV_HIGH,
    MV_LOW,
    MV_NAMES,
    RATE_PER_SAMPLE,
    SAMPLE_PERIOD_H,
    SAMPLE_PERIOD_S,
    TEPPlant,
    idv_vector,
)

# -- closed-loop episodes -----------------------------------------------------------------

EPISODE_HOURS = 8.0
IDV_START_H = 1.0

Policy = Callable[[TEPPlant, float, dict[str, float], dict[str, float]], StepRecord]
"""(plant, time_s, measurements, setpoints) -> the step's record with applied actuators."""


def baseline_policy(overrides: bool = True) -> Policy:
    """Ricker's decentralised PI (tep-studio), run at the 36 s sample."""
    baseline = RickerBaseline(overrides=overrides)

    def act(
        plant: TEPPlant, time_s: float, meas: dict[str, float], setpoints: dict[str, float]
    ) -> StepRecord:
        start = time.perf_counter()
        mv = baseline.act(meas, setpoints, plant.mv)
        actuators = dict(zip(MV_NAMES, map(float, mv), strict=True))
        return StepRecord(
            0,
            time_s,
            meas,
            dict(setpoints),
            actuators,
            solve_ms=(time.perf_counter() - start) * 1e3,
        )

    return act


def oracle_policy() -> Policy | None:
    """None: no oracle for this plant (see the module docstring)."""
    return None


def baseline_fallback(overrides: bool = True) -> Fallback:
    """The PI scheme as the twin's fallback: bumpless from the applied valves, and it holds
    a missing measurement at its last good value (all valves while none has been seen)."""
    return RickerBaseline(overrides=overrides)


def twin_policy(controller: Controller) -> Policy:
    """The twin's MPC. The plant reports its valve positions with the measurements (as a
    DCS reads them back), so rate limits, the window and a takeover by the fallback start
    from the valves as they are, not from the spec's rounded nominal values."""

    def act(
        plant: TEPPlant, time_s: float, meas: dict[str, float], setpoints: dict[str, float]
    ) -> StepRecord:
        valves = dict(zip(MV_NAMES, map(float, plant.mv), strict=True))
        return controller.step(time_s, {**meas, **valves}, setpoints)

    return act


def _margins(meas: Mapping[str, float]) -> dict[str, float]:
    """Distance of each limited sensor to its nearest limit (negative: beyond it)."""
    out = {}
    for name, (low, high) in HARD_LIMITS.items():
        sides = [
            high - meas[name] if high is not None else math.inf,
            meas[name] - low if low is not None else math.inf,
        ]
        out[name] = float(min(sides))
    return out


def _applied(record: StepRecord, previous: np.ndarray) -> tuple[np.ndarray, list[SafetyEvent]]:
    """The policy's valves, held where missing and kept within bounds and rate limits."""
    out, events = previous.copy(), []
    for i, name in enumerate(MV_NAMES):
        proposed = record.actuators.get(name)
        if proposed is None or not math.isfinite(proposed):
            events.append(
                SafetyEvent(EventKind.INVALID_PROPOSAL, "held by the episode runner", name)
            )
            continue
        out[i] = rate_clip(float(proposed), float(previous[i]), RATE_PER_SAMPLE, MV_LOW, MV_HIGH)
        if abs(out[i] - proposed) > 1e-9:
            events.append(
                SafetyEvent(
                    EventKind.RATE_LIMITED,
                    f"{proposed:.6g} -> {out[i]:.6g} % by the episode runner",
                    name,
                )
            )
    return out, events


def run_episode(
    policy: Policy,
    controller_name: str,
    seed: int = 7,
    config: dict[str, Any] | None = None,
    show_progress: bool = False,
    idv: int | Sequence[int] | None = None,
    idv_start_h: float = IDV_START_H,
    hours: float = EPISODE_HOURS,
    setpoints: Mapping[str, float] | None = None,
) -> EpisodeResult:
    """Drive the plant from the base case with `policy` for `hours`; IDV(s) from `idv_start_h`.

    Setpoints are the base case unless given. The episode ends early at a shutdown.
    Scored on the true state after each move (see `episode_metrics`).
    """
    disturbance = idv_vector(idv)
    targets = {**BASE_SETPOINTS, **(setpoints or {})}
    plant = TEPPlant(seed=seed)
    steps: list[StepRecord] = []
    true_rows: list[np.ndarray] = []
    costs: list[float] = []
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    for k in track(
        range(n), description=f"closed loop ({controller_name})", disable=not show_progress
    ):
        if plant.time_s >= idv_start_h * 3600.0 - 1e-6:
            plant.idv = disturbance
        meas = plant.measure()
        record = policy(plant, plant.time_s, meas, dict(targets))
        record.step = k
        mv, events = _applied(record, plant.mv)
        record.actuators = dict(zip(MV_NAMES, map(float, mv), strict=True))
        record.events = [*record.events, *events]
        record.margins = _margins(meas)
        plant.step(mv)
        steps.append(record)
        true_rows.append(plant.true_measurements.copy())
        costs.append(plant.cost_per_h)
        if plant.shutdown:
            break
    numbers = [] if idv is None else [idv] if isinstance(idv, int) else list(idv)
    metrics = episode_metrics(
        np.array(true_rows), np.array(costs), targets, steps, shutdown=bool(plant.shutdown)
    )
    episode_config = {
        "seed": seed,
        "idv": numbers,
        "idv_start_h": idv_start_h,
        "hours": hours,
        "setpoints": targets,
        "shutdown": plant.shutdown,
        **(config or {}),
    }
    return EpisodeResult("tennessee_eastman", controller_name, episode_config, steps, metrics)


def episode_metrics(
    true: np.ndarray,
    cost_per_h: np.ndarray,
    setpoints: Mapping[str, float],
    steps: list[StepRecord],
    shutdown: bool = False,
) -> dict[str, float]:
    """Scores on the true measurements after each move (rows of `true`, XMEAS order).

    cost: mean operating cost [$/h] over the samples run; violations: samples with any
    interlock variable beyond its limit; worst_violation: the largest excess, in that
    limit's unit.
    """
    excess = np.zeros(len(true))
    for name, (low, high) in HARD_LIMITS.items():
        values = true[:, MEAS_INDEX[name]]
        if high is not None:
            excess = np.maximum(excess, values - high)
        if low is not None:
            excess = np.maximum(excess, low - values)

    def column(name: str) -> np.ndarray:
        return true[:, MEAS_INDEX[name]]

    return {
        "cost": float(cost_per_h.mean()),
        "operating_cost_usd": float(cost_per_h.sum() * SAMPLE_PERIOD_H),
        "violations": int((excess > 0).sum()),
        "worst_violation": float(excess.max(initial=0.0)),
        "shutdown": int(shutdown),
        "hours_run": float(len(true) * SAMPLE_PERIOD_H),
        "production_mean_m3h": float(column("stripper_underflow").mean()),
        "mean_abs_error_production_m3h": float(
            np.abs(column("stripper_underflow") - setpoints["stripper_underflow"]).mean()
        ),
        "mean_abs_error_pressure_kPa": float(
            np.abs(column("reactor_pressure") - setpoints["reactor_pressure"]).mean()
        ),
        "max_reactor_pressure_kPa": float(column("reactor_pressure").max()),
        "max_reactor_temperature_C": float(column("reactor_temperature").max()),
        **plan_time_metrics(steps),
    }


# -- the process contract (processes.base.ProcessModule) ---------------------------------

EPISODE_SUMMARY = (
    SummaryRow("cost", "mean operating cost", "$/h"),
    SummaryRow("production_mean_m3h", "mean production", "m³/h"),
    SummaryRow("mean_abs_error_pressure_kPa", "mean |P - P_sp|", "kPa"),
    SummaryRow("max_reactor_pressure_kPa", "max reactor pressure", "kPa", ".0f"),
    SummaryRow("shutdown", "shutdown", "", "d"),
    SummaryRow("hours_run", "hours before end or shutdown", "h", ".2f"),
    SummaryRow("violations", "samples beyond an interlock", "", "d"),
    *CONTROLLER_ROWS,
)

# An embedding of 32: the default 16 held 41 measurements at an effective rank of 14.5 of
# 16, saturated, and read even the present back at 0.090 of range. With 32 the error at
# 1 / 10 / 20 / 50 steps fell from 0.090 / 0.107 / 0.119 / 0.146 to 0.056 / 0.082 / 0.093 /
# 0.113 (rank 26.5); 48 and 64 gained a little more (0.078 and 0.076 at 10 steps) for a
# larger plan, two predictor layers alone nothing (0.1069 -> 0.1078), both together
# 0.080 (benchmarks/prediction.py budget, one twin each).
TRAINING_RECIPE = TrainingRecipe(hours=72.0, epochs=20, max_minutes=5.0, embed_dim=32)

BENCHMARK_CASES: tuple[dict[str, Any], ...] = (
    {},  # the base case
    {"idv": 1},  # A/C feed ratio step
    {"idv": 4},  # reactor cooling water inlet temperature step
    {"idv": 6},  # A feed loss: the baseline ends near the 3000 kPa trip
)
