"""A process known only from a tag file and a logged CSV/Parquet: train, replay, control.

The log comes from the CSTR simulator, exported as a plant historian would (ISO time
stamps, an extra column); the twin and controller see nothing but the two files.
"""

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
from api.worker import run_worker
from processes import cstr
from twin import replay
from twin.baseline import spec_fallback
from twin.controller import TwinController
from twin.errors import InvalidInput
from twin.spec import ProcessSpec, SpecError
from twin.train import TrainConfig, train_twin

runner = CliRunner()

TAG_FILE: dict[str, Any] = {
    "name": "my_reactor",
    "description": "jacketed reactor exported from the historian",
    "sample_period_s": 6,
    "timestamp_column": "timestamp",
    "ignore_columns": ["shift"],
    "tags": [
        {"name": "Ca", "role": "sensor", "unit": "mol/L", "low": 0.0},
        {"name": "T", "role": "sensor", "unit": "K", "high": 385.0, "controlled": True},
        {
            "name": "Tc",
            "role": "actuator",
            "unit": "K",
            "low": 280.0,
            "high": 360.0,
            "rate_limit": 0.5,
        },
        {"name": "Caf", "role": "disturbance", "unit": "mol/L"},
        {"name": "Tf", "role": "disturbance", "unit": "K"},
    ],
    "baseline": [{"sensor": "T", "actuator": "Tc", "kp": 0.8, "ti_s": 30.0}],
}
TINY_TRAIN = ["--epochs", "2", "--max-minutes", "1"]


