"""Cause and effect in a twin: its gains from actuators to sensors, and the sign penalty.

Gain check (`twin_gains`, `gain_table`): a step test in embedding space. From the
steadiest training states nearest the nominal operating point (the actuators' and measured
disturbances' nominal values), the planning predictor is rolled out twice over the same
horizon: once with the actuators held where the log held them, once with one actuator
stepped by a share of its range (a level actuator held stepped; a dose given once, at
the start). The readout's difference at the horizon, per unit of the step, is the twin's
gain, in engineering units. The same test on the true plant (`processes.step_tests`)
says whether the twin learnt the right cause and effect: a log whose insulin comes with
meals teaches that insulin raises glucose.

Sign penalty (`sign_penalty`): on training batches, the same two rollouts from the
batch's own states under its own actions (held past their end to `SIGN_HORIZON` times the
training rollout), the stepped one with one training std more of
the actuator; each declared effect (`twin.effects`) whose readout moves against its sign,
at any step of the rollout, is penalised by how far (a hinge at zero: a gain of the right
sign costs nothing, whatever its size).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from .data import Layout
from .model import JEPA
from .spec import ProcessSpec, Tag
from .twin_model import Twin

STEP_FRACTION = 0.1
"""The step of a gain check, as a share of the actuator's range."""

START_STATES = 16
"""Training states the twin's step test starts from (its gain is their median)."""

SIGN_WEIGHT = 10.0
"""Weight of the sign penalty in the training loss."""

SIGN_BATCH = 16
"""Rollout starts of a training batch the sign penalty looks at (it is cheap, not free)."""

SIGN_HORIZON = 4
"""The sign penalty's rollouts, and a gain check's, run this many training rollouts long
(the batch's last actions held beyond its own): slow effects (insulin on glucose, over
hours) show late, and a sign kept over the trained rollout alone was lost beyond it (a
glucose twin trained with the penalty over 16 samples read +677 mg/dL per U of bolus
after 80)."""


@dataclass(frozen=True)
class EffectPair:
    """A declared effect in the twin's layout: column indices and what training enforces."""

    actuator: int  # index in Layout.actions
    sensor: int  # index in Layout.observed
    direction: float  # +1 positive, -1 negative
    dose: bool  # a dose acts once; a level is held


def effect_pairs(spec: ProcessSpec, layout: Layout) -> list[EffectPair]:
    """The spec's declared effects as column indices of the twin's layout."""
    return [
        EffectPair(
            layout.actions.index(e.actuator),
            layout.observed.index(e.sensor),
            e.direction,
            is_dose(spec.tag(e.actuator)),
        )
        for e in spec.effects
    ]


def is_dose(tag: Tag) -> bool:
    """A dose acts once per sample given (a bolus); anything else is a held level."""
    return getattr(tag, "kind", "level") == "dose"


def stepped(
    actions: torch.Tensor, actuator: int, size: float | torch.Tensor, dose: bool
) -> torch.Tensor:
    """Actions (B, H, A) with one actuator stepped by `size`: held from the start (a level)
    or given once at the start (a dose)."""
    out = actions.clone()
    if dose:
        out[:, 0, actuator] += size
    else:
        out[:, :, actuator] += size
    return out


def held_on(actions: torch.Tensor, horizon: int) -> torch.Tensor:
    """Actions (B, H, A) continued to `horizon` steps with the last ones held."""
    more = horizon - actions.shape[1]
    return torch.cat([actions, actions[:, -1:].expand(-1, more, -1)], dim=1)


