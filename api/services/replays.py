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

import functools
import inspect
import io
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal, cast

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    Tag,
    ValidationError,
    model_validator,
)
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Invalid, NotFound, PayloadTooLarge
from api.orm import Channel, Run, RunKind, RunStatus, utcnow
from api.services import jobs
from api.services.audit import Actor, record
from api.services.jsonsafe import json_safe
from api.services.models import get_model, load_model_bytes
from api.services.processes import process_or_builtin, spec_of
from api.services.runs import (
    StepSpan,
    count_values,
    create_run,
    get_run,
    recorded_tags,
    step_bounds,
    step_span,
    steps_between,
    values_between,
    write_steps,
)
from twin.logs import LOG_SUFFIXES
from twin.planner_names import PlannerName
from twin.records import EpisodeResult, StepRecord
from twin.spec import ProcessSpec, SpecError, TagRole

Mode = Literal["open_loop", "shadow", "counterfactual"]
Planner = PlannerName  # see twin.planner_names
Counterfactual = Literal["baseline", "oracle", "twin"]

# Most samples one replay may take: shadow mode plans at every one (tens of ms each).
MAX_REPLAY_SAMPLES = 50_000
# Most stored values (steps x tags) one export may read: the file is built in memory.
EXPORT_MAX_VALUES = 2_000_000
EXPORT_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8",
                      "parquet": "application/vnd.apache.parquet"}
# Keys the platform adds to a replay's config after it was validated.
_NOT_SPEC = ("cancel_requested", "episode")
_MEASURED = {TagRole.SENSOR: Channel.SENSOR, TagRole.DISTURBANCE: Channel.DISTURBANCE,
             TagRole.ACTUATOR: Channel.ACTUATOR}
# Arguments of run_episode that are the runner's, not the episode's case.
_RUNNER_ARGS = ("policy", "controller_name", "config", "show_progress")

StepHook = Callable[[int, int | None, str], None]
"""(samples done, samples in all or None, phase): the worker reports and checks cancels."""


# ---------------------------------------------------------------- definition


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Range(_Strict):
    start_s: FiniteFloat | None = Field(default=None, description="first time included")
    end_s: FiniteFloat | None = Field(default=None, description="last time included")

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.start_s is not None and self.end_s is not None and self.start_s > self.end_s:
            raise ValueError(f"empty time range: start_s {self.start_s:g} is after "
                             f"end_s {self.end_s:g}")
        return self


class RunSource(_Range):
    """A stored run; the range is in its `time_s` (seconds from its first step)."""

    run_id: int = Field(ge=1)


