"""A twin-based controller: measurements in, safe setpoints out, one sample at a time.

Per step: validate the input, append it to the context window, encode, turn the
setpoints into a goal embedding, plan, and pass the first planned move through the
safety layer. A failed, late or non-finite plan falls back (to the process baseline
when one is given, else a hold); so does a plan on which the twin's ensemble members
disagree (the model is unsure there); a gap in the data is a safe hold marked stale.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from functools import cache
from statistics import NormalDist

import numpy as np

from .data import window_from_rows
from .errors import InvalidInput
from .planning import (
    Constraints,
    Planner,
    PlannerSettings,
    PlanningProblem,
    PlanResult,
    _project_moves,
    make_planner,
)
from .records import Plan, SafetyEvent, StepRecord, StepStatus
from .safety import Fallback, Protection, SafetyLayer
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
GUARD_LOOKAHEAD = 2
"""Samples ahead the limit guard extrapolates each limited sensor from its last change. One
sample was too late for the CSTR's jacket lag: the hierarchical twin overshot the 385 K
limit by 0.54 K on seed 11; with two it peaked at 379 K and the flat twin's cost held."""
OFFSET_GAIN = 0.1
"""Integral action on the goal, per sample, in training stds of shift per std of error. On
the CSTR benchmark episode (seeds 7, 11) it took the twin's cost from 17.9 to 16.5 (mean
|error| 1.47 -> 1.15 K); 0.2 gave 16.4, so the gentler gain is kept."""
WARMUP_SAMPLES: int | None = None
"""Samples of history the twin needs before it acts (None: its whole window). With less,
its embedding of the plant is a guess: on the CSTR benchmark (seed 7) a cold twin moved the
coolant 3 K off a steady state at its first sample and took 15 samples to come back (cost
16.6); acting after 8 samples gave 15.5, after the full 16 gave 14.8. Until then the
baseline acts, or the actuators hold. A loop primed from stored history (`prime`) is warm
at once."""
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
MISMATCH_TRIP_SIGMAS = 3.0
"""The mismatch trip in multiples of a sensor's usual one-step forecast error (the error
scale is built so that the trip is 3 of them, the clear 1.5; `_error_scale`)."""


@cache  # the same few arguments every control step
def family_threshold(threshold: float, trip: float, sensors: int) -> float:
    """The per-sensor threshold at which the worst of `sensors` forecast errors crosses as
    often as one sensor's error crosses `threshold` (Sidak; errors taken as independent
    and normal, with `trip` at `MISMATCH_TRIP_SIGMAS` of them).

    The mismatch check judges the worst sensor. With the thresholds of one sensor, the
    Tennessee Eastman twin, judged on 41, never earned trust: its worst error had a median
    of 0.146 against the clear of 0.15, so ten clear steps in a row came about once in a
    thousand, and the baseline ran 779 of 800 samples of an episode (base case, seed 7)."""
    if sensors <= 1 or not (0 < threshold < math.inf) or not (0 < trip < math.inf):
        return threshold
    unit = NormalDist()
    sigmas = MISMATCH_TRIP_SIGMAS * threshold / trip
    one = 2.0 * (1.0 - unit.cdf(sigmas))  # the chance that one sensor crosses
    each = 1.0 - (1.0 - one) ** (1.0 / sensors)
    if not 0.0 < each < 1.0:  # a threshold so far out no error reaches it: keep it
        return threshold
    return threshold * unit.inv_cdf(1.0 - each / 2.0) / sigmas


FORECAST_BIAS_TRIPS = 3.0
"""A forecast bias beyond this many mismatch trips (0.9 error units by default) is a
mismatch in itself, however steady: the twin is then too far from this plant to be
corrected by an offset."""
OFFSET_BAND = 0.5
"""Integrate only while the error is inside this many training stds (no windup in moves)."""
OFFSET_LIMIT = 0.5
"""The goal never shifts more than this many training stds in any setpoint sensor."""


