"""Glucose process constants, the virtual patients' therapy settings, insulin on board and
the pump's limits."""

from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from types import SimpleNamespace

import numpy as np
import pandas as pd

from twin.records import EventKind, SafetyEvent

with warnings.catch_warnings():  # simglucose imports pkg_resources, deprecated upstream
    warnings.simplefilter("ignore")
    from simglucose.actuator.pump import INSULIN_PUMP_PARA_FILE
    from simglucose.controller.basal_bolus_ctrller import CONTROL_QUEST
    from simglucose.patient.t1dpatient import PATIENT_PARA_FILE


ALL_PATIENTS: tuple[str, ...] = tuple(
    f"{group}#{number:03d}" for group in ("adolescent", "adult", "child") for number in range(1, 11)
)
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
        raise ValueError(
            f"unknown patient '{patient}' (known: {ALL_PATIENTS[0]} ... "
            f"{ALL_PATIENTS[-1]}, see glucose.ALL_PATIENTS)"
        )
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


def insulin_remaining(
    minutes: np.ndarray | float,
    peak_min: float = INSULIN_PEAK_MIN,
    duration_min: float = INSULIN_DURATION_MIN,
) -> np.ndarray:
    """Fraction of a dose still active `minutes` after it (exponential model, LoopKit)."""
    t = np.asarray(minutes, dtype=float)
    tau = peak_min * (1 - peak_min / duration_min) / (1 - 2 * peak_min / duration_min)
    a = 2 * tau / duration_min
    s = 1 / (1 - a + (1 + a) * math.exp(-duration_min / tau))
    inside = 1 - s * (1 - a) * (
        (t**2 / (tau * duration_min * (1 - a)) - t / tau - 1) * np.exp(-t / tau) + 1
    )
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
    units = (
        IOB_MEAL_G / th.carb_ratio_g_per_u
        + (IOB_CORRECTION_FROM_MG_DL - BB_TARGET_MG_DL) / th.correction_mg_dl_per_u
        + IOB_BASAL_HOURS * th.basal_u_per_h
        + steady_basal_iob(th.basal_u_per_h)
    )
    return round(2.0 * units) / 2.0


def enforce_iob_limit(
    basal_u_per_h: float, bolus_u: float, iob_u: float, limit_u: float
) -> tuple[float, float, list[SafetyEvent]]:
    """Cut this sample's insulin so IOB stays at or under `limit_u`; bolus goes first."""
    allowed = max(0.0, limit_u - iob_u)
    basal_dose = basal_u_per_h * HOURS_PER_SAMPLE
    if basal_dose + bolus_u <= allowed:
        return basal_u_per_h, bolus_u, []
    new_bolus = max(0.0, allowed - basal_dose)
    new_basal = min(basal_u_per_h, allowed / HOURS_PER_SAMPLE)
    message = (
        f"IOB {iob_u:.2f} U of limit {limit_u:.2f} U: basal {basal_u_per_h:.3g} -> "
        f"{new_basal:.3g} U/h, bolus {bolus_u:.3g} -> {new_bolus:.3g} U"
    )
    return new_basal, new_bolus, [SafetyEvent(EventKind.IOB_LIMIT, message, "IOB")]
