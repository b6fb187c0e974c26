"""A PI baseline tuned from the log: first-order-plus-dead-time identification and the
SIMC rules (Skogestad, "Simple analytic rules for model reduction and PID controller
tuning", J. Process Control 13, 2003).

A tag file may name a PI pairing (sensor, actuator) without gains; the gains then come
from the log the twin is trained on, by the published rule a control engineer would use,
so a new plant has an honest baseline to fall back to and to be measured against.

Identification: for the paired sensor y and every actuator u_j of the process (the other
actuators move in the log too, and ignoring them biases the pairing's model),

    y[k+1] = sum_j x_j[k+1] + c,   x_j[k+1] = a_j x_j[k] + b_j u_j[k - d_j]

(a first-order lag per actuator, zero-order hold, dead time d_j samples). Dead times are
picked on a grid by one-step least squares (ARX); gains and lags are then refined on the
simulation error over short chunks of the log, each restarted from its measured value:
the output error is not biased by sensor noise the way the one-step fit is, and short
chunks keep a drifting (integrating) process identifiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import least_squares
from scipy.signal import lfilter
from scipy.special import expit

from .data import timestamps_s
from .errors import InvalidInput
from .spec import PILoop, ProcessSpec

MAX_DELAY_FRACTION = 0.02
"""Largest dead time tried, as a share of the log's length (at most `MAX_DELAY_SAMPLES`)."""
MAX_DELAY_SAMPLES = 60
CHUNK_SAMPLES = 200  # simulation-error chunk: long against the delay, short against drift
LAG_LIMIT = 0.99999  # a_j below this: a time constant up to 1e5 samples (near-integrating)
MIN_TAU_OVER_THETA = 8.0  # SIMC: a lag beyond 8 theta is treated as integrating


@dataclass(frozen=True)
class Fopdt:
    """y(s)/u(s) = gain e^{-theta s} / (tau s + 1), in sensor unit per actuator unit."""

    gain: float
    tau_s: float
    theta_s: float

    @property
    def slope(self) -> float:
        """gain / tau: the integrating slope k' SIMC uses for a lag-dominant process."""
        return self.gain / self.tau_s


@dataclass(frozen=True)
class PiTuning:
    kp: float
    ti_s: float
    model: Fopdt
    tau_c_s: float


def simc_pi(model: Fopdt, tau_c_s: float | None = None) -> PiTuning:
    """SIMC PI: kc = tau / (k (tau_c + theta)), ti = min(tau, 4 (tau_c + theta)), with
    tau_c = theta by default (Skogestad's "tight control" choice)."""
    if not (math.isfinite(model.gain) and model.gain != 0.0):
        raise InvalidInput(f"cannot tune a PI on a process with gain {model.gain:g}")
    tau_c = model.theta_s if tau_c_s is None else float(tau_c_s)
    closed = tau_c + model.theta_s
    if closed <= 0:
        raise InvalidInput("tau_c + theta must be positive")
    kc = model.tau_s / (model.gain * closed)
    return PiTuning(kc, min(model.tau_s, 4.0 * closed), model, tau_c)


