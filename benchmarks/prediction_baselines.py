"""Honest baselines for open-loop prediction, on the same windows and data as the twin.

Every forecaster answers the same question: given the context window ending at row t
(observed tags and the actions before them, normalised as the twin normalises them) and
the actions really applied at t..t+H-1, predict the observed tags at t+1..t+H. All work
in normalised units; the benchmark turns the answers into engineering units.

- `Persistence`: the last measured value, held.
- `ARX`: linear in the last p observations and actions, least squares (ridge), the lag p
  chosen on a validation tail of the training log; p = 1 is DMD with control.
- `GRUForecaster`: a supervised sequence model (GRU over the window, GRU cell over the
  future actions) trained on the multi-step error of the observations themselves.
- `AutoencoderWorldModel`: the non-JEPA world model; the twin's own encoder with a
  decoder that reconstructs the window, and latent dynamics z' = z + MLP([z, u]) trained
  to reach the (stop-gradient) encoding of the next window, read out through the decoder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from twin.data import WindowDataset
from twin.model import ContextEncoder, Predictor
from twin.train import BudgetSchedule


@dataclass(frozen=True)
class Budget:
    """The training budget every learned model gets: same epochs, same wall-clock cap."""

    epochs: int
    max_seconds: float
    batch_size: int = 128
    learning_rate: float = 2e-3
    rollout_steps: int = 16
    seed: int = 0


class Forecaster:
    name = "forecaster"

    def fit(self, data: WindowDataset) -> Forecaster:
        return self

    def predict(self, windows: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
        """windows (B, W, 2F), actions (B, H, A) -> observed (B, H, O), normalised."""
        raise NotImplementedError


def _n_observed(data: WindowDataset) -> int:
    return len(data.layout.observed)


def _last_observed(windows: torch.Tensor, n_obs: int) -> np.ndarray:
    """Most recent valid value of each observed tag in each window (0 if none)."""
    f = windows.shape[-1] // 2
    values = windows[..., :n_obs].numpy()
    mask = windows[..., f : f + n_obs].numpy() > 0.5
    idx = np.where(mask, np.arange(values.shape[1])[None, :, None], -1).max(axis=1)
    rows = np.arange(values.shape[0])[:, None]
    cols = np.arange(n_obs)[None, :]
    last = values[rows, np.clip(idx, 0, None), cols]
    return np.where(idx >= 0, last, 0.0)


class Persistence(Forecaster):
    name = "persistence"

    def fit(self, data: WindowDataset) -> Persistence:
        self.n_obs = _n_observed(data)
        return self

    def predict(self, windows: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
        last = _last_observed(windows, self.n_obs)
        return np.repeat(last[:, None, :], actions.shape[1], axis=1)


class ARX(Forecaster):
    """x_{t+1} = x_t + Theta [x_t..x_{t-p+1}, u_t..u_{t-p+1}, 1] (increments: better posed)."""

    name = "arx"

    def __init__(self, lags: tuple[int, ...] = (1, 2, 4, 8), ridge: float = 1e-3) -> None:
        self.lags, self.ridge = lags, ridge

    def fit(self, data: WindowDataset) -> ARX:
        self.n_obs = _n_observed(data)
        obs, act = data.obs.numpy().astype(float), data.actions.numpy().astype(float)
        obs = np.where(data.obs_mask.numpy() > 0.5, obs, np.nan)
        n = len(obs)
        cut = int(0.8 * n)
        best = (math.inf, self.lags[0])
        for p in self.lags:
            theta = self._solve(obs[:cut], act[:cut], p)
            score = self._validate(theta, obs[cut:], act[cut:], p, horizon=10)
            if score < best[0]:
                best = (score, p)
        self.p = best[1]
        self.theta = self._solve(obs, act, self.p)
        return self

    @staticmethod
    def _regressors(obs: np.ndarray, act: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(p - 1, len(obs) - 1)
        lagged = [obs[rows - j] for j in range(p)] + [act[rows - j] for j in range(p)]
        x = np.hstack(lagged + [np.ones((len(rows), 1))])
        y = obs[rows + 1] - obs[rows]
        return x, y

    def _solve(self, obs: np.ndarray, act: np.ndarray, p: int) -> np.ndarray:
        x, y = self._regressors(obs, act, p)
        ok = np.isfinite(x).all(axis=1) & np.isfinite(y).all(axis=1)
        x, y = x[ok], y[ok]
        gram = x.T @ x + self.ridge * len(x) * np.eye(x.shape[1])
        return np.linalg.solve(gram, x.T @ y)

    def _validate(
        self, theta: np.ndarray, obs: np.ndarray, act: np.ndarray, p: int, horizon: int
    ) -> float:
        starts = np.arange(p - 1, len(obs) - horizon, 7)
        hist_obs = np.stack([obs[starts - j] for j in range(p)], axis=1)  # (S, p, O)
        hist_act = np.stack([act[starts - j - 1] for j in range(p)], axis=1)
        future = np.stack([act[starts + k] for k in range(horizon)], axis=1)
        pred = self._rollout(theta, np.nan_to_num(hist_obs), hist_act, future, p)
        truth = obs[starts + horizon]
        err = (pred[:, -1] - truth) ** 2
        return float(np.nanmean(err))

    def _rollout(
        self,
        theta: np.ndarray,
        hist_obs: np.ndarray,
        hist_act: np.ndarray,
        future: np.ndarray,
        p: int,
    ) -> np.ndarray:
        """hist_* newest first (S, p, .); future actions (S, H, A) -> (S, H, O)."""
        obs, prev_act = list(hist_obs.transpose(1, 0, 2)), list(hist_act.transpose(1, 0, 2))
        out = []
        for k in range(future.shape[1]):
            acts = [future[:, k]] + prev_act[: p - 1]
            x = np.hstack(obs[:p] + acts + [np.ones((len(future), 1))])
            nxt = obs[0] + x @ theta
            out.append(nxt)
            obs = [nxt] + obs[: p - 1]
            prev_act = [future[:, k]] + prev_act[: p - 1]
        return np.stack(out, axis=1)

    def predict(self, windows: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
        f = windows.shape[-1] // 2
        w = windows.numpy().astype(float)
        p = self.p
        # the window's row j pairs observations at j with the action applied before them
        hist_obs = w[:, ::-1, : self.n_obs][:, :p]  # newest first: x_t, x_{t-1}, ...
        hist_act = w[:, ::-1, self.n_obs : f][:, : p - 1]  # u_{t-1}, u_{t-2}, ...
        last = _last_observed(windows, self.n_obs)
        hist_obs = np.where(w[:, ::-1, f : f + self.n_obs][:, :p] > 0.5, hist_obs, last[:, None, :])
        return self._rollout(self.theta, hist_obs, hist_act, actions.numpy().astype(float), p)


def _train_loop(model: nn.Module, data: WindowDataset, budget: Budget, loss_fn) -> dict[str, float]:
    """The twin's own optimiser and schedule, under the same epoch and time budget."""
    gen = torch.Generator().manual_seed(budget.seed)
    torch.manual_seed(budget.seed)
    train_idx, _ = data.split(0.15)
    optimiser = torch.optim.AdamW(model.parameters(), lr=budget.learning_rate, weight_decay=1e-4)
    steps = max(1, math.ceil(len(train_idx) / budget.batch_size))
    schedule = BudgetSchedule(budget.learning_rate, budget.epochs * steps, budget.max_seconds)
    started, windows_seen, epochs = time.perf_counter(), 0, 0
    model.train()
    for _ in range(budget.epochs):
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for chunk in order.split(budget.batch_size):
            loss = loss_fn(data.batch(chunk))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimiser.step()
            schedule.step(optimiser)
            windows_seen += len(chunk)
        epochs += 1
        if schedule.finished():
            break
    model.eval()
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "epochs": epochs, "windows_per_s": windows_seen / seconds}


