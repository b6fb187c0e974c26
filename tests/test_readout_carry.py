"""The present readout miss carried into forecasts (twin.train_eval.readout_carry,
Twin.carried): measured on held-out data at training, applied by open-loop replay."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from twin_fixtures import tiny_twin, training_log

from processes import cstr
from twin.data import WindowDataset
from twin.replay import open_loop
from twin.train_eval import CARRY_STEPS, readout_carry
from twin.twin_model import Twin


@pytest.fixture(scope="module")
def twin() -> Twin:
    return tiny_twin()[0]


@pytest.fixture(scope="module")
def log():  # type: ignore[no-untyped-def]
    return training_log(3.0, 5)


def test_a_steady_readout_miss_is_carried_whole(twin: Twin, log) -> None:  # type: ignore[no-untyped-def]
    """A readout that reads T ten training stds high everywhere misses by the same at
    the present and at every step: over the steps the tiny twin was trained to roll out
    (4), its carry is about 1. The plain twin's stays in [0, 1] and lower."""
    data = WindowDataset(log, cstr.SPEC, twin.config.window, 4, twin.norm)
    plain = readout_carry(twin.model, log, data, 0)
    assert set(plain) == {"Ca", "T"}
    assert all(len(v) == CARRY_STEPS and all(0.0 <= x <= 1.0 for x in v) for v in plain.values())
    biased = copy.deepcopy(twin.model)
    with torch.no_grad():
        biased.readout.net.bias[twin.layout.observed.index("T")] += 10.0
    carry = readout_carry(biased, log, data, 0)
    assert min(carry["T"][:4]) > 0.9
    assert np.mean(carry["T"][:4]) > np.mean(plain["T"][:4])


def test_too_short_a_held_out_end_measures_no_carry(twin: Twin, log) -> None:  # type: ignore[no-untyped-def]
    data = WindowDataset(log, cstr.SPEC, twin.config.window, 4, twin.norm)
    assert readout_carry(twin.model, log, data, len(log) - 10) == {}


def test_a_forecast_carries_the_present_miss_as_measured(twin: Twin) -> None:
    measured = dataclasses.replace(
        twin, metrics={**twin.metrics, "readout_carry": {"T": [0.5, 0.25]}}
    )
    forecasts = {"T": np.zeros((2, 4)), "Ca": np.ones((2, 4))}
    miss = {"T": np.array([2.0, np.nan]), "Ca": np.array([1.0, 1.0])}
    out = measured.carried(forecasts, miss)
    assert out["T"][0].tolist() == [1.0, 0.5, 0.5, 0.5]  # later steps keep the last carry
    assert out["T"][1].tolist() == [0.0] * 4  # not measured: nothing to carry
    assert np.array_equal(out["Ca"], forecasts["Ca"])  # no carry measured for Ca
    before = dataclasses.replace(twin, metrics={})  # a twin trained before the carry
    assert np.array_equal(before.carried(forecasts, miss)["T"], forecasts["T"])


def test_open_loop_replay_carries_the_miss(twin: Twin, log) -> None:  # type: ignore[no-untyped-def]
    """With a carry of 1 on T the one-step forecast is the readout's plus the present miss;
    replay's figures move, and a carry of 0 leaves them as they were."""
    none = dataclasses.replace(twin, metrics={**twin.metrics, "readout_carry": {}})
    whole = dataclasses.replace(
        twin, metrics={**twin.metrics, "readout_carry": {"T": [1.0] * CARRY_STEPS}}
    )
    plain, carried = open_loop(none, log, horizon=5), open_loop(whole, log, horizon=5)
    assert plain.metrics["nrmse_h1"] != carried.metrics["nrmse_h1"]
    zero = dataclasses.replace(
        twin, metrics={**twin.metrics, "readout_carry": {"T": [0.0] * CARRY_STEPS}}
    )
    assert open_loop(zero, log, horizon=5).metrics["nrmse_h1"] == plain.metrics["nrmse_h1"]
