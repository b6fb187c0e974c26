"""A twin-based controller: measurements in, safe setpoints out, one sample at a time.

The controller composes its parts, do-mpc style: the estimator (`twin.estimator`: the
context window, forecast bias, mismatch statistics), the goal integrator (`twin.goals`),
the planner (`twin.planning`), the supervisor's guards (`twin.supervisor`) and the safety
clip (`twin.safety`). Per step: validate, append the sample, judge the twin, plan, let the
guards decide whose move goes out, clip it, record it. A failed, late or non-finite plan
falls back (to the process baseline when one is given, else a hold); so does a plan on
which the ensemble members disagree; a gap in the data is a safe hold marked stale.
`twin.assembly.build_controller` assembles one for a process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import InvalidInput
from .estimator import Estimator
from .goals import OFFSET_GAIN, GoalIntegrator
from .hybrid import BaselineMove
from .operator import Mode, OperatorSettings
from .planning import Planner, PlannerSettings, PlanningProblem, PlanResult, make_planner
from .records import EventKind, Plan, SafetyEvent, StepRecord, StepStatus
from .safety import Fallback, Protection, SafetyLayer, sensor_margins
from .setpoint_watch import SetpointWatch
from .spec import ActuatorKind
from .supervisor import (
    DISAGREEMENT_TRIP,
    ENVELOPE_MARGIN,
    ENVELOPE_NEIGHBOURS,
    GUARD_BAND,
    LimitGuard,
    Supervisor,
)
from .twin_model import Twin

WARMUP_SAMPLES: int | None = None
"""Samples of history the twin needs before it acts (None: its whole window). With less,
its embedding of the plant is a guess: on the CSTR benchmark (seed 7) a cold twin moved the
coolant 3 K off a steady state at its first sample and took 15 samples to come back (cost
16.6); acting after 8 samples gave 15.5, after the full 16 gave 14.8. Until then the
baseline acts, or the actuators hold. A loop primed from stored history (`prime`) is warm
at once."""
AT_BOUND = 1e-3
"""Share of an actuator's range within which it counts as at a bound, or as cut."""

Moves = dict[str, float]
Values = Mapping[str, float | None]


