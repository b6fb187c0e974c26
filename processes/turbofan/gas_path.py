"""Turbofan physics: gas properties, design point, health, the quasi-steady gas path, spool
dynamics and trim."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

Scalar = Any  # a float, or a CasADi SX/MX expression: the model is written for both

# -- gas properties and fixed component data ----------------------------------------------
T_STD_K, P_STD_PA = 288.15, 101325.0
CP_AIR, GAMMA_AIR = 1005.0, 1.4  # J/(kg K)
CP_GAS, GAMMA_GAS = 1150.0, 1.33  # combustion products
KAPPA_AIR = (GAMMA_AIR - 1.0) / GAMMA_AIR
KAPPA_GAS = (GAMMA_GAS - 1.0) / GAMMA_GAS
R_GAS = 287.0
FUEL_LHV = 43.0e6  # J/kg, Jet A
ETA_BURNER = 0.995
BURNER_LOSS = 0.05  # total-pressure loss fraction
BYPASS_DUCT_LOSS = 0.02
RAM_RECOVERY = 0.995
ETA_MECH = 0.99
NOZZLE_CV = 0.98  # velocity coefficient of both nozzles
HP_OFFTAKE_W = 150e3  # accessory gearbox and generators
RPM_TO_RAD = 2.0 * math.pi / 60.0

# -- design point (sea-level static ISA takeoff) --------------------------------------------
N1_DESIGN_RPM, N2_DESIGN_RPM = 5000.0, 14500.0
W2_DESIGN, PR_FAN_DESIGN, ETA_FAN_DESIGN = 360.0, 1.65, 0.90
PR_LPC_DESIGN, ETA_LPC_DESIGN = 1.65, 0.88
W25_DESIGN, PR_HPC_DESIGN, ETA_HPC_DESIGN = 60.0, 11.0, 0.86
PR_SURGE_DESIGN = 13.5  # HPC surge pressure ratio at design corrected flow: 22.7 % margin
T4_DESIGN_K = 1560.0
ETA_HPT, ETA_LPT = 0.89, 0.91
J_LP_KG_M2, J_HP_KG_M2 = 180.0, 12.0  # chosen for the time constants in the docstring

# -- actuator, limits, sampling ---------------------------------------------------------------
SAMPLE_PERIOD_S = 0.2
WF_LOW, WF_HIGH = 0.18, 1.6  # kg/s: flight idle fuel to the metering valve's maximum
WF_RATE_KG_PER_S2 = 0.5  # fuel metering valve slew limit, (kg/s) per s
RATE_PER_SAMPLE = WF_RATE_KG_PER_S2 * SAMPLE_PERIOD_S
T50_MAX_K = 930.0
NF_MAX_RPM = 5250.0
NC_MAX_RPM = 15100.0
SM_MIN_PCT = 10.0
PHI_MIN = 0.15  # (g/s)/kPa, lean blow-out
PS30_OVER_P30 = 0.94  # static/total pressure at the HPC exit (exit Mach ~0.3)
RK4_SUBSTEPS = 1
FIXED_POINT_PASSES = 3

# -- health -----------------------------------------------------------------------------------
CYCLE_END_OF_LIFE = 300.0


class Flight(NamedTuple):
    """Measured flight condition: pressure altitude [m], Mach number, ISA deviation [K]."""

    alt_m: Scalar = 0.0
    mach: Scalar = 0.0
    dt_isa: Scalar = 0.0


class Health(NamedTuple):
    """Fractional losses: efficiencies and flow capacities of fan, HPC and HPT (0 = new).

    `hpt_flow` is a gain of HPT flow capacity (erosion opens the nozzle guide vanes).
    """

    fan_eff: Scalar = 0.0
    fan_flow: Scalar = 0.0
    hpc_eff: Scalar = 0.0
    hpc_flow: Scalar = 0.0
    hpt_eff: Scalar = 0.0
    hpt_flow: Scalar = 0.0


NEW_ENGINE = Health()
SEA_LEVEL_STATIC = Flight()
END_OF_LIFE_LOSS = Health(
    fan_eff=0.02, fan_flow=0.02, hpc_eff=0.03, hpc_flow=0.03, hpt_eff=0.03, hpt_flow=0.02
)
DEGRADATION_CURVATURE = 2.0  # C-MAPSS-like exponential growth of wear with cycles
SURGE_LINE_PER_EFF_LOSS = 2.0  # surge pressure ratio lost per unit HPC efficiency lost


def health_at(cycle: float, unit: int = 1) -> Health:
    """Health of engine `unit` after `cycle` flights (unit-to-unit variation by seed)."""
    rng = np.random.default_rng(50_000 + unit)
    initial_wear = rng.uniform(0.0, 0.15, size=6)  # share of the end-of-life loss
    rate = rng.lognormal(0.0, 0.2, size=6)
    b = DEGRADATION_CURVATURE
    growth = (math.exp(b * max(cycle, 0.0) / CYCLE_END_OF_LIFE) - 1.0) / (math.exp(b) - 1.0)
    losses = [
        float(d * (w0 + r * growth))
        for d, w0, r in zip(END_OF_LIFE_LOSS, initial_wear, rate, strict=True)
    ]
    return Health(*losses)


# -- smooth helpers that work on floats and CasADi symbols -------------------------------------


def _sqrt(x: Scalar) -> Scalar:
    return x**0.5


def _smooth_max(a: Scalar, b: Scalar, eps: float) -> Scalar:
    """max(a, b) rounded over a width ~eps, so the oracle's derivatives exist everywhere."""
    return 0.5 * (a + b + _sqrt((a - b) ** 2 + eps**2))


