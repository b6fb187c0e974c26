"""Cause and effect: declared gain signs in the tag file, the sign penalty in training, and
the gain check of a twin against the plant's own step test."""

from __future__ import annotations

import pytest
import torch
import yaml
from twin_fixtures import TINY_MODEL, cstr_spec_dict, tiny_config, tiny_twin, training_log

from processes import cstr, get_spec, glucose
from processes.step_tests import gain_check, plant_gains
from twin.data import Layout
from twin.gains import (
    SIGN_HORIZON,
    SIGN_WEIGHT,
    EffectPair,
    effect_pairs,
    gain_table,
    held_on,
    sign_penalty,
    stepped,
    with_sign_penalty,
)
from twin.model import JEPA
from twin.spec import ProcessSpec, SpecError
from twin.train import train_twin


def _with_effects(effects: list[dict]) -> dict:
    data = cstr_spec_dict()
    data["effects"] = effects
    return data


def test_effects_load_from_a_tag_file(tmp_path):
    path = tmp_path / "unit.yaml"
    path.write_text(
        yaml.safe_dump(
            _with_effects(
                [
                    {"actuator": "Tc", "sensor": "T", "sign": "positive"},
                    {"actuator": "Tc", "sensor": "Ca", "sign": "negative"},
                ]
            )
        )
    )
    spec = ProcessSpec.load(path)
    assert [(e.actuator, e.sensor, e.direction) for e in spec.effects] == [
        ("Tc", "T", 1.0),
        ("Tc", "Ca", -1.0),
    ]
    assert ProcessSpec.from_dict(spec.to_dict()) == spec


def test_a_spec_without_effects_declares_none():
    data = cstr_spec_dict()
    data.pop("effects", None)
    assert ProcessSpec.from_dict(data).effects == ()


@pytest.mark.parametrize(
    ("effects", "expected"),
    [
        (
            [{"actuator": "T", "sensor": "T", "sign": "positive"}],
            "effects[0] (T -> T): 'T' is not an actuator tag",
        ),
        (
            [
                {"actuator": "Tc", "sensor": "T", "sign": "positive"},
                {"actuator": "Tc", "sensor": "Caf", "sign": "negative"},
            ],
            "effects[1] (Tc -> Caf): 'Caf' is not a sensor tag",
        ),
        ([{"actuator": "Tc", "sensor": "T", "sign": "up"}], "effects[0] (Tc -> T) field 'sign'"),
        (
            [
                {"actuator": "Tc", "sensor": "T", "sign": "positive"},
                {"actuator": "Tc", "sensor": "T", "sign": "negative"},
            ],
            "effects[1] (Tc -> T): this pair is declared twice",
        ),
        ([{"actuator": "Tc", "sign": "positive"}], "effects[0] (Tc -> ?) field 'sensor'"),
        (
            [{"actuator": "Tc", "sensor": "T", "sign": "positive", "gain": 2}],
            "effects[0] (Tc -> T) field 'gain'",
        ),
    ],
)
def test_a_bad_effect_is_named_in_the_error(effects, expected):
    with pytest.raises(SpecError) as err:
        ProcessSpec.from_dict(_with_effects(effects))
    assert expected in str(err.value)


def test_built_in_processes_declare_the_physically_certain_signs():
    declared = {
        name: {(e.actuator, e.sensor): e.sign for e in get_spec(name).effects}
        for name in ("cstr", "glucose", "turbofan")
    }
    assert declared["cstr"][("Tc", "T")] == "positive"
    assert declared["glucose"][("basal", "CGM")] == "negative"
    assert declared["glucose"][("bolus", "CGM")] == "negative"
    assert {declared["turbofan"][("Wf", s)] for s in ("Nf", "Nc", "T50", "Fn")} == {"positive"}


# -- the sign penalty ------------------------------------------------------------------------


