"""Cause and effect: declared gain signs in the tag file, the sign penalty in training, and
the gain check of a twin against the plant's own step test."""

from __future__ import annotations

import pytest
import yaml
from twin_fixtures import cstr_spec_dict

from processes import get_spec
from twin.spec import ProcessSpec, SpecError


def _with_effects(effects: list[dict]) -> dict:
    data = cstr_spec_dict()
    data["effects"] = effects
    return data


def test_effects_load_from_a_tag_file(tmp_path):
    path = tmp_path / "unit.yaml"
    path.write_text(yaml.safe_dump(_with_effects(
        [{"actuator": "Tc", "sensor": "T", "sign": "positive"},
         {"actuator": "Tc", "sensor": "Ca", "sign": "negative"}])))
    spec = ProcessSpec.load(path)
    assert [(e.actuator, e.sensor, e.direction) for e in spec.effects] == [
        ("Tc", "T", 1.0), ("Tc", "Ca", -1.0)]
    assert ProcessSpec.from_dict(spec.to_dict()) == spec


def test_a_spec_without_effects_declares_none():
    data = cstr_spec_dict()
    data.pop("effects", None)
    assert ProcessSpec.from_dict(data).effects == ()


@pytest.mark.parametrize(("effects", "expected"), [
    ([{"actuator": "T", "sensor": "T", "sign": "positive"}],
     "effects[0] (T -> T): 'T' is not an actuator tag"),
    ([{"actuator": "Tc", "sensor": "T", "sign": "positive"},
      {"actuator": "Tc", "sensor": "Caf", "sign": "negative"}],
     "effects[1] (Tc -> Caf): 'Caf' is not a sensor tag"),
    ([{"actuator": "Tc", "sensor": "T", "sign": "up"}],
     "effects[0] (Tc -> T) field 'sign'"),
    ([{"actuator": "Tc", "sensor": "T", "sign": "positive"},
      {"actuator": "Tc", "sensor": "T", "sign": "negative"}],
     "effects[1] (Tc -> T): this pair is declared twice"),
    ([{"actuator": "Tc", "sign": "positive"}], "effects[0] (Tc -> ?) field 'sensor'"),
    ([{"actuator": "Tc", "sensor": "T", "sign": "positive", "gain": 2}],
     "effects[0] (Tc -> T) field 'gain'"),
])
def test_a_bad_effect_is_named_in_the_error(effects, expected):
    with pytest.raises(SpecError) as err:
        ProcessSpec.from_dict(_with_effects(effects))
    assert expected in str(err.value)


def test_built_in_processes_declare_the_physically_certain_signs():
    declared = {name: {(e.actuator, e.sensor): e.sign for e in get_spec(name).effects}
                for name in ("cstr", "glucose", "turbofan")}
    assert declared["cstr"][("Tc", "T")] == "positive"
    assert declared["glucose"][("basal", "CGM")] == "negative"
    assert declared["glucose"][("bolus", "CGM")] == "negative"
    assert {declared["turbofan"][("Wf", s)] for s in ("Nf", "Nc", "T50", "Fn")} == {
        "positive"}
