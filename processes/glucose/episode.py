"""Glucose closed-loop episodes, their metrics, and the process contract
(processes.base.ProcessModule)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
from rich.progress import track

from twin.records import EpisodeResult, StepRecord

from ..base import (
    CONTROLLER_ROWS,
    SummaryRow,
    TrainingRecipe,
    plan_time_metrics,
)

with warnings.catch_warnings():  # simglucose imports pkg_resources, deprecated upstream
    warnings.simplefilter("ignore")
    from simglucose.analysis.risk import risk_index

from .baseline import Policy
from .plant import GlucoseSimulator, meal_plan, pump_guard
from .therapy import (
    ALL_PATIENTS,
    BG_HIGH,
    BG_LOW,
    BG_SEVERE_LOW,
    BG_VERY_HIGH,
    DEFAULT_PATIENT,
    HOURS_PER_SAMPLE,
    SAMPLE_PERIOD_S,
    SETPOINT_MG_DL,
    UNANNOUNCED_SHARE,
    check_patient,
    iob_limit,
)

# -- closed-loop episodes -----------------------------------------------------------------


def _deliver(
    record: StepRecord, sim: GlucoseSimulator, meas: dict[str, float], step: int, limit_u: float
) -> None:
    """Pass the policy's proposal through the pump, record what it delivered, step on."""
    applied, events = pump_guard(record.actuators, sim.applied, meas["IOB"], limit_u)
    record.step = step
    record.actuators = applied
    record.events = list(record.events) + events
    record.margins = {"CGM": meas["CGM"] - BG_LOW, "IOB": limit_u - meas["IOB"]}
    sim.step(applied["basal"], applied["bolus"])


def run_episode(
    policy: Policy,
    controller_name: str,
    seed: int = 7,
    config: dict[str, Any] | None = None,
    show_progress: bool = False,
    patient: str = DEFAULT_PATIENT,
    hours: float = 24.0,
    unannounced: bool = False,
    setpoint: float = SETPOINT_MG_DL,
    unannounced_share: float = UNANNOUNCED_SHARE,
) -> EpisodeResult:
    """One patient from midnight for `hours`, scored on true plasma glucose.

    `seed` draws the meals (RandomScenario) and the CGM noise; with `unannounced`, each
    meal goes unannounced with probability `unannounced_share`. Every proposal passes
    the pump's bounds and the patient's IOB limit before it is delivered.
    """
    limit = iob_limit(check_patient(patient))
    meals = meal_plan(hours, seed, unannounced, unannounced_share)
    sim = GlucoseSimulator(patient, seed, meals)
    steps: list[StepRecord] = []
    true_bg = [sim.bg]
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    for k in track(
        range(n),
        description=f"closed loop ({controller_name}, {patient})",
        disable=not show_progress,
    ):
        meas = sim.measure()
        record = policy(sim, sim.time_s, meas, setpoint)
        _deliver(record, sim, meas, k, limit)
        true_bg.append(sim.bg)
        steps.append(record)
    metrics = episode_metrics(np.array(true_bg), steps)
    metrics["max_iob_u"] = max((limit - s.margins["IOB"] for s in steps), default=0.0)
    episode_config = {
        "patient": patient,
        "hours": hours,
        "unannounced": unannounced,
        "setpoint": setpoint,
        "seed": seed,
        "iob_limit_u": limit,
        "meals": [asdict(m) for m in meals],
        **(config or {}),
    }
    if unannounced:
        episode_config["unannounced_share"] = unannounced_share
    return EpisodeResult("glucose", controller_name, episode_config, steps, metrics)


RISK_BG_RANGE = (20.0, 600.0)  # mg/dL, the meter range Kovatchev's transform was built on


def risk_indices(bg: np.ndarray) -> tuple[float, float]:
    """Kovatchev's LBGI and HBGI: simglucose's per-reading risk, averaged over ALL readings.

    (`risk_index` over a whole array averages the low risk over the low readings only.)
    BG is clipped to 20-600 mg/dL first: below 1 mg/dL the log transform turns negative
    and simglucose would score the deepest hypoglycaemia as no risk at all.
    """
    clipped = np.clip(bg, *RISK_BG_RANGE)
    per_reading = np.array([risk_index([value], 1)[:2] for value in clipped])
    return float(per_reading[:, 0].mean()), float(per_reading[:, 1].mean())


