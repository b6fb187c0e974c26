"""The JEPA world model: context encoder, action-conditioned predictor, readout heads.

    z_t      = encoder(window of past sensors + actions, with missing samples masked)
    z_{t+1}  = z_t + predictor([z_t, u_t]) + B u_dose   (prediction in embedding space;
               B: a linear path for the actions the spec declares doses)
    y_t      = readout(z_t)                          (sensors, normalised units)

Training (see `twin.train`) matches rolled-out predictions to the encoder's embeddings of
the real future windows (stop-gradient; an EMA target is an option), with VICReg-style
variance and covariance terms (or SIGReg) against collapse. The planning predictor and the
readout are small tanh MLPs / linear maps so that the CasADi planner can rebuild them
exactly as symbolic expressions. Extra predictors ride along: an ensemble (member 0 is the
planning predictor; their disagreement measures uncertainty) and a coarse predictor that
jumps `coarse_steps` samples at once.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class JEPAConfig:
    window: int = 16
    embed_dim: int = 16
    encoder_hidden: int = 128
    predictor_hidden: int = 128
    # One hidden layer by default; the CSTR and turbofan recipes take two (processes/*.py:
    # open-loop error at 10 steps down by a third, closed loop as good or better), but two
    # made the glucose loop less safe and the tiny test twin's surprise signal weaker.
    predictor_layers: int = 1
    readout_hidden: int = 0  # 0: linear readout (keeps sensor limits linear in z)
    ensemble_size: int = 3  # predictors; member 0 is the one the planner uses
    coarse_steps: int = 4  # >0: a second predictor that jumps this many steps at once
    # Both off by default: with them the CSTR twin predicts a little better open loop but
    # plans 2.5x worse in closed loop (benchmarks/control.py, cost 46 vs 18).
    present_skip: bool = False  # a linear path from the latest sample to the embedding
    window_norm: bool = False  # RevIN-style: the conv sees the window relative to its end
    # actions that are doses (an amount per sample, `ActuatorKind.DOSE`): the predictor adds
    # them through a linear path B u too, as a dose adds to what is on board; set by training
    # from the spec (none for a checkpoint from before)
    dose_actions: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JEPAConfig:
        """A config from a checkpoint; fields it predates take the value they implied."""
        merged = {**LEGACY_FIELDS, **data}
        return cls(**{**merged, "dose_actions": tuple(merged["dose_actions"])})


LEGACY_FIELDS = {
    "ensemble_size": 1,
    "coarse_steps": 0,
    "present_skip": False,
    "window_norm": False,
    "dose_actions": (),
}
"""Fields added after the first checkpoints, with the behaviour those checkpoints had."""


class ContextEncoder(nn.Module):
    """Window (W, 2F) of values and masks -> embedding. Masks let it tell zero from missing.

    `window_norm` (RevIN-style): the convolution sees each window relative to its latest
    valid values and scaled by its own spread, so one shape detector serves every
    operating point; the level and spread enter the head directly. `present_skip`: the
    latest sample also reaches the embedding through a linear map, so a linear readout can
    recover the present sensors exactly.
    """

    def __init__(
        self,
        window: int,
        feature_dim: int,
        hidden: int,
        embed_dim: int,
        window_norm: bool = False,
        present_skip: bool = False,
    ) -> None:
        super().__init__()
        self.window_norm = window_norm
        self.conv = nn.Sequential(
            nn.Conv1d(2 * feature_dim, hidden // 2, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv1d(hidden // 2, hidden // 2, kernel_size=3, padding=1),
            nn.GELU(),
        )
        stats = 2 * feature_dim if window_norm else 0
        self.head = nn.Sequential(
            nn.Linear(window * hidden // 2 + 2 * feature_dim + stats, hidden),
            nn.GELU(),
            nn.Linear(hidden, embed_dim),
        )
        self.skip = nn.Linear(2 * feature_dim, embed_dim, bias=False) if present_skip else None

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        lead = windows.shape[:-2]
        x = windows.reshape(-1, *windows.shape[-2:])
        present = x[:, -1]
        extra: list[torch.Tensor] = []
        if self.window_norm:
            x, stats = _relative_window(x)
            extra.append(stats)
        h = self.conv(x.transpose(1, 2))
        # the latest sample enters directly: the present matters most for control
        out = self.head(torch.cat([h.flatten(1), present, *extra], dim=1))
        if self.skip is not None:
            out = out + self.skip(present)
        return out.reshape(*lead, -1)


def _relative_window(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values relative to the latest valid value of each feature, over the window's spread.

    x (B, W, 2F) -> the same shape with values replaced, and (B, 2F) level and log-spread.
    """
    f = x.shape[-1] // 2
    values, mask = x[..., :f], x[..., f:]
    count = mask.sum(dim=1).clamp_min(1.0)
    mean = (values * mask).sum(dim=1) / count
    spread = torch.sqrt(((values - mean.unsqueeze(1)) ** 2 * mask).sum(dim=1) / count + 1e-4)
    position = torch.arange(x.shape[1], dtype=x.dtype).view(1, -1, 1)
    latest = (position * mask).argmax(dim=1, keepdim=True)  # last valid row per feature
    level = values.gather(1, latest).squeeze(1)
    relative = (values - level.unsqueeze(1)) / spread.unsqueeze(1) * mask
    return torch.cat([relative, mask], dim=-1), torch.cat([level, torch.log(spread)], dim=-1)


