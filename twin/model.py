"""The JEPA world model: context encoder, action-conditioned predictor, readout heads.

    z_t      = encoder(window of past sensors + actions, with missing samples masked)
    z_{t+1}  = z_t + predictor([z_t, u_t])          (prediction in embedding space)
    y_t      = readout(z_t)                          (sensors, normalised units)

Training (see `twin.train`) matches rolled-out predictions to an EMA copy of the encoder
on the real future windows (stop-gradient), with VICReg-style variance and covariance
terms against collapse. The predictor and readout are small tanh MLPs / linear maps so
that the CasADi planner can rebuild them exactly as symbolic expressions.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class JEPAConfig:
    window: int = 16
    embed_dim: int = 16
    encoder_hidden: int = 128
    predictor_hidden: int = 128
    predictor_layers: int = 1
    readout_hidden: int = 0  # 0: linear readout (keeps sensor limits linear in z)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class ContextEncoder(nn.Module):
    """Window (W, 2F) of values and masks -> embedding. Masks let it tell zero from missing."""

    def __init__(self, window: int, feature_dim: int, hidden: int, embed_dim: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(2 * feature_dim, hidden // 2, kernel_size=3, padding=1), nn.GELU(),
            nn.Conv1d(hidden // 2, hidden // 2, kernel_size=3, padding=1), nn.GELU(),
        )
        self.head = nn.Sequential(
            nn.Linear(window * hidden // 2 + 2 * feature_dim, hidden), nn.GELU(),
            nn.Linear(hidden, embed_dim),
        )

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        lead = windows.shape[:-2]
        x = windows.reshape(-1, *windows.shape[-2:])
        h = self.conv(x.transpose(1, 2))
        # the latest sample enters directly: the present matters most for control
        out = self.head(torch.cat([h.flatten(1), x[:, -1]], dim=1))
        return out.reshape(*lead, -1)


class Predictor(nn.Module):
    """Residual tanh MLP: (z, u) -> next z."""

    def __init__(self, embed_dim: int, action_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        dims = [embed_dim + action_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.Tanh()]
        blocks.append(nn.Linear(dims[-1], embed_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return z + self.net(torch.cat([z, u], dim=-1))

    def rollout(self, z0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """z0 (B, D), actions (B, H, A) -> predicted embeddings (B, H, D) for steps 1..H."""
        out, z = [], z0
        for k in range(actions.shape[1]):
            z = self(z, actions[:, k])
            out.append(z)
        return torch.stack(out, dim=1)


class Readout(nn.Module):
    def __init__(self, embed_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.net: nn.Module = (
            nn.Linear(embed_dim, out_dim) if hidden == 0
            else nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class JEPA(nn.Module):
    def __init__(self, config: JEPAConfig, feature_dim: int, action_dim: int,
                 observed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.encoder = ContextEncoder(config.window, feature_dim, config.encoder_hidden,
                                      config.embed_dim)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor = Predictor(config.embed_dim, action_dim, config.predictor_hidden,
                                   config.predictor_layers)
        self.readout = Readout(config.embed_dim, observed_dim, config.readout_hidden)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        for online, target in zip(self.encoder.parameters(), self.target_encoder.parameters(),
                                  strict=True):
            target.mul_(momentum).add_(online.detach(), alpha=1.0 - momentum)

    def encode(self, windows: torch.Tensor) -> torch.Tensor:
        return self.encoder(windows)


def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred embeddings (Roy & Vetterli)."""
    z = z - z.mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum().clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return float(torch.exp(entropy))


def vicreg_terms(z: torch.Tensor, std_target: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Variance hinge (each dimension keeps spread) and off-diagonal covariance penalty."""
    z = z - z.mean(dim=0)
    std = torch.sqrt(z.var(dim=0) + 1e-4)
    variance = torch.relu(std_target - std).mean()
    cov = (z.T @ z) / max(z.shape[0] - 1, 1)
    off = cov - torch.diag(torch.diag(cov))
    covariance = (off**2).sum() / z.shape[1]
    return variance, covariance
