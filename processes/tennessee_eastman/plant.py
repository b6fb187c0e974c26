"""Tennessee Eastman plant: sampling, hard limits, the 41 measurements and 12 manipulated
variables, the tag spec, and the tep-studio simulator wrapper."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from tep_studio import TennesseeEastmanProcess

from twin.spec import ControlWeights, ProcessSpec, Tag, TagRole

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
SEPARATOR_LEVEL_LOW, SEPARATOR_LEVEL_HIGH = (
    _level_pct(1.0, 27.5, 290.0),
    _level_pct(12.0, 27.5, 290.0),
)
STRIPPER_LEVEL_LOW, STRIPPER_LEVEL_HIGH = (
    _level_pct(1.0, 78.25, 156.5),
    _level_pct(8.0, 78.25, 156.5),
)

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
    ("reactor_pressure", "kPa gauge", "XMEAS(7) reactor pressure; shutdown above 3000", 2705.0),
    ("reactor_level", "%", "XMEAS(8) reactor level; shutdown outside 2-24 m³", 75.0),
    ("reactor_temperature", "°C", "XMEAS(9) reactor temperature; shutdown above 175", 120.40),
    ("purge_flow", "kscmh", "XMEAS(10) purge rate (stream 9)", 0.33712),
    ("separator_temperature", "°C", "XMEAS(11) product separator temperature", 80.109),
    ("separator_level", "%", "XMEAS(12) product separator level; shutdown outside 1-12 m³", 50.0),
    ("separator_pressure", "kPa gauge", "XMEAS(13) product separator pressure", 2633.7),
    ("separator_underflow", "m³/h", "XMEAS(14) separator underflow (stream 10)", 25.160),
    ("stripper_level", "%", "XMEAS(15) stripper level; shutdown outside 1-8 m³", 50.0),
    ("stripper_pressure", "kPa gauge", "XMEAS(16) stripper pressure", 3102.2),
    ("stripper_underflow", "m³/h", "XMEAS(17) stripper underflow (stream 11): production", 22.949),
    ("stripper_temperature", "°C", "XMEAS(18) stripper temperature", 65.731),
    ("stripper_steam_flow", "kg/h", "XMEAS(19) stripper steam flow", 230.31),
    ("compressor_work", "kW", "XMEAS(20) compressor work", 341.43),
    (
        "reactor_cooling_water_outlet_temperature_meas",
        "°C",
        "XMEAS(21) reactor cooling water outlet temperature",
        94.599,
    ),
    (
        "condenser_cooling_water_outlet_temperature",
        "°C",
        "XMEAS(22) separator (condenser) cooling water outlet temperature",
        77.297,
    ),
    (
        "reactor_feed_A_concentration",
        "mol %",
        "XMEAS(23) A in reactor feed (0.1 h analyzer)",
        32.188,
    ),
    (
        "reactor_feed_B_concentration",
        "mol %",
        "XMEAS(24) B in reactor feed (0.1 h analyzer)",
        8.8933,
    ),
    (
        "reactor_feed_C_concentration",
        "mol %",
        "XMEAS(25) C in reactor feed (0.1 h analyzer)",
        26.383,
    ),
    (
        "reactor_feed_D_concentration",
        "mol %",
        "XMEAS(26) D in reactor feed (0.1 h analyzer)",
        6.8820,
    ),
    (
        "reactor_feed_E_concentration",
        "mol %",
        "XMEAS(27) E in reactor feed (0.1 h analyzer)",
        18.776,
    ),
    (
        "reactor_feed_F_concentration",
        "mol %",
        "XMEAS(28) F in reactor feed (0.1 h analyzer)",
        1.6567,
    ),
    ("purge_A_concentration", "mol %", "XMEAS(29) A in purge (0.1 h analyzer)", 32.958),
    ("purge_B_concentration", "mol %", "XMEAS(30) B in purge (0.1 h analyzer)", 13.823),
    ("purge_C_concentration", "mol %", "XMEAS(31) C in purge (0.1 h analyzer)", 23.978),
    ("purge_D_concentration", "mol %", "XMEAS(32) D in purge (0.1 h analyzer)", 1.2565),
    ("purge_E_concentration", "mol %", "XMEAS(33) E in purge (0.1 h analyzer)", 18.579),
    ("purge_F_concentration", "mol %", "XMEAS(34) F in purge (0.1 h analyzer)", 2.2633),
    ("purge_G_concentration", "mol %", "XMEAS(35) G in purge (0.1 h analyzer)", 4.8436),
    ("purge_H_concentration", "mol %", "XMEAS(36) H in purge (0.1 h analyzer)", 2.2986),
    (
        "stripper_underflow_D_concentration",
        "mol %",
        "XMEAS(37) D in product (0.25 h analyzer)",
        0.01787,
    ),
    (
        "stripper_underflow_E_concentration",
        "mol %",
        "XMEAS(38) E in product (0.25 h analyzer)",
        0.83570,
    ),
    (
        "stripper_underflow_F_concentration",
        "mol %",
        "XMEAS(39) F in product (0.25 h analyzer)",
        0.09858,
    ),
    (
        "stripper_underflow_G_concentration",
        "mol %",
        "XMEAS(40) G in product (0.25 h analyzer)",
        53.724,
    ),
    (
        "stripper_underflow_H_concentration",
        "mol %",
        "XMEAS(41) H in product (0.25 h analyzer)",
        43.828,
    ),
)

# Standard deviations of the measurement noise, XMEAS(1)-(41) (temexd_mod `xns`).
NOISE_STD = np.array(
    [
        0.0012,
        18.0,
        22.0,
        0.05,
        0.2,
        0.21,
        0.3,
        0.5,
        0.01,
        0.0017,
        0.01,
        1.0,
        0.3,
        0.125,
        1.0,
        0.3,
        0.115,
        0.01,
        1.15,
        0.2,
        0.01,
        0.01,
        0.25,
        0.1,
        0.25,
        0.1,
        0.25,
        0.025,
        0.25,
        0.1,
        0.25,
        0.1,
        0.25,
        0.025,
        0.05,
        0.05,
        0.01,
        0.01,
        0.01,
        0.5,
        0.5,
    ]
)
FIRST_ANALYZER = 22  # XMEAS(23), 0-based

# -- the 12 manipulated variables: (tep-studio name, description, base case %) ----------
MANIPULATED: tuple[tuple[str, str, float], ...] = (
    ("d_feed_valve", "XMV(1) D feed flow valve (stream 2)", 63.053),
    ("e_feed_valve", "XMV(2) E feed flow valve (stream 3)", 53.980),
    ("a_feed_valve", "XMV(3) A feed flow valve (stream 1)", 24.644),
    ("ac_feed_valve", "XMV(4) A and C feed flow valve (stream 4)", 61.302),
    ("compressor_recycle_valve", "XMV(5) compressor recycle valve", 22.210),
    ("purge_valve", "XMV(6) purge valve (stream 9)", 40.064),
    ("separator_underflow_valve", "XMV(7) separator pot liquid flow valve (stream 10)", 38.100),
    ("stripper_underflow_valve", "XMV(8) stripper liquid product flow valve (stream 11)", 46.534),
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
    return Tag(
        name=name,
        role=TagRole.SENSOR,
        unit=unit,
        low=low,
        high=high,
        nominal=base,
        controlled=name in SETPOINT_FIELDS,
        description=description,
    )


def _actuator_tag(name: str, description: str, base: float) -> Tag:
    return Tag(
        name=name,
        role=TagRole.ACTUATOR,
        unit="%",
        low=MV_LOW,
        high=MV_HIGH,
        rate_limit=MV_RATE_PCT_PER_S,
        nominal=base,
        description=description,
    )


SPEC = ProcessSpec(
    name="tennessee_eastman",
    description="Tennessee Eastman challenge process (Downs & Vogel 1993, revised model): "
    "41 measurements, 12 valves; open-loop unstable, trips on its interlocks.",
    sample_period_s=SAMPLE_PERIOD_S,
    timestamp_column="time_s",
    tags=tuple(_sensor_tag(*m) for m in MEASUREMENTS)
    + tuple(_actuator_tag(*m) for m in MANIPULATED),
    # the committed figures were measured on the embedding distance alone over 20 samples;
    # the default tracking weight and the log's horizon are not yet measured here
    control=ControlWeights(
        tracking_weight=0.0,
        horizon=20,
        # Downs & Vogel's operating cost: purge losses, stripper steam, compressor power
        economic={
            "purge_flow": "minimise",
            "stripper_steam_flow": "minimise",
            "compressor_work": "minimise",
        },
    ),
)

TAG_COLUMNS = tuple(t.name for t in SPEC.tags)


def idv_vector(idv: int | Sequence[int] | None) -> np.ndarray:
    """The kernel's 28-element activation vector for IDV number(s), 1-based."""
    numbers = () if idv is None else (idv,) if isinstance(idv, int) else tuple(idv)
    vector = np.zeros(N_IDV)
    for number in numbers:
        if not 1 <= int(number) <= N_IDV:
            raise ValueError(
                f"IDV({number}) does not exist: choose 1-20 (Downs & Vogel) "
                f"or 21-{N_IDV} (revised model)"
            )
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
        result = self.sim.advance(self.mv, control_interval=SAMPLE_PERIOD_H, disturbances=self.idv)
        before, self.true_measurements = self.true_measurements, result.measurements.copy()
        self.samples += 1
        self.cost_per_h = float(result.objective_terms["operating_cost_internal_per_hour"])
        if result.shutdown_status["terminated"]:
            self.shutdown = result.shutdown_status["message"].strip() or "interlock trip"
        self._measured = self._with_noise(self.true_measurements, before)
        return self.measure()
