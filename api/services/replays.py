"""Scenario replay for analysts: datasets from stored runs or log files, replayed three ways.

A replay is a job of the worker's queue (api.services.jobs) *and* its own result: one
row of `runs` with kind "replay" goes queued -> running -> succeeded, and its steps,
values and metrics are written in the same transaction that marks it succeeded. So a
replay is never half-stored, a failed or cancelled one has no steps, and the id the
API returns when it queues the replay is the id of the result run that will be
compared side by side with its source (GET /api/runs?kind=replay, /api/runs/{id}/series).

The data ("a dataset"): the steps of a stored run inside [start_s, end_s] of its own
`time_s`, turned into the process's log shape (timestamp column + one column per tag:
sensors and disturbances from the measured channels, actuators from the actuator
channel), or a CSV/Parquet log on the worker's file system (like a training job's csv
source; the range is then in the log's own seconds).

Modes:

* open_loop: what the twin predicted over `horizon` samples from every `stride`-th
  sample, given the actions really applied, against what was then measured
  (`twin.replay.open_loop`).
* shadow: what the twin's controller would have set at every sample while the plant
  ran on what was recorded (`twin.replay.shadow`). Setpoints: those given; else, when
  the source run recorded setpoints, the recorded ones step by step (the controller
  pursues what the plant pursued); else each controlled sensor's median.
* counterfactual: the process's own simulator re-runs the recorded episode with another
  controller: "baseline", "oracle" (where the process has one) or "twin" (a model and
  a planner). Only for built-in processes, and only from a stored run made by that
  simulator (its config records the episode's case: the seed and the scenario, patient,
  disturbance or engine cycle).

What "from the recorded initial state" means: `run_episode` of every built-in process
starts from a fixed initial state given by its case, never from an arbitrary one:

* cstr: Ca = 0.5 mol/L, T = 350 K; the seed fixes the measurement noise, the scenario
  the setpoint steps and feed disturbances.
* turbofan: engine `unit` at `cycle` (its health), trimmed to the scenario's first
  demand; the seed fixes the sensor noise.
* glucose: the virtual `patient`'s own initial state; the seed draws the meals and the
  CGM noise.
* tennessee_eastman: the base-case steady state; the seed fixes the noise, `idv` and
  `idv_start_h` the disturbance.

So the re-run starts exactly where the recorded episode started (same state, same noise,
same disturbances), but it cannot start in the middle of one: the simulators' hidden
states (concentrations, compartments, temperatures of the plant's internals) are not in
the recorded measurements, which are noisy and partial. A counterfactual therefore
refuses a `start_s` after the episode's start; an `end_s` shortens the re-run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Invalid, NotFound, PayloadTooLarge
from api.orm import Channel, Run, RunKind, RunStatus, utcnow

# Re-exported: the schemas' and the replay kinds' names callers reach through this module.
from api.replay_schemas import (  # noqa: F401
    Counterfactual,
    FileSource,
    Mode,
    Planner,
    ReplaySpec,
    RunSource,
    controller_label,
    parse_replay_config,
)
from api.series.ranges import recorded_tags, step_bounds
from api.series.writes import write_steps
from api.services import jobs
from api.services.audit import Actor, record
from api.services.jsonsafe import json_safe
from api.services.models import get_model
from api.services.processes import process_or_builtin, spec_of
from api.services.replay_counterfactual import (  # noqa: F401
    check_oracle,
    counterfactual_episode,
    episode_case,
    find_simulator,
)
from api.services.replay_data import (  # noqa: F401
    MAX_REPLAY_SAMPLES,
    MEASURED_CHANNEL,
    RunFrame,
    file_frame,
    run_frame,
    span_in,
)
from api.services.replay_export import (  # noqa: F401
    EXPORT_MAX_VALUES,
    EXPORT_MEDIA_TYPES,
    Export,
    export_run,
)
from api.services.replay_twin import StepHook, load_twin, shadow_episode
from api.services.runs import create_run, get_run
from api.services.transactions import rollback_on_error
from twin.records import EpisodeResult
from twin.spec import ProcessSpec, SpecError, TagRole

# ---------------------------------------------------------------- API side


def enqueue_replay(
    session: Session, config: Mapping[str, Any], *, actor: Actor | None = None
) -> Run:
    """Validate everything the database can tell, then store the replay as a queued run.
    Stores nothing if invalid; with an `actor`, audited ("replay.enqueue") in the same
    transaction."""
    spec = parse_replay_config(config)
    with rollback_on_error(session):
        spec = spec.model_copy(update={"process": _check(session, spec)})
        run = create_run(
            session,
            kind=RunKind.REPLAY,
            process=str(spec.process),
            controller=controller_label(spec),
            config=spec.stored(),
            model_id=spec.model_id,
            status=RunStatus.QUEUED,
            commit=False,
        )
        record(
            session,
            actor,
            "replay.enqueue",
            f"run:{run.id}",
            {
                "mode": spec.mode,
                "process": spec.process,
                "model_id": spec.model_id,
                "source": spec.source.model_dump(exclude_none=True),
            },
        )
        session.commit()
    return run


def get_replay(session: Session, run_id: int) -> Run:
    return jobs.get_job(session, run_id, RunKind.REPLAY)


def list_replays(
    session: Session, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[Run]:
    """Replays queued through the API (and those `twin replay` stored), newest first."""
    query = (
        select(Run)
        .where(Run.kind == RunKind.REPLAY)
        .order_by(Run.id.desc())
        .limit(limit)
        .offset(offset)
    )
    if status is not None:
        query = query.where(Run.status == status)
    return list(session.scalars(query))


def cancel_replay(session: Session, run_id: int, *, actor: Actor | None = None) -> Run:
    return jobs.cancel_job(session, run_id, actor=actor, kind=RunKind.REPLAY)


def _check(session: Session, spec: ReplaySpec) -> str:
    """Every check that needs no file and no model weights; returns the process name."""
    source = get_run(session, spec.source.run_id) if isinstance(spec.source, RunSource) else None
    process = _process_name(session, spec, source)
    process_spec = spec_of(process_or_builtin(session, process))
    window = _check_model(session, spec.model_id, process)
    if spec.mode == "counterfactual":
        assert source is not None  # the schema demands a run source
        episode_case(
            find_simulator(process),
            source,
            spec.source.start_s,
            spec.source.end_s,
            process_spec.sample_period_s,
        )
        if spec.controller == "oracle":
            check_oracle(process)
        return process
    if source is not None:
        samples = _check_run_data(session, source, spec, process_spec)
        needed = spec.horizon + (window or 1) + 1
        if spec.mode == "open_loop" and samples <= needed:
            raise Invalid(
                f"open-loop replay with horizon {spec.horizon} needs more than "
                f"{needed} samples; the range holds {samples}"
            )
    elif spec.mode == "shadow" and spec.setpoints is None and not process_spec.controlled:
        raise Invalid(
            f"process '{process_spec.name}' marks no sensor as controlled and a "
            "log file records no setpoints: give setpoints"
        )
    if spec.setpoints is not None:
        check_setpoints(process_spec, spec.setpoints)
    return process


def _process_name(session: Session, spec: ReplaySpec, source: Run | None) -> str:
    if source is None:
        try:  # in a replay definition, an unknown process is bad input
            return process_or_builtin(session, str(spec.process)).name
        except NotFound as exc:
            raise Invalid(str(exc)) from None
    if source.kind == RunKind.TRAIN:
        raise Invalid(f"run {source.id} is a training job: it has no time series to replay")
    if spec.process is not None and spec.process != source.process.name:
        raise Invalid(
            f"run {source.id} is of process '{source.process.name}', not '{spec.process}'"
        )
    return source.process.name


def _check_model(session: Session, model_id: int | None, process: str) -> int | None:
    """The model's context window when its config tells (it bounds the shortest range)."""
    if model_id is None:
        return None
    model = get_model(session, model_id)
    if model.process.name != process:
        raise Invalid(
            f"model {model_id} was trained for process '{model.process.name}', not '{process}'"
        )
    window = (model.config.get("train") or {}).get("model", {}).get("window")
    return int(window) if isinstance(window, int) else None


