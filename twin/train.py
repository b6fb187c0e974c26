"""Training a twin: multi-step JEPA loss in embedding space, VICReg terms against collapse.

Loss per batch (all in normalised units):
    prediction  mean over k in {1, 2, 4, ..., H} of |rollout_k - sg(encoder(window_{t+k}))|^2
    variance    hinge keeping every embedding dimension's std >= 1      (anti-collapse)
    covariance  off-diagonal covariance of embeddings                   (anti-collapse)
    readout     masked MSE of readout(encoder(window)) to the observed sensors
    rollout readout  masked MSE of readout(rollout_k) to the sensors at t+k, k = 1..H

The default anti-collapse method ("vicreg") takes the target from the online encoder
itself (stop-gradient). An EMA target ("ema_vicreg", "ema") lags the encoder, so the
predictor learns to land in a space the encoder no longer produces at inference; on
held-out CSTR data that made the readout of predictions several times worse. SIGReg
("sigreg") is the option without per-term weights. Effective rank and per-dimension std
are measured on held-out windows every epoch.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from .data import WindowDataset
from .distributed import Trainer
from .gains import effect_pairs, with_sign_penalty
from .model import JEPA
from .progress import TrainingDisplay, budget_note
from .simc import with_simc_gains
from .spec import ActuatorKind, ProcessSpec
from .time_scales import with_log_horizon
from .train_eval import build_goal_bank, evaluate, readout_carry
from .train_guard import RATE_CUT, DivergenceGuard
from .train_loss import COLLAPSE_METHODS, TrainConfig, batch_loss, uses_ema
from .twin_model import Twin

CUT_EVAL_WINDOWS = 256  # held-out windows judged after a time-budget cut (else up to 2048)


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
    # engineering units, per sensor: readout of the one-step prediction against the next sample
    holdout_forecast_rmse: dict[str, float] = field(default_factory=dict)
    holdout_forecast_tail: dict[str, float] = field(default_factory=dict)
    fraction: float = 1.0  # share of the epoch's batches run (< 1: the time budget cut it)
    rolled_back: bool = False  # it diverged: the twin went back to the best epoch's state


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BudgetSchedule:
    """Warm-up then cosine decay over the budget, whichever of steps or seconds runs out first.

    A schedule laid out over the epochs alone would stop at a high learning rate when the
    time cap ends training early; here progress is the larger of the share of steps done
    and the share of `max_seconds` spent, so the rate always anneals before the end.
    Without `max_seconds`, progress counts steps only (deterministic).
    """

    def __init__(
        self, peak: float, total_steps: int, max_seconds: float | None, warmup: float = 0.05
    ) -> None:
        self.peak, self.total_steps, self.max_seconds = peak, max(1, total_steps), max_seconds
        self.warmup, self.done, self.started = warmup, 0, time.perf_counter()

    def progress(self) -> float:
        by_steps = self.done / self.total_steps
        if not self.max_seconds:
            return by_steps
        return max(by_steps, (time.perf_counter() - self.started) / self.max_seconds)

    def rate(self) -> float:
        p = min(self.progress(), 1.0)
        if p < self.warmup:
            return self.peak * (0.1 + 0.9 * p / self.warmup)
        cosine = 0.5 * (1.0 + math.cos(math.pi * (p - self.warmup) / (1.0 - self.warmup)))
        return self.peak * (0.01 + 0.99 * cosine)

    def step(self, optimiser: torch.optim.Optimizer) -> None:
        self.done += 1
        for group in optimiser.param_groups:
            group["lr"] = self.rate()

    def finished(self) -> bool:
        return self.progress() >= 1.0


def train_twin(
    df: pd.DataFrame,
    spec: ProcessSpec,
    cfg: TrainConfig | None = None,
    show_progress: bool = True,
    on_epoch: Callable[[EpochLog], None] | None = None,
) -> tuple[Twin, list[EpochLog]]:
    """Train a twin on a log; deterministic for a given seed, data and machine."""
    cfg = cfg or TrainConfig()
    if cfg.collapse not in COLLAPSE_METHODS:
        raise ValueError(
            f"collapse must be one of {', '.join(COLLAPSE_METHODS)}, got {cfg.collapse!r}"
        )
    seed_everything(cfg.seed)
    # what the log tells that a tag file need not: the plan's horizon, a PI pairing's gains
    spec = with_simc_gains(with_log_horizon(spec, df), df)
    data = WindowDataset(df, spec, cfg.model.window, cfg.rollout_steps)
    doses = tuple(
        i for i, name in enumerate(data.layout.actions) if spec.tag(name).kind is ActuatorKind.DOSE
    )
    cfg = replace(cfg, model=replace(cfg.model, dose_actions=doses))
    train_idx, hold_idx = data.split(cfg.holdout_fraction)
    model = JEPA(
        cfg.model, data.layout.feature_dim, len(data.layout.actions), len(data.layout.observed)
    )
    # the spec's known gain signs (effects) are kept by a penalty on the loss
    loss_fn = with_sign_penalty(batch_loss, effect_pairs(spec, data.layout))
    trainer = Trainer.create(model, cfg, loss_fn)  # DDP when launched by torchrun
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay
    )
    steps_per_epoch = max(1, math.ceil(len(train_idx) / cfg.batch_size))
    history: list[EpochLog] = []
    started = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    stopped_by_budget = False
    guard = DivergenceGuard(
        model,
        optimiser,
        {t: float(data.norm.std[data.norm.index(t)]) for t in data.layout.sensors},
    )
    # the untrained state is the first to roll back to: a first epoch can diverge too
    guard.after_epoch(0, evaluate(model, data, hold_idx[:CUT_EVAL_WINDOWS]))
    # the budget's clock starts here: time spent before the first batch would raise the
    # first steps' learning rate by the machine's load (`BudgetSchedule.progress`)
    schedule = BudgetSchedule(cfg.learning_rate, cfg.epochs * steps_per_epoch, cfg.max_seconds)
    display = TrainingDisplay(
        cfg.epochs, steps_per_epoch, cfg.max_seconds, show_progress and trainer.is_main
    )
    with display:
        model.train()
        for epoch in range(cfg.epochs):
            epoch_start, total, seen = time.perf_counter(), 0.0, 0
            order = trainer.epoch_order(train_idx, gen, epoch)
            for chunk in order.split(trainer.batch_size):
                loss, _ = trainer.loss(data.batch(chunk), gen)
                if trainer.skip(loss):
                    schedule.step(optimiser)
                    continue
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimiser.step()
                schedule.step(optimiser)
                model.update_target(cfg.ema_momentum if uses_ema(cfg) else 0.0)
                total += loss.item() * len(chunk)
                seen += len(chunk)
                display.batch(loss.item())
                # checked between batches, so a budget of seconds ends within one batch
                if trainer.finished(schedule):
                    break
            # a budget cut judges on fewer held-out windows, so the cap is not overrun by
            # a full evaluation (the figures are then noisier, not biased)
            cut = schedule.finished() and schedule.done < schedule.total_steps
            stats = evaluate(model, data, hold_idx[:CUT_EVAL_WINDOWS] if cut else hold_idx)
            log = EpochLog(
                epoch + 1,
                total / max(1, seen),
                stats["prediction"],
                stats["readout_rmse"],
                stats["effective_rank"],
                stats["dim_std_min"],
                stats["dim_std_mean"],
                time.perf_counter() - epoch_start,
                stats["forecast_rmse"],
                stats["forecast_tail"],
                fraction=seen / len(train_idx),
            )
            rollback = guard.after_epoch(log.epoch, stats)
            if rollback:
                log.rolled_back = True
                schedule.peak *= RATE_CUT
            history.append(log)
            if on_epoch:
                on_epoch(log)
            display.epoch(log.epoch, _describe(log, spec) + (f" | {rollback}" if rollback else ""))
            if trainer.finished(schedule):
                stopped_by_budget = schedule.done < schedule.total_steps
                break
        epochs_done = epoch + log.fraction
        history_dicts = [asdict(h) for h in history]
        note = budget_note(
            history_dicts, cfg.epochs, epochs_done, cfg.max_seconds, stopped_by_budget
        )
        display.finish(note)
    model.eval()
    final = history[-1]
    # after a rollback on the last epoch the twin is the best state's: so are its figures
    held_out = guard.best_stats if final.rolled_back and guard.best_stats else stats
    metrics = {
        "epochs": final.epoch,
        "epochs_asked": cfg.epochs,
        "epochs_done": round(epochs_done, 3),
        "stopped_by_budget": stopped_by_budget,
        "train_seconds": time.perf_counter() - started,
        "train_loss": final.train_loss,
        "holdout_prediction": held_out["prediction"],
        "effective_rank": held_out["effective_rank"],
        "dim_std_min": held_out["dim_std_min"],
        "readout_rmse": held_out["readout_rmse"],
        "forecast_rmse": held_out["forecast_rmse"],
        "forecast_tail": held_out["forecast_tail"],
        "windows": len(data),
        "history": history_dicts,
        "rollbacks": guard.rollbacks,
        "readout_carry": readout_carry(model, df, data, int(data.starts[hold_idx[0]])),
    }
    if note:
        metrics["budget_note"] = note
    trainer.finish()  # under torchrun only rank 0 goes on (to save and register)
    twin = Twin(
        spec,
        cfg.model,
        data.norm,
        model,
        build_goal_bank(model, data, cfg.seed),
        metrics=metrics,
        train_config=cfg.to_dict(),
    )
    return twin, history


def _describe(log: EpochLog, spec: ProcessSpec) -> str:
    units = {t.name: t.unit for t in spec.tags}
    rmse = " ".join(f"{t}±{v:.3g} {units[t]}" for t, v in log.holdout_readout_rmse.items())
    return (
        f"loss {log.train_loss:.3f} | pred {log.holdout_prediction:.3f} | "
        f"eff. rank {log.effective_rank:.1f} | readout RMSE {rmse}"
    )