def _efficiency(n: Scalar, design: float, peak_at: float, curvature: float) -> Scalar:
    """Efficiency along the working line: a parabola peaking at `peak_at`, `design` at n=1."""
    shape = 1.0 - curvature * (n - peak_at) ** 2
    return design * shape / (1.0 - curvature * (1.0 - peak_at) ** 2)


def _pressure_ratio(n: Scalar, design: float) -> Scalar:
    return 1.0 + (design - 1.0) * n**2


def _compress(t_in: Scalar, pr: Scalar, eta: Scalar) -> Scalar:
    return t_in * (1.0 + (pr**KAPPA_AIR - 1.0) / eta)


def _fan_flow_shape(n: Scalar) -> Scalar:
    return n * (1.3 - 0.3 * n)  # flattens towards choke at high corrected speed


def _hpc_flow_shape(n: Scalar) -> Scalar:
    return n**3  # steep speed lines of a high-pressure-ratio core compressor


def _surge_pressure_ratio(wc: Scalar) -> Scalar:
    return 1.0 + (PR_SURGE_DESIGN - 1.0) * wc**1.6


def _hpc_pr_guess(n2: Scalar) -> Scalar:
    return 1.0 + (PR_HPC_DESIGN - 1.0) * n2**4.7  # steady working line, first guess


def _nozzle_pressure(pa: Scalar, w: Scalar, t: Scalar, area_sq: float) -> Scalar:
    """Upstream total pressure that passes flow w at temperature t: orifice law, explicit."""
    return 0.5 * pa + _sqrt(0.25 * pa**2 + w**2 * R_GAS * t / (2.0 * area_sq))


def _jet_velocity(t: Scalar, p: Scalar, pa: Scalar, cp: float, kappa: float) -> Scalar:
    drop = _smooth_max(1.0 - (pa / p) ** kappa, 0.0, 1e-4)
    return NOZZLE_CV * _sqrt(2.0 * cp * t * drop)


def _ambient(flight: Flight) -> tuple[Scalar, Scalar]:
    t_amb = T_STD_K - 0.0065 * flight.alt_m + flight.dt_isa
    p_amb = P_STD_PA * (1.0 - 0.0065 * flight.alt_m / T_STD_K) ** 5.25588
    return t_amb, p_amb


@dataclass(frozen=True)
class Design:
    """Quantities fixed by matching the design point (derived, not chosen)."""

    t24: float
    p24: float
    wf: float
    hpt_capacity: float  # W4 sqrt(T4) / P4
    pr_hpt: float
    nozzle_area_sq: float  # effective core nozzle area squared [m^4]
    t50: float