class TwinController:
    def __init__(
        self,
        twin: Twin,
        planner: Planner,
        fallback: Fallback | None = None,
        stale_after_s: float | None = None,
        guard_band: float = GUARD_BAND,
        mismatch_trip: float = 0.3,
        mismatch_clear: float = 0.15,
        trust_after_steps: int = 10,
        disagreement_trip: float = DISAGREEMENT_TRIP,
        disagreement_steps: int = 3,
        offset_gain: float = OFFSET_GAIN,
        warmup_samples: int | None = WARMUP_SAMPLES,
        tracking_weight: float | None = None,
        envelope_neighbours: int | None = None,
        envelope_margin: float = ENVELOPE_MARGIN,
        protection: Protection | None = None,
    ) -> None:
        """Thresholds are in training standard deviations of each sensor: `guard_band`
        (`Supervisor.limit_guard`), `mismatch_trip`/`mismatch_clear`/`trust_after_steps`
        (the estimator's trust, with hysteresis), `disagreement_trip`/`disagreement_steps`
        (`Supervisor.disagreement`). `warmup_samples`: samples the window must hold before
        the twin acts (`WARMUP_SAMPLES`). `tracking_weight`: weight of the setpoint error in
        the stage cost (None: the spec's). `envelope_neighbours`/`envelope_margin`: the data
        envelope (None: `ENVELOPE_NEIGHBOURS`, or 0 where the spec's loop policy has none).
        `protection`: the plant's own limit protection, run on every move that goes out."""
        self.twin, self.planner, self.fallback, self.spec = twin, planner, fallback, twin.spec
        policy = self.spec.control.loop_policy
        if envelope_neighbours is None:
            envelope_neighbours = ENVELOPE_NEIGHBOURS if policy.data_envelope else 0
        self.supervisor = Supervisor(
            twin,
            guard_band,
            disagreement_trip,
            disagreement_steps,
            envelope_neighbours,
            envelope_margin,
            protection,
        )
        self.estimator = Estimator(
            twin,
            mismatch_trip,
            mismatch_clear,
            trust_after_steps,
            stale_after_s or 3.0 * self.spec.sample_period_s,
        )
        self.tracking_weight = (
            self.spec.control.tracking_weight if tracking_weight is None else float(tracking_weight)
        )
        self.goals = GoalIntegrator(twin, self.tracking_weight, offset_gain)
        # watched: the controlled sensors a PI loop of the spec's baseline regulates (a
        # baseline that does not feed back on a sensor is no remedy for missing it)
        regulated = {loop.sensor for loop in self.spec.baseline}
        self.watch = SetpointWatch(
            {
                t.name: float(twin.norm.std[twin.norm.index(t.name)])
                for t in self.spec.controlled
                if t.name in regulated
            },
            self.planner.settings.horizon,
        )
        window = twin.config.window
        self.warmup_samples = (
            window if warmup_samples is None else min(max(int(warmup_samples), 0), window)
        )
        self.safety = SafetyLayer(self.spec)
        self.operator = OperatorSettings()  # the operator's mode and services (twin.operator)
        self.reset()

    @classmethod
    def from_twin(
        cls,
        twin: Twin,
        planner: str = "casadi",
        settings: PlannerSettings | None = None,
        fallback: Fallback | None = None,
        protection: Protection | None = None,
    ) -> TwinController:
        """A controller with a planner by name; for a process's own baseline, protection
        and variant use `twin.assembly.build_controller`."""
        return cls(twin, make_planner(planner, twin, settings), fallback, protection=protection)

    def reset(self, applied: Mapping[str, float] | None = None) -> None:
        self.estimator.reset()
        self.goals.reset()
        self.watch.reset()
        self.applied: Moves = dict(applied or self.safety.initial())
        self.held_back = False
        self.step_index = 0
        getattr(self.planner, "reset", lambda: None)()  # a planner may keep a warm start

    def prime(
        self, history: Sequence[tuple[float, Mapping[str, float | None], Mapping[str, float]]]
    ) -> None:
        """Rebuild the context window from stored steps, oldest first, each (time_s,
        measurements, actuators applied then): the state another API worker or a process
        before a restart left. Nothing is planned; the twin's next forecast starts fresh."""
        self.reset()
        applied = self.estimator.prime(history)
        if applied is not None:
            self.applied = applied

    def step(self, time_s: float, measurements: Values, setpoints: Values) -> StepRecord:
        est, sup = self.estimator, self.supervisor
        check_step(self.twin, est.last_time_s, time_s, measurements, setpoints)
        elapsed = None if est.last_time_s is None else time_s - est.last_time_s
        previous = dict(self.applied)
        for tag in self.twin.layout.actions:  # the plant may report what it really applied
            if measurements.get(tag) is not None:
                previous[tag] = float(measurements[tag])  # type: ignore[arg-type]
        events = est.append(time_s, measurements, previous)
        stale = bool(events)
        guard = sup.limit_guard(measurements, est.trends())
        est.remember(measurements)
        mismatch = est.mismatch_reason(est.observe(measurements))
        baseline = BaselineMove(self.twin, self.fallback, measurements, setpoints, previous)
        result, z0, spread = None, None, {}
        if stale:
            status, proposal = StepStatus.STALE, baseline.hold()
        else:
            # the twin forecasts while it warms up: one whose forecasts miss the plant then
            # is not trusted when it ends (the mismatch check's hysteresis)
            z0, samples = est.encode(), est.history_samples()
            if samples < self.warmup_samples:
                why = f"warming up: {samples}/{self.warmup_samples} samples of history"
                proposal, event = baseline.instead(EventKind.WARMING_UP, why)
                status = StepStatus.FALLBACK
                events.append(event)
            elif (manual := self.operator.instead(baseline, setpoints)) is not None:
                status, (proposal, event) = StepStatus.OK, manual
                events += [event] if event else []
            else:
                problem = self._problem(z0, measurements, setpoints, baseline)
                missed = self.watch.observe(
                    self.operator.tracked(setpoints, measurements), measurements
                )
                status, proposal, result, spread = self._act(
                    problem, guard, mismatch, baseline, events, missed
                )
            proposal, cut = sup.protected(measurements, proposal, previous, baseline.hold())
            events += cut
        proposal = self.operator.fixed(proposal, previous, self.spec)
        safe = self.safety.enforce(proposal, previous, elapsed)
        self.applied = safe.actuators
        self.held_back = self._held_back(status, result, safe.actuators, baseline)
        est.forecast(z0, safe.actuators)
        record = StepRecord(
            step=self.step_index,
            time_s=float(time_s),
            measurements={k: float(v) for k, v in measurements.items() if v is not None},
            setpoints={k: float(v) for k, v in setpoints.items()},
            actuators=dict(safe.actuators),
            status=status,
            solve_ms=result.solve_ms if result else 0.0,
            events=events + safe.events,
            plan=plan_record(self.twin, result, spread) if result else None,
            margins=sensor_margins(self.spec, measurements),
        )
        self.step_index += 1
        return record

    def _problem(
        self, z0: np.ndarray, measurements: Values, setpoints: Values, baseline: BaselineMove
    ) -> PlanningProblem:
        actions, limits = self.twin.layout.actions, self.supervisor.action_limits
        horizon = self.planner.settings.horizon
        return PlanningProblem(
            z0,
            self.twin.normalise_actions(np.array([baseline.previous[a] for a in actions])),
            self.goals.goal_for(
                self.operator.tracked(setpoints, measurements), measurements, not self.held_back
            ),
            metric=self.goals.metric,
            limit_shift=self.estimator.limit_shift(self.supervisor.limited),
            pinned=self.operator.pinned(
                baseline.pinned(limits, horizon), self.twin, baseline.previous, limits, horizon
            ),
            economic=self.operator.economic_weights(self.twin, z0, self.tracking_weight),
        )

    def _held_back(
        self,
        status: StepStatus,
        result: PlanResult | None,
        applied: Mapping[str, float],
        baseline: BaselineMove,
    ) -> bool:
        """Whether the moves were not free to close a setpoint miss: an actuator the plan
        moves sits at a bound, or the plan's move was cut on its way out (data envelope,
        the plant's protection, a bound). The offset estimate then holds (conditional
        integration, the anti-windup of a PI): integrated on, it wound up to its limit on
        the held-out Shell fractionator while the envelope held the side draw, and the
        loop swung (docs/benchmarks.md)."""
        first = (
            self.twin.denormalise_actions(result.actions[0])
            if status is StepStatus.OK and result is not None
            else None
        )
        for i, name in enumerate(self.twin.layout.actions):
            tag = self.spec.tag(name)
            if name in baseline.driven_names or tag.kind is ActuatorKind.DOSE:
                continue
            assert tag.low is not None and tag.high is not None
            span, value = tag.high - tag.low, float(applied[name])
            if min(value - tag.low, tag.high - value) <= AT_BOUND * span:
                return True
            if first is not None and abs(value - float(first[i])) > AT_BOUND * span:
                return True
        return False

    def set_operator(self, settings: OperatorSettings) -> None:
        """The operator's settings from the next step on; back to `on`, the planner starts
        afresh (no warm start from a plan made before the switch)."""
        if settings.mode is Mode.ON and self.operator.mode is not Mode.ON:
            getattr(self.planner, "reset", lambda: None)()
        self.operator = settings

    def _act(
        self,
        problem: PlanningProblem,
        guard: LimitGuard,
        mismatch: str | None,
        baseline: BaselineMove,
        events: list[SafetyEvent],
        missed: str | None = None,
    ) -> tuple[StepStatus, Moves, PlanResult | None, dict[str, list[float]]]:
        """Plan; the move that goes out, and whose (the plan's, or the baseline's when the
        plan fails, a guard trips or the setpoint watch has set the twin aside), with the
        plan and its spread."""
        z0 = problem.z0
        result, kind, why = call_planner(self.planner, problem)
        spread: dict[str, list[float]] = {}
        if why is None and result is not None:
            kind = EventKind.ENSEMBLE_DISAGREEMENT
            why, spread = self.supervisor.disagreement(z0, problem.u_prev, result.actions)
        planned = None
        if why is None and result is not None:
            first = self.twin.denormalise_actions(result.actions[0])
            planned = dict(zip(self.twin.layout.actions, map(float, first), strict=True))
            proposal = planned
        else:
            proposal, event = baseline.instead(kind, str(why))
            events.append(event)
        if guard.reason or mismatch:
            handed, found = self.supervisor.handover(planned, z0, guard, mismatch, baseline)
            events += found
            if handed is not None:
                proposal, planned = handed, None
        if missed and planned is not None and baseline.fallback is not None:
            proposal, event = baseline.instead(EventKind.SETPOINT_MISSED, missed)
            events.append(event)
            planned = None
        status = StepStatus.OK if planned is not None else StepStatus.FALLBACK
        if planned is not None:  # the twin's own move goes out: keep it in the envelope
            proposal, cut = self.supervisor.within_envelope(z0, proposal, baseline.previous)
            events += cut
        return status, {**proposal, **baseline.driven()}, result, spread