def identify_fopdt(df: pd.DataFrame, spec: ProcessSpec, sensor: str, actuator: str) -> Fopdt:
    """The FOPDT model from `actuator` to `sensor` in a log (see the module's docstring).
    Theta includes half a sample for the digital PI's hold (Skogestad's advice)."""
    dt = spec.sample_period_s
    actuators = [t.name for t in spec.actuators]
    y = df[sensor].to_numpy(dtype=float)
    u = df[actuators].to_numpy(dtype=float)
    j = actuators.index(actuator)
    if not np.nanstd(u[:, j]) > 0:
        raise InvalidInput(
            f"the log shows no effect of '{actuator}' on '{sensor}' (it never "
            "moves): a PI cannot be tuned on it; give kp and ti_s in the tag "
            "file"
        )
    segment = np.concatenate([[0], np.cumsum(np.diff(timestamps_s(df, spec)) > 1.5 * dt)])
    max_delay = int(min(MAX_DELAY_SAMPLES, max(1, MAX_DELAY_FRACTION * len(y))))
    delays = _arx_delays(y, u, segment, max_delay)
    lags, gains = _output_error_fit(y, u, segment, delays, max_delay)
    if abs(gains[j]) * np.nanstd(u[:, j]) < 1e-6 * float(np.nanstd(y)):
        raise InvalidInput(
            f"the log shows no effect of '{actuator}' on '{sensor}': "
            "a PI cannot be tuned on it; give kp and ti_s in the tag file"
        )
    a = float(np.clip(lags[j], 1e-6, LAG_LIMIT))
    tau = -dt / math.log(a)
    return Fopdt(gain=float(gains[j]), tau_s=tau, theta_s=(delays[j] + 0.5) * dt)


def tune_loop(
    df: pd.DataFrame, spec: ProcessSpec, loop: PILoop, tau_c_s: float | None = None
) -> PiTuning:
    tuning = simc_pi(identify_fopdt(df, spec, loop.sensor, loop.actuator), tau_c_s)
    model = tuning.model
    if model.tau_s > MIN_TAU_OVER_THETA * model.theta_s:  # SIMC's rule for large lags
        lagged = Fopdt(
            model.slope * MIN_TAU_OVER_THETA * model.theta_s,
            MIN_TAU_OVER_THETA * model.theta_s,
            model.theta_s,
        )
        integral = simc_pi(lagged, tau_c_s)
        tuning = PiTuning(tuning.kp, integral.ti_s, model, tuning.tau_c_s)
    return tuning


def with_simc_gains(spec: ProcessSpec, df: pd.DataFrame) -> ProcessSpec:
    """The spec with every declared PI pairing that has no gains tuned by SIMC from `df`;
    loops with gains stay as they are (the same spec when none lacks them)."""
    if all(loop.kp is not None for loop in spec.baseline):
        return spec
    loops = []
    for loop in spec.baseline:
        if loop.kp is None:
            tuning = tune_loop(df, spec, loop)
            loop = PILoop(
                sensor=loop.sensor, actuator=loop.actuator, kp=tuning.kp, ti_s=tuning.ti_s
            )
        loops.append(loop)
    return spec.model_copy(update={"baseline": tuple(loops)})


# -- identification ----------------------------------------------------------------------
def _rows(segment: np.ndarray, max_delay: int) -> np.ndarray:
    """Rows k with k - max_delay and k + 1 in the same contiguous segment."""
    k = np.arange(max_delay, len(segment) - 1)
    return k[(segment[k - max_delay] == segment[k + 1])]


def _arx_delays(y: np.ndarray, u: np.ndarray, segment: np.ndarray, max_delay: int) -> list[int]:
    """Per actuator, the dead time whose one-step least-squares fit leaves the smallest
    residual (coordinate search, two passes)."""
    rows = _rows(segment, max_delay)
    rows = rows[np.isfinite(y[rows]) & np.isfinite(y[rows + 1])]
    if rows.size < 10 * (u.shape[1] + 2):
        raise InvalidInput("log too short to identify a PI pairing's dynamics")
    delays = [0] * u.shape[1]

    def residual(trial: list[int]) -> float:
        columns = [y[rows], np.ones(rows.size)] + [u[rows - d, j] for j, d in enumerate(trial)]
        design = np.column_stack(columns)
        coef, *_ = np.linalg.lstsq(design, y[rows + 1], rcond=None)
        return float(np.sum((design @ coef - y[rows + 1]) ** 2))

    for _ in range(2):
        for j in range(u.shape[1]):
            scores = [residual(delays[:j] + [d] + delays[j + 1 :]) for d in range(max_delay + 1)]
            delays[j] = int(np.argmin(scores))
    return delays