class TwinController:
    def __init__(self, twin: Twin, planner: Planner, fallback: Fallback | None = None,
                 stale_after_s: float | None = None, guard_band: float = 0.3,
                 mismatch_trip: float = 0.3, mismatch_clear: float = 0.15,
                 trust_after_steps: int = 10, disagreement_trip: float = DISAGREEMENT_TRIP,
                 disagreement_steps: int = 3, offset_gain: float = OFFSET_GAIN,
                 warmup_samples: int | None = WARMUP_SAMPLES,
                 tracking_weight: float | None = None,
                 envelope_neighbours: int | None = None,
                 envelope_margin: float = ENVELOPE_MARGIN,
                 protection: Protection | None = None) -> None:
        """Thresholds are in training standard deviations of each sensor.

        `guard_band`: distance to a sensor limit inside which the fallback takes over.
        `mismatch_trip`: one-step prediction error of a sensor that marks the twin as
        untrusted; it is trusted again after `trust_after_steps` consecutive steps with
        errors below `mismatch_clear` (hysteresis, so control does not chatter).
        `disagreement_trip`: std across the ensemble members' readouts of a limited or
        controlled sensor, over the plan's first `disagreement_steps` steps, above which the
        plan is not trusted (see `DISAGREEMENT_TRIP`; when the twin's metrics hold the
        held-out ensemble spread, `DISAGREEMENT_MULTIPLE` times it if that is larger).
        `warmup_samples`: samples with data the window must hold before the twin acts
        (see `WARMUP_SAMPLES`; None or more than the window: the whole window).
        `tracking_weight`: weight of the setpoint error in the plan's stage cost (see
        `twin.spec.ControlWeights`; None: the process spec's).
        `envelope_neighbours`, `envelope_margin`: the data envelope of the twin's moves (see
        `ENVELOPE_NEIGHBOURS`): a planned move may not take an actuator farther outside it
        than it already is, in a direction that drives a limited sensor towards its limit
        (None: `ENVELOPE_NEIGHBOURS`, or 0, no envelope, where the spec's
        `control.data_envelope` is off).
        `protection`: the plant's own limit protection (`processes.protection_for`), run on
        every move that goes out, the twin's or the baseline's, before the safety layer: a
        twin sees the plant only at its samples, the protection also knows what a move does
        between them (the turbofan's surge margin dips the instant fuel steps up).
        """
        self.twin, self.planner, self.fallback = twin, planner, fallback
        self.protection = protection
        self.spec = twin.spec
        self.guard_band = guard_band
        self.mismatch_trip, self.mismatch_clear = mismatch_trip, mismatch_clear
        self.trust_after_steps = trust_after_steps
        self.disagreement_trip, self.disagreement_steps = disagreement_trip, disagreement_steps
        self.offset_gain = offset_gain
        if envelope_neighbours is None:
            envelope_neighbours = ENVELOPE_NEIGHBOURS if twin.spec.control.data_envelope else 0
        if envelope_neighbours < 0 or not math.isfinite(envelope_margin) or envelope_margin < 0:
            raise ValueError("envelope_neighbours and envelope_margin must be >= 0 and finite")
        self.envelope_neighbours, self.envelope_margin = envelope_neighbours, envelope_margin
        self.tracking_weight = twin.spec.control.tracking_weight if tracking_weight is None \
            else float(tracking_weight)
        window = twin.config.window
        self.warmup_samples = window if warmup_samples is None else \
            min(max(int(warmup_samples), 0), window)
        self.safety = SafetyLayer(self.spec)
        self._action_limits = Constraints.from_twin(twin, 0.0)
        self._spread: dict[str, list[float]] = {}
        self.stale_after_s = stale_after_s or 3.0 * self.spec.sample_period_s
        self.reset()

    @classmethod
    def from_twin(cls, twin: Twin, planner: str = "casadi",
                  settings: PlannerSettings | None = None,
                  fallback: Fallback | None = None,
                  protection: Protection | None = None) -> TwinController:
        return cls(twin, make_planner(planner, twin, settings), fallback,
                   protection=protection)

    @classmethod
    def from_checkpoint_bytes(cls, data: bytes, planner: str = "casadi",
                              fallback: Fallback | None = None,
                              protection: Protection | None = None) -> TwinController:
        return cls.from_twin(Twin.from_bytes(data), planner, fallback=fallback,
                             protection=protection)

    def reset(self, applied: Mapping[str, float] | None = None) -> None:
        w = self.twin.config.window
        self.rows: deque[dict[str, float | None]] = deque([{}] * w, maxlen=w)
        self.before: deque[dict[str, float] | None] = deque([None] * w, maxlen=w)
        self.applied: dict[str, float] = dict(applied or self.safety.initial())
        self.last_time_s: float | None = None
        self.last_measured: dict[str, float] = {}
        self.expected: dict[str, float] = {}  # the twin's forecast for the next sample
        self.forecast_bias: dict[str, float] = {}  # measured minus forecast, smoothed
        self.good_steps = self.trust_after_steps
        self.step_index = 0
        self._goal_key: tuple | None = None
        self._goal: np.ndarray | None = None
        self._offset_key: tuple | None = None
        self._offset: dict[str, float] = {}
        self._offset_map: np.ndarray | None = None
        self._metric: np.ndarray | None = None
        self._z0: np.ndarray | None = None
        self._guarded: list[str] = []  # sensors the limit guard saw heading into a limit
        self._baseline_move: dict[str, float] | None = None  # this sample's, once asked
        reset = getattr(self.planner, "reset", None)
        if reset:
            reset()

    def prime(self, history: Sequence[tuple[float, Mapping[str, float | None],
                                            Mapping[str, float]]]) -> None:
        """Rebuild the context window from stored steps, oldest first, each (time_s,
        measurements, actuators applied then): the state another API worker or a process
        before a restart left. Nothing is planned; the twin's next forecast starts fresh."""
        window = list(history)[-self.twin.config.window:]
        self.reset(dict(window[-1][2]) if window else None)
        if not window:
            return
        previous = dict(window[0][2])
        for time_s, measurements, applied in window:
            self._append(time_s, measurements, previous, [])
            previous = dict(applied)
        self.applied = previous
        self.last_measured = {tag: float(value) for tag, value in window[-1][1].items()
                              if value is not None and math.isfinite(value)}

    # -- input validation ----------------------------------------------------------------
    def _validate(self, time_s: float, measurements: Mapping[str, float | None],
                  setpoints: Mapping[str, float]) -> None:
        if not isinstance(time_s, int | float) or not math.isfinite(time_s):
            raise InvalidInput(f"time_s must be a finite number of seconds, got {time_s!r}")
        if self.last_time_s is not None and time_s <= self.last_time_s:
            raise InvalidInput(f"time_s {time_s} s is not after the previous step's "
                               f"{self.last_time_s} s; timestamps must strictly increase")
        known = set(self.twin.layout.observed) | set(self.twin.layout.actions)
        for tag, value in measurements.items():
            if tag not in known:
                raise InvalidInput(f"unknown tag '{tag}' for process '{self.spec.name}' "
                                   f"(known: {', '.join(sorted(known))})")
            if value is not None and (not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise InvalidInput(f"measurement '{tag}' must be a finite number or null "
                                   f"(missing), got {value!r}")
        for tag, value in setpoints.items():
            if tag not in self.twin.layout.sensors:
                raise InvalidInput(f"setpoint for '{tag}', which is not a sensor of "
                                   f"'{self.spec.name}'")
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise InvalidInput(f"setpoint '{tag}' must be a finite number, got {value!r}")
            spec_tag = self.spec.tag(tag)
            if (spec_tag.high is not None and value >= spec_tag.high) or (
                    spec_tag.low is not None and value <= spec_tag.low):
                raise InvalidInput(f"setpoint {value:g} {spec_tag.unit} for '{tag}' is not "
                                   f"inside its limits [{spec_tag.low}, {spec_tag.high}]")
        if not setpoints:
            raise InvalidInput("at least one setpoint is needed")

    # -- the step ------------------------------------------------------------------------
    def step(self, time_s: float, measurements: Mapping[str, float | None],
             setpoints: Mapping[str, float]) -> StepRecord:
        self._validate(time_s, measurements, setpoints)
        self._baseline_move = None
        events: list[SafetyEvent] = []
        previous = dict(self.applied)
        for tag in self.twin.layout.actions:  # the plant may report what it really applied
            if measurements.get(tag) is not None:
                previous[tag] = float(measurements[tag])  # type: ignore[arg-type]
        stale = self._append(time_s, measurements, previous, events)
        plan_result: PlanResult | None = None
        near_limit, mismatch = self._limit_guard(measurements), self._mismatch(measurements)
        guard = near_limit or mismatch
        if stale:
            status, proposal = StepStatus.STALE, previous
        elif self._warming_up():
            status, proposal = self._warmup_step(measurements, setpoints, previous, events)
        else:
            status, proposal, plan_result = self._plan(measurements, setpoints, previous, events)
            if guard:
                kind = "limit_guard" if guard.startswith("limit") else "model_mismatch"
                if self.fallback is None:
                    events.append(SafetyEvent(kind, f"{guard}; no baseline configured, "
                                                    "twin plan kept"))
                else:
                    events.append(SafetyEvent(kind, f"{guard}; baseline controller used"))
                    # a stateful baseline (integrators, its own clock) runs once per sample:
                    # if the plan already fell back, its move stands
                    if status != StepStatus.FALLBACK:
                        status = StepStatus.FALLBACK
                        baseline = self._baseline(measurements, setpoints, previous)
                        keep_ours = not mismatch and self.spec.control.guard_keeps_twin_moves
                        proposal = self._farther_from_limits(
                            proposal, baseline, previous, events) if keep_ours else baseline
            if status == StepStatus.OK:  # the twin's own move goes out: keep it in the envelope
                proposal = self._within_envelope(proposal, previous, events)
            proposal = self._with_baseline_actuators(proposal, measurements, setpoints,
                                                     previous)
        if not stale:
            proposal = self._protected(measurements, proposal, previous, events)
        safe = self.safety.enforce(proposal, previous)
        events += safe.events
        self.applied = safe.actuators
        self._forecast(None if stale else self._z0, safe.actuators)
        record = StepRecord(
            step=self.step_index, time_s=float(time_s),
            measurements={k: float(v) for k, v in measurements.items() if v is not None},
            setpoints={k: float(v) for k, v in setpoints.items()},
            actuators=dict(safe.actuators), status=status,
            solve_ms=plan_result.solve_ms if plan_result else 0.0, events=events,
            plan=self._plan_record(plan_result) if plan_result else None,
            margins=self._margins(measurements),
        )
        self.step_index += 1
        return record

    def _encode_window(self) -> np.ndarray:
        window = window_from_rows(list(self.rows), list(self.before), self.twin.layout,
                                  self.twin.norm)
        self._z0 = self.twin.encode(window)
        return self._z0

    def _history_samples(self) -> int:
        return sum(bool(row) for row in self.rows)

    def _warming_up(self) -> bool:
        return self._history_samples() < self.warmup_samples

    def _warmup_step(self, measurements: Mapping[str, float | None],
                     setpoints: Mapping[str, float], previous: dict[str, float],
                     events: list[SafetyEvent]) -> tuple[StepStatus, dict[str, float]]:
        why = (f"warming up: {self._history_samples()}/{self.warmup_samples} samples of "
               "history")
        # the twin forecasts while it waits: a twin whose forecasts miss the plant during
        # the warm-up is not trusted when it ends (the mismatch check's hysteresis)
        self._encode_window()
        return StepStatus.FALLBACK, self._baseline_or_hold(
            "warming_up", why, measurements, setpoints, previous, events)

    def _baseline_or_hold(self, kind: str, why: str, measurements: Mapping[str, float | None],
                          setpoints: Mapping[str, float], previous: dict[str, float],
                          events: list[SafetyEvent]) -> dict[str, float]:
        """The baseline's move in place of the twin's (or a hold without one), recorded."""
        if self.fallback is None:
            events.append(SafetyEvent(kind, f"{why}; holding actuators"))
            return previous
        events.append(SafetyEvent(kind, f"{why}; baseline controller used"))
        return self._baseline(measurements, setpoints, previous)

    def _baseline(self, measurements: Mapping[str, float | None],
                  setpoints: Mapping[str, float], previous: dict[str, float]
                  ) -> dict[str, float]:
        """The baseline's move this sample. A stateful baseline (integrators, its own clock)
        runs once per sample, however many parts of the step ask for its move."""
        assert self.fallback is not None
        if self._baseline_move is None:
            self._baseline_move = dict(self.fallback(measurements, setpoints, previous))
        return dict(self._baseline_move)

    def _baseline_driven(self) -> tuple[str, ...]:
        """The spec's `control.baseline_actuators`, when there is a baseline to drive them."""
        return self.spec.control.baseline_actuators if self.fallback is not None else ()

    def _pinned_moves(self, measurements: Mapping[str, float | None],
                      setpoints: Mapping[str, float], previous: dict[str, float]
                      ) -> np.ndarray | None:
        """The baseline's moves on the spec's `control.baseline_actuators` as the plan must
        take them ((H, A) normalised, NaN for the twin's actuators): its move now, inside
        the bounds and the rate window, then back to the tag's nominal at the rate limit (a
        pump's bolus: this one, then none, since the wizard's next is not known yet)."""
        names = self._baseline_driven()
        if not names:
            return None
        baseline = self._baseline(measurements, setpoints, previous)
        actions, lim = self.twin.layout.actions, self._action_limits
        before = np.array([previous[a] for a in actions], dtype=float)
        now = np.array([baseline.get(a, previous[a]) for a in actions], dtype=float)
        nominal = np.array([self.spec.tag(a).nominal if self.spec.tag(a).nominal is not None
                            else now[i] for i, a in enumerate(actions)], dtype=float)
        if not (np.all(np.isfinite(now)) and np.all(np.isfinite(nominal))):
            return None  # the baseline's move is unusable: the safety layer deals with it
        before, now, nominal = (self.twin.normalise_actions(v) for v in (before, now, nominal))
        pinned = np.full((self.planner.settings.horizon, len(actions)), np.nan)
        for i, name in enumerate(actions):
            if name not in names:
                continue
            value, target = before[i], now[i]
            for k in range(len(pinned)):
                value = float(np.clip(np.clip(target, value - lim.rate[i], value + lim.rate[i]),
                                      lim.u_low[i], lim.u_high[i]))
                pinned[k, i], target = value, nominal[i]
        return pinned

    def _with_baseline_actuators(self, proposal: Mapping[str, float],
                                 measurements: Mapping[str, float | None],
                                 setpoints: Mapping[str, float], previous: dict[str, float]
                                 ) -> dict[str, float]:
        """The proposal with the baseline's move on the spec's `control.baseline_actuators`
        (a pump's meal boluses), whoever planned the rest."""
        names = self._baseline_driven()
        if not names:
            return dict(proposal)
        baseline = self._baseline(measurements, setpoints, previous)
        return {**proposal, **{name: baseline[name] for name in names if name in baseline}}

    def _forecast(self, z0: np.ndarray | None, applied: Mapping[str, float]) -> None:
        """What the twin expects to measure next, given what was really applied (the
        baseline's move when it acted): the mismatch check judges the model, not the plan."""
        if z0 is None:
            self.expected = {}
            return
        u = np.array([applied[a] for a in self.twin.layout.actions])
        ahead = self.twin.readout(self.twin.predict_next(z0, u))
        self.expected = {tag: float(v) for tag, v in ahead.items()}

    def _mismatch(self, measurements: Mapping[str, float | None]) -> str | None:
        """Why the twin is not trusted, if its last forecast missed the plant by too much
        beyond its usual bias, or that bias itself is too large
        (`control.forecast_bias_gain`)."""
        errors, biases = {}, {}
        for tag, forecast in self.expected.items():
            value = measurements.get(tag)
            if value is None:
                continue
            scale, miss = self._error_scale(tag), float(value) - forecast
            bias = self.forecast_bias.get(tag, 0.0)
            errors[tag] = abs(miss - bias) / scale
            # a Huber step: one wild sample moves the bias by a trip's worth at most
            step = float(np.clip(miss - bias, -self.mismatch_trip * scale,
                                 self.mismatch_trip * scale))
            bias += self.spec.control.forecast_bias_gain * step
            self.forecast_bias[tag] = bias
            biases[tag] = abs(bias) / scale
        worst = max(errors.values(), default=0.0)
        bias_limit = FORECAST_BIAS_TRIPS * self.mismatch_trip
        biased = max(biases.values(), default=0.0) > bias_limit
        trip, clear = (family_threshold(t, self.mismatch_trip, len(errors))
                       for t in (self.mismatch_trip, self.mismatch_clear))
        if worst > trip or biased:
            self.good_steps = 0
        elif worst < clear:
            self.good_steps += 1
        if self.good_steps >= self.trust_after_steps:
            return None
        detail = ", ".join(f"{t} {e:.2f}" for t, e in errors.items())
        bias = ", ".join(f"{t} {b:.2f}" for t, b in biases.items() if b > bias_limit)
        return (f"model mismatch: one-step forecast error beyond its bias (in std) {detail}"
                + (f"; bias beyond {bias_limit:.3g} std: {bias}" if bias else "")
                + f"; {self.good_steps}/{self.trust_after_steps} good steps to trust again")

    def _limit_shift(self) -> np.ndarray:
        """The forecast bias of each limited sensor, normalised, in the planner's order."""
        names = [self.twin.layout.observed[i] for i in self._action_limits.limit_rows]
        return np.array([self.forecast_bias.get(name, 0.0)
                         / self.twin.norm.std[self.twin.norm.index(name)] for name in names])

    def _error_scale(self, tag: str) -> float:
        """The unit of forecast error for `tag`: its training std, widened for a sensor the
        twin reads out or forecasts poorly (noisy, weakly observable, fast) so that a miss
        within three of its held-out readout or one-step forecast RMSEs never trips (errors
        then read in "std" of that scale). The turbofan twin's surge-margin forecast missed
        its own held-out data by 1.06 % RMS (0.38 std): judged on the training std alone it
        tripped on the data it learned from."""
        std = self.twin.norm.std[self.twin.norm.index(tag)]
        usual = [float(rmse) for rmse in (self.twin.metrics.get(key, {}).get(tag)
                                          for key in ("readout_rmse", "forecast_rmse"))
                 if rmse is not None and math.isfinite(rmse)]
        if not usual:
            return std
        return max(std, MISMATCH_TRIP_SIGMAS * max(usual) / self.mismatch_trip)

    def _limit_guard(self, measurements: Mapping[str, float | None]) -> str | None:
        """Why the twin is not trusted this step, if a sensor is heading into its limit.

        The sensor is extrapolated `GUARD_LOOKAHEAD` samples ahead from its last change: near a hard
        limit the plant, not the model, has the last word (fast overshoots are exactly
        what a twin trained on safe data has seen least).
        """
        reasons = []
        self._guarded = []
        for tag in self.spec.sensors:
            value = measurements.get(tag.name)
            if value is None or (tag.low is None and tag.high is None):
                continue
            value = float(value)
            ahead = value + GUARD_LOOKAHEAD * (value - self.last_measured.get(tag.name, value))
            self.last_measured[tag.name] = value
            band = self.guard_band * self.twin.norm.std[self.twin.norm.index(tag.name)]
            near = [(side, limit) for side, limit, hit in (
                ("high", tag.high, tag.high is not None and ahead > tag.high - band),
                ("low", tag.low, tag.low is not None and ahead < tag.low + band)) if hit]
            if near:
                self._guarded.append(tag.name)
            reasons += [f"{tag.name} heading to {ahead:.4g} {tag.unit}, within {band:.3g} "
                        f"{tag.unit} of its {side} limit {limit:g}" for side, limit in near]
        return ("limit guard: " + "; ".join(reasons)) if reasons else None

    def _append(self, time_s: float, measurements: Mapping[str, float | None],
                previous: dict[str, float], events: list[SafetyEvent]) -> bool:
        """Add the sample to the window; True when the data is too stale to plan on."""
        stale = False
        if self.last_time_s is not None:
            gap = time_s - self.last_time_s
            missed = int(round(gap / self.spec.sample_period_s)) - 1
            for _ in range(min(max(missed, 0), self.twin.config.window)):
                self.rows.append({})  # missed samples are masked, never invented
                self.before.append(None)
            if gap > self.stale_after_s:
                stale = True
                events.append(SafetyEvent("stale_data", f"{gap:.3g} s since the previous "
                                          f"sample (limit {self.stale_after_s:.3g} s); "
                                          "holding actuators"))
        self.rows.append({k: (None if v is None else float(v)) for k, v in measurements.items()})
        self.before.append(previous)
        self.last_time_s = float(time_s)
        missing = [t for t in self.twin.layout.sensors if measurements.get(t) is None]
        if missing and len(missing) == len(self.twin.layout.sensors):
            events.append(SafetyEvent("missing_data", "no sensor value in this sample; "
                                      "holding actuators"))
            stale = True
        return stale

    def _goal_for(self, setpoints: Mapping[str, float],
                  measurements: Mapping[str, float | None]) -> np.ndarray:
        # disturbances are rounded so the goal moves only when conditions really change
        conditions = {}
        for tag in self.spec.disturbances:
            value = measurements.get(tag.name)
            if value is not None:
                std = self.twin.norm.std[self.twin.norm.index(tag.name)]
                conditions[tag.name] = round(float(value) / (0.1 * std)) * 0.1 * std
        key = (tuple(sorted(setpoints.items())), tuple(sorted(conditions.items())))
        if key != self._goal_key:
            self._goal_key = key
            self._goal = self.twin.goal_embedding(dict(setpoints), conditions)
            self._offset_map = None
            self._metric = self._tracking_metric(list(setpoints))
        assert self._goal is not None
        # One setpoint only: with several, the least-norm shift couples them through a
        # Jacobian the twin may have wrong (a TEP test plant tripped with it on).
        if not self.offset_gain or len(setpoints) > 1:
            return self._goal
        return self._goal + self._goal_shift(setpoints, measurements)

    def _tracking_metric(self, tags: list[str]) -> np.ndarray | None:
        """The factor W of the plan's stage cost |W (z - z_goal)|^2, W'W = I + w J'J with J
        the readout's Jacobian of the setpoint sensors at the goal: distance in embedding
        space, plus the setpoint error itself (training stds) weighted by w."""
        if not self.tracking_weight:
            return None
        assert self._goal is not None
        jacobian = self.twin.readout_jacobian(self._goal, tags)
        gram = np.eye(len(self._goal)) + self.tracking_weight * jacobian.T @ jacobian
        return np.linalg.cholesky(gram).T

    def _goal_shift(self, setpoints: Mapping[str, float],
                    measurements: Mapping[str, float | None]) -> np.ndarray:
        """Offset-free tracking: the goal embedding moves, along the readout's least-norm
        direction, by the integral of the setpoint error. A twin whose steady state is a
        little off (gain error, an unmeasured disturbance) would otherwise hold an offset.
        The integral restarts with every setpoint change and only runs near the setpoint."""
        key = tuple(sorted(setpoints.items()))
        if key != self._offset_key:
            self._offset_key, self._offset = key, {tag: 0.0 for tag in setpoints}
        for tag, target in setpoints.items():
            value = measurements.get(tag)
            if value is None:
                continue
            std = self.twin.norm.std[self.twin.norm.index(tag)]
            error = (float(target) - float(value)) / std
            if abs(error) < OFFSET_BAND:
                self._offset[tag] = float(np.clip(self._offset[tag] + self.offset_gain * error,
                                                  -OFFSET_LIMIT, OFFSET_LIMIT))
        if self._offset_map is None:
            self._offset_map = self.twin.readout_inverse(self._goal, list(setpoints))
        return self._offset_map @ np.array([self._offset[tag] for tag in setpoints])

    def _plan(self, measurements: Mapping[str, float | None], setpoints: Mapping[str, float],
              previous: dict[str, float], events: list[SafetyEvent]
              ) -> tuple[StepStatus, Mapping[str, float], PlanResult | None]:
        layout = self.twin.layout
        z0 = self._encode_window()
        u_prev = self.twin.normalise_actions(np.array([previous[a] for a in layout.actions]))
        problem = PlanningProblem(z0, u_prev, self._goal_for(setpoints, measurements),
                                  metric=self._metric, limit_shift=self._limit_shift(),
                                  pinned=self._pinned_moves(measurements, setpoints, previous))
        reason = None
        try:
            result = self.planner.plan(problem)
        except Exception as exc:  # a planner crash must never reach the plant
            result, reason = None, f"planner raised {type(exc).__name__}: {exc}"
        if result is not None and not result.ok:
            reason = f"solver failed: {result.message}"
        elif result is not None and result.solve_ms > self.planner.settings.deadline_ms:
            reason = (f"deadline overrun: {result.solve_ms:.1f} ms > "
                      f"{self.planner.settings.deadline_ms:.0f} ms")
        elif result is not None and not np.all(np.isfinite(result.actions)):
            reason = "plan is not finite"
        self._spread = {}
        if reason is None and result is not None:
            reason = self._disagreement(z0, problem.u_prev, result.actions)
        if reason is None and result is not None:
            first = self.twin.denormalise_actions(result.actions[0])
            return StepStatus.OK, dict(zip(layout.actions, map(float, first), strict=True)), result
        kind = "solver_failed" if reason and reason.startswith(("solver", "planner")) else \
            "deadline" if reason and reason.startswith("deadline") else \
            "ensemble_disagreement" if reason and reason.startswith("ensemble") else \
            "invalid_plan"
        proposal = self._baseline_or_hold(kind, str(reason), measurements, setpoints,
                                          previous, events)
        return StepStatus.FALLBACK, proposal, result

    def _within_envelope(self, proposal: Mapping[str, float], previous: Mapping[str, float],
                         events: list[SafetyEvent]) -> dict[str, float]:
        """The plan's move, kept from taking an actuator farther outside the moves the
        training log made from states like this one (it may hold, or come back)."""
        envelope = self.twin.action_envelope(self._z0, self.envelope_neighbours,
                                             self.envelope_margin)
        out = dict(proposal)
        if envelope is None:
            return out
        for i, name in enumerate(self.twin.layout.actions):
            prev, planned = float(previous[name]), float(out[name])
            low, high = min(envelope[0][i], prev), max(envelope[1][i], prev)
            kept = min(max(planned, low), high)
            if kept != planned and self._toward_a_limit(i, 1.0 if planned > kept else -1.0,
                                                        previous):
                unit = self.spec.tag(name).unit
                events.append(SafetyEvent(
                    "data_envelope", f"{name} {planned:.4g} -> {kept:.4g} {unit}: the training "
                    f"log moved it within [{envelope[0][i]:.4g}, {envelope[1][i]:.4g}] {unit} "
                    "from the nearest states", name))
                out[name] = kept
        return out

    def _protected(self, measurements: Mapping[str, float | None],
                   proposal: Mapping[str, float], previous: Mapping[str, float],
                   events: list[SafetyEvent]) -> Mapping[str, float]:
        """The proposal through the plant's limit protection; each cut recorded. The
        protection runs every sample (its regulators keep state), and a protection that
        fails holds the actuators: it is never skipped."""
        if self.protection is None:
            return proposal
        try:
            cut = dict(self.protection(measurements, proposal, previous))
        except Exception as exc:  # a broken protection must not pass a move
            events.append(SafetyEvent("limit_protection", f"limit protection raised "
                                      f"{type(exc).__name__}: {exc}; holding actuators"))
            return dict(previous)
        out = dict(proposal)
        for name in self.twin.layout.actions:
            value = cut.get(name)
            if value is None or not math.isfinite(value):
                events.append(SafetyEvent("limit_protection", f"limit protection gave no "
                                          f"finite value for {name}; holding it", name))
                out[name] = float(previous[name])
            elif value != float(proposal[name]):
                unit = self.spec.tag(name).unit
                events.append(SafetyEvent("limit_protection", f"{name} {proposal[name]:.4g} "
                                          f"-> {value:.4g} {unit} by the plant's limit "
                                          "protection", name))
                out[name] = float(value)
        return out

    def _farther_from_limits(self, twin_move: Mapping[str, float],
                             baseline: Mapping[str, float], previous: Mapping[str, float],
                             events: list[SafetyEvent]) -> dict[str, float]:
        """Near a limit the baseline acts, but where the twin's planned move goes farther from
        every limit the guard saw than the baseline's (by the twin's own sign of the effect),
        the twin's goes out: on the turbofan at takeoff power the guard held the baseline's
        slow fuel cut while the twin's plan cut at the rate limit. Not where the spec's
        `control.guard_keeps_twin_moves` is off: it kept the glucose twins' doses near the
        low limit (children: 69 % of the time below 54 mg/dL against 1.5 % under
        basal-bolus), likely because meal boluses taught them that insulin raises glucose."""
        out = dict(baseline)
        for i, name in enumerate(self.twin.layout.actions):
            ours, theirs = float(twin_move[name]), float(baseline[name])
            if not (math.isfinite(ours) and math.isfinite(theirs)) or ours == theirs:
                continue
            if not self._toward_a_limit(i, 1.0 if ours > theirs else -1.0, previous,
                                        self._guarded):
                out[name] = ours
                unit = self.spec.tag(name).unit
                events.append(SafetyEvent(
                    "limit_guard", f"{name}: the twin's {ours:.4g} {unit} kept in place of the "
                    f"baseline's {theirs:.4g} {unit}: it moves farther from "
                    f"{', '.join(self._guarded)}' limits", name))
        return out

    def _toward_a_limit(self, index: int, direction: float,
                        previous: Mapping[str, float], tags: Sequence[str] | None = None
                        ) -> bool:
        """Whether moving actuator `index` in `direction` takes a limited sensor (of `tags`,
        default every one) towards its limit within `ENVELOPE_EFFECT_STEPS` samples, by the
        sign of the twin's own prediction (the ensemble's mean): a twin misjudges how far,
        less often which way."""
        limited = [t for t in self.spec.sensors if (t.low is not None or t.high is not None)
                   and (tags is None or t.name in tags)]
        u = self.twin.normalise_actions(np.array([previous[a] for a in self.twin.layout.actions]))
        probe = u.copy()
        probe[index] += direction * ENVELOPE_PROBE
        held = [np.tile(actions, (ENVELOPE_EFFECT_STEPS, 1)) for actions in (u, probe)]
        ends = [self.twin.ensemble_rollout(self._z0, a)[:, -1].mean(axis=0) for a in held]
        before, after = self.twin.readout(ends[0]), self.twin.readout(ends[1])
        for tag in limited:
            change = float(after[tag.name] - before[tag.name])
            if (tag.high is not None and change > 0) or (tag.low is not None and change < 0):
                return True
        return False

    def _plan_record(self, result: PlanResult) -> Plan:
        dt = self.spec.sample_period_s
        horizon = len(result.actions)
        actions = self.twin.denormalise_actions(result.actions)
        sensors = self.twin.readout(result.embeddings)
        return Plan(
            time_s=[dt * (k + 1) for k in range(horizon)],
            actuators={a: [float(v) for v in actions[:, i]]
                       for i, a in enumerate(self.twin.layout.actions)},
            sensors={t: [float(v) for v in values] for t, values in sensors.items()},
            spread=dict(self._spread),
            cost=float(result.cost),
        )

    def _disagreement(self, z0: np.ndarray, u_prev: np.ndarray, actions: np.ndarray
                      ) -> str | None:
        """Roll the plan through every ensemble member; keep the per-sensor std across
        members (engineering units, per step) as the plan's spread, and say why the plan is
        not trusted if the members disagree too much early on a sensor that matters.

        The plan is first projected onto the bounds and rate limits: the members judge
        what the plant would really be given, not what the safety layer would clip away.
        """
        if len(self.twin.model.members()) < 2:
            return None  # a twin without an ensemble has nothing to compare
        lim = self._action_limits
        start = np.clip(u_prev, lim.u_low, lim.u_high)
        feasible = _project_moves(np.asarray(actions, dtype=float), start, lim)
        members = self.twin.ensemble_rollout(z0, feasible)  # (M, H, D)
        readouts = self.twin.readout(members)  # tag -> (M, H), engineering units
        worst: tuple[float, str, float] | None = None
        for tag, values in readouts.items():
            spread = values.std(axis=0)
            self._spread[tag] = [float(v) for v in spread]
            spec_tag = self.spec.tag(tag)
            if spec_tag.low is None and spec_tag.high is None and not spec_tag.controlled:
                continue
            std = self.twin.norm.std[self.twin.norm.index(tag)]
            early = float(spread[: self.disagreement_steps].max()) / std
            ratio = early / self._disagreement_limit(tag)
            if not np.isfinite(ratio) or ratio > 1.0:
                if worst is None or not np.isfinite(ratio) or ratio > worst[0]:
                    worst = (ratio, tag, early)
        if worst is None:
            return None
        _, tag, early = worst
        return (f"ensemble disagreement on {tag}: members' std {early:.3g} training std over "
                f"the first {self.disagreement_steps} planned steps (limit "
                f"{self._disagreement_limit(tag):.3g})")

    def _disagreement_limit(self, tag: str) -> float:
        """The trip for `tag` in training stds: the setting, widened to a multiple of the
        twin's held-out ensemble spread when its metrics record one."""
        usual = self.twin.metrics.get("ensemble_spread", {}).get(tag)
        if usual is None or not math.isfinite(usual):
            return self.disagreement_trip
        return max(self.disagreement_trip, DISAGREEMENT_MULTIPLE * float(usual))

    def _margins(self, measurements: Mapping[str, float | None]) -> dict[str, float]:
        """Distance of each limited sensor to its nearest limit (negative: violated)."""
        margins = {}
        for tag in self.spec.sensors:
            value = measurements.get(tag.name)
            if value is None or (tag.low is None and tag.high is None):
                continue
            sides = [tag.high - value if tag.high is not None else math.inf,
                     value - tag.low if tag.low is not None else math.inf]
            margins[tag.name] = float(min(sides))
        return margins
