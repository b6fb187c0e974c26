"""Type-1 diabetes: blood glucose under an insulin pump, on the UVA/Padova simulator.

The plant is the FDA-accepted UVA/Padova T1D simulator, 2008 version (Kovatchev et al.,
J Diabetes Sci Technol 2009, on the meal model of Dalla Man et al., IEEE Trans Biomed Eng
2007), as packaged by simglucose (Jinyu Xie, 2018): 30 virtual patients
(adolescent#001-010, adult#001-010, child#001-010), each a 13-state nonlinear ODE of
glucose (stomach, gut, plasma, tissue, subcutaneous) and insulin (plasma, liver, two
subcutaneous depots, remote action) kinetics, integrated by simglucose one minute at a
time (`T1DPatient`, dopri5). Meals are eaten at 5 g/min; insulin enters the first
subcutaneous depot. We drive `T1DPatient`, `CGMSensor` and `InsulinPump` ourselves, with
exactly the per-sample semantics of simglucose's `T1DSimEnv` (actions held for one sample,
BG, CGM and CHO averaged over its minutes), so the package's basal-bolus anchors reproduce:
24 h, seed 1, TIR 100 % (adolescent#001), 88.1 % (adult#001), 73.8 % (child#001).

Sample period: 3 min, the Dexcom sensor of simglucose (GuardianRT samples every 5 min).
The faster sensor gives the controller a reading 2 min sooner after a meal starts or a
glucose fall turns, and it is the sensor the package's anchors were computed with.

Tags (see `SPEC` and `spec_for`):

* ``CGM`` [mg/dL], controlled sensor (setpoint 120 mg/dL). Hard LOW limit 70 mg/dL, the
  hypoglycaemia threshold: a controller must never dose so that it predicts glucose below
  70. No high limit: hyperglycaemia is scored (HBGI, time above 180) but is not a
  dosing constraint. The true plant may still fall below 70 after an unannounced meal's
  bolus-free rise or a baseline's over-correction; the metrics count it on TRUE plasma
  glucose (`violations`).
* ``IOB`` [U], insulin on board, computed from the insulin delivered (below); hard HIGH
  limit per patient (`iob_limit`), enforced on every controller by the episode runner.
* ``basal`` [U/h], actuator: the pump's basal rate, from 0 to the patient's max basal
  setting (`max_basal`: 10x the scheduled rate, at most the pump's 30 U/h).
* ``bolus`` [U per sample], actuator: insulin given on top of the basal during the
  sample, 0-30 U. A second actuator rather than a hidden part of the baseline, so the twin
  sees every unit of insulin as an input it can be held responsible for. The twin's
  controller leaves it to the bolus wizard (a hybrid closed loop, the spec's
  `control.baseline_actuators`) and sets the basal.
* ``CHO`` [g/min], measured disturbance: ANNOUNCED carbohydrate of the last sample
  (simglucose's convention: a meal of M g announced at one minute reads M/3 g/min in
  the next sample). Unannounced meals are eaten but never appear in this tag.

Pump limits come from simglucose's params/pump_params.csv (Insulet OmniPod: basal up to
30 U/h, bolus up to 30 U, both in 0.05 increments). The package's `InsulinPump` applies
them to rates in U/min (a unit slip that makes them never bind); we apply them in the
pump's real units and still pass every dose through `InsulinPump` (its rounding), as the
package env does. Rate limits: a pump switches a temp basal or starts a bolus at once,
with no slew; a rate limit on insulin would only delay a suspend, the pump's one
protective move before a low. Both rate limits are therefore the full range per sample,
so they never bind (the spec needs a number).

Insulin on board: the exponential insulin-action curve of OpenAPS/Loop (LoopKit
ExponentialInsulinModel) for rapid-acting insulin, peak activity 75 min, duration of
insulin action 6 h: with tau = tp (1 - tp/td) / (1 - 2 tp/td), a = 2 tau/td and
S = 1 / (1 - a + (1 + a) exp(-td/tau)), the fraction left t minutes after a dose is

    f(t) = 1 - S (1 - a) ((t^2 / (tau td (1 - a)) - t/tau - 1) exp(-t/tau) + 1),  0 < t < td.

IOB(t_k) = sum over earlier samples j of dose_j f(t_k - t_j), with each sample's insulin
(basal/20 + bolus) timestamped at the sample's start, as a pump logs it. It is total IOB
(basal included); the patient starts in the basal steady state, so the history starts
as 6 h of scheduled basal. Because f falls monotonically, capping each new dose at
`limit - IOB(now)` keeps IOB at or under the limit at every later sample
(`enforce_iob_limit`; bolus is cut before basal, basal is the lifeline).

The IOB limit of a patient (`iob_limit`) follows the OpenAPS max-IOB rule of thumb (an
average meal bolus plus three hours of the highest basal, on net IOB) on total IOB:
a large meal's bolus (100 g / carb ratio) + a correction from 300 to 140 mg/dL
(160 / correction factor) + 3 h of basal + the steady-state IOB of the basal itself
(about 2 h of basal). It bounds stacking, not a sustained overdose: held at the limit,
insulin still flows at about limit / 2 h. Over five simulated days (seeds 1-5) of each
of the 30 patients, the basal-bolus baseline peaks at 40-92 % of its limit, so the limit
never cuts the baseline there and the anchors above stand.

Baseline: simglucose's `BBController` (patient basal u2ss BW/6000; at an announced meal a
bolus CHO/CR + (CGM > 150)(CGM - 140)/CF), reproduced here on the patient's own Quest
parameters so it costs no pandas lookup per step. It keeps the package's correction
target of 140 mg/dL (that of the anchors); the 120 mg/dL setpoint is the twin's. The
fallback (`baseline_fallback`) is the same rule with a bolus wizard's IOB subtraction on
the correction. Oracle: none (`oracle_policy` returns
None). An honest bar would be an NMPC on the true 13-state model and state, with its
nonsmooth gastric emptying (tanh switching, max(EGP, 0), renal threshold) integrated at
minute resolution over a horizon as long as insulin acts (4-6 h): several hundred stiff
shooting intervals per solve, every 3 min, for every patient-day of a benchmark; we have
not built it. A "perfect bolus" controller that knows every meal would be another
baseline, not a bound.

Scoring on TRUE plasma glucose (BG averaged over each sample, as simglucose reports it;
the initial BG and the BG after each step): time in range 70-180 mg/dL, below 70, below
54, above 180 (%), mean BG, LBGI and HBGI (Kovatchev's indices, per reading with
`simglucose.analysis.risk.risk_index` on BG clipped to 20-600 mg/dL, averaged over all
readings). ``cost`` is the
blood glucose risk index BGRI = LBGI + HBGI (lower is better). ``violations`` counts
true BG readings below 70 mg/dL, the CGM hard limit (below 54 is reported apart),
``worst_violation`` is 70 minus the lowest true BG when it fell below 70.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from functools import cache
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import track

from twin.effects import Effect
from twin.records import EpisodeResult, EventKind, SafetyEvent, StepRecord
from twin.safety import Fallback
from twin.spec import ActuatorKind, ControlWeights, ProcessSpec, Tag, TagRole

from .base import (
    CONTROLLER_ROWS,
    Controller,
    SummaryRow,
    TrainingRecipe,
    aprbs_levels,
    plan_time_metrics,
    rate_clip,
)

with warnings.catch_warnings():  # simglucose imports pkg_resources, deprecated upstream
    warnings.simplefilter("ignore")
    from simglucose.actuator.pump import INSULIN_PUMP_PARA_FILE, InsulinPump
    from simglucose.analysis.risk import risk_index
    from simglucose.controller.basal_bolus_ctrller import CONTROL_QUEST
    from simglucose.patient.t1dpatient import PATIENT_PARA_FILE, Action, T1DPatient
    from simglucose.sensor.cgm import CGMSensor
    from simglucose.simulation.scenario_gen import RandomScenario

ALL_PATIENTS: tuple[str, ...] = tuple(
    f"{group}#{number:03d}" for group in ("adolescent", "adult", "child")
    for number in range(1, 11))
DEFAULT_PATIENT = "adult#001"

SENSOR_NAME = "Dexcom"
PUMP_NAME = "Insulet"
SAMPLE_PERIOD_MIN = 3
SAMPLE_PERIOD_S = 60.0 * SAMPLE_PERIOD_MIN
HOURS_PER_SAMPLE = SAMPLE_PERIOD_MIN / 60.0
EPISODE_START = datetime(2018, 1, 1, 0, 0)  # midnight: the scenario draws a day's meals

BG_LOW = 70.0  # mg/dL, hypoglycaemia; the CGM hard limit
BG_SEVERE_LOW = 54.0  # mg/dL, clinically significant hypoglycaemia (level 2)
BG_HIGH = 180.0  # mg/dL, top of the target range
BG_VERY_HIGH = 250.0
SETPOINT_MG_DL = 120.0

# simglucose's BBController: correction towards 140 mg/dL, only above 150 mg/dL
BB_TARGET_MG_DL = 140.0
BB_CORRECTION_ABOVE_MG_DL = 150.0

# Loop's "rapid-acting adult" exponential insulin model
INSULIN_PEAK_MIN = 75.0
INSULIN_DURATION_MIN = 360.0

# IOB limit (see the module docstring)
IOB_MEAL_G = 100.0
IOB_CORRECTION_FROM_MG_DL = 300.0
IOB_BASAL_HOURS = 3.0

UNANNOUNCED_SHARE = 0.5  # with unannounced=True, each meal is hidden with this probability


def _pump_limits() -> tuple[float, float]:
    pump = pd.read_csv(INSULIN_PUMP_PARA_FILE).set_index("Name").loc[PUMP_NAME]
    return float(pump["max_basal"]), float(pump["max_bolus"])


BASAL_MAX_U_PER_H, BOLUS_MAX_U = _pump_limits()
# no slew on a pump: the full range per sample (see the module docstring)
BASAL_RATE_PER_S = BASAL_MAX_U_PER_H / SAMPLE_PERIOD_S
BOLUS_RATE_PER_S = BOLUS_MAX_U / SAMPLE_PERIOD_S


# -- patients and their therapy settings --------------------------------------------------

@dataclass(frozen=True)
class Therapy:
    """A patient's pump settings, as simglucose's basal-bolus controller derives them."""

    patient: str
    basal_u_per_h: float
    carb_ratio_g_per_u: float
    correction_mg_dl_per_u: float
    total_daily_insulin_u: float


def check_patient(patient: str) -> str:
    if patient not in ALL_PATIENTS:
        raise ValueError(f"unknown patient '{patient}' (known: {ALL_PATIENTS[0]} ... "
                         f"{ALL_PATIENTS[-1]}, see glucose.ALL_PATIENTS)")
    return patient


@cache
def _patient_table() -> pd.DataFrame:
    return pd.read_csv(PATIENT_PARA_FILE).set_index("Name", drop=False)


@cache
def therapy(patient: str) -> Therapy:
    params = _patient_table().loc[check_patient(patient)]
    quest = pd.read_csv(CONTROL_QUEST).set_index("Name").loc[patient]
    return Therapy(
        patient=patient,
        basal_u_per_h=float(params["u2ss"] * params["BW"] / 6000.0 * 60.0),
        carb_ratio_g_per_u=float(quest["CR"]),
        correction_mg_dl_per_u=float(quest["CF"]),
        total_daily_insulin_u=float(quest["TDI"]),
    )


def _fast_params(patient: str) -> SimpleNamespace:
    """The patient's parameters as plain attributes.

    `T1DPatient.model` reads some 40 parameters per right-hand-side call; from a pandas
    Series that is most of the simulation time. The same float values as attributes give
    bit-identical trajectories about ten times faster. `iloc` and `Name` are all that
    `T1DPatient.reset` needs of the Series itself.
    """
    series = _patient_table().loc[patient]
    params = SimpleNamespace(**series.to_dict())
    params.iloc = series.iloc
    return params


# -- insulin on board ---------------------------------------------------------------------

def insulin_remaining(minutes: np.ndarray | float, peak_min: float = INSULIN_PEAK_MIN,
                      duration_min: float = INSULIN_DURATION_MIN) -> np.ndarray:
    """Fraction of a dose still active `minutes` after it (exponential model, LoopKit)."""
    t = np.asarray(minutes, dtype=float)
    tau = peak_min * (1 - peak_min / duration_min) / (1 - 2 * peak_min / duration_min)
    a = 2 * tau / duration_min
    s = 1 / (1 - a + (1 + a) * math.exp(-duration_min / tau))
    inside = 1 - s * (1 - a) * ((t ** 2 / (tau * duration_min * (1 - a)) - t / tau - 1)
                                * np.exp(-t / tau) + 1)
    return np.where(t <= 0, 1.0, np.where(t >= duration_min, 0.0, inside))


DIA_SAMPLES = int(INSULIN_DURATION_MIN // SAMPLE_PERIOD_MIN)
# remaining fraction of the doses of 1, 2, ..., DIA_SAMPLES samples ago
_REMAINING_BY_AGE = insulin_remaining(SAMPLE_PERIOD_MIN * np.arange(1, DIA_SAMPLES + 1))


def steady_basal_iob(basal_u_per_h: float) -> float:
    """IOB of a patient who has been on a constant basal for a whole insulin duration."""
    return float(basal_u_per_h * HOURS_PER_SAMPLE * _REMAINING_BY_AGE.sum())


class InsulinOnBoard:
    """IOB from the delivery history, one dose per sample (see the module docstring)."""

    def __init__(self, basal_u_per_h: float) -> None:
        dose = basal_u_per_h * HOURS_PER_SAMPLE
        self.doses: deque[float] = deque([dose] * DIA_SAMPLES, maxlen=DIA_SAMPLES)

    @property
    def units(self) -> float:
        """IOB now, before this sample's dose: doses[-1] was one sample ago."""
        return float(np.dot(_REMAINING_BY_AGE, np.fromiter(reversed(self.doses), float)))

    def deliver(self, dose_u: float) -> None:
        self.doses.append(float(dose_u))


