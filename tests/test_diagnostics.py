"""Model diagnostics (twin/diagnostics.py) on known matrices and a tiny twin, and the
model page that draws them."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from twin_fixtures import tiny_twin, training_log

from api import services
from dashboards import model_page
from twin.diagnostics import (
    effective_rank,
    embed_log,
    error_by_horizon,
    pca_2d,
    per_dimension_std,
)
from twin.errors import InvalidInput
from twin.replay import open_loop

# ---------------------------------------------------------------- known matrices


@pytest.mark.parametrize("dims", [1, 2, 5, 16])
def test_equal_spread_in_every_direction_has_full_rank(dims: int) -> None:
    z = np.vstack([np.eye(dims), -np.eye(dims)])  # centred, orthogonal, equal norms
    assert effective_rank(z) == pytest.approx(dims)


def test_embeddings_on_a_line_have_rank_one() -> None:
    t = np.linspace(-1.0, 1.0, 50)
    z = np.outer(t, [0.3, -2.0, 1.0, 0.5]) + 7.0  # an offset must not count as a direction
    assert effective_rank(z) == pytest.approx(1.0, abs=1e-6)


def test_effective_rank_of_two_unequal_directions() -> None:
    # Singular values sqrt(18) : sqrt(2) = 3 : 1, so p = (3/4, 1/4).
    z = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(z) == pytest.approx(math.exp(entropy))
    rotation = np.array([[math.cos(0.7), -math.sin(0.7)], [math.sin(0.7), math.cos(0.7)]])
    assert effective_rank(z @ rotation + 3.0) == pytest.approx(math.exp(entropy))


def test_per_dimension_std_is_the_sample_std() -> None:
    z = np.array([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    np.testing.assert_allclose(per_dimension_std(z), [math.sqrt(5.0 / 3.0), 0.0])


def test_pca_finds_the_main_direction_and_its_share() -> None:
    u = np.array([2.0, 1.0, 2.0]) / 3.0  # unit vectors, orthogonal
    w = np.array([1.0, -2.0, 0.0]) / math.sqrt(5.0)
    a = np.array([-3.0, -1.0, 1.0, 3.0])  # centred, and orthogonal to b
    b = np.array([1.0, -1.0, -1.0, 1.0])
    z = np.outer(a, u) + np.outer(b, w) + np.array([10.0, -4.0, 2.0])
    projection = pca_2d(z)
    np.testing.assert_allclose(projection.axes[0], u, atol=1e-12)
    np.testing.assert_allclose(np.abs(projection.axes[1]), np.abs(w), atol=1e-12)
    np.testing.assert_allclose(projection.coords[:, 0], a, atol=1e-12)
    np.testing.assert_allclose(np.abs(projection.coords[:, 1]), np.abs(b), atol=1e-12)
    var_a, var_b = (a**2).sum(), (b**2).sum()
    np.testing.assert_allclose(
        projection.explained, [var_a / (var_a + var_b), var_b / (var_a + var_b)]
    )
    # The same data reflected gives the same axes: the picture does not flip.
    np.testing.assert_allclose(pca_2d(-z).axes, projection.axes, atol=1e-12)


def test_pca_of_one_dimension_has_an_empty_second_axis() -> None:
    projection = pca_2d(np.array([[1.0], [2.0], [4.0]]))
    np.testing.assert_allclose(projection.explained, [1.0, 0.0])
    np.testing.assert_allclose(projection.coords[:, 1], 0.0)


@pytest.mark.parametrize("bad", [np.ones(5), np.ones((3, 0)), np.array([[1.0, np.nan]] * 3)])
def test_bad_embeddings_are_refused(bad: np.ndarray) -> None:
    for function in (effective_rank, per_dimension_std, pca_2d):
        with pytest.raises(InvalidInput):
            function(bad)
    with pytest.raises(InvalidInput, match="at least 2"):
        pca_2d(np.ones((1, 3)))


# ---------------------------------------------------------------- on a tiny twin


@pytest.fixture(scope="module")
def twin():
    return tiny_twin()[0]


def test_embed_log_skips_windows_across_a_gap(twin) -> None:
    log = training_log(0.5, 11)
    z, ends = embed_log(twin, log)
    window = twin.config.window
    assert z.shape == (len(log) - window + 1, twin.config.embed_dim)
    assert ends[0] == window - 1 and ends[-1] == len(log) - 1
    gapped = log.copy()
    cut = len(log) // 2
    gapped.loc[cut:, "time_s"] += 10 * twin.spec.sample_period_s
    z_gap, ends_gap = embed_log(twin, gapped)
    assert len(z_gap) == len(z) - (window - 1)
    assert not any(cut <= end < cut + window - 1 for end in ends_gap)


def test_error_by_horizon_agrees_with_the_replay_metrics(twin) -> None:
    log = training_log(0.5, 11)
    horizon = 12
    errors = error_by_horizon(twin, log, horizon)
    metrics = open_loop(twin, log, horizon=horizon).metrics
    np.testing.assert_allclose(
        errors.horizon_s, twin.spec.sample_period_s * np.arange(1, horizon + 1)
    )
    for tag in twin.layout.sensors:
        for h in (1, 10, horizon):
            assert errors.rmse[tag][h - 1] == pytest.approx(metrics[f"rmse_{tag}_h{h}"])
        std = twin.norm.std[twin.norm.index(tag)]
        np.testing.assert_allclose(errors.rmse_in_std[tag] * std, errors.rmse[tag])
    # A one-step prediction is better than a twelve-step one, on average over sensors.
    assert np.mean([e[0] for e in errors.rmse_in_std.values()]) < np.mean(
        [e[-1] for e in errors.rmse_in_std.values()]
    )


def test_training_figure_needs_history() -> None:
    assert "no per-epoch history" in model_page.training_figure([], 8, {"T": 1.0})


# ---------------------------------------------------------------- the model page


@pytest.fixture
def model_id(session: Session, twin) -> int:
    return services.register_model(session, "cstr", "tiny", twin.to_bytes(), {}, twin.metrics).id


def test_model_page_draws_every_diagnostic_and_caches_them(
    client: TestClient, model_id: int, twin, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_page.CACHE.clear()
    calls = []
    build = model_page.build_model_page

    def counted(*args, **kwargs):
        calls.append(1)
        return build(*args, **kwargs)

    monkeypatch.setattr(model_page, "build_model_page", counted)
    page = client.get(f"/models/{model_id}")
    assert page.status_code == 200, page.text
    text = page.text
    for title in (
        "Training curves",
        "Collapse diagnostics",
        "Prediction error against horizon",
        "Embedding map (PCA)",
        "Surprise (anomaly) trace",
    ):
        assert title in text
    assert "Not shown" not in text
    assert text.count('class="plotly-graph-div"') == 5
    assert f"of {twin.config.embed_dim} dimensions" in text
    assert "seed 90001 (not a training seed)" in text
    assert "PC1 (" in text and "threshold" in text
    again = client.get(f"/models/{model_id}")
    assert again.status_code == 200 and len(calls) == 1
    assert client.get("/models/4242").status_code == 404


def test_model_page_says_when_the_surprise_detector_is_missing(
    client: TestClient, model_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model_page.CACHE.clear()
    monkeypatch.setitem(sys.modules, "twin.surprise", None)  # import now raises ImportError
    page = client.get(f"/models/{model_id}")
    assert page.status_code == 200, page.text
    assert "surprise detector not available" in page.text
    assert page.text.count('class="plotly-graph-div"') == 4
    model_page.CACHE.clear()