def _chunks(segment: np.ndarray, max_delay: int) -> list[tuple[int, int, int]]:
    """(burn-in start, start, end) of each chunk: the model runs from the burn-in start so
    that its lags carry the inputs before the chunk; errors count from `start` on."""
    first_row = max_delay + 1  # the first row whose delayed inputs are in the log
    chunks, k = [], first_row
    while k + 20 < len(segment):
        end = min(k + CHUNK_SAMPLES, len(segment))
        same = np.flatnonzero(segment[k:end] != segment[k])
        end = k + int(same[0]) if same.size else end
        earliest = k - CHUNK_SAMPLES
        while earliest < k and (
            earliest < first_row or segment[earliest - max_delay - 1] != segment[k]
        ):
            earliest += 1
        if end - k >= 20:
            chunks.append((earliest, k, end))
        k = end if end > k else k + 1
    return chunks


def _simulate(
    params: np.ndarray,
    y: np.ndarray,
    u: np.ndarray,
    chunks: list[tuple[int, int, int]],
    delays: list[int],
    y_scale: float,
) -> np.ndarray:
    """Simulation errors over every chunk, in sensor standard deviations. Each chunk starts
    at its measured value, its lags carrying the inputs of the burn-in before it; its own
    drift per sample (fitted in closed form) stands in for what that does not show: an
    integrating level's imbalance, an unmeasured disturbance."""
    n_u = u.shape[1]
    lags, slopes = _lag(params[:n_u]), params[n_u : 2 * n_u]
    errors = []
    for burn_in, start, end in chunks:
        miss = y[start:end] - y[start]
        skip = start - burn_in
        for j, d in enumerate(delays):
            drive = u[burn_in - 1 - d : end - 1 - d, j]
            x = lfilter([slopes[j]], [1.0, -lags[j]], drive - drive[0])
            miss = miss - (x[skip:] - x[skip])
        ramp = np.arange(end - start, dtype=float)
        known = np.isfinite(miss)
        drift = float(np.sum(ramp[known] * miss[known]) / max(np.sum(ramp[known] ** 2), 1e-12))
        errors.append((miss - drift * ramp) / y_scale)
    out = np.concatenate(errors)
    return np.where(np.isfinite(out), out, 0.0)


def _lag(raw: np.ndarray) -> np.ndarray:
    return LAG_LIMIT * expit(raw)  # in (0, LAG_LIMIT), no overflow for a large raw


def _output_error_fit(
    y: np.ndarray, u: np.ndarray, segment: np.ndarray, delays: list[int], max_delay: int
) -> tuple[np.ndarray, np.ndarray]:
    """Lags a_j and steady gains K_j = b_j / (1 - a_j), by simulation error on chunks."""
    chunks = _chunks(segment, max_delay)
    if not chunks:
        raise InvalidInput("log too short to identify a PI pairing's dynamics")
    n_u = u.shape[1]
    y_scale = float(np.nanstd(y)) or 1.0
    u_std = np.std(u, axis=0)
    u_scale = np.where(u_std > 0, u_std, 1.0)
    best: np.ndarray | None = None
    best_cost = math.inf
    for a0 in (0.5, 0.9, 0.98, 0.998):  # a few starts: the cost has local minima in the lag
        raw0 = np.full(n_u, math.log(a0 / (LAG_LIMIT - a0)))
        x0 = np.concatenate([raw0, np.zeros(n_u)])
        scale = np.concatenate([np.ones(n_u), (1.0 - a0) * y_scale / u_scale])
        fit = least_squares(
            _simulate, x0, x_scale=scale, args=(y, u, chunks, delays, y_scale), max_nfev=100
        )
        if fit.cost < best_cost:
            best, best_cost = fit.x, fit.cost
    assert best is not None
    lags = _lag(best[:n_u])
    return lags, best[n_u : 2 * n_u] / (1.0 - lags)