class FileSource(_Range):
    """A .csv or .parquet log on the worker's file system, in the process's log shape;
    the range is in the log's own seconds (date-times: seconds since 1970 UTC)."""

    path: str = Field(min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _suffix(self) -> FileSource:
        if Path(self.path).suffix.lower() not in LOG_SUFFIXES:
            raise ValueError("path must name a .csv or .parquet file")
        return self


def _source_type(value: Any) -> str:
    if isinstance(value, dict):
        return "file" if "path" in value else "run"
    return "file" if isinstance(value, FileSource) else "run"


Source = Annotated[Annotated[RunSource, Tag("run")] | Annotated[FileSource, Tag("file")],
                   Discriminator(_source_type)]

# Which fields mean something in which mode: a field given for another mode is refused
# rather than silently ignored (an analyst who sets a horizon in shadow mode expects it).
_FIELD_MODES: dict[str, tuple[str, ...]] = {
    "horizon": ("open_loop",), "stride": ("open_loop",), "setpoints": ("shadow",),
    "controller": ("counterfactual",),
}


class ReplaySpec(_Strict):
    """What a replay does: the body of POST /api/replays (and the stored run's config)."""

    mode: Mode
    source: Source
    process: str | None = Field(default=None, min_length=1, max_length=100,
                                description="needed for a file; for a run, its process")
    model_id: int | None = Field(default=None, ge=1, description="open_loop, shadow, and "
                                                                 "counterfactual 'twin'")
    planner: Planner = "casadi"
    horizon: int = Field(default=20, ge=1, le=500, description="open_loop: steps ahead")
    stride: int = Field(default=1, ge=1, le=10_000,
                        description="open_loop: predict from every stride-th sample")
    setpoints: dict[str, FiniteFloat] | None = Field(
        default=None, max_length=1_000,
        description="shadow: constant setpoints; default: the recorded ones, else medians")
    controller: Counterfactual | None = Field(default=None,
                                              description="counterfactual: who drives")

    @model_validator(mode="after")
    def _fits_mode(self) -> ReplaySpec:
        for name, modes in _FIELD_MODES.items():
            if name in self.model_fields_set and getattr(self, name) is not None \
                    and self.mode not in modes:
                raise ValueError(f"{name} applies to mode {' or '.join(modes)} only")
        if self.mode == "counterfactual":
            self._check_counterfactual()
        elif self.model_id is None:
            raise ValueError(f"mode {self.mode} replays a twin: give model_id")
        if "planner" in self.model_fields_set and not self.uses_planner:
            raise ValueError("planner applies to shadow and counterfactual 'twin' only")
        if isinstance(self.source, FileSource) and self.process is None:
            raise ValueError("a file source needs process: which tag file it follows")
        return self

    def _check_counterfactual(self) -> None:
        if self.controller is None:
            raise ValueError("mode counterfactual needs controller: baseline, oracle or twin")
        if (self.controller == "twin") != (self.model_id is not None):
            raise ValueError("model_id goes with controller 'twin', and only with it")
        if not isinstance(self.source, RunSource):
            raise ValueError("a counterfactual re-runs a stored simulator episode: give a "
                             "run_id (a log file records no initial state to start from)")

    @property
    def uses_planner(self) -> bool:
        return self.mode == "shadow" or self.controller == "twin"

    def stored(self) -> dict[str, Any]:
        """The run's config: only what applies to the mode, defaults made explicit."""
        out: dict[str, Any] = {"mode": self.mode, "process": self.process,
                               "source": self.source.model_dump(exclude_none=True)}
        if self.model_id is not None:
            out["model_id"] = self.model_id
        if self.uses_planner:
            out["planner"] = self.planner
        if self.mode == "open_loop":
            out.update(horizon=self.horizon, stride=self.stride)
        if self.setpoints is not None:
            out["setpoints"] = dict(self.setpoints)
        if self.controller is not None:
            out["controller"] = self.controller
        return out


def parse_replay_config(config: Mapping[str, Any]) -> ReplaySpec:
    """Validate a replay definition; raises Invalid with one line per problem."""
    if not isinstance(config, Mapping):
        raise Invalid("replay config must be an object with mode and source")
    try:
        return ReplaySpec.model_validate({k: v for k, v in config.items()
                                          if k not in _NOT_SPEC})
    except ValidationError as exc:
        raise Invalid("invalid replay: " + "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'replay'}: {err['msg']}"
            for err in exc.errors())) from None


def controller_label(spec: ReplaySpec) -> str:
    """The run's `controller`, telling replays apart in run lists."""
    if spec.mode == "open_loop":
        return "twin (open loop)"
    if spec.mode == "shadow":
        return f"twin+{spec.planner} (shadow)"
    who = f"twin+{spec.planner}" if spec.controller == "twin" else str(spec.controller)
    return f"{who} (counterfactual)"


# ---------------------------------------------------------------- API side


def enqueue_replay(session: Session, config: Mapping[str, Any], *,
                   actor: Actor | None = None) -> Run:
    """Validate everything the database can tell, then store the replay as a queued run.
    Stores nothing if invalid; with an `actor`, audited ("replay.enqueue") in the same
    transaction."""
    spec = parse_replay_config(config)
    try:
        spec = spec.model_copy(update={"process": _check(session, spec)})
        run = create_run(session, kind=RunKind.REPLAY, process=str(spec.process),
                         controller=controller_label(spec), config=spec.stored(),
                         model_id=spec.model_id, status=RunStatus.QUEUED, commit=False)
        record(session, actor, "replay.enqueue", f"run:{run.id}",
               {"mode": spec.mode, "process": spec.process, "model_id": spec.model_id,
                "source": spec.source.model_dump(exclude_none=True)})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