def sign_penalty(
    model: JEPA, batch: Mapping[str, torch.Tensor], pairs: list[EffectPair]
) -> torch.Tensor:
    """Mean hinge, over the rollout's steps and the batch, of each declared effect's
    readout change per training std of its actuator, taken against its sign; summed over
    effects and ensemble members. Zero without declared effects."""
    if not pairs:
        return torch.zeros(())
    windows, actions = batch["windows"][:SIGN_BATCH], batch["actions"][:SIGN_BATCH]
    actions = held_on(actions, SIGN_HORIZON * actions.shape[1])
    # the encoder is trained by the other terms; this one shapes how the predictors
    # and the readout answer to the actuators
    with torch.no_grad():
        z0 = model.encode(windows[:, 0])
    # the base rollout and one stepped per actuator go through each predictor as one batch
    actuators = sorted({p.actuator for p in pairs})
    dose = {p.actuator: p.dose for p in pairs}
    runs = torch.cat([actions] + [stepped(actions, a, 1.0, dose[a]) for a in actuators])
    starts = z0.repeat(1 + len(actuators), 1)
    total = torch.zeros(())
    for member in model.members():
        read = model.readout(member.rollout(starts, runs)).unflatten(0, (1 + len(actuators), -1))
        for pair in pairs:
            moved = (
                read[1 + actuators.index(pair.actuator), ..., pair.sensor]
                - read[0, ..., pair.sensor]
            )
            total = total + torch.relu(-pair.direction * moved).mean()
    return SIGN_WEIGHT * total


# -- the gain check ------------------------------------------------------------------------


@dataclass(frozen=True)
class TwinGain:
    """A twin's step-test gain of one (actuator, sensor) pair, in engineering units: sensor
    change at the horizon per unit of actuator step (level) or of dose."""

    actuator: str
    sensor: str
    gain: float  # median over the start states
    agreement: float  # share of start states whose gain has the median's sign
    step: float  # the step, actuator units
    horizon_steps: int


def gain_sensors(spec: ProcessSpec) -> list[str]:
    """The sensors a gain check reports: the controlled ones, then those named by effects."""
    names = [t.name for t in spec.controlled] + [e.sensor for e in spec.effects]
    return list(dict.fromkeys(names)) or [t.name for t in spec.sensors]


def default_horizon(twin: Twin) -> int:
    """The sign penalty's horizon (`SIGN_HORIZON` training rollouts): long enough for a
    slow effect to show, and no longer than what training held the twin's signs over."""
    return SIGN_HORIZON * int(twin.train_config.get("rollout_steps", 16))