MAX_BASAL_MULTIPLE = 10.0
"""The patient's max basal rate, a pump setting, in multiples of the scheduled basal (and
never above the pump's own maximum). The twin corrects highs with the basal, the wizard
giving every bolus: bounded only by the pump's 30 U/h, it gave child#001 a 14 U/h basal
at 170 mg/dL and held the child below 54 mg/dL for 24 % of a day (seed 17). Same twins,
seeds 7-19, time below 54 and TIR: children 4.8 % / 87 % unbounded, 0 / 92 % at 10x,
0 / 93 % at 6x and 4x; adolescents 100 % TIR unbounded, 98.3 at 10x, 96.9 at 6x,
96.6 at 4x; adults 99.3, 97.9, 96.6, 95.9 (no time below 54 in any)."""


def max_basal(patient: str) -> float:
    """The patient's max basal rate [U/h] (`MAX_BASAL_MULTIPLE`)."""
    return min(BASAL_MAX_U_PER_H, MAX_BASAL_MULTIPLE * therapy(patient).basal_u_per_h)


def iob_limit(patient: str) -> float:
    """The patient's hard IOB limit [U], rounded to 0.5 U (see the module docstring)."""
    th = therapy(patient)
    units = (IOB_MEAL_G / th.carb_ratio_g_per_u
             + (IOB_CORRECTION_FROM_MG_DL - BB_TARGET_MG_DL) / th.correction_mg_dl_per_u
             + IOB_BASAL_HOURS * th.basal_u_per_h + steady_basal_iob(th.basal_u_per_h))
    return round(2.0 * units) / 2.0


