"""Where an actuator's economic push ends while the ranged sensors are free.

An actuator's direction is a small linear term in the plan's cost
(`OperatorSettings.economic_weights`), but with every ranged sensor inside its range there
is no goal: the loop holds and the push never acts. An economic optimiser moves such an
actuator its way until a constraint binds, the actuator's limit or a ranged sensor's
bound; so the push becomes a goal: the free ranged sensor whose bound it reaches first is
chased to that bound, the steady state the push ends at. Which bound, and which sensor
binds first, come from the twin's own steady-state gains (`twin.gains`): the plan moves
the actuator through the twin, so the twin's sign says where its plan takes each sensor.
The plan's limits and the safety clip keep the actuator within its limits and rates on the
way; an actuator at its limit first leaves the bound short, as it must.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .gains import CLEAR_EFFECT, twin_gains
from .twin_model import Twin

Range = tuple[float, float]
WAYS = {"maximise": 1.0, "minimise": -1.0}
"""Which way each direction moves its actuator."""


class ActuatorPush:
    """The twin's gains a loop's actuator pushes are read with (state of the loop the
    settings run in, like `operator.RangeChase`; found once, when a loop's settings first
    meet its twin with an actuator pushed)."""

    def __init__(self) -> None:
        self.gains: dict[tuple[str, str], float] | None = None  # per training std moved
        self.pushable: frozenset[str] = frozenset()

    def learn(self, twin: Twin, economic: Mapping[str, str], held: Iterable[str]) -> None:
        """Gains of `twin` when an actuator it plans (not in `held`) has a direction."""
        actions = twin.layout.actions
        self.pushable = frozenset(a for a in actions if a not in set(held))
        if self.gains is not None or not any(a in economic for a in self.pushable):
            return
        sensors = [t.name for t in twin.spec.sensors if t.name in twin.layout.observed]
        trained = int(twin.train_config.get("rollout_steps", 16))
        try:
            found = twin_gains(twin, sensors=sensors)
            early = {
                (g.actuator, g.sensor): g.gain for g in twin_gains(twin, trained, sensors=sensors)
            }
        except ValueError:  # a twin whose bank keeps no actions cannot be step-tested
            self.gains = {}
            return
        std = {name: float(twin.norm.std[twin.norm.index(name)]) for name in [*actions, *sensors]}
        # Signs not trusted, so not pushed to: a gain moving its sensor less than a clear
        # effect per std (noise), and one whose sign differs at the horizon the twin was
        # trained over (an inverse response, or a long rollout drifting: one tiny van de
        # Vusse twin in six read D -> Ca negative at 16 samples, positive at 4 as the plant)
        self.gains = {
            (g.actuator, g.sensor): g.gain * std[g.actuator]
            for g in found
            if abs(g.gain) * std[g.actuator] >= CLEAR_EFFECT * std[g.sensor]
            and g.gain * early[(g.actuator, g.sensor)] > 0.0
        }

    def target(
        self,
        economic: Mapping[str, str],
        free: Mapping[str, tuple[Range, float]],
        goals: int,
    ) -> tuple[str, float] | None:
        """(sensor, bound) the pushes drive to first, from `free`: sensor -> (range,
        measured). None without a push, a free sensor it moves, or a planned actuator left
        over by the `goals` already chased (a setpoint or a range bound wins)."""
        ways = {a: WAYS[w] for a, w in economic.items() if a in self.pushable and w in WAYS}
        if not ways or not self.gains or goals >= len(self.pushable):
            return None
        best: tuple[float, str, float] | None = None
        for sensor, ((low, high), measured) in sorted(free.items()):
            drift = sum(way * self.gains.get((a, sensor), 0.0) for a, way in ways.items())
            if drift == 0.0:
                continue
            bound = high if drift > 0 else low
            travel = max((bound - measured) / drift, 0.0)  # training stds of the actuators
            if best is None or travel < best[0]:
                best = (travel, sensor, bound)
        return None if best is None else (best[1], best[2])
