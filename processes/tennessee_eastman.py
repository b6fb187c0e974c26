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

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from rich.progress import track
from tep_studio import TennesseeEastmanProcess
from tep_studio.control import ControllerSetpoints, RickerMultiLoopController
from tep_studio.control.loops import RickerRegistry

from twin.records import EpisodeResult, EventKind, SafetyEvent, StepRecord
from twin.safety import Fallback
from twin.spec import ControlWeights, ProcessSpec, Tag, TagRole

from .base import (
    CONTROLLER_ROWS,
    Controller,
    SummaryRow,
    TrainingRecipe,
    aprbs_levels,
    plan_time_metrics,
    rate_clip,
)

SAMPLE_PERIOD_S = 36.0
SAMPLE_PERIOD_H = SAMPLE_PERIOD_S / 3600.0
MV_LOW, MV_HIGH = 0.0, 100.0
MV_RATE_PCT_PER_S = 0.25
RATE_PER_SAMPLE = MV_RATE_PCT_PER_S * SAMPLE_PERIOD_S
N_IDV = 28  # IDV(1)-(20) of Downs & Vogel plus (21)-(28) of the revised model
KERNEL_FLAGS = 0x1F  # bits 0-3: monitor outputs (the cost); bit 4: no kernel noise
DEFAULT_KERNEL_SEED = 1431655765  # the model's own default seed (0x55555555)

# -- hard limits: the shutdown interlocks, converted to the level readings ----------------
FT3_PER_M3 = 35.3145


def _level_pct(volume_m3: float, offset_ft3: float, span_ft3: float) -> float:
    """The level reading (%) the model shows for a liquid volume (XMEAS 8, 12, 15)."""
    return (volume_m3 * FT3_PER_M3 - offset_ft3) / span_ft3 * 100.0


REACTOR_PRESSURE_HIGH_KPA = 3000.0
REACTOR_TEMPERATURE_HIGH_C = 175.0
REACTOR_LEVEL_LOW, REACTOR_LEVEL_HIGH = _level_pct(2.0, 84.6, 666.7), _level_pct(24.0, 84.6, 666.7)
SEPARATOR_LEVEL_LOW, SEPARATOR_LEVEL_HIGH = (_level_pct(1.0, 27.5, 290.0),
                                             _level_pct(12.0, 27.5, 290.0))
STRIPPER_LEVEL_LOW, STRIPPER_LEVEL_HIGH = (_level_pct(1.0, 78.25, 156.5),
                                           _level_pct(8.0, 78.25, 156.5))

HARD_LIMITS: dict[str, tuple[float | None, float | None]] = {
    "reactor_pressure": (None, REACTOR_PRESSURE_HIGH_KPA),
    "reactor_level": (REACTOR_LEVEL_LOW, REACTOR_LEVEL_HIGH),
    "reactor_temperature": (None, REACTOR_TEMPERATURE_HIGH_C),
    "separator_level": (SEPARATOR_LEVEL_LOW, SEPARATOR_LEVEL_HIGH),
    "stripper_level": (STRIPPER_LEVEL_LOW, STRIPPER_LEVEL_HIGH),
}

