"""The one way a twin controller is assembled, for the CLI, live loops, replays and the
benchmarks alike: a twin (or its checkpoint), a planner, and what the process lends it
(`PlantParts`: its baseline and limit protection, bound to the twin's variant)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .baseline import PlantParts, spec_fallback
from .controller import TwinController
from .planning import Planner, PlannerSettings, make_planner
from .spec import ActuatorKind, TagRole
from .twin_model import Twin


def build_controller(
    twin: Twin | bytes,
    planner: str | Planner = "casadi",
    *,
    parts: PlantParts | None = None,
    settings: PlannerSettings | None = None,
    **tuning: Any,
) -> TwinController:
    """A controller for `twin` (a checkpoint's bytes are loaded). `planner`: a name
    (`twin.planner_names`) or a planner already built for this twin. `parts`: the
    baseline and protection of the twin's process and variant
    (`processes.plant_parts(twin.spec)` for a built-in one); None: the PI loops its tag
    file declares, else a hold, and no protection. `tuning`: `TwinController`'s
    thresholds."""
    if isinstance(twin, bytes | bytearray):
        twin = Twin.from_bytes(bytes(twin))
    if parts is None:
        parts = PlantParts(fallback=spec_fallback(twin.spec))
    twin = _with_doses(twin, parts.doses)
    if isinstance(planner, str):
        planner = make_planner(planner, twin, settings)
    elif settings is not None:
        raise ValueError("planner settings go with a planner name, not a built planner")
    return TwinController(twin, planner, parts.fallback, protection=parts.protection, **tuning)


def _with_doses(twin: Twin, doses: Sequence[str]) -> Twin:
    """The twin with `doses` marked `kind: dose` in its spec: a checkpoint saved before its
    process's tag file said so must not hold a bolus as a level."""
    stale = {
        t.name
        for t in twin.spec.tags
        if t.name in doses and t.role is TagRole.ACTUATOR and t.kind is not ActuatorKind.DOSE
    }
    if not stale:
        return twin
    tags = tuple(
        t.model_copy(update={"kind": ActuatorKind.DOSE}) if t.name in stale else t
        for t in twin.spec.tags
    )
    return dataclasses.replace(twin, spec=twin.spec.model_copy(update={"tags": tags}))
