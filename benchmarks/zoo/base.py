"""What every zoo plant shares: true equations in CasADi, integrated with RK4 under a
zero-order hold, per-channel input dead times, sensor noise, an excitation log, a tag
file, a scored setpoint episode and an oracle NMPC on the true equations.

A plant's inputs reach its equations through *channels*: channel c is actuator `j_c`
delayed by `d_c` samples (Wood-Berry has a different dead time on each of its four
transfer functions). The true state is the continuous state plus the actuators'
recent history, which the oracle knows and a controller does not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np
import pandas as pd
import yaml


@dataclass(frozen=True)
class Sensor:
    name: str
    unit: str
    span: tuple[float, float]  # instrument range: noise is 1 % of it, costs are scaled by it
    low: float | None = None  # hard limits
    high: float | None = None
    controlled: bool = False


@dataclass(frozen=True)
class Actuator:
    name: str
    unit: str
    low: float
    high: float
    rate_limit: float  # per second
    nominal: float


@dataclass(frozen=True)
class Disturbance:
    """A measured disturbance (a tag of role disturbance): the log steps it at random
    within `band` of its nominal value; the episode's segments may set it."""

    name: str
    unit: str
    nominal: float
    band: float


@dataclass(frozen=True)
class Segment:
    samples: int
    setpoints: dict[str, float]
    disturbances: dict[str, float] = field(default_factory=dict)  # others: nominal