def call_planner(
    planner: Planner, problem: PlanningProblem
) -> tuple[PlanResult | None, EventKind, str | None]:
    """(the result, and why it cannot be used: its kind and reason, None when it can)."""
    try:
        result = planner.plan(problem)
    except Exception as exc:  # a planner crash must never reach the plant
        return None, EventKind.SOLVER_FAILED, f"planner raised {type(exc).__name__}: {exc}"
    if not result.ok:
        return result, EventKind.SOLVER_FAILED, f"solver failed: {result.message}"
    if result.solve_ms > planner.settings.deadline_ms:
        return (
            result,
            EventKind.DEADLINE,
            (f"deadline overrun: {result.solve_ms:.1f} ms > {planner.settings.deadline_ms:.0f} ms"),
        )
    if not np.all(np.isfinite(result.actions)):
        return result, EventKind.INVALID_PLAN, "plan is not finite"
    return result, EventKind.INVALID_PLAN, None


def plan_record(twin: Twin, result: PlanResult, spread: Mapping[str, list[float]]) -> Plan:
    dt = twin.spec.sample_period_s
    actions = twin.denormalise_actions(result.actions)
    sensors = twin.readout(result.embeddings)
    return Plan(
        time_s=[dt * (k + 1) for k in range(len(result.actions))],
        actuators={a: [float(v) for v in actions[:, i]] for i, a in enumerate(twin.layout.actions)},
        sensors={t: [float(v) for v in values] for t, values in sensors.items()},
        spread=dict(spread),
        cost=float(result.cost),
    )


