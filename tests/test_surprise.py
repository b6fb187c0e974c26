"""Surprise scores: one per row, NaN where no prediction exists, higher on a faulty plant
than on a normal one; thresholds hold their false-alarm rate; bad input is refused."""

from __future__ import annotations

import numpy as np
import pytest
from twin_fixtures import tiny_config, train, training_log

from twin.errors import InvalidInput
from twin.surprise import (
    SurpriseDetector,
    calibrate_threshold,
    embeddings,
    surprise_scores,
    trailing_mean,
)
from twin.twin_model import Twin


@pytest.fixture(scope="module")
def twin() -> Twin:
    """3 h of log, 10 epochs of the tiny model: enough to predict one step well."""
    return train(training_log(3.0, 3), tiny_config(epochs=10))[0]


@pytest.fixture(scope="module")
def normal() -> np.ndarray:
    """A CSTR log from another seed than the twin's training log."""
    return training_log(1.5, 11)


def sensor_bias(df, tag: str, start: int, spreads: float):
    """The log with a step bias of `spreads` standard deviations on one sensor from `start`."""
    out = df.copy()
    out.loc[start:, tag] += spreads * float(df[tag].std())
    return out


def test_one_score_per_row_nan_only_where_nothing_was_predicted(twin, normal) -> None:
    scores = surprise_scores(twin, normal)
    assert scores.shape == (len(normal),)
    assert np.isnan(scores[0])
    assert np.all(np.isfinite(scores[1:]))
    assert np.all(scores[1:] >= 0.0)


def test_a_gap_in_time_has_no_one_step_prediction(twin, normal) -> None:
    gapped = normal.copy()
    gapped.loc[300:, "time_s"] += 10 * twin.spec.sample_period_s
    scores = surprise_scores(twin, gapped)
    assert np.isnan(scores[300])
    assert np.isfinite(scores[299]) and np.isfinite(scores[301])


def test_scores_match_the_predictor_one_step_ahead(twin, normal) -> None:
    z = embeddings(twin, normal)
    u = normal[list(twin.layout.actions)].to_numpy(dtype=float)
    t = 200
    expected = np.mean((twin.predict_next(z[t - 1], u[t - 1]) - z[t]) ** 2)
    assert surprise_scores(twin, normal)[t] == pytest.approx(expected, rel=1e-4)


def test_a_sensor_fault_is_more_surprising_than_normal_operation(twin, normal) -> None:
    start = len(normal) // 2
    threshold = calibrate_threshold(surprise_scores(twin, normal), 0.01)
    faulty = surprise_scores(twin, sensor_bias(normal, "T", start, 3.0))
    np.testing.assert_allclose(faulty[:start], surprise_scores(twin, normal)[:start])
    assert faulty[start] > threshold


def test_threshold_is_the_quantile_of_normal_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.exponential(1.0, 100_000)
    # exceeded with probability 0.05 by an Exp(1) variable at -ln(0.05)
    assert calibrate_threshold(scores, 0.05) == pytest.approx(-np.log(0.05), rel=0.03)
    with_nan = np.concatenate([scores, np.full(1000, np.nan)])
    assert calibrate_threshold(with_nan, 0.05) == calibrate_threshold(scores, 0.05)


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 5.0])
def test_threshold_refuses_a_rate_that_is_not_a_fraction(rate: float) -> None:
    with pytest.raises(InvalidInput, match="false_alarm_rate"):
        calibrate_threshold(np.ones(10), rate)


def test_threshold_needs_finite_scores() -> None:
    with pytest.raises(InvalidInput, match="no finite scores"):
        calibrate_threshold(np.full(5, np.nan), 0.01)


def test_detector_holds_its_false_alarm_rate_on_the_calibration_log(twin, normal) -> None:
    detector = SurpriseDetector.calibrate(twin, normal, 0.02, smoothing=5)
    alarms = detector.check(twin, normal)
    assert alarms.shape == (len(normal),)
    assert 0.005 <= alarms.mean() <= 0.03


def test_detector_finds_a_sensor_fault_soon_after_it_starts(twin, normal) -> None:
    # Unsmoothed: a step bias is most surprising at the step itself; later windows hold
    # the biased level and the predictor follows it, so averaging dilutes the jump.
    detector = SurpriseDetector.calibrate(twin, normal, 0.01, smoothing=1)
    start = len(normal) // 2
    scores = surprise_scores(twin, sensor_bias(normal, "Ca", start, 3.0))
    first = detector.first_alarm(scores, start)
    assert first is not None and first - start <= 2
    assert detector.first_alarm(scores, len(normal)) is None


def test_trailing_mean_skips_nan_and_refuses_zero_samples() -> None:
    smoothed = trailing_mean(np.array([np.nan, 1.0, 3.0, np.nan, 5.0]), 2)
    np.testing.assert_allclose(smoothed, [np.nan, 1.0, 2.0, 3.0, 5.0])
    with pytest.raises(InvalidInput, match="smoothing"):
        trailing_mean(np.ones(3), 0)


def test_a_log_of_another_process_is_refused(twin, normal) -> None:
    with pytest.raises(InvalidInput, match="lacks column"):
        surprise_scores(twin, normal.drop(columns=["T"]))