def _match_design_point() -> Design:
    """Solve the design point explicitly: fuel for T4, turbine work for both shaft balances,
    the HPT capacity, and the core nozzle area that passes the flow."""
    p2 = P_STD_PA * RAM_RECOVERY
    t21 = _compress(T_STD_K, PR_FAN_DESIGN, ETA_FAN_DESIGN)
    t24 = _compress(t21, PR_LPC_DESIGN, ETA_LPC_DESIGN)
    p24 = p2 * PR_FAN_DESIGN * PR_LPC_DESIGN
    t3 = _compress(t24, PR_HPC_DESIGN, ETA_HPC_DESIGN)
    p4 = p24 * PR_HPC_DESIGN * (1.0 - BURNER_LOSS)
    wf = (
        W25_DESIGN
        * (CP_GAS * T4_DESIGN_K - CP_AIR * t3)
        / (ETA_BURNER * FUEL_LHV - CP_GAS * T4_DESIGN_K)
    )
    w4 = W25_DESIGN + wf
    hp_work = (W25_DESIGN * CP_AIR * (t3 - t24) + HP_OFFTAKE_W) / (ETA_MECH * w4 * CP_GAS)
    pr_hpt = (1.0 - hp_work / (ETA_HPT * T4_DESIGN_K)) ** (-1.0 / KAPPA_GAS)
    t45 = T4_DESIGN_K - hp_work
    lp_power = W2_DESIGN * CP_AIR * (t21 - T_STD_K) + W25_DESIGN * CP_AIR * (t24 - t21)
    t5 = t45 - lp_power / (ETA_MECH * w4 * CP_GAS)
    pr_lpt = (1.0 - (t45 - t5) / (ETA_LPT * t45)) ** (-1.0 / KAPPA_GAS)
    p5 = p4 / pr_hpt / pr_lpt
    area_sq = w4**2 * R_GAS * t5 / (2.0 * ((p5 - 0.5 * P_STD_PA) ** 2 - 0.25 * P_STD_PA**2))
    return Design(
        t24=t24,
        p24=p24,
        wf=wf,
        hpt_capacity=w4 * math.sqrt(T4_DESIGN_K) / p4,
        pr_hpt=pr_hpt,
        nozzle_area_sq=area_sq,
        t50=t5,
    )


DESIGN = _match_design_point()


@dataclass(frozen=True)
class GasPath:
    """Station values of one quasi-steady gas-path solution (SI: K, Pa, kg/s, W, N)."""

    t24: Scalar
    t3: Scalar
    p3: Scalar
    t4: Scalar
    t5: Scalar
    thrust: Scalar
    surge_margin: Scalar
    lp_excess_power: Scalar  # eta_m P_lpt - P_fan - P_lpc
    hp_excess_power: Scalar  # eta_m P_hpt - P_hpc - offtake
    w2: Scalar
    w25: Scalar


