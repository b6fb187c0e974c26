"""Tennessee Eastman excitation data for training the twin."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
from rich.progress import track

from ..base import (
    aprbs_levels,
    rate_clip,
)
from .baseline import RickerBaseline
from .plant import (
    BASE_SETPOINTS,
    MV_HIGH,
    MV_LOW,
    MV_NAMES,
    RATE_PER_SAMPLE,
    SAMPLE_PERIOD_S,
    SPEC,
    TAG_COLUMNS,
    TEPPlant,
)

# -- excitation data ----------------------------------------------------------------------

# APRBS setpoint ranges around the base case (each inside tep-studio's safe operating
# bounds, and the pressure well below the 2900 kPa override).
SETPOINT_RANGES: dict[str, tuple[float, float]] = {
    "stripper_underflow": (22.0, 23.9),
    "reactor_pressure": (2670.0, 2760.0),
    "reactor_level": (70.0, 80.0),
    "reactor_temperature": (119.5, 121.5),
    "separator_level": (40.0, 60.0),
    "stripper_level": (40.0, 60.0),
    "stripper_underflow_G_concentration": (51.0, 56.0),
}
# APRBS offsets on each valve (%): the loops reject them, which excites the plant without
# opening a loop; the three hand-set valves (recycle, steam, agitator) move the most.
MV_OFFSET_PCT = np.array([3.0, 3.0, 3.0, 3.0, 8.0, 3.0, 3.0, 3.0, 8.0, 3.0, 3.0, 10.0])
DITHER_PCT = 0.3
SETPOINT_HOLD = (100, 400)  # samples: 1-4 h
OFFSET_HOLD = (5, 40)  # samples: 3-24 min
# The logging rig's supervisory guard: (leave excitation below, above, resume above, below).
# Outside the outer band the excitation stops and the setpoints return to the base case
# until every variable is back inside the inner band and GUARD_HOLD samples have passed.
# The level loops of the scheme settle in ~10 h, so the guard must act long before a trip.
GUARD_BANDS: dict[str, tuple[float, float, float, float]] = {
    "reactor_pressure": (-math.inf, 2850.0, -math.inf, 2780.0),
    "reactor_level": (60.0, 90.0, 65.0, 85.0),
    "reactor_temperature": (-math.inf, 128.0, -math.inf, 124.0),
    "separator_level": (35.0, 65.0, 40.0, 60.0),
    "stripper_level": (35.0, 65.0, 40.0, 60.0),
}
GUARD_HOLD = 60  # samples (36 min) at least without excitation once the guard trips


def _outside(meas: Mapping[str, float], inner: bool) -> bool:
    """Is any guarded variable outside the guard's outer (or inner) band?"""
    for name, (low, high, low_in, high_in) in GUARD_BANDS.items():
        lo, hi = (low_in, high_in) if inner else (low, high)
        if not lo <= meas[name] <= hi:
            return True
    return False


def _paused_for(paused: int, meas: Mapping[str, float]) -> int:
    """Samples the guard has paused the excitation for, after this one (0: exciting)."""
    if _outside(meas, inner=False):
        return paused + 1
    if paused > GUARD_HOLD and not _outside(meas, inner=True):
        return 0
    return paused + 1 if paused else 0


def generate_training_log(hours: float, seed: int, show_progress: bool = False) -> pd.DataFrame:
    """Excitation data: the PI baseline on APRBS setpoints, with APRBS valve offsets and dither.

    Row k holds the measurements at time k and the valves applied from time k on. Every
    applied value keeps the bounds and the rate limit (rate_clip); the rig's guard
    returns to the base case well before the trip limits. Over 40 seeds x 48 h and one
    800 h log the plant came no closer to an interlock than 184 kPa (pressure), 28
    level points (separator), 31 (reactor), 36 (stripper) and 52 °C (temperature). Should
    a log still trip, this raises rather than return data past a shutdown.
    """
    rng = np.random.default_rng(seed)
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    plant = TEPPlant(seed=seed + 10_000)
    baseline = RickerBaseline()
    sp_levels = {
        tag: aprbs_levels(rng, n, low, high, *SETPOINT_HOLD)
        for tag, (low, high) in SETPOINT_RANGES.items()
    }
    offsets = np.column_stack([aprbs_levels(rng, n, -a, a, *OFFSET_HOLD) for a in MV_OFFSET_PCT])
    applied, pi_output = plant.mv.copy(), plant.mv.copy()
    paused = 0
    rows: list[list[float]] = []
    for k in track(range(n), description="Tennessee Eastman excitation", disable=not show_progress):
        meas = plant.measure()
        paused = _paused_for(paused, meas)
        excite = 0.0 if paused else 1.0
        setpoints = {
            tag: float(levels[k]) if excite else BASE_SETPOINTS[tag]
            for tag, levels in sp_levels.items()
        }
        # the baseline runs on its own output: the offsets are disturbances it rejects
        pi_output = baseline.act(meas, setpoints, pi_output)
        target = pi_output + excite * (offsets[k] + rng.normal(0.0, DITHER_PCT, len(MV_NAMES)))
        applied = np.array(
            [
                rate_clip(float(t), float(p), RATE_PER_SAMPLE, MV_LOW, MV_HIGH)
                for t, p in zip(target, applied, strict=True)
            ]
        )
        rows.append([plant.time_s, *meas.values(), *applied])
        plant.step(applied)
        if plant.shutdown:
            raise RuntimeError(
                f"excitation shut the plant down at {plant.time_s / 3600:.2f} h "
                f"(seed {seed}): {plant.shutdown}"
            )
    return pd.DataFrame(rows, columns=[SPEC.timestamp_column, *TAG_COLUMNS])