def historian_export(hours: float, seed: int) -> pd.DataFrame:
    df = cstr.generate_training_log(hours, seed)
    start = pd.Timestamp("2026-03-01T06:00:00Z")
    df.insert(
        0, "timestamp", [(start + pd.Timedelta(seconds=t)).isoformat() for t in df.pop("time_s")]
    )
    df["shift"] = np.where(np.arange(len(df)) < len(df) // 2, "A", "B")
    return df


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("own")
    tag_file = folder / "my_reactor.yaml"
    tag_file.write_text(yaml.safe_dump(TAG_FILE, sort_keys=False))
    log = folder / "log.csv"
    historian_export(1.0, seed=5).to_csv(log, index=False)
    parquet = folder / "log.parquet"
    historian_export(1.0, seed=5).to_parquet(parquet, index=False)
    return {"tags": tag_file, "csv": log, "parquet": parquet, "folder": folder}


def test_cli_trains_replays_and_controls_from_the_two_files(files: dict[str, Path]) -> None:
    url = f"sqlite:///{files['folder'] / 'twin.db'}"
    assert runner.invoke(cli, ["db", "upgrade", "--database-url", url]).exit_code == 0
    checkpoint = files["folder"] / "my.pt"
    result = runner.invoke(
        cli,
        [
            "train",
            "--spec",
            str(files["tags"]),
            "--data",
            str(files["parquet"]),
            "--out",
            str(checkpoint),
            "--database-url",
            url,
            *TINY_TRAIN,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "registered as model 1" in result.output
    for mode, expected in (
        ("open-loop", "20-step RMSE T"),
        ("shadow", "mean |twin - logged| Tc"),
        ("logged", "samples beyond a hard limit"),
    ):
        result = runner.invoke(
            cli,
            [
                "replay",
                "--model",
                str(checkpoint),
                "--data",
                str(files["csv"]),
                "--mode",
                mode,
                "--planner",
                "cem",
                "--stride",
                "4",
                "--database-url",
                url,
            ],
        )
        assert result.exit_code == 0, result.output
        assert expected in result.output and "stored as run" in result.output
    result = runner.invoke(
        cli,
        [
            "control",
            "--model",
            str(checkpoint),
            "--plant",
            "cstr",
            "--planner",
            "cem",
            "--database-url",
            url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "samples above 385 K" in result.output
    from api.db import open_session

    with open_session(url) as session:
        runs = services.list_runs(session)
        assert {r.kind for r in runs} == {"train", "replay", "control"}
        assert {r.process.name for r in runs} == {"my_reactor"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"drop": "Tf"}, "lacks column(s) Tf"),
        ({"add": "operator_note"}, "operator_note that spec 'my_reactor' does not know"),
        ({"swap_rows": (10, 11)}, "must strictly increase: row 11"),
        ({"duplicate_row": 20}, "duplicate timestamp in 'timestamp' at rows 20 and 21"),
        ({"nan_actuator": 30}, "actuator 'Tc' has missing values (1, first at row 30)"),
        ({"actuator_value": 400.0}, "outside its bounds [280, 360] K"),
    ],
)
def test_bad_logs_are_refused_with_the_reason(
    files: dict[str, Path], tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    df = pd.read_csv(files["csv"])
    if "drop" in change:
        df = df.drop(columns=[change["drop"]])
    if "add" in change:
        df[change["add"]] = "ok"
    if "swap_rows" in change:
        a, b = change["swap_rows"]
        df.loc[[a, b], "timestamp"] = df.loc[[b, a], "timestamp"].to_numpy()
    if "duplicate_row" in change:
        k = change["duplicate_row"]
        df.loc[k + 1, "timestamp"] = df.loc[k, "timestamp"]
    if "nan_actuator" in change:
        df.loc[change["nan_actuator"], "Tc"] = np.nan
    if "actuator_value" in change:
        df.loc[50, "Tc"] = change["actuator_value"]
    bad = tmp_path / "bad.csv"
    df.to_csv(bad, index=False)
    result = runner.invoke(
        cli,
        [
            "train",
            "--spec",
            str(files["tags"]),
            "--data",
            str(bad),
            "--out",
            str(tmp_path / "x.pt"),
            "--no-register",
            *TINY_TRAIN,
        ],
    )
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.pt").exists()


def test_tag_file_without_a_unit_names_the_tag(tmp_path: Path) -> None:
    data = yaml.safe_load(yaml.safe_dump(TAG_FILE))
    del data["tags"][2]["unit"]
    path = tmp_path / "tags.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match=r"tag 'Tc' field 'unit': Field required"):
        ProcessSpec.load(path)


def test_limit_in_the_wrong_unit_contradicts_the_data(files: dict[str, Path]) -> None:
    data = yaml.safe_load(yaml.safe_dump(TAG_FILE))
    data["tags"][1]["high"] = 112.0  # degC, while the log is in K
    spec = ProcessSpec.from_dict(data)
    with pytest.raises(InvalidInput, match=r"'T' is typically .* beyond its high limit 112 K"):
        replay.as_logged(pd.read_csv(files["csv"]), spec)


def test_replays_line_up_with_the_log(files: dict[str, Path]) -> None:
    spec = ProcessSpec.from_dict(TAG_FILE)
    df = pd.read_csv(files["csv"])
    twin, _ = train_twin(df, spec, TrainConfig(epochs=1, seed=0))
    logged = replay.as_logged(df, spec)
    assert len(logged.steps) == len(df) and logged.metrics["violations"] == 0
    assert logged.steps[1].time_s == pytest.approx(6.0)

    horizon = 10
    predicted = replay.open_loop(twin, df, horizon=horizon, stride=7)
    first = predicted.steps[0]
    t0 = twin.config.window  # the first sample with a full window behind it
    assert first.measurements["T"] == pytest.approx(df["T"].iloc[t0])
    assert first.plan is not None
    assert first.plan.actuators["Tc"] == pytest.approx(df["Tc"].iloc[t0 : t0 + horizon].tolist())
    assert {"nrmse_h1", "nrmse_h10", "rmse_T_h10"} <= set(predicted.metrics)
    assert all(np.isfinite(v) for v in predicted.metrics.values())

    shadow = replay.shadow(TwinController.from_twin(twin, "cem"), df.iloc[:60], {"T": 355.0})
    assert len(shadow.steps) == 60
    rate = 0.5 * spec.sample_period_s
    for k, step in enumerate(shadow.steps[1:], start=1):  # limits count from what was applied
        assert abs(step.actuators["Tc"] - df["Tc"].iloc[k - 1]) <= rate + 1e-9
        assert 280.0 <= step.actuators["Tc"] <= 360.0


def test_api_defines_the_process_and_trains_it_from_its_log(
    client: TestClient, db_url: str, files: dict[str, Path], session: Any
) -> None:
    response = client.post("/api/processes", json=TAG_FILE)
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["tags"][2]["rate_limit"] == 0.5
    assert client.post("/api/processes", json=TAG_FILE).status_code == 201  # same spec: fine
    clash = client.post("/api/processes", json={**TAG_FILE, "name": "cstr"})
    assert clash.status_code == 409 and "built-in" in clash.json()["detail"]
    no_unit = {**TAG_FILE, "tags": [dict(TAG_FILE["tags"][0], unit=""), *TAG_FILE["tags"][1:]]}
    assert client.post("/api/processes", json=no_unit).status_code == 422

    job = client.post(
        "/api/jobs/train",
        json={
            "process": "my_reactor",
            "data": {"source": "csv", "path": str(files["csv"])},
            "train": {
                "epochs": 1,
                "batch_size": 64,
                "rollout_steps": 4,
                "model": {"window": 8, "encoder_hidden": 32, "predictor_hidden": 32},
            },
            "model_name": "own",
        },
    )
    assert job.status_code == 201, job.text
    assert run_worker(db_url, poll_seconds=0.01, once=True) == 1
    done = client.get(f"/api/jobs/{job.json()['id']}").json()
    assert done["status"] == "succeeded", done
    models = client.get("/api/models", params={"process": "my_reactor"}).json()
    assert [m["name"] for m in models] == ["own"]
    changed = {**TAG_FILE, "description": "new tags", "sample_period_s": 12}
    conflict = client.post("/api/processes", json=changed)
    assert conflict.status_code == 409 and "already has trained models" in conflict.text


def test_declared_pi_loop_is_the_fallback_and_matches_the_built_in_pi() -> None:
    spec = ProcessSpec.from_dict(TAG_FILE)
    own, built_in = spec_fallback(spec), cstr.pi_fallback()
    assert own is not None
    applied = {"Tc": 330.0}
    for t in (350.0, 349.2, 348.9, 349.5, 350.3):  # small errors: no rate clamp in cstr's PI
        meas = {"T": t, "Ca": 0.5}
        mine, theirs = own(meas, {"T": 350.0}, applied), built_in(meas, {"T": 350.0}, applied)
        assert mine["Tc"] == pytest.approx(theirs["Tc"])
        applied = dict(mine)
    assert own({"T": None}, {"T": 350.0}, {"Tc": 331.0}) == {"Tc": 331.0}  # no measurement
    assert spec_fallback(spec.model_copy(update={"baseline": ()})) is None


@pytest.mark.parametrize(
    ("loop", "message"),
    [
        ({"sensor": "Tc", "actuator": "Tc", "kp": 1.0, "ti_s": 10.0}, "'Tc' is not a sensor tag"),
        ({"sensor": "T", "actuator": "Caf", "kp": 1.0, "ti_s": 10.0}, "'Caf' is not an actuator"),
        (
            {"sensor": "T", "actuator": "Tc", "kp": 0.0, "ti_s": 10.0},
            "kp must be a finite, non-zero",
        ),
        ({"sensor": "T", "actuator": "Tc", "kp": 1.0, "ti_s": -1.0}, "greater than 0"),
    ],
)
def test_bad_baseline_loops_are_refused(loop: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        ProcessSpec.from_dict({**TAG_FILE, "baseline": [loop]})