def get_replay(session: Session, run_id: int) -> Run:
    return jobs.get_job(session, run_id, RunKind.REPLAY)


def list_replays(session: Session, status: str | None = None, limit: int = 100,
                 offset: int = 0) -> list[Run]:
    """Replays queued through the API (and those `twin replay` stored), newest first."""
    query = (select(Run).where(Run.kind == RunKind.REPLAY).order_by(Run.id.desc())
             .limit(limit).offset(offset))
    if status is not None:
        query = query.where(Run.status == status)
    return list(session.scalars(query))


def cancel_replay(session: Session, run_id: int, *, actor: Actor | None = None) -> Run:
    return jobs.cancel_job(session, run_id, actor=actor, kind=RunKind.REPLAY)


def _check(session: Session, spec: ReplaySpec) -> str:
    """Every check that needs no file and no model weights; returns the process name."""
    source = get_run(session, spec.source.run_id) if isinstance(spec.source, RunSource) \
        else None
    process = _process_name(session, spec, source)
    process_spec = spec_of(process_or_builtin(session, process))
    window = _check_model(session, spec.model_id, process)
    if spec.mode == "counterfactual":
        assert source is not None  # the schema demands a run source
        episode_case(find_simulator(process), source, spec.source.start_s,
                     spec.source.end_s, process_spec.sample_period_s)
        if spec.controller == "oracle":
            _check_oracle(process)
        return process
    if source is not None:
        samples = _check_run_data(session, source, spec, process_spec)
        needed = spec.horizon + (window or 1) + 1
        if spec.mode == "open_loop" and samples <= needed:
            raise Invalid(f"open-loop replay with horizon {spec.horizon} needs more than "
                          f"{needed} samples; the range holds {samples}")
    elif spec.mode == "shadow" and spec.setpoints is None and not process_spec.controlled:
        raise Invalid(f"process '{process_spec.name}' marks no sensor as controlled and a "
                      "log file records no setpoints: give setpoints")
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
        raise Invalid(f"run {source.id} is of process '{source.process.name}', "
                      f"not '{spec.process}'")
    return source.process.name


def _check_model(session: Session, model_id: int | None, process: str) -> int | None:
    """The model's context window when its config tells (it bounds the shortest range)."""
    if model_id is None:
        return None
    model = get_model(session, model_id)
    if model.process.name != process:
        raise Invalid(f"model {model_id} was trained for process '{model.process.name}', "
                      f"not '{process}'")
    window = (model.config.get("train") or {}).get("model", {}).get("window")
    return int(window) if isinstance(window, int) else None


def _check_run_data(session: Session, source: Run, spec: ReplaySpec,
                    process_spec: ProcessSpec) -> int:
    """The range holds steps, not too many, with every tag recorded; returns the count."""
    start_s, end_s = spec.source.start_s, spec.source.end_s
    span = _span_in(session, source.id, start_s, end_s)
    if span.count > MAX_REPLAY_SAMPLES:
        raise PayloadTooLarge(f"the range holds {span.count} samples of run {source.id}; "
                              f"a replay takes at most {MAX_REPLAY_SAMPLES}: narrow it "
                              "with start_s and end_s")
    bounds = step_bounds(session, source.id, start_s, end_s)
    assert bounds is not None  # _span_in refused an empty range
    recorded = recorded_tags(session, source.id, *bounds)
    missing = [t.name for t in process_spec.tags if (_MEASURED[t.role], t.name) not in recorded]
    if missing:
        raise Invalid(f"run {source.id} has no values of {', '.join(missing)} in the range: "
                      f"it is not a log of process '{process_spec.name}'")
    if spec.mode == "shadow" and spec.setpoints is None and not process_spec.controlled \
            and not any(c == Channel.SETPOINT for c, _ in recorded):
        raise Invalid(f"process '{process_spec.name}' marks no sensor as controlled and "
                      f"run {source.id} recorded no setpoints: give setpoints")
    return span.count


