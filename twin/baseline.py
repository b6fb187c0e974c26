"""What a process lends a controller (`PlantParts`), and the baseline of a process known
only from its tag file (its PI loops)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .safety import Fallback, Protection
from .spec import ProcessSpec

MOVED_ELSEWHERE = 1e-3
"""Share of an actuator's range by which the applied value may differ from what a PI loop
asked (read-back rounding) before the loop counts it as moved by another controller."""


def spec_fallback(spec: ProcessSpec) -> Fallback | None:
    """Velocity-form PI loops from `spec.baseline`; None when the tag file declares none.

    Each call continues from the applied actuator value (bumpless), so the loop can take
    over from the twin at any step; a loop whose actuator another controller moved since
    its last call starts afresh (no proportional kick from an error seen before the twin
    took over); a loop without its measurement or setpoint holds.
    """
    if not spec.baseline:
        return None
    dt = spec.sample_period_s
    previous_error: dict[str, float | None] = {loop.sensor: None for loop in spec.baseline}
    asked: dict[str, float] = {}  # what each loop's actuator was last set to

    def fallback(
        measurements: Mapping[str, float | None],
        setpoints: Mapping[str, float],
        applied: Mapping[str, float],
    ) -> dict[str, float]:
        out = dict(applied)
        for loop in spec.baseline:
            measured, target = measurements.get(loop.sensor), setpoints.get(loop.sensor)
            if loop.kp is None or loop.ti_s is None:  # gains not yet tuned (twin.simc): hold
                continue
            if measured is None or target is None:
                previous_error[loop.sensor] = None
                continue
            error = float(target) - float(measured)
            before = previous_error[loop.sensor]
            tag, now = spec.tag(loop.actuator), float(applied[loop.actuator])
            span = tag.high - tag.low  # type: ignore[operator]
            if not abs(asked.get(loop.actuator, math.inf) - now) <= MOVED_ELSEWHERE * span:
                before = None  # another controller moved it: take over bumpless
            proportional = loop.kp * ((error - before) if before is not None else 0.0)
            integral = loop.kp * dt / loop.ti_s * error
            step = spec.rate_limit_per_sample(tag)  # inside the safety clip: what it asks
            wanted = min(max(proportional + integral, -step), step)  # is what it gets
            out[loop.actuator] = min(max(now + wanted, tag.low), tag.high)  # type: ignore[type-var]
            asked[loop.actuator] = out[loop.actuator]
            previous_error[loop.sensor] = error
        return out

    return fallback


@dataclass(frozen=True)
class PlantParts:
    """What a process lends a twin controller, for one variant of it (a glucose patient):
    the baseline it falls back to and the plant's own limit protection (None: hold, and
    no protection), and which actuators are doses: a twin trained before its tag file
    said so still holds them at zero. `processes.plant_parts` gives a built-in process's."""

    variant: str | None = None
    fallback: Fallback | None = None
    protection: Protection | None = None
    doses: tuple[str, ...] = ()  # actuators the process gives as doses (`kind: dose`)
