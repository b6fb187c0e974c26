"""Turbofan baseline: PI thrust control with min/max-select limit protection (FADEC)."""

from __future__ import annotations

from collections.abc import Mapping

from ..base import (
    rate_clip,
)
from .gas_path import (
    NC_MAX_RPM,
    NF_MAX_RPM,
    PHI_MIN,
    RATE_PER_SAMPLE,
    SAMPLE_PERIOD_S,
    SM_MIN_PCT,
    T50_MAX_K,
    WF_HIGH,
    WF_LOW,
)

# -- baseline: PI thrust control with min/max-select limit protection -------------------------

FN_KP = 0.015  # (kg/s) per kN
FN_TI_S = 1.5
SM_CONTROL_PCT = SM_MIN_PCT + 3.0  # the regulators aim inside the hard limits (noise, drift)
T50_CONTROL_K = T50_MAX_K - 12.0
NF_CONTROL_RPM = NF_MAX_RPM - 40.0
NC_CONTROL_RPM = NC_MAX_RPM - 60.0
PHI_CONTROL = PHI_MIN + 0.03
SM_PER_LOG_FUEL = 35.0  # % surge margin lost per unit relative fuel step (d SM / d ln Wf)
T50_PER_LOG_FUEL = 280.0  # K of T50 per unit relative fuel step
# overspeed regulators, velocity-form PI: fuel step = kp dt/Ti (margin - Ti dN/dt), so Ti
# is a lead over the spool lag and kp dt/Ti ~ 0.3 / (steady rpm per kg/s): far from the
# limit they propose more than the rate limit allows and never bind
SPEED_KP = {"Nf": 1.5e-3, "Nc": 4e-4}  # (kg/s) per rpm
SPEED_TI_S = {"Nf": 1.5, "Nc": 0.8}


class FuelControl:
    """An engine control law (Jaw & Mattingly ch. 4): a velocity-form PI on thrust proposes a
    fuel move; limit regulators for surge margin and T50 (relative fuel steps sized by the
    fuel sensitivities) and PI regulators for fan and core overspeed propose theirs; the
    smallest wins (min-select), then the lean blow-out floor phi_min * Ps30 (max-select),
    the metering valve's rate limit and its bounds. Every regulator works from the applied
    fuel, so whichever is selected the others stay bumpless. `protect=False` leaves the bare
    PI, to show what the limits are for.
    """

    def __init__(self, protect: bool = True) -> None:
        self.protect = protect
        self.previous_errors: dict[str, float] = {}

    def reset(self) -> None:
        self.previous_errors = {}

    def _pi_move(self, name: str, error: float, kp: float, ti_s: float) -> float:
        previous = self.previous_errors.get(name, error)
        self.previous_errors[name] = error
        return kp * (error - previous) + kp * SAMPLE_PERIOD_S / ti_s * error

    def _ceilings(self, meas: Mapping[str, float | None], applied: float) -> list[float]:
        ceilings = []
        sm, t50 = meas.get("SM_hpc"), meas.get("T50")
        # a missing limit sensor allows no increase: the protection must not go blind
        ceilings.append(
            applied
            if sm is None
            else applied * max(0.5, 1.0 + 0.8 * (float(sm) - SM_CONTROL_PCT) / SM_PER_LOG_FUEL)
        )
        ceilings.append(
            applied
            if t50 is None
            else applied * max(0.5, 1.0 + 0.8 * (T50_CONTROL_K - float(t50)) / T50_PER_LOG_FUEL)
        )
        for tag, limit in (("Nf", NF_CONTROL_RPM), ("Nc", NC_CONTROL_RPM)):
            speed = meas.get(tag)
            if speed is None:
                ceilings.append(applied)
                self.previous_errors.pop(tag, None)
            else:
                ceilings.append(
                    applied
                    + self._pi_move(tag, limit - float(speed), SPEED_KP[tag], SPEED_TI_S[tag])
                )
        return ceilings

    def __call__(
        self, meas: Mapping[str, float | None], thrust_demand: float | None, applied: float
    ) -> float:
        thrust = meas.get("Fn")
        if thrust is None or thrust_demand is None:
            self.previous_errors.pop("Fn", None)
            return self.protect_fuel(meas, applied, applied)
        move = self._pi_move("Fn", thrust_demand - float(thrust), FN_KP, FN_TI_S)
        return self.protect_fuel(meas, applied + move, applied)

    def protect_fuel(
        self, meas: Mapping[str, float | None], demand: float, applied: float
    ) -> float:
        """A fuel demand through the limit selection, the rate limit and the bounds."""
        if self.protect:
            demand = min(demand, *self._ceilings(meas, applied))
            ps30 = meas.get("Ps30")
            if ps30 is not None:
                demand = max(demand, PHI_CONTROL * float(ps30) / 1e3)
        return rate_clip(demand, applied, RATE_PER_SAMPLE, WF_LOW, WF_HIGH)
