"""After or between training epochs: the held-out figures of a twin in training and the
goal bank it is saved with."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .data import WindowDataset
from .model import JEPA, effective_rank
from .twin_model import GoalBank

BANK_SIZE = 4000
NORMAL_Q99 = 2.5758
"""The 99th percentile of |x| for a unit normal: a tail quantile over this is the std a
normal error with that tail would have."""


@torch.no_grad()
def evaluate(model: JEPA, data: WindowDataset, idx: torch.Tensor) -> dict[str, Any]:
    model.eval()
    idx = idx[:2048]
    batch = data.batch(idx)
    z_all = model.encode(batch["windows"])
    target = model.target_encoder(batch["windows"][:, 1:])  # a copy of the encoder without EMA
    predicted = model.predictor.rollout(z_all[:, 0], batch["actions"])
    prediction = float(((predicted - target) ** 2).mean())
    z0 = z_all[:, 0]
    std = z0.std(dim=0)
    scale = np.asarray(data.norm.std)[[data.norm.index(t) for t in data.layout.observed]]

    def rmse(z: torch.Tensor, step: int) -> dict[str, float]:
        """Per sensor, engineering units: readout of `z` against the sample at `step`."""
        y = model.readout(z) - batch["obs"][:, step]
        mask = batch["obs_mask"][:, step]
        rmse_norm = torch.sqrt((y**2 * mask).sum(0) / mask.sum(0).clamp_min(1.0)).numpy()
        return {
            t: float(rmse_norm[i] * scale[i])
            for i, t in enumerate(data.layout.observed)
            if t in data.layout.sensors
        }

    def tail(z: torch.Tensor, step: int) -> dict[str, float]:
        """Per sensor, engineering units: the held-out miss's 99th percentile over
        `NORMAL_Q99`, the std of a normal miss with that tail. A sampled analyser's
        forecast is exact between its updates and misses by a jump at each: its RMSE
        understates how far the twin's usual misses reach."""
        y = (model.readout(z) - batch["obs"][:, step]).abs()
        mask = batch["obs_mask"][:, step] > 0
        out = {}
        for i, t in enumerate(data.layout.observed):
            seen = y[mask[:, i], i]
            if t in data.layout.sensors and len(seen) >= 100:
                q99 = float(torch.quantile(seen, 0.99))
                out[t] = q99 / NORMAL_Q99 * float(scale[i])
        return out

    readout_rmse, forecast_rmse = rmse(z0, 0), rmse(predicted[:, 0], 1)
    forecast_tail = tail(predicted[:, 0], 1)
    model.train()
    return {
        "prediction": prediction,
        "effective_rank": effective_rank(z0),
        "dim_std_min": float(std.min()),
        "dim_std_mean": float(std.mean()),
        "readout_rmse": readout_rmse,
        "forecast_rmse": forecast_rmse,
        "forecast_tail": forecast_tail,
    }


@torch.no_grad()
def build_goal_bank(model: JEPA, data: WindowDataset, seed: int) -> GoalBank:
    rows = data.starts
    if len(rows) > BANK_SIZE:
        gen = torch.Generator().manual_seed(seed)
        rows = rows[torch.randperm(len(rows), generator=gen)[:BANK_SIZE]].sort().values
    windows = data.windows_at(rows)
    embeddings = torch.cat([model.encode(chunk) for chunk in windows.split(1024)])
    n_sensors = len(data.layout.sensors)
    sensor_values = windows[:, :, :n_sensors]
    unsteadiness = sensor_values.std(dim=1).sum(dim=1)
    return GoalBank(embeddings, data.obs[rows], unsteadiness, data.actions[rows])
