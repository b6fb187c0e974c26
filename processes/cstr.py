"""Exothermic CSTR, A -> B, with a cooling jacket (Seborg et al., Process Dynamics and Control).

States: concentration of A, Ca [mol/L], and reactor temperature, T [K].

    dCa/dt = q/V (Caf - Ca) - k0 exp(-E/(R T)) Ca
    dT/dt  = q/V (Tf - T) + (-dH)/(rho Cp) k0 exp(-E/(R T)) Ca + UA/(V rho Cp) (Tc - T)

Time in the equations is in minutes (as the parameters are); the tag spec is in seconds.
The reaction runs away when the coolant is too warm: the reactor temperature limit is
the safety constraint every controller must keep. Actuator: coolant temperature Tc [K].
Disturbances: feed concentration Caf [mol/L] and feed temperature Tf [K].
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import casadi as ca
import numpy as np
import pandas as pd

from twin.spec import ProcessSpec, Tag, TagRole

Q_L_PER_MIN = 100.0
VOLUME_L = 100.0
RHO_G_PER_L = 1000.0
CP_J_PER_G_K = 0.239
DELTA_H_J_PER_MOL = -5.0e4
E_OVER_R_K = 8750.0
K0_PER_MIN = 7.2e10
UA_J_PER_MIN_K = 5.0e4

CAF_NOMINAL = 1.0
TF_NOMINAL = 350.0
TC_NOMINAL = 300.0
TC_LOW, TC_HIGH = 280.0, 320.0
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
        Tag(name="Ca", role=TagRole.SENSOR, unit="mol/L", low=0.0, high=None, nominal=0.5,
            description="reactor concentration of A"),
        Tag(name="T", role=TagRole.SENSOR, unit="K", low=None, high=T_LIMIT_K, nominal=350.0,
            controlled=True, description="reactor temperature; hard upper limit"),
        Tag(name="Tc", role=TagRole.ACTUATOR, unit="K", low=TC_LOW, high=TC_HIGH,
            rate_limit=TC_RATE_K_PER_S, nominal=TC_NOMINAL, description="coolant temperature"),
        Tag(name="Caf", role=TagRole.DISTURBANCE, unit="mol/L", nominal=CAF_NOMINAL,
            description="feed concentration of A"),
        Tag(name="Tf", role=TagRole.DISTURBANCE, unit="K", nominal=TF_NOMINAL,
            description="feed temperature"),
    ),
)

RATE_PER_SAMPLE = TC_RATE_K_PER_S * SAMPLE_PERIOD_S


def derivatives(ca_: np.ndarray | ca.MX | ca.SX, t_: np.ndarray | ca.MX | ca.SX,
                tc: float | ca.MX | ca.SX, caf: float, tf: float,
                exp=np.exp) -> tuple:
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


def steady_state(tc: float, caf: float = CAF_NOMINAL, tf: float = TF_NOMINAL,
                 start: tuple[float, float] = (0.5, 350.0)) -> tuple[float, float]:
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
        return {"Ca": float(ca_), "T": float(t_),
                "Caf": self.disturbances.caf, "Tf": self.disturbances.tf}

    def step(self, tc: float) -> dict[str, float]:
        tc = float(np.clip(tc, TC_LOW, TC_HIGH))
        self.state = tuple(float(v) for v in rk4_step(
            self.state, tc, self.disturbances.caf, self.disturbances.tf, SAMPLE_PERIOD_S / 60.0))
        self.time_s += SAMPLE_PERIOD_S
        return self.measure()


@dataclass
class Scenario:
    """A setpoint schedule and disturbance steps, indexed by sample."""

    steps: int
    setpoints: list[tuple[int, float]]
    caf_steps: list[tuple[int, float]] = field(default_factory=list)
    tf_steps: list[tuple[int, float]] = field(default_factory=list)

    @staticmethod
    def _at(schedule: list[tuple[int, float]], k: int, default: float) -> float:
        value = default
        for start, v in schedule:
            if k >= start:
                value = v
        return value

    def setpoint(self, k: int) -> float:
        return self._at(self.setpoints, k, self.setpoints[0][1])

    def disturbances(self, k: int) -> Disturbances:
        return Disturbances(self._at(self.caf_steps, k, CAF_NOMINAL),
                            self._at(self.tf_steps, k, TF_NOMINAL))


def benchmark_scenario() -> Scenario:
    """The standard episode: setpoint steps towards the limit, then feed disturbances."""
    return Scenario(
        steps=240,
        setpoints=[(0, 350.0), (20, 365.0), (90, 375.0), (160, 355.0)],
        caf_steps=[(120, 1.08)],
        tf_steps=[(200, 354.0)],
    )


class PIController:
    """Velocity-form PI on T through Tc, with bound and rate clamping (no windup)."""

    def __init__(self, kp: float = 4.0, ti_s: float = 240.0, u0: float = TC_NOMINAL) -> None:
        self.kp, self.ti_s, self.u = kp, ti_s, u0
        self.prev_error: float | None = None

    def reset(self, u0: float = TC_NOMINAL) -> None:
        self.u, self.prev_error = u0, None

    def __call__(self, measured_t: float, setpoint: float) -> float:
        error = setpoint - measured_t
        prev = error if self.prev_error is None else self.prev_error
        du = self.kp * (error - prev) + self.kp * SAMPLE_PERIOD_S / self.ti_s * error
        du = float(np.clip(du, -RATE_PER_SAMPLE, RATE_PER_SAMPLE))
        self.u = float(np.clip(self.u + du, TC_LOW, TC_HIGH))
        self.prev_error = error
        return self.u


class OracleNMPC:
    """NMPC on the true equations and the true (noise-free) state: the bar for learned control.

    Multiple shooting with RK4, hard bounds and rate limits on Tc, and the temperature
    limit as a hard state constraint softened by a heavily penalised slack.
    """

    def __init__(self, horizon: int = 20, move_weight: float = 0.05,
                 limit_margin_k: float = 1.0) -> None:
        self.horizon = horizon
        dt_min = SAMPLE_PERIOD_S / 60.0
        opti = ca.Opti()
        x = opti.variable(2, horizon + 1)
        u = opti.variable(1, horizon)
        slack = opti.variable(1, horizon)
        self.p_x0 = opti.parameter(2)
        self.p_uprev = opti.parameter()
        self.p_sp = opti.parameter()
        self.p_dist = opti.parameter(2)
        opti.subject_to(x[:, 0] == self.p_x0)
        cost = 0
        for k in range(horizon):
            ca_next, t_next = rk4_step((x[0, k], x[1, k]), u[0, k], self.p_dist[0],
                                       self.p_dist[1], dt_min, exp=ca.exp)
            opti.subject_to(x[0, k + 1] == ca_next)
            opti.subject_to(x[1, k + 1] == t_next)
            prev = self.p_uprev if k == 0 else u[0, k - 1]
            opti.subject_to(opti.bounded(-RATE_PER_SAMPLE, u[0, k] - prev, RATE_PER_SAMPLE))
            opti.subject_to(x[1, k + 1] <= T_LIMIT_K - limit_margin_k + slack[0, k])
            cost += ((x[1, k + 1] - self.p_sp) / 10.0) ** 2
            cost += move_weight * ((u[0, k] - prev) / RATE_PER_SAMPLE) ** 2
            cost += 1e3 * slack[0, k]
        opti.subject_to(opti.bounded(TC_LOW, u, TC_HIGH))
        opti.subject_to(slack >= 0)
        opti.minimize(cost)
        opti.solver("ipopt", {"print_time": False, "ipopt.print_level": 0,
                              "ipopt.sb": "yes", "ipopt.max_iter": 200})
        self.opti, self.x, self.u, self.slack = opti, x, u, slack
        self.last_plan_ms = 0.0

    def __call__(self, state: tuple[float, float], u_prev: float, setpoint: float,
                 dist: Disturbances) -> float:
        opti = self.opti
        opti.set_value(self.p_x0, np.array(state))
        opti.set_value(self.p_uprev, u_prev)
        opti.set_value(self.p_sp, setpoint)
        opti.set_value(self.p_dist, np.array([dist.caf, dist.tf]))
        opti.set_initial(self.u, u_prev)
        opti.set_initial(self.x, np.tile(np.array(state)[:, None], (1, self.horizon + 1)))
        start = time.perf_counter()
        try:
            sol = opti.solve()
            u0 = float(sol.value(self.u)[0])
        except RuntimeError:
            u0 = float(opti.debug.value(self.u)[0])
        self.last_plan_ms = (time.perf_counter() - start) * 1e3
        return u0


def _aprbs_levels(rng: np.random.Generator, n: int, low: float, high: float,
                  min_hold: int, max_hold: int) -> np.ndarray:
    """Amplitude-modulated pseudo-random binary sequence: random levels, random hold times."""
    out = np.empty(n)
    k = 0
    while k < n:
        hold = int(rng.integers(min_hold, max_hold + 1))
        out[k:k + hold] = rng.uniform(low, high)
        k += hold
    return out


def generate_training_log(hours: float, seed: int, show_progress: bool = False) -> pd.DataFrame:
    """Excitation data: PI on random setpoints with dither, alternating with open-loop APRBS.

    Every phase keeps actuator bounds and rate limits; a supervisory guard pulls the coolant
    down whenever the measured temperature comes near the limit, so the log never shows a
    runaway the real plant would have tripped on.
    """
    rng = np.random.default_rng(seed)
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    sim = CSTRSimulator(seed=seed + 10_000, ca0=0.5, t0=350.0)
    pi = PIController()
    sp_levels = _aprbs_levels(rng, n, 330.0, 380.0, 30, 120)
    open_loop = _aprbs_levels(rng, n, TC_LOW, 308.0, 8, 40)
    mode_closed = _aprbs_levels(rng, n, 0.0, 1.0, 60, 240) < 0.6
    caf = _aprbs_levels(rng, n, 0.9, 1.1, 100, 400)
    tf = _aprbs_levels(rng, n, 345.0, 355.0, 100, 400)
    rows: list[dict[str, float]] = []
    meas = sim.measure()
    u = TC_NOMINAL
    for k in range(n):
        sim.disturbances = Disturbances(float(caf[k]), float(tf[k]))
        if mode_closed[k]:
            target = pi(meas["T"], float(sp_levels[k])) + rng.normal(0.0, 0.4)
        else:
            target = float(open_loop[k])
            pi.reset(u)
        if meas["T"] > T_LIMIT_K - 12.0:
            target = TC_LOW
            pi.reset(u)
        u = float(np.clip(np.clip(target, u - RATE_PER_SAMPLE, u + RATE_PER_SAMPLE),
                          TC_LOW, TC_HIGH))
        rows.append({"time_s": sim.time_s, **meas, "Tc": u})
        meas = sim.step(u)
    df = pd.DataFrame(rows, columns=["time_s", "Ca", "T", "Tc", "Caf", "Tf"])
    return df
