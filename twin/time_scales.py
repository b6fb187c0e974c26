"""The plant's time scales, read from the log a twin is trained on, and the planning
horizon they call for: a tag file gives physical facts only, the log gives the rest.

Each controlled sensor's response to the actuator that moves it most in the log (gain
times the actuator's spread) is identified first-order-plus-dead-time, as the SIMC tuning
of a baseline is (`twin.simc.identify_fopdt`). The plan must look past that dead time and
far enough on for the response to settle, or it cannot weigh its own moves.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .errors import InvalidInput
from .simc import Fopdt, identify_fopdt
from .spec import ProcessSpec

HORIZON_SETTLING = 3.0
"""The plan covers the dead time and this many time constants (95 % of a first-order
step's change)."""
HORIZON_RANGE = (20, 60)
"""Fewest and most samples a plan covers: 20 is what every process was first tuned on (a
fast plant keeps it); past 60 a twin's rollout has drifted further than its answer to the
moves, and an integrating sensor (no time constant) gets the most."""


def dominant_responses(df: pd.DataFrame, spec: ProcessSpec) -> dict[str, Fopdt]:
    """Per controlled sensor (else per sensor of the baseline's pairings), the FOPDT model of
    its response to the actuator that moves it most in the log; a pair the log shows no
    effect for is left out."""
    sensors = [t.name for t in spec.sensors if t.controlled] or sorted(
        {loop.sensor for loop in spec.baseline}
    )
    out: dict[str, Fopdt] = {}
    for sensor in sensors:
        best = 0.0
        for actuator in (t.name for t in spec.actuators):
            try:
                model = identify_fopdt(df, spec, sensor, actuator)
            except (InvalidInput, ValueError, np.linalg.LinAlgError):
                continue  # no effect, or a log the fit cannot use: the default horizon
            moved = abs(model.gain) * float(np.nanstd(df[actuator].to_numpy(dtype=float)))
            if math.isfinite(moved) and moved > best:
                best, out[sensor] = moved, model
    return out


def log_horizon(df: pd.DataFrame, spec: ProcessSpec) -> int:
    """Samples a plan covers for this plant: the slowest dominant response's dead time plus
    `HORIZON_SETTLING` time constants, inside `HORIZON_RANGE`."""
    low, high = HORIZON_RANGE
    dt = spec.sample_period_s
    slowest = max(
        (
            (m.theta_s + HORIZON_SETTLING * m.tau_s) / dt
            for m in dominant_responses(df, spec).values()
        ),
        default=float(low),
    )
    return int(np.clip(math.ceil(slowest), low, high))


def with_log_horizon(spec: ProcessSpec, df: pd.DataFrame) -> ProcessSpec:
    """The spec with its control horizon from the log, unless the tag file gives one."""
    if spec.control.horizon is not None:
        return spec
    control = spec.control.model_copy(update={"horizon": log_horizon(df, spec)})
    return spec.model_copy(update={"control": control})