def _check_run_data(
    session: Session, source: Run, spec: ReplaySpec, process_spec: ProcessSpec
) -> int:
    """The range holds steps, not too many, with every tag recorded; returns the count."""
    start_s, end_s = spec.source.start_s, spec.source.end_s
    span = span_in(session, source.id, start_s, end_s)
    if span.count > MAX_REPLAY_SAMPLES:
        raise PayloadTooLarge(
            f"the range holds {span.count} samples of run {source.id}; "
            f"a replay takes at most {MAX_REPLAY_SAMPLES}: narrow it "
            "with start_s and end_s"
        )
    bounds = step_bounds(session, source.id, start_s, end_s)
    assert bounds is not None  # span_in refused an empty range
    recorded = recorded_tags(session, source.id, *bounds)
    missing = [
        t.name for t in process_spec.tags if (MEASURED_CHANNEL[t.role], t.name) not in recorded
    ]
    if missing:
        raise Invalid(
            f"run {source.id} has no values of {', '.join(missing)} in the range: "
            f"it is not a log of process '{process_spec.name}'"
        )
    if (
        spec.mode == "shadow"
        and spec.setpoints is None
        and not process_spec.controlled
        and not any(c == Channel.SETPOINT for c, _ in recorded)
    ):
        raise Invalid(
            f"process '{process_spec.name}' marks no sensor as controlled and "
            f"run {source.id} recorded no setpoints: give setpoints"
        )
    return span.count


