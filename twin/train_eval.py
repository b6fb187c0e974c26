"""After or between training epochs: the held-out figures of a twin in training and the
goal bank it is saved with."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import WindowDataset
from .model import JEPA, effective_rank
from .twin_model import GoalBank

BANK_SIZE = 4000
NORMAL_Q99 = 2.5758
"""The 99th percentile of |x| for a unit normal: a tail quantile over this is the std a
normal error with that tail would have."""
CARRY_STEPS = 64
"""Forecast steps over which training measures how long a readout miss lasts (the longest
derived plan is 60 samples; later steps keep the last step's carry)."""
CARRY_WINDOWS = 2048  # held-out starts the carry is measured on, at most


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


@torch.no_grad()
def readout_carry(
    model: JEPA, df: pd.DataFrame, data: WindowDataset, first_held_out: int
) -> dict[str, list[float]]:
    """Per sensor, per forecast step k = 1..`CARRY_STEPS`: how much of the twin's present
    readout miss e_0 (measured minus the readout of the present embedding) is still in its
    k-step forecast miss e_k on the held-out end of the log, as the least-squares factor
    E[e_k e_0] / E[e_0^2], clipped to [0, 1]. A forecast adds carry_k e_0
    (`Twin.carried`): a miss the readout makes steadily (a sampled analyser held between its
    updates, a slow bias) is not made again at every step, and noise is not carried. Empty
    when the held-out end is too short for the steps."""
    try:
        long = WindowDataset(df, data.spec, data.window, CARRY_STEPS, data.norm)
    except ValueError:
        return {}
    rows = long.starts[long.starts >= first_held_out]
    if len(rows) < 100:
        return {}
    rows = rows[:: max(1, len(rows) // CARRY_WINDOWS)]
    steps = rows.unsqueeze(1) + torch.arange(CARRY_STEPS + 1)
    z0 = torch.cat([model.encode(c) for c in long.windows_at(rows).split(1024)])
    read = model.readout(model.predictor.rollout(z0, long.actions[steps[:, :-1]]))
    present = model.readout(z0)
    obs, seen = long.obs[steps], long.obs_mask[steps] > 0.5
    miss0 = torch.where(seen[:, 0], obs[:, 0] - present, 0.0)
    both = seen[:, 1:] & seen[:, :1]
    miss = torch.where(both, obs[:, 1:] - read, 0.0)
    together = (miss * miss0.unsqueeze(1)).sum(0) / both.sum(0).clamp_min(1)
    spread = (miss0**2).sum(0) / seen[:, 0].sum(0).clamp_min(1)
    carry = (together / spread.clamp_min(1e-12)).clamp(0.0, 1.0)  # (K, O)
    return {
        tag: [round(float(v), 4) for v in carry[:, i]]
        for i, tag in enumerate(data.layout.observed)
        if tag in data.layout.sensors
    }
