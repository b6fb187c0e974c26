"""Training under torchrun (DistributedDataParallel, gloo on CPU): 2 processes give the
twin a 1-process run with the same effective batch gives, to a stated tolerance; the
checkpoint loads and controls; `twin train` and a 2-process job from the queue work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from test_jobs import tiny

from api import services
from api.db import open_session
from api.worker import run_worker
from processes import cstr, fallback_for, protection_for
from twin.controller import TwinController
from twin.logs import write_log
from twin.model import JEPAConfig
from twin.train import TrainConfig
from twin.twin_model import Twin

pytestmark = pytest.mark.slow  # trains in torchrun processes
# Same windows per step (64 in one process, 32 in each of two), same order, same seed:
# the runs differ only in the random masking draws and in batch statistics (the VICReg
# variance/covariance terms, and the training's other batch-level terms, are computed per
# process). Measured after 3 epochs: 0.2 % apart on the held-out prediction error and
# 1.5 % on the temperature readout with the first version of this test's training loop,
# 7 % on the prediction error once the loop gained more batch-level terms. Stated
# tolerance: 10 %.
TOLERANCE = 0.10
TINY = TrainConfig(
    epochs=3,
    batch_size=64,
    rollout_steps=4,
    seed=0,
    model=JEPAConfig(window=8, embed_dim=8, encoder_hidden=32, predictor_hidden=32),
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    write_log(cstr.generate_training_log(hours=1.0, seed=3), folder / "log.parquet")
    cstr.SPEC.save(folder / "spec.json")
    (folder / "config.json").write_text(json.dumps(TINY.to_dict()))
    return folder


def torchrun(processes: int, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def train(inputs: Path, processes: int) -> Twin:
    out = inputs / f"twin{processes}.pt"
    done = torchrun(
        processes,
        "-m",
        "api.worker_ddp",
        "--data",
        str(inputs / "log.parquet"),
        "--spec",
        str(inputs / "spec.json"),
        "--config",
        str(inputs / "config.json"),
        "--out",
        str(out),
    )
    epochs = [line for line in done.stdout.splitlines() if line.startswith("EPOCH ")]
    assert len(epochs) == TINY.epochs  # rank 0 alone reports
    return Twin.load(out)


def test_two_processes_match_one_with_the_same_effective_batch(inputs: Path) -> None:
    one, two = train(inputs, 1), train(inputs, 2)
    assert one.metrics["holdout_prediction"] == pytest.approx(
        two.metrics["holdout_prediction"], rel=TOLERANCE
    )
    for tag, rmse in one.metrics["readout_rmse"].items():
        assert two.metrics["readout_rmse"][tag] == pytest.approx(rmse, rel=TOLERANCE)
    assert one.to_bytes() != two.to_bytes()  # really two different runs

    # The 2-process checkpoint loads and drives the plant inside its limits.
    controller = TwinController.from_twin(
        two, "casadi", fallback=fallback_for(cstr.SPEC), protection=protection_for(cstr.SPEC)
    )
    plant = cstr.CSTRSimulator(seed=1)
    coolant = cstr.SPEC.tag("Tc")
    measured = plant.measure()
    for k in range(12):
        record = controller.step(k * cstr.SAMPLE_PERIOD_S, measured, {"T": 352.0})
        assert coolant.low <= record.actuators["Tc"] <= coolant.high
        measured = plant.step(record.actuators["Tc"])


def test_twin_train_under_torchrun_registers_once(inputs: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'twin.db'}"
    subprocess.run(
        [sys.executable, "-m", "api.cli", "db", "upgrade", "--database-url", url],
        check=True,
        capture_output=True,
    )
    out = tmp_path / "twin.pt"
    torchrun(
        2,
        "-m",
        "api.cli",
        "train",
        "--process",
        "cstr",
        "--data",
        str(inputs / "log.parquet"),
        "--out",
        str(out),
        "--epochs",
        "1",
        "--max-minutes",
        "0.5",
        "--database-url",
        url,
    )
    assert Twin.load(out).spec.name == "cstr"
    with open_session(url) as session:
        assert len(services.list_models(session)) == 1  # rank 0 alone registered


def test_a_queued_job_can_ask_for_two_processes(db_url: str, session: Session) -> None:
    run = services.enqueue_training(session, "cstr", {**tiny(), "processes": 2})
    assert run.config["processes"] == 2
    assert run_worker(db_url, poll_seconds=0.01, once=True) == 1
    session.expire_all()
    done = services.get_run(session, run.id)
    assert done.status == "succeeded", done.metrics
    model = services.get_model(session, done.model_id)
    assert model.config["processes"] == 2
    assert done.metrics["progress"]["processes"] == 2
