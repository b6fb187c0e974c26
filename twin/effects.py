"""Known signs of cause and effect, declared in a tag file.

Industrial model identification lets the engineer state what physics makes certain: more
coolant temperature raises the reactor's, more insulin lowers glucose. A spec lists them
as `effects: [{actuator, sensor, sign}]`; training keeps the twin's gain of each pair on
that side of zero (`twin.gains.sign_penalty`), and the gain check compares them
(`twin.gains.gain_table`).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class Effect(BaseModel):
    """The known sign of an actuator's effect on a sensor: `positive` when raising the
    actuator raises the sensor (in steady state, or after a dose once it acts)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    actuator: str
    sensor: str
    sign: Literal["positive", "negative"]

    @property
    def direction(self) -> float:
        return 1.0 if self.sign == "positive" else -1.0


def check_effects(
    effects: Collection[Effect], actuators: Collection[str], sensors: Collection[str]
) -> None:
    """Each effect joins an actuator tag to a sensor tag, each pair once; the error names
    the entry by its place and pair."""
    seen: set[tuple[str, str]] = set()
    for i, effect in enumerate(effects):
        entry = f"effects[{i}] ({effect.actuator} -> {effect.sensor})"
        if effect.actuator not in actuators:
            raise ValueError(
                f"{entry}: '{effect.actuator}' is not an actuator tag "
                f"(actuators: {', '.join(actuators)})"
            )
        if effect.sensor not in sensors:
            raise ValueError(
                f"{entry}: '{effect.sensor}' is not a sensor tag (sensors: {', '.join(sensors)})"
            )
        if (effect.actuator, effect.sensor) in seen:
            raise ValueError(f"{entry}: this pair is declared twice")
        seen.add((effect.actuator, effect.sensor))


def effect_pair(data: Any, index: int) -> str:
    """' (actuator -> sensor)' of a raw effect entry, as far as it says; '' if unreadable."""
    try:
        entry = data["effects"][index]
        return f" ({entry.get('actuator', '?')} -> {entry.get('sensor', '?')})"
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
