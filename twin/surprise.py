"""Surprise: how far the plant's next embedding lands from where the twin predicted it.

For every sample t of a log the twin encodes the context window ending at t-1, predicts
one step ahead with the action really applied at t-1, and compares with the encoding of
the window ending at t:

    score_t = mean over embedding dimensions of (predictor(z_{t-1}, u_{t-1}) - z_t)^2

A twin trained on normal operation predicts normal operation well, so a fault (a changed
plant, a drifting sensor, an unmeasured disturbance) shows as a rise in surprise before
any single sensor leaves its band. The score is in squared embedding units (embeddings are
trained to unit spread per dimension), so a threshold is set from the scores of normal
data at a chosen false-alarm rate rather than by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .data import check_log, features, segment_ids, timestamps_s
from .errors import InvalidInput
from .twin_model import Twin

BATCH = 2048


def _padded_windows(twin: Twin, frame: pd.DataFrame) -> torch.Tensor:
    """Context windows (N, W, 2F) ending at every row; rows before the log are masked."""
    feats, mask = features(frame, twin.layout, twin.norm)
    rows = np.concatenate([feats, mask], axis=1)
    w = twin.config.window
    padded = np.vstack([np.zeros((w - 1, rows.shape[1]), dtype=np.float32), rows])
    all_rows = torch.from_numpy(padded)
    index = torch.arange(len(frame)).unsqueeze(1) + torch.arange(w)
    return all_rows[index]


@torch.no_grad()
def embeddings(twin: Twin, frame: pd.DataFrame) -> np.ndarray:
    """Embedding (N, D) of the context window ending at every row of a log."""
    check_log(frame, twin.spec)
    windows = _padded_windows(twin, frame)
    out = [twin.model.encode(chunk) for chunk in windows.split(BATCH)]
    return torch.cat(out).numpy().astype(float)


@torch.no_grad()
def surprise_scores(twin: Twin, frame: pd.DataFrame) -> np.ndarray:
    """One-step embedding prediction error at every row of `frame`, shape (len(frame),).

    `frame` is a log in the twin's spec (timestamp, sensors, disturbances, actuators; the
    actuator at row t applied from t on). Row 0, and each row that follows a gap in the
    timestamps, has no one-step prediction and scores NaN. Missing sensor samples are
    masked as in training. Raises `InvalidInput` for a log the twin cannot read.
    """
    check_log(frame, twin.spec)
    n = len(frame)
    scores = np.full(n, np.nan)
    if n < 2:
        return scores
    windows = _padded_windows(twin, frame)
    actions = torch.from_numpy(
        twin.normalise_actions(frame[list(twin.layout.actions)].to_numpy(dtype=float)).astype(
            np.float32
        )
    )
    model = twin.model
    z = torch.cat([model.encode(chunk) for chunk in windows.split(BATCH)])
    # the predictor was trained to reach the target encoder's embedding of the next window
    target = torch.cat([model.target_encoder(chunk) for chunk in windows.split(BATCH)])
    predicted = model.predictor(z[:-1], actions[:-1])
    err = ((predicted - target[1:]) ** 2).mean(dim=1).numpy().astype(float)
    scores[1:] = err
    seg = segment_ids(timestamps_s(frame, twin.spec), twin.spec.sample_period_s)
    scores[1:][seg[1:] != seg[:-1]] = np.nan
    return scores


def calibrate_threshold(scores: np.ndarray, false_alarm_rate: float) -> float:
    """The score exceeded by a share `false_alarm_rate` of `scores` (from normal operation).

    NaNs are ignored. `false_alarm_rate` is a fraction in (0, 1), e.g. 0.01 for one alarm
    per hundred normal samples.
    """
    if not 0.0 < false_alarm_rate < 1.0:
        raise InvalidInput(f"false_alarm_rate must be a fraction in (0, 1), got {false_alarm_rate}")
    values = np.asarray(scores, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise InvalidInput("no finite scores to calibrate a threshold on")
    return float(np.quantile(values, 1.0 - false_alarm_rate))


def trailing_mean(scores: np.ndarray, samples: int) -> np.ndarray:
    """Mean of the last `samples` finite scores at each row (NaN until one is seen)."""
    if samples < 1:
        raise InvalidInput(f"smoothing must be at least 1 sample, got {samples}")
    values = np.asarray(scores, dtype=float)
    series = pd.Series(values)
    return series.rolling(samples, min_periods=1).mean().to_numpy(dtype=float)


@dataclass(frozen=True)
class SurpriseDetector:
    """Alarms when the trailing mean of surprise exceeds a threshold set on normal data.

    `smoothing` (samples) trades detection delay for fewer false alarms: a fault that
    persists raises the mean; an isolated noisy sample does not.
    """

    threshold: float
    smoothing: int = 1

    @classmethod
    def calibrate(
        cls, twin: Twin, normal: pd.DataFrame, false_alarm_rate: float, smoothing: int = 1
    ) -> SurpriseDetector:
        """A detector whose alarm rate on the normal log `normal` is `false_alarm_rate`."""
        smoothed = trailing_mean(surprise_scores(twin, normal), smoothing)
        return cls(calibrate_threshold(smoothed, false_alarm_rate), smoothing)

    def alarms(self, scores: np.ndarray) -> np.ndarray:
        """Boolean alarm per row for raw surprise scores (NaN rows never alarm)."""
        smoothed = trailing_mean(scores, self.smoothing)
        return np.nan_to_num(smoothed, nan=-np.inf) > self.threshold

    def first_alarm(self, scores: np.ndarray, start: int = 0) -> int | None:
        """Index of the first alarm at or after row `start`, or None."""
        hits = np.flatnonzero(self.alarms(scores)[start:])
        return int(hits[0]) + start if hits.size else None

    def check(self, twin: Twin, frame: pd.DataFrame) -> np.ndarray:
        """Alarms for a log: surprise scores, smoothed, against the threshold."""
        return self.alarms(surprise_scores(twin, frame))