def episode_metrics(true_bg: np.ndarray, steps: list[StepRecord]) -> dict[str, float]:
    """Glycaemic outcome on true BG; cost = LBGI + HBGI (the BG risk index)."""
    lbgi, hbgi = risk_indices(true_bg)
    low = true_bg < BG_LOW
    insulin = [(s.actuators["basal"] * HOURS_PER_SAMPLE, s.actuators["bolus"]) for s in steps]
    basal_u, bolus_u = np.array(insulin).sum(axis=0) if insulin else (0.0, 0.0)
    return {
        "cost": lbgi + hbgi,
        "violations": int(low.sum()),
        "worst_violation": float(max(0.0, BG_LOW - true_bg.min())),
        "tir_pct": float(100.0 * ((true_bg >= BG_LOW) & (true_bg <= BG_HIGH)).mean()),
        "below_70_pct": float(100.0 * low.mean()),
        "below_54_pct": float(100.0 * (true_bg < BG_SEVERE_LOW).mean()),
        "above_180_pct": float(100.0 * (true_bg > BG_HIGH).mean()),
        "above_250_pct": float(100.0 * (true_bg > BG_VERY_HIGH).mean()),
        "lbgi": lbgi,
        "hbgi": hbgi,
        "mean_bg": float(true_bg.mean()),
        "min_bg": float(true_bg.min()),
        "max_bg": float(true_bg.max()),
        "cv_pct": float(100.0 * true_bg.std() / true_bg.mean()),
        "total_basal_u": float(basal_u),
        "total_bolus_u": float(bolus_u),
        "iob_limited_steps": int(sum(any(e.kind == "iob_limit" for e in s.events) for s in steps)),
        **plan_time_metrics(steps),
    }


# -- the process contract (processes.base.ProcessModule) ---------------------------------

BENCHMARK_CASES: tuple[dict[str, Any], ...] = (
    {"patient": "adolescent#001"},
    {"patient": "adult#001"},
    {"patient": "child#001"},
    {"patient": "adult#001", "unannounced": True},
)

TRAINING_CASE_KEYS = ("patient",)
"""A twin learns one patient: benchmarks train one per patient in their cases."""

ALL_CASES: tuple[dict[str, Any], ...] = tuple({"patient": p} for p in ALL_PATIENTS)
"""Every virtual patient, announced meals (benchmarks: --cases all)."""


def case_group(case: Mapping[str, Any]) -> str:
    """The benchmark's reporting group of a case: the patient's age group, with
    unannounced-meal cases apart (their targets differ)."""
    age = str(case.get("patient", DEFAULT_PATIENT)).split("#")[0]
    group = {"child": "children"}.get(age, f"{age}s")
    return f"{group}, unannounced meals" if case.get("unannounced") else group


EPISODE_SUMMARY = (
    SummaryRow("cost", "risk index LBGI+HBGI"),
    SummaryRow("tir_pct", "time in range 70-180", "%", ".1f"),
    SummaryRow("below_70_pct", "time below 70", "%", ".1f"),
    SummaryRow("below_54_pct", "time below 54", "%", ".1f"),
    SummaryRow("above_180_pct", "time above 180", "%", ".1f"),
    SummaryRow("mean_bg", "mean BG", "mg/dL", ".1f"),
    SummaryRow("lbgi", "LBGI"),
    SummaryRow("hbgi", "HBGI"),
    SummaryRow("violations", "true BG samples below 70", "", "d"),
    SummaryRow("iob_limited_steps", "steps cut by the IOB limit", "", "d"),
    *CONTROLLER_ROWS,
)

# 15 days: as many samples as the CSTR recipe (7200), some 55 meals
# The default twin (one-layer predictor): with two layers and rollout readout weight 25, as
# the CSTR and turbofan take, the children's loop went from cost 2.71, no time below
# 54 mg/dL, to 15.3 and 13 % below 54 (benchmarks/control.py, seeds 7-19).
TRAINING_RECIPE = TrainingRecipe(hours=360.0, epochs=20, max_minutes=4.5)