def _masked_mse(pred: torch.Tensor, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((pred - obs) ** 2 * mask).sum() / mask.sum().clamp_min(1.0)


class _GRUNet(nn.Module):
    def __init__(self, feature_dim: int, action_dim: int, n_obs: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.GRU(2 * feature_dim, hidden, batch_first=True)
        self.cell = nn.GRUCell(action_dim, hidden)
        self.out = nn.Linear(hidden, n_obs)

    def forward(self, windows: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        _, h = self.encoder(windows)
        h = h[0]
        outs = []
        for k in range(actions.shape[1]):
            h = self.cell(actions[:, k], h)
            outs.append(self.out(h))
        return torch.stack(outs, dim=1)


class GRUForecaster(Forecaster):
    name = "gru"

    def __init__(self, budget: Budget, hidden: int = 128) -> None:
        self.budget, self.hidden = budget, hidden

    def fit(self, data: WindowDataset) -> GRUForecaster:
        self.net = _GRUNet(
            data.layout.feature_dim, len(data.layout.actions), _n_observed(data), self.hidden
        )

        def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            pred = self.net(batch["windows"][:, 0], batch["actions"])
            return _masked_mse(pred, batch["obs"][:, 1:], batch["obs_mask"][:, 1:])

        self.stats = _train_loop(self.net, data, self.budget, loss)
        return self

    @torch.no_grad()
    def predict(self, windows: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
        return self.net(windows, actions).numpy()


class _AutoencoderNet(nn.Module):
    def __init__(
        self, data: WindowDataset, embed_dim: int, hidden: int, predictor_layers: int
    ) -> None:
        super().__init__()
        f, w = data.layout.feature_dim, data.window
        self.n_obs, self.window = _n_observed(data), w
        self.encoder = ContextEncoder(w, f, hidden, embed_dim)
        self.decoder = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, w * self.n_obs)
        )
        self.predictor = Predictor(embed_dim, len(data.layout.actions), hidden, predictor_layers)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(*z.shape[:-1], self.window, self.n_obs)


class AutoencoderWorldModel(Forecaster):
    name = "autoencoder"

    def __init__(
        self, budget: Budget, embed_dim: int, hidden: int = 128, predictor_layers: int = 1
    ) -> None:
        # the latent dynamics get the twin's own predictor depth: only the objective differs
        self.budget, self.embed_dim, self.hidden = budget, embed_dim, hidden
        self.predictor_layers = predictor_layers

    def fit(self, data: WindowDataset) -> AutoencoderWorldModel:
        net = self.net = _AutoencoderNet(data, self.embed_dim, self.hidden, self.predictor_layers)
        n_obs, f = net.n_obs, data.layout.feature_dim

        def loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            windows = batch["windows"]
            z_all = net.encoder(windows)
            recon = _masked_mse(
                net.decode(z_all), windows[..., :n_obs], windows[..., f : f + n_obs]
            )
            predicted = net.predictor.rollout(z_all[:, 0], batch["actions"])
            latent = ((predicted - z_all[:, 1:].detach()) ** 2).mean()
            return recon + latent

        self.stats = _train_loop(net, data, self.budget, loss)
        return self

    @torch.no_grad()
    def predict(self, windows: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
        z = self.net.predictor.rollout(self.net.encoder(windows), actions)
        return self.net.decode(z)[..., -1, :].numpy()