def _tiny_batch(layout_dims: tuple[int, int, int], horizon: int = 4, size: int = 8):
    feature, actions, _ = layout_dims
    generator = torch.Generator().manual_seed(0)
    return {
        "windows": torch.randn(
            size, horizon + 1, TINY_MODEL.window, 2 * feature, generator=generator
        ),
        "actions": torch.randn(size, horizon, actions, generator=generator),
    }


@pytest.mark.parametrize("dose", [False, True])
def test_the_sign_penalty_charges_exactly_the_wrong_signed_side(dose):
    torch.manual_seed(0)
    model = JEPA(TINY_MODEL, feature_dim=5, action_dim=1, observed_dim=4)
    batch = _tiny_batch((5, 1, 4))
    up = [EffectPair(actuator=0, sensor=1, direction=1.0, dose=dose)]
    down = [EffectPair(actuator=0, sensor=1, direction=-1.0, dose=dose)]
    with torch.no_grad():
        z0 = model.encode(batch["windows"][:, 0])
        actions = held_on(batch["actions"], SIGN_HORIZON * batch["actions"].shape[1])
        assert actions.shape[1] > batch["actions"].shape[1]
        moved = [
            model.readout(m.rollout(z0, stepped(actions, 0, 1.0, dose)))
            - model.readout(m.rollout(z0, actions))
            for m in model.members()
        ]
        both = sum(change[..., 1].abs().mean() for change in moved)
        assert float(both) > 0
        penalty_up = sign_penalty(model, batch, up)
        penalty_down = sign_penalty(model, batch, down)
    # each step's change is charged on one side only: the two sum to its size
    assert float(penalty_up + penalty_down) == pytest.approx(SIGN_WEIGHT * float(both), rel=1e-5)
    assert sign_penalty(model, batch, []).item() == 0.0


def test_a_dose_steps_only_the_first_action_and_a_level_all():
    actions = torch.zeros(2, 5, 2)
    assert stepped(actions, 1, 3.0, dose=True)[:, :, 1].sum().item() == 6.0
    assert stepped(actions, 1, 3.0, dose=False)[:, :, 1].sum().item() == 30.0
    assert stepped(actions, 1, 3.0, dose=False)[:, :, 0].abs().sum().item() == 0.0


def test_the_penalty_joins_the_training_loss_only_where_effects_are_declared():
    def plain(model, batch, cfg, generator=None):
        return torch.tensor(1.0), {"prediction": 1.0}

    assert with_sign_penalty(plain, []) is plain
    model = JEPA(TINY_MODEL, feature_dim=5, action_dim=1, observed_dim=4)
    signed = with_sign_penalty(plain, [EffectPair(0, 1, 1.0, False), EffectPair(0, 1, -1.0, False)])
    loss, parts = signed(model, _tiny_batch((5, 1, 4)), None)
    assert parts["sign"] > 0 and loss.item() == pytest.approx(1.0 + parts["sign"])


def test_effect_pairs_index_the_twin_layout():
    spec = get_spec("glucose")
    pairs = effect_pairs(spec, Layout.from_spec(spec))
    layout = Layout.from_spec(spec)
    assert [
        (layout.actions[p.actuator], layout.observed[p.sensor], p.direction) for p in pairs
    ] == [(e.actuator, e.sensor, e.direction) for e in spec.effects]


# -- the plant's step test -------------------------------------------------------------------


def test_the_cstr_plant_gain_is_the_slope_between_steady_states():
    step = 2.0
    gains = plant_gains(cstr.SPEC, {"Tc": step}, 400, ["T", "Ca"])
    low = cstr.steady_state(cstr.TC_NOMINAL)
    high = cstr.steady_state(cstr.TC_NOMINAL + step, start=low)
    assert gains[("Tc", "T")] == pytest.approx((high[1] - low[1]) / step, rel=1e-3)
    assert gains[("Tc", "T")] > 0 > gains[("Tc", "Ca")]