def gas_path(
    n1: Scalar, n2: Scalar, wf: Scalar, flight: Flight, health: Health = NEW_ENGINE
) -> GasPath:
    """The quasi-steady gas path at spool speeds n1, n2 [rpm] and fuel flow wf [kg/s]."""
    t_amb, p_amb = _ambient(flight)
    ram = 1.0 + 0.2 * flight.mach**2
    t2, p2 = t_amb * ram, p_amb * ram**3.5 * RAM_RECOVERY
    v0 = flight.mach * _sqrt(GAMMA_AIR * R_GAS * t_amb)
    # low spool: fan (whole flow) and booster (core stream) on their working lines
    theta2 = t2 / T_STD_K
    n1c = n1 / N1_DESIGN_RPM / _sqrt(theta2)
    w2 = (
        W2_DESIGN * _fan_flow_shape(n1c) * (1.0 - health.fan_flow) * (p2 / P_STD_PA) / _sqrt(theta2)
    )
    pr_fan = _pressure_ratio(n1c, PR_FAN_DESIGN)
    t21 = _compress(t2, pr_fan, _efficiency(n1c, ETA_FAN_DESIGN, 0.9, 0.6) * (1.0 - health.fan_eff))
    pr_lpc = _pressure_ratio(n1c, PR_LPC_DESIGN)
    t24 = _compress(t21, pr_lpc, _efficiency(n1c, ETA_LPC_DESIGN, 0.9, 0.6))
    p21 = p2 * pr_fan
    p24 = p21 * pr_lpc
    # high spool: corrected flow from speed; pressure ratio from the choked HPT
    theta24 = t24 / DESIGN.t24
    n2c = n2 / N2_DESIGN_RPM / _sqrt(theta24)
    wc25 = _hpc_flow_shape(n2c) * (1.0 - health.hpc_flow)
    w25 = W25_DESIGN * wc25 * (p24 / DESIGN.p24) / _sqrt(theta24)
    eta_hpc = _efficiency(n2c, ETA_HPC_DESIGN, 0.95, 1.0) * (1.0 - health.hpc_eff)
    w4 = w25 + wf
    capacity = DESIGN.hpt_capacity * (1.0 + health.hpt_flow)
    pr_hpc = _hpc_pr_guess(n2c)
    for _ in range(FIXED_POINT_PASSES):
        t3 = _compress(t24, pr_hpc, eta_hpc)
        t4 = (w25 * CP_AIR * t3 + ETA_BURNER * FUEL_LHV * wf) / (w4 * CP_GAS)
        pr_hpc = w4 * _sqrt(t4) / capacity / (1.0 - BURNER_LOSS) / p24
    t3 = _compress(t24, pr_hpc, eta_hpc)
    t4 = (w25 * CP_AIR * t3 + ETA_BURNER * FUEL_LHV * wf) / (w4 * CP_GAS)
    p4 = w4 * _sqrt(t4) / capacity
    p3 = p4 / (1.0 - BURNER_LOSS)
    # worn blading (tip clearances, erosion) lowers the surge line along with the efficiency
    surge_pr = _surge_pressure_ratio(wc25) * (1.0 - SURGE_LINE_PER_EFF_LOSS * health.hpc_eff)
    surge_margin = 100.0 * (surge_pr / (p3 / p24) - 1.0)
    # turbines: fixed HPT expansion; LPT expansion set by the core nozzle
    t45 = t4 * (1.0 - ETA_HPT * (1.0 - health.hpt_eff) * (1.0 - DESIGN.pr_hpt**-KAPPA_GAS))
    p45 = p4 / DESIGN.pr_hpt
    t5 = 0.8 * t45
    for _ in range(FIXED_POINT_PASSES):
        p5 = _nozzle_pressure(p_amb, w4, t5, DESIGN.nozzle_area_sq)
        pr_lpt = _smooth_max(p45 / p5, 1.0, 0.01)
        t5 = t45 * (1.0 - ETA_LPT * (1.0 - pr_lpt**-KAPPA_GAS))
    p5 = _nozzle_pressure(p_amb, w4, t5, DESIGN.nozzle_area_sq)
    # thrust of both fully expanded jets less the ram drag
    w13 = w2 - w25
    v19 = _jet_velocity(t21, p21 * (1.0 - BYPASS_DUCT_LOSS), p_amb, CP_AIR, KAPPA_AIR)
    v9 = _jet_velocity(t5, p5, p_amb, CP_GAS, KAPPA_GAS)
    thrust = w13 * v19 + w4 * v9 - w2 * v0
    lp_power = w2 * CP_AIR * (t21 - t2) + w25 * CP_AIR * (t24 - t21)
    hp_power = w25 * CP_AIR * (t3 - t24) + HP_OFFTAKE_W
    return GasPath(
        t24=t24,
        t3=t3,
        p3=p3,
        t4=t4,
        t5=t5,
        thrust=thrust,
        surge_margin=surge_margin,
        lp_excess_power=ETA_MECH * w4 * CP_GAS * (t45 - t5) - lp_power,
        hp_excess_power=ETA_MECH * w4 * CP_GAS * (t4 - t45) - hp_power,
        w2=w2,
        w25=w25,
    )


