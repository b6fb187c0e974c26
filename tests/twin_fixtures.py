"""Shared builders for the twin tests (spec, data, training, planning, safety, closed loop).

`tests/` is not a package: pytest puts this folder on sys.path (rootdir conftest), so test
modules import this one as `twin_fixtures`. The builders are cached, so the tiny twin is
trained once per session however many test modules use it; test modules wrap them in
their own fixtures.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from processes import cstr
from twin.controller import TwinController
from twin.model import JEPAConfig
from twin.train import EpochLog, TrainConfig, train_twin
from twin.twin_model import Twin

TINY_MODEL = JEPAConfig(window=8, embed_dim=8, encoder_hidden=32, predictor_hidden=32)


def tiny_config(epochs: int = 4, seed: int = 0, rollout_steps: int = 4) -> TrainConfig:
    return TrainConfig(epochs=epochs, rollout_steps=rollout_steps, seed=seed, model=TINY_MODEL)


@lru_cache(maxsize=4)
def _log(hours: float, seed: int) -> pd.DataFrame:
    return cstr.generate_training_log(hours=hours, seed=seed)


def training_log(hours: float = 1.5, seed: int = 3) -> pd.DataFrame:
    """A CSTR excitation log (a fresh copy: callers may modify it)."""
    return _log(hours, seed).copy()


def train(df: pd.DataFrame, cfg: TrainConfig) -> tuple[Twin, list[EpochLog]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # float(loss) on a grad tensor
        return train_twin(df, cstr.SPEC, cfg, show_progress=False)


@lru_cache(maxsize=1)
def tiny_twin() -> tuple[Twin, list[EpochLog]]:
    """The shared tiny twin: 1.5 h of log, 4 epochs, embed_dim 8 (a few seconds)."""
    return train(training_log(1.5, 3), tiny_config())


def cstr_spec_dict() -> dict[str, Any]:
    """The CSTR spec as plain data (a deep copy, safe to mutate)."""
    return copy.deepcopy(cstr.SPEC.to_dict())


def with_control(twin: Twin, **settings: Any) -> Twin:
    """The same twin under a spec whose `control` settings are changed."""
    control = twin.spec.control.model_copy(update=settings)
    return dataclasses.replace(twin, spec=twin.spec.model_copy(update={"control": control}))


def tag_entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in data["tags"] if t["name"] == name)


def rate_per_sample(tag_name: str = "Tc") -> float:
    return cstr.SPEC.rate_limit_per_sample(cstr.SPEC.tag(tag_name))


def assert_within_bounds_and_rate(
    values: np.ndarray,
    first_previous: float,
    low: float,
    high: float,
    rate: float,
    tol: float = 1e-9,
) -> None:
    """A sequence of applied values keeps [low, high] and moves at most `rate` per sample."""
    values = np.asarray(values, dtype=float)
    assert np.all(np.isfinite(values))
    assert values.min() >= low - tol, f"below bound: {values.min()} < {low}"
    assert values.max() <= high + tol, f"above bound: {values.max()} > {high}"
    moves = np.abs(np.diff(np.concatenate([[first_previous], values])))
    worst = int(np.argmax(moves))
    assert moves[worst] <= rate + tol, f"move {moves[worst]} > {rate} at sample {worst}"


def cold_controller(*args: Any, **kwargs: Any) -> TwinController:
    """A controller that acts from its first sample (no warm-up): for the tests of what it
    does once it acts; the warm-up has its own tests."""
    return TwinController(*args, **{"warmup_samples": 0, **kwargs})
