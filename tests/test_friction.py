"""What a plant engineer meets first with a tag file and a historian export: a log at the
historian's precision, and a tag file posted again with a changed PI gain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api import services
from api.cli import app as cli
from api.db import open_session
from twin.data import check_log, distinct_format, significant_digits
from twin.errors import InvalidInput
from twin.spec import ProcessSpec

runner = CliRunner()

RATE = 2.0  # L/min per second

FLOW_TAGS: dict[str, Any] = {
    "name": "feed_line",
    "sample_period_s": 1,
    "tags": [
        {
            "name": "level",
            "role": "sensor",
            "unit": "%",
            "low": 0.0,
            "high": 100.0,
            "controlled": True,
        },
        {
            "name": "flow",
            "role": "actuator",
            "unit": "L/min",
            "low": 0.0,
            "high": 300.0,
            "rate_limit": RATE,
        },
    ],
    "baseline": [{"sensor": "level", "actuator": "flow", "kp": 1.5, "ti_s": 40.0}],
}


def historian_log(rows: int = 400, seed: int = 3) -> pd.DataFrame:
    """Flow ramps up and down at exactly its rate limit from an irrational start, as a
    ramp generator drives it; the level wanders."""
    rng = np.random.default_rng(seed)
    flow = np.empty(rows)
    flow[0], direction = 100.0 + np.pi, 1.0
    for k in range(1, rows):
        if not 20.0 < flow[k - 1] + direction * RATE < 280.0 or rng.random() < 0.05:
            direction = -direction
        flow[k] = flow[k - 1] + direction * RATE
    level = 50.0 + np.cumsum(rng.normal(0.0, 0.1, rows))
    return pd.DataFrame({"time_s": np.arange(rows, dtype=float), "level": level, "flow": flow})


def speed_up_move(df: pd.DataFrame, row: int, extra: float) -> pd.DataFrame:
    """The move into `row` made `extra` larger, the rest of the ramp shifted with it."""
    direction = np.sign(df.loc[row, "flow"] - df.loc[row - 1, "flow"])
    df.loc[row:, "flow"] += direction * extra
    return df


def as_historian_csv(df: pd.DataFrame, path: Path, digits: int = 6) -> pd.DataFrame:
    df.to_csv(path, index=False, float_format=f"%.{digits}g")
    return pd.read_csv(path)


def test_six_digit_historian_log_at_the_rate_limit_is_accepted(tmp_path: Path) -> None:
    spec = ProcessSpec.from_dict(FLOW_TAGS)
    logged = as_historian_csv(historian_log(), tmp_path / "log.csv")
    moves = np.abs(np.diff(logged["flow"].to_numpy()))
    assert moves.max() > RATE * (1 + 1e-6)  # rounding put some moves a hair over the limit
    assert significant_digits(logged["flow"].to_numpy()) == 6
    check_log(logged, spec)  # accepted


def test_a_clearly_faster_move_is_refused_with_digits_that_differ(tmp_path: Path) -> None:
    spec = ProcessSpec.from_dict(FLOW_TAGS)
    df = speed_up_move(historian_log(), 137, 0.01)  # one move 0.5 % over the limit
    logged = as_historian_csv(df, tmp_path / "log.csv")
    with pytest.raises(InvalidInput) as refused:
        check_log(logged, spec)
    message = str(refused.value)
    assert "actuator 'flow' moves 2.01 L/min/s at row 137" in message
    assert "faster than its rate_limit 2 L/min/s" in message


def test_a_hair_over_the_limit_in_a_full_precision_log_is_still_refused() -> None:
    spec = ProcessSpec.from_dict(FLOW_TAGS)
    df = speed_up_move(historian_log(), 137, 4e-5)  # within 6-digit round-off, but
    with pytest.raises(InvalidInput, match=r"moves 2.00004 L/min/s .* rate_limit 2 L/min/s"):
        check_log(df, spec)  # this log keeps 17 digits, so it cannot be round-off


def test_numbers_are_shown_with_digits_enough_to_differ() -> None:
    assert distinct_format(2.0000401, 2.0) == ("2.00004", "2")
    assert distinct_format(3.25, 1.5) == ("3.25", "1.5")


def _with_gain(kp: float) -> dict[str, Any]:
    return {**FLOW_TAGS, "baseline": [{**FLOW_TAGS["baseline"][0], "kp": kp}]}


def _register_a_model(db_url: str) -> None:
    with open_session(db_url) as session:
        services.register_model(session, "feed_line", "jepa", b"checkpoint", {}, {})


def test_api_versions_a_tag_file_whose_tags_are_unchanged(client: TestClient, db_url: str) -> None:
    first = client.post("/api/processes", json=FLOW_TAGS)
    assert first.status_code == 201, first.text
    assert first.json()["spec"]["version"] == 1
    _register_a_model(db_url)
    again = client.post("/api/processes", json=FLOW_TAGS)
    assert again.status_code == 201 and again.json()["spec"]["version"] == 1  # same: no new
    retuned = client.post("/api/processes", json=_with_gain(0.9))
    assert retuned.status_code == 201, retuned.text
    assert retuned.json()["spec"]["version"] == 2
    assert retuned.json()["spec"]["baseline"][0]["kp"] == 0.9
    stored = client.get("/api/processes").json()
    assert [p["spec"]["version"] for p in stored if p["name"] == "feed_line"] == [2]

    new_tags = {
        **_with_gain(0.9),
        "tags": [{**FLOW_TAGS["tags"][0], "high": 90.0}, FLOW_TAGS["tags"][1]],
    }
    clash = client.post("/api/processes", json=new_tags)
    assert clash.status_code == 409
    assert "already has trained models on other tags (changed: tags)" in clash.json()["detail"]
    after = client.get("/api/processes").json()
    assert [p["spec"] for p in after if p["name"] == "feed_line"] == [retuned.json()["spec"]]


@pytest.fixture
def tag_files(tmp_path: Path) -> dict[str, Path]:
    paths = {}
    for name, spec in (
        ("v1", FLOW_TAGS),
        ("gain", _with_gain(0.9)),
        ("tags", {**FLOW_TAGS, "sample_period_s": 2}),
    ):
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(yaml.safe_dump(spec))
    paths["log"] = tmp_path / "log.csv"
    as_historian_csv(historian_log(rows=160), paths["log"])
    return paths


def _train(spec: Path, log: Path, out: Path, url: str) -> Any:
    return runner.invoke(
        cli,
        [
            "train",
            "--spec",
            str(spec),
            "--data",
            str(log),
            "--out",
            str(out),
            "--database-url",
            url,
            "--epochs",
            "1",
        ],
    )


@pytest.mark.slow
def test_cli_versions_the_tag_file_as_the_api_does(
    tag_files: dict[str, Path], client: TestClient, db_url: str, tmp_path: Path
) -> None:
    first = _train(tag_files["v1"], tag_files["log"], tmp_path / "a.pt", db_url)
    assert first.exit_code == 0, first.output
    assert "spec version 1 (new)" in first.output
    second = _train(tag_files["gain"], tag_files["log"], tmp_path / "b.pt", db_url)
    assert second.exit_code == 0, second.output
    assert "spec version 2 (changed: baseline)" in " ".join(second.output.split())
    stored = [p for p in client.get("/api/processes").json() if p["name"] == "feed_line"]
    assert stored[0]["spec"]["version"] == 2 and stored[0]["spec"]["baseline"][0]["kp"] == 0.9
    # the API then sees the CLI's version and versions on from it
    assert client.post("/api/processes", json=FLOW_TAGS).json()["spec"]["version"] == 3


def test_cli_refuses_changed_tags_before_training(
    tag_files: dict[str, Path], db_url: str, tmp_path: Path
) -> None:
    with open_session(db_url) as session:
        services.define_process(session, ProcessSpec.from_dict(FLOW_TAGS))
    _register_a_model(db_url)
    out = tmp_path / "c.pt"
    refused = _train(tag_files["tags"], tag_files["log"], out, db_url)
    assert refused.exit_code == 2, refused.output
    assert "already has trained models on other tags (changed: sample_period_s)" in " ".join(
        refused.output.split()
    )
    assert not out.exists()  # refused before any training
    with open_session(db_url) as session:
        stored = services.spec_of(services.get_process(session, "feed_line"))
    assert stored.sample_period_s == 1 and stored.version == 1
