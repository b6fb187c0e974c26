"""Model health from held-out data: collapse, a 2-D map of the embedding space, and
prediction error against horizon.

Pure numerics on a twin and a log (no database, no web): the model page computes its
figures with these, and they are as usable from a notebook.

* Collapse shows as embeddings that span fewer directions than they have dimensions:
  the **effective rank** (exp of the entropy of the normalised singular values of the
  centred embeddings; Roy & Vetterli 2007) falls towards 1, and the **per-dimension
  std** of some dimensions towards 0. Training keeps every dimension's std near 1
  (the VICReg variance term), so a dimension well below 1 on held-out data is a
  warning.
* **PCA** (principal component analysis, by SVD of the centred data) projects the
  embeddings on their two directions of largest variance.
* **Error against horizon**: open-loop predictions from every sample given the actions
  really applied (`twin.replay.open_loop`), scored against what was then measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .data import check_log, features, segment_ids, timestamps_s
from .errors import InvalidInput
from .model import effective_rank as _torch_effective_rank
from .replay import open_loop
from .twin_model import Twin

BATCH = 2048


def effective_rank(z: np.ndarray) -> float:
    """Effective rank of embeddings `z` (N, D): between 1 (collapsed onto a line) and D.

    The same definition training logs every epoch (`twin.model.effective_rank`).
    """
    values = _as_matrix(z)
    return _torch_effective_rank(torch.from_numpy(values))


def per_dimension_std(z: np.ndarray) -> np.ndarray:
    """Sample standard deviation (ddof=1, as in training) of each embedding dimension."""
    values = _as_matrix(z)
    if len(values) < 2:
        raise InvalidInput("the std of embeddings needs at least 2 of them")
    return values.std(axis=0, ddof=1)


@dataclass(frozen=True)
class Projection:
    """Points projected on the first two principal axes."""

    coords: np.ndarray  # (N, 2) in embedding units
    explained: np.ndarray  # (2,) share of the total variance along each axis, in [0, 1]
    axes: np.ndarray  # (2, D) unit vectors of the axes


def pca_2d(z: np.ndarray) -> Projection:
    """Project `z` (N, D) on its two principal axes.

    Each axis's sign is fixed so that its largest loading is positive: the same data
    always gives the same picture. With D = 1 the second axis is all zeros.
    """
    values = _as_matrix(z)
    if len(values) < 2:
        raise InvalidInput("a projection needs at least 2 embeddings")
    centred = values - values.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(2, vt.shape[0])
    axes = np.zeros((2, values.shape[1]))
    axes[:k] = vt[:k]
    for i in range(k):
        if axes[i, np.argmax(np.abs(axes[i]))] < 0:
            axes[i] = -axes[i]
    variance = singular**2
    total = variance.sum()
    explained = np.zeros(2)
    if total > 0:
        explained[:k] = variance[:k] / total
    return Projection(centred @ axes.T, explained, axes)


@torch.no_grad()
def embed_log(twin: Twin, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every full context window of a log that lies within one contiguous
    segment: (z (N, D), row index of each window's last sample (N,))."""
    check_log(df, twin.spec)
    window = twin.config.window
    seg = segment_ids(timestamps_s(df, twin.spec), twin.spec.sample_period_s)
    ends = np.array(
        [t for t in range(window - 1, len(df)) if seg[t - window + 1] == seg[t]], dtype=int
    )
    if ends.size == 0:
        raise InvalidInput(f"log too short to embed: need {window} contiguous samples")
    feats, mask = features(df, twin.layout, twin.norm)
    rows = torch.from_numpy(np.concatenate([feats, mask], axis=1))
    index = torch.from_numpy(ends).unsqueeze(1) + torch.arange(-window + 1, 1)
    out = [twin.model.encode(rows[chunk]) for chunk in index.split(BATCH)]
    return torch.cat(out).numpy().astype(float), ends


@dataclass(frozen=True)
class HorizonError:
    """Open-loop prediction error per sensor at each horizon k = 1..H samples."""

    horizon_s: np.ndarray  # (H,) seconds ahead
    rmse: dict[str, np.ndarray]  # tag -> (H,), the sensor's engineering unit
    rmse_in_std: dict[str, np.ndarray]  # tag -> (H,), in the sensor's training std
    samples: int  # predictions scored per horizon (at most)


def error_by_horizon(twin: Twin, df: pd.DataFrame, horizon: int, stride: int = 1) -> HorizonError:
    """RMSE of the twin's open-loop predictions against the log, at each horizon."""
    episode = open_loop(twin, df, horizon=horizon, stride=stride)
    ts = timestamps_s(df, twin.spec)
    starts = np.searchsorted(ts - ts[0], [step.time_s for step in episode.steps])
    ahead = starts[:, None] + np.arange(1, horizon + 1)
    rmse, in_std = {}, {}
    for tag in twin.layout.sensors:
        predicted = np.array(
            [step.plan.sensors[tag] for step in episode.steps if step.plan is not None]
        )
        truth = df[tag].to_numpy(dtype=float)[ahead]
        squared = (predicted - truth) ** 2
        counts = np.isfinite(squared).sum(axis=0)
        sums = np.nansum(squared, axis=0)
        rmse[tag] = np.sqrt(np.divide(sums, counts, out=np.full(horizon, np.nan), where=counts > 0))
        in_std[tag] = rmse[tag] / twin.norm.std[twin.norm.index(tag)]
    dt = twin.spec.sample_period_s
    return HorizonError(dt * np.arange(1, horizon + 1), rmse, in_std, len(starts))


def _as_matrix(z: np.ndarray) -> np.ndarray:
    values = np.asarray(z, dtype=float)
    if values.ndim != 2 or values.shape[1] < 1:
        raise InvalidInput(f"embeddings must be a matrix (N, D), got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise InvalidInput("embeddings contain NaN or infinite values")
    return values
