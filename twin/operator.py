"""The operator's controls of a live loop, as every APC console has them: the controller's
mode, each actuator in or out of service, each controlled sensor enabled or dropped.

- `on`: the twin plans. `standby`: the baseline drives (a hold without one) while the twin
  keeps estimating, so that switching back is bumpless. `off`: the actuators hold at what
  the plant reports (its read-back, else the last command), doses at zero.
- An actuator out of service is fixed in the plan at its measured value, through the
  planners' pinned moves (`PlanningProblem.pinned`, as the baseline's actuators of a hybrid
  loop are), and what goes out for it is that value whoever proposed a move.
- A dropped sensor's setpoint is left out of the plan's goal and tracking metric (its
  tracking weight is zero); it is still measured, limited and stored.

Moves from one mode to the next are bumpless because every move leaves through the same
safety clip, rate-limited from the value last applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from .errors import InvalidInput
from .hybrid import BaselineMove
from .planning import Constraints, project_moves
from .records import SafetyEvent
from .safety import held_value
from .spec import ProcessSpec
from .twin_model import Twin

Moves = dict[str, float]
OPERATOR_EVENT = "operator"
"""The event kind of an operator's change, recorded with the step it takes effect at."""


class Mode(StrEnum):
    ON = "on"
    STANDBY = "standby"
    OFF = "off"


@dataclass(frozen=True)
class OperatorSettings:
    mode: Mode = Mode.ON
    out_of_service: frozenset[str] = field(default_factory=frozenset)  # actuators
    dropped: frozenset[str] = field(default_factory=frozenset)  # sensors

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> OperatorSettings:
        """From what `to_dict` stored (None or {}: the defaults)."""
        data = data or {}
        return cls(
            Mode(data.get("mode", Mode.ON)),
            frozenset(data.get("out_of_service", ())),
            frozenset(data.get("dropped", ())),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": str(self.mode),
            "out_of_service": sorted(self.out_of_service),
            "dropped": sorted(self.dropped),
        }

    def changed(
        self,
        spec: ProcessSpec,
        mode: str | None = None,
        out_of_service: Mapping[str, bool] | None = None,
        dropped: Mapping[str, bool] | None = None,
    ) -> OperatorSettings:
        """These settings with a change applied; an unknown mode, actuator or sensor raises
        `InvalidInput` naming it (nothing changes)."""
        if mode is not None and mode not in {m.value for m in Mode}:
            raise InvalidInput(
                f"unknown controller mode '{mode}' (known: {', '.join(m.value for m in Mode)})"
            )
        actuators = [t.name for t in spec.actuators]
        sensors = [t.name for t in spec.sensors]
        _check_names("actuator", out_of_service or {}, actuators, spec.name)
        _check_names("sensor", dropped or {}, sensors, spec.name)
        return OperatorSettings(
            Mode(mode) if mode is not None else self.mode,
            _toggled(self.out_of_service, out_of_service or {}),
            _toggled(self.dropped, dropped or {}),
        )

    def describe_change(self, before: OperatorSettings) -> list[str]:
        """What differs from `before`, in words (an annotation on the trends)."""
        words = []
        if self.mode != before.mode:
            words.append(f"controller mode {before.mode} -> {self.mode}")
        for name in sorted(self.out_of_service - before.out_of_service):
            words.append(f"actuator {name} out of service")
        for name in sorted(before.out_of_service - self.out_of_service):
            words.append(f"actuator {name} back in service")
        for name in sorted(self.dropped - before.dropped):
            words.append(f"sensor {name} dropped")
        for name in sorted(before.dropped - self.dropped):
            words.append(f"sensor {name} enabled")
        return words

    # ------------------------------------------------------------ in the controller's step

    def tracked(self, setpoints: Mapping[str, float]) -> dict[str, float]:
        """The setpoints the plan chases: those of sensors not dropped."""
        return {tag: value for tag, value in setpoints.items() if tag not in self.dropped}

    def instead(
        self, baseline: BaselineMove, setpoints: Mapping[str, float]
    ) -> tuple[Moves, SafetyEvent | None] | None:
        """The move in place of the twin's plan (None: the twin plans)."""
        if self.mode is Mode.OFF:
            return baseline.hold(), None
        if self.mode is Mode.STANDBY:
            return (baseline() if baseline.fallback is not None else baseline.hold()), None
        if not self.tracked(setpoints):
            move, event = baseline.instead(OPERATOR_EVENT, "every setpoint's sensor is dropped")
            return move, event
        return None

    def pinned(
        self,
        pinned: np.ndarray | None,
        twin: Twin,
        previous: Mapping[str, float],
        limits: Constraints,
        horizon: int,
    ) -> np.ndarray | None:
        """The plan's pinned moves ((H, A) normalised, NaN where the planner chooses) with
        each out-of-service actuator held at its measured value for the whole horizon."""
        actions = twin.layout.actions
        columns = [i for i, a in enumerate(actions) if a in self.out_of_service]
        if not columns:
            return pinned
        held = self.fixed(dict(previous), previous, twin.spec)
        before = twin.normalise_actions(np.array([previous[a] for a in actions], dtype=float))
        target = twin.normalise_actions(np.array([held[a] for a in actions], dtype=float))
        path = project_moves(np.tile(target, (horizon, 1)), before, limits)
        out = np.full((horizon, len(actions)), np.nan) if pinned is None else pinned.copy()
        out[:, columns] = path[:, columns]
        return out

    def fixed(
        self, proposal: Mapping[str, float], previous: Mapping[str, float], spec: ProcessSpec
    ) -> Moves:
        """`proposal` with every out-of-service actuator at its measured value (a dose at
        zero: holding a dose would repeat it every sample)."""
        out = dict(proposal)
        for tag in spec.actuators:
            if tag.name in self.out_of_service and tag.name in previous:
                out[tag.name] = held_value(tag, previous[tag.name])
        return out


def _check_names(kind: str, changes: Mapping[str, bool], known: list[str], process: str) -> None:
    for name, value in changes.items():
        if name not in known:
            raise InvalidInput(
                f"unknown {kind} '{name}' for process '{process}' (known: {', '.join(known)})"
            )
        if not isinstance(value, bool):
            raise InvalidInput(f"{kind} '{name}' must be true or false, got {value!r}")


def _toggled(current: Iterable[str], changes: Mapping[str, bool]) -> frozenset[str]:
    """`changes`: name -> True to add it to the set, False to take it out."""
    out = set(current)
    for name, value in changes.items():
        (out.add if value else out.discard)(name)
    return frozenset(out)
