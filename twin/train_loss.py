"""What one training batch costs: the training settings (`TrainConfig`, re-exported by
twin.train) and the multi-step JEPA loss they weigh, with the anti-collapse terms and the
history masking that teaches the encoder to work from a partial window."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .model import JEPA, JEPAConfig, sigreg, vicreg_terms


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
    readout_weight: float = 25.0
    # anti-collapse: "ema_vicreg" (EMA target + variance/covariance), "vicreg" (target is
    # the online encoder, stop-gradient), "sigreg" (online target + SIGReg), "ema" (EMA only)
    collapse: str = "vicreg"
    sigreg_weight: float = 1.0
    # readout of rolled-out embeddings vs the future (the CSTR and turbofan recipes take 25)
    predicted_readout_weight: float = 5.0
    sparse_targets: bool = True  # encode targets at steps 1, 2, 4, ..., H only
    holdout_fraction: float = 0.15
    history_dropout: float = 0.2  # share of rollout starts with a truncated history
    sample_dropout: float = 0.02  # share of samples hidden at random
    seed: int = 0
    max_seconds: float | None = None
    model: JEPAConfig = field(default_factory=JEPAConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mask_history(
    windows: torch.Tensor, cfg: TrainConfig, generator: torch.Generator
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


COLLAPSE_METHODS = ("ema_vicreg", "vicreg", "sigreg", "ema")


def uses_ema(cfg: TrainConfig) -> bool:
    return cfg.collapse in ("ema_vicreg", "ema")


def target_steps(horizon: int, sparse: bool) -> torch.Tensor:
    """Rollout steps (1..H) whose windows are encoded as targets: all, or 1, 2, 4, ..., H.

    Encoding the H future windows is most of a batch's cost; the geometric subset keeps
    short and long horizons in the loss at a fraction of it.
    """
    if not sparse:
        return torch.arange(1, horizon + 1)
    steps = {horizon}
    k = 1
    while k < horizon:
        steps.add(k)
        k *= 2
    return torch.tensor(sorted(steps))


def batch_loss(
    model: JEPA,
    batch: dict[str, torch.Tensor],
    cfg: TrainConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    windows, actions, obs, obs_mask = (
        batch["windows"],
        batch["actions"],
        batch["obs"],
        batch["obs_mask"],
    )
    steps = target_steps(actions.shape[1], cfg.sparse_targets)
    rows = torch.cat([torch.zeros(1, dtype=torch.long), steps])
    z_all = model.encode(windows[:, rows])  # (B, 1 + len(steps), D)
    if uses_ema(cfg):
        with torch.no_grad():
            target = model.target_encoder(windows[:, steps])
    else:
        target = z_all[:, 1:].detach()
    z0 = z_all[:, 0]
    if generator is not None and (cfg.history_dropout > 0 or cfg.sample_dropout > 0):
        z0 = model.encode(mask_history(windows[:, 0], cfg, generator))
    flat = z_all.reshape(-1, z_all.shape[-1])
    variance, covariance = vicreg_terms(flat)
    anti_collapse = torch.zeros(())
    if cfg.collapse in ("ema_vicreg", "vicreg"):
        anti_collapse = cfg.variance_weight * variance + cfg.covariance_weight * covariance
    elif cfg.collapse == "sigreg":
        anti_collapse = cfg.sigreg_weight * sigreg(flat, generator=generator)
    readout = _masked_mse(model.readout(z_all), obs[:, rows], obs_mask[:, rows])
    members = model.members()
    predicted = members[0].rollout(z0, actions)
    prediction = ((predicted[:, steps - 1] - target) ** 2).mean()
    loss = prediction + anti_collapse + cfg.readout_weight * readout
    loss = loss + cfg.predicted_readout_weight * _masked_mse(
        model.readout(predicted), obs[:, 1:], obs_mask[:, 1:]
    )
    # the other members and the coarse predictor learn on the encoder's embeddings without
    # shaping them (z0 detached): the encoder serves the planning predictor
    extra = torch.zeros(())
    for member in members[1:]:
        rolled = member.rollout(z0.detach(), actions)
        extra = extra + ((rolled[:, steps - 1] - target) ** 2).mean()
        extra = extra + cfg.predicted_readout_weight * _masked_mse(
            model.readout(rolled), obs[:, 1:], obs_mask[:, 1:]
        )
    k = model.config.coarse_steps
    if k and actions.shape[1] >= k:
        coarse = model.coarse_rollout(z0.detach(), actions)
        block_ends = torch.arange(1, coarse.shape[1] + 1) * k
        encoded = torch.isin(steps, block_ends)  # targets exist at these block ends
        if encoded.any():
            blocks = steps[encoded] // k - 1
            extra = extra + ((coarse[:, blocks] - target[:, encoded]) ** 2).mean()
        extra = extra + cfg.predicted_readout_weight * _masked_mse(
            model.readout(coarse),
            obs[:, k::k][:, : coarse.shape[1]],
            obs_mask[:, k::k][:, : coarse.shape[1]],
        )
    parts = {
        "prediction": prediction.item(),
        "variance": variance.item(),
        "covariance": covariance.item(),
        "readout": readout.item(),
        "extra_predictors": extra.item(),
    }
    return loss + extra, parts


def _masked_mse(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred - truth) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)