def enforce_iob_limit(basal_u_per_h: float, bolus_u: float, iob_u: float,
                      limit_u: float) -> tuple[float, float, list[SafetyEvent]]:
    """Cut this sample's insulin so IOB stays at or under `limit_u`; bolus goes first."""
    allowed = max(0.0, limit_u - iob_u)
    basal_dose = basal_u_per_h * HOURS_PER_SAMPLE
    if basal_dose + bolus_u <= allowed:
        return basal_u_per_h, bolus_u, []
    new_bolus = max(0.0, allowed - basal_dose)
    new_basal = min(basal_u_per_h, allowed / HOURS_PER_SAMPLE)
    message = (f"IOB {iob_u:.2f} U of limit {limit_u:.2f} U: basal {basal_u_per_h:.3g} -> "
               f"{new_basal:.3g} U/h, bolus {bolus_u:.3g} -> {new_bolus:.3g} U")
    return new_basal, new_bolus, [SafetyEvent(EventKind.IOB_LIMIT, message, "IOB")]


# -- tags ---------------------------------------------------------------------------------

def spec_for(patient: str = DEFAULT_PATIENT) -> ProcessSpec:
    """The glucose spec with this patient's IOB limit and nominal basal.

    One spec per patient because the IOB limit scales with the patient's insulin needs
    (a child's 5 U is an adult's 30 U); `SPEC` is the default patient's. Train a twin of
    another patient with `spec_for(patient)`.
    """
    th = therapy(patient)
    return ProcessSpec(
        name="glucose",
        description=f"Type-1 diabetes (UVA/Padova, simglucose), patient {patient}: CGM "
                    "under basal-bolus insulin; announced meals measured.",
        sample_period_s=SAMPLE_PERIOD_S,
        timestamp_column="time_s",
        tags=(
            Tag(name="CGM", role=TagRole.SENSOR, unit="mg/dL", low=BG_LOW, high=None,
                nominal=SETPOINT_MG_DL, controlled=True,
                description="continuous glucose monitor (Dexcom); hard low limit 70 mg/dL"),
            Tag(name="IOB", role=TagRole.SENSOR, unit="U", low=None, high=iob_limit(patient),
                nominal=steady_basal_iob(th.basal_u_per_h),
                description="insulin on board (exponential curve, 6 h); hard high limit"),
            Tag(name="basal", role=TagRole.ACTUATOR, unit="U/h", low=0.0,
                high=max_basal(patient), rate_limit=BASAL_RATE_PER_S,
                nominal=th.basal_u_per_h,
                description="pump basal rate, up to the patient's max basal setting"),
            Tag(name="bolus", role=TagRole.ACTUATOR, unit="U", low=0.0, high=BOLUS_MAX_U,
                rate_limit=BOLUS_RATE_PER_S, nominal=0.0, kind=ActuatorKind.DOSE,
                description="insulin bolus delivered during the sample"),
            Tag(name="CHO", role=TagRole.DISTURBANCE, unit="g/min", nominal=0.0,
                description="announced carbohydrate of the last sample"),
        ),
        # the log's boluses follow meals, not the state: bounding the twin's insulin by
        # them took the benchmark's children to 43 % TIR, 57 % above 180 (default cases);
        # and the twin learns from them that insulin raises glucose, so near a limit the
        # baseline's dose goes out, not the twin's (children: 25 -> 71 % TIR, seeds 7-19).
        # For the same reason the boluses are the bolus wizard's and the twin sets the
        # basal (hybrid closed loop): the twin's own boluses under-dosed the adolescent
        # (TIR 76 %, mean BG 157 mg/dL); the wizard's took it to 100 % and 141 mg/dL
        # (adolescent#001, same twin, seeds 7-19). Measured on the embedding distance
        # alone: the default tracking weight is not yet measured here.
        control=ControlWeights(policy="hybrid", baseline_actuators=("bolus",),
                               tracking_weight=0.0),
        # insulin lowers glucose; IOB counts the insulin delivered
        effects=tuple(Effect(actuator=a, sensor=s, sign=sign)
                      for a in ("basal", "bolus")
                      for s, sign in (("CGM", "negative"), ("IOB", "positive"))),
    )


