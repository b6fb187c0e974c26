"""Logs to windows: validation, feature pairing, masking of missing samples, gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from twin_fixtures import training_log

from processes import cstr
from twin.data import (
    Layout,
    Normalizer,
    WindowDataset,
    check_log,
    features,
    segment_ids,
    timestamps_s,
    window_from_rows,
)
from twin.errors import InvalidInput

SPEC = cstr.SPEC
W, H = 8, 4


@pytest.fixture
def log() -> pd.DataFrame:
    return training_log(1.5, 3).iloc[:300].reset_index(drop=True)


def test_log_passes_check(log: pd.DataFrame) -> None:
    check_log(log, SPEC)
    assert list(log.columns) == ["time_s", "Ca", "T", "Tc", "Caf", "Tf"]


def test_missing_column(log: pd.DataFrame) -> None:
    with pytest.raises(InvalidInput, match=r"lacks column\(s\) Caf required by spec 'cstr'"):
        check_log(log.drop(columns=["Caf"]), SPEC)
    with pytest.raises(InvalidInput, match=r"time_s"):
        check_log(log.drop(columns=["time_s"]), SPEC)


@pytest.mark.parametrize("kind", ["swap", "duplicate", "nan", "text"])
def test_bad_timestamps(log: pd.DataFrame, kind: str) -> None:
    ts = log["time_s"].astype(object).copy()
    if kind == "swap":
        ts.iloc[10], ts.iloc[11] = ts.iloc[11], ts.iloc[10]
    elif kind == "duplicate":
        ts.iloc[11] = ts.iloc[10]
    elif kind == "nan":
        ts.iloc[5] = np.nan
    else:
        ts.iloc[5] = "noon"
    log["time_s"] = ts
    pattern = {
        "swap": r"must strictly increase: row 11 \(60 s\) is before row 10",
        "duplicate": r"duplicate timestamp in 'time_s' at rows 10 and 11",
        "nan": r"missing or non-numeric value at row 5",
        "text": r"'noon' at row 5, which is not a number of seconds",
    }[kind]
    with pytest.raises(InvalidInput, match=pattern):
        check_log(log, SPEC)
    with pytest.raises(InvalidInput):
        WindowDataset(log, SPEC, W, H)


def test_nan_in_actuator(log: pd.DataFrame) -> None:
    log.loc[17, "Tc"] = np.nan
    with pytest.raises(InvalidInput, match=r"actuator 'Tc' has missing values"):
        check_log(log, SPEC)


@pytest.mark.parametrize(("tag", "value"), [("T", np.inf), ("Caf", -np.inf), ("Tc", np.inf)])
def test_infinite_values(log: pd.DataFrame, tag: str, value: float) -> None:
    log.loc[42, tag] = value
    with pytest.raises(InvalidInput, match=rf"tag '{tag}' has an infinite value at row 42"):
        check_log(log, SPEC)


def test_nan_sensor_is_allowed(log: pd.DataFrame) -> None:
    log.loc[20, "T"] = np.nan
    log.loc[21, "Caf"] = np.nan
    check_log(log, SPEC)


def test_window_shapes(log: pd.DataFrame) -> None:
    data = WindowDataset(log, SPEC, W, H)
    layout = data.layout
    assert layout.observed == ("Ca", "T", "Caf", "Tf")
    assert layout.actions == ("Tc",)
    assert layout.feature_dim == 5
    # first window ends at row W (row 0 has no previous action), last leaves room for H
    assert len(data) == len(log) - H - W
    assert int(data.starts[0]) == W and int(data.starts[-1]) == len(log) - H - 1
    idx = torch.arange(5)
    batch = data.batch(idx)
    assert batch["windows"].shape == (5, H + 1, W, 2 * 5)
    assert batch["actions"].shape == (5, H, 1)
    assert batch["obs"].shape == (5, H + 1, 4)
    assert batch["obs_mask"].shape == (5, H + 1, 4)
    assert all(v.dtype == torch.float32 for v in batch.values())
    # consecutive context windows overlap by W-1 rows
    w = batch["windows"][0]
    assert torch.equal(w[0, 1:], w[1, :-1])


def test_feature_row_pairs_observation_with_previous_action(log: pd.DataFrame) -> None:
    data = WindowDataset(log, SPEC, W, H)
    norm, layout = data.norm, data.layout
    n_obs = len(layout.observed)
    sample = 7
    t = int(data.starts[sample])
    batch = data.batch(torch.tensor([sample]))
    for k in range(H + 1):
        window = batch["windows"][0, k].numpy().astype(float)  # ends at row t + k
        for i in range(W):
            row = t + k - W + 1 + i
            obs = norm.denormalise(window[i, :n_obs], layout.observed)
            act = norm.denormalise(window[i, n_obs : n_obs + 1], layout.actions)
            np.testing.assert_allclose(
                obs, log.loc[row, list(layout.observed)].to_numpy(float), rtol=1e-5, atol=1e-4
            )
            # the action in feature row j is the one applied at j-1, not at j
            assert act[0] == pytest.approx(log.loc[row - 1, "Tc"], abs=1e-3)
            assert window[i, 5:].tolist() == [1.0] * 5
    # the action the predictor gets for step k is the one applied at row t + k
    actions = norm.denormalise(batch["actions"][0].numpy().astype(float), layout.actions)
    np.testing.assert_allclose(
        actions[:, 0], log.loc[t : t + H - 1, "Tc"].to_numpy(float), atol=1e-3
    )
    obs = norm.denormalise(batch["obs"][0].numpy().astype(float), layout.observed)
    np.testing.assert_allclose(
        obs, log.loc[t : t + H, list(layout.observed)].to_numpy(float), rtol=1e-5, atol=1e-4
    )


def test_actions_actually_change_in_log(log: pd.DataFrame) -> None:
    """The pairing test above is only meaningful if Tc moves between rows."""
    assert (log["Tc"].diff().abs() > 1e-2).mean() > 0.3


def test_nan_sensor_values_are_masked_not_invented(log: pd.DataFrame) -> None:
    log.loc[50, "T"] = np.nan
    log.loc[51, "Caf"] = np.nan
    data = WindowDataset(log, SPEC, W, H)
    layout = data.layout
    iT, iCaf, F = layout.observed.index("T"), layout.observed.index("Caf"), layout.feature_dim
    feats = data.feats.numpy()
    assert feats[50, iT] == 0.0 and feats[50, F + iT] == 0.0
    assert feats[51, iCaf] == 0.0 and feats[51, F + iCaf] == 0.0
    # everything else on those rows is present
    assert feats[50, F:].sum() == F - 1 and feats[51, F:].sum() == F - 1
    assert data.obs_mask[50, iT] == 0 and data.obs_mask[50].sum() == 3
    assert data.obs[50, iT] == 0
    # the normaliser ignored the NaN rather than turning into NaN
    assert all(np.isfinite(data.norm.mean)) and all(np.isfinite(data.norm.std))
    # row 0 has no previous action: masked
    assert feats[0, len(layout.observed)] == 0.0 and feats[0, F + len(layout.observed)] == 0.0
    assert np.all(np.isfinite(feats))
    # a window containing row 50 carries the mask through
    windows = data.windows_at(torch.tensor([55]))[0].numpy()
    assert windows[W - 1 - 5, F + iT] == 0.0


def test_features_mask_matches_nan_exactly() -> None:
    df = pd.DataFrame(
        {
            "time_s": [0.0, 6.0, 12.0],
            "Ca": [0.5, np.nan, 0.4],
            "T": [350.0, 351.0, np.nan],
            "Tc": [300.0, 301.0, 302.0],
            "Caf": [1.0, 1.0, 1.0],
            "Tf": [350.0, np.nan, 350.0],
        }
    )
    layout = Layout.from_spec(SPEC)
    norm = Normalizer.fit(df, layout.all_tags)
    feats, mask = features(df, layout, norm)
    expected_missing = np.array(
        [
            [0, 0, 0, 0, 1],  # row 0: no previous action
            [1, 0, 0, 1, 0],
            [0, 1, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(mask == 0, expected_missing)
    assert np.all(feats[expected_missing] == 0.0)
    np.testing.assert_allclose(
        norm.denormalise(feats[1:, 4:5].astype(float), ("Tc",))[:, 0], [300.0, 301.0], atol=1e-4
    )


def test_gaps_split_segments(log: pd.DataFrame) -> None:
    dt = SPEC.sample_period_s
    log.loc[100:, "time_s"] += 10 * dt  # a gap between rows 99 and 100
    log.loc[200:, "time_s"] += 1.6 * dt  # just over the 1.5-period threshold
    log.loc[250:, "time_s"] += 0.4 * dt  # jitter, not a gap
    seg = segment_ids(log["time_s"].to_numpy(float), dt)
    assert seg[99] == 0 and seg[100] == 1 and seg[199] == 1 and seg[200] == 2
    assert seg[250] == seg[249] == 2
    data = WindowDataset(log, SPEC, W, H)
    starts = data.starts.numpy()
    for t in starts:
        rows = np.arange(t - W + 1, t + H + 1)  # every row a sample touches
        assert len(set(seg[rows])) == 1, f"sample at {t} spans a gap"
    # windows right up to each side of a gap are still used
    assert 99 - H in starts and 100 + W - 1 in starts
    assert 100 - H not in starts and 100 + W - 2 not in starts
    # removing the gaps gives back exactly the windows lost to them
    contiguous = WindowDataset(training_log(1.5, 3).iloc[:300].reset_index(drop=True), SPEC, W, H)
    assert len(contiguous) - len(data) == 2 * (W + H - 1)


def test_log_too_short() -> None:
    short = training_log(1.5, 3).iloc[: W + H].reset_index(drop=True)
    with pytest.raises(InvalidInput, match=r"log too short"):
        WindowDataset(short, SPEC, W, H)


def test_normaliser_round_trip(log: pd.DataFrame) -> None:
    layout = Layout.from_spec(SPEC)
    norm = Normalizer.fit(log, layout.all_tags)
    values = log[list(layout.all_tags)].to_numpy(float)
    z = norm.normalise(values)
    np.testing.assert_allclose(z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1.0, rtol=1e-9)
    np.testing.assert_allclose(norm.denormalise(z), values, rtol=1e-12)
    sub = ("Tc", "T")
    np.testing.assert_allclose(
        norm.denormalise(norm.normalise(values[:, [4, 1]], sub), sub), values[:, [4, 1]], rtol=1e-12
    )
    assert Normalizer.from_dict(norm.to_dict()) == norm


def test_normaliser_constant_column_keeps_unit_scale() -> None:
    df = pd.DataFrame({"a": [2.0, 2.0, 2.0], "b": [np.nan, np.nan, np.nan]})
    norm = Normalizer.fit(df, ("a", "b"))
    assert norm.std == (1.0, 1.0) and norm.mean == (2.0, 0.0)


def test_live_window_matches_training_features(log: pd.DataFrame) -> None:
    data = WindowDataset(log, SPEC, W, H)
    layout = data.layout
    t = 40
    rows = [log.loc[j, list(layout.observed)].to_dict() for j in range(t - W + 1, t + 1)]
    before = [{"Tc": float(log.loc[j - 1, "Tc"])} for j in range(t - W + 1, t + 1)]
    rows[3]["T"] = None
    before[0] = None
    live = window_from_rows(rows, before, layout, data.norm)
    expected = data.windows_at(torch.tensor([t]))[0].clone()
    F = layout.feature_dim
    expected[3, layout.observed.index("T")] = 0.0
    expected[3, F + layout.observed.index("T")] = 0.0
    expected[0, len(layout.observed)] = 0.0
    expected[0, F + len(layout.observed)] = 0.0
    torch.testing.assert_close(live, expected, rtol=1e-5, atol=1e-5)


def test_text_in_a_sensor_column_is_named(log: pd.DataFrame) -> None:
    values = log["T"].astype(object).copy()
    values.iloc[42] = "bad probe"
    log["T"] = values
    with pytest.raises(InvalidInput, match=r"'T' has a non-numeric value 'bad probe' at row 42"):
        check_log(log, SPEC)


# -- the checks a tag file written by hand needs ------------------------------------------


def test_unknown_column_is_named_and_can_be_ignored(log: pd.DataFrame) -> None:
    log["operator_note"] = "ok"
    with pytest.raises(
        InvalidInput,
        match=r"column\(s\) operator_note that spec 'cstr' does "
        r"not know.*ignore_columns",
    ):
        check_log(log, SPEC)
    relaxed = SPEC.model_copy(update={"ignore_columns": ("operator_note",)})
    check_log(log, relaxed)


def test_iso_datetimes_are_read_as_seconds(log: pd.DataFrame) -> None:
    start = pd.Timestamp("2026-03-01T08:00:00Z")
    log["time_s"] = [(start + pd.Timedelta(seconds=float(t))).isoformat() for t in log["time_s"]]
    check_log(log, SPEC)
    seconds = timestamps_s(log, SPEC)
    assert np.allclose(np.diff(seconds), SPEC.sample_period_s)
    log.loc[3, "time_s"] = "yesterday-ish"
    with pytest.raises(InvalidInput, match=r"'yesterday-ish', which is neither a number"):
        check_log(log, SPEC)


def test_sample_period_must_match_the_tag_file(log: pd.DataFrame) -> None:
    log["time_s"] = log["time_s"] * 10.0
    with pytest.raises(InvalidInput, match=r"sampled every 60 s .* sample_period_s: 6"):
        check_log(log, SPEC)


def test_actuator_outside_bounds_contradicts_the_tag_file(log: pd.DataFrame) -> None:
    log.loc[40, "Tc"] = 365.0
    with pytest.raises(
        InvalidInput,
        match=r"'Tc' is 365 K at row 40, outside its bounds "
        r"\[280, 360\] K",
    ):
        check_log(log, SPEC)


def test_actuator_faster_than_its_rate_limit(log: pd.DataFrame) -> None:
    log.loc[40:, "Tc"] = log.loc[40:, "Tc"] - 5.0  # a 5 K jump in one 6 s sample
    with pytest.raises(
        InvalidInput,
        match=r"'Tc' moves .* K/s at row 40, faster than its "
        r"rate_limit 0.5 K/s",
    ):
        check_log(log, SPEC)


def test_rate_limit_is_not_applied_across_a_gap(log: pd.DataFrame) -> None:
    gapped = log.drop(index=range(40, 60)).reset_index(drop=True)
    gapped.loc[40:, "Tc"] = np.clip(gapped.loc[40:, "Tc"] - 5.0, 280.0, 360.0)
    check_log(gapped, SPEC)


def test_sensor_limit_in_the_wrong_unit_is_caught(log: pd.DataFrame) -> None:
    tags = tuple(
        t.model_copy(update={"high": 112.0}) if t.name == "T" else t for t in SPEC.tags
    )  # a limit in degC on data in K
    wrong = SPEC.model_copy(update={"tags": tags})
    with pytest.raises(
        InvalidInput,
        match=r"sensor 'T' is typically 3\d\d(\.\d+)? K, beyond "
        r"its high limit 112 K",
    ):
        check_log(log, wrong)


def test_sensor_without_any_value(log: pd.DataFrame) -> None:
    log["Ca"] = np.nan
    with pytest.raises(InvalidInput, match=r"sensor 'Ca' has no values at all"):
        check_log(log, SPEC)