def _span_in(session: Session, run_id: int, start_s: float | None,
             end_s: float | None) -> StepSpan:
    """The steps inside the range; Invalid, naming the run's own span, when there are none."""
    span = step_span(session, run_id, start_s, end_s)
    if span.count:
        return span
    whole = step_span(session, run_id)
    if not whole.count:
        raise Invalid(f"run {run_id} has no steps")
    raise Invalid(f"no step of run {run_id} lies between start_s {_fmt(start_s)} and end_s "
                  f"{_fmt(end_s)}: the run covers {whole.first_s:g} to {whole.last_s:g} s")


def _fmt(value: float | None) -> str:
    return "(open)" if value is None else f"{value:g}"


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
                found.low is not None and value <= found.low):
            raise Invalid(f"setpoint {value:g} {found.unit} for '{tag}' is not inside its "
                          f"limits [{found.low}, {found.high}]")


# ---------------------------------------------------------------- counterfactual cases


def find_simulator(process: str) -> ModuleType:
    from processes import PROCESS_MODULES, find_process  # late: simulators are not free

    module = find_process(process)
    if module is None:
        known = ", ".join(sorted(PROCESS_MODULES))
        raise Invalid(f"process '{process}' has no simulator to re-run (those with one: "
                      f"{known}); replay it open loop or in shadow mode")
    return module


@functools.cache
def _has_oracle(process: str) -> bool:
    # Building an oracle costs about a second (an NLP): once per process and API process.
    return find_simulator(process).oracle_policy() is not None


def _check_oracle(process: str) -> None:
    if not _has_oracle(process):
        raise Invalid(f"process '{process}' has no oracle controller; choose baseline or twin")


def episode_case(module: ModuleType, source: Run, start_s: float | None,
                 end_s: float | None, sample_period_s: float) -> dict[str, Any]:
    """The keyword arguments of `module.run_episode` that re-create the source's episode.

    They are read from the source run's config, which `run_episode` itself wrote (every
    built-in process records its seed and case there). `end_s` shortens the episode.
    """
    config = source.config or {}
    if source.kind == RunKind.REPLAY and isinstance(config.get("episode"), dict):
        config = config["episode"]  # an earlier counterfactual: its episode's own config
    if "seed" not in config:
        raise Invalid(f"run {source.id} records no simulator episode (no seed in its "
                      "config): only runs of the process's own simulator (twin control, "
                      "benchmarks, earlier counterfactuals) can be re-run")
    names = [n for n in inspect.signature(module.run_episode).parameters
             if n not in _RUNNER_ARGS]
    case = {name: config[name] for name in names if name in config}
    if "scenario" in case:
        case["scenario"] = _scenario(module, case["scenario"], source.id)
    if start_s is not None and start_s > 0:
        raise Invalid("a counterfactual starts where the recorded episode started (0 s): "
                      "a simulator cannot be put into a state logged mid-episode (its "
                      "hidden states are not measured); leave start_s out")
    if end_s is not None:
        case = _shortened(module, case, end_s, sample_period_s)
    return case


def _scenario(module: ModuleType, data: Any, run_id: int) -> Any:
    """A scenario dataclass back from its JSON form (pairs were tuples, flights dicts)."""
    try:
        fields = {k: [tuple(p) for p in v] if isinstance(v, list) else v
                  for k, v in dict(data).items()}
        if "flight_points" in fields:  # turbofan: (sample, Flight) waypoints
            fields["flight_points"] = [(int(k), module.Flight(**f))
                                       for k, f in fields["flight_points"]]
        return module.Scenario(**fields)
    except (TypeError, ValueError, AttributeError) as exc:
        raise Invalid(f"run {run_id}: its recorded scenario cannot be rebuilt ({exc})") from None


def _shortened(module: ModuleType, case: dict[str, Any], end_s: float,
               sample_period_s: float) -> dict[str, Any]:
    if end_s < 0:
        raise Invalid(f"end_s {end_s:g} is before the episode's start (0 s)")
    samples = int(math.floor(end_s / sample_period_s + 1e-9)) + 1
    if "scenario" in case:
        scenario = case["scenario"]
        return {**case, "scenario": replace(scenario, steps=min(scenario.steps, samples))}
    hours = inspect.signature(module.run_episode).parameters.get("hours")
    if hours is None:
        raise Invalid("this process's episodes cannot be shortened: leave end_s out")
    recorded = float(case.get("hours", hours.default))
    return {**case, "hours": min(recorded, samples * sample_period_s / 3600.0)}


