"""Two-spool high-bypass turbofan with shaft dynamics, component health and flight conditions.

A 120-kN class separate-flow turbofan (takeoff design point at sea-level static ISA:
fan 5000 rpm, core 14500 rpm, 358 kg/s, bypass ratio 5, overall pressure ratio 30,
T4 1560 K). The low spool carries the fan and the booster (LPC) and is driven by the LPT;
the high spool carries the HPC and is driven by the HPT. The fuel flow Wf [kg/s] is the
actuator; altitude, Mach number and the ISA temperature deviation are measured disturbances.

States: the spool speeds N1 (= Nf) and N2 (= Nc) [rpm]. The gas path is quasi-steady
(volume dynamics are milliseconds, spool dynamics seconds) and follows *explicitly*
from (N1, N2, Wf, flight, health), station by station (SAE AS755 numbering):

    ambient (ISA, troposphere)  Ta = 288.15 - 0.0065 h + dT_isa,
                                Pa = 101325 (1 - 0.0065 h / 288.15)^5.2559
    intake                      T2 = Ta (1 + 0.2 M^2),  P2 = 0.995 Pa (1 + 0.2 M^2)^3.5
    corrected speeds            n1 = N1 / N1d / sqrt(T2 / 288.15),
                                n2 = N2 / N2d / sqrt(T24 / T24d)
    fan, booster maps           W2 = W2d n1 (1.3 - 0.3 n1) (1 - loss) (P2/Pstd) / sqrt(T2/Tstd)
                                PR = 1 + (PRd - 1) n1^2          (Euler work ~ blade speed^2)
                                eta(n) = eta_d (1 - c (n - n_pk)^2) / (1 - c (1 - n_pk)^2)
                                T_out = T_in (1 + (PR^((g-1)/g) - 1) / eta)
    HPC flow                    W25 = W25d n2^3 (1 - loss) (P24/P24d) / sqrt(T24/T24d)
    bypass                      W13 = W2 - W25               (bypass ratio emerges)
    combustor (energy balance)  W4 cp_g T4 = W25 cp_a T3 + eta_b LHV Wf,   W4 = W25 + Wf
    HPT nozzle choked           P4 = W4 sqrt(T4) / Gamma_hpt,  P3 = P4 / (1 - dP_b)
    HPC pressure ratio          PR_hpc = P3 / P24,  T3 = T24 (1 + (PR_hpc^0.286 - 1) / eta_hpc)
    HP turbine (fixed PR, both  T45 = T4 - eta_hpt T4 (1 - PR_hpt^-0.248)
      turbine NGVs choked)
    LPT and core nozzle         P5 = Pa/2 + sqrt(Pa^2/4 + W4^2 R T5 / (2 A8^2)),
                                T5 = T45 (1 - eta_lpt (1 - (P45/P5)^-0.248))
    jets (fully expanded)       V = Cv sqrt(2 cp T (1 - (Pa/P)^((g-1)/g)))
    net thrust                  Fn = W13 V19 + W4 V9 - W2 V0
    HPC surge margin            SM = 100 (PR_surge(Wc25) / PR_hpc - 1),
                                PR_surge = (1 + (PR_surge_d - 1) Wc25^1.6) (1 - 2 loss_eta_hpc)
    shafts                      J w dw/dt = eta_m P_turbine - P_compressor (- offtake on HP)

The HPC pressure ratio and the T3/T4 it depends on (and the LPT's T5/P5 pair) form two
weak fixed points (contraction ~0.15: P3 goes with sqrt(T4)); each is unrolled three
times from a good first guess (residual < 0.1 %), so the map stays explicit, smooth and
differentiable, and the same code runs on floats and on CasADi symbols (only + - * / **).
The nozzle law is the incompressible orifice law solved for the upstream pressure: explicit,
smooth through choking, and it reduces to a choked-like P5 ~ W sqrt(T)/A at high power; the
effective area absorbs the difference. Fuel on an accelerating core raises T4 at the
choked HPT and with it P3, so the HPC working line moves towards surge: surge margin is lost
transiently in an acceleration exactly as in a real engine, and the fuel/Ps30 ratio (phi) is
the variable acceleration and deceleration schedules are written in.

Equations and component-matching arguments: Saravanamuttoo, Rogers, Cohen, Straznicky,
Gas Turbine Theory (7th ed.), ch. 9-10 (choked turbines fix the HPT operating point; the
working line shifts in transients); Walsh & Fletcher, Gas Turbine Performance (surge margin
definition at constant corrected flow); Jaw & Mattingly, Aircraft Engine Controls (2009),
ch. 3-4 (spool dynamics, min/max-select limit protection, Wf/Ps3 schedules); Kurzke,
GasTurb (map shapes). Sensor names follow NASA C-MAPSS (Frederick, DeCastro, Litt 2007) and
the health model its degradation data sets (Saxena, Goebel, Simon, Eklund 2008): each of the
fan, HPC and HPT loses efficiency and flow capacity (HPT: gains it, by erosion) as
    loss(c) = w0 + r d_eol (exp(2 c / 300) - 1) / (exp(2) - 1)
with initial wear w0 and rate r drawn per engine unit (by its seed). Temperatures are in K
(C-MAPSS uses degR), pressures in kPa, speeds in rpm, thrust in kN, fuel in kg/s, and
phi = Wf / Ps30 in (g/s)/kPa.

Limits (hard, on the true state): T50 (LPT exit total temperature, the EGT proxy) at most
930 K, fan overspeed Nf <= 5250 rpm (105 %), core overspeed Nc <= 15100 rpm (104 %), HPC
surge margin SM_hpc >= 10 %, and lean blow-out phi >= 0.15 (g/s)/kPa (a deceleration that
cuts fuel faster than the compressor delivery pressure falls flames the combustor out).
SM_hpc is an estimate (a real FADEC computes it from its on-board model); phi is the variable
real acceleration/deceleration schedules use. Fuel: 0.18-1.6 kg/s, slewing at most 0.5 kg/s
per second (0.1 kg/s per sample).

Timing: the sample period is 0.2 s, one RK4 step per sample (the dynamics' time constants
are 0.3-2.1 s for the fast, mostly core mode and 1.0-4.3 s for the slow, mostly fan mode
across the envelope 0-10000 m, Mach 0-0.8, ISA -15..+20 K within the limits; slowest at
altitude and idle). A measurement at sample k sees the state x_k with the fuel held over the
previous interval; the fuel chosen at k is held until k+1. Because the gas path responds to
fuel at once, the true state is scored at both ends of each interval.

Control: the baseline (`FuelControl`) is a PI on the thrust estimate with min-select limit
regulators (surge margin, T50, fan and core overspeed) and a max-select lean blow-out floor,
as engine controls are built. The oracle (`OracleNMPC`) is a multiple-shooting NMPC on these
very equations with the true state, health and flight condition. Episodes score
sum ((Fn - demand) / 10 kN)^2 + 0.05 (dWf / 0.1 kg/s)^2 on the true thrust, count samples
beyond any hard limit, and report the fuel burned.
"""

