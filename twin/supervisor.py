"""The supervisor's guards: when the twin's plan is not trusted, and what bounds the move
that goes out.

Each guard decides and returns; none keeps state (the estimator keeps the history they
read). Moves come back with the events that say what changed them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .hybrid import BaselineMove
from .planning import Constraints, project_moves
from .records import EventKind, SafetyEvent
from .safety import Protection
from .trend import Trend
from .twin_model import Twin

DISAGREEMENT_TRIP = 0.5
"""Default ensemble disagreement trip, in training stds of the sensor. In the standard CSTR
episode the members' std over the first three planned steps peaked at 0.11 std for a twin
trained by the CSTR recipe and at 0.25 std for a barely trained one (4 epochs on 1.5 h):
the trip stays clear of a twin on its own data and catches members that part ways."""
DISAGREEMENT_MULTIPLE = 5.0
"""With `metrics["ensemble_spread"]` (held-out std across members, training stds, per
sensor) the trip is at least this multiple of it: a twin whose members always differ more
is judged against its own usual spread."""
GUARD_BAND = 0.15
"""The limit guard trips when a sensor heads to within this many training stds of a hard
limit: inside the plan's own back-off (`PlannerSettings.limit_margin`, 0.25), so a plan
held at its backed-off limit does not trip it. At 0.3 the zoo's heat exchanger, asked for
58 degC under a 62 degC limit, fell back on 4-13 % of its samples; at 0.15 on 0-3 %, with
no violation on any zoo plant (`benchmarks/new_plant.py`)."""
GUARD_LOOKAHEAD = 2
"""Samples ahead the limit guard extrapolates each limited sensor's filtered trend. One
sample was too late for the CSTR's jacket lag: the hierarchical twin overshot the 385 K
limit by 0.54 K on seed 11; with two it peaked at 379 K and the flat twin's cost held."""
ENVELOPE_NEIGHBOURS = 32
"""Training states (of the goal bank's) whose next moves bound where the twin may take an
actuator: a twin has never seen what follows a move no log made from a state like the
present one, and may be wrong there without knowing it. On the CSTR (a twin trained on 8 h,
12 epochs) the plan raised the coolant from 329 to 340 K at the 350 -> 365 K setpoint step
while the moves the log made from the neighbouring states reached 332 K: the log never ran
hotter, because its supervisory guard cut the coolant first, so the twin predicted a 369 K
peak where the reactor ran away to 397 K, past its 385 K limit. 0 turns the envelope off."""
ENVELOPE_EFFECT_STEPS = 5
"""Samples over which the twin judges which way a move takes the limited sensors."""
ENVELOPE_PROBE = 0.1
"""Size of that probing move, in training stds of the actuator."""
ENVELOPE_MARGIN = 0.5
"""How far past the neighbours' moves the twin may go, in training stds of the actuator
(3.7 K of coolant on the CSTR): room to act better than the log, not elsewhere. Measured on
the CSTR episode, the weak twin above (seeds 7-9) and the benchmark's twin (seeds 7-19):
without the envelope 2.3 violations per episode (397 K) and cost 13.52. Bounding both
directions, margin 0.25: no violation and 19.33; 0.5: none and 14.89; 0.75: 2.3 violations.
Bounding only moves towards a limit (cooling is free): 0.25: none (383.6 K) and 13.68;
0.5: none (384.2 K) and 13.48. 128 neighbours made the envelope too wide to stop the
runaway."""

Moves = dict[str, float]


@dataclass(frozen=True)
class LimitGuard:
    """The limit guard's verdict: why the twin is not trusted (None: it is), and which
    sensors it saw heading into a limit."""

    reason: str | None
    guarded: tuple[str, ...] = ()