# -- the 41 measurements: (tep-studio name, unit, description, Downs & Vogel base case) --
MEASUREMENTS: tuple[tuple[str, str, str, float], ...] = (
    ("feed_A_flow", "kscmh", "XMEAS(1) A feed (stream 1)", 0.25052),
    ("feed_D_flow", "kg/h", "XMEAS(2) D feed (stream 2)", 3664.0),
    ("feed_E_flow", "kg/h", "XMEAS(3) E feed (stream 3)", 4509.3),
    ("feed_AC_flow", "kscmh", "XMEAS(4) A and C feed (stream 4)", 9.3477),
    ("recycle_flow", "kscmh", "XMEAS(5) recycle flow (stream 8)", 26.902),
    ("reactor_feed_flow", "kscmh", "XMEAS(6) reactor feed rate (stream 6)", 42.339),
    ("reactor_pressure", "kPa gauge", "XMEAS(7) reactor pressure; shutdown above 3000",
     2705.0),
    ("reactor_level", "%", "XMEAS(8) reactor level; shutdown outside 2-24 m³", 75.0),
    ("reactor_temperature", "°C", "XMEAS(9) reactor temperature; shutdown above 175",
     120.40),
    ("purge_flow", "kscmh", "XMEAS(10) purge rate (stream 9)", 0.33712),
    ("separator_temperature", "°C", "XMEAS(11) product separator temperature", 80.109),
    ("separator_level", "%", "XMEAS(12) product separator level; shutdown outside 1-12 m³",
     50.0),
    ("separator_pressure", "kPa gauge", "XMEAS(13) product separator pressure", 2633.7),
    ("separator_underflow", "m³/h", "XMEAS(14) separator underflow (stream 10)", 25.160),
    ("stripper_level", "%", "XMEAS(15) stripper level; shutdown outside 1-8 m³", 50.0),
    ("stripper_pressure", "kPa gauge", "XMEAS(16) stripper pressure", 3102.2),
    ("stripper_underflow", "m³/h", "XMEAS(17) stripper underflow (stream 11): production",
     22.949),
    ("stripper_temperature", "°C", "XMEAS(18) stripper temperature", 65.731),
    ("stripper_steam_flow", "kg/h", "XMEAS(19) stripper steam flow", 230.31),
    ("compressor_work", "kW", "XMEAS(20) compressor work", 341.43),
    ("reactor_cooling_water_outlet_temperature_meas", "°C",
     "XMEAS(21) reactor cooling water outlet temperature", 94.599),
    ("condenser_cooling_water_outlet_temperature", "°C",
     "XMEAS(22) separator (condenser) cooling water outlet temperature", 77.297),
    ("reactor_feed_A_concentration", "mol %", "XMEAS(23) A in reactor feed (0.1 h analyzer)",
     32.188),
    ("reactor_feed_B_concentration", "mol %", "XMEAS(24) B in reactor feed (0.1 h analyzer)",
     8.8933),
    ("reactor_feed_C_concentration", "mol %", "XMEAS(25) C in reactor feed (0.1 h analyzer)",
     26.383),
    ("reactor_feed_D_concentration", "mol %", "XMEAS(26) D in reactor feed (0.1 h analyzer)",
     6.8820),
    ("reactor_feed_E_concentration", "mol %", "XMEAS(27) E in reactor feed (0.1 h analyzer)",
     18.776),
    ("reactor_feed_F_concentration", "mol %", "XMEAS(28) F in reactor feed (0.1 h analyzer)",
     1.6567),
    ("purge_A_concentration", "mol %", "XMEAS(29) A in purge (0.1 h analyzer)", 32.958),
    ("purge_B_concentration", "mol %", "XMEAS(30) B in purge (0.1 h analyzer)", 13.823),
    ("purge_C_concentration", "mol %", "XMEAS(31) C in purge (0.1 h analyzer)", 23.978),
    ("purge_D_concentration", "mol %", "XMEAS(32) D in purge (0.1 h analyzer)", 1.2565),
    ("purge_E_concentration", "mol %", "XMEAS(33) E in purge (0.1 h analyzer)", 18.579),
    ("purge_F_concentration", "mol %", "XMEAS(34) F in purge (0.1 h analyzer)", 2.2633),
    ("purge_G_concentration", "mol %", "XMEAS(35) G in purge (0.1 h analyzer)", 4.8436),
    ("purge_H_concentration", "mol %", "XMEAS(36) H in purge (0.1 h analyzer)", 2.2986),
    ("stripper_underflow_D_concentration", "mol %",
     "XMEAS(37) D in product (0.25 h analyzer)", 0.01787),
    ("stripper_underflow_E_concentration", "mol %",
     "XMEAS(38) E in product (0.25 h analyzer)", 0.83570),
    ("stripper_underflow_F_concentration", "mol %",
     "XMEAS(39) F in product (0.25 h analyzer)", 0.09858),
    ("stripper_underflow_G_concentration", "mol %",
     "XMEAS(40) G in product (0.25 h analyzer)", 53.724),
    ("stripper_underflow_H_concentration", "mol %",
     "XMEAS(41) H in product (0.25 h analyzer)", 43.828),
)

# Standard deviations of the measurement noise, XMEAS(1)-(41) (temexd_mod `xns`).
NOISE_STD = np.array([
    0.0012, 18.0, 22.0, 0.05, 0.2, 0.21, 0.3, 0.5, 0.01, 0.0017, 0.01, 1.0, 0.3, 0.125, 1.0,
    0.3, 0.115, 0.01, 1.15, 0.2, 0.01, 0.01,
    0.25, 0.1, 0.25, 0.1, 0.25, 0.025, 0.25, 0.1, 0.25, 0.1, 0.25, 0.025, 0.05, 0.05,
    0.01, 0.01, 0.01, 0.5, 0.5,
])
FIRST_ANALYZER = 22  # XMEAS(23), 0-based

# -- the 12 manipulated variables: (tep-studio name, description, base case %) ----------
MANIPULATED: tuple[tuple[str, str, float], ...] = (
    ("d_feed_valve", "XMV(1) D feed flow valve (stream 2)", 63.053),
    ("e_feed_valve", "XMV(2) E feed flow valve (stream 3)", 53.980),
    ("a_feed_valve", "XMV(3) A feed flow valve (stream 1)", 24.644),
    ("ac_feed_valve", "XMV(4) A and C feed flow valve (stream 4)", 61.302),
    ("compressor_recycle_valve", "XMV(5) compressor recycle valve", 22.210),
    ("purge_valve", "XMV(6) purge valve (stream 9)", 40.064),
    ("separator_underflow_valve", "XMV(7) separator pot liquid flow valve (stream 10)",
     38.100),
    ("stripper_underflow_valve", "XMV(8) stripper liquid product flow valve (stream 11)",
     46.534),
    ("stripper_steam_valve", "XMV(9) stripper steam valve", 47.446),
    ("reactor_cooling_water_valve", "XMV(10) reactor cooling water flow valve", 41.106),
    ("separator_cooling_water_valve", "XMV(11) condenser cooling water flow valve", 18.114),
    ("reactor_agitator_speed", "XMV(12) reactor agitator speed", 50.0),
)