def _episode_samples(case: Mapping[str, Any], sample_period_s: float) -> int | None:
    if "scenario" in case:
        return int(case["scenario"].steps)
    if "hours" in case:
        return int(round(float(case["hours"]) * 3600.0 / sample_period_s))
    return None


# ---------------------------------------------------------------- datasets


@dataclass
class RunFrame:
    """A stored run's steps inside a range: times, statuses and values by (channel, tag)."""

    time_s: np.ndarray
    status: list[str]
    values: dict[tuple[str, str], np.ndarray]

    def column(self, channel: str, tag: str) -> np.ndarray:
        return self.values.get((channel, tag), np.full(len(self.time_s), np.nan))

    def log(self, spec: ProcessSpec) -> pd.DataFrame:
        """The process's log shape: timestamp column, then every tag in spec order."""
        columns = {spec.timestamp_column: self.time_s}
        columns.update({t.name: self.column(_MEASURED[t.role], t.name) for t in spec.tags})
        return pd.DataFrame(columns)

    def extra(self, channel: Channel) -> pd.DataFrame:
        tags = sorted(tag for c, tag in self.values if c == channel)
        return pd.DataFrame({tag: self.values[(channel, tag)] for tag in tags},
                            index=range(len(self.time_s)))

    def table(self, spec: ProcessSpec) -> pd.DataFrame:
        """The log plus `<tag>.setpoint`, `<tag>.prediction` and `status` (exports)."""
        parts = [self.log(spec)]
        for channel in (Channel.SETPOINT, Channel.PREDICTION):
            parts.append(self.extra(channel).add_suffix(f".{channel}"))
        parts.append(pd.DataFrame({"status": self.status}))
        return pd.concat(parts, axis=1)


def run_frame(session: Session, run_id: int, start_s: float | None = None,
              end_s: float | None = None, *, max_values: int | None = None) -> RunFrame:
    """Read a run's steps in [start_s, end_s] and their values, filled into arrays."""
    _span_in(session, run_id, start_s, end_s)
    rows = steps_between(session, run_id, start_s, end_s)
    first, last = rows[0].step, rows[-1].step
    if max_values is not None:
        count = count_values(session, run_id, first, last)
        if count > max_values:
            raise PayloadTooLarge(f"run {run_id} holds {count} values in that range, more "
                                  f"than the {max_values} one request may read: narrow the "
                                  "range with start_s and end_s")
    row_of = {row.step: i for i, row in enumerate(rows)}
    values: dict[tuple[str, str], np.ndarray] = {}
    channels = [Channel.SENSOR, Channel.DISTURBANCE, Channel.ACTUATOR, Channel.SETPOINT,
                Channel.PREDICTION]
    for channel, tag, step, value in values_between(session, run_id, first, last, channels):
        i = row_of.get(step)
        if i is None:  # a step numbered inside but timed outside the range
            continue
        column = values.get((channel, tag))
        if column is None:
            column = values[(channel, tag)] = np.full(len(rows), np.nan)
        column[i] = value
    return RunFrame(np.array([r.time_s for r in rows], dtype=float),
                    [str(r.status) for r in rows], values)


def file_frame(path: str, spec: ProcessSpec, start_s: float | None,
               end_s: float | None) -> pd.DataFrame:
    """A log file on the worker, cut to the range (of its own timestamps)."""
    from twin.data import timestamps_s
    from twin.logs import read_log

    if not Path(path).is_file():
        raise FileNotFoundError(f"replay data {path} not found on the worker "
                                "(paths are read by the worker, not the API)")
    df = read_log(path)
    ts = timestamps_s(df, spec)
    keep = np.ones(len(df), dtype=bool)
    if start_s is not None:
        keep &= ts >= start_s
    if end_s is not None:
        keep &= ts <= end_s
    if not keep.any():
        span = f"{ts.min():g} to {ts.max():g} s" if len(ts) else "no rows"
        raise Invalid(f"no row of {path} lies between start_s {_fmt(start_s)} and end_s "
                      f"{_fmt(end_s)}: the log covers {span}")
    if int(keep.sum()) > MAX_REPLAY_SAMPLES:
        raise PayloadTooLarge(f"the range holds {int(keep.sum())} rows of {path}; a replay "
                              f"takes at most {MAX_REPLAY_SAMPLES}: narrow it")
    return df.loc[keep].reset_index(drop=True)


