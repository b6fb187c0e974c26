"""Counterfactual replays: the process's own simulator re-runs a recorded episode, from
its recorded case and seed, with another controller (see api.services.replays)."""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import ModuleType
from typing import Any

from sqlalchemy.orm import Session

from api.errors import Invalid
from api.orm import Run, RunKind
from api.replay_schemas import ReplaySpec, RunSource, controller_label
from api.services.replay_twin import StepHook, load_twin, replay_controller
from api.services.runs import get_run
from twin.records import EpisodeResult, StepRecord
from twin.spec import ProcessSpec

# Arguments of run_episode that are the runner's, not the episode's case.
_RUNNER_ARGS = ("policy", "controller_name", "config", "show_progress")


def find_simulator(process: str) -> ModuleType:
    from processes import PROCESS_MODULES, find_process  # late: simulators are not free

    module = find_process(process)
    if module is None:
        known = ", ".join(sorted(PROCESS_MODULES))
        raise Invalid(
            f"process '{process}' has no simulator to re-run (those with one: "
            f"{known}); replay it open loop or in shadow mode"
        )
    return module


@functools.cache
def _has_oracle(process: str) -> bool:
    # Building an oracle costs about a second (an NLP): once per process and API process.
    return find_simulator(process).oracle_policy() is not None


def check_oracle(process: str) -> None:
    if not _has_oracle(process):
        raise Invalid(f"process '{process}' has no oracle controller; choose baseline or twin")


def episode_case(
    module: ModuleType,
    source: Run,
    start_s: float | None,
    end_s: float | None,
    sample_period_s: float,
) -> dict[str, Any]:
    """The keyword arguments of `module.run_episode` that re-create the source's episode.

    They are read from the source run's config, which `run_episode` itself wrote (every
    built-in process records its seed and case there). `end_s` shortens the episode.
    """
    config = source.config or {}
    if source.kind == RunKind.REPLAY and isinstance(config.get("episode"), dict):
        config = config["episode"]  # an earlier counterfactual: its episode's own config
    if "seed" not in config:
        raise Invalid(
            f"run {source.id} records no simulator episode (no seed in its "
            "config): only runs of the process's own simulator (twin control, "
            "benchmarks, earlier counterfactuals) can be re-run"
        )
    names = [n for n in inspect.signature(module.run_episode).parameters if n not in _RUNNER_ARGS]
    case = {name: config[name] for name in names if name in config}
    if "scenario" in case:
        case["scenario"] = _scenario(module, case["scenario"], source.id)
    if start_s is not None and start_s > 0:
        raise Invalid(
            "a counterfactual starts where the recorded episode started (0 s): "
            "a simulator cannot be put into a state logged mid-episode (its "
            "hidden states are not measured); leave start_s out"
        )
    if end_s is not None:
        case = _shortened(module, case, end_s, sample_period_s)
    return case


def _scenario(module: ModuleType, data: Any, run_id: int) -> Any:
    """A scenario dataclass back from its JSON form (pairs were tuples, flights dicts)."""
    try:
        fields = {
            k: [tuple(p) for p in v] if isinstance(v, list) else v for k, v in dict(data).items()
        }
        if "flight_points" in fields:  # turbofan: (sample, Flight) waypoints
            fields["flight_points"] = [
                (int(k), module.Flight(**f)) for k, f in fields["flight_points"]
            ]
        return module.Scenario(**fields)
    except (TypeError, ValueError, AttributeError) as exc:
        raise Invalid(f"run {run_id}: its recorded scenario cannot be rebuilt ({exc})") from None


def _shortened(
    module: ModuleType, case: dict[str, Any], end_s: float, sample_period_s: float
) -> dict[str, Any]:
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


def counterfactual_episode(
    session: Session, spec: ReplaySpec, process_spec: ProcessSpec, on_step: StepHook
) -> EpisodeResult:
    assert isinstance(spec.source, RunSource)
    module = find_simulator(process_spec.name)
    source = get_run(session, spec.source.run_id)
    case = episode_case(
        module, source, spec.source.start_s, spec.source.end_s, process_spec.sample_period_s
    )
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


def _policy(
    session: Session, module: ModuleType, spec: ReplaySpec
) -> tuple[Callable[..., StepRecord], dict[str, Any]]:
    if spec.controller == "baseline":
        return module.baseline_policy(), {"controller": "baseline"}
    if spec.controller == "oracle":
        policy = module.oracle_policy()
        if policy is None:
            raise Invalid(f"process '{module.SPEC.name}' has no oracle controller")
        return policy, {"controller": "oracle"}
    assert spec.model_id is not None  # the schema demands one for controller 'twin'
    controller = replay_controller(load_twin(session, spec.model_id), spec.planner)
    return module.twin_policy(controller), {
        "controller": "twin",
        "planner": spec.planner,
        "model_id": spec.model_id,
    }
