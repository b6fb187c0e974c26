"""Training never ends on a diverged twin: the divergence guard's rollback."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
from twin_fixtures import tiny_config, train, training_log

from twin.distributed import Trainer
from twin.train_guard import DIVERGED, DivergenceGuard, holdout_score

STDS = {"T": 2.0}


def _stats(t_rmse: float) -> dict:
    return {"readout_rmse": {"T": t_rmse}, "forecast_rmse": {"T": t_rmse}}


def _guard() -> tuple[torch.nn.Linear, DivergenceGuard]:
    model = torch.nn.Linear(2, 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    return model, DivergenceGuard(model, optimiser, STDS)


def test_holdout_score_is_in_training_stds_and_infinite_when_not_finite() -> None:
    assert holdout_score(_stats(1.0), STDS) == 0.5
    assert holdout_score(_stats(float("nan")), STDS) == math.inf
    assert holdout_score({}, STDS) == math.inf


def test_a_diverged_epoch_goes_back_to_the_best_state() -> None:
    model, guard = _guard()
    best = model.weight.detach().clone()
    assert guard.after_epoch(1, _stats(1.0)) is None
    with torch.no_grad():
        model.weight.add_(100.0)
    note = guard.after_epoch(2, _stats(1.0 * DIVERGED * 1.5))
    assert note is not None and "rolled back" in note and "(1)" in note
    assert torch.equal(model.weight, best)
    assert guard.rollbacks == 1


def test_a_worse_epoch_within_the_bound_is_kept() -> None:
    model, guard = _guard()
    guard.after_epoch(1, _stats(1.0))
    with torch.no_grad():
        model.weight.add_(1.0)
    moved = model.weight.detach().clone()
    assert guard.after_epoch(2, _stats(1.0 * DIVERGED * 0.9)) is None
    assert torch.equal(model.weight, moved)
    assert guard.rollbacks == 0


def test_a_non_finite_epoch_always_rolls_back() -> None:
    model, guard = _guard()
    guard.after_epoch(1, _stats(1.0))
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    assert guard.after_epoch(2, _stats(float("nan"))) is not None
    assert torch.isfinite(model.weight).all()


def test_a_non_finite_loss_is_skipped() -> None:
    trainer = Trainer(torch.nn.Linear(1, 1), lambda *a: None, None)
    assert trainer.skip(torch.tensor(float("nan")))
    assert trainer.skip(torch.tensor(float("inf")))
    assert not trainer.skip(torch.tensor(3.0))


def test_training_at_a_runaway_learning_rate_ends_on_a_sane_twin() -> None:
    """At 1.0 every epoch diverges; without the guard the twin read the CSTR's temperature
    off by about 10^8 K. With it each epoch goes back to the best state so far (the
    untrained one, at worst), and the twin's figures are that state's."""
    cfg = replace(tiny_config(epochs=3), learning_rate=1.0)
    twin, history = train(training_log(1.5, 3), cfg)
    assert any(h.rolled_back for h in history)
    assert twin.metrics["rollbacks"] == sum(h.rolled_back for h in history)
    std_t = twin.norm.std[twin.norm.index("T")]
    assert twin.metrics["readout_rmse"]["T"] < 10 * std_t
    assert all(np.isfinite(p.detach().numpy()).all() for p in twin.model.parameters())


def test_healthy_training_never_rolls_back() -> None:
    twin, history = train(training_log(1.5, 3), tiny_config())
    assert not any(h.rolled_back for h in history)
    assert twin.metrics["rollbacks"] == 0
