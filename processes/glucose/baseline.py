"""Glucose baseline: simglucose's basal-bolus controller with the bolus wizard's correction."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from twin.records import StepRecord
from twin.safety import Fallback

from ..base import (
    Controller,
)
from .plant import GlucoseSimulator
from .therapy import (
    BB_CORRECTION_ABOVE_MG_DL,
    BB_TARGET_MG_DL,
    DEFAULT_PATIENT,
    SAMPLE_PERIOD_MIN,
    Therapy,
    steady_basal_iob,
    therapy,
)

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

    def act(sim: GlucoseSimulator, time_s: float, meas: dict[str, float], sp: float) -> StepRecord:
        start = time.perf_counter()
        th = therapy(patient) if patient else sim.therapy
        u = basal_bolus(th, meas.get("CGM"), meas.get("CHO"))
        return StepRecord(
            0, time_s, dict(meas), {"CGM": sp}, u, solve_ms=(time.perf_counter() - start) * 1e3
        )

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

    def __call__(
        self,
        meas: Mapping[str, float | None],
        setpoints: Mapping[str, float],
        applied: Mapping[str, float],
    ) -> dict[str, float]:
        cgm, iob = meas.get("CGM"), meas.get("IOB")
        meal = basal_bolus(self.therapy, None, meas.get("CHO"))["bolus"]
        correction = 0.0
        if meal > 0 and cgm is not None and iob is not None and cgm > BB_CORRECTION_ABOVE_MG_DL:
            correction = wizard_correction(self.therapy, float(cgm), float(iob))
        return {"basal": self.therapy.basal_u_per_h, "bolus": meal + correction}


def baseline_fallback(patient: str = DEFAULT_PATIENT) -> Fallback:
    """The basal-bolus fallback; `twin_policy` rebinds it to the simulated patient."""
    return BasalBolusFallback(patient)


def twin_policy(controller: Controller) -> Policy:
    """The twin's MPC. The pump reports what it really delivered, so the controller's rate
    limits and context window follow the insulin after the IOB limit, not its plan; a
    basal-bolus fallback is bound to the simulated patient's own settings."""

    def act(sim: GlucoseSimulator, time_s: float, meas: dict[str, float], sp: float) -> StepRecord:
        fallback = controller.fallback
        if (
            isinstance(fallback, BasalBolusFallback)
            and fallback.therapy.patient != sim.patient_name
        ):
            fallback.bind(sim.patient_name)
        return controller.step(time_s, {**meas, **sim.applied}, {"CGM": sp})

    return act
