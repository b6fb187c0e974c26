"""`twin control` times its planner on the twin before the episode: a sampling planner over
its budget is made smaller until it keeps up, and one that cannot keep up is refused before
anything runs or is stored."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

import twin.planning.timing as timing_module
from api.cli import app
from api.cli_control import _planner_that_keeps_up
from processes import plant_parts
from twin.assembly import build_controller
from twin.planning.sampling import CEMPlanner
from twin.twin_model import Twin

SHIPPED = Path(__file__).resolve().parents[1] / "demo" / "cstr_twin.pt"
runner = CliRunner()


def _timing_by_work(ms_per_sample_iteration: float):
    """A stand-in for time_planner: a sampling planner takes time in proportion to its
    samples x iterations, any other planner 5 ms."""

    def fake(planner, twin, plans=timing_module.TIMING_PLANS, budget_share=0.5, seed=0):
        work = getattr(planner, "samples", 0) * getattr(planner, "iterations", 0)
        p99 = work * ms_per_sample_iteration if work else 5.0
        return timing_module.PlannerTiming(
            "fake", plans, p99, p99, p99, 0, planner.settings.deadline_ms,
            twin.spec.sample_period_s, budget_share,
        )  # fmt: skip

    return fake


def test_a_sampling_planner_over_its_budget_is_made_to_fit(monkeypatch) -> None:
    twin = Twin.load(SHIPPED)
    parts = plant_parts(twin.spec)
    controller = build_controller(twin, "cem", parts=parts)
    samples, iterations = controller.planner.samples, controller.planner.iterations
    budget = min(controller.planner.settings.deadline_ms, twin.spec.sample_period_s * 1e3)
    # the defaults take 4 x the half budget a plan may use
    per_unit = 4 * 0.5 * budget / (samples * iterations)
    monkeypatch.setattr(timing_module, "time_planner", _timing_by_work(per_unit))
    fitted = _planner_that_keeps_up(controller, "cem", parts)
    assert isinstance(fitted.planner, CEMPlanner)
    smaller = fitted.planner.samples * fitted.planner.iterations
    assert smaller < samples * iterations
    assert smaller * per_unit <= 0.5 * budget


def test_a_planner_that_keeps_up_is_left_as_it_is(monkeypatch) -> None:
    twin = Twin.load(SHIPPED)
    parts = plant_parts(twin.spec)
    controller = build_controller(twin, "cem", parts=parts)
    monkeypatch.setattr(timing_module, "time_planner", _timing_by_work(1e-9))
    assert _planner_that_keeps_up(controller, "cem", parts) is controller


@pytest.mark.parametrize("planner", ["casadi", "cem"])
def test_a_planner_that_cannot_keep_up_is_refused_before_the_episode(
    monkeypatch, tmp_path: Path, planner: str
) -> None:
    def too_slow(planner, twin, plans=10, budget_share=0.5, seed=0):
        return dataclasses.replace(
            _timing_by_work(0.0)(planner, twin, plans, budget_share), p99_ms=1e6
        )

    monkeypatch.setattr(timing_module, "time_planner", too_slow)
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--database-url", url]).exit_code == 0
    result = runner.invoke(
        app,
        ["control", "--model", str(SHIPPED), "--planner", planner, "--database-url", url],
    )
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "over" in text and "nothing was run" in text and "sample period 6 s" in text
    from api import services
    from api.db import open_session

    with open_session(url) as session:
        assert services.list_runs(session) == []