SENSOR_NAMES = tuple(m[0] for m in MEASUREMENTS)
MV_NAMES = tuple(m[0] for m in MANIPULATED)
MEAS_INDEX = {name: i for i, name in enumerate(SENSOR_NAMES)}
MV_INDEX = {name: i for i, name in enumerate(MV_NAMES)}
BASE_MV = np.array([m[2] for m in MANIPULATED])

# Controlled sensor -> the ControllerSetpoints field of Ricker's scheme it sets.
SETPOINT_FIELDS: dict[str, str] = {
    "stripper_underflow": "production_rate",
    "reactor_pressure": "reactor_pressure",
    "reactor_level": "reactor_level",
    "reactor_temperature": "reactor_temperature",
    "separator_level": "separator_level",
    "stripper_level": "stripper_level",
    "stripper_underflow_G_concentration": "pct_g",
}
BASE_SETPOINTS: dict[str, float] = {
    name: base for name, _, _, base in MEASUREMENTS if name in SETPOINT_FIELDS
}
"""Downs & Vogel base case: production 22.949 m³/h, 2705 kPa, 75 %, 120.4 °C, 50 %, 50 %,
53.724 mol % G."""

# Reactor-feed targets of Ricker's yA / yAC loops from the base-case XMEAS(23) and (25):
# yA = 100 A / (A + C) mol %, yAC = A + C mol %.
BASE_YA = 100.0 * 32.188 / (32.188 + 26.383)
BASE_YAC = 32.188 + 26.383


def _sensor_tag(name: str, unit: str, description: str, base: float) -> Tag:
    low, high = HARD_LIMITS.get(name, (None, None))
    return Tag(name=name, role=TagRole.SENSOR, unit=unit, low=low, high=high, nominal=base,
               controlled=name in SETPOINT_FIELDS, description=description)


def _actuator_tag(name: str, description: str, base: float) -> Tag:
    return Tag(name=name, role=TagRole.ACTUATOR, unit="%", low=MV_LOW, high=MV_HIGH,
               rate_limit=MV_RATE_PCT_PER_S, nominal=base, description=description)


SPEC = ProcessSpec(
    name="tennessee_eastman",
    description="Tennessee Eastman challenge process (Downs & Vogel 1993, revised model): "
                "41 measurements, 12 valves; open-loop unstable, trips on its interlocks.",
    sample_period_s=SAMPLE_PERIOD_S,
    timestamp_column="time_s",
    tags=tuple(_sensor_tag(*m) for m in MEASUREMENTS)
    + tuple(_actuator_tag(*m) for m in MANIPULATED),
    # the committed figures were measured on the embedding distance alone; the default
    # tracking weight is not yet measured here
    control=ControlWeights(tracking_weight=0.0),
)

TAG_COLUMNS = tuple(t.name for t in SPEC.tags)


def idv_vector(idv: int | Sequence[int] | None) -> np.ndarray:
    """The kernel's 28-element activation vector for IDV number(s), 1-based."""
    numbers = () if idv is None else (idv,) if isinstance(idv, int) else tuple(idv)
    vector = np.zeros(N_IDV)
    for number in numbers:
        if not 1 <= int(number) <= N_IDV:
            raise ValueError(f"IDV({number}) does not exist: choose 1-20 (Downs & Vogel) "
                             f"or 21-{N_IDV} (revised model)")
        vector[int(number) - 1] = 1.0
    return vector


def _kernel_seed(seed: int) -> float:
    # the model's generator is g <- 9228907 g mod 2^32: an odd seed never reaches 0
    return float((DEFAULT_KERNEL_SEED + 2 * seed) % 2**32)