SPEC = spec_for(DEFAULT_PATIENT)
VARIANTS = ALL_PATIENTS
"""A glucose twin is of one patient: `spec_for(patient)`, `variant_of(spec)`."""


def _settings(spec: ProcessSpec) -> tuple:
    """What sets one patient's spec apart: the limits and nominals of its tags."""
    return tuple((t.name, t.low, t.high, t.nominal, t.rate_limit) for t in spec.tags)


@cache
def _patients_by_settings() -> dict[tuple, str]:
    return {_settings(spec_for(patient)): patient for patient in ALL_PATIENTS}


def variant_of(spec: ProcessSpec) -> str | None:
    """The patient whose pump settings (IOB limit, basal, max basal) `spec` carries, None
    for a glucose spec of none of them. A twin's checkpoint holds the spec it was trained
    on, so a loop, a replay or the CLI finds the twin's own patient in it."""
    if spec.name != SPEC.name:
        return None
    return _patients_by_settings().get(_settings(spec))


# -- meals --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Meal:
    minute: int  # after the episode's start (midnight)
    carbs_g: float
    announced: bool = True


def meal_plan(hours: float, seed: int, unannounced: bool = False,
              unannounced_share: float = UNANNOUNCED_SHARE) -> tuple[Meal, ...]:
    """The meals of `hours` from simglucose's RandomScenario(seed), queried as its env does.

    With `unannounced`, each meal is eaten without an announcement (no CHO reading, no
    meal bolus) with probability `unannounced_share`, drawn from its own stream so the
    same seed gives the same meals either way.
    """
    scenario = RandomScenario(start_time=EPISODE_START, seed=seed)
    hidden = np.random.default_rng([seed, 1])
    meals = []
    for minute in range(int(math.ceil(hours * 60.0))):
        carbs = float(scenario.get_action(EPISODE_START + timedelta(minutes=minute)).meal)
        if carbs > 0:
            skip = unannounced and bool(hidden.random() < unannounced_share)
            meals.append(Meal(minute, carbs, announced=not skip))
    return tuple(meals)


# -- the plant ----------------------------------------------------------------------------

class GlucoseSimulator:
    """One virtual patient with a Dexcom CGM and an Insulet pump, one 3-min sample per step.

    Per sample, as simglucose's T1DSimEnv: the pump's basal and bolus rates are held for
    three one-minute patient steps; BG, CGM and the announced CHO are the means over
    those minutes. `bg` is the TRUE plasma glucose (scoring only, never a measurement).
    """

    def __init__(self, patient: str = DEFAULT_PATIENT, seed: int = 0,
                 meals: tuple[Meal, ...] = ()) -> None:
        self.therapy = therapy(check_patient(patient))
        self.patient = T1DPatient(_fast_params(patient))
        self.sensor = CGMSensor.withName(SENSOR_NAME, seed=seed)
        self.pump = InsulinPump.withName(PUMP_NAME)
        self.meals = {m.minute: m for m in meals}
        self.iob = InsulinOnBoard(self.therapy.basal_u_per_h)
        self.time_s = 0.0
        self.bg = float(self.patient.observation.Gsub)
        # the package env reads the sensor twice at reset: the same seed, the same noise
        self.sensor.measure(self.patient)
        self.cgm = float(self.sensor.measure(self.patient))
        self.cho_announced = 0.0
        self.cho_eaten = 0.0
        self.applied = {"basal": self.therapy.basal_u_per_h, "bolus": 0.0}

    def eat_now(self, carbs_g: float, announced: bool = True) -> None:
        """A meal outside the plan, starting this minute (the logging rig's hypo treatment)."""
        minute = int(round(self.patient.t))
        earlier = self.meals.get(minute)
        total = carbs_g + (earlier.carbs_g if earlier else 0.0)
        self.meals[minute] = Meal(minute, total, announced=announced)

    @property
    def patient_name(self) -> str:
        return self.therapy.patient

    def measure(self) -> dict[str, float]:
        return {"CGM": self.cgm, "IOB": self.iob.units, "CHO": self.cho_announced}

    def step(self, basal_u_per_h: float, bolus_u: float) -> dict[str, float]:
        """Deliver one sample's insulin (already within the pump's limits)."""
        basal_rate = self.pump.basal(basal_u_per_h / 60.0)  # U/min, the package's rounding
        bolus_rate = self.pump.bolus(bolus_u / SAMPLE_PERIOD_MIN)
        bg = cgm = announced = eaten = 0.0
        for _ in range(SAMPLE_PERIOD_MIN):
            meal = self.meals.get(int(round(self.patient.t)))
            carbs = meal.carbs_g if meal else 0.0
            self.patient.step(Action(CHO=carbs, insulin=basal_rate + bolus_rate))
            bg += self.patient.observation.Gsub / SAMPLE_PERIOD_MIN
            cgm += self.sensor.measure(self.patient) / SAMPLE_PERIOD_MIN
            eaten += carbs / SAMPLE_PERIOD_MIN
            announced += carbs / SAMPLE_PERIOD_MIN if meal and meal.announced else 0.0
        self.iob.deliver(basal_u_per_h * HOURS_PER_SAMPLE + bolus_u)
        self.applied = {"basal": float(basal_u_per_h), "bolus": float(bolus_u)}
        self.bg, self.cgm = float(bg), float(cgm)
        self.cho_announced, self.cho_eaten = float(announced), float(eaten)
        self.time_s += SAMPLE_PERIOD_S
        return self.measure()