class Predictor(nn.Module):
    """Residual tanh MLP, plus a linear path for dose actions: (z, u) -> next z."""

    def __init__(
        self,
        embed_dim: int,
        action_dim: int,
        hidden: int,
        layers: int,
        dose_actions: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.register_buffer(
            "doses", torch.tensor(dose_actions, dtype=torch.long), persistent=False
        )
        self.action_gain = (
            nn.Linear(len(dose_actions), embed_dim, bias=False) if dose_actions else None
        )
        self.action_dim = action_dim
        dims = [embed_dim + action_dim] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.Tanh()]
        blocks.append(nn.Linear(dims[-1], embed_dim))
        self.net = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        step = self.net(torch.cat([z, u], dim=-1))
        if self.action_gain is not None:
            step = step + self.action_gain(u[..., self.doses])
        return z + step

    def action_matrix(self) -> torch.Tensor | None:
        """B (D, A) of the linear dose path (zero columns for other actions), or None."""
        if self.action_gain is None:
            return None
        gain = torch.zeros(self.action_gain.out_features, self.action_dim)
        gain[:, self.doses] = self.action_gain.weight.detach()
        return gain

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
            nn.Linear(embed_dim, out_dim)
            if hidden == 0
            else nn.Sequential(nn.Linear(embed_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class JEPA(nn.Module):
    def __init__(
        self, config: JEPAConfig, feature_dim: int, action_dim: int, observed_dim: int
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = ContextEncoder(
            config.window,
            feature_dim,
            config.encoder_hidden,
            config.embed_dim,
            config.window_norm,
            config.present_skip,
        )
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.predictor = Predictor(
            config.embed_dim,
            action_dim,
            config.predictor_hidden,
            config.predictor_layers,
            tuple(config.dose_actions),
        )
        self.readout = Readout(config.embed_dim, observed_dim, config.readout_hidden)
        if config.ensemble_size > 1:
            # member 0 is the planning predictor itself; disagreement is an uncertainty signal
            self.ensemble = nn.ModuleList(
                [self.predictor]
                + [
                    Predictor(
                        config.embed_dim,
                        action_dim,
                        config.predictor_hidden,
                        config.predictor_layers,
                        tuple(config.dose_actions),
                    )
                    for _ in range(config.ensemble_size - 1)
                ]
            )
        if config.coarse_steps > 0:
            self.coarse = Predictor(
                config.embed_dim,
                action_dim * config.coarse_steps,
                config.predictor_hidden,
                config.predictor_layers,
            )

    def members(self) -> list[Predictor]:
        """The ensemble's predictors, the planning predictor first."""
        return list(self.ensemble) if self.config.ensemble_size > 1 else [self.predictor]

    def predictor_rollout(
        self, z0: torch.Tensor, actions: torch.Tensor, member: int = 0
    ) -> torch.Tensor:
        return self.members()[member].rollout(z0, actions)

    def ensemble_rollout(self, z0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(M, B, H, D): every member's rollout from the same embeddings."""
        return torch.stack([m.rollout(z0, actions) for m in self.members()])

    def coarse_rollout(self, z0: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Embeddings at steps k, 2k, ... (B, H // k, D) from blocks of k actions at once."""
        k = self.config.coarse_steps
        blocks = actions.shape[1] // k
        grouped = actions[:, : blocks * k].reshape(actions.shape[0], blocks, -1)
        return self.coarse.rollout(z0, grouped)

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        for online, target in zip(
            self.encoder.parameters(), self.target_encoder.parameters(), strict=True
        ):
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


def sigreg(
    z: torch.Tensor,
    directions: int = 64,
    points: int = 17,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sketched isotropic Gaussian regulariser (SIGReg, LeJEPA / LeWorldModel).

    Projects the batch of embeddings (N, D) on random unit directions and measures, per
    direction, the Epps-Pulley distance between the empirical characteristic function and
    that of N(0, 1), weighted by a Gaussian window over t in [0, 3]. Zero for embeddings
    that are standard normal in every direction: full rank, unit spread, no tuning per task.
    """
    d = z.shape[1]
    dirs = torch.randn(d, directions, generator=generator, dtype=z.dtype)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    proj = z @ dirs  # (N, M)
    t = torch.linspace(0.0, 3.0, points, dtype=z.dtype)
    phase = proj.unsqueeze(-1) * t  # (N, M, T)
    real, imag = torch.cos(phase).mean(dim=0), torch.sin(phase).mean(dim=0)
    gauss = torch.exp(-0.5 * t**2)
    err = (real - gauss) ** 2 + imag**2
    weighted = err * gauss
    # trapezoid over t; x2 for the symmetric half t < 0
    integral = 2.0 * torch.trapezoid(weighted, t, dim=-1)
    return integral.mean()
