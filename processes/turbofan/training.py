"""Turbofan scenarios and training data (logged flights of an ageing engine)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import track

from ..base import (
    aprbs_levels,
    rate_clip,
)
from .fadec import FuelControl
from .gas_path import (
    CYCLE_END_OF_LIFE,
    NC_MAX_RPM,
    NF_MAX_RPM,
    P_STD_PA,
    PHI_MIN,
    RATE_PER_SAMPLE,
    SAMPLE_PERIOD_S,
    SM_MIN_PCT,
    T50_MAX_K,
    WF_HIGH,
    WF_LOW,
    Flight,
    _ambient,
    rk4_step,
)
from .plant import SPEC, TurbofanSimulator

# -- scenarios ------------------------------------------------------------------------------


@dataclass
class Scenario:
    """A thrust-demand schedule and flight-condition waypoints (linear between), by sample."""

    steps: int
    setpoints: list[tuple[int, float]]
    flight_points: list[tuple[int, Flight]] = field(default_factory=lambda: [(0, Flight())])

    def setpoint(self, k: int) -> float:
        value = self.setpoints[0][1]
        for start, v in self.setpoints:
            if k >= start:
                value = v
        return value

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "setpoints": [list(p) for p in self.setpoints],
            "flight_points": [[k, f._asdict()] for k, f in self.flight_points],
        }

    def flight(self, k: int) -> Flight:
        ks = [p[0] for p in self.flight_points]
        columns = zip(*[p[1] for p in self.flight_points], strict=True)
        return Flight(*[float(np.interp(k, ks, list(col))) for col in columns])


def benchmark_scenario() -> Scenario:
    """60 s near the ground on a warm day: approach idle -> climb power -> takeoff power ->
    climb power -> idle, accelerating from Mach 0.2 to 0.3 and climbing 300 m meanwhile."""
    return Scenario(
        steps=300,
        setpoints=[(0, 25.0), (15, 65.0), (75, 100.0), (165, 65.0), (240, 30.0)],
        flight_points=[
            (0, Flight(0.0, 0.2, 10.0)),
            (150, Flight(0.0, 0.2, 10.0)),
            (300, Flight(300.0, 0.3, 10.0)),
        ],
    )


BENCHMARK_CASES = ({"cycle": 0.0}, {"cycle": 250.0})
"""A new engine and one late in its life (unit 1): the same demand, a different plant."""


# -- training data ------------------------------------------------------------------------------

FLIGHT_SEGMENT_S = 300.0  # one logged flight; the engine ages between flights
SEGMENT_GAP_S = 60.0
CLIMB_RATE_M_PER_S = 10.0
MACH_RATE_PER_S = 0.004
DT_ISA_RATE_K_PER_S = 0.02
ALT_MAX_M = 10000.0
DT_ISA_RANGE_K = (-15.0, 20.0)


def mach_range(alt_m: float) -> tuple[float, float]:
    """The flight envelope: an aircraft flies faster the higher it is."""
    a = alt_m / ALT_MAX_M
    return 0.4 * a, min(0.8, 0.35 + 0.45 * a)


def thrust_available_kn(flight: Flight) -> float:
    """Rough takeoff-rated thrust at a flight condition (lapse with density and Mach), the
    scale of random thrust demands in the training log."""
    _, p_amb = _ambient(flight)
    return 125.0 * (p_amb / P_STD_PA) ** 0.8 * (1.0 - 0.45 * flight.mach)


def _ramp(values: np.ndarray, start: float, max_step: float) -> np.ndarray:
    """Follow `values` (held random targets) at a limited rate: slow flight-condition drift."""
    out = np.empty_like(values)
    current = start
    for k, target in enumerate(values):
        current = float(np.clip(target, current - max_step, current + max_step))
        out[k] = current
    return out


def _flight_profile(rng: np.random.Generator, n: int) -> list[Flight]:
    dt = SAMPLE_PERIOD_S
    hold = (int(60 / dt), int(300 / dt))
    alt_targets = aprbs_levels(rng, n, 0.0, ALT_MAX_M, *hold)
    alt = _ramp(alt_targets, float(alt_targets[0]), CLIMB_RATE_M_PER_S * dt)
    share = aprbs_levels(rng, n, 0.0, 1.0, *hold)
    mach_targets = np.array(
        [lo + s * (hi - lo) for s, (lo, hi) in zip(share, map(mach_range, alt), strict=True)]
    )
    mach = _ramp(mach_targets, float(mach_targets[0]), MACH_RATE_PER_S * dt)
    dt_targets = aprbs_levels(rng, n, *DT_ISA_RANGE_K, *hold)
    dt_isa = _ramp(dt_targets, float(dt_targets[0]), DT_ISA_RATE_K_PER_S * dt)
    return [Flight(float(a), float(m), float(t)) for a, m, t in zip(alt, mach, dt_isa, strict=True)]


def _violates(values: Mapping[str, float]) -> bool:
    """Does a true sensor reading come within the rig's guard band of a hard limit?"""
    return bool(
        values["T50"] > T50_MAX_K - 4.0
        or values["Nf"] > NF_MAX_RPM - 15.0
        or values["Nc"] > NC_MAX_RPM - 20.0
        or values["SM_hpc"] < SM_MIN_PCT + 1.0
        or values["phi"] < PHI_MIN + 0.01
    )


