"""JEPA training: the loss falls, embeddings do not collapse, seeds reproduce, checkpoints
round-trip bit for bit and corrupt ones are refused."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from twin_fixtures import tiny_config, tiny_twin, train, training_log

from twin.data import WindowDataset
from twin.errors import InvalidInput
from twin.model import JEPA, JEPAConfig, effective_rank, sigreg, vicreg_terms
from twin.progress import TrainingDisplay, budget_note
from twin.train import EpochLog
from twin.twin_model import Twin

# Collapse floors for embed_dim 8 (a collapsed encoder gives rank ~1 and std ~0):
RANK_FLOOR = 2.0
DIM_STD_FLOOR = 0.05


@pytest.fixture(scope="module")
def trained() -> tuple[Twin, list[EpochLog]]:
    """3 h of log, 10 epochs of the tiny model: long enough to see learning."""
    return train(training_log(3.0, 3), tiny_config(epochs=10))


@pytest.fixture(scope="module")
def tiny() -> Twin:
    return tiny_twin()[0]


def test_training_lowers_the_loss(trained) -> None:
    twin, history = trained
    assert [h.epoch for h in history] == list(range(1, 11))
    assert all(np.isfinite(h.train_loss) for h in history)
    assert history[-1].train_loss < 0.5 * history[0].train_loss
    assert twin.metrics["epochs"] == 10
    assert twin.metrics["train_loss"] == history[-1].train_loss
    assert len(twin.metrics["history"]) == 10


def test_training_does_not_collapse(trained) -> None:
    _, history = trained
    final = history[-1]
    assert final.effective_rank >= RANK_FLOOR, final
    assert final.dim_std_min > DIM_STD_FLOOR, final
    assert final.dim_std_mean >= final.dim_std_min


def test_readout_learns_the_temperature(trained) -> None:
    twin, history = trained
    spread = float(training_log(3.0, 3)["T"].std())
    assert history[-1].holdout_readout_rmse["T"] < 0.5 * spread
    assert set(history[-1].holdout_readout_rmse) == {"Ca", "T"}  # sensors only
    # the one-step forecast read out against the next sample, kept for the mismatch check
    forecast = twin.metrics["forecast_rmse"]
    assert set(forecast) == {"Ca", "T"} and forecast == history[-1].holdout_forecast_rmse
    assert 0.0 < forecast["T"] < 0.5 * spread
    # the tail of its misses as a normal's std: about the RMSE where misses are near normal
    tail = twin.metrics["forecast_tail"]
    assert set(tail) == {"Ca", "T"} and tail == history[-1].holdout_forecast_tail
    assert 0.3 * forecast["T"] < tail["T"] < 3.0 * forecast["T"]
    # the bank holds real training windows
    assert twin.bank.embeddings.shape[1] == 8
    assert len(twin.bank.embeddings) == len(twin.bank.observed) == len(twin.bank.unsteadiness)


def test_effective_rank_of_rank_one_matrix() -> None:
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 1, generator=gen), torch.randn(1, 8, generator=gen)
    # float32 rounding leaves singular values ~1e-8 of the first: rank 1 + O(1e-5)
    assert effective_rank(a @ b) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(a @ b + 3.0) == pytest.approx(1.0, abs=1e-3)  # centred first


def test_effective_rank_of_isotropic_gaussian() -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 8, generator=gen)
    assert 7.8 < effective_rank(z) <= 8.0
    assert effective_rank(5.0 * z) == pytest.approx(effective_rank(z), rel=1e-9)
    two = torch.cat([z[:, :2], torch.zeros(4000, 6)], dim=1)
    assert effective_rank(two) == pytest.approx(2.0, abs=0.05)


def test_vicreg_terms_penalise_collapse() -> None:
    gen = torch.Generator().manual_seed(0)
    spread = 2.0 * torch.randn(2000, 8, generator=gen)
    variance, covariance = vicreg_terms(spread)
    assert float(variance) == 0.0 and float(covariance) < 0.2
    collapsed = torch.full((2000, 8), 3.0) + 1e-3 * torch.randn(2000, 8, generator=gen)
    assert float(vicreg_terms(collapsed)[0]) > 0.9
    correlated = spread[:, :1].repeat(1, 8)
    assert float(vicreg_terms(correlated)[1]) > 10.0


def _train_small(seed: int) -> Twin:
    return train(training_log(1.5, 3), tiny_config(epochs=2, seed=seed))[0]


def test_seeded_training_is_reproducible() -> None:
    first, second, other = _train_small(5), _train_small(5), _train_small(6)
    a, b, c = (t.model.state_dict() for t in (first, second, other))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert torch.equal(first.bank.embeddings, second.bank.embeddings)
    assert not all(torch.equal(a[name], c[name]) for name in a)


def _probe(twin: Twin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    data = WindowDataset(training_log(1.5, 3), twin.spec, twin.config.window, 4, twin.norm)
    windows = data.windows_at(data.starts[:64])
    with torch.no_grad():
        z = twin.model.encode(windows)
        u = torch.linspace(-2, 2, 64).unsqueeze(1)
        return z, twin.model.predictor(z, u), twin.model.readout(z), twin.encode(windows[0])


def _assert_identical(a: Twin, b: Twin) -> None:
    for x, y in zip(_probe(a), _probe(b), strict=True):
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
        else:
            np.testing.assert_array_equal(x, y)
    assert b.spec == a.spec and b.config == a.config and b.norm == a.norm
    assert torch.equal(a.bank.embeddings, b.bank.embeddings)
    assert torch.equal(a.bank.observed, b.bank.observed)
    assert torch.equal(a.bank.unsteadiness, b.bank.unsteadiness)
    np.testing.assert_array_equal(
        a.goal_embedding({"T": 365.0}, {"Caf": 1.0}), b.goal_embedding({"T": 365.0}, {"Caf": 1.0})
    )
    assert b.metrics["epochs"] == a.metrics["epochs"]
    assert not b.model.training


def test_checkpoint_file_round_trip(tiny: Twin, tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "nested" / "twin.pt"
    digest = tiny.save(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    _assert_identical(tiny, Twin.load(path))


def test_checkpoint_bytes_round_trip(tiny: Twin) -> None:
    data = tiny.to_bytes()
    loaded = Twin.from_bytes(data)
    _assert_identical(tiny, loaded)
    _assert_identical(tiny, Twin.from_bytes(loaded.to_bytes()))  # and again


def test_round_trip_is_not_trivially_equal(tiny: Twin) -> None:
    """The identity check above can fail: a fresh model gives different outputs."""
    fresh = JEPA(tiny.config, tiny.layout.feature_dim, 1, len(tiny.layout.observed))
    other = Twin(tiny.spec, tiny.config, tiny.norm, fresh, tiny.bank)
    with pytest.raises(AssertionError):
        _assert_identical(tiny, other)


def test_encode_rejects_wrong_window_shape(tiny: Twin) -> None:
    with pytest.raises(InvalidInput, match=r"context window has shape \(4, 10\)"):
        tiny.encode(torch.zeros(4, 10))


def _saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda good: b"",
        lambda good: b"definitely not a checkpoint",
        lambda good: good[: len(good) // 2],
        lambda good: good[:-100],
        lambda good: bytes(reversed(good)),
        lambda good: _saved([1, 2, 3]),
        lambda good: _saved({"format": 999, "spec": {}}),
    ],
    ids=["empty", "junk", "half", "tail-cut", "reversed", "not-a-dict", "wrong-format"],
)
def test_corrupt_bytes_are_invalid_input(tiny: Twin, make) -> None:
    with pytest.raises(InvalidInput):
        Twin.from_bytes(make(tiny.to_bytes()))


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"checkpoint not found"):
        Twin.load(tmp_path / "none.pt")


@pytest.mark.parametrize("damage", ["missing-keys", "wrong-shapes"])
def test_malformed_checkpoint_is_invalid_input(tiny: Twin, damage: str) -> None:
    state = tiny.state()
    if damage == "missing-keys":
        state = {"format": state["format"]}
    else:
        state["config"] = dict(state["config"], embed_dim=4)
    with pytest.raises(InvalidInput):
        Twin.from_bytes(_saved(state))


def test_bit_flips_never_load_silently_as_another_model(tiny: Twin) -> None:
    good = tiny.to_bytes()
    reference = _probe(tiny)
    for position in range(0, len(good), max(1, len(good) // 200)):
        damaged = bytearray(good)
        damaged[position] ^= 0xFF
        try:
            loaded = Twin.from_bytes(bytes(damaged))
        except InvalidInput:
            continue
        for x, y in zip(reference, _probe(loaded), strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y)), f"byte {position}"


def test_default_config_shapes() -> None:
    cfg = JEPAConfig()
    model = JEPA(cfg, feature_dim=5, action_dim=1, observed_dim=4)
    windows = torch.zeros(3, cfg.window, 10)
    z = model.encode(windows)
    assert z.shape == (3, cfg.embed_dim)
    rolled = model.predictor.rollout(z, torch.zeros(3, 6, 1))
    assert rolled.shape == (3, 6, cfg.embed_dim)
    assert model.readout(z).shape == (3, 4)
    # the target encoder starts as a copy and is frozen
    for p, q in zip(model.encoder.parameters(), model.target_encoder.parameters(), strict=True):
        assert torch.equal(p, q) and not q.requires_grad


def test_sigreg_is_small_for_gaussian_embeddings_and_large_for_collapse() -> None:
    gen = torch.Generator().manual_seed(0)
    gaussian = torch.randn(4000, 8, generator=gen)
    collapsed = gaussian[:, :1].repeat(1, 8) * 0.01
    shifted = gaussian + 3.0
    small = float(sigreg(gaussian, generator=torch.Generator().manual_seed(1)))
    assert small < 0.01
    assert float(sigreg(collapsed, generator=torch.Generator().manual_seed(1))) > 20 * small
    assert float(sigreg(shifted, generator=torch.Generator().manual_seed(1))) > 20 * small


def test_ensemble_member_zero_is_the_planning_predictor() -> None:
    cfg = JEPAConfig(ensemble_size=3, coarse_steps=2)
    model = JEPA(cfg, feature_dim=5, action_dim=1, observed_dim=4)
    assert model.members()[0] is model.predictor
    assert len(model.members()) == 3
    z, u = torch.randn(4, cfg.embed_dim), torch.randn(4, 6, 1)
    rolled = model.ensemble_rollout(z, u)
    assert rolled.shape == (3, 4, 6, cfg.embed_dim)
    assert torch.equal(rolled[0], model.predictor.rollout(z, u))
    assert not torch.equal(rolled[0], rolled[1])  # members differ: disagreement means something
    assert model.coarse_rollout(z, u).shape == (4, 3, cfg.embed_dim)
    # the planner rebuilds only Linear/Tanh stacks
    assert all(isinstance(m, torch.nn.Linear | torch.nn.Tanh) for m in model.predictor.net)


def test_checkpoint_from_before_the_ensemble_still_loads(tiny: Twin) -> None:
    state = tiny.state()
    legacy = JEPAConfig(
        **{
            **tiny.config.to_dict(),
            "ensemble_size": 1,
            "coarse_steps": 0,
            "present_skip": False,
            "window_norm": False,
            "dose_actions": (),
        }
    )
    model = JEPA(legacy, tiny.layout.feature_dim, 1, len(tiny.layout.observed))
    config = legacy.to_dict()
    for key in ("ensemble_size", "coarse_steps", "present_skip", "window_norm", "dose_actions"):
        del config[key]  # what a checkpoint written before those fields holds
    state.update(config=config, weights=model.state_dict())
    wrapped = _saved(
        {
            "format": state["format"],
            "payload": _saved(state),
            "sha256": hashlib.sha256(_saved(state)).hexdigest(),
        }
    )
    loaded = Twin.from_bytes(wrapped)
    assert loaded.config == legacy
    assert len(loaded.model.members()) == 1


def test_unknown_collapse_method_is_refused() -> None:
    from processes import cstr
    from twin.train import TrainConfig, train_twin

    with pytest.raises(ValueError, match="collapse must be one of"):
        train_twin(
            training_log(1.5, 3), cstr.SPEC, TrainConfig(collapse="none"), show_progress=False
        )


@pytest.mark.parametrize("collapse", ["ema_vicreg", "sigreg"])
def test_every_anti_collapse_method_trains(collapse: str) -> None:
    from dataclasses import replace

    twin, history = train(training_log(1.5, 3), replace(tiny_config(epochs=2), collapse=collapse))
    assert all(np.isfinite(h.train_loss) for h in history)
    assert history[-1].effective_rank > 1.5


def _with_dose_path(tiny: Twin) -> Twin:
    from dataclasses import replace

    from twin.model import JEPA

    config = replace(tiny.config, dose_actions=(0,))
    torch.manual_seed(5)
    model = JEPA(
        config, tiny.layout.feature_dim, len(tiny.layout.actions), len(tiny.layout.observed)
    )
    return Twin(tiny.spec, config, tiny.norm, model, tiny.bank)


@pytest.mark.parametrize("dose_path", [False, True])
def test_ensemble_rollout_matches_torch_and_follows_weight_changes(
    tiny: Twin, dose_path: bool
) -> None:
    # a private copy: its weights are changed below
    twin = _with_dose_path(tiny) if dose_path else Twin.from_bytes(tiny.to_bytes())
    rng = np.random.default_rng(0)
    z0 = rng.standard_normal(twin.config.embed_dim)
    actions = rng.standard_normal((12, len(twin.layout.actions)))

    def by_torch() -> np.ndarray:
        with torch.no_grad():
            return twin.model.ensemble_rollout(
                torch.tensor(z0, dtype=torch.float32)[None],
                torch.tensor(actions, dtype=torch.float32)[None],
            )[:, 0].numpy()

    fast = twin.ensemble_rollout(z0, actions)
    assert fast.shape == (len(twin.model.members()), 12, twin.config.embed_dim)
    assert np.allclose(fast, by_torch(), atol=1e-5)
    with torch.no_grad():  # an in-place change must not be hidden by the stacked copy
        twin.model.members()[-1].net[-1].bias.add_(1.0)
    changed = twin.ensemble_rollout(z0, actions)
    assert np.allclose(changed, by_torch(), atol=1e-5)
    assert not np.allclose(changed[-1], fast[-1])
    saved = Twin.from_bytes(twin.to_bytes())  # the dose path and its columns survive a save
    assert saved.config == twin.config
    assert np.allclose(saved.ensemble_rollout(z0, actions), changed, atol=1e-6)


# ---------------------------------------------------------------- time budget and progress


def test_time_budget_stops_inside_an_epoch() -> None:
    """A budget far shorter than one epoch ends training between two batches, and the
    metrics say the budget cut it and how much was done."""
    cfg = dataclasses.replace(tiny_config(epochs=50), batch_size=8, max_seconds=0.2)
    twin, history = train(training_log(1.5, 3), cfg)
    metrics = twin.metrics
    assert metrics["stopped_by_budget"] is True
    assert metrics["epochs_asked"] == 50
    assert history[-1].fraction < 1.0
    assert metrics["epochs_done"] < 50
    assert "stopped by its time budget" in metrics["budget_note"]
    assert "of 50 epochs" in metrics["budget_note"]


def test_full_run_is_not_reported_as_cut(trained) -> None:
    twin, history = trained
    assert twin.metrics["stopped_by_budget"] is False
    assert twin.metrics["epochs_done"] == 10
    assert "budget_note" not in twin.metrics
    assert all(h.fraction == 1.0 for h in history)


def _epochs(*errors: float) -> list[dict[str, float]]:
    return [{"holdout_prediction": e, "fraction": 1.0} for e in errors]


def test_budget_note_names_what_the_cut_costs() -> None:
    falling = budget_note(_epochs(1.0, 0.5), 20, 2.4, 270.0, True)
    assert falling is not None and "2.4 of 20 epochs (12 %)" in falling
    assert "still falling 50 % per epoch" in falling and "4 min 30 s" in falling
    flat = budget_note(_epochs(1.0, 0.995), 20, 2.4, 270.0, True)
    assert flat is not None and "levelled off" in flat
    assert budget_note(_epochs(1.0, 0.5), 20, 20.0, 270.0, False) is None
    assert "too few epochs" in (budget_note(_epochs(1.0), 20, 1.2, 60.0, True) or "")


def test_log_is_one_full_line_per_epoch_when_not_a_terminal() -> None:
    out = io.StringIO()
    display = TrainingDisplay(3, 4, None, enabled=True, stream=out)
    long_summary = "loss 0.123 | " + " ".join(f"sensor{i}±0.1 K" for i in range(20))
    with display:
        for epoch in (1, 2, 3):
            for _ in range(4):
                display.batch(0.5)
            display.epoch(epoch, long_summary)
        display.finish(None)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("training twin: 3 epochs of 4 batches")
    assert [line.split(" |")[0] for line in lines[1:]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert all(long_summary in line for line in lines[1:])  # never wrapped or cut
    assert "\x1b" not in out.getvalue()  # no terminal escapes in a file


def test_time_left_is_capped_by_the_budget() -> None:
    display = TrainingDisplay(100, 10, 30.0, enabled=False)
    display.started -= 10.0  # 10 s spent on 1 of 1000 batches: the pace says hours
    display.batch(1.0)
    left = display.time_left()
    assert left is not None and left <= 20.0
