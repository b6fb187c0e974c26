"""Turbofan tag spec, limits, sensor noise and the simulator."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from twin.effects import Effect
from twin.spec import ControlWeights, ProcessSpec, Tag, TagRole

from .gas_path import (
    NC_MAX_RPM,
    NF_MAX_RPM,
    PHI_MIN,
    SAMPLE_PERIOD_S,
    SM_MIN_PCT,
    T50_MAX_K,
    WF_HIGH,
    WF_LOW,
    WF_RATE_KG_PER_S2,
    Flight,
    health_at,
    rk4_step,
    sensors,
    steady_state,
)

# -- the tag spec -----------------------------------------------------------------------------

SPEC = ProcessSpec(
    name="turbofan",
    description="Two-spool high-bypass turbofan (120 kN class): fuel flow drives thrust; "
    "EGT, overspeed, HPC surge and flame-out limits; components degrade with "
    "cycles.",
    sample_period_s=SAMPLE_PERIOD_S,
    timestamp_column="time_s",
    tags=(
        Tag(
            name="T24",
            role=TagRole.SENSOR,
            unit="K",
            nominal=370.0,
            description="LPC (booster) outlet total temperature",
        ),
        Tag(
            name="T30",
            role=TagRole.SENSOR,
            unit="K",
            nominal=750.0,
            description="HPC outlet total temperature",
        ),
        Tag(
            name="T50",
            role=TagRole.SENSOR,
            unit="K",
            high=T50_MAX_K,
            nominal=780.0,
            description="LPT outlet total temperature (EGT); hard upper limit",
        ),
        Tag(
            name="P30",
            role=TagRole.SENSOR,
            unit="kPa",
            nominal=2000.0,
            description="HPC outlet total pressure",
        ),
        Tag(
            name="Nf",
            role=TagRole.SENSOR,
            unit="rpm",
            high=NF_MAX_RPM,
            nominal=4000.0,
            description="fan (low-spool) speed; overspeed limit",
        ),
        Tag(
            name="Nc",
            role=TagRole.SENSOR,
            unit="rpm",
            high=NC_MAX_RPM,
            nominal=13500.0,
            description="core (high-spool) speed; overspeed limit",
        ),
        Tag(
            name="Ps30",
            role=TagRole.SENSOR,
            unit="kPa",
            nominal=1900.0,
            description="HPC outlet static pressure",
        ),
        Tag(
            name="phi",
            role=TagRole.SENSOR,
            unit="(g/s)/kPa",
            low=PHI_MIN,
            nominal=0.4,
            description="fuel flow over Ps30; lean blow-out below the limit",
        ),
        Tag(
            name="Fn",
            role=TagRole.SENSOR,
            unit="kN",
            nominal=75.0,
            controlled=True,
            description="net thrust estimate; follows the thrust demand",
        ),
        Tag(
            name="SM_hpc",
            role=TagRole.SENSOR,
            unit="%",
            low=SM_MIN_PCT,
            nominal=22.0,
            description="HPC surge margin (estimated); hard lower limit",
        ),
        Tag(
            name="Wf",
            role=TagRole.ACTUATOR,
            unit="kg/s",
            low=WF_LOW,
            high=WF_HIGH,
            rate_limit=WF_RATE_KG_PER_S2,
            nominal=0.8,
            description="fuel flow",
        ),
        Tag(
            name="alt",
            role=TagRole.DISTURBANCE,
            unit="m",
            nominal=0.0,
            description="pressure altitude",
        ),
        Tag(
            name="Mach",
            role=TagRole.DISTURBANCE,
            unit="-",
            nominal=0.2,
            description="flight Mach number",
        ),
        Tag(
            name="dT_isa",
            role=TagRole.DISTURBANCE,
            unit="K",
            nominal=0.0,
            description="ambient temperature deviation from ISA",
        ),
    ),
    # A plan margin to the limits of 0.1 training std (89 rpm of fan speed; 0.25 std left
    # the twin short of takeoff thrust): the FADEC's limit protection (`fadec_protection`)
    # stands behind every move. Tracking weight and horizon: the defaults (the log gives 23
    # samples); on one twin, 3 seeds x 2 cases, they cost 300.8 where 40 and 20 cost 305.5.
    control=ControlWeights(limit_margin=0.1),
    # more fuel, more turbine work: faster spools, hotter exhaust, more thrust
    effects=tuple(
        Effect(actuator="Wf", sensor=s, sign="positive") for s in ("Nf", "Nc", "T50", "Fn")
    ),
)

LIMITS: dict[str, tuple[float | None, float | None]] = {
    t.name: (t.low, t.high) for t in SPEC.sensors if t.low is not None or t.high is not None
}
"""Limited sensors -> (low, high) hard limits."""

NOISE_STD = {
    "T24": 0.5,
    "T30": 1.0,
    "T50": 1.5,
    "P30": 4.0,
    "Nf": 3.0,
    "Nc": 5.0,
    "Ps30": 4.0,
    "Fn": 0.3,
    "SM_hpc": 0.15,
}
"""Sensor noise (1 sigma, spec units); phi is computed from the noisy Ps30."""


# -- the plant --------------------------------------------------------------------------------


@dataclass
class TurbofanSimulator:
    """The engine. `step` applies one fuel flow for one sample period.

    It starts in steady state at fuel `wf0` with the health of engine `unit` at `cycle`.
    """

    seed: int = 0
    cycle: float = 0.0
    unit: int = 1
    wf0: float = 0.5
    flight: Flight = field(default_factory=Flight)
    noise: bool = True
    time_s: float = 0.0

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.health = health_at(self.cycle, self.unit)
        self.wf = float(np.clip(self.wf0, WF_LOW, WF_HIGH))
        self.state = steady_state(self.wf, self.flight, self.health)

    @property
    def spec(self) -> ProcessSpec:
        return SPEC

    def true_sensors(
        self, wf: float | None = None, state: tuple[float, float] | None = None
    ) -> dict[str, float]:
        """Noise-free sensors at the current (or given) state and the held (or given) fuel."""
        n1, n2 = state if state is not None else self.state
        values = sensors(n1, n2, self.wf if wf is None else wf, self.flight, self.health)
        return {k: float(v) for k, v in values.items()}

    def measure(self) -> dict[str, float]:
        values = self.true_sensors()
        if self.noise:
            for tag, std in NOISE_STD.items():
                values[tag] += std * float(self.rng.standard_normal())
            values["phi"] = 1e3 * self.wf / values["Ps30"]
        return {
            **values,
            "alt": float(self.flight.alt_m),
            "Mach": float(self.flight.mach),
            "dT_isa": float(self.flight.dt_isa),
        }

    def step(self, wf: float) -> dict[str, float]:
        self.wf = float(np.clip(wf, WF_LOW, WF_HIGH))
        n1, n2 = rk4_step(self.state, self.wf, self.flight, self.health)
        self.state = (float(n1), float(n2))
        self.time_s += SAMPLE_PERIOD_S
        return self.measure()