def check_setpoints(spec: ProcessSpec, setpoints: Mapping[str, float]) -> None:
    """Only sensors take setpoints, strictly inside their limits (as the controller says)."""
    if not setpoints:
        raise Invalid("setpoints is empty: give at least one, or leave it out")
    for tag, value in setpoints.items():
        try:
            found = spec.tag(tag)
        except SpecError as exc:  # it names the known tags
            raise Invalid(f"setpoint: {exc}") from None
        if found.role is not TagRole.SENSOR:
            raise Invalid(f"setpoint for '{tag}': only sensors take setpoints")
        if (found.high is not None and value >= found.high) or (
            found.low is not None and value <= found.low
        ):
            raise Invalid(
                f"setpoint {value:g} {found.unit} for '{tag}' is not inside its "
                f"limits [{found.low}, {found.high}]"
            )


# ---------------------------------------------------------------- worker side


def execute(session: Session, run: Run, on_step: StepHook) -> EpisodeResult:
    """Run one claimed replay (the worker's part); nothing is written here."""
    spec = parse_replay_config(run.config)
    process_spec = spec_of(run.process)
    if spec.mode == "counterfactual":
        return counterfactual_episode(session, spec, process_spec, on_step)
    on_step(0, None, "loading data")
    if isinstance(spec.source, RunSource):
        frame = run_frame(session, spec.source.run_id, spec.source.start_s, spec.source.end_s)
        log, recorded = frame.log(process_spec), frame.extra(Channel.SETPOINT)
    else:
        log = file_frame(spec.source.path, process_spec, spec.source.start_s, spec.source.end_s)
        recorded = pd.DataFrame(index=log.index)
    assert spec.model_id is not None  # the schema demands one in these modes
    twin = load_twin(session, spec.model_id)
    session.commit()  # end the read transaction: planning may take minutes
    if spec.mode == "open_loop":
        from twin.replay import open_loop

        on_step(0, len(log), "predicting")
        episode = open_loop(twin, log, spec.horizon, spec.stride)
        on_step(len(log), len(log), "predicted")
        return episode
    return shadow_episode(twin, spec, log, recorded, on_step)


def finish_replay(session: Session, run_id: int, episode: EpisodeResult) -> Run:
    """Write the result's steps and mark the replay succeeded, in one transaction."""
    with rollback_on_error(session):
        # Locked: the API's cancel flag must not be lost between this read and write.
        run = session.scalars(
            select(Run)
            .where(Run.id == run_id)
            .with_for_update(of=Run)
            .execution_options(populate_existing=True)
        ).one()
        if run.kind != RunKind.REPLAY:
            raise NotFound(f"run {run_id} is a {run.kind} run, not a replay job")
        write_steps(
            session, run_id, spec_of(run.process), ((rec.step, rec) for rec in episode.steps)
        )
        run.config = json_safe({**run.config, "episode": episode.config})
        run.metrics = json_safe({**(run.metrics or {}), **episode.metrics})
        run.status = RunStatus.SUCCEEDED
        run.finished_at = utcnow()
        session.commit()
    return run


class Throttle:
    """Commit progress at most every `every_s` seconds (and at the first and last step)."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s, self.last = every_s, -math.inf

    def due(self, done: int, total: int | None) -> bool:
        now = time.monotonic()
        if done == 0 or done == total or now - self.last >= self.every_s:
            self.last = now
            return True
        return False
