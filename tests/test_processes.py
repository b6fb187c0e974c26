"""Every built-in process keeps the module contract the CLI, API and benchmarks rely on."""

from __future__ import annotations

import pandas as pd
import pytest

from processes import fallback_for, get_process, process_names
from processes.base import (
    CORE_METRICS,
    TrainingRecipe,
    benchmark_cases,
    fallback_reasons,
    plan_time_metrics,
)
from twin.data import check_log
from twin.model import JEPAConfig
from twin.records import SafetyEvent, StepRecord, StepStatus
from twin.spec import SpecError
from twin.train import TrainConfig

NAMES = process_names()
SHORT_HOURS = {"cstr": 0.5, "turbofan": 0.1, "glucose": 6.0, "tennessee_eastman": 1.0}


def test_the_user_named_families_are_all_there() -> None:
    assert NAMES == ["cstr", "glucose", "tennessee_eastman", "turbofan"]
    with pytest.raises(SpecError, match=r"unknown process 'reactor9' .*--spec FILE"):
        get_process("reactor9")


def test_a_recipe_trains_the_twin_its_process_needs() -> None:
    assert TrainingRecipe(hours=1.0, epochs=3).train_config() == TrainConfig()
    chosen = TrainingRecipe(
        hours=1.0, epochs=3, predictor_layers=3, predicted_readout_weight=7.0, embed_dim=24
    )
    config = chosen.train_config(epochs=3, seed=4)
    assert (config.model.predictor_layers, config.predicted_readout_weight) == (3, 7.0)
    assert config.model.embed_dim == 24
    assert (config.epochs, config.seed) == (3, 4)
    assert config.model == JEPAConfig(predictor_layers=3, embed_dim=24)  # nothing else moves
    cstr_config = get_process("cstr").TRAINING_RECIPE.train_config()
    assert (cstr_config.model.predictor_layers, cstr_config.predicted_readout_weight) == (2, 25.0)
    assert get_process("glucose").TRAINING_RECIPE.train_config() == TrainConfig()


@pytest.mark.parametrize("name", NAMES)
def test_training_log_is_reproducible_and_valid(name: str) -> None:
    module = get_process(name)
    assert module.SPEC.name == name
    first = module.generate_training_log(SHORT_HOURS[name], seed=3)
    again = module.generate_training_log(SHORT_HOURS[name], seed=3)
    other = module.generate_training_log(SHORT_HOURS[name], seed=4)
    pd.testing.assert_frame_equal(first, again)
    assert not first[[t.name for t in module.SPEC.actuators]].equals(
        other[[t.name for t in module.SPEC.actuators]]
    )
    check_log(first, module.SPEC)  # bounds, rate limits, timestamps, columns


@pytest.mark.parametrize("name", NAMES)
def test_baseline_episode_reports_the_core_metrics(name: str) -> None:
    module = get_process(name)
    case = benchmark_cases(module)[0]
    episode = module.run_episode(module.baseline_policy(), "baseline", seed=7, **case)
    assert set(CORE_METRICS) <= set(episode.metrics)
    assert episode.process == name and episode.steps
    assert {t.name for t in module.SPEC.actuators} <= set(episode.steps[0].actuators)
    assert fallback_for(module.SPEC) is not None
    keys = {row.key for row in module.EPISODE_SUMMARY}
    assert keys <= set(episode.metrics), keys - set(episode.metrics)


def step(ms: float, status: StepStatus = StepStatus.OK, *kinds: str) -> StepRecord:
    events = [SafetyEvent(kind, "test") for kind in kinds]
    return StepRecord(0, 0.0, {}, {}, {}, status=status, solve_ms=ms, events=events)


def test_planning_time_leaves_out_steps_without_a_plan() -> None:
    steps = (
        [step(0.0, StepStatus.FALLBACK, "warming_up")] * 5
        + [step(0.0, StepStatus.STALE, "stale_data")] * 5
        + [step(10.0), step(12.0), step(30.0, StepStatus.FALLBACK, "solver_failed")]
    )
    metrics = plan_time_metrics(steps)
    assert metrics["plan_ms_median"] == 12.0 and metrics["fallbacks"] == 6
    assert plan_time_metrics([step(0.0, StepStatus.STALE)])["plan_ms_median"] == 0.0


def test_fallbacks_are_counted_by_their_first_reason() -> None:
    steps = (
        [step(0.0, StepStatus.FALLBACK, "warming_up")] * 3
        + [step(5.0, StepStatus.FALLBACK, "rate_limited", "model_mismatch", "limit_guard")]
        + [step(5.0, StepStatus.FALLBACK, "limit_guard", "limit_protection")] * 2
        + [step(5.0, StepStatus.OK, "limit_protection", "rate_limited")]
        + [step(0.0, StepStatus.STALE, "stale_data", "limit_protection")]
    )
    reasons = fallback_reasons(steps)
    assert reasons["warming_up"] == 3 and reasons["model_mismatch"] == 1
    assert reasons["limit_guard"] == 2 and reasons["solver_failed"] == 0
    # protection is counted wherever it acted, fallback or not
    assert reasons["limit_protection"] == 4