# ---------------------------------------------------------------- worker side


def execute(session: Session, run: Run, on_step: StepHook) -> EpisodeResult:
    """Run one claimed replay (the worker's part); nothing is written here."""
    spec = parse_replay_config(run.config)
    process_spec = spec_of(run.process)
    if spec.mode == "counterfactual":
        return _counterfactual(session, spec, process_spec, on_step)
    on_step(0, None, "loading data")
    if isinstance(spec.source, RunSource):
        frame = run_frame(session, spec.source.run_id, spec.source.start_s, spec.source.end_s)
        log, recorded = frame.log(process_spec), frame.extra(Channel.SETPOINT)
    else:
        log = file_frame(spec.source.path, process_spec, spec.source.start_s,
                         spec.source.end_s)
        recorded = pd.DataFrame(index=log.index)
    assert spec.model_id is not None  # the schema demands one in these modes
    twin = _twin(session, spec.model_id)
    session.commit()  # end the read transaction: planning may take minutes
    if spec.mode == "open_loop":
        from twin.replay import open_loop

        on_step(0, len(log), "predicting")
        episode = open_loop(twin, log, spec.horizon, spec.stride)
        on_step(len(log), len(log), "predicted")
        return episode
    return _shadow(twin, spec, log, recorded, on_step)


def _twin(session: Session, model_id: int) -> Any:
    from twin.twin_model import Twin  # late: torch loads only when there is work

    return Twin.from_bytes(load_model_bytes(session, model_id))  # sha256 verified


def _controller(twin: Any, planner: str) -> Any:
    # late: torch and casadi load only when there is work
    from processes import plant_parts
    from twin.assembly import build_controller

    return build_controller(twin, planner, parts=plant_parts(twin.spec))


def _shadow(twin: Any, spec: ReplaySpec, log: pd.DataFrame, recorded: pd.DataFrame,
            on_step: StepHook) -> EpisodeResult:
    from twin.replay import default_setpoints, shadow

    sensors = [t.name for t in twin.spec.sensors]
    recorded = recorded[[c for c in recorded.columns if c in sensors]].ffill().bfill()
    per_step: list[dict[str, float]] | None = None
    if spec.setpoints is not None:
        setpoints, origin = dict(spec.setpoints), "given"
    elif not recorded.empty:
        per_step = [{k: float(v) for k, v in row.items() if math.isfinite(v)}
                    for row in recorded.to_dict("records")]
        setpoints, origin = per_step[0], "recorded"
    else:
        setpoints, origin = default_setpoints(log, twin.spec), "median"
    watched = _Watched(_controller(twin, spec.planner), on_step, len(log), per_step)
    episode = shadow(cast(Any, watched), log, setpoints)
    episode.config["setpoints"] = setpoints if per_step is None else "recorded"
    episode.config["setpoints_from"] = origin
    return episode


class _Watched:
    """A TwinController seen through: reports every step to the worker and, when the run
    recorded setpoints, hands the controller the ones of that step (shadow() itself holds
    one setpoint dict for the whole log)."""

    def __init__(self, inner: Any, on_step: StepHook, total: int,
                 per_step: list[dict[str, float]] | None) -> None:
        self.inner, self.on_step, self.total, self.per_step = inner, on_step, total, per_step
        self.done = 0

    @property
    def spec(self) -> ProcessSpec:
        return self.inner.spec

    def reset(self, applied: Mapping[str, float] | None = None) -> None:
        self.inner.reset(applied)

    def step(self, time_s: float, measurements: Mapping[str, float | None],
             setpoints: Mapping[str, float]) -> StepRecord:
        if self.per_step is not None:
            setpoints = self.per_step[self.done]
        result = self.inner.step(time_s, measurements, setpoints)
        self.done += 1
        self.on_step(self.done, self.total, "shadowing")
        return result