def pump_guard(proposed: Mapping[str, float | None], previous: Mapping[str, float],
               iob_u: float, limit_u: float) -> tuple[dict[str, float], list[SafetyEvent]]:
    """What the pump delivers of a proposal: its bounds and rates, then the IOB limit.

    A missing or non-finite proposal holds the previous basal and gives no bolus.
    """
    events: list[SafetyEvent] = []
    values: dict[str, float] = {}
    bounds = {"basal": (BASAL_MAX_U_PER_H, BASAL_RATE_PER_S),
              "bolus": (BOLUS_MAX_U, BOLUS_RATE_PER_S)}
    for name, (high, rate_per_s) in bounds.items():
        raw = proposed.get(name)
        if raw is None or not math.isfinite(float(raw)):
            raw = previous[name] if name == "basal" else 0.0
            events.append(SafetyEvent(EventKind.INVALID_PROPOSAL, "missing or not finite; basal "
                                      "held, no bolus", name))
        value = rate_clip(float(raw), previous[name], rate_per_s * SAMPLE_PERIOD_S, 0.0, high)
        if value != float(raw):
            events.append(SafetyEvent(EventKind.CLIPPED_BOUNDS, f"{float(raw):.4g} -> {value:.4g}",
                                      name))
        values[name] = value
    basal, bolus, iob_events = enforce_iob_limit(values["basal"], values["bolus"], iob_u,
                                                 limit_u)
    return {"basal": basal, "bolus": bolus}, events + iob_events


# -- the basal-bolus baseline -------------------------------------------------------------

def basal_bolus(th: Therapy, cgm: float | None, cho_g_per_min: float | None) -> dict[str, float]:
    """simglucose's BBController: scheduled basal; at an announced meal, carbs/CR plus a
    correction (CGM - 140)/CF when CGM is above 150 (none without a CGM reading)."""
    bolus = 0.0
    if cho_g_per_min is not None and cho_g_per_min > 0:
        bolus = cho_g_per_min * SAMPLE_PERIOD_MIN / th.carb_ratio_g_per_u
        if cgm is not None and cgm > BB_CORRECTION_ABOVE_MG_DL:
            bolus += (cgm - BB_TARGET_MG_DL) / th.correction_mg_dl_per_u
    return {"basal": th.basal_u_per_h, "bolus": bolus}


def wizard_correction(th: Therapy, cgm: float, iob_u: float) -> float:
    """A bolus wizard's correction [U]: (CGM - 140)/CF less the net IOB (IOB above the
    basal's own steady state), never negative."""
    net_iob = max(0.0, iob_u - steady_basal_iob(th.basal_u_per_h))
    return max(0.0, (cgm - BB_TARGET_MG_DL) / th.correction_mg_dl_per_u - net_iob)


Policy = Callable[[GlucoseSimulator, float, dict[str, float], float], StepRecord]
"""(plant, time_s, measurements, CGM setpoint) -> the step's record with proposed insulin.

The episode runner passes the proposal through the pump (bounds, IOB limit) and records
what was delivered."""


def baseline_policy(patient: str | None = None) -> Policy:
    """Basal-bolus on the patient's own settings (the simulated patient's, by default)."""

    def act(sim: GlucoseSimulator, time_s: float, meas: dict[str, float],
            sp: float) -> StepRecord:
        start = time.perf_counter()
        th = therapy(patient) if patient else sim.therapy
        u = basal_bolus(th, meas.get("CGM"), meas.get("CHO"))
        return StepRecord(0, time_s, dict(meas), {"CGM": sp}, u,
                          solve_ms=(time.perf_counter() - start) * 1e3)

    return act


def oracle_policy() -> Policy | None:
    """None: no cheap, honest oracle for this plant (see the module docstring)."""
    return None


class BasalBolusFallback:
    """Basal-bolus as the twin controller's fallback, stateless and IOB-aware.

    Bumpless for insulin: the fallback keeps no state to wind up, and it counts the
    insulin the twin already delivered. Its correction bolus is reduced by the net IOB
    (IOB above the basal's own steady state), as a pump's bolus wizard does, so a handover
    never stacks a correction on the twin's insulin; the meal part is always given. The
    basal returns to the scheduled rate at once, as a cancelled temp basal does. Without
    a CGM reading there is no correction; without IOB the correction is skipped too.
    """

    def __init__(self, patient: str = DEFAULT_PATIENT) -> None:
        self.bind(patient)

    def bind(self, patient: str) -> None:
        """Use this patient's pump settings (a pump holds its own patient's)."""
        self.therapy = therapy(patient)

    def __call__(self, meas: Mapping[str, float | None], setpoints: Mapping[str, float],
                 applied: Mapping[str, float]) -> dict[str, float]:
        cgm, iob = meas.get("CGM"), meas.get("IOB")
        meal = basal_bolus(self.therapy, None, meas.get("CHO"))["bolus"]
        correction = 0.0
        if meal > 0 and cgm is not None and iob is not None \
                and cgm > BB_CORRECTION_ABOVE_MG_DL:
            correction = wizard_correction(self.therapy, float(cgm), float(iob))
        return {"basal": self.therapy.basal_u_per_h, "bolus": meal + correction}


