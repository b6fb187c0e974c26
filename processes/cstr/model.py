"""CSTR physics and plant: parameters, tag spec, balance equations, simulator."""

from __future__ import annotations

from dataclasses import dataclass, field

import casadi as ca
import numpy as np

from twin.effects import Effect
from twin.spec import ControlWeights, ProcessSpec, Tag, TagRole

Q_L_PER_MIN = 100.0
VOLUME_L = 100.0
RHO_G_PER_L = 1000.0
CP_J_PER_G_K = 0.239
DELTA_H_J_PER_MOL = -4.0e4
E_OVER_R_K = 8750.0
K0_PER_MIN = 7.2e10
UA_J_PER_MIN_K = 1.0e5

CAF_NOMINAL = 1.0
TF_NOMINAL = 350.0
TC_NOMINAL = 330.0
TC_LOW, TC_HIGH = 280.0, 360.0
TC_RATE_K_PER_S = 0.5
T_LIMIT_K = 385.0
SAMPLE_PERIOD_S = 6.0
NOISE_CA = 0.004
NOISE_T = 0.15
RK4_SUBSTEPS = 20

SPEC = ProcessSpec(
    name="cstr",
    description="Exothermic CSTR A->B with coolant jacket; runaway above the temperature limit.",
    sample_period_s=SAMPLE_PERIOD_S,
    timestamp_column="time_s",
    tags=(
        Tag(
            name="Ca",
            role=TagRole.SENSOR,
            unit="mol/L",
            low=0.0,
            high=None,
            nominal=0.5,
            description="reactor concentration of A",
        ),
        Tag(
            name="T",
            role=TagRole.SENSOR,
            unit="K",
            low=None,
            high=T_LIMIT_K,
            nominal=350.0,
            controlled=True,
            description="reactor temperature; hard upper limit",
        ),
        Tag(
            name="Tc",
            role=TagRole.ACTUATOR,
            unit="K",
            low=TC_LOW,
            high=TC_HIGH,
            rate_limit=TC_RATE_K_PER_S,
            nominal=TC_NOMINAL,
            description="coolant temperature",
        ),
        Tag(
            name="Caf",
            role=TagRole.DISTURBANCE,
            unit="mol/L",
            nominal=CAF_NOMINAL,
            description="feed concentration of A",
        ),
        Tag(
            name="Tf",
            role=TagRole.DISTURBANCE,
            unit="K",
            nominal=TF_NOMINAL,
            description="feed temperature",
        ),
    ),
    # The default tracking weight (the twin's embedding distance alone let plans overshoot
    # into the runaway region); moves weighed up for the jacket's lag (measured in the
    # README's control section).
    control=ControlWeights(move_weight=4.0),
    # a warmer jacket takes less heat out of the reactor
    effects=(Effect(actuator="Tc", sensor="T", sign="positive"),),
)

RATE_PER_SAMPLE = TC_RATE_K_PER_S * SAMPLE_PERIOD_S


def derivatives(
    ca_: np.ndarray | ca.MX | ca.SX,
    t_: np.ndarray | ca.MX | ca.SX,
    tc: float | ca.MX | ca.SX,
    caf: float,
    tf: float,
    exp=np.exp,
) -> tuple:
    """Right-hand side in per-minute units; works for numpy and CasADi symbols."""
    rate = K0_PER_MIN * exp(-E_OVER_R_K / t_) * ca_
    dca = Q_L_PER_MIN / VOLUME_L * (caf - ca_) - rate
    dt = (
        Q_L_PER_MIN / VOLUME_L * (tf - t_)
        + (-DELTA_H_J_PER_MOL) / (RHO_G_PER_L * CP_J_PER_G_K) * rate
        + UA_J_PER_MIN_K / (VOLUME_L * RHO_G_PER_L * CP_J_PER_G_K) * (tc - t_)
    )
    return dca, dt


def rk4_step(x: tuple, tc, caf, tf, dt_min: float, substeps: int = RK4_SUBSTEPS, exp=np.exp):
    """One sample period of the true dynamics by fixed-step RK4."""
    h = dt_min / substeps
    ca_, t_ = x
    for _ in range(substeps):
        k1 = derivatives(ca_, t_, tc, caf, tf, exp)
        k2 = derivatives(ca_ + h / 2 * k1[0], t_ + h / 2 * k1[1], tc, caf, tf, exp)
        k3 = derivatives(ca_ + h / 2 * k2[0], t_ + h / 2 * k2[1], tc, caf, tf, exp)
        k4 = derivatives(ca_ + h * k3[0], t_ + h * k3[1], tc, caf, tf, exp)
        ca_ = ca_ + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        t_ = t_ + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return ca_, t_


def steady_state(
    tc: float,
    caf: float = CAF_NOMINAL,
    tf: float = TF_NOMINAL,
    start: tuple[float, float] = (0.5, 350.0),
) -> tuple[float, float]:
    """Steady state reached from `start` by simulating long enough (stable branches only)."""
    x = start
    for _ in range(3000):
        x = rk4_step(x, tc, caf, tf, SAMPLE_PERIOD_S / 60.0)
    return float(x[0]), float(x[1])


@dataclass
class Disturbances:
    caf: float = CAF_NOMINAL
    tf: float = TF_NOMINAL


@dataclass
class CSTRSimulator:
    """The plant. `step` applies one coolant setpoint for one sample period."""

    seed: int = 0
    ca0: float = 0.5
    t0: float = 350.0
    noise: bool = True
    time_s: float = 0.0
    disturbances: Disturbances = field(default_factory=Disturbances)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)
        self.state = (float(self.ca0), float(self.t0))

    @property
    def spec(self) -> ProcessSpec:
        return SPEC

    def measure(self) -> dict[str, float]:
        ca_, t_ = self.state
        if self.noise:
            ca_ = ca_ + NOISE_CA * self.rng.standard_normal()
            t_ = t_ + NOISE_T * self.rng.standard_normal()
        return {
            "Ca": float(ca_),
            "T": float(t_),
            "Caf": self.disturbances.caf,
            "Tf": self.disturbances.tf,
        }

    def step(self, tc: float) -> dict[str, float]:
        tc = float(np.clip(tc, TC_LOW, TC_HIGH))
        args = (tc, self.disturbances.caf, self.disturbances.tf, SAMPLE_PERIOD_S / 60.0)
        with np.errstate(all="ignore"):
            state = rk4_step(self.state, *args)
            if not all(np.isfinite(state)):  # a runaway is stiff: integrate it finely
                state = rk4_step(self.state, *args, substeps=50 * RK4_SUBSTEPS)
        self.state = (float(state[0]), float(state[1]))
        self.time_s += SAMPLE_PERIOD_S
        return self.measure()