def derivatives(
    n1: Scalar, n2: Scalar, wf: Scalar, flight: Flight, health: Health = NEW_ENGINE
) -> tuple[Scalar, Scalar]:
    """Spool accelerations [rpm/s]: J w dw/dt = excess power, w in rad/s."""
    g = gas_path(n1, n2, wf, flight, health)
    dn1 = g.lp_excess_power / (J_LP_KG_M2 * RPM_TO_RAD**2 * n1)
    dn2 = g.hp_excess_power / (J_HP_KG_M2 * RPM_TO_RAD**2 * n2)
    return dn1, dn2


def rk4_step(
    x: tuple[Scalar, Scalar],
    wf: Scalar,
    flight: Flight,
    health: Health,
    dt_s: float = SAMPLE_PERIOD_S,
    substeps: int = RK4_SUBSTEPS,
) -> tuple[Scalar, Scalar]:
    """One sample period of the spool dynamics at constant fuel and flight condition."""
    h = dt_s / substeps
    n1, n2 = x
    for _ in range(substeps):
        k1 = derivatives(n1, n2, wf, flight, health)
        k2 = derivatives(n1 + h / 2 * k1[0], n2 + h / 2 * k1[1], wf, flight, health)
        k3 = derivatives(n1 + h / 2 * k2[0], n2 + h / 2 * k2[1], wf, flight, health)
        k4 = derivatives(n1 + h * k3[0], n2 + h * k3[1], wf, flight, health)
        n1 = n1 + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        n2 = n2 + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return n1, n2


def sensors(
    n1: Scalar, n2: Scalar, wf: Scalar, flight: Flight, health: Health = NEW_ENGINE
) -> dict[str, Scalar]:
    """The true (noise-free) value of every sensor tag, in the spec's units."""
    g = gas_path(n1, n2, wf, flight, health)
    ps30_kpa = PS30_OVER_P30 * g.p3 / 1e3
    return {
        "T24": g.t24,
        "T30": g.t3,
        "T50": g.t5,
        "P30": g.p3 / 1e3,
        "Nf": n1,
        "Nc": n2,
        "Ps30": ps30_kpa,
        "phi": 1e3 * wf / ps30_kpa,
        "Fn": g.thrust / 1e3,
        "SM_hpc": g.surge_margin,
    }


def steady_state(
    wf: float,
    flight: Flight = SEA_LEVEL_STATIC,
    health: Health = NEW_ENGINE,
    start: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Spool speeds where both shafts balance at fuel wf: damped Newton, numerical Jacobian."""
    x = np.array(start if start is not None else (4000.0, 13500.0), dtype=float)

    def residual(v: np.ndarray) -> np.ndarray:
        return np.array(derivatives(float(v[0]), float(v[1]), wf, flight, health))

    for _ in range(100):
        f = residual(x)
        jac = np.column_stack([(residual(x + d) - f) for d in np.eye(2)])
        step = np.clip(np.linalg.solve(jac, -f), -400.0, 400.0)
        x = np.maximum(x + step, 500.0)
        if np.abs(step).max() < 1e-7:
            break
    return float(x[0]), float(x[1])


def trim_fuel(
    thrust_kn: float, flight: Flight = SEA_LEVEL_STATIC, health: Health = NEW_ENGINE
) -> tuple[float, tuple[float, float]]:
    """Fuel (within its bounds) whose steady state gives `thrust_kn`, and that steady state."""
    low, high = WF_LOW, WF_HIGH
    x = steady_state(low, flight, health)
    for _ in range(40):  # steady thrust rises monotonically with fuel: bisection
        mid = 0.5 * (low + high)
        x = steady_state(mid, flight, health, start=x)
        if sensors(*x, mid, flight, health)["Fn"] < thrust_kn:
            low = mid
        else:
            high = mid
        if high - low < 1e-6:
            break
    wf = 0.5 * (low + high)
    return wf, steady_state(wf, flight, health, start=x)