def baseline_fallback(patient: str = DEFAULT_PATIENT) -> Fallback:
    """The basal-bolus fallback; `twin_policy` rebinds it to the simulated patient."""
    return BasalBolusFallback(patient)


def twin_policy(controller: Controller) -> Policy:
    """The twin's MPC. The pump reports what it really delivered, so the controller's rate
    limits and context window follow the insulin after the IOB limit, not its plan; a
    basal-bolus fallback is bound to the simulated patient's own settings."""

    def act(sim: GlucoseSimulator, time_s: float, meas: dict[str, float],
            sp: float) -> StepRecord:
        fallback = controller.fallback
        if isinstance(fallback, BasalBolusFallback) and \
                fallback.therapy.patient != sim.patient_name:
            fallback.bind(sim.patient_name)
        return controller.step(time_s, {**meas, **sim.applied}, {"CGM": sp})

    return act


# -- excitation data ----------------------------------------------------------------------

SUSPEND_BELOW_MG_DL = 90.0  # the logging rig's predictive low-glucose suspend
SUSPEND_PREDICTED_MG_DL = 80.0
SUSPEND_LOOKAHEAD_SAMPLES = 10  # 30 min
TREND_SAMPLES = 5  # 15 min of CGM for the trend
CORRECT_ABOVE_MG_DL = 180.0  # the patient's own correction boluses between meals
CORRECT_AFTER_SAMPLES = 40  # 2 h after the last bolus
RESCUE_BELOW_MG_DL = 70.0  # the rule of 15: 15 g of fast carbs, again after 15 min
RESCUE_CARBS_G = 15.0
RESCUE_EVERY_SAMPLES = 5
MEAL_BOLUS_SHARE = (0.4, 1.1)  # of the carb count's bolus: counting error, and choice
PROBE_CHANCE = 1.0 / 15.0  # per sample where a probe bolus may go
PROBE_CLEAR_OF_MEALS_MIN = 60  # no probe within 60 min of a meal, before or after
PROBE_ABOVE_MG_DL = 150.0  # probes only from here up, never on a falling CGM
PROBE_FLOOR_MG_DL = 130.0  # a probe may bring CGM (by the correction factor) this low


def _low_glucose_suspend(cgm_history: deque[float]) -> bool:
    """Predictive low-glucose suspend, as SmartGuard-type pumps: basal stops when CGM is
    low or its 15-min trend projects it below 80 mg/dL within 30 min."""
    cgm = cgm_history[-1]
    slope = (cgm - cgm_history[0]) / max(1, len(cgm_history) - 1)
    projected = cgm + SUSPEND_LOOKAHEAD_SAMPLES * slope
    return cgm < SUSPEND_BELOW_MG_DL or projected < SUSPEND_PREDICTED_MG_DL


@dataclass
class _Excitation:
    """The random parts of the logging run, drawn up front from the seed."""

    basal_factor: np.ndarray
    dither: np.ndarray
    carb_error: np.ndarray
    correction_share: np.ndarray
    probe: np.ndarray  # a probe bolus may go at this sample
    probe_share: np.ndarray  # of the largest safe probe

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int) -> _Excitation:
        return cls(basal_factor=aprbs_levels(rng, n, 0.3, 2.0, 10, 40),
                   dither=rng.normal(0.0, 0.1, n),
                   carb_error=rng.uniform(*MEAL_BOLUS_SHARE, n),
                   correction_share=rng.uniform(0.3, 1.0, n),
                   probe=rng.random(n) < PROBE_CHANCE,
                   probe_share=rng.uniform(0.3, 1.0, n))