def _guard(sim: TurbofanSimulator, wf: float, lookahead: int = 3) -> bool:
    """Supervisory check of the logging rig on the plant model: is holding wf safe?"""
    x = sim.state
    for _ in range(lookahead):
        if _violates(sim.true_sensors(wf, x)):
            return False
        x = rk4_step(x, wf, sim.flight, sim.health)
    return not _violates(sim.true_sensors(wf, x))


def _safe_fuel(sim: TurbofanSimulator, wf: float) -> float:
    """The rig's last word: the proposed fuel if safe, else the nearest safe move."""
    if _guard(sim, wf):
        return wf
    held = sim.wf
    for candidate in (held, held - RATE_PER_SAMPLE, held + RATE_PER_SAMPLE):
        candidate = float(np.clip(candidate, WF_LOW, WF_HIGH))
        if _guard(sim, candidate):
            return candidate
    # nothing looks safe: move away from whichever limit is nearer
    phi_low = sim.true_sensors(held)["phi"] < PHI_MIN + 0.02
    return rate_clip(
        held + (RATE_PER_SAMPLE if phi_low else -RATE_PER_SAMPLE),
        held,
        RATE_PER_SAMPLE,
        WF_LOW,
        WF_HIGH,
    )


def _flight_segment(
    rng: np.random.Generator, n: int, cycle: float, unit: int, sim_seed: int, start_time_s: float
) -> list[dict[str, float]]:
    """One logged flight: the baseline on random thrust demands with dither, alternating with
    open-loop APRBS fuel steps around where the loop left the engine; the baseline's limit
    protection and the rig's guard keep every sample within the limits."""
    flights = _flight_profile(rng, n)
    demand_share = aprbs_levels(
        rng, n, 0.1, 1.05, int(3 / SAMPLE_PERIOD_S), int(25 / SAMPLE_PERIOD_S)
    )
    offsets = aprbs_levels(rng, n, -0.3, 0.3, int(1 / SAMPLE_PERIOD_S), int(8 / SAMPLE_PERIOD_S))
    closed = (
        aprbs_levels(rng, n, 0.0, 1.0, int(20 / SAMPLE_PERIOD_S), int(90 / SAMPLE_PERIOD_S)) < 0.6
    )
    # start in steady state at a random part-power fuel flow (lapsing like the thrust)
    wf0 = float(rng.uniform(0.3, 0.7)) * thrust_available_kn(flights[0]) / 125.0
    sim = TurbofanSimulator(
        seed=sim_seed,
        cycle=cycle,
        unit=unit,
        flight=flights[0],
        wf0=max(WF_LOW, wf0),
        time_s=start_time_s,
    )
    control, anchor = FuelControl(), sim.wf
    rows: list[dict[str, float]] = []
    for k in range(n):
        sim.flight = flights[k]
        meas = sim.measure()
        demand = float(demand_share[k]) * thrust_available_kn(sim.flight)
        if closed[k]:
            wf = control(meas, demand, sim.wf) + float(rng.normal(0.0, 0.01))
            anchor = sim.wf
        else:  # open loop, but still through the limit protection, with no thrust loop
            wf = control.protect_fuel(meas, anchor * (1.0 + float(offsets[k])), sim.wf)
            control.previous_errors.pop("Fn", None)
        wf = _safe_fuel(sim, rate_clip(wf, sim.wf, RATE_PER_SAMPLE, WF_LOW, WF_HIGH))
        rows.append({"time_s": sim.time_s, **meas, "Wf": wf})
        sim.step(wf)
    return rows


def generate_training_log(hours: float, seed: int, show_progress: bool = False) -> pd.DataFrame:
    """Excitation data from engine unit `seed`, as a series of 5-minute flights at cycles
    spread over its life (in order, so the plant drifts as a fleet engine's does), each
    with slowly varying altitude, Mach and ISA deviation across the envelope.

    Flights are separated by a 60 s gap in `time_s` (the twin does not train across it).
    The cycle of each flight is in `df.attrs["cycles"]`.
    """
    rng = np.random.default_rng(seed)
    n_total = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    per_flight = int(FLIGHT_SEGMENT_S / SAMPLE_PERIOD_S)
    sizes = [min(per_flight, n_total - s) for s in range(0, n_total, per_flight)]
    cycles = np.sort(rng.uniform(0.0, CYCLE_END_OF_LIFE, size=len(sizes)))
    rows: list[dict[str, float]] = []
    start = 0.0
    for i in track(range(len(sizes)), description="turbofan flights", disable=not show_progress):
        rows += _flight_segment(
            rng,
            sizes[i],
            float(cycles[i]),
            unit=seed,
            sim_seed=seed + 10_000 + i,
            start_time_s=start,
        )
        start = rows[-1]["time_s"] + SAMPLE_PERIOD_S + SEGMENT_GAP_S
    columns = ["time_s", *(t.name for t in SPEC.tags)]
    df = pd.DataFrame(rows, columns=columns)
    df.attrs["cycles"] = [float(c) for c in cycles]
    return df
