"""Replays that drive the twin: loading it and its controller, and shadow mode (the
controller planning beside the recorded plant)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import pandas as pd
from sqlalchemy.orm import Session

from api.replay_schemas import ReplaySpec
from api.services.models import load_model_bytes
from twin.records import EpisodeResult, StepRecord
from twin.spec import ProcessSpec

StepHook = Callable[[int, int | None, str], None]
"""(samples done, samples in all or None, phase): the worker reports and checks cancels."""


def load_twin(session: Session, model_id: int) -> Any:
    from twin.twin_model import Twin  # late: torch loads only when there is work

    return Twin.from_bytes(load_model_bytes(session, model_id))  # sha256 verified


def replay_controller(twin: Any, planner: str) -> Any:
    # late: torch and casadi load only when there is work
    # late: torch and the simulators load only when a replay runs
    from processes import plant_parts
    from twin.assembly import build_controller

    return build_controller(twin, planner, parts=plant_parts(twin.spec))


def shadow_episode(
    twin: Any, spec: ReplaySpec, log: pd.DataFrame, recorded: pd.DataFrame, on_step: StepHook
) -> EpisodeResult:
    from twin.replay import default_setpoints, shadow  # late: as above

    sensors = [t.name for t in twin.spec.sensors]
    recorded = recorded[[c for c in recorded.columns if c in sensors]].ffill().bfill()
    per_step: list[dict[str, float]] | None = None
    if spec.setpoints is not None:
        setpoints, origin = dict(spec.setpoints), "given"
    elif not recorded.empty:
        per_step = [
            {k: float(v) for k, v in row.items() if math.isfinite(v)}
            for row in recorded.to_dict("records")
        ]
        setpoints, origin = per_step[0], "recorded"
    else:
        setpoints, origin = default_setpoints(log, twin.spec), "median"
    watched = _Watched(replay_controller(twin, spec.planner), on_step, len(log), per_step)
    episode = shadow(cast(Any, watched), log, setpoints)
    episode.config["setpoints"] = setpoints if per_step is None else "recorded"
    episode.config["setpoints_from"] = origin
    return episode


class _Watched:
    """A TwinController seen through: reports every step to the worker and, when the run
    recorded setpoints, hands the controller the ones of that step (shadow() itself holds
    one setpoint dict for the whole log)."""

    def __init__(
        self, inner: Any, on_step: StepHook, total: int, per_step: list[dict[str, float]] | None
    ) -> None:
        self.inner, self.on_step, self.total, self.per_step = inner, on_step, total, per_step
        self.done = 0

    @property
    def spec(self) -> ProcessSpec:
        return self.inner.spec

    def reset(self, applied: Mapping[str, float] | None = None) -> None:
        self.inner.reset(applied)

    def step(
        self,
        time_s: float,
        measurements: Mapping[str, float | None],
        setpoints: Mapping[str, float],
    ) -> StepRecord:
        if self.per_step is not None:
            setpoints = self.per_step[self.done]
        result = self.inner.step(time_s, measurements, setpoints)
        self.done += 1
        self.on_step(self.done, self.total, "shadowing")
        return result
