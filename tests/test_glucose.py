"""The glucose process: UVA/Padova patients, IOB limit, basal-bolus baseline, episodes."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from twin_fixtures import assert_within_bounds_and_rate, cold_controller, tiny_config, with_control
from typer.testing import CliRunner

from api.cli import app
from api.services.loops import default_controller_factory
from processes import get_process, plant_parts
from processes import glucose as g
from processes.base import CORE_METRICS, benchmark_cases
from twin.assembly import build_controller
from twin.baseline import PlantParts
from twin.data import check_log
from twin.planning import PlannerSettings, PlanningProblem, PlanResult
from twin.records import EventKind, StepRecord, StepStatus
from twin.spec import ActuatorKind, ProcessSpec, TagRole
from twin.twin_model import Twin

BASAL_STEP = g.SPEC.rate_limit_per_sample(g.SPEC.tag("basal"))
BOLUS_STEP = g.SPEC.rate_limit_per_sample(g.SPEC.tag("bolus"))
ADULT = g.therapy("adult#001")
OTHER = "adult#006"  # basal 1.725 U/h against the default adult#001's 1.267


def _applied(steps: list[StepRecord], name: str) -> np.ndarray:
    return np.array([s.actuators[name] for s in steps])


def _assert_pump_limits(steps: list[StepRecord], basal_before: float) -> None:
    assert_within_bounds_and_rate(
        _applied(steps, "basal"), basal_before, 0.0, g.BASAL_MAX_U_PER_H, BASAL_STEP
    )
    assert_within_bounds_and_rate(_applied(steps, "bolus"), 0.0, 0.0, g.BOLUS_MAX_U, BOLUS_STEP)


# -- spec and registry --------------------------------------------------------------------


def test_spec_validates_and_names_the_limits() -> None:
    assert ProcessSpec.from_dict(g.SPEC.to_dict()) == g.SPEC
    assert get_process("glucose") is g
    assert g.SPEC.sample_period_s == 180.0
    cgm, iob = g.SPEC.tag("CGM"), g.SPEC.tag("IOB")
    assert [t.name for t in g.SPEC.controlled] == ["CGM"]
    assert (cgm.low, cgm.high) == (70.0, None)
    assert (iob.low, iob.high) == (None, g.iob_limit("adult#001"))
    assert [t.name for t in g.SPEC.actuators] == ["basal", "bolus"]
    assert [t.name for t in g.SPEC.disturbances] == ["CHO"]
    # the pump's own limits (Insulet OmniPod: 30 U/h, 30 U) and the patient's max basal
    # setting; no slew within a sample
    basal, bolus = g.SPEC.tag("basal"), g.SPEC.tag("bolus")
    assert (g.BASAL_MAX_U_PER_H, g.BOLUS_MAX_U) == (30.0, 30.0)
    assert (basal.low, basal.high, bolus.low, bolus.high) == (
        0.0,
        pytest.approx(10.0 * ADULT.basal_u_per_h),
        0.0,
        30.0,
    )
    assert BASAL_STEP == pytest.approx(30.0) and BOLUS_STEP == pytest.approx(30.0)
    assert basal.nominal == pytest.approx(ADULT.basal_u_per_h)


def test_every_patient_has_settings_and_its_own_iob_limit() -> None:
    assert len(g.ALL_PATIENTS) == 30 and len(set(g.ALL_PATIENTS)) == 30
    assert {"adolescent#010", "adult#001", "child#010"} <= set(g.ALL_PATIENTS)
    limits = {p: g.iob_limit(p) for p in g.ALL_PATIENTS}
    for patient, limit in limits.items():
        th = g.therapy(patient)
        assert 0.2 < th.basal_u_per_h < 2.0 and th.carb_ratio_g_per_u > 0
        assert limit > g.steady_basal_iob(th.basal_u_per_h) + 100.0 / th.carb_ratio_g_per_u
        assert g.spec_for(patient).tag("IOB").high == limit
    assert limits["child#001"] < limits["adolescent#001"] < limits["adult#001"]
    cases = benchmark_cases(g)
    assert {c["patient"] for c in cases} == {"adolescent#001", "adult#001", "child#001"}
    with pytest.raises(ValueError, match="unknown patient"):
        g.run_episode(g.baseline_policy(), "bb", patient="adult#011", hours=0.1)


# -- insulin on board ---------------------------------------------------------------------


def test_insulin_action_curve() -> None:
    t = np.arange(0.0, g.INSULIN_DURATION_MIN + 1.0, 3.0)
    left = g.insulin_remaining(t)
    assert left[0] == 1.0 and left[-1] == 0.0
    assert np.all(np.diff(left) <= 0)  # monotone: why a per-dose cap bounds all later IOB
    # activity (the curve's slope) peaks at 75 min
    assert 3.0 * int(np.argmax(-np.diff(left))) == pytest.approx(g.INSULIN_PEAK_MIN, abs=3.0)
    # a constant basal carries about two hours of itself on board
    assert g.steady_basal_iob(1.0) == pytest.approx(2.0, abs=0.05)


def test_iob_follows_a_bolus() -> None:
    iob = g.InsulinOnBoard(basal_u_per_h=0.0)
    assert iob.units == 0.0
    iob.deliver(10.0)
    for k in range(1, 30):
        assert iob.units == pytest.approx(10.0 * float(g.insulin_remaining(3.0 * k)))
        iob.deliver(0.0)
    assert g.InsulinOnBoard(ADULT.basal_u_per_h).units == pytest.approx(
        g.steady_basal_iob(ADULT.basal_u_per_h)
    )


def test_iob_limit_cuts_bolus_first_then_basal() -> None:
    assert g.enforce_iob_limit(1.2, 3.0, iob_u=5.0, limit_u=20.0) == (1.2, 3.0, [])
    basal, bolus, events = g.enforce_iob_limit(1.2, 3.0, iob_u=19.0, limit_u=20.0)
    assert basal == 1.2 and bolus == pytest.approx(1.0 - 1.2 * 0.05)
    assert [e.kind for e in events] == ["iob_limit"] and events[0].tag == "IOB"
    basal, bolus, _ = g.enforce_iob_limit(1.2, 3.0, iob_u=19.97, limit_u=20.0)
    assert bolus == 0.0 and basal == pytest.approx(0.03 / 0.05)
    assert g.enforce_iob_limit(1.2, 3.0, iob_u=25.0, limit_u=20.0)[:2] == (0.0, 0.0)


# -- the basal-bolus baseline -------------------------------------------------------------


def test_basal_bolus_is_simglucose_bbcontroller() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from simglucose.controller.basal_bolus_ctrller import BBController
    reference = BBController()
    for patient in ("adolescent#001", "adult#001", "child#001"):
        for cgm, cho in ((120.0, 0.0), (200.0, 0.0), (120.0, 56 / 3), (230.0, 79 / 3)):
            ours = g.basal_bolus(g.therapy(patient), cgm, cho)
            theirs = reference._bb_policy(patient, cho, cgm, g.SAMPLE_PERIOD_MIN)
            assert ours["basal"] == pytest.approx(theirs.basal * 60.0)  # U/min -> U/h
            assert ours["bolus"] == pytest.approx(theirs.bolus * g.SAMPLE_PERIOD_MIN)


# simglucose's own env, BBController, Dexcom and RandomScenario(seed 1), 24 h
ANCHORS = {"adolescent#001": (100.0, 86.1), "adult#001": (88.1, 70.7), "child#001": (73.8, 59.5)}


@pytest.mark.parametrize("patient", sorted(ANCHORS))
def test_baseline_reproduces_simglucose_anchors(patient: str) -> None:
    ep = g.run_episode(g.baseline_policy(), "basal-bolus", seed=1, patient=patient)
    tir, min_bg = ANCHORS[patient]
    assert len(ep.steps) == 480 and [s.step for s in ep.steps] == list(range(480))
    assert ep.metrics["tir_pct"] == pytest.approx(tir, abs=0.06)
    assert ep.metrics["min_bg"] == pytest.approx(min_bg, abs=0.05)
    assert set(CORE_METRICS) <= set(ep.metrics)
    assert ep.metrics["iob_limited_steps"] == 0  # the limit leaves the baseline alone
    assert ep.metrics["violations"] == round(ep.metrics["below_70_pct"] * 481 / 100)
    _assert_pump_limits(ep.steps, g.therapy(patient).basal_u_per_h)
    assert ep.process == "glucose" and ep.config["patient"] == patient


def test_baseline_day_is_sane_and_deterministic() -> None:
    ep = g.run_episode(g.baseline_policy(), "basal-bolus", seed=7)
    m = ep.metrics
    assert m["tir_pct"] > 80.0 and m["below_54_pct"] == 0.0
    assert 100.0 < m["mean_bg"] < 160.0
    assert m["cost"] == pytest.approx(m["lbgi"] + m["hbgi"])
    assert m["total_bolus_u"] > 10.0  # it did bolus for the day's meals
    announced = [s for s in ep.steps if s.measurements["CHO"] > 0]
    assert len(announced) == len(ep.config["meals"]) >= 3
    assert all(s.actuators["bolus"] > 0 for s in announced)
    limit = g.iob_limit("adult#001")
    for s in ep.steps:
        assert s.setpoints == {"CGM": 120.0}
        assert s.margins["CGM"] == pytest.approx(s.measurements["CGM"] - 70.0)
        assert s.margins["IOB"] == pytest.approx(limit - s.measurements["IOB"])
    again = g.run_episode(g.baseline_policy(), "basal-bolus", seed=7)
    np.testing.assert_array_equal(_applied(again.steps, "bolus"), _applied(ep.steps, "bolus"))
    assert again.metrics["tir_pct"] == m["tir_pct"]
    assert g.meal_plan(24.0, seed=8) != g.meal_plan(24.0, seed=7)


def test_unannounced_meals_are_eaten_but_not_measured() -> None:
    plan = g.meal_plan(24.0, seed=3)
    hidden = g.meal_plan(24.0, seed=3, unannounced=True)
    assert [(m.minute, m.carbs_g) for m in plan] == [(m.minute, m.carbs_g) for m in hidden]
    assert all(m.announced for m in plan) and not all(m.announced for m in hidden)
    ep = g.run_episode(g.baseline_policy(), "basal-bolus", seed=3, unannounced=True)
    announced = sum(m.announced for m in hidden)
    assert sum(s.measurements["CHO"] > 0 for s in ep.steps) == announced
    full = g.run_episode(g.baseline_policy(), "basal-bolus", seed=3)
    assert ep.metrics["total_bolus_u"] < full.metrics["total_bolus_u"]
    assert ep.metrics["above_180_pct"] > full.metrics["above_180_pct"]


def _greedy(
    sim: g.GlucoseSimulator, time_s: float, meas: dict[str, float], sp: float
) -> StepRecord:
    """The adversary: all the insulin the pump can give, every step."""
    return StepRecord(
        0, time_s, dict(meas), {"CGM": sp}, {"basal": g.BASAL_MAX_U_PER_H, "bolus": g.BOLUS_MAX_U}
    )


def test_iob_limit_holds_against_an_adversary() -> None:
    ep = g.run_episode(_greedy, "greedy", seed=2, hours=3.0)
    limit = g.iob_limit("adult#001")
    iob = np.array([s.measurements["IOB"] for s in ep.steps])
    assert iob.max() <= limit + 1e-9 and iob.max() > 0.95 * limit
    _assert_pump_limits(ep.steps, ADULT.basal_u_per_h)
    cut = [s for s in ep.steps if any(e.kind == "iob_limit" for e in s.events)]
    assert len(cut) == ep.metrics["iob_limited_steps"] > 0.8 * len(ep.steps)
    for s in cut:
        dose = s.actuators["basal"] * g.HOURS_PER_SAMPLE + s.actuators["bolus"]
        assert s.measurements["IOB"] + dose <= limit + 1e-9
    assert ep.steps[0].actuators == {"basal": 30.0, "bolus": 30.0}  # room at the start
    assert ep.metrics["violations"] > 0  # the true plant is scored, not the limit


def test_missing_or_invalid_proposals_hold_basal_without_bolus() -> None:
    applied, events = g.pump_guard(
        {"basal": float("nan")}, {"basal": 0.9, "bolus": 2.0}, iob_u=1.0, limit_u=20.0
    )
    assert applied == {"basal": 0.9, "bolus": 0.0}
    assert {e.kind for e in events} == {"invalid_proposal"}
    applied, events = g.pump_guard(
        {"basal": 50.0, "bolus": -1.0}, {"basal": 0.9, "bolus": 0}, iob_u=1.0, limit_u=200.0
    )
    assert applied == {"basal": 30.0, "bolus": 0.0}
    assert [e.kind for e in events] == ["clipped_bounds", "clipped_bounds"]


# -- the fallback -------------------------------------------------------------------------


def _fallback(
    meas: Mapping[str, float | None], applied: Mapping[str, float] | None = None
) -> dict[str, float]:
    fallback = g.baseline_fallback("adult#001")
    return dict(fallback(meas, {"CGM": 120.0}, applied or {"basal": 3.0, "bolus": 0.0}))


def test_fallback_is_bumpless_and_copes_with_missing_cgm() -> None:
    steady = g.steady_basal_iob(ADULT.basal_u_per_h)
    basal, meal = ADULT.basal_u_per_h, 60.0 / ADULT.carb_ratio_g_per_u
    correction = (240.0 - 140.0) / ADULT.correction_mg_dl_per_u
    # no meal: the scheduled basal, whatever the twin had applied, and no bolus
    assert _fallback({"CGM": 250.0, "IOB": steady, "CHO": 0.0}) == {"basal": basal, "bolus": 0}
    # a meal: carbs/CR plus the correction, as the baseline
    out = _fallback({"CGM": 240.0, "IOB": steady, "CHO": 20.0})
    assert out["bolus"] == pytest.approx(meal + correction)
    # insulin the twin already gave is counted: no stacked correction
    out = _fallback({"CGM": 240.0, "IOB": steady + 4.0, "CHO": 20.0})
    assert out["bolus"] == pytest.approx(meal + correction - 4.0)
    out = _fallback({"CGM": 240.0, "IOB": steady + 40.0, "CHO": 20.0})
    assert out["bolus"] == pytest.approx(meal)
    # missing CGM or IOB: the meal part only; nothing measured: the basal only
    assert _fallback({"CGM": None, "IOB": steady, "CHO": 20.0})["bolus"] == pytest.approx(meal)
    assert _fallback({"CGM": 240.0, "IOB": None, "CHO": 20.0})["bolus"] == pytest.approx(meal)
    assert _fallback({}) == {"basal": basal, "bolus": 0.0}
    # stateless: the same inputs give the same output, whatever came before
    first = _fallback({"CGM": 240.0, "IOB": steady, "CHO": 20.0}, {"basal": 0.0, "bolus": 9})
    assert first == _fallback({"CGM": 240.0, "IOB": steady, "CHO": 20.0})


class _FallbackOnly:
    """A stand-in for TwinController that always hands over to its fallback."""

    def __init__(self) -> None:
        self.fallback = g.baseline_fallback()  # the default patient's, adult#001
        self.seen: list[dict[str, float | None]] = []

    def step(
        self,
        time_s: float,
        measurements: Mapping[str, float | None],
        setpoints: Mapping[str, float],
    ) -> StepRecord:
        self.seen.append(dict(measurements))
        proposal = self.fallback(measurements, setpoints, {})
        return StepRecord(
            0,
            time_s,
            {k: float(v) for k, v in measurements.items() if v is not None},
            dict(setpoints),
            dict(proposal),
            status=StepStatus.FALLBACK,
        )


def test_twin_policy_reports_delivery_and_binds_the_patients_fallback() -> None:
    controller = _FallbackOnly()
    policy = g.twin_policy(controller)  # type: ignore[arg-type]
    ep = g.run_episode(policy, "fallback", seed=1, patient="child#001", hours=1.0)
    child = g.therapy("child#001")
    assert controller.fallback.therapy == child  # type: ignore[attr-defined]
    np.testing.assert_allclose(_applied(ep.steps, "basal"), child.basal_u_per_h)
    assert controller.seen[0]["basal"] == child.basal_u_per_h  # what the pump delivered
    assert ep.metrics["fallbacks"] == 20
    assert len(g.ALL_CASES) == 30 and {c["patient"] for c in g.ALL_CASES} == set(g.ALL_PATIENTS)


# -- excitation data ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def log() -> pd.DataFrame:
    return g.generate_training_log(hours=24.0, seed=3)


def test_training_log_keeps_pump_and_iob_limits(log: pd.DataFrame) -> None:
    assert list(log.columns) == ["time_s", "CGM", "IOB", "basal", "bolus", "CHO"]
    assert len(log) == 480 and log.notna().all().all()
    np.testing.assert_allclose(np.diff(log["time_s"]), g.SAMPLE_PERIOD_S)
    check_log(log, g.SPEC)
    assert_within_bounds_and_rate(
        log["basal"].to_numpy(), ADULT.basal_u_per_h, 0.0, g.max_basal("adult#001"), BASAL_STEP
    )
    assert_within_bounds_and_rate(log["bolus"].to_numpy(), 0.0, 0.0, g.BOLUS_MAX_U, BOLUS_STEP)
    assert log["IOB"].max() <= g.iob_limit("adult#001")
    # excitation: the basal steps around the scheduled rate, boluses also without a meal
    basal = log["basal"][log["basal"] > 0]
    assert basal.std() > 0.3 * ADULT.basal_u_per_h and basal.nunique() > 100
    boluses = log["bolus"] > 0
    assert (log["CHO"] > 0).sum() >= 3 and (boluses & (log["CHO"] == 0)).any()
    assert log["CGM"].std() > 15.0
    assert (log["CGM"] < 70.0).mean() < 0.05  # low-glucose suspend and hypo treatment


def test_low_glucose_suspend_is_no_copy_of_the_glucose_level() -> None:
    """Between 75 and 110 mg/dL the log holds samples with the basal suspended and
    without: a suspend fixed at 90 mg/dL made every sample below 90 one without basal."""
    log = g.generate_training_log(hours=72.0, seed=5)
    near_low = log[(log["CGM"] > 80.0) & (log["CGM"] < 110.0)]
    scheduled = ADULT.basal_u_per_h
    cut = near_low["basal"] < 0.25 * scheduled
    assert len(near_low) > 50
    assert 0.1 < cut.mean() < 0.9
    below_90 = log["basal"][(log["CGM"] > 75.0) & (log["CGM"] < 90.0)]
    assert (below_90 > 0.25 * scheduled).any()  # a suspend at 90 mg/dL left none
    assert (log["CGM"] < 70.0).mean() < 0.05


def test_training_log_is_deterministic_by_seed(log: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(g.generate_training_log(hours=24.0, seed=3), log)
    other = g.generate_training_log(hours=6.0, seed=4)
    assert not other.equals(log.iloc[:120].reset_index(drop=True))
    child = g.generate_training_log(hours=6.0, seed=3, patient="child#001")
    assert child["IOB"].max() <= g.iob_limit("child#001")
    assert child["basal"].max() < log["basal"].max()
    assert child["basal"].max() <= g.max_basal("child#001")


def test_the_max_basal_is_the_patients_pump_setting() -> None:
    """Ten times the scheduled basal, within the pump's own maximum; the spec's bound."""
    child = g.therapy("child#001")
    assert g.max_basal("child#001") == pytest.approx(g.MAX_BASAL_MULTIPLE * child.basal_u_per_h)
    assert g.max_basal("child#001") < g.BASAL_MAX_U_PER_H
    assert g.spec_for("child#001").tag("basal").high == g.max_basal("child#001")
    assert all(g.max_basal(p) <= g.BASAL_MAX_U_PER_H for p in g.ALL_PATIENTS)


# -- metrics ------------------------------------------------------------------------------


def test_episode_metrics_on_true_bg() -> None:
    bg = np.array([50.0, 65.0, 100.0, 150.0, 190.0, 300.0, 120.0, 0.5])
    steps = [
        StepRecord(k, 180.0 * k, {}, {}, {"basal": 1.0, "bolus": 0.5}, solve_ms=1.0)
        for k in range(7)
    ]
    m = g.episode_metrics(bg, steps)
    assert m["violations"] == 3 and m["worst_violation"] == pytest.approx(69.5)
    assert m["tir_pct"] == pytest.approx(100 * 3 / 8)
    assert m["below_70_pct"] == pytest.approx(100 * 3 / 8)
    assert m["below_54_pct"] == pytest.approx(100 * 2 / 8)
    assert m["above_180_pct"] == pytest.approx(100 * 2 / 8)
    assert m["total_basal_u"] == pytest.approx(7 * 0.05) and m["total_bolus_u"] == 3.5
    # the deepest hypoglycaemia is the worst risk, not none (BG clipped to 20 mg/dL)
    lbgi_deep, _ = g.risk_indices(np.array([0.5]))
    assert lbgi_deep == pytest.approx(g.risk_indices(np.array([20.0]))[0]) and lbgi_deep > 50
    assert m["cost"] == pytest.approx(m["lbgi"] + m["hbgi"])
    assert set(CORE_METRICS) <= set(m)


def test_roles_of_tags() -> None:
    roles = {t.name: t.role for t in g.SPEC.tags}
    assert roles == {
        "CGM": TagRole.SENSOR,
        "IOB": TagRole.SENSOR,
        "basal": TagRole.ACTUATOR,
        "bolus": TagRole.ACTUATOR,
        "CHO": TagRole.DISTURBANCE,
    }
    assert g.oracle_policy() is None


# -- with a twin --------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_twin_drives_the_patient_through_the_pump() -> None:
    from twin.controller import TwinController
    from twin.planning import PlannerSettings
    from twin.train import train_twin

    log = g.generate_training_log(hours=12.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        twin, _ = train_twin(log, g.SPEC, tiny_config(epochs=2), show_progress=False)
    controller = TwinController.from_twin(
        twin, "cem", PlannerSettings(horizon=5), fallback=g.baseline_fallback()
    )
    ep = g.run_episode(g.twin_policy(controller), "twin+cem", seed=7, hours=1.0)
    assert len(ep.steps) == 20 and ep.controller == "twin+cem"
    _assert_pump_limits(ep.steps, ADULT.basal_u_per_h)
    for s in ep.steps:
        assert s.measurements["IOB"] <= g.iob_limit("adult#001")
        assert {"CGM", "IOB", "CHO", "basal", "bolus"} <= set(s.measurements)
        assert set(s.margins) == {"CGM", "IOB"} and s.setpoints == {"CGM": 120.0}
    assert set(CORE_METRICS) <= set(ep.metrics)


@pytest.fixture(scope="module")
def tiny_glucose_twin() -> Twin:
    from twin.train import train_twin

    log = g.generate_training_log(hours=6.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train_twin(log, g.SPEC, tiny_config(epochs=1), show_progress=False)[0]


class _MaxInsulinPlanner:
    """Plans the most insulin it can: both actuators far above their training range (1e4
    training stds: past the pump's maximum whatever the log)."""

    name = "max-insulin"
    settings = PlannerSettings(horizon=3)

    def __init__(self) -> None:
        self.problems: list[PlanningProblem] = []

    def plan(self, problem: PlanningProblem) -> PlanResult:
        self.problems.append(problem)
        h, d = self.settings.horizon, len(problem.z0)
        return PlanResult(True, np.full((h, len(problem.u_prev)), 1e4), np.zeros((h, d)), 0.0, 1.0)


class _CountingFallback(g.BasalBolusFallback):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __call__(self, meas, setpoints, applied):  # type: ignore[no-untyped-def]
        self.calls += 1
        return {**super().__call__(meas, setpoints, applied), "bolus": 0.05}


def _drive(
    twin: Twin, samples: int, guard_band: float = 0.0, planner: Any = None
) -> tuple[list[StepRecord], _CountingFallback]:
    fallback = _CountingFallback()
    controller = cold_controller(
        twin,
        planner or _MaxInsulinPlanner(),
        fallback,
        guard_band=guard_band,
        mismatch_trip=1e9,
        disagreement_trip=1e9,
    )
    sim = g.GlucoseSimulator("adult#001", 3, g.meal_plan(2.0, 3, False, 0.0))
    records = []
    for k in range(samples):
        record = controller.step(
            g.SAMPLE_PERIOD_S * k, {**sim.measure(), **sim.applied}, {"CGM": 120.0}
        )
        records.append(record)
        sim.step(record.actuators["basal"], record.actuators["bolus"])
    return records, fallback


def test_the_bolus_wizard_doses_while_the_twin_sets_the_basal(tiny_glucose_twin: Twin) -> None:
    """With `control.baseline_actuators` = (bolus,) the twin's planned basal goes out (up at
    the pump's rate limit, to its maximum) but every bolus is the baseline's, asked once
    per sample."""
    records, fallback = _drive(tiny_glucose_twin, 4)
    assert all(r.status is StepStatus.OK for r in records)
    assert fallback.calls == 4
    assert _applied(records, "bolus") == pytest.approx([0.05] * 4)
    basal = _applied(records, "basal")
    rising = ADULT.basal_u_per_h + BASAL_STEP * np.arange(1, 5)
    assert basal == pytest.approx(np.minimum(rising, g.max_basal("adult#001")))
    assert basal[0] > ADULT.basal_u_per_h  # the twin's, not the scheduled rate
    twin_doses, _ = _drive(with_control(tiny_glucose_twin, baseline_actuators=()), 1)
    assert twin_doses[0].status is StepStatus.OK  # the twin's own bolus, at the pump's limit
    assert twin_doses[0].actuators["bolus"] == pytest.approx(min(BOLUS_STEP, g.BOLUS_MAX_U))
    guarded, fallback = _drive(tiny_glucose_twin, 3, guard_band=1e3)  # the guard trips too
    assert all(r.status is StepStatus.FALLBACK for r in guarded) and fallback.calls == 3


def test_the_plan_is_told_the_wizards_bolus(tiny_glucose_twin: Twin) -> None:
    """The planner gets the bolus pinned: the wizard's dose now, none after (nominal 0);
    the basal is left to it."""
    planner = _MaxInsulinPlanner()
    _drive(tiny_glucose_twin, 2, planner=planner)
    twin = tiny_glucose_twin
    for problem in planner.problems:
        assert problem.pinned is not None and problem.pinned.shape == (3, 2)
        assert np.all(np.isnan(problem.pinned[:, 0]))  # basal: the twin's
        bolus = twin.norm.denormalise(problem.pinned[:, 1], ("bolus",))
        assert bolus == pytest.approx([0.05, 0.0, 0.0], abs=1e-9)


def test_benchmark_cases_group_by_age_and_meal_announcement() -> None:
    groups = [g.case_group(case) for case in g.BENCHMARK_CASES]
    assert groups == ["adolescents", "adults", "children", "adults, unannounced meals"]
    assert {g.case_group(case) for case in g.ALL_CASES} == {"adolescents", "adults", "children"}


def test_the_bolus_is_a_dose_and_the_basal_a_level() -> None:
    assert g.SPEC.tag("bolus").kind is ActuatorKind.DOSE
    assert g.SPEC.tag("basal").kind is ActuatorKind.LEVEL


def test_the_twin_adds_the_bolus_through_a_linear_path(tiny_glucose_twin: Twin) -> None:
    """Training gives the dose actuator (and only it) the predictor's linear path."""
    actions = tiny_glucose_twin.layout.actions
    assert tiny_glucose_twin.config.dose_actions == (actions.index("bolus"),)
    gain = tiny_glucose_twin.model.predictor.action_matrix()
    assert gain is not None and gain[:, actions.index("bolus")].abs().max() > 0
    assert not gain[:, actions.index("basal")].any()


def test_a_stale_hold_never_gives_the_last_bolus_again(tiny_glucose_twin: Twin) -> None:
    """The dinner bolus goes out once; a step without read-backs after a 5-sample gap holds
    the basal where it was and gives no bolus (it re-sent the 9.5 U dose before)."""
    controller = cold_controller(
        tiny_glucose_twin,
        _MaxInsulinPlanner(),
        g.baseline_fallback(),
        mismatch_trip=1e9,
        disagreement_trip=1e9,
    )
    dinner = controller.step(0.0, {"CGM": 160.0, "IOB": 2.0, "CHO": 20.0}, {"CGM": 120.0})
    assert dinner.actuators["bolus"] > 1.0  # the wizard's meal bolus
    held = controller.step(
        6 * g.SAMPLE_PERIOD_S, {"CGM": 150.0, "IOB": 8.0, "CHO": 0.0}, {"CGM": 120.0}
    )
    assert held.status is StepStatus.STALE
    assert EventKind.STALE_DATA in {e.kind for e in held.events}
    assert held.actuators == {"basal": dinner.actuators["basal"], "bolus": 0.0}


def test_every_hold_gives_no_bolus(tiny_glucose_twin: Twin) -> None:
    """Without a baseline a warming-up twin holds: the basal stays, the bolus read back
    from the pump is not sent again."""
    controller = build_controller(tiny_glucose_twin, _MaxInsulinPlanner(), parts=PlantParts())
    record = controller.step(
        0.0, {"CGM": 150.0, "IOB": 3.0, "CHO": 0.0, "basal": 1.1, "bolus": 4.0}, {"CGM": 120.0}
    )
    assert EventKind.WARMING_UP in {e.kind for e in record.events}
    assert record.actuators == {"basal": 1.1, "bolus": 0.0}


def test_a_twin_of_another_patient_falls_back_to_that_patients_settings() -> None:
    parts = plant_parts(g.spec_for(OTHER))
    assert parts.variant == OTHER and plant_parts(g.SPEC).variant == g.DEFAULT_PATIENT
    meal = parts.fallback(
        {"CGM": 200.0, "IOB": 0.0, "CHO": 10.0}, {"CGM": 120.0}, {"basal": 0.0, "bolus": 0.0}
    )
    th = g.therapy(OTHER)
    assert meal["basal"] == pytest.approx(1.725, abs=1e-3) != pytest.approx(ADULT.basal_u_per_h)
    correction = (200.0 - g.BB_TARGET_MG_DL) / th.correction_mg_dl_per_u
    assert meal["bolus"] == pytest.approx(
        10.0 * g.SAMPLE_PERIOD_MIN / th.carb_ratio_g_per_u + correction
    )
    assert (
        g.variant_of(ProcessSpec.from_dict({**g.SPEC.to_dict(), "description": "x"}))
        == g.DEFAULT_PATIENT
    )  # the settings say which patient, not the words


def test_a_live_loop_binds_the_patient_its_twin_was_trained_for(tiny_glucose_twin: Twin) -> None:
    """The API builds a loop's controller from the checkpoint alone: an adult#006 twin falls
    back to adult#006's basal, and its limits are adult#006's."""
    twin = dataclasses.replace(tiny_glucose_twin, spec=g.spec_for(OTHER))
    controller = default_controller_factory(twin.to_bytes(), "cem")
    assert controller.fallback.therapy == g.therapy(OTHER)  # type: ignore[attr-defined]
    assert controller.spec.tag("IOB").high == g.iob_limit(OTHER)
    record = controller.step(0.0, {"CGM": 150.0, "IOB": 3.0, "CHO": 0.0}, {"CGM": 120.0})
    assert record.status is StepStatus.FALLBACK  # warming up: the baseline acts
    assert record.actuators["basal"] == pytest.approx(g.therapy(OTHER).basal_u_per_h)


def test_the_cli_refuses_a_patient_where_there_is_none(tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (
        ["data", "generate", "--process", "cstr", "--patient", OTHER],
        ["data", "generate", "--process", "glucose", "--patient", "adult#099"],
    ):
        result = runner.invoke(app, [*args, "--hours", "0.1", "--out", str(tmp_path / "x.csv")])
        assert result.exit_code == 2, result.output
        assert "patient" in result.output or "variants" in result.output
        assert not (tmp_path / "x.csv").exists()


@pytest.mark.slow
def test_the_cli_generates_and_trains_for_a_patient(tmp_path: Path) -> None:
    runner = CliRunner()
    log, checkpoint = tmp_path / "log.csv", tmp_path / "twin.pt"
    result = runner.invoke(
        app,
        [
            "data",
            "generate",
            "--process",
            "glucose",
            "--patient",
            OTHER,
            "--hours",
            "2",
            "--out",
            str(log),
        ],
    )
    assert result.exit_code == 0, result.output
    logged = pd.read_csv(log)
    assert logged.equals(g.generate_training_log(2.0, seed=1, patient=OTHER)[logged.columns])
    result = runner.invoke(
        app,
        [
            "train",
            "--process",
            "glucose",
            "--patient",
            OTHER,
            "--data",
            str(log),
            "--epochs",
            "1",
            "--no-register",
            "--out",
            str(checkpoint),
        ],
    )
    assert result.exit_code == 0, result.output
    twin = Twin.load(checkpoint)
    # training writes the horizon it took from the log into the twin's spec
    assert twin.spec.control.horizon is not None and twin.spec.control.horizon >= 1
    unplanned = twin.spec.control.model_copy(update={"horizon": None})
    assert twin.spec.model_copy(update={"control": unplanned}) == g.spec_for(OTHER)
    assert g.variant_of(twin.spec) == OTHER


def test_a_twin_saved_before_the_bolus_was_a_dose_still_holds_it_at_zero(
    tiny_glucose_twin: Twin,
) -> None:
    """A checkpoint's spec from before `kind: dose` calls the bolus a level: the assembly
    takes the process's word for it, so a stale hold gives no bolus there either."""
    as_levels = tuple(t.model_copy(update={"kind": ActuatorKind.LEVEL}) for t in g.SPEC.tags)
    level = g.SPEC.model_copy(update={"tags": as_levels})
    older = dataclasses.replace(tiny_glucose_twin, spec=level)
    controller = build_controller(
        older, _MaxInsulinPlanner(), parts=plant_parts(older.spec), warmup_samples=0,
        mismatch_trip=1e9, disagreement_trip=1e9,
    )  # fmt: skip
    assert controller.spec.tag("bolus").kind is ActuatorKind.DOSE
    dinner = controller.step(0.0, {"CGM": 160.0, "IOB": 2.0, "CHO": 20.0}, {"CGM": 120.0})
    assert dinner.actuators["bolus"] > 1.0
    held = controller.step(6 * g.SAMPLE_PERIOD_S, {"CGM": 150.0, "IOB": 8.0, "CHO": 0.0},
                           {"CGM": 120.0})  # fmt: skip
    assert held.status is StepStatus.STALE and held.actuators["bolus"] == 0.0