class TEPPlant:
    """The plant: tep-studio's noise-free kernel plus seeded measurement noise.

    `step` applies the 12 MVs for one 36 s sample. `true_measurements` is the noise-free
    XMEAS vector (what scoring uses); `measure()` what the instruments show.
    """

    def __init__(self, seed: int = 0, noise: bool = True) -> None:
        self.seed, self.noise = seed, noise
        self.rng = np.random.default_rng(seed)
        self.sim = TennesseeEastmanProcess(ms_flag=KERNEL_FLAGS)
        true, info = self.sim.reset(seed=_kernel_seed(seed))
        self.idv = np.zeros(N_IDV)
        self.samples = 0
        self.shutdown = ""  # the interlock's message once the plant has tripped
        self.mv = np.array(self.sim.state[38:50], dtype=float)  # the base-case valves
        self.cost_per_h = float(info["objective_terms"]["operating_cost_internal_per_hour"])
        self.true_measurements = np.array(true, dtype=float)
        self._analyzer_noise = self._draw(slice(FIRST_ANALYZER, None))
        self._measured = self._with_noise(self.true_measurements, self.true_measurements)

    @property
    def time_s(self) -> float:
        return self.samples * SAMPLE_PERIOD_S

    def _draw(self, part: slice) -> np.ndarray:
        if not self.noise:
            return np.zeros_like(NOISE_STD[part])
        return NOISE_STD[part] * self.rng.standard_normal(NOISE_STD[part].shape)

    def _with_noise(self, true: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Fresh noise on the continuous instruments; analyzers get new noise per reading."""
        measured = true.copy()
        measured[:FIRST_ANALYZER] += self._draw(slice(None, FIRST_ANALYZER))
        fresh = self._draw(slice(FIRST_ANALYZER, None))
        refreshed = true[FIRST_ANALYZER:] != before[FIRST_ANALYZER:]
        self._analyzer_noise = np.where(refreshed, fresh, self._analyzer_noise)
        measured[FIRST_ANALYZER:] += self._analyzer_noise
        return measured

    def measure(self) -> dict[str, float]:
        return dict(zip(SENSOR_NAMES, map(float, self._measured), strict=True))

    def step(self, mv: Sequence[float] | np.ndarray) -> dict[str, float]:
        if self.shutdown:
            raise RuntimeError(f"the plant has shut down ({self.shutdown})")
        self.mv = np.clip(np.asarray(mv, dtype=float), MV_LOW, MV_HIGH)
        result = self.sim.advance(self.mv, control_interval=SAMPLE_PERIOD_H,
                                  disturbances=self.idv)
        before, self.true_measurements = self.true_measurements, result.measurements.copy()
        self.samples += 1
        self.cost_per_h = float(result.objective_terms["operating_cost_internal_per_hour"])
        if result.shutdown_status["terminated"]:
            self.shutdown = result.shutdown_status["message"].strip() or "interlock trip"
        self._measured = self._with_noise(self.true_measurements, before)
        return self.measure()


# -- the baseline: Ricker's decentralised PI as tep-studio ships it -----------------------

def controller_setpoints(setpoints: Mapping[str, float] | None = None) -> ControllerSetpoints:
    """Ricker's setpoint record from tag setpoints; tags not given keep the base case."""
    values = {**BASE_SETPOINTS, **{k: float(v) for k, v in (setpoints or {}).items()
                                   if k in SETPOINT_FIELDS}}
    return ControllerSetpoints(**{SETPOINT_FIELDS[tag]: v for tag, v in values.items()},
                               ya=BASE_YA, yac=BASE_YAC)


def _with_static_mvs(registry: RickerRegistry, static: Mapping[str, float]) -> RickerRegistry:
    """The scheme with its hand-set MVs (recycle, steam, agitator) held at `static`."""
    return dataclasses.replace(registry, nominal=dataclasses.replace(registry.nominal,
                                                                      static_mv=dict(static)))


def _ya(meas: np.ndarray) -> tuple[float, float]:
    a = float(meas[MEAS_INDEX["reactor_feed_A_concentration"]])
    c = float(meas[MEAS_INDEX["reactor_feed_C_concentration"]])
    return (100.0 * a / (a + c) if a + c else 0.0), a + c


class TrackingRicker(RickerMultiLoopController):
    """tep-studio's controller with bumpless starts and takeovers from any valve positions.

    `start` seeds every loop by back-calculation from the plant as it is: each valve
    loop's memory is the applied valve, each cascade target (flow ratios, production
    index, separator-temperature setpoint) what its inner loop measures now. `seize`
    takes the valves back after another controller moved them: only the valve loops are
    re-seeded, every cascade target stays where this controller left it, so the flows
    return smoothly to the baseline's operating point instead of adopting the other
    controller's (adopting them at every takeover lets the flows drift like a random
    walk that the slow level loops cannot catch). Either way each loop's previous error
    is its present one, so the first move is only an integral step. The hand-set valves
    (recycle, steam, agitator) are held where `start` found them. This sets tep-studio 0.2.0's loop
    memories (`_state`, `_r1`, `_r4`, `_fp`), which its public `reset` only seeds to the
    nominal operating point.
    """

    def start(self, meas: np.ndarray, applied: np.ndarray, time_h: float) -> None:
        self.hold_hand_set(meas, applied)
        self.reset(meas, time=time_h)
        reg, sp = self.registry, self.setpoints
        assert sp is not None
        m = _reader(meas)
        # the production index at which today's production has the base case's ratios
        production = reg.production
        fp_adjust = float(np.clip(reg.nominal.fp_base * (
            m("stripper_underflow") / BASE_SETPOINTS["stripper_underflow"] - 1.0),
            production.lo, production.hi))
        self._fp = fp = reg.nominal.fp_base + fp_adjust
        self._r1, self._r4 = m("feed_A_flow") / fp, m("feed_AC_flow") / fp
        outer = (  # loop, output now, setpoint, measured
            (production, fp_adjust, self._ramped_production, m("stripper_underflow")),
            (reg.reactor_level, m("separator_temperature"), sp.reactor_level,
             m("reactor_level")),
            (reg.reactor_pressure, m("purge_flow") / fp, sp.reactor_pressure,
             m("reactor_pressure")),
            (reg.separator_level, m("separator_underflow") / fp, sp.separator_level,
             m("separator_level")),
            (reg.stripper_level, m("stripper_underflow") / fp, sp.stripper_level,
             m("stripper_level")),
            (reg.pct_g, reg.nominal.eadj0, self._ramped_pct_g,
             m("stripper_underflow_G_concentration")),
        )
        for loop, output, setpoint, measured in outer:
            self._seed(self._pi[loop.name], loop.name, output, setpoint - measured, time_h)
        ya, yac = _ya(meas)
        self._state[reg.ya.name] = self._ya.initial_state(prev_error=sp.ya - ya, time=time_h)
        self._state[reg.yac.name] = self._yac.initial_state(prev_error=sp.yac - yac,
                                                            time=time_h)
        self.seize(meas, applied, time_h)

    def seize(self, meas: np.ndarray, applied: np.ndarray, time_h: float) -> None:
        """Re-seed the valve loops at `applied`; the cascade targets stay as they are, and
        so do the hand-set valves' settings: a valve the other controller moved goes back
        to where this scheme holds it (at the rate limit), as the flows return to its
        operating point. Holding it where it was left made one move of a twin on the
        stripper steam valve last for the rest of an episode."""
        reg, sp = self.registry, self.setpoints
        assert sp is not None
        m = _reader(meas)
        fp = self._fp  # the production index of the last step, overrides included
        eadj = (self._state[reg.pct_g.name].output if self.enable_pct_g_feedback
                else reg.nominal.eadj0)
        ratios = {  # as compute_action forms them
            "r1": self._r1, "r4": self._r4,
            "r2": float(np.polyval(reg.nominal.p2_coeffs, self._ramped_pct_g))
            - reg.nominal.ff_gain_d * eadj * fp,
            "r3": float(np.polyval(reg.nominal.p3_coeffs, self._ramped_pct_g))
            + reg.nominal.ff_gain_e * eadj * fp,
            "r5": self._state[reg.reactor_pressure.name].output,
            "r6": self._state[reg.separator_level.name].output,
            "r7": self._state[reg.stripper_level.name].output,
        }
        for loop in reg.feed_loops:
            self._seed(self._feed_pi[loop.name], loop.name, applied[MV_INDEX[loop.mv]],
                       ratios[loop.ratio_key] * fp - m(loop.pv), time_h)
        separator_setpoint = self._state[reg.reactor_level.name].output
        for loop, setpoint in ((reg.reactor_temperature, sp.reactor_temperature),
                               (reg.separator_temperature, separator_setpoint)):
            self._seed(self._pi[loop.name], loop.name, applied[MV_INDEX[loop.drives]],
                       setpoint - m(loop.pv), time_h)

    def hold_hand_set(self, meas: np.ndarray, applied: np.ndarray) -> None:
        """Hold the valves the scheme does not move where they are; an active override's
        cut is added back, as compute_action takes it off again."""
        static = {name: float(applied[MV_INDEX[name]]) for name in self.registry.nominal.static_mv}
        for override in self.registry.overrides:
            if (self.enable_overrides and override.enabled and override.target in static
                    and override.threshold is not None and override.gain is not None):
                excess = float(meas[MEAS_INDEX[override.trigger_pv]]) - override.threshold
                static[override.target] += override.gain * max(0.0, excess)
        self.registry = _with_static_mvs(self.registry, static)

    def hold_valves(self, applied: np.ndarray) -> None:
        """Anti-windup: the valve loops remember the valve the rate limit let through."""
        reg = self.registry
        valve_loops = [(self._feed_pi[loop.name], loop.name, loop.mv) for loop in reg.feed_loops]
        valve_loops += [(self._pi[loop.name], loop.name, loop.drives)
                        for loop in (reg.reactor_temperature, reg.separator_temperature)]
        for pi, name, mv in valve_loops:
            state = self._state[name]
            self._state[name] = dataclasses.replace(
                state, output=float(np.clip(applied[MV_INDEX[mv]], pi.lo, pi.hi)))

    def _seed(self, pi: Any, name: str, output: float, error: float, time_h: float) -> None:
        self._state[name] = pi.initial_state(float(output), prev_error=float(error),
                                             time=time_h)


def _reader(meas: np.ndarray) -> Callable[[str], float]:
    def value(name: str) -> float:
        return float(meas[MEAS_INDEX[name]])

    return value


def _moved(expected: np.ndarray, applied: np.ndarray) -> bool:
    return bool(np.any(np.abs(expected - applied) > 1e-9))


class RickerBaseline:
    """The PI scheme as one step per sample, on tag dictionaries, with its own clock.

    `act` is the baseline proper; calling the object is the twin's fallback. Both compare
    the applied valves with what they asked for last: the first call starts the loops
    from the plant as it is, valves another controller moved are seized bumplessly, a
    valve the rate limit held back is remembered (anti-windup). A missing measurement
    is replaced by its last good value; before every one has been seen, the valves hold.
    The clock advances 36 s per call: time the twin was in charge does not count.
    """

    def __init__(self, overrides: bool = True) -> None:
        self.controller = TrackingRicker(setpoints=controller_setpoints(),
                                         enable_overrides=overrides)
        self.time_h = 0.0
        self.last_raw: np.ndarray | None = None  # what the loops asked for last
        self.last_output: np.ndarray | None = None  # what they got, after the rate limit
        self.last_good: dict[str, float] = {}

    def _vector(self, meas: Mapping[str, float | None]) -> np.ndarray | None:
        """All 41 measurements, a missing one replaced by its last good value (else None)."""
        for name in SENSOR_NAMES:
            value = meas.get(name)
            if value is not None and math.isfinite(float(value)):
                self.last_good[name] = float(value)
        if len(self.last_good) < len(SENSOR_NAMES):
            return None
        return np.array([self.last_good[name] for name in SENSOR_NAMES])

    def act(self, meas: Mapping[str, float | None], setpoints: Mapping[str, float],
            applied: np.ndarray) -> np.ndarray:
        """The scheme's next valve positions, rate-limited around `applied`."""
        vector = self._vector(meas)
        if vector is None:  # nothing to act on yet: hold the valves
            self.time_h += SAMPLE_PERIOD_H
            return applied.copy()
        self.controller.setpoints = controller_setpoints(setpoints)
        if self.last_output is None:
            self.controller.start(vector, applied, self.time_h)
        elif _moved(self.last_output, applied):  # another controller moved the valves
            self.controller.seize(vector, applied, self.time_h)
        elif self.last_raw is not None and _moved(self.last_raw, applied):
            self.controller.hold_valves(applied)  # the rate limit held a valve back
        raw, _ = self.controller.compute_action(vector, time=self.time_h)
        self.time_h += SAMPLE_PERIOD_H
        out = np.array([rate_clip(float(u), float(p), RATE_PER_SAMPLE, MV_LOW, MV_HIGH)
                        for u, p in zip(raw, applied, strict=True)])
        self.last_raw, self.last_output = raw.copy(), out.copy()
        return out

    def __call__(self, meas: Mapping[str, float | None], setpoints: Mapping[str, float],
                 applied: Mapping[str, float]) -> dict[str, float]:
        previous = np.array([float(applied[name]) for name in MV_NAMES])
        return dict(zip(MV_NAMES, map(float, self.act(meas, setpoints, previous)), strict=True))


# -- excitation data ----------------------------------------------------------------------

# APRBS setpoint ranges around the base case (each inside tep-studio's safe operating
# bounds, and the pressure well below the 2900 kPa override).
SETPOINT_RANGES: dict[str, tuple[float, float]] = {
    "stripper_underflow": (22.0, 23.9),
    "reactor_pressure": (2670.0, 2760.0),
    "reactor_level": (70.0, 80.0),
    "reactor_temperature": (119.5, 121.5),
    "separator_level": (40.0, 60.0),
    "stripper_level": (40.0, 60.0),
    "stripper_underflow_G_concentration": (51.0, 56.0),
}
# APRBS offsets on each valve (%): the loops reject them, which excites the plant without
# opening a loop; the three hand-set valves (recycle, steam, agitator) move the most.
MV_OFFSET_PCT = np.array([3.0, 3.0, 3.0, 3.0, 8.0, 3.0, 3.0, 3.0, 8.0, 3.0, 3.0, 10.0])
DITHER_PCT = 0.3
SETPOINT_HOLD = (100, 400)  # samples: 1-4 h
OFFSET_HOLD = (5, 40)  # samples: 3-24 min
# The logging rig's supervisory guard: (leave excitation below, above, resume above, below).
# Outside the outer band the excitation stops and the setpoints return to the base case
# until every variable is back inside the inner band and GUARD_HOLD samples have passed.
# The level loops of the scheme settle in ~10 h, so the guard must act long before a trip.
GUARD_BANDS: dict[str, tuple[float, float, float, float]] = {
    "reactor_pressure": (-math.inf, 2850.0, -math.inf, 2780.0),
    "reactor_level": (60.0, 90.0, 65.0, 85.0),
    "reactor_temperature": (-math.inf, 128.0, -math.inf, 124.0),
    "separator_level": (35.0, 65.0, 40.0, 60.0),
    "stripper_level": (35.0, 65.0, 40.0, 60.0),
}
GUARD_HOLD = 60  # samples (36 min) at least without excitation once the guard trips


def _outside(meas: Mapping[str, float], inner: bool) -> bool:
    """Is any guarded variable outside the guard's outer (or inner) band?"""
    for name, (low, high, low_in, high_in) in GUARD_BANDS.items():
        lo, hi = (low_in, high_in) if inner else (low, high)
        if not lo <= meas[name] <= hi:
            return True
    return False


def _paused_for(paused: int, meas: Mapping[str, float]) -> int:
    """Samples the guard has paused the excitation for, after this one (0: exciting)."""
    if _outside(meas, inner=False):
        return paused + 1
    if paused > GUARD_HOLD and not _outside(meas, inner=True):
        return 0
    return paused + 1 if paused else 0


def generate_training_log(hours: float, seed: int, show_progress: bool = False) -> pd.DataFrame:
    """Excitation data: the PI baseline on APRBS setpoints, with APRBS valve offsets and dither.

    Row k holds the measurements at time k and the valves applied from time k on. Every
    applied value keeps the bounds and the rate limit (rate_clip); the rig's guard
    returns to the base case well before the trip limits. Over 40 seeds x 48 h and one
    800 h log the plant came no closer to an interlock than 184 kPa (pressure), 28
    level points (separator), 31 (reactor), 36 (stripper) and 52 °C (temperature). Should
    a log still trip, this raises rather than return data past a shutdown.
    """
    rng = np.random.default_rng(seed)
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    plant = TEPPlant(seed=seed + 10_000)
    baseline = RickerBaseline()
    sp_levels = {tag: aprbs_levels(rng, n, low, high, *SETPOINT_HOLD)
                 for tag, (low, high) in SETPOINT_RANGES.items()}
    offsets = np.column_stack([aprbs_levels(rng, n, -a, a, *OFFSET_HOLD) for a in MV_OFFSET_PCT])
    applied, pi_output = plant.mv.copy(), plant.mv.copy()
    paused = 0
    rows: list[list[float]] = []
    for k in track(range(n), description="Tennessee Eastman excitation", disable=not show_progress):
        meas = plant.measure()
        paused = _paused_for(paused, meas)
        excite = 0.0 if paused else 1.0
        setpoints = {tag: float(levels[k]) if excite else BASE_SETPOINTS[tag]
                     for tag, levels in sp_levels.items()}
        # the baseline runs on its own output: the offsets are disturbances it rejects
        pi_output = baseline.act(meas, setpoints, pi_output)
        target = pi_output + excite * (offsets[k] + rng.normal(0.0, DITHER_PCT, len(MV_NAMES)))
        applied = np.array([rate_clip(float(t), float(p), RATE_PER_SAMPLE, MV_LOW, MV_HIGH)
                            for t, p in zip(target, applied, strict=True)])
        rows.append([plant.time_s, *meas.values(), *applied])
        plant.step(applied)
        if plant.shutdown:
            raise RuntimeError(f"excitation shut the plant down at {plant.time_s / 3600:.2f} h "
                               f"(seed {seed}): {plant.shutdown}")
    return pd.DataFrame(rows, columns=[SPEC.timestamp_column, *TAG_COLUMNS])


# -- closed-loop episodes -----------------------------------------------------------------

EPISODE_HOURS = 8.0
IDV_START_H = 1.0

Policy = Callable[[TEPPlant, float, dict[str, float], dict[str, float]], StepRecord]
"""(plant, time_s, measurements, setpoints) -> the step's record with applied actuators."""


def baseline_policy(overrides: bool = True) -> Policy:
    """Ricker's decentralised PI (tep-studio), run at the 36 s sample."""
    baseline = RickerBaseline(overrides=overrides)

    def act(plant: TEPPlant, time_s: float, meas: dict[str, float],
            setpoints: dict[str, float]) -> StepRecord:
        start = time.perf_counter()
        mv = baseline.act(meas, setpoints, plant.mv)
        actuators = dict(zip(MV_NAMES, map(float, mv), strict=True))
        return StepRecord(0, time_s, meas, dict(setpoints), actuators,
                          solve_ms=(time.perf_counter() - start) * 1e3)

    return act


def oracle_policy() -> Policy | None:
    """None: no oracle for this plant (see the module docstring)."""
    return None


def baseline_fallback(overrides: bool = True) -> Fallback:
    """The PI scheme as the twin's fallback: bumpless from the applied valves, and it holds
    a missing measurement at its last good value (all valves while none has been seen)."""
    return RickerBaseline(overrides=overrides)


def twin_policy(controller: Controller) -> Policy:
    """The twin's MPC. The plant reports its valve positions with the measurements (as a
    DCS reads them back), so rate limits, the window and a takeover by the fallback start
    from the valves as they are, not from the spec's rounded nominal values."""

    def act(plant: TEPPlant, time_s: float, meas: dict[str, float],
            setpoints: dict[str, float]) -> StepRecord:
        valves = dict(zip(MV_NAMES, map(float, plant.mv), strict=True))
        return controller.step(time_s, {**meas, **valves}, setpoints)

    return act


def _margins(meas: Mapping[str, float]) -> dict[str, float]:
    """Distance of each limited sensor to its nearest limit (negative: beyond it)."""
    out = {}
    for name, (low, high) in HARD_LIMITS.items():
        sides = [high - meas[name] if high is not None else math.inf,
                 meas[name] - low if low is not None else math.inf]
        out[name] = float(min(sides))
    return out


def _applied(record: StepRecord, previous: np.ndarray) -> tuple[np.ndarray, list[SafetyEvent]]:
    """The policy's valves, held where missing and kept within bounds and rate limits."""
    out, events = previous.copy(), []
    for i, name in enumerate(MV_NAMES):
        proposed = record.actuators.get(name)
        if proposed is None or not math.isfinite(proposed):
            events.append(SafetyEvent(EventKind.INVALID_PROPOSAL, "held by the episode runner",
                                      name))
            continue
        out[i] = rate_clip(float(proposed), float(previous[i]), RATE_PER_SAMPLE, MV_LOW, MV_HIGH)
        if abs(out[i] - proposed) > 1e-9:
            events.append(SafetyEvent(EventKind.RATE_LIMITED, f"{proposed:.6g} -> {out[i]:.6g} % "
                                      "by the episode runner", name))
    return out, events


def run_episode(policy: Policy, controller_name: str, seed: int = 7,
                config: dict[str, Any] | None = None, show_progress: bool = False,
                idv: int | Sequence[int] | None = None, idv_start_h: float = IDV_START_H,
                hours: float = EPISODE_HOURS,
                setpoints: Mapping[str, float] | None = None) -> EpisodeResult:
    """Drive the plant from the base case with `policy` for `hours`; IDV(s) from `idv_start_h`.

    Setpoints are the base case unless given. The episode ends early at a shutdown.
    Scored on the true state after each move (see `episode_metrics`).
    """
    disturbance = idv_vector(idv)
    targets = {**BASE_SETPOINTS, **(setpoints or {})}
    plant = TEPPlant(seed=seed)
    steps: list[StepRecord] = []
    true_rows: list[np.ndarray] = []
    costs: list[float] = []
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    for k in track(range(n), description=f"closed loop ({controller_name})",
                   disable=not show_progress):
        if plant.time_s >= idv_start_h * 3600.0 - 1e-6:
            plant.idv = disturbance
        meas = plant.measure()
        record = policy(plant, plant.time_s, meas, dict(targets))
        record.step = k
        mv, events = _applied(record, plant.mv)
        record.actuators = dict(zip(MV_NAMES, map(float, mv), strict=True))
        record.events = [*record.events, *events]
        record.margins = _margins(meas)
        plant.step(mv)
        steps.append(record)
        true_rows.append(plant.true_measurements.copy())
        costs.append(plant.cost_per_h)
        if plant.shutdown:
            break
    numbers = [] if idv is None else [idv] if isinstance(idv, int) else list(idv)
    metrics = episode_metrics(np.array(true_rows), np.array(costs), targets, steps,
                              shutdown=bool(plant.shutdown))
    episode_config = {"seed": seed, "idv": numbers, "idv_start_h": idv_start_h, "hours": hours,
                      "setpoints": targets, "shutdown": plant.shutdown, **(config or {})}
    return EpisodeResult("tennessee_eastman", controller_name, episode_config, steps, metrics)


def episode_metrics(true: np.ndarray, cost_per_h: np.ndarray, setpoints: Mapping[str, float],
                    steps: list[StepRecord], shutdown: bool = False) -> dict[str, float]:
    """Scores on the true measurements after each move (rows of `true`, XMEAS order).

    cost: mean operating cost [$/h] over the samples run; violations: samples with any
    interlock variable beyond its limit; worst_violation: the largest excess, in that
    limit's unit.
    """
    excess = np.zeros(len(true))
    for name, (low, high) in HARD_LIMITS.items():
        values = true[:, MEAS_INDEX[name]]
        if high is not None:
            excess = np.maximum(excess, values - high)
        if low is not None:
            excess = np.maximum(excess, low - values)

    def column(name: str) -> np.ndarray:
        return true[:, MEAS_INDEX[name]]

    return {
        "cost": float(cost_per_h.mean()),
        "operating_cost_usd": float(cost_per_h.sum() * SAMPLE_PERIOD_H),
        "violations": int((excess > 0).sum()),
        "worst_violation": float(excess.max(initial=0.0)),
        "shutdown": int(shutdown),
        "hours_run": float(len(true) * SAMPLE_PERIOD_H),
        "production_mean_m3h": float(column("stripper_underflow").mean()),
        "mean_abs_error_production_m3h": float(
            np.abs(column("stripper_underflow") - setpoints["stripper_underflow"]).mean()),
        "mean_abs_error_pressure_kPa": float(
            np.abs(column("reactor_pressure") - setpoints["reactor_pressure"]).mean()),
        "max_reactor_pressure_kPa": float(column("reactor_pressure").max()),
        "max_reactor_temperature_C": float(column("reactor_temperature").max()),
        **plan_time_metrics(steps),
    }


# -- the process contract (processes.base.ProcessModule) ---------------------------------

EPISODE_SUMMARY = (
    SummaryRow("cost", "mean operating cost", "$/h"),
    SummaryRow("production_mean_m3h", "mean production", "m³/h"),
    SummaryRow("mean_abs_error_pressure_kPa", "mean |P - P_sp|", "kPa"),
    SummaryRow("max_reactor_pressure_kPa", "max reactor pressure", "kPa", ".0f"),
    SummaryRow("shutdown", "shutdown", "", "d"),
    SummaryRow("hours_run", "hours before end or shutdown", "h", ".2f"),
    SummaryRow("violations", "samples beyond an interlock", "", "d"),
    *CONTROLLER_ROWS,
)

# An embedding of 32: the default 16 held 41 measurements at an effective rank of 14.5 of
# 16, saturated, and read even the present back at 0.090 of range. With 32 the error at
# 1 / 10 / 20 / 50 steps fell from 0.090 / 0.107 / 0.119 / 0.146 to 0.056 / 0.082 / 0.093 /
# 0.113 (rank 26.5); 48 and 64 gained a little more (0.078 and 0.076 at 10 steps) for a
# larger plan, two predictor layers alone nothing (0.1069 -> 0.1078), both together
# 0.080 (benchmarks/prediction.py budget, one twin each).
TRAINING_RECIPE = TrainingRecipe(hours=72.0, epochs=20, max_minutes=5.0, embed_dim=32)

BENCHMARK_CASES: tuple[dict[str, Any], ...] = (
    {},  # the base case
    {"idv": 1},  # A/C feed ratio step
    {"idv": 4},  # reactor cooling water inlet temperature step
    {"idv": 6},  # A feed loss: the baseline ends near the 3000 kPa trip
)
