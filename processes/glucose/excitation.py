"""Glucose excitation data: the logging rig's patient-like dosing for training the twin."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import pandas as pd
from rich.progress import track

from ..base import (
    aprbs_levels,
)
from .baseline import basal_bolus, wizard_correction
from .plant import GlucoseSimulator, Meal, meal_plan, pump_guard
from .therapy import (
    BB_CORRECTION_ABOVE_MG_DL,
    DEFAULT_PATIENT,
    SAMPLE_PERIOD_MIN,
    SAMPLE_PERIOD_S,
    Therapy,
    check_patient,
    iob_limit,
    max_basal,
    steady_basal_iob,
    therapy,
)

# -- excitation data ----------------------------------------------------------------------

# The logging rig's predictive low-glucose suspend acts at a level drawn from this range
# (held 30 min to 2 h): fixed at 90 mg/dL it made every sample below 90 one without basal,
# so whether insulin flowed near a low was a function of glucose alone. Twins of
# adolescent#005 and #010, child#001 and #004 (seeds 7 and 11, one twin each): mean TIR
# 82.4 -> 88.9 %, below 54 mg/dL 7.6 -> 0.5 %. Drawing from 85-110 instead, or keeping
# 0-50 % of the basal while suspended, did worse (docs/benchmarks.md).
SUSPEND_BELOW_MG_DL = (75.0, 110.0)
SUSPEND_PROJECTION_MARGIN_MG_DL = 10.0  # the 30-min projection trips this far lower
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


def _low_glucose_suspend(cgm_history: deque[float], below_mg_dl: float) -> bool:
    """Predictive low-glucose suspend, as SmartGuard-type pumps: basal stops when CGM is
    below `below_mg_dl` or its 15-min trend projects it below that less
    `SUSPEND_PROJECTION_MARGIN_MG_DL` within 30 min."""
    cgm = cgm_history[-1]
    slope = (cgm - cgm_history[0]) / max(1, len(cgm_history) - 1)
    projected = cgm + SUSPEND_LOOKAHEAD_SAMPLES * slope
    return cgm < below_mg_dl or projected < below_mg_dl - SUSPEND_PROJECTION_MARGIN_MG_DL


@dataclass
class _Excitation:
    """The random parts of the logging run, drawn up front from the seed."""

    basal_factor: np.ndarray
    dither: np.ndarray
    carb_error: np.ndarray
    correction_share: np.ndarray
    probe: np.ndarray  # a probe bolus may go at this sample
    probe_share: np.ndarray  # of the largest safe probe
    suspend_below: np.ndarray  # mg/dL, the suspend's level

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int) -> _Excitation:
        return cls(
            basal_factor=aprbs_levels(rng, n, 0.3, 2.0, 10, 40),
            dither=rng.normal(0.0, 0.1, n),
            carb_error=rng.uniform(*MEAL_BOLUS_SHARE, n),
            correction_share=rng.uniform(0.3, 1.0, n),
            probe=rng.random(n) < PROBE_CHANCE,
            probe_share=rng.uniform(0.3, 1.0, n),
            suspend_below=aprbs_levels(rng, n, *SUSPEND_BELOW_MG_DL, 10, 40),
        )


class _LoggingRig:
    """The patient and the pump while the excitation log is recorded, one sample a call."""

    def __init__(self, th: Therapy, excitation: _Excitation, meals: tuple[Meal, ...]) -> None:
        self.th, self.ex = th, excitation
        # samples at which a probe bolus would lie within PROBE_CLEAR_OF_MEALS_MIN of a meal
        self.near_meal = {
            (m.minute + d) // SAMPLE_PERIOD_MIN
            for m in meals
            for d in range(-PROBE_CLEAR_OF_MEALS_MIN, PROBE_CLEAR_OF_MEALS_MIN + 1)
        }
        self.cgm_history: deque[float] = deque(maxlen=TREND_SAMPLES)
        self.since_bolus = CORRECT_AFTER_SAMPLES
        self.since_rescue = RESCUE_EVERY_SAMPLES
        self.rescue_g_per_min = 0.0  # a hypo treatment shows in the next sample's CHO

    def propose(self, k: int, meas: dict[str, float]) -> dict[str, float]:
        self.cgm_history.append(meas["CGM"])
        th, ex, cgm = self.th, self.ex, meas["CGM"]
        suspend = _low_glucose_suspend(self.cgm_history, ex.suspend_below[k])
        meal = max(0.0, meas["CHO"] - self.rescue_g_per_min)  # no bolus for a treatment
        bolus = 0.0
        if meal > 0:
            bolus = basal_bolus(th, None, meal)["bolus"] * ex.carb_error[k]
            if cgm > BB_CORRECTION_ABOVE_MG_DL:
                bolus += wizard_correction(th, cgm, meas["IOB"])
        elif (
            self.since_bolus >= CORRECT_AFTER_SAMPLES and cgm > CORRECT_ABOVE_MG_DL and not suspend
        ):
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

    def treat_and_count(
        self, sim: GlucoseSimulator, meas: dict[str, float], applied: dict[str, float]
    ) -> None:
        """Book the delivered bolus; eat 15 g now if CGM is low (rule of 15)."""
        self.since_bolus = 0 if applied["bolus"] > 0 else self.since_bolus + 1
        self.rescue_g_per_min = 0.0
        if meas["CGM"] < RESCUE_BELOW_MG_DL and self.since_rescue >= RESCUE_EVERY_SAMPLES:
            sim.eat_now(RESCUE_CARBS_G)
            self.since_rescue, self.rescue_g_per_min = 0, RESCUE_CARBS_G / SAMPLE_PERIOD_MIN
        self.since_rescue += 1


def generate_training_log(
    hours: float, seed: int, show_progress: bool = False, patient: str = DEFAULT_PATIENT
) -> pd.DataFrame:
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
