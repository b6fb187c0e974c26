"""The baseline's share of one sample: its move (asked once), the hold without one, and
the actuators it drives whoever plans the rest (`control.baseline_actuators`, a hybrid
closed loop) with the moves it pins in the plan."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .planning import Constraints, project_moves
from .records import EventKind, SafetyEvent
from .safety import Fallback, hold
from .twin_model import Twin

Moves = dict[str, float]


class BaselineMove:
    """The baseline of one sample. A stateful baseline (integrators, its own clock) must run
    once per sample, however many parts of the step ask for its move: build one per step."""

    def __init__(
        self,
        twin: Twin,
        fallback: Fallback | None,
        measurements: Mapping[str, float | None],
        setpoints: Mapping[str, float],
        previous: Mapping[str, float],
    ) -> None:
        self.twin, self.spec, self.fallback = twin, twin.spec, fallback
        self.previous, self.measurements = dict(previous), measurements
        self._args = (measurements, setpoints, self.previous)
        self._move: Moves | None = None

    def __call__(self) -> Moves:
        """The baseline's move (only when there is a baseline)."""
        assert self.fallback is not None
        if self._move is None:
            self._move = dict(self.fallback(*self._args))
        return dict(self._move)

    def hold(self) -> Moves:
        return hold(self.spec, self.previous)

    def instead(self, kind: EventKind, why: str) -> tuple[Moves, SafetyEvent]:
        """The baseline's move in place of the twin's (or a hold without one), recorded."""
        if self.fallback is None:
            return self.hold(), SafetyEvent(kind, f"{why}; holding actuators")
        return self(), SafetyEvent(kind, f"{why}; baseline controller used")

    @property
    def driven_names(self) -> tuple[str, ...]:
        """The spec's `control.baseline_actuators`, when there is a baseline to drive them."""
        return self.spec.control.baseline_actuators if self.fallback is not None else ()

    def driven(self) -> Moves:
        """The baseline's move on the actuators it drives."""
        names = self.driven_names
        move = self() if names else {}
        return {name: move[name] for name in names if name in move}

    def pinned(self, limits: Constraints, horizon: int) -> np.ndarray | None:
        """The baseline's moves on the actuators it drives as the plan must take them ((H, A)
        normalised, NaN for the twin's actuators; None: none driven): its move now, inside
        the bounds and the rate window, then back to the tag's nominal at the rate limit (a
        pump's bolus: this one, then none, since the wizard's next is not known yet)."""
        names = self.driven_names
        if not names:
            return None
        twin, actions, spec = self.twin, self.twin.layout.actions, self.spec
        move = self()
        before = np.array([self.previous[a] for a in actions], dtype=float)
        now = np.array([move.get(a, self.previous[a]) for a in actions], dtype=float)
        nominal = np.array(
            [spec.tag(a).nominal if spec.tag(a).nominal is not None else now[i]
             for i, a in enumerate(actions)], dtype=float)  # fmt: skip
        if not (np.all(np.isfinite(now)) and np.all(np.isfinite(nominal))):
            return None  # the baseline's move is unusable: the safety clip deals with it
        before, now, nominal = (twin.normalise_actions(v) for v in (before, now, nominal))
        targets = np.vstack([now, np.tile(nominal, (horizon - 1, 1))])
        pinned = project_moves(targets, before, limits)
        pinned[:, [i for i, a in enumerate(actions) if a not in names]] = np.nan
        return pinned
