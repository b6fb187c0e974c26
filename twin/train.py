"""Training a twin: multi-step JEPA loss in embedding space, EMA target, VICReg terms.

Loss per batch (all in normalised units):
    prediction  mean over k=1..H of |rollout_k - sg(target_encoder(window_{t+k}))|^2
    variance    hinge keeping every embedding dimension's std >= 1      (anti-collapse)
    covariance  off-diagonal covariance of embeddings                   (anti-collapse)
    readout     masked MSE of readout(encoder(window)) to the observed sensors

The named anti-collapse method is "EMA target encoder + VICReg variance/covariance";
effective rank and per-dimension std are measured on held-out windows every epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .data import WindowDataset
from .model import JEPA, JEPAConfig, effective_rank, vicreg_terms
from .spec import ProcessSpec
from .twin_model import GoalBank, Twin

BANK_SIZE = 4000


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    rollout_steps: int = 16
    ema_momentum: float = 0.99
    variance_weight: float = 1.0
    covariance_weight: float = 0.04
    readout_weight: float = 5.0
    holdout_fraction: float = 0.15
    history_dropout: float = 0.2  # share of rollout starts with a truncated history
    sample_dropout: float = 0.02  # share of samples hidden at random
    seed: int = 0
    max_seconds: float | None = None
    model: JEPAConfig = field(default_factory=JEPAConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    holdout_prediction: float
    holdout_readout_rmse: dict[str, float]  # engineering units, per sensor
    effective_rank: float
    dim_std_min: float
    dim_std_mean: float
    seconds: float


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def mask_history(windows: torch.Tensor, cfg: TrainConfig, generator: torch.Generator
                 ) -> torch.Tensor:
    """Hide a random leading part of some windows, and a few random samples in all.

    A control loop starts with an empty history and live data has holes; the encoder
    must give a usable embedding from whatever part of the window is present.
    """
    b, w, f2 = windows.shape
    f = f2 // 2
    keep = torch.rand(b, w, 1, generator=generator) >= cfg.sample_dropout
    keep[:, -1] = True  # the present sample is what the controller always has
    cut = torch.randint(0, w, (b, 1), generator=generator)
    truncated = torch.rand(b, 1, generator=generator) < cfg.history_dropout
    position = torch.arange(w).unsqueeze(0)
    keep &= ~(truncated & (position < cut)).unsqueeze(-1)
    keep = keep.float()
    return torch.cat([windows[..., :f] * keep, windows[..., f:] * keep], dim=-1)


def batch_loss(model: JEPA, batch: dict[str, torch.Tensor], cfg: TrainConfig,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    windows, actions = batch["windows"], batch["actions"]
    z_all = model.encode(windows)  # (B, H+1, D)
    with torch.no_grad():
        target = model.target_encoder(windows[:, 1:])
    z0 = z_all[:, 0]
    if generator is not None and (cfg.history_dropout > 0 or cfg.sample_dropout > 0):
        z0 = model.encode(mask_history(windows[:, 0], cfg, generator))
    predicted = model.predictor.rollout(z0, actions)
    prediction = ((predicted - target) ** 2).mean()
    variance, covariance = vicreg_terms(z_all.reshape(-1, z_all.shape[-1]))
    err = (model.readout(z_all) - batch["obs"]) ** 2 * batch["obs_mask"]
    readout = err.sum() / batch["obs_mask"].sum().clamp_min(1.0)
    loss = (prediction + cfg.variance_weight * variance + cfg.covariance_weight * covariance
            + cfg.readout_weight * readout)
    parts = {"prediction": prediction.item(), "variance": variance.item(),
             "covariance": covariance.item(), "readout": readout.item()}
    return loss, parts


@torch.no_grad()
def evaluate(model: JEPA, data: WindowDataset, idx: torch.Tensor) -> dict[str, Any]:
    model.eval()
    idx = idx[: 2048]
    batch = data.batch(idx)
    z_all = model.encode(batch["windows"])
    target = model.target_encoder(batch["windows"][:, 1:])
    predicted = model.predictor.rollout(z_all[:, 0], batch["actions"])
    prediction = float(((predicted - target) ** 2).mean())
    z0 = z_all[:, 0]
    std = z0.std(dim=0)
    y = model.readout(z0) - batch["obs"][:, 0]
    mask = batch["obs_mask"][:, 0]
    rmse_norm = torch.sqrt((y**2 * mask).sum(0) / mask.sum(0).clamp_min(1.0)).numpy()
    scale = np.asarray(data.norm.std)[[data.norm.index(t) for t in data.layout.observed]]
    readout_rmse = {t: float(rmse_norm[i] * scale[i]) for i, t in enumerate(data.layout.observed)
                    if t in data.layout.sensors}
    model.train()
    return {"prediction": prediction, "effective_rank": effective_rank(z0),
            "dim_std_min": float(std.min()), "dim_std_mean": float(std.mean()),
            "readout_rmse": readout_rmse}


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
    return GoalBank(embeddings, data.obs[rows], unsteadiness)


def train_twin(df: pd.DataFrame, spec: ProcessSpec, cfg: TrainConfig | None = None,
               show_progress: bool = True,
               on_epoch: Callable[[EpochLog], None] | None = None) -> tuple[Twin, list[EpochLog]]:
    """Train a twin on a log; deterministic for a given seed, data and machine."""
    cfg = cfg or TrainConfig()
    seed_everything(cfg.seed)
    data = WindowDataset(df, spec, cfg.model.window, cfg.rollout_steps)
    train_idx, hold_idx = data.split(cfg.holdout_fraction)
    model = JEPA(cfg.model, data.layout.feature_dim, len(data.layout.actions),
                 len(data.layout.observed))
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate,
                                  weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=cfg.learning_rate, total_steps=cfg.epochs * steps_per_epoch)
    history: list[EpochLog] = []
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    columns = [TextColumn("[bold]training twin"), BarColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task("", total=cfg.epochs)
        model.train()
        for epoch in range(cfg.epochs):
            epoch_start, total = time.perf_counter(), 0.0
            order = train_idx[torch.randperm(len(train_idx), generator=gen)]
            for chunk in order.split(cfg.batch_size):
                loss, _ = batch_loss(model, data.batch(chunk), cfg, gen)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimiser.step()
                schedule.step()
                model.update_target(cfg.ema_momentum)
                total += loss.item() * len(chunk)
            stats = evaluate(model, data, hold_idx)
            log = EpochLog(epoch + 1, total / len(train_idx), stats["prediction"],
                           stats["readout_rmse"], stats["effective_rank"], stats["dim_std_min"],
                           stats["dim_std_mean"], time.perf_counter() - epoch_start)
            history.append(log)
            if on_epoch:
                on_epoch(log)
            progress.update(task, advance=1, description=_describe(log, spec))
            if cfg.max_seconds and time.perf_counter() - started > cfg.max_seconds:
                break
    model.eval()
    final = history[-1]
    metrics = {
        "epochs": final.epoch,
        "train_seconds": time.perf_counter() - started,
        "train_loss": final.train_loss,
        "holdout_prediction": final.holdout_prediction,
        "effective_rank": final.effective_rank,
        "dim_std_min": final.dim_std_min,
        "readout_rmse": final.holdout_readout_rmse,
        "windows": len(data),
        "history": [asdict(h) for h in history],
    }
    twin = Twin(spec, cfg.model, data.norm, model, build_goal_bank(model, data, cfg.seed),
                metrics=metrics, train_config=cfg.to_dict())
    return twin, history


def _describe(log: EpochLog, spec: ProcessSpec) -> str:
    units = {t.name: t.unit for t in spec.tags}
    rmse = " ".join(f"{t}±{v:.3g} {units[t]}" for t, v in log.holdout_readout_rmse.items())
    return (f"loss {log.train_loss:.3f} | pred {log.holdout_prediction:.3f} | "
            f"eff. rank {log.effective_rank:.1f} | readout RMSE {rmse}")