def _counterfactual(session: Session, spec: ReplaySpec, process_spec: ProcessSpec,
                    on_step: StepHook) -> EpisodeResult:
    assert isinstance(spec.source, RunSource)
    module = find_simulator(process_spec.name)
    source = get_run(session, spec.source.run_id)
    case = episode_case(module, source, spec.source.start_s, spec.source.end_s,
                        process_spec.sample_period_s)
    policy, extra = _policy(session, module, spec)
    session.commit()  # end the read transaction: the episode may take minutes
    total = _episode_samples(case, process_spec.sample_period_s)
    done = [0]

    def watched(*args: Any, **kwargs: Any) -> StepRecord:
        result = policy(*args, **kwargs)
        done[0] += 1
        on_step(done[0], total, "simulating")
        return result

    on_step(0, total, "simulating")
    episode = module.run_episode(watched, controller_label(spec), config=extra, **case)
    episode.config["initial_state"] = "the recorded episode's start (same case and seed)"
    return episode


def _policy(session: Session, module: ModuleType,
            spec: ReplaySpec) -> tuple[Callable[..., StepRecord], dict[str, Any]]:
    if spec.controller == "baseline":
        return module.baseline_policy(), {"controller": "baseline"}
    if spec.controller == "oracle":
        policy = module.oracle_policy()
        if policy is None:
            raise Invalid(f"process '{module.SPEC.name}' has no oracle controller")
        return policy, {"controller": "oracle"}
    assert spec.model_id is not None  # the schema demands one for controller 'twin'
    controller = _controller(_twin(session, spec.model_id), spec.planner)
    return module.twin_policy(controller), {"controller": "twin", "planner": spec.planner,
                                            "model_id": spec.model_id}


def finish_replay(session: Session, run_id: int, episode: EpisodeResult) -> Run:
    """Write the result's steps and mark the replay succeeded, in one transaction."""
    try:
        # Locked: the API's cancel flag must not be lost between this read and write.
        run = session.scalars(select(Run).where(Run.id == run_id).with_for_update(of=Run)
                              .execution_options(populate_existing=True)).one()
        if run.kind != RunKind.REPLAY:
            raise NotFound(f"run {run_id} is a {run.kind} run, not a replay job")
        write_steps(session, run_id, spec_of(run.process),
                    ((rec.step, rec) for rec in episode.steps))
        run.config = json_safe({**run.config, "episode": episode.config})
        run.metrics = json_safe({**(run.metrics or {}), **episode.metrics})
        run.status = RunStatus.SUCCEEDED
        run.finished_at = utcnow()
        session.commit()
    except BaseException:
        session.rollback()
        raise
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


# ---------------------------------------------------------------- export


@dataclass(frozen=True)
class Export:
    content: bytes
    media_type: str
    filename: str


def export_run(session: Session, run_id: int, fmt: str, start_s: float | None = None,
               end_s: float | None = None) -> Export:
    """A run's series as a file in its process's log shape (see RunFrame.table)."""
    if fmt not in EXPORT_MEDIA_TYPES:
        raise Invalid(f"unknown format '{fmt}' (one of: {', '.join(EXPORT_MEDIA_TYPES)})")
    if start_s is not None and end_s is not None and start_s > end_s:
        raise Invalid(f"empty time range: start_s {start_s:g} is after end_s {end_s:g}")
    run = get_run(session, run_id)
    spec = spec_of(run.process)
    table = run_frame(session, run_id, start_s, end_s, max_values=EXPORT_MAX_VALUES).table(spec)
    if fmt == "csv":
        content = table.to_csv(index=False).encode()
    else:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        content = buffer.getvalue()
    return Export(content, EXPORT_MEDIA_TYPES[fmt], _filename(run, fmt, start_s, end_s))


def _filename(run: Run, fmt: str, start_s: float | None, end_s: float | None) -> str:
    """run-12-cstr.csv, or run-12-cstr-60-600s.csv for a range (start/end when open)."""
    span = "" if start_s is None and end_s is None else (
        f"-{'start' if start_s is None else f'{start_s:g}'}"
        f"-{'end' if end_s is None else f'{end_s:g}'}s")
    return f"run-{run.id}-{run.process.name}{span}.{fmt}"