from __future__ import annotations

from .episode import (
    EPISODE_SUMMARY,
    TRAINING_RECIPE,
    Policy,
    _excess,
    baseline_fallback,
    baseline_policy,
    episode_metrics,
    fadec_fallback,
    fadec_policy,
    fadec_protection,
    limit_protection,
    oracle_policy,
    protected_oracle_policy,
    run_episode,
    twin_policy,
)
from .fadec import (
    FN_KP,
    FN_TI_S,
    NC_CONTROL_RPM,
    NF_CONTROL_RPM,
    PHI_CONTROL,
    SM_CONTROL_PCT,
    SM_PER_LOG_FUEL,
    SPEED_KP,
    SPEED_TI_S,
    T50_CONTROL_K,
    T50_PER_LOG_FUEL,
    FuelControl,
)
from .gas_path import (
    BURNER_LOSS,
    BYPASS_DUCT_LOSS,
    CP_AIR,
    CP_GAS,
    CYCLE_END_OF_LIFE,
    DEGRADATION_CURVATURE,
    DESIGN,
    END_OF_LIFE_LOSS,
    ETA_BURNER,
    ETA_FAN_DESIGN,
    ETA_HPC_DESIGN,
    ETA_HPT,
    ETA_LPC_DESIGN,
    ETA_LPT,
    ETA_MECH,
    FIXED_POINT_PASSES,
    FUEL_LHV,
    GAMMA_AIR,
    GAMMA_GAS,
    HP_OFFTAKE_W,
    J_HP_KG_M2,
    J_LP_KG_M2,
    KAPPA_AIR,
    KAPPA_GAS,
    N1_DESIGN_RPM,
    N2_DESIGN_RPM,
    NC_MAX_RPM,
    NEW_ENGINE,
    NF_MAX_RPM,
    NOZZLE_CV,
    P_STD_PA,
    PHI_MIN,
    PR_FAN_DESIGN,
    PR_HPC_DESIGN,
    PR_LPC_DESIGN,
    PR_SURGE_DESIGN,
    PS30_OVER_P30,
    R_GAS,
    RAM_RECOVERY,
    RATE_PER_SAMPLE,
    RK4_SUBSTEPS,
    RPM_TO_RAD,
    SAMPLE_PERIOD_S,
    SEA_LEVEL_STATIC,
    SM_MIN_PCT,
    SURGE_LINE_PER_EFF_LOSS,
    T4_DESIGN_K,
    T50_MAX_K,
    T_STD_K,
    W2_DESIGN,
    W25_DESIGN,
    WF_HIGH,
    WF_LOW,
    WF_RATE_KG_PER_S2,
    Design,
    Flight,
    GasPath,
    Health,
    Scalar,
    derivatives,
    gas_path,
    health_at,
    rk4_step,
    sensors,
    steady_state,
    trim_fuel,
)
from .oracle import FN_SCALE_KN, MOVE_WEIGHT, N_SCALE, OracleNMPC
from .plant import LIMITS, NOISE_STD, SPEC, TurbofanSimulator
from .training import (
    ALT_MAX_M,
    BENCHMARK_CASES,
    CLIMB_RATE_M_PER_S,
    DT_ISA_RANGE_K,
    DT_ISA_RATE_K_PER_S,
    FLIGHT_SEGMENT_S,
    MACH_RATE_PER_S,
    SEGMENT_GAP_S,
    Scenario,
    benchmark_scenario,
    generate_training_log,
    mach_range,
    thrust_available_kn,
)