def check_step(
    twin: Twin,
    last_time_s: float | None,
    time_s: float,
    measurements: Mapping[str, float | None],
    setpoints: Mapping[str, float],
) -> None:
    """Refuse a step the controller cannot take, with a clear message; change nothing."""
    spec = twin.spec
    if not isinstance(time_s, int | float) or not math.isfinite(time_s):
        raise InvalidInput(f"time_s must be a finite number of seconds, got {time_s!r}")
    if last_time_s is not None and time_s <= last_time_s:
        raise InvalidInput(
            f"time_s {time_s} s is not after the previous step's "
            f"{last_time_s} s; timestamps must strictly increase"
        )
    known = set(twin.layout.observed) | set(twin.layout.actions)
    for tag, value in measurements.items():
        if tag not in known:
            raise InvalidInput(
                f"unknown tag '{tag}' for process '{spec.name}' (known: {', '.join(sorted(known))})"
            )
        if value is not None and (not isinstance(value, int | float) or not math.isfinite(value)):
            raise InvalidInput(
                f"measurement '{tag}' must be a finite number or null (missing), got {value!r}"
            )
    for tag, value in setpoints.items():
        if tag not in twin.layout.sensors:
            raise InvalidInput(f"setpoint for '{tag}', which is not a sensor of '{spec.name}'")
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidInput(f"setpoint '{tag}' must be a finite number, got {value!r}")
        limits = spec.tag(tag)
        if (limits.high is not None and value >= limits.high) or (
            limits.low is not None and value <= limits.low
        ):
            raise InvalidInput(
                f"setpoint {value:g} {limits.unit} for '{tag}' is not "
                f"inside its limits [{limits.low}, {limits.high}]"
            )
    if not setpoints:
        raise InvalidInput("at least one setpoint is needed")
