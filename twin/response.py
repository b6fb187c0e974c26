"""How fast each controlled sensor answers its actuators, read from the twin itself (the
log's time scales, as the twin learned them), and the defaults that follow from it.

A step of each actuator from an embedding, against the same embedding with the actuators
held: per sensor, the strongest channel's dead time (first sample past 10 % of the step's
change at the end) and time constant (63 %), in samples, first-order-plus-dead-time style.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .twin_model import Twin

RESPONSE_SAMPLES = 60
"""Samples the step is followed for (a slower response reads as this long): a twin's
rollout drifts beyond (the heat exchanger twin's, 60 samples on, swung by more than the
step's own effect)."""
SETTLED_SAMPLES = 10
"""The step's final change: the mean over the last this many samples."""
STEP_STD = 0.5
"""The step, in training stds of the actuator (large enough to stand above rounding,
small enough to stay near the operating point)."""


@dataclass(frozen=True)
class Response:
    dead_time: float  # samples
    time_constant: float  # samples, after the dead time


def step_responses(twin: Twin, z: np.ndarray, tags: list[str]) -> dict[str, Response]:
    """Each named sensor's response to the actuator that moves it most, from embedding z
    with the actuators at their training mean (the ensemble's mean rollout)."""
    actions = len(twin.layout.actions)
    held = np.zeros((RESPONSE_SAMPLES, actions))
    base = twin.readout(twin.ensemble_rollout(z, held).mean(axis=0))
    out: dict[str, Response] = {}
    best: dict[str, float] = {}
    for j in range(actions):
        stepped = held.copy()
        stepped[:, j] = STEP_STD
        moved = twin.readout(twin.ensemble_rollout(z, stepped).mean(axis=0))
        for tag in tags:
            change = np.asarray(moved[tag] - base[tag], dtype=float)
            final = float(change[-SETTLED_SAMPLES:].mean())
            if abs(final) <= best.get(tag, 0.0) or not np.isfinite(final) or final == 0.0:
                continue
            best[tag] = abs(final)
            fraction = change / final
            dead = int(np.argmax(fraction > 0.1)) if np.any(fraction > 0.1) else len(change)
            rise = int(np.argmax(fraction > 0.632)) if np.any(fraction > 0.632) else len(change)
            out[tag] = Response(float(dead), float(max(rise - dead, 1)))
    return out


def disturbance_gain(response: Response, ceiling: float, floor: float = 0.01) -> float:
    """Per-sample gain of a disturbance estimate that closes an integral loop around the
    plan: an integral controller on a first-order-plus-dead-time loop of unit gain, with
    the closed-loop time constant at the dead time (SIMC, Skogestad 2003):
    1 / (2 dead time + time constant), never above `ceiling` nor below `floor`."""
    samples = 2.0 * response.dead_time + response.time_constant
    return float(np.clip(1.0 / max(samples, 1.0), floor, ceiling))