def start_states(twin: Twin, count: int = START_STATES) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) and held actions (N, A, normalised) of the steadiest training
    states nearest the nominal actuators and measured disturbances (tags with a nominal)."""
    bank, spec, layout = twin.bank, twin.spec, twin.layout
    if bank.actions is None:
        raise ValueError(
            "the twin's goal bank keeps no actions (a checkpoint too old for a gain check)"
        )
    distance = torch.zeros(len(bank.embeddings))
    for i, name in enumerate(layout.actions):
        nominal = spec.tag(name).nominal
        if nominal is not None:
            distance += (bank.actions[:, i] - _normalised(twin, name, nominal)) ** 2
    for name in (t.name for t in spec.disturbances):
        nominal = spec.tag(name).nominal
        if nominal is not None:
            column = layout.observed.index(name)
            distance += (bank.observed[:, column] - _normalised(twin, name, nominal)) ** 2
    score = distance + bank.unsteadiness
    nearest = torch.topk(score, min(count, len(score)), largest=False).indices
    return bank.embeddings[nearest].float(), bank.actions[nearest].float()


@torch.no_grad()
def twin_gains(
    twin: Twin,
    horizon_steps: int | None = None,
    step_fraction: float = STEP_FRACTION,
    sensors: list[str] | None = None,
) -> list[TwinGain]:
    """The twin's gain from every actuator to each of `sensors` (default `gain_sensors`)
    by step tests in embedding space (see the module docstring)."""
    spec, layout = twin.spec, twin.layout
    horizon = horizon_steps or default_horizon(twin)
    sensors = sensors or gain_sensors(spec)
    z0, held = start_states(twin)
    base_actions = held.unsqueeze(1).repeat(1, horizon, 1)
    for i, name in enumerate(layout.actions):
        if is_dose(spec.tag(name)):  # a dose is none unless given
            base_actions[:, :, i] = _normalised(twin, name, 0.0)
    base = twin.model.readout(twin.model.predictor.rollout(z0, base_actions)[:, -1])
    out = []
    for i, name in enumerate(layout.actions):
        step = step_size(twin, name, step_fraction)
        dose = is_dose(spec.tag(name))
        scale = twin.norm.std[twin.norm.index(name)]
        moved = twin.model.readout(
            twin.model.predictor.rollout(z0, stepped(base_actions, i, step / scale, dose))[:, -1]
        )
        for sensor in sensors:
            column = layout.observed.index(sensor)
            change = (moved - base)[:, column].numpy() * twin.norm.std[twin.norm.index(sensor)]
            gains = change / step
            median = float(np.median(gains))
            agreement = float(np.mean(np.sign(gains) == np.sign(median)))
            out.append(TwinGain(name, sensor, median, agreement, step, horizon))
    return out


def step_size(twin: Twin, actuator: str, step_fraction: float = STEP_FRACTION) -> float:
    """A gain check's step, actuator units: `step_fraction` of the range, at most one
    training std of the actuator, so the stepped input stays where the log has been."""
    tag = twin.spec.tag(actuator)
    spread = twin.norm.std[twin.norm.index(actuator)]
    return min(step_fraction * (tag.high - tag.low), spread)  # type: ignore[operator]


CLEAR_EFFECT = 0.02
"""A plant gain counts as a clear effect when the step moves the sensor by at least this
share of its training spread: below it, a sign is noise and not judged."""


def gain_table(
    twin: Twin,
    plant: Mapping[tuple[str, str], float] | None = None,
    horizon_steps: int | None = None,
    step_fraction: float = STEP_FRACTION,
) -> list[dict[str, Any]]:
    """The gain check as plain rows (for a table or a page): per (actuator, sensor), the
    twin's gain and, where `plant` gives one (the true plant's step test, same step and
    horizon), the plant's, whether its effect is clear, and whether the signs match; the
    declared sign where the spec has one."""
    declared = {(e.actuator, e.sensor): e.sign for e in twin.spec.effects}
    units = {t.name: t.unit for t in twin.spec.tags}
    rows = []
    for g in twin_gains(twin, horizon_steps, step_fraction):
        row = asdict(g)
        tag = twin.spec.tag(g.actuator)
        row.update(
            unit=f"{units[g.sensor]} per {units[g.actuator]}",
            horizon_s=g.horizon_steps * twin.spec.sample_period_s,
            dose=is_dose(tag),
            declared=declared.get((g.actuator, g.sensor)),
        )
        true = (plant or {}).get((g.actuator, g.sensor))
        if true is not None:
            spread = twin.norm.std[twin.norm.index(g.sensor)]
            clear = abs(true) * g.step >= CLEAR_EFFECT * spread
            row.update(
                plant_gain=true,
                clear=bool(clear),
                ratio=g.gain / true if true else None,
                sign_match=bool(np.sign(true) == np.sign(g.gain)) if clear else None,
            )
        rows.append(row)
    return rows


def _normalised(twin: Twin, tag: str, value: float) -> float:
    return float(twin.norm.normalise(np.array([value]), (tag,))[0])


LossFn = Callable[..., tuple[torch.Tensor, dict[str, float]]]


def with_sign_penalty(loss_fn: LossFn, pairs: list[EffectPair]) -> LossFn:
    """A training loss `loss_fn(model, batch, cfg, generator)` plus the sign penalty of
    `pairs` (the loss itself when the spec declares no effects)."""
    if not pairs:
        return loss_fn

    def signed(
        model: JEPA,
        batch: Mapping[str, torch.Tensor],
        cfg: Any,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = loss_fn(model, batch, cfg, generator)
        penalty = sign_penalty(model, batch, pairs)
        return loss + penalty, {**parts, "sign": float(penalty.detach())}

    return signed