__all__ = [
    "BURNER_LOSS",
    "BYPASS_DUCT_LOSS",
    "CP_AIR",
    "CP_GAS",
    "CYCLE_END_OF_LIFE",
    "DEGRADATION_CURVATURE",
    "DESIGN",
    "Design",
    "END_OF_LIFE_LOSS",
    "ETA_BURNER",
    "ETA_FAN_DESIGN",
    "ETA_HPC_DESIGN",
    "ETA_HPT",
    "ETA_LPC_DESIGN",
    "ETA_LPT",
    "ETA_MECH",
    "FIXED_POINT_PASSES",
    "FUEL_LHV",
    "Flight",
    "GAMMA_AIR",
    "GAMMA_GAS",
    "GasPath",
    "HP_OFFTAKE_W",
    "Health",
    "J_HP_KG_M2",
    "J_LP_KG_M2",
    "KAPPA_AIR",
    "KAPPA_GAS",
    "N1_DESIGN_RPM",
    "N2_DESIGN_RPM",
    "NC_MAX_RPM",
    "NEW_ENGINE",
    "NF_MAX_RPM",
    "NOZZLE_CV",
    "PHI_MIN",
    "PR_FAN_DESIGN",
    "PR_HPC_DESIGN",
    "PR_LPC_DESIGN",
    "PR_SURGE_DESIGN",
    "PS30_OVER_P30",
    "P_STD_PA",
    "RAM_RECOVERY",
    "RATE_PER_SAMPLE",
    "RK4_SUBSTEPS",
    "RPM_TO_RAD",
    "R_GAS",
    "SAMPLE_PERIOD_S",
    "SEA_LEVEL_STATIC",
    "SM_MIN_PCT",
    "SURGE_LINE_PER_EFF_LOSS",
    "Scalar",
    "T4_DESIGN_K",
    "T50_MAX_K",
    "T_STD_K",
    "W25_DESIGN",
    "W2_DESIGN",
    "WF_HIGH",
    "WF_LOW",
    "WF_RATE_KG_PER_S2",
    "derivatives",
    "gas_path",
    "health_at",
    "rk4_step",
    "sensors",
    "steady_state",
    "trim_fuel",
    "LIMITS",
    "NOISE_STD",
    "SPEC",
    "TurbofanSimulator",
    "FN_KP",
    "FN_TI_S",
    "FuelControl",
    "NC_CONTROL_RPM",
    "NF_CONTROL_RPM",
    "PHI_CONTROL",
    "SM_CONTROL_PCT",
    "SM_PER_LOG_FUEL",
    "SPEED_KP",
    "SPEED_TI_S",
    "T50_CONTROL_K",
    "T50_PER_LOG_FUEL",
    "FN_SCALE_KN",
    "MOVE_WEIGHT",
    "N_SCALE",
    "OracleNMPC",
    "ALT_MAX_M",
    "BENCHMARK_CASES",
    "CLIMB_RATE_M_PER_S",
    "DT_ISA_RANGE_K",
    "DT_ISA_RATE_K_PER_S",
    "FLIGHT_SEGMENT_S",
    "MACH_RATE_PER_S",
    "SEGMENT_GAP_S",
    "Scenario",
    "benchmark_scenario",
    "generate_training_log",
    "mach_range",
    "thrust_available_kn",
    "EPISODE_SUMMARY",
    "Policy",
    "TRAINING_RECIPE",
    "baseline_fallback",
    "baseline_policy",
    "episode_metrics",
    "fadec_fallback",
    "fadec_policy",
    "fadec_protection",
    "limit_protection",
    "oracle_policy",
    "protected_oracle_policy",
    "run_episode",
    "twin_policy",
    "_excess",
]
