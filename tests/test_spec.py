"""Process specs: loading from YAML/JSON, validation messages that name tag and field."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from twin_fixtures import cstr_spec_dict, tag_entry

from processes import cstr, get_process, get_spec
from twin.spec import TRACKING_WEIGHT, ProcessSpec, SpecError, TagRole


def write(path: Path, data: Any) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(data), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_loads_from_file(tmp_path: Path, suffix: str) -> None:
    spec = ProcessSpec.load(write(tmp_path / f"cstr{suffix}", cstr_spec_dict()))
    assert spec == cstr.SPEC
    assert [t.name for t in spec.actuators] == ["Tc"]
    assert spec.tag("Tc").rate_limit == cstr.TC_RATE_K_PER_S


def test_yaml_written_by_hand(tmp_path: Path) -> None:
    text = """
name: tank
sample_period_s: 2
tags:
  - {name: level, role: sensor, unit: m, low: 0, high: 3, controlled: true}
  - {name: valve, role: actuator, unit: "%", low: 0, high: 100, rate_limit: 5}
  - {name: inflow, role: disturbance, unit: m3/h}
"""
    path = tmp_path / "tank.yaml"
    path.write_text(text, encoding="utf-8")
    spec = ProcessSpec.load(path)
    assert spec.name == "tank"
    assert [t.name for t in spec.controlled] == ["level"]
    assert spec.tag("inflow").role is TagRole.DISTURBANCE
    assert spec.rate_limit_per_sample(spec.tag("valve")) == pytest.approx(10.0)


def _mutate(fn: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = cstr_spec_dict()
    fn(data)
    return data


# (mutation, words every one of which the message must contain)
INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], list[str]]] = {
    "actuator missing low": (
        lambda d: tag_entry(d, "Tc").pop("low"),
        ["tag 'Tc'", "bounds", "low"],
    ),
    "actuator missing high": (
        lambda d: tag_entry(d, "Tc").update(high=None),
        ["tag 'Tc'", "bounds", "high"],
    ),
    "actuator missing rate_limit": (
        lambda d: tag_entry(d, "Tc").pop("rate_limit"),
        ["tag 'Tc'", "rate_limit"],
    ),
    "zero rate_limit": (
        lambda d: tag_entry(d, "Tc").update(rate_limit=0.0),
        ["tag 'Tc'", "rate_limit"],
    ),
    "low above high": (
        lambda d: tag_entry(d, "Tc").update(low=400.0),
        ["tag 'Tc'", "low", "high", "400"],
    ),
    "low equals high": (
        lambda d: tag_entry(d, "Tc").update(low=360.0),
        ["tag 'Tc'", "low", "below"],
    ),
    "duplicate tag": (lambda d: d["tags"].append(dict(tag_entry(d, "T"))), ["duplicate", "T"]),
    "unknown role": (lambda d: tag_entry(d, "Ca").update(role="gauge"), ["tag 'Ca'", "role"]),
    "missing unit": (lambda d: tag_entry(d, "Tf").pop("unit"), ["tag 'Tf'", "unit"]),
    "empty unit": (lambda d: tag_entry(d, "Tf").update(unit=""), ["tag 'Tf'", "unit"]),
    "infinite limit": (
        lambda d: tag_entry(d, "T").update(high=float("inf")),
        ["tag 'T'", "high", "finite"],
    ),
    "nan limit": (
        lambda d: tag_entry(d, "Tc").update(low=float("nan")),
        ["tag 'Tc'", "low", "finite"],
    ),
    "no actuator": (lambda d: d["tags"].remove(tag_entry(d, "Tc")), ["actuator"]),
    "rate_limit on a sensor": (
        lambda d: tag_entry(d, "Ca").update(rate_limit=1.0),
        ["tag 'Ca'", "rate_limit", "actuator"],
    ),
    "controlled actuator": (
        lambda d: tag_entry(d, "Tc").update(controlled=True),
        ["tag 'Tc'", "sensor"],
    ),
    "nominal outside bounds": (
        lambda d: tag_entry(d, "Tc").update(nominal=500.0),
        ["tag 'Tc'", "nominal", "500"],
    ),
    "unknown field": (lambda d: tag_entry(d, "Ca").update(colour="red"), ["tag 'Ca'", "colour"]),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_spec_from_dict_names_tag_and_field(case: str) -> None:
    mutation, words = INVALID[case]
    with pytest.raises(SpecError) as info:
        ProcessSpec.from_dict(_mutate(mutation), source="plant.yaml")
    message = str(info.value)
    assert message.startswith("plant.yaml: invalid process spec")
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


@pytest.mark.parametrize(
    "case", ["actuator missing rate_limit", "unknown role", "missing unit", "duplicate tag"]
)
@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_invalid_spec_file_names_file_tag_and_field(tmp_path: Path, case: str, suffix: str) -> None:
    mutation, words = INVALID[case]
    path = write(tmp_path / f"bad{suffix}", _mutate(mutation))
    with pytest.raises(SpecError) as info:
        ProcessSpec.load(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_non_finite_limit_in_yaml_and_json_files(tmp_path: Path) -> None:
    yaml_path = tmp_path / "inf.yaml"
    yaml_path.write_text(
        yaml.safe_dump(cstr_spec_dict(), sort_keys=False).replace("high: 385.0", "high: .inf"),
        encoding="utf-8",
    )
    with pytest.raises(SpecError, match=r"tag 'T'.*high must be a finite number"):
        ProcessSpec.load(yaml_path)
    json_path = tmp_path / "nan.json"
    json_path.write_text(json.dumps(cstr_spec_dict()).replace("385.0", "NaN"), encoding="utf-8")
    with pytest.raises(SpecError, match=r"tag 'T'.*high must be a finite number"):
        ProcessSpec.load(json_path)


def test_tag_without_name_is_described_by_index() -> None:
    data = _mutate(lambda d: tag_entry(d, "Ca").pop("name"))
    with pytest.raises(SpecError, match=r"tag '#0' field 'name'"):
        ProcessSpec.from_dict(data)


def test_bad_extension(tmp_path: Path) -> None:
    path = tmp_path / "cstr.txt"
    path.write_text(json.dumps(cstr_spec_dict()), encoding="utf-8")
    with pytest.raises(SpecError, match=r"unsupported spec format"):
        ProcessSpec.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"spec file not found: .*nowhere\.yaml"):
        ProcessSpec.load(tmp_path / "nowhere.yaml")


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("broken.json", "{not json", r"cannot parse"),
        ("broken.yaml", "tags: [unclosed", r"cannot parse"),
        ("list.yaml", "- 1\n- 2\n", r"top level must be a mapping"),
        ("empty.yaml", "", r"top level must be a mapping"),
    ],
)
def test_unparseable_files(tmp_path: Path, name: str, text: str, pattern: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(SpecError, match=pattern):
        ProcessSpec.load(path)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"out{suffix}"
    cstr.SPEC.save(path)
    loaded = ProcessSpec.load(path)
    assert loaded == cstr.SPEC
    assert loaded.to_dict() == cstr.SPEC.to_dict()
    if suffix == ".json":
        assert json.loads(path.read_text(encoding="utf-8"))["name"] == "cstr"


def test_cstr_spec_is_valid_and_lookups_work() -> None:
    spec = get_spec("cstr")
    assert spec is cstr.SPEC
    assert ProcessSpec.from_dict(spec.to_dict()) == spec  # survives re-validation
    assert [t.name for t in spec.sensors] == ["Ca", "T"]
    assert [t.name for t in spec.actuators] == ["Tc"]
    assert [t.name for t in spec.disturbances] == ["Caf", "Tf"]
    assert [t.name for t in spec.controlled] == ["T"]
    assert spec.tag("T").high == cstr.T_LIMIT_K
    tc = spec.tag("Tc")
    assert (tc.low, tc.high) == (cstr.TC_LOW, cstr.TC_HIGH)
    assert spec.rate_limit_per_sample(tc) == pytest.approx(cstr.RATE_PER_SAMPLE)
    assert get_process("cstr") is cstr


def test_unknown_tag_and_process() -> None:
    with pytest.raises(SpecError, match=r"unknown tag 'Tx' for process 'cstr' \(known: .*Tc"):
        cstr.SPEC.tag("Tx")
    with pytest.raises(SpecError, match=r"tag 'T' has no rate limit"):
        cstr.SPEC.rate_limit_per_sample(cstr.SPEC.tag("T"))
    with pytest.raises(SpecError, match=r"unknown process 'boiler'"):
        get_spec("boiler")


def test_control_weights_default_when_a_spec_leaves_them_out() -> None:
    """A spec without control settings (a plant engineer's tag file, or a checkpoint
    written before the weights existed) loads with the defaults, which track setpoints."""
    data = cstr_spec_dict()
    del data["control"]
    spec = ProcessSpec.from_dict(data)
    assert spec.control.tracking_weight == TRACKING_WEIGHT > 0
    assert spec.control.move_weight == 0.5
    assert spec.control.limit_margin == 0.25
    assert spec.control.setpoint_priority == 10.0 and spec.control.forecast_bias_gain == 0.2
    assert spec.control.data_envelope and spec.control.guard_keeps_twin_moves


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("tracking_weight", -1.0, "greater than or equal to 0"),
        ("move_weight", 0.0, "greater than 0"),
        ("move_weight", float("nan"), "finite"),
        ("tracking_weight", float("inf"), "finite"),
        ("limit_margin", -0.1, "greater than or equal to 0"),
        ("limit_margin", float("nan"), "finite"),
        ("setpoint_priority", 0.5, "greater than or equal to 1"),
        ("forecast_bias_gain", 1.5, "less than or equal to 1"),
        ("forecast_bias_gain", -0.1, "greater than or equal to 0"),
        ("colour", 1.0, "Extra inputs"),
    ],
)
def test_invalid_control_weights_name_the_field(field: str, value: float, words: str) -> None:
    data = cstr_spec_dict()
    data["control"][field] = value
    with pytest.raises(SpecError) as info:
        ProcessSpec.from_dict(data, source="plant.yaml")
    assert f"control.{field}" in str(info.value) and words in str(info.value)


@pytest.mark.parametrize(
    ("names", "words"),
    [
        (["Tx"], "'Tx' is not an actuator tag"),
        (["T"], "'T' is not an actuator tag"),
        (["Tc"], "lists every actuator"),
    ],
)
def test_baseline_actuators_must_leave_the_twin_an_actuator(names: list[str], words: str) -> None:
    data = cstr_spec_dict()
    data["control"]["baseline_actuators"] = names
    with pytest.raises(SpecError, match=words):
        ProcessSpec.from_dict(data, source="plant.yaml")


@pytest.mark.parametrize(
    ("economic", "words"),
    [
        ({"Tc": "minimise"}, "control.economic: 'Tc' is not a sensor tag"),
        ({"Tx": "maximise"}, "control.economic: 'Tx' is not a sensor tag"),
        ({"T": "lower"}, "control.economic"),
    ],
)
def test_economic_directions_name_sensors_and_a_direction(economic: dict, words: str) -> None:
    data = cstr_spec_dict()
    data["control"]["economic"] = economic
    with pytest.raises(SpecError, match=words):
        ProcessSpec.from_dict(data, source="plant.yaml")


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_control_weights_survive_a_file_round_trip(tmp_path: Path, suffix: str) -> None:
    data = cstr_spec_dict()
    data["control"] = {"tracking_weight": 7.5, "move_weight": 2.0, "limit_margin": 0.1}
    path = tmp_path / f"plant{suffix}"
    ProcessSpec.from_dict(data).save(path)
    assert ProcessSpec.load(path).control.tracking_weight == 7.5
    assert ProcessSpec.load(path).control.limit_margin == 0.1
    data["control"]["economic"] = {"Ca": "maximise"}
    ProcessSpec.from_dict(data).save(path)
    assert ProcessSpec.load(path).control.economic == {"Ca": "maximise"}