class _LoggingRig:
    """The patient and the pump while the excitation log is recorded, one sample a call."""

    def __init__(self, th: Therapy, excitation: _Excitation, meals: tuple[Meal, ...]) -> None:
        self.th, self.ex = th, excitation
        # samples at which a probe bolus would lie within PROBE_CLEAR_OF_MEALS_MIN of a meal
        self.near_meal = {(m.minute + d) // SAMPLE_PERIOD_MIN for m in meals
                          for d in range(-PROBE_CLEAR_OF_MEALS_MIN, PROBE_CLEAR_OF_MEALS_MIN + 1)}
        self.cgm_history: deque[float] = deque(maxlen=TREND_SAMPLES)
        self.since_bolus = CORRECT_AFTER_SAMPLES
        self.since_rescue = RESCUE_EVERY_SAMPLES
        self.rescue_g_per_min = 0.0  # a hypo treatment shows in the next sample's CHO

    def propose(self, k: int, meas: dict[str, float]) -> dict[str, float]:
        self.cgm_history.append(meas["CGM"])
        suspend = _low_glucose_suspend(self.cgm_history)
        th, ex, cgm = self.th, self.ex, meas["CGM"]
        meal = max(0.0, meas["CHO"] - self.rescue_g_per_min)  # no bolus for a treatment
        bolus = 0.0
        if meal > 0:
            bolus = basal_bolus(th, None, meal)["bolus"] * ex.carb_error[k]
            if cgm > BB_CORRECTION_ABOVE_MG_DL:
                bolus += wizard_correction(th, cgm, meas["IOB"])
        elif self.since_bolus >= CORRECT_AFTER_SAMPLES and cgm > CORRECT_ABOVE_MG_DL \
                and not suspend:
            bolus = ex.correction_share[k] * wizard_correction(th, cgm, meas["IOB"])
        elif ex.probe[k] and k not in self.near_meal and not suspend:
            bolus = ex.probe_share[k] * self._largest_probe(cgm, meas["IOB"])
        basal = 0.0 if suspend else th.basal_u_per_h * (ex.basal_factor[k] + ex.dither[k])
        return {"basal": min(basal, max_basal(th.patient)), "bolus": bolus}

    def _largest_probe(self, cgm: float, iob_u: float) -> float:
        """The largest probe bolus [U] that the correction factor says leaves CGM at or
        above PROBE_FLOOR_MG_DL, net IOB counted; none below PROBE_ABOVE_MG_DL or on a
        falling CGM."""
        falling = self.cgm_history[-1] < self.cgm_history[0]
        if cgm < PROBE_ABOVE_MG_DL or falling:
            return 0.0
        net_iob = max(0.0, iob_u - steady_basal_iob(self.th.basal_u_per_h))
        return max(0.0, (cgm - PROBE_FLOOR_MG_DL) / self.th.correction_mg_dl_per_u - net_iob)

    def treat_and_count(self, sim: GlucoseSimulator, meas: dict[str, float],
                        applied: dict[str, float]) -> None:
        """Book the delivered bolus; eat 15 g now if CGM is low (rule of 15)."""
        self.since_bolus = 0 if applied["bolus"] > 0 else self.since_bolus + 1
        self.rescue_g_per_min = 0.0
        if meas["CGM"] < RESCUE_BELOW_MG_DL and self.since_rescue >= RESCUE_EVERY_SAMPLES:
            sim.eat_now(RESCUE_CARBS_G)
            self.since_rescue, self.rescue_g_per_min = 0, RESCUE_CARBS_G / SAMPLE_PERIOD_MIN
        self.since_rescue += 1


def generate_training_log(hours: float, seed: int, show_progress: bool = False,
                          patient: str = DEFAULT_PATIENT) -> pd.DataFrame:
    """Excitation data: basal-bolus in closed loop, APRBS basal steps and dither, random meals.

    The basal is the scheduled rate times an APRBS factor in [0.3, 2.0] held 30 min to
    2 h, plus a 10 % dither. Meal boluses are 40-110 % of the carb count's (counting
    error, and the patient's choice: the same meal comes with different insulin), and the
    patient corrects a CGM above 180 mg/dL two hours after the last bolus with 30-100 %
    of a bolus wizard's dose: bolus size is then no copy of the announced CHO, and insulin
    also comes without a meal (else the twin could not tell their effects apart); meal
    corrections are the wizard's too (net IOB subtracted), so corrections do not stack.
    Meals: simglucose's RandomScenario(seed), one in ten unannounced.

    Probe boluses move insulin independently of meals: at random samples at least 60 min
    from any meal, a bolus of 30-100 % of the largest that the correction factor says
    leaves CGM at 130 mg/dL or above (net IOB counted), given only at a CGM of 150 mg/dL
    or more that is not falling and with the basal not suspended. Without them and the
    spread of meal boluses, nearly every unit of bolus came with carbohydrate in a fixed
    ratio, and twins learnt that insulin raises glucose. 120 h, seed 1: bolus-CHO
    correlation 0.95 / 0.92 / 0.60 -> 0.89 / 0.76 / 0.71 (adolescent#001, adult#001,
    child#001), off-meal bolus units 7 / 15 / 16 -> 11 / 41 / 17, samples below 70 mg/dL
    0 / 18 / 97 -> 0 / 24 / 83, below 54 0 / 0 / 12 -> 0 / 0 / 3.

    Safety, as on a real logging pump: every dose passes the pump's bounds and the IOB
    limit; a predictive low-glucose suspend stops the basal when a low approaches, and
    a CGM below 70 is treated with 15 g of carbohydrate (logged in CHO, not bolused for),
    again every 15 min while it stays low.
    """
    rng = np.random.default_rng(seed)
    th = therapy(check_patient(patient))
    limit = iob_limit(patient)
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    meals = meal_plan(hours, seed, unannounced=True, unannounced_share=0.1)
    sim = GlucoseSimulator(patient, seed + 10_000, meals)
    rig = _LoggingRig(th, _Excitation.draw(rng, n), meals)
    rows: list[dict[str, float]] = []
    for k in track(range(n), description=f"simulating {patient}", disable=not show_progress):
        meas = sim.measure()
        applied, _ = pump_guard(rig.propose(k, meas), sim.applied, meas["IOB"], limit)
        rig.treat_and_count(sim, meas, applied)
        rows.append({"time_s": sim.time_s, **meas, **applied})
        sim.step(applied["basal"], applied["bolus"])
    return pd.DataFrame(rows, columns=["time_s", "CGM", "IOB", "basal", "bolus", "CHO"])


# -- closed-loop episodes -----------------------------------------------------------------

def _deliver(record: StepRecord, sim: GlucoseSimulator, meas: dict[str, float], step: int,
             limit_u: float) -> None:
    """Pass the policy's proposal through the pump, record what it delivered, step on."""
    applied, events = pump_guard(record.actuators, sim.applied, meas["IOB"], limit_u)
    record.step = step
    record.actuators = applied
    record.events = list(record.events) + events
    record.margins = {"CGM": meas["CGM"] - BG_LOW, "IOB": limit_u - meas["IOB"]}
    sim.step(applied["basal"], applied["bolus"])


