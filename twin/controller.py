"""A twin-based controller: measurements in, safe setpoints out, one sample at a time.

Per step: validate the input, append it to the context window, encode, turn the
setpoints into a goal embedding, plan, and pass the first planned move through the
safety layer. A failed, late or non-finite plan falls back (to the process baseline
when one is given, else a hold); a gap in the data is a safe hold marked stale.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

import numpy as np

from .data import window_from_rows
from .errors import InvalidInput
from .planning import Planner, PlannerSettings, PlanningProblem, PlanResult, make_planner
from .records import Plan, SafetyEvent, StepRecord, StepStatus
from .safety import Fallback, SafetyLayer
from .twin_model import Twin


class TwinController:
    def __init__(self, twin: Twin, planner: Planner, fallback: Fallback | None = None,
                 stale_after_s: float | None = None) -> None:
        self.twin, self.planner, self.fallback = twin, planner, fallback
        self.spec = twin.spec
        self.safety = SafetyLayer(self.spec)
        self.stale_after_s = stale_after_s or 3.0 * self.spec.sample_period_s
        self.reset()

    @classmethod
    def from_twin(cls, twin: Twin, planner: str = "casadi",
                  settings: PlannerSettings | None = None,
                  fallback: Fallback | None = None) -> TwinController:
        return cls(twin, make_planner(planner, twin, settings), fallback)

    @classmethod
    def from_checkpoint_bytes(cls, data: bytes, planner: str = "casadi",
                              fallback: Fallback | None = None) -> TwinController:
        return cls.from_twin(Twin.from_bytes(data), planner, fallback=fallback)

    def reset(self, applied: Mapping[str, float] | None = None) -> None:
        w = self.twin.config.window
        self.rows: deque[dict[str, float | None]] = deque([{}] * w, maxlen=w)
        self.before: deque[dict[str, float] | None] = deque([None] * w, maxlen=w)
        self.applied: dict[str, float] = dict(applied or self.safety.initial())
        self.last_time_s: float | None = None
        self.step_index = 0
        self._goal_key: tuple | None = None
        self._goal: np.ndarray | None = None
        reset = getattr(self.planner, "reset", None)
        if reset:
            reset()

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
        if not setpoints:
            raise InvalidInput("at least one setpoint is needed")

    # -- the step ------------------------------------------------------------------------
    def step(self, time_s: float, measurements: Mapping[str, float | None],
             setpoints: Mapping[str, float]) -> StepRecord:
        self._validate(time_s, measurements, setpoints)
        events: list[SafetyEvent] = []
        previous = dict(self.applied)
        for tag in self.twin.layout.actions:  # the plant may report what it really applied
            if measurements.get(tag) is not None:
                previous[tag] = float(measurements[tag])  # type: ignore[arg-type]
        stale = self._append(time_s, measurements, previous, events)
        plan_result: PlanResult | None = None
        if stale:
            status, proposal = StepStatus.STALE, previous
        else:
            status, proposal, plan_result = self._plan(measurements, setpoints, previous, events)
        safe = self.safety.enforce(proposal, previous)
        events += safe.events
        self.applied = safe.actuators
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
        assert self._goal is not None
        return self._goal

    def _plan(self, measurements: Mapping[str, float | None], setpoints: Mapping[str, float],
              previous: dict[str, float], events: list[SafetyEvent]
              ) -> tuple[StepStatus, Mapping[str, float], PlanResult | None]:
        layout = self.twin.layout
        window = window_from_rows(list(self.rows), list(self.before), layout, self.twin.norm)
        z0 = self.twin.encode(window)
        u_prev = self.twin.normalise_actions(np.array([previous[a] for a in layout.actions]))
        problem = PlanningProblem(z0, u_prev, self._goal_for(setpoints, measurements))
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
        if reason is None and result is not None:
            first = self.twin.denormalise_actions(result.actions[0])
            return StepStatus.OK, dict(zip(layout.actions, map(float, first), strict=True)), result
        kind = "solver_failed" if reason and reason.startswith(("solver", "planner")) else \
            "deadline" if reason and reason.startswith("deadline") else "invalid_plan"
        if self.fallback is not None:
            proposal = dict(self.fallback(measurements, setpoints, previous))
            events.append(SafetyEvent(kind, f"{reason}; baseline controller used"))
        else:
            proposal = previous
            events.append(SafetyEvent(kind, f"{reason}; holding actuators"))
        return StepStatus.FALLBACK, proposal, result

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
            cost=float(result.cost),
        )

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
