"""Training that cannot end on a diverged twin: the best held-out state is kept, and an
epoch whose held-out error blows up is rolled back to it at a lower learning rate."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch

DIVERGED = 2.0
"""An epoch whose held-out score is this many times the best epoch's has diverged. A
glucose twin (adolescent#010, seed 0) went from 13.8 to 25.7 to 426 mg/dL of readout
error in its first three epochs and ended at 68,000 mg/dL. None of the 30 glucose twins
of the all-patients benchmark, nor the CSTR benchmark's twin, rolled back at 2x."""
RATE_CUT = 0.5
"""The learning rate's peak is multiplied by this at each rollback."""


def holdout_score(stats: Mapping[str, Any], stds: Mapping[str, float]) -> float:
    """Mean over sensors of the held-out readout and one-step forecast RMSEs, in training
    stds: comparable across epochs, unlike the embedding-space prediction error, whose
    space moves as the encoder learns."""
    terms = [
        float(stats[key][tag]) / stds[tag]
        for key in ("readout_rmse", "forecast_rmse")
        for tag in stats.get(key, {})
        if stds.get(tag)
    ]
    if not terms:
        return math.inf
    score = sum(terms) / len(terms)
    return score if math.isfinite(score) else math.inf


class DivergenceGuard:
    def __init__(
        self, model: torch.nn.Module, optimiser: torch.optim.Optimizer, stds: Mapping[str, float]
    ) -> None:
        self.model, self.optimiser, self.stds = model, optimiser, dict(stds)
        self.best_score = math.inf
        self.best_epoch = 0
        self.best_stats: dict[str, Any] | None = None
        self._best_state: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.rollbacks = 0

    def after_epoch(self, epoch: int, stats: dict[str, Any]) -> str | None:
        """Keep this epoch's state if it is the best yet; roll back if it diverged. Returns
        what was done when it rolled back (None otherwise)."""
        score = holdout_score(stats, self.stds)
        if score < self.best_score:
            self.best_score, self.best_epoch, self.best_stats = score, epoch, stats
            self._best_state = (
                copy.deepcopy(self.model.state_dict()),
                copy.deepcopy(self.optimiser.state_dict()),
            )
            return None
        if (score <= DIVERGED * self.best_score and math.isfinite(score)) or (
            self._best_state is None
        ):
            return None
        model_state, optimiser_state = self._best_state
        self.model.load_state_dict(model_state)
        self.optimiser.load_state_dict(optimiser_state)
        self.rollbacks += 1
        times = "inf" if not math.isfinite(score) else f"{score / self.best_score:.3g}"
        return (
            f"held-out error {times}x the best epoch's ({self.best_epoch}): rolled back "
            f"to it, learning rate x{RATE_CUT:g}"
        )