def run_episode(policy: Policy, controller_name: str, seed: int = 7,
                config: dict[str, Any] | None = None, show_progress: bool = False,
                patient: str = DEFAULT_PATIENT, hours: float = 24.0,
                unannounced: bool = False, setpoint: float = SETPOINT_MG_DL,
                unannounced_share: float = UNANNOUNCED_SHARE) -> EpisodeResult:
    """One patient from midnight for `hours`, scored on true plasma glucose.

    `seed` draws the meals (RandomScenario) and the CGM noise; with `unannounced`, each
    meal goes unannounced with probability `unannounced_share`. Every proposal passes
    the pump's bounds and the patient's IOB limit before it is delivered.
    """
    limit = iob_limit(check_patient(patient))
    meals = meal_plan(hours, seed, unannounced, unannounced_share)
    sim = GlucoseSimulator(patient, seed, meals)
    steps: list[StepRecord] = []
    true_bg = [sim.bg]
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    for k in track(range(n), description=f"closed loop ({controller_name}, {patient})",
                   disable=not show_progress):
        meas = sim.measure()
        record = policy(sim, sim.time_s, meas, setpoint)
        _deliver(record, sim, meas, k, limit)
        true_bg.append(sim.bg)
        steps.append(record)
    metrics = episode_metrics(np.array(true_bg), steps)
    metrics["max_iob_u"] = max((limit - s.margins["IOB"] for s in steps), default=0.0)
    episode_config = {"patient": patient, "hours": hours, "unannounced": unannounced,
                      "setpoint": setpoint, "seed": seed, "iob_limit_u": limit,
                      "meals": [asdict(m) for m in meals], **(config or {})}
    if unannounced:
        episode_config["unannounced_share"] = unannounced_share
    return EpisodeResult("glucose", controller_name, episode_config, steps, metrics)


RISK_BG_RANGE = (20.0, 600.0)  # mg/dL, the meter range Kovatchev's transform was built on


def risk_indices(bg: np.ndarray) -> tuple[float, float]:
    """Kovatchev's LBGI and HBGI: simglucose's per-reading risk, averaged over ALL readings.

    (`risk_index` over a whole array averages the low risk over the low readings only.)
    BG is clipped to 20-600 mg/dL first: below 1 mg/dL the log transform turns negative
    and simglucose would score the deepest hypoglycaemia as no risk at all.
    """
    clipped = np.clip(bg, *RISK_BG_RANGE)
    per_reading = np.array([risk_index([value], 1)[:2] for value in clipped])
    return float(per_reading[:, 0].mean()), float(per_reading[:, 1].mean())


def episode_metrics(true_bg: np.ndarray, steps: list[StepRecord]) -> dict[str, float]:
    """Glycaemic outcome on true BG; cost = LBGI + HBGI (the BG risk index)."""
    lbgi, hbgi = risk_indices(true_bg)
    low = true_bg < BG_LOW
    insulin = [(s.actuators["basal"] * HOURS_PER_SAMPLE, s.actuators["bolus"]) for s in steps]
    basal_u, bolus_u = (np.array(insulin).sum(axis=0) if insulin else (0.0, 0.0))
    return {
        "cost": lbgi + hbgi,
        "violations": int(low.sum()),
        "worst_violation": float(max(0.0, BG_LOW - true_bg.min())),
        "tir_pct": float(100.0 * ((true_bg >= BG_LOW) & (true_bg <= BG_HIGH)).mean()),
        "below_70_pct": float(100.0 * low.mean()),
        "below_54_pct": float(100.0 * (true_bg < BG_SEVERE_LOW).mean()),
        "above_180_pct": float(100.0 * (true_bg > BG_HIGH).mean()),
        "above_250_pct": float(100.0 * (true_bg > BG_VERY_HIGH).mean()),
        "lbgi": lbgi,
        "hbgi": hbgi,
        "mean_bg": float(true_bg.mean()),
        "min_bg": float(true_bg.min()),
        "max_bg": float(true_bg.max()),
        "cv_pct": float(100.0 * true_bg.std() / true_bg.mean()),
        "total_basal_u": float(basal_u),
        "total_bolus_u": float(bolus_u),
        "iob_limited_steps": int(sum(any(e.kind == "iob_limit" for e in s.events)
                                     for s in steps)),
        **plan_time_metrics(steps),
    }


# -- the process contract (processes.base.ProcessModule) ---------------------------------

BENCHMARK_CASES: tuple[dict[str, Any], ...] = (
    {"patient": "adolescent#001"},
    {"patient": "adult#001"},
    {"patient": "child#001"},
    {"patient": "adult#001", "unannounced": True},
)

TRAINING_CASE_KEYS = ("patient",)
"""A twin learns one patient: benchmarks train one per patient in their cases."""

ALL_CASES: tuple[dict[str, Any], ...] = tuple({"patient": p} for p in ALL_PATIENTS)
"""Every virtual patient, announced meals (benchmarks: --cases all)."""


def case_group(case: Mapping[str, Any]) -> str:
    """The benchmark's reporting group of a case: the patient's age group, with
    unannounced-meal cases apart (their targets differ)."""
    age = str(case.get("patient", DEFAULT_PATIENT)).split("#")[0]
    group = {"child": "children"}.get(age, f"{age}s")
    return f"{group}, unannounced meals" if case.get("unannounced") else group


EPISODE_SUMMARY = (
    SummaryRow("cost", "risk index LBGI+HBGI"),
    SummaryRow("tir_pct", "time in range 70-180", "%", ".1f"),
    SummaryRow("below_70_pct", "time below 70", "%", ".1f"),
    SummaryRow("below_54_pct", "time below 54", "%", ".1f"),
    SummaryRow("above_180_pct", "time above 180", "%", ".1f"),
    SummaryRow("mean_bg", "mean BG", "mg/dL", ".1f"),
    SummaryRow("lbgi", "LBGI"),
    SummaryRow("hbgi", "HBGI"),
    SummaryRow("violations", "true BG samples below 70", "", "d"),
    SummaryRow("iob_limited_steps", "steps cut by the IOB limit", "", "d"),
    *CONTROLLER_ROWS,
)

# 15 days: as many samples as the CSTR recipe (7200), some 55 meals
# The default twin (one-layer predictor): with two layers and rollout readout weight 25, as
# the CSTR and turbofan take, the children's loop went from cost 2.71, no time below
# 54 mg/dL, to 15.3 and 13 % below 54 (benchmarks/control.py, seeds 7-19).
TRAINING_RECIPE = TrainingRecipe(hours=360.0, epochs=20, max_minutes=4.5)
