"""Tennessee Eastman process (Downs & Vogel 1993), revised model, simulated by tep-studio.

The plant: two exothermic gas-liquid reactions make products G and H from gaseous feeds
A, C, D and E (B is an inert), with a by-product F from two side reactions:

    A(g) + C(g) + D(g) -> G(liq)        A(g) + C(g) + E(g) -> H(liq)
    A(g) + E(g)        -> F(liq)        3 D(g)             -> 2 F(liq)

through a reactor, a condenser, a vapour-liquid separator, a recycle compressor and a
product stripper. The model is J. J. Downs & E. F. Vogel, "A plant-wide industrial
process control problem", Comput. Chem. Eng. 17(3), 245-255, 1993, in the revision of
A. Bathelt, N. L. Ricker & M. Jelali, "Revision of the Tennessee Eastman process model",
IFAC-PapersOnLine 48(8), 2015 (`temexd_mod`), which tep-studio (PyPI `tep-studio`,
written against 0.2.0) compiles and integrates by fixed-step RK4 at 0.0005 h. The
plant is open-loop unstable: at the base-case valve positions it trips within hours.

Tags (names are tep-studio's schema names, so one vocabulary serves both packages; the
description starts with the Downs & Vogel number):
  sensors    XMEAS(1)-XMEAS(41), in the units the simulator reports: kscmh, kg/h, m³/h,
             kPa gauge, %, °C, kW, mol %.
  actuators  XMV(1)-XMV(12), valve positions and agitator speed in % (0-100).
  No measured disturbances: IDV(1)-IDV(20) are unmeasured faults, switched on inside an
  episode (`run_episode(idv=...)`), never tags.

Hard sensor limits are the plant's shutdown interlocks (Downs & Vogel Table 5), in the
sensors' own units: reactor pressure above 3000 kPa gauge, reactor temperature above
175 °C, and liquid volumes outside 2-24 m³ (reactor), 1-12 m³ (separator), 1-8 m³
(stripper). The model converts volume V [ft³] to the level reading by
level % = (V - offset) / span * 100 (reactor 84.6 / 666.7 ft³, separator 27.5 / 290,
stripper 78.25 / 156.5), so the interlocks sit at reactor -2.10 % / 114.4 %, separator
2.69 % / 136.6 %, stripper -27.4 % / 130.5 % (not 0 / 100 %).

Sample period 36 s (0.01 h): Ricker's decentralised PI scheme, designed at 1.8 s, still
holds the plant at 36 s under every IDV but the A-feed loss; at 60 s its reactor-
temperature loop limit-cycles. The analyzer periods are whole multiples of 36 s, so every
analyzer update lands on a sample. Analyzers: XMEAS(23)-(36) refresh every 0.1 h with
0.1 h dead time, XMEAS(37)-(41) every 0.25 h with 0.25 h dead time; the log and the
episode measurements show the last reading held between refreshes (the staircase a plant
historian stores), never a gap.

Measurement noise: the kernel runs noise-free (structure flag bit 4) so the true state is
always known for scoring; this module adds Gaussian noise with the model's own standard
deviations (`NOISE_STD`, from temexd_mod), fresh every sample for XMEAS(1)-(22) and once
per analyzer refresh, then held, for XMEAS(23)-(41). Everything is seeded.

Actuator rate limit 0.25 %/s (9 % per sample). The valves themselves are fast (first-
order lags of 5-9 s, the steam valve 120 s), so this is an operating limit, not a
physical one: it lets through every move the PI baseline makes under IDV(1)-IDV(20)
except the largest noise-driven kicks of XMV(11) (the reactor-level -> separator-
temperature cascade passes level noise to the condenser valve: about 2 % per sample on
average, up to 9 %; every other valve moves less than 1 % per sample), and it keeps a
twin's moves on an open-loop-unstable plant within the size the logs show.

Baseline: Ricker's decentralised multiloop PI (N. L. Ricker, "Decentralized control of the
Tennessee Eastman challenge process", J. Process Control 6(4), 205-221, 1996) as
tep-studio ships it (`RickerMultiLoopController`, Mode 1, with its high-pressure and
high-level overrides), run once per 36 s sample. Its outer loops give the controlled
sensors: production rate (stripper underflow, XMEAS 17), reactor pressure, reactor level,
reactor temperature, separator level, stripper level and %G in product (XMEAS 40; in
tep-studio the %G setpoint sets the D/E feed ratios by feedforward, its feedback trim is
off). Episode setpoints are the base case. The reactor-feed composition targets yA and
yAC of the scheme stay at their base-case values, and the three valves the scheme does
not use (compressor recycle, stripper steam, agitator) stay where they are.
As the twin's fallback the same scheme takes over bumplessly (`TrackingRicker`): its
first call starts every loop from the plant as it is; later takeovers re-seed only the
valve loops and keep the cascade targets and the hand-set valves where the baseline left
them (see there why).

Excitation (`generate_training_log`): the baseline in closed loop on APRBS setpoints
around the base case (`SETPOINT_RANGES`, 1-4 h holds), with APRBS offsets on every valve
(3-24 min holds, +-3 %, the unused valves +-8-10 %) and 0.3 % dither on top of its
output. The scheme's level loops take ~10 h to settle, so a supervisory guard of the
logging rig stops the excitation and returns the setpoints to the base case long before
a trip (`GUARD_BANDS`); see `generate_training_log` for how close the logs come.

Oracle: none (`oracle_policy()` returns None). An NMPC on the true model would need the
50-state C kernel in CasADi, which is not feasible here; tep-studio's optimisation
adapter only offers finite-difference rollouts, far too slow for an online oracle.

Episodes score the true (noise-free) state: "cost" is the mean operating cost in $/h
over the samples the plant ran, as the model computes it from its internal values
(Downs & Vogel's operating cost, 170.6 $/h at the published base case). A shutdown ends
the episode; it shows as "shutdown" = 1 and in "violations" (a shut-down episode's mean
cost covers fewer hours and is not comparable: read shutdown and violations first).
"""

