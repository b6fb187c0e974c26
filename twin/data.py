"""From a logged DataFrame to normalised, masked windows the JEPA trains on.

Row j of a log holds the measurements at time j and the actuator value applied from
time j on. The twin's feature for row j pairs the measurements at j with the action
applied *before* them (row j-1): a window then shows what happened and why, and the
predictor supplies the next action explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .data_checks import (  # noqa: F401 (re-exported: callers check logs through twin.data)
    MAX_DIGITS,
    RATE_TOLERANCE,
    check_log,
    distinct_format,
    rounding_error,
    significant_digits,
    timestamps_s,
)
from .errors import InvalidInput
from .spec import ProcessSpec

STD_FLOOR = 1e-6


@dataclass(frozen=True)
class Normalizer:
    """Per-tag affine scaling to zero mean, unit spread, in spec order."""

    tags: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, df: pd.DataFrame, tags: tuple[str, ...]) -> Normalizer:
        mean = df[list(tags)].mean(skipna=True).to_numpy(dtype=float)
        std = df[list(tags)].std(skipna=True).to_numpy(dtype=float)
        std = np.where(np.isfinite(std) & (std > STD_FLOOR), std, 1.0)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        return cls(tags, tuple(mean.tolist()), tuple(std.tolist()))

    def index(self, tag: str) -> int:
        return self.tags.index(tag)

    def normalise(self, values: np.ndarray, tags: tuple[str, ...] | None = None) -> np.ndarray:
        mean, std = self._select(tags)
        return (values - mean) / std

    def denormalise(self, values: np.ndarray, tags: tuple[str, ...] | None = None) -> np.ndarray:
        mean, std = self._select(tags)
        return values * std + mean

    def _select(self, tags: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray]:
        idx = [self.index(t) for t in (tags or self.tags)]
        return np.asarray(self.mean)[idx], np.asarray(self.std)[idx]

    def to_dict(self) -> dict[str, list]:
        return {"tags": list(self.tags), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, list]) -> Normalizer:
        return cls(tuple(data["tags"]), tuple(data["mean"]), tuple(data["std"]))


@dataclass(frozen=True)
class Layout:
    """Which tags feed the twin, and in which order."""

    observed: tuple[str, ...]  # sensors then measured disturbances
    actions: tuple[str, ...]
    sensors: tuple[str, ...]

    @classmethod
    def from_spec(cls, spec: ProcessSpec) -> Layout:
        sensors = tuple(t.name for t in spec.sensors)
        disturbances = tuple(t.name for t in spec.disturbances)
        return cls(sensors + disturbances, tuple(t.name for t in spec.actuators), sensors)

    @property
    def all_tags(self) -> tuple[str, ...]:
        return self.observed + self.actions

    @property
    def feature_dim(self) -> int:
        return len(self.observed) + len(self.actions)


def features(df: pd.DataFrame, layout: Layout, norm: Normalizer) -> tuple[np.ndarray, np.ndarray]:
    """Per-row normalised features [observed_j, action_{j-1}] and their validity mask."""
    obs = norm.normalise(df[list(layout.observed)].to_numpy(dtype=float), layout.observed)
    act = norm.normalise(df[list(layout.actions)].to_numpy(dtype=float), layout.actions)
    prev_act = np.vstack([np.full((1, act.shape[1]), np.nan), act[:-1]])
    feats = np.hstack([obs, prev_act])
    mask = np.isfinite(feats)
    return np.where(mask, feats, 0.0).astype(np.float32), mask.astype(np.float32)


def segment_ids(time_s: np.ndarray, sample_period_s: float) -> np.ndarray:
    """Rows split into contiguous segments wherever the log has a gap."""
    gaps = np.diff(time_s) > 1.5 * sample_period_s
    return np.concatenate([[0], np.cumsum(gaps)])


class WindowDataset:
    """All windows of a log, ready for multi-step JEPA training.

    Sample t gives the H+1 context windows ending at rows t..t+H, the actions applied at
    t..t+H-1, and the observations at rows t..t+H for the readout heads.
    """

    def __init__(
        self,
        df: pd.DataFrame,
        spec: ProcessSpec,
        window: int,
        horizon: int,
        norm: Normalizer | None = None,
    ) -> None:
        check_log(df, spec)
        self.spec, self.window, self.horizon = spec, window, horizon
        self.layout = Layout.from_spec(spec)
        self.norm = norm or Normalizer.fit(df, self.layout.all_tags)
        feats, mask = features(df, self.layout, self.norm)
        n_obs = len(self.layout.observed)
        self.feats = torch.from_numpy(np.concatenate([feats, mask], axis=1))
        self.obs = torch.from_numpy(feats[:, :n_obs])
        self.obs_mask = torch.from_numpy(mask[:, :n_obs])
        self.actions = torch.from_numpy(
            self.norm.normalise(
                df[list(self.layout.actions)].to_numpy(dtype=float), self.layout.actions
            ).astype(np.float32)
        )
        seg = segment_ids(timestamps_s(df, spec), spec.sample_period_s)
        first = window  # row 0 has no previous action
        starts = [
            t for t in range(first, len(df) - horizon) if seg[t - window + 1] == seg[t + horizon]
        ]
        if not starts:
            raise InvalidInput(
                f"log too short: need more than {window + horizon + 1} contiguous samples"
            )
        self.starts = torch.tensor(starts, dtype=torch.long)
        self._offsets = torch.arange(-window + 1, 1)

    def __len__(self) -> int:
        return len(self.starts)

    def windows_at(self, rows: torch.Tensor) -> torch.Tensor:
        """Context windows ending at `rows` (any shape) -> (*rows.shape, W, 2F)."""
        return self.feats[rows.unsqueeze(-1) + self._offsets]

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.starts[idx]
        steps = t.unsqueeze(1) + torch.arange(self.horizon + 1)
        return {
            "windows": self.windows_at(steps),  # (B, H+1, W, 2F)
            "actions": self.actions[steps[:, :-1]],  # (B, H, A)
            "obs": self.obs[steps],  # (B, H+1, O)
            "obs_mask": self.obs_mask[steps],
        }

    def split(self, holdout_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Chronological split of sample indices: the hold-out is the end of the log."""
        n = len(self)
        cut = int(n * (1.0 - holdout_fraction))
        gap = self.window + self.horizon  # no window shared across the cut
        return torch.arange(0, max(cut - gap, 1)), torch.arange(min(cut, n - 1), n)


def window_from_rows(
    rows: list[dict[str, float | None]],
    prev_actions: list[dict[str, float]],
    layout: Layout,
    norm: Normalizer,
) -> torch.Tensor:
    """One live context window (W, 2F) from recent measurements and the actions before them."""
    obs = np.array(
        [[np.nan if r.get(t) is None else float(r[t]) for t in layout.observed] for r in rows],
        dtype=float,
    )
    act = np.array(
        [
            [np.nan if a is None or a.get(t) is None else float(a[t]) for t in layout.actions]
            for a in prev_actions
        ],
        dtype=float,
    )
    feats = np.hstack([norm.normalise(obs, layout.observed), norm.normalise(act, layout.actions)])
    mask = np.isfinite(feats)
    out = np.concatenate([np.where(mask, feats, 0.0), mask], axis=1).astype(np.float32)
    return torch.from_numpy(out)