@dataclass
class Plant:
    """A simulator from the literature. `rhs(x, v)` is dx/dt (per second) with v the
    delayed channel inputs followed by the measured disturbances; `outputs(x)` the sensor
    values, CasADi-expressible."""

    name: str
    description: str
    sample_period_s: float
    sensors: tuple[Sensor, ...]
    actuators: tuple[Actuator, ...]
    channels: tuple[tuple[int, int], ...]  # (actuator index, dead time in samples)
    rhs: Callable[[Any, Any], Any]
    outputs: Callable[[Any], Any]
    x0: np.ndarray  # a steady state at the actuators' nominal values
    pairing: tuple[tuple[str, str], ...]  # (sensor, actuator) PI loops, no gains
    episode: tuple[Segment, ...]
    excitation_hold_s: tuple[float, float]  # random hold time of each excitation step
    excitation_band: tuple[float, ...]  # per actuator, half-width of moves around nominal
    log_samples: int = 4500
    substeps: int = 4
    noise_fraction: float = 0.01
    oracle_horizon: int = 30
    # residual(y, x) = 0 defines the outputs where they have no closed form (pH): the
    # oracle solves it with its plan; `outputs` solves it numerically
    output_residual: Callable[[Any, Any], Any] | None = None
    # an outer feedback loop running while the log is recorded (an integrating level
    # cannot be logged open loop: it would drain); None: open-loop excitation
    logging_loop: Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray] | None = None
    disturbances: tuple[Disturbance, ...] = ()
    _step: ca.Function | None = field(default=None, repr=False)
    _out: ca.Function | None = field(default=None, repr=False)

    # -- equations -----------------------------------------------------------------------
    @property
    def max_delay(self) -> int:
        return max(d for _, d in self.channels)

    @property
    def nominal_u(self) -> np.ndarray:
        return np.array([a.nominal for a in self.actuators])

    def step_function(self) -> ca.Function:
        """x_{k+1} = F(x_k, v_k): RK4 over one sample, inputs held."""
        if self._step is None:
            x = ca.MX.sym("x", len(self.x0))
            v = ca.MX.sym("v", len(self.channels) + len(self.disturbances))
            h = self.sample_period_s / self.substeps
            xn = x
            for _ in range(self.substeps):
                k1 = self.rhs(xn, v)
                k2 = self.rhs(xn + h / 2 * k1, v)
                k3 = self.rhs(xn + h / 2 * k2, v)
                k4 = self.rhs(xn + h * k3, v)
                xn = xn + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            self._step = ca.Function("F", [x, v], [xn])
            self._out = ca.Function("H", [x], [self.outputs(x)])
        return self._step

    def output_function(self) -> ca.Function:
        self.step_function()
        assert self._out is not None
        return self._out

    @property
    def nominal_disturbances(self) -> np.ndarray:
        return np.array([d.nominal for d in self.disturbances])

    def channel_inputs(self, history: np.ndarray) -> np.ndarray:
        """v_k from the actuators' history (row -1: applied now, row -1-d: d samples ago)."""
        return np.array([history[-1 - d, j] for j, d in self.channels])

    # -- the tag file --------------------------------------------------------------------
    def tag_file(self) -> dict[str, Any]:
        """Physical facts only: units, limits, rate limits, controlled sensors, pairing."""
        tags: list[dict[str, Any]] = []
        for s in self.sensors:
            tag: dict[str, Any] = {"name": s.name, "role": "sensor", "unit": s.unit}
            if s.low is not None:
                tag["low"] = s.low
            if s.high is not None:
                tag["high"] = s.high
            if s.controlled:
                tag["controlled"] = True
            tags.append(tag)
        for d in self.disturbances:
            tags.append(
                {"name": d.name, "role": "disturbance", "unit": d.unit, "nominal": d.nominal}
            )
        for a in self.actuators:
            tags.append(
                {
                    "name": a.name,
                    "role": "actuator",
                    "unit": a.unit,
                    "low": a.low,
                    "high": a.high,
                    "rate_limit": a.rate_limit,
                    "nominal": a.nominal,
                }
            )
        return {
            "name": self.name,
            "description": self.description,
            "sample_period_s": self.sample_period_s,
            "timestamp_column": "time_s",
            "tags": tags,
            "baseline": [{"sensor": s, "actuator": a} for s, a in self.pairing],
        }

    def noise_std(self) -> np.ndarray:
        return np.array([self.noise_fraction * (s.span[1] - s.span[0]) for s in self.sensors])

    def spans(self, names: list[str]) -> np.ndarray:
        by_name = {s.name: s for s in self.sensors}
        return np.array([by_name[n].span[1] - by_name[n].span[0] for n in names])

    # -- simulation ----------------------------------------------------------------------
    def start(self) -> PlantState:
        history = np.tile(self.nominal_u, (self.max_delay + 1, 1))
        return PlantState(self.x0.copy(), history, self.nominal_disturbances)

    def advance(self, state: PlantState, applied: np.ndarray) -> PlantState:
        """Apply `applied` for one sample from `state`, the disturbances held."""
        history = np.vstack([state.history[1:], applied])
        inputs = np.concatenate([self.channel_inputs(history), state.disturbance])
        x = np.asarray(self.step_function()(state.x, inputs)).ravel()
        return PlantState(x, history, state.disturbance)

    def measure(self, state: PlantState) -> np.ndarray:
        return np.asarray(self.output_function()(state.x)).ravel()

    def clip(self, proposal: np.ndarray, previous: np.ndarray) -> np.ndarray:
        """Actuator bounds and rate limits, as the twin's safety layer enforces them."""
        rate = np.array([a.rate_limit for a in self.actuators]) * self.sample_period_s
        low = np.array([a.low for a in self.actuators])
        high = np.array([a.high for a in self.actuators])
        moved = np.clip(proposal, previous - rate, previous + rate)
        return np.clip(moved, low, high)

    # -- the excitation log --------------------------------------------------------------
    def excitation_log(self, seed: int) -> pd.DataFrame:
        """Random steps on every actuator (each held a random time, ramped at its rate
        limit), sensors with Gaussian noise of 1 % of their span."""
        rng = np.random.default_rng(seed)
        state = self.start()
        targets = self.nominal_u.copy()
        holds = np.zeros(len(self.actuators))
        disturbance_holds = np.zeros(len(self.disturbances))
        applied = self.nominal_u.copy()
        rows = []
        noise = self.noise_std()
        for k in range(self.log_samples):
            for i, d in enumerate(self.disturbances):
                disturbance_holds[i] -= self.sample_period_s
                if disturbance_holds[i] <= 0:
                    disturbance_holds[i] = rng.uniform(*self.excitation_hold_s)
                    state.disturbance[i] = d.nominal + rng.uniform(-d.band, d.band)
            true = self.measure(state)
            measured = true + rng.normal(0.0, noise)
            rows.append([k * self.sample_period_s, *measured, *state.disturbance, *applied])
            for j, a in enumerate(self.actuators):
                holds[j] -= self.sample_period_s
                if holds[j] <= 0:
                    holds[j] = rng.uniform(*self.excitation_hold_s)
                    band = self.excitation_band[j]
                    targets[j] = a.nominal + rng.uniform(-band, band)
            wanted = targets.copy()
            if self.logging_loop is not None:
                wanted = self.logging_loop(measured, targets, rng)
            applied = self.clip(wanted, applied)
            state = self.advance(state, applied)
        columns = [
            "time_s",
            *(s.name for s in self.sensors),
            *(d.name for d in self.disturbances),
            *(a.name for a in self.actuators),
        ]
        return pd.DataFrame(rows, columns=columns)

    def export(self, folder: Path, seed: int) -> tuple[Path, Path]:
        """The two files a plant engineer would have: a 6-significant-digit historian CSV
        and a tag file."""
        folder.mkdir(parents=True, exist_ok=True)
        tags, log = folder / f"{self.name}.yaml", folder / f"{self.name}_log.csv"
        tags.write_text(yaml.safe_dump(self.tag_file(), sort_keys=False))
        self.excitation_log(seed).to_csv(log, index=False, float_format="%.6g")
        return tags, log

    # -- the scored episode --------------------------------------------------------------
    def setpoint_schedule(self) -> list[dict[str, float]]:
        return [dict(seg.setpoints) for seg in self.episode for _ in range(seg.samples)]

    def disturbance_schedule(self) -> list[np.ndarray]:
        values = [
            np.array([seg.disturbances.get(d.name, d.nominal) for d in self.disturbances])
            for seg in self.episode
        ]
        return [values[i] for i, seg in enumerate(self.episode) for _ in range(seg.samples)]

    def segment_bounds(self) -> list[tuple[int, int]]:
        bounds, start = [], 0
        for seg in self.episode:
            bounds.append((start, start + seg.samples))
            start += seg.samples
        return bounds


@dataclass
class PlantState:
    x: np.ndarray
    history: np.ndarray  # (max_delay + 1, actuators), last row applied most recently
    disturbance: np.ndarray  # the measured disturbances now, held over the next sample
