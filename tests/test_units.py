"""Units checked against the data: a log in another unit of a tag's quantity is refused
with the likely mix-up named, and logs in the declared units pass."""

from __future__ import annotations

import numpy as np
import pytest
from twin_fixtures import training_log

from processes import cstr, get_process
from twin.data import check_log
from twin.errors import InvalidInput
from twin.spec import Tag, TagRole
from twin.units import likely_mixup, parse_unit


def _sensor(unit: str, **limits: float) -> Tag:
    return Tag(name="x", role=TagRole.SENSOR, unit=unit, **limits)


def test_cstr_temperature_logged_in_celsius_is_refused_naming_the_mixup() -> None:
    df = training_log(0.5, 3)
    df["T"] = df["T"] - 273.15
    with pytest.raises(InvalidInput, match=r"sensor 'T'.*likely in degC, not K"):
        check_log(df, cstr.SPEC)


def test_cstr_log_in_its_declared_units_passes() -> None:
    check_log(training_log(0.5, 3), cstr.SPEC)


@pytest.mark.parametrize("process", ["turbofan", "tennessee_eastman", "glucose"])
def test_every_simulator_log_passes(process: str) -> None:
    module = get_process(process)
    hours = 0.3 if process != "glucose" else 2.0
    check_log(module.generate_training_log(hours, 5), module.SPEC)


@pytest.mark.parametrize(
    ("tag", "typical", "expected"),
    [
        (_sensor("K", nominal=350.0, high=385.0), 77.0, "degC"),
        (_sensor("°C", nominal=120.0, high=175.0), 393.0, "K"),
        (_sensor("K", nominal=350.0, high=385.0), 170.0, "degF"),
        (_sensor("bar", nominal=5.0, low=1.0, high=10.0), 500.0, "kPa"),
        (_sensor("kPa", nominal=2000.0), 20.0, "bar"),
        (_sensor("kPa gauge", nominal=2705.0, high=3000.0), 27.0, "bar gauge"),
        (_sensor("mol/L", nominal=0.5, low=0.0), 500.0, "mmol/L"),
    ],
)
def test_likely_mixup_names_the_other_unit(tag: Tag, typical: float, expected: str) -> None:
    assert likely_mixup(tag, typical) == expected


@pytest.mark.parametrize(
    ("tag", "typical"),
    [
        (_sensor("K", nominal=350.0, high=385.0), 330.0),  # plausible in K
        (_sensor("K", high=385.0), 77.0),  # a one-sided limit alone: not judged
        (_sensor("bar", nominal=5.0), 9.0),  # inside a factor of five
        (_sensor("rpm", nominal=4000.0), 40.0),  # a unit this module does not know
        (_sensor("kPa", nominal=2000.0), 2e9),  # fits no unit of pressure either
    ],
)
def test_no_mixup_claimed_without_evidence(tag: Tag, typical: float) -> None:
    assert likely_mixup(tag, typical) is None


def test_unit_spellings() -> None:
    assert parse_unit("°C")[0].name == "degC"  # type: ignore[index]
    assert parse_unit("kPa gauge") == (parse_unit("kPa")[0], True)  # type: ignore[index]
    assert parse_unit("m³/h")[0].name == "m3/h"  # type: ignore[index]
    assert parse_unit("furlongs") is None
    assert np.isclose(parse_unit("degF")[0].to_base(212.0), 373.15)  # type: ignore[index]
