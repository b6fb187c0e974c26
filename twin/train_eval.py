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

    readout_rmse, forecast_rmse = rmse(z0, 0), rmse(predicted[:, 0], 1)
    model.train()
    return {
        "prediction": prediction,
        "effective_rank": effective_rank(z0),
        "dim_std_min": float(std.min()),
        "dim_std_mean": float(std.mean()),
        "readout_rmse": readout_rmse,
        "forecast_rmse": forecast_rmse,
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
