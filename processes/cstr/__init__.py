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

from .controllers import (
    OracleNMPC,
    PIController,
    Scenario,
    benchmark_scenario,
    generate_training_log,
)
from .episode import (
    EPISODE_SUMMARY,
    MOVE_WEIGHT,
    TRACKING_SCALE_K,
    TRAINING_RECIPE,
    Policy,
    baseline_fallback,
    baseline_policy,
    episode_metrics,
    oracle_policy,
    pi_fallback,
    pi_policy,
    run_episode,
    twin_policy,
)
from .model import (
    CAF_NOMINAL,
    CP_J_PER_G_K,
    DELTA_H_J_PER_MOL,
    E_OVER_R_K,
    K0_PER_MIN,
    NOISE_CA,
    NOISE_T,
    Q_L_PER_MIN,
    RATE_PER_SAMPLE,
    RHO_G_PER_L,
    RK4_SUBSTEPS,
    SAMPLE_PERIOD_S,
    SPEC,
    T_LIMIT_K,
    TC_HIGH,
    TC_LOW,
    TC_NOMINAL,
    TC_RATE_K_PER_S,
    TF_NOMINAL,
    UA_J_PER_MIN_K,
    VOLUME_L,
    CSTRSimulator,
    Disturbances,
    derivatives,
    rk4_step,
    steady_state,
)

__all__ = [
    "CAF_NOMINAL",
    "CP_J_PER_G_K",
    "CSTRSimulator",
    "DELTA_H_J_PER_MOL",
    "Disturbances",
    "E_OVER_R_K",
    "K0_PER_MIN",
    "NOISE_CA",
    "NOISE_T",
    "Q_L_PER_MIN",
    "RATE_PER_SAMPLE",
    "RHO_G_PER_L",
    "RK4_SUBSTEPS",
    "SAMPLE_PERIOD_S",
    "SPEC",
    "TC_HIGH",
    "TC_LOW",
    "TC_NOMINAL",
    "TC_RATE_K_PER_S",
    "TF_NOMINAL",
    "T_LIMIT_K",
    "UA_J_PER_MIN_K",
    "VOLUME_L",
    "derivatives",
    "rk4_step",
    "steady_state",
    "OracleNMPC",
    "PIController",
    "Scenario",
    "benchmark_scenario",
    "generate_training_log",
    "EPISODE_SUMMARY",
    "MOVE_WEIGHT",
    "Policy",
    "TRACKING_SCALE_K",
    "TRAINING_RECIPE",
    "baseline_fallback",
    "baseline_policy",
    "episode_metrics",
    "oracle_policy",
    "pi_fallback",
    "pi_policy",
    "run_episode",
    "twin_policy",
]
