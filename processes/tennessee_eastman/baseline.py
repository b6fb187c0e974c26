"""Tennessee Eastman baseline: Ricker's decentralised PI as tep-studio ships it, with
setpoint tracking."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from tep_studio.control import ControllerSetpoints, RickerMultiLoopController
from tep_studio.control.loops import RickerRegistry

from ..base import (
    rate_clip,
)
from .plant import (
    BASE_SETPOINTS,
    BASE_YA,
    BASE_YAC,
    MEAS_INDEX,
    MV_HIGH,
    MV_INDEX,
    MV_LOW,
    MV_NAMES,
    RATE_PER_SAMPLE,
    SAMPLE_PERIOD_H,
    SENSOR_NAMES,
    SETPOINT_FIELDS,
)

# -- the baseline: Ricker's decentralised PI as tep-studio ships it -----------------------


def controller_setpoints(setpoints: Mapping[str, float] | None = None) -> ControllerSetpoints:
    """Ricker's setpoint record from tag setpoints; tags not given keep the base case."""
    values = {
        **BASE_SETPOINTS,
        **{k: float(v) for k, v in (setpoints or {}).items() if k in SETPOINT_FIELDS},
    }
    return ControllerSetpoints(
        **{SETPOINT_FIELDS[tag]: v for tag, v in values.items()}, ya=BASE_YA, yac=BASE_YAC
    )


def _with_static_mvs(registry: RickerRegistry, static: Mapping[str, float]) -> RickerRegistry:
    """The scheme with its hand-set MVs (recycle, steam, agitator) held at `static`."""
    return dataclasses.replace(
        registry, nominal=dataclasses.replace(registry.nominal, static_mv=dict(static))
    )


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
        fp_adjust = float(
            np.clip(
                reg.nominal.fp_base
                * (m("stripper_underflow") / BASE_SETPOINTS["stripper_underflow"] - 1.0),
                production.lo,
                production.hi,
            )
        )
        self._fp = fp = reg.nominal.fp_base + fp_adjust
        self._r1, self._r4 = m("feed_A_flow") / fp, m("feed_AC_flow") / fp
        outer = (  # loop, output now, setpoint, measured
            (production, fp_adjust, self._ramped_production, m("stripper_underflow")),
            (reg.reactor_level, m("separator_temperature"), sp.reactor_level, m("reactor_level")),
            (
                reg.reactor_pressure,
                m("purge_flow") / fp,
                sp.reactor_pressure,
                m("reactor_pressure"),
            ),
            (
                reg.separator_level,
                m("separator_underflow") / fp,
                sp.separator_level,
                m("separator_level"),
            ),
            (
                reg.stripper_level,
                m("stripper_underflow") / fp,
                sp.stripper_level,
                m("stripper_level"),
            ),
            (
                reg.pct_g,
                reg.nominal.eadj0,
                self._ramped_pct_g,
                m("stripper_underflow_G_concentration"),
            ),
        )
        for loop, output, setpoint, measured in outer:
            self._seed(self._pi[loop.name], loop.name, output, setpoint - measured, time_h)
        ya, yac = _ya(meas)
        self._state[reg.ya.name] = self._ya.initial_state(prev_error=sp.ya - ya, time=time_h)
        self._state[reg.yac.name] = self._yac.initial_state(prev_error=sp.yac - yac, time=time_h)
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
        eadj = (
            self._state[reg.pct_g.name].output if self.enable_pct_g_feedback else reg.nominal.eadj0
        )
        ratios = {  # as compute_action forms them
            "r1": self._r1,
            "r4": self._r4,
            "r2": float(np.polyval(reg.nominal.p2_coeffs, self._ramped_pct_g))
            - reg.nominal.ff_gain_d * eadj * fp,
            "r3": float(np.polyval(reg.nominal.p3_coeffs, self._ramped_pct_g))
            + reg.nominal.ff_gain_e * eadj * fp,
            "r5": self._state[reg.reactor_pressure.name].output,
            "r6": self._state[reg.separator_level.name].output,
            "r7": self._state[reg.stripper_level.name].output,
        }
        for loop in reg.feed_loops:
            self._seed(
                self._feed_pi[loop.name],
                loop.name,
                applied[MV_INDEX[loop.mv]],
                ratios[loop.ratio_key] * fp - m(loop.pv),
                time_h,
            )
        separator_setpoint = self._state[reg.reactor_level.name].output
        for loop, setpoint in (
            (reg.reactor_temperature, sp.reactor_temperature),
            (reg.separator_temperature, separator_setpoint),
        ):
            self._seed(
                self._pi[loop.name],
                loop.name,
                applied[MV_INDEX[loop.drives]],
                setpoint - m(loop.pv),
                time_h,
            )

    def hold_hand_set(self, meas: np.ndarray, applied: np.ndarray) -> None:
        """Hold the valves the scheme does not move where they are; an active override's
        cut is added back, as compute_action takes it off again."""
        static = {name: float(applied[MV_INDEX[name]]) for name in self.registry.nominal.static_mv}
        for override in self.registry.overrides:
            if (
                self.enable_overrides
                and override.enabled
                and override.target in static
                and override.threshold is not None
                and override.gain is not None
            ):
                excess = float(meas[MEAS_INDEX[override.trigger_pv]]) - override.threshold
                static[override.target] += override.gain * max(0.0, excess)
        self.registry = _with_static_mvs(self.registry, static)

    def hold_valves(self, applied: np.ndarray) -> None:
        """Anti-windup: the valve loops remember the valve the rate limit let through."""
        reg = self.registry
        valve_loops = [(self._feed_pi[loop.name], loop.name, loop.mv) for loop in reg.feed_loops]
        valve_loops += [
            (self._pi[loop.name], loop.name, loop.drives)
            for loop in (reg.reactor_temperature, reg.separator_temperature)
        ]
        for pi, name, mv in valve_loops:
            state = self._state[name]
            self._state[name] = dataclasses.replace(
                state, output=float(np.clip(applied[MV_INDEX[mv]], pi.lo, pi.hi))
            )

    def _seed(self, pi: Any, name: str, output: float, error: float, time_h: float) -> None:
        self._state[name] = pi.initial_state(float(output), prev_error=float(error), time=time_h)


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
        self.controller = TrackingRicker(
            setpoints=controller_setpoints(), enable_overrides=overrides
        )
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

    def act(
        self, meas: Mapping[str, float | None], setpoints: Mapping[str, float], applied: np.ndarray
    ) -> np.ndarray:
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
        out = np.array(
            [
                rate_clip(float(u), float(p), RATE_PER_SAMPLE, MV_LOW, MV_HIGH)
                for u, p in zip(raw, applied, strict=True)
            ]
        )
        self.last_raw, self.last_output = raw.copy(), out.copy()
        return out

    def __call__(
        self,
        meas: Mapping[str, float | None],
        setpoints: Mapping[str, float],
        applied: Mapping[str, float],
    ) -> dict[str, float]:
        previous = np.array([float(applied[name]) for name in MV_NAMES])
        return dict(zip(MV_NAMES, map(float, self.act(meas, setpoints, previous)), strict=True))