class Supervisor:
    def __init__(
        self,
        twin: Twin,
        guard_band: float,
        disagreement_trip: float,
        disagreement_steps: int,
        envelope_neighbours: int,
        envelope_margin: float,
        protection: Protection | None,
    ) -> None:
        if envelope_neighbours < 0 or not math.isfinite(envelope_margin) or envelope_margin < 0:
            raise ValueError("envelope_neighbours and envelope_margin must be >= 0 and finite")
        self.twin, self.spec = twin, twin.spec
        self.guard_band = guard_band
        self.disagreement_trip, self.disagreement_steps = disagreement_trip, disagreement_steps
        self.envelope_neighbours, self.envelope_margin = envelope_neighbours, envelope_margin
        self.protection = protection
        self.action_limits = Constraints.from_twin(twin, 0.0)
        self.limited = [twin.layout.observed[i] for i in self.action_limits.limit_rows]

    def _std(self, tag: str) -> float:
        return float(self.twin.norm.std[self.twin.norm.index(tag)])

    def limit_guard(
        self, measurements: Mapping[str, float | None], trends: Mapping[str, Trend]
    ) -> LimitGuard:
        """Is a sensor heading into its limit? Each is extrapolated `GUARD_LOOKAHEAD`
        samples ahead from its filtered level along the part of its filtered slope that
        its noise does not explain (`twin.trend`): near a hard limit the plant, not the
        model, has the last word (fast overshoots are what a twin trained on safe data saw
        least), but a jitter is no trend. Extrapolating raw samples, 1 % sensor noise made
        the guard trip on 26-30 % of the samples of a plant far from its limits."""
        reasons, guarded = [], []
        for tag in self.spec.sensors:
            trend = trends.get(tag.name)
            if measurements.get(tag.name) is None or trend is None:
                continue
            ahead = trend.ahead(GUARD_LOOKAHEAD)
            band = self.guard_band * self._std(tag.name)
            near = [
                (side, limit)
                for side, limit, hit in (
                    ("high", tag.high, tag.high is not None and ahead > tag.high - band),
                    ("low", tag.low, tag.low is not None and ahead < tag.low + band),
                )
                if hit
            ]
            if near:
                guarded.append(tag.name)
            reasons += [
                f"{tag.name} heading to {ahead:.4g} {tag.unit} (filtered), within {band:.3g} "
                f"{tag.unit} of its {side} limit {limit:g}"
                for side, limit in near
            ]
        return LimitGuard("limit guard: " + "; ".join(reasons) if reasons else None, tuple(guarded))

    def disagreement(
        self, z0: np.ndarray, u_prev: np.ndarray, actions: np.ndarray
    ) -> tuple[str | None, dict[str, list[float]]]:
        """Roll the plan through every ensemble member: (why the plan is not trusted, if
        the members disagree too much early on a sensor that matters; the per-sensor std
        across members, engineering units, per step: the plan's spread).

        The plan is first projected onto the bounds and rate limits: the members judge
        what the plant would really be given, not what the safety clip would cut away."""
        if len(self.twin.model.members()) < 2:
            return None, {}  # a twin without an ensemble has nothing to compare
        lim = self.action_limits
        start = np.clip(u_prev, lim.u_low, lim.u_high)
        feasible = project_moves(np.asarray(actions, dtype=float), start, lim)
        readouts = self.twin.readout(self.twin.ensemble_rollout(z0, feasible))  # tag: (M, H)
        spread, worst = {}, None
        for tag, values in readouts.items():
            std = values.std(axis=0)
            spread[tag] = [float(v) for v in std]
            spec_tag = self.spec.tag(tag)
            if spec_tag.low is None and spec_tag.high is None and not spec_tag.controlled:
                continue
            early = float(std[: self.disagreement_steps].max()) / self._std(tag)
            ratio = early / self.disagreement_limit(tag)
            if not np.isfinite(ratio) or ratio > 1.0:
                if worst is None or not np.isfinite(ratio) or ratio > worst[0]:
                    worst = (ratio, tag, early)
        if worst is None:
            return None, spread
        _, tag, early = worst
        return (
            f"ensemble disagreement on {tag}: members' std {early:.3g} training std over "
            f"the first {self.disagreement_steps} planned steps (limit "
            f"{self.disagreement_limit(tag):.3g})"
        ), spread

    def disagreement_limit(self, tag: str) -> float:
        """The trip for `tag` in training stds: the setting, widened to a multiple of the
        twin's held-out ensemble spread when its metrics record one."""
        usual = self.twin.metrics.get("ensemble_spread", {}).get(tag)
        if usual is None or not math.isfinite(usual):
            return self.disagreement_trip
        return max(self.disagreement_trip, DISAGREEMENT_MULTIPLE * float(usual))

    def within_envelope(
        self, z0: np.ndarray, proposal: Mapping[str, float], previous: Mapping[str, float]
    ) -> tuple[Moves, list[SafetyEvent]]:
        """The plan's move, kept from taking an actuator farther outside the moves the
        training log made from states like this one (it may hold, or come back)."""
        out, events = dict(proposal), []
        envelope = self.twin.action_envelope(z0, self.envelope_neighbours, self.envelope_margin)
        if envelope is None:
            return out, events
        for i, name in enumerate(self.twin.layout.actions):
            prev, planned = float(previous[name]), float(out[name])
            low, high = min(envelope[0][i], prev), max(envelope[1][i], prev)
            kept = min(max(planned, low), high)
            if kept != planned and self.toward_a_limit(
                z0, i, 1.0 if planned > kept else -1.0, previous
            ):
                unit = self.spec.tag(name).unit
                events.append(
                    SafetyEvent(
                        EventKind.DATA_ENVELOPE,
                        f"{name} {planned:.4g} -> {kept:.4g} {unit}: the "
                        f"training log moved it within [{envelope[0][i]:.4g}, {envelope[1][i]:.4g}]"
                        f" {unit} from the nearest states",
                        name,
                    )
                )
                out[name] = kept
        return out, events

    def protected(
        self,
        measurements: Mapping[str, float | None],
        proposal: Mapping[str, float],
        previous: Mapping[str, float],
        hold: Mapping[str, float],
    ) -> tuple[Moves, list[SafetyEvent]]:
        """The proposal through the plant's limit protection; each cut recorded. The
        protection runs every sample (its regulators keep state); a protection that fails
        holds the actuators (`hold`): it is never skipped."""
        if self.protection is None:
            return dict(proposal), []
        try:
            cut = dict(self.protection(measurements, proposal, previous))
        except Exception as exc:  # a broken protection must not pass a move
            return dict(hold), [
                SafetyEvent(
                    EventKind.LIMIT_PROTECTION,
                    f"limit protection raised {type(exc).__name__}: {exc}; holding actuators",
                )
            ]
        out, events = dict(proposal), []
        for name in self.twin.layout.actions:
            value = cut.get(name)
            if value is None or not math.isfinite(value):
                events.append(
                    SafetyEvent(
                        EventKind.LIMIT_PROTECTION,
                        f"limit protection gave no finite value for {name}; holding it",
                        name,
                    )
                )
                out[name] = float(hold[name])
            elif value != float(proposal[name]):
                unit = self.spec.tag(name).unit
                events.append(
                    SafetyEvent(
                        EventKind.LIMIT_PROTECTION,
                        f"{name} "
                        f"{proposal[name]:.4g} -> {value:.4g} {unit} by the "
                        "plant's limit protection",
                        name,
                    )
                )
                out[name] = float(value)
        return out, events

    def farther_from_limits(
        self,
        z0: np.ndarray,
        twin_move: Mapping[str, float],
        baseline: Mapping[str, float],
        previous: Mapping[str, float],
        guarded: Sequence[str],
    ) -> tuple[Moves, list[SafetyEvent]]:
        """Near a limit the baseline acts, but where the twin's planned move goes farther
        from every limit the guard saw than the baseline's (by the twin's own sign of the
        effect), the twin's goes out: a baseline's slow move need not hold back a plan
        that backs away from the limit faster."""
        out, events = dict(baseline), []
        for i, name in enumerate(self.twin.layout.actions):
            ours, theirs = float(twin_move[name]), float(baseline[name])
            if not (math.isfinite(ours) and math.isfinite(theirs)) or ours == theirs:
                continue
            if not self.toward_a_limit(z0, i, 1.0 if ours > theirs else -1.0, previous, guarded):
                out[name] = ours
                unit = self.spec.tag(name).unit
                events.append(
                    SafetyEvent(
                        EventKind.LIMIT_GUARD,
                        f"{name}: the twin's {ours:.4g} {unit} kept in "
                        f"place of the baseline's {theirs:.4g} {unit}: it moves farther from the "
                        f"limits of {', '.join(guarded)}",
                        name,
                    )
                )
        return out, events

    def handover(
        self,
        planned: Moves | None,
        z0: np.ndarray,
        guard: LimitGuard,
        mismatch: str | None,
        baseline: BaselineMove,
    ) -> tuple[Moves | None, list[SafetyEvent]]:
        """A guard tripped: the move that goes out instead of the plan's `planned`, or None
        where the step's move stands (no baseline to hand over to, or the plan already fell
        back). The baseline's, or, near a limit of a trusted twin and where the loop policy
        allows, the twin's where it backs away from the limits farther."""
        kind = EventKind.LIMIT_GUARD if guard.reason else EventKind.MODEL_MISMATCH
        why = guard.reason or mismatch
        if baseline.fallback is None:
            return None, [SafetyEvent(kind, f"{why}; no baseline configured, twin plan kept")]
        events = [SafetyEvent(kind, f"{why}; baseline controller used")]
        if planned is None:
            return None, events
        if mismatch is None and self.spec.control.loop_policy.guard_keeps_twin_moves:
            move, kept = self.farther_from_limits(
                z0, planned, baseline(), baseline.previous, guard.guarded
            )
            return move, events + kept
        return baseline(), events

    def toward_a_limit(
        self,
        z0: np.ndarray,
        index: int,
        direction: float,
        previous: Mapping[str, float],
        tags: Sequence[str] | None = None,
    ) -> bool:
        """Whether moving actuator `index` in `direction` takes a limited sensor (of `tags`,
        default every one) towards its limit within `ENVELOPE_EFFECT_STEPS` samples, by the
        sign of the twin's own prediction (the ensemble's mean): a twin misjudges how far,
        less often which way."""
        limited = [
            t
            for t in self.spec.sensors
            if (t.low is not None or t.high is not None) and (tags is None or t.name in tags)
        ]
        u = self.twin.normalise_actions(np.array([previous[a] for a in self.twin.layout.actions]))
        probe = u.copy()
        probe[index] += direction * ENVELOPE_PROBE
        held = [np.tile(actions, (ENVELOPE_EFFECT_STEPS, 1)) for actions in (u, probe)]
        ends = [self.twin.ensemble_rollout(z0, a)[:, -1].mean(axis=0) for a in held]
        before, after = self.twin.readout(ends[0]), self.twin.readout(ends[1])
        for tag in limited:
            change = float(after[tag.name] - before[tag.name])
            if (tag.high is not None and change > 0) or (tag.low is not None and change < 0):
                return True
        return False