def test_more_insulin_lowers_a_patients_glucose():
    spec = glucose.spec_for("child#001")
    gains = plant_gains(spec, {"basal": 0.4, "bolus": 0.5}, 60, ["CGM", "IOB"])
    assert gains[("basal", "CGM")] < 0 and gains[("bolus", "CGM")] < 0
    assert gains[("basal", "IOB")] > 0 and gains[("bolus", "IOB")] > 0
    # the patient is the one whose pump settings the spec carries, unless one is named
    assert plant_gains(spec, {"basal": 0.4}, 60, ["CGM"], patient="child#001") == {
        ("basal", "CGM"): gains[("basal", "CGM")]
    }
    adult = plant_gains(glucose.spec_for("adult#001"), {"basal": 0.4}, 60, ["CGM"])
    assert adult[("basal", "CGM")] != gains[("basal", "CGM")]


def test_a_process_without_a_plant_step_test_is_refused():
    spec = ProcessSpec.from_dict({**cstr_spec_dict(), "name": "unit_seven"})
    with pytest.raises(ValueError, match="no plant step test for process 'unit_seven'"):
        plant_gains(spec, {"Tc": 1.0}, 10, ["T"])


# -- the gain check of a trained twin ---------------------------------------------------------


@pytest.mark.slow
def test_the_gain_check_table_of_a_twin():
    twin, _ = tiny_twin()
    rows = gain_check(twin, horizon_steps=32)
    assert [(r["actuator"], r["sensor"]) for r in rows] == [("Tc", "T")]
    row = rows[0]
    assert row["declared"] == "positive" and row["unit"] == "K per K"
    assert row["horizon_s"] == 32 * cstr.SAMPLE_PERIOD_S
    assert row["plant_gain"] > 0 and row["clear"]
    assert row["sign_match"] == (row["gain"] > 0)
    assert 0.5 <= row["agreement"] <= 1.0
    # a twin of a process with no simulator gets its own gains, nothing to judge them by
    alone = gain_table(twin, None, 32)
    assert alone[0]["gain"] == row["gain"] and "sign_match" not in alone[0]


@pytest.mark.slow
def test_training_holds_a_declared_sign_against_the_data():
    """Declaring the wrong sign (a warmer jacket cooling the reactor) must pull the twin's
    gain towards it: the penalty acts, it is not decoration."""
    df = training_log(1.5, 3)
    free = cstr.SPEC.model_copy(update={"effects": ()})
    wrong = ProcessSpec.from_dict(
        {**cstr_spec_dict(), "effects": [{"actuator": "Tc", "sensor": "T", "sign": "negative"}]}
    )
    gains = {}
    for label, spec in (("free", free), ("wrong", wrong)):
        twin, _ = train_twin(df, spec, tiny_config(epochs=3), show_progress=False)
        gains[label] = gain_table(twin, None, 8)[0]["gain"]
    assert gains["free"] > 0
    assert gains["wrong"] < gains["free"]


# -- excitation that separates insulin from meals ------------------------------------------


def test_glucose_excitation_gives_insulin_off_the_meal_schedule_within_the_limits():
    log = glucose.generate_training_log(hours=48.0, seed=1, patient="adult#001")
    near_meal = log["CHO"].rolling(41, center=True, min_periods=1).max() > 0  # +-60 min
    probes = (log["bolus"] > 0) & ~near_meal
    assert probes.sum() >= 4 and log["bolus"][probes].sum() > 3.0  # units, not crumbs
    assert log["IOB"].max() <= glucose.iob_limit("adult#001")
    # the same carbohydrate does not always come with the same insulin
    meals = log[(log["CHO"] > 0) & (log["bolus"] > 0)]
    ratio = meals["bolus"] / meals["CHO"]
    assert ratio.max() > 1.5 * ratio.min()
    # a probe never goes on a falling or low glucose: none within an hour of a low
    lows = log.index[log["CGM"] < 70.0]
    for k in log.index[probes]:
        assert not any(0 <= low - k <= 20 for low in lows)