from __future__ import annotations

from .baseline import RickerBaseline, TrackingRicker, controller_setpoints
from .episode import (
    BENCHMARK_CASES,
    EPISODE_HOURS,
    EPISODE_SUMMARY,
    IDV_START_H,
    TRAINING_RECIPE,
    Policy,
    baseline_fallback,
    baseline_policy,
    episode_metrics,
    oracle_policy,
    run_episode,
    twin_policy,
)
from .plant import (
    BASE_MV,
    BASE_SETPOINTS,
    BASE_YA,
    BASE_YAC,
    DEFAULT_KERNEL_SEED,
    FIRST_ANALYZER,
    FT3_PER_M3,
    HARD_LIMITS,
    KERNEL_FLAGS,
    MANIPULATED,
    MEAS_INDEX,
    MEASUREMENTS,
    MV_HIGH,
    MV_INDEX,
    MV_LOW,
    MV_NAMES,
    MV_RATE_PCT_PER_S,
    N_IDV,
    NOISE_STD,
    RATE_PER_SAMPLE,
    REACTOR_LEVEL_HIGH,
    REACTOR_LEVEL_LOW,
    REACTOR_PRESSURE_HIGH_KPA,
    REACTOR_TEMPERATURE_HIGH_C,
    SAMPLE_PERIOD_H,
    SAMPLE_PERIOD_S,
    SENSOR_NAMES,
    SEPARATOR_LEVEL_HIGH,
    SEPARATOR_LEVEL_LOW,
    SETPOINT_FIELDS,
    SPEC,
    STRIPPER_LEVEL_HIGH,
    STRIPPER_LEVEL_LOW,
    TAG_COLUMNS,
    TEPPlant,
    idv_vector,
)
from .training import (
    DITHER_PCT,
    GUARD_BANDS,
    GUARD_HOLD,
    MV_OFFSET_PCT,
    OFFSET_HOLD,
    SETPOINT_HOLD,
    SETPOINT_RANGES,
    generate_training_log,
)

__all__ = [
    "BASE_MV",
    "BASE_SETPOINTS",
    "BASE_YA",
    "BASE_YAC",
    "DEFAULT_KERNEL_SEED",
    "FIRST_ANALYZER",
    "FT3_PER_M3",
    "HARD_LIMITS",
    "KERNEL_FLAGS",
    "MANIPULATED",
    "MEASUREMENTS",
    "MEAS_INDEX",
    "MV_HIGH",
    "MV_INDEX",
    "MV_LOW",
    "MV_NAMES",
    "MV_RATE_PCT_PER_S",
    "NOISE_STD",
    "N_IDV",
    "RATE_PER_SAMPLE",
    "REACTOR_LEVEL_HIGH",
    "REACTOR_LEVEL_LOW",
    "REACTOR_PRESSURE_HIGH_KPA",
    "REACTOR_TEMPERATURE_HIGH_C",
    "SAMPLE_PERIOD_H",
    "SAMPLE_PERIOD_S",
    "SENSOR_NAMES",
    "SEPARATOR_LEVEL_HIGH",
    "SEPARATOR_LEVEL_LOW",
    "SETPOINT_FIELDS",
    "SPEC",
    "STRIPPER_LEVEL_HIGH",
    "STRIPPER_LEVEL_LOW",
    "TAG_COLUMNS",
    "TEPPlant",
    "idv_vector",
    "RickerBaseline",
    "TrackingRicker",
    "controller_setpoints",
    "DITHER_PCT",
    "GUARD_BANDS",
    "GUARD_HOLD",
    "MV_OFFSET_PCT",
    "OFFSET_HOLD",
    "SETPOINT_HOLD",
    "SETPOINT_RANGES",
    "generate_training_log",
    "BENCHMARK_CASES",
    "EPISODE_HOURS",
    "EPISODE_SUMMARY",
    "IDV_START_H",
    "Policy",
    "TRAINING_RECIPE",
    "baseline_fallback",
    "baseline_policy",
    "episode_metrics",
    "oracle_policy",
    "run_episode",
    "twin_policy",
]
