"""The `twin` command line: help for every step, real work on tiny inputs, clear errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from api.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["db", "upgrade"],
        ["data", "generate"],
        ["train"],
        ["control"],
        ["replay"],
        ["serve"],
        ["worker"],
    ],
)
def test_every_command_has_help(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_db_upgrade_then_generate_and_train(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert "revision" in result.output
    log = tmp_path / "log.csv"
    result = runner.invoke(
        app,
        [
            "data",
            "generate",
            "--process",
            "cstr",
            "--hours",
            "0.5",
            "--seed",
            "3",
            "--out",
            str(log),
        ],
    )
    assert result.exit_code == 0, result.output
    df = pd.read_csv(log)
    assert len(df) == 300 and {"time_s", "Ca", "T", "Tc", "Caf", "Tf"} <= set(df.columns)
    checkpoint = tmp_path / "twin.pt"
    result = runner.invoke(
        app,
        [
            "train",
            "--process",
            "cstr",
            "--data",
            str(log),
            "--epochs",
            "1",
            "--out",
            str(checkpoint),
            "--database-url",
            url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert checkpoint.is_file() and "registered as model 1" in result.output


def test_train_takes_a_built_in_process_recipe() -> None:
    from processes import train_config_for
    from twin.train import TrainConfig

    assert train_config_for("cstr", epochs=2).model.predictor_layers == 2
    assert train_config_for("glucose", epochs=2) == TrainConfig(epochs=2)
    assert train_config_for(None, epochs=2) == TrainConfig(epochs=2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "train",
                "--process",
                "cstr",
                "--data",
                "missing.csv",
                "--out",
                "x.pt",
                "--no-register",
            ],
            "log file not found",
        ),
        (
            ["train", "--process", "reactor9", "--data", "missing.csv", "--out", "x.pt"],
            "unknown process 'reactor9'",
        ),
        (["data", "generate", "--out", "log.txt"], "use a .csv or .parquet"),
        (["control", "--model", "missing.pt"], "checkpoint not found"),
        (["control", "--model", "missing.pt", "--planner", "lqr"], "unknown planner 'lqr'"),
    ],
)
def test_user_errors_are_one_clear_line(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = runner.invoke(app, ["serve", "--database-url", url])
    assert result.exit_code == 2
    assert "twin db upgrade" in result.output


@pytest.mark.slow
@pytest.mark.parametrize(
    ("process", "hours"), [("turbofan", 0.1), ("glucose", 8.0), ("tennessee_eastman", 1.0)]
)
def test_every_process_from_the_command_line(process: str, hours: float, tmp_path: Path) -> None:
    """generate -> train -> control, for each built-in process (a 1-epoch twin: the
    controller mostly falls back to the baseline, which is what this proves works)."""
    log, checkpoint = tmp_path / "log.parquet", tmp_path / "twin.pt"
    steps = [
        [
            "data",
            "generate",
            "--process",
            process,
            "--hours",
            str(hours),
            "--seed",
            "2",
            "--out",
            str(log),
        ],
        [
            "train",
            "--process",
            process,
            "--data",
            str(log),
            "--epochs",
            "1",
            "--out",
            str(checkpoint),
            "--no-register",
        ],
        ["control", "--model", str(checkpoint), "--planner", "cem", "--no-store"],
    ]
    for args in steps:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    assert "fallback steps" in result.output and "planning median" in result.output


def test_serve_refuses_a_missing_database_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    result = runner.invoke(app, ["serve", "--database-url", f"sqlite:///{path}"])
    assert result.exit_code == 2
    assert "no database at" in result.output and "twin db upgrade" in result.output
    assert not path.exists()


def test_a_garbage_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint at all")
    result = runner.invoke(app, ["control", "--model", str(bad), "--no-store"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # rich may wrap the line on a narrow console
    assert "not a twin checkpoint" in text and "weights_only" not in text
    assert len(result.output.strip().splitlines()) <= 2


@pytest.mark.slow
def test_control_stores_a_baseline_run(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--database-url", url]).exit_code == 0
    result = runner.invoke(
        app,
        [
            "control",
            "--controller",
            "baseline",
            "--process",
            "cstr",
            "--seed",
            "7",
            "--database-url",
            url,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "stored as run 1" in result.output
    from api import services
    from api.db import open_session

    with open_session(url) as session:
        run = services.get_run(session, 1)
        assert (run.kind, run.controller, run.process.name) == ("control", "baseline", "cstr")
        assert run.model_id is None and "cost" in run.metrics


@pytest.mark.parametrize(
    "args",
    [
        ["--controller", "pid", "--process", "cstr"],
        ["--controller", "baseline"],
        ["--process", "cstr"],
    ],
)
def test_control_refuses_unclear_choices(args: list[str]) -> None:
    result = runner.invoke(app, ["control", *args, "--no-store"])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output


def test_demo_registers_the_shipped_twin_and_runs_the_baseline_on_the_same_episode() -> None:
    import shutil
    import subprocess

    from twin.twin_model import Twin

    root = Path(__file__).resolve().parents[1]
    shipped = Twin.load(root / "demo" / "cstr_twin.pt")
    assert shipped.spec.name == "cstr"
    assert shipped.metrics["stopped_by_budget"] is False  # trained without a time cut
    assert shipped.metrics["epochs_done"] == shipped.metrics["epochs_asked"]
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    plan = subprocess.run(
        ["make", "-n", "demo"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert "twin register --model demo/cstr_twin.pt" in plan
    baseline = plan.index("twin control --controller baseline --process cstr --seed 7")
    twin = plan.index(
        "twin control --process cstr --model demo/cstr_twin.pt --planner casadi --seed 7"
    )
    assert baseline < twin < plan.index("twin serve")
    assert "twin train --process" not in plan  # DEMO_TRAIN=1 trains instead
    trained = subprocess.run(
        ["make", "-n", "demo", "DEMO_TRAIN=1"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert "twin train --process cstr" in trained and "twin register" not in trained


def test_training_uses_one_thread_on_a_machine_busier_than_its_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    import torch

    from api import cli_train as cli

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    try:
        monkeypatch.setattr(os, "getloadavg", lambda: (1.0, 1.0, 1.0))
        torch.set_num_threads(2)
        cli._fit_threads_to_load()
        assert torch.get_num_threads() == 2  # an idle machine keeps its threads
        monkeypatch.setattr(os, "getloadavg", lambda: (19.0, 19.0, 19.0))
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        cli._fit_threads_to_load()
        assert torch.get_num_threads() == 2  # the user's choice wins
        monkeypatch.delenv("OMP_NUM_THREADS")
        cli._fit_threads_to_load()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_printed_database_urls_hide_the_password(tmp_path: Path) -> None:
    """Container logs keep what the entrypoint's `twin db upgrade` prints."""
    from api.cli_common import shown_url

    shown = shown_url("postgresql+psycopg://twin:s3cret@db:5432/twin")
    assert "s3cret" not in shown and "twin:***@db:5432/twin" in shown
    sqlite = f"sqlite:///{tmp_path / 'plain.db'}"
    assert shown_url(sqlite) == sqlite
    result = runner.invoke(app, ["db", "upgrade", "--database-url", sqlite])
    assert result.exit_code == 0, result.output
    assert "plain.db" in result.output
