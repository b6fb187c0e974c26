"""What a running job of the worker (api.worker) checks while it works, and training on
several processes in a torchrun child (api.worker_ddp) under those checks.

A job stops with `JobCancelled` when it was cancelled through the API, with
`WorkerStopping` when the worker is shutting down, and with `LeaseLost` when another
worker reclaimed it; progress is written only while this worker still holds the job.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from api.services import job_leases, jobs
from api.services.job_leases import Heartbeat, LeaseLost
from twin.logs import write_log

# How often a replay commits its progress and looks for a cancel request.
PROGRESS_EVERY_S = 1.0


class JobCancelled(Exception):
    """Raised from the epoch callback: the job was cancelled through the API."""


class WorkerStopping(Exception):
    """Raised from the epoch callback: the worker was asked to shut down."""


class JobGuard:
    """What a running job checks between epochs: the worker's stop flag and its lease."""

    def __init__(self, stop: threading.Event | None, beat: Heartbeat | None) -> None:
        self.stop, self.beat = stop, beat
        self.lease = beat.lease if beat is not None else None

    def is_set(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def lost(self) -> bool:
        return self.beat is not None and self.beat.lost.is_set()


def record_progress_held(
    session: Session, run_id: int, stop: JobGuard, progress: dict[str, Any]
) -> None:
    """Progress is written only while this worker still holds the job."""
    if stop.lease is not None:
        job_leases.check(session, stop.lease)
    jobs.record_progress(session, run_id, progress)


def check_job(session: Session, run_id: int, stop: JobGuard) -> None:
    if stop.lost():  # reclaimed by another worker: write nothing more
        raise LeaseLost(f"job {run_id}: the heartbeat found the lease gone")
    if jobs.cancel_requested(session, run_id):  # first: a cancelled job is not handed back
        raise JobCancelled()
    if stop.is_set():
        raise WorkerStopping()


def train_in_processes(
    session: Session,
    run_id: int,
    processes: int,
    df: Any,
    process_spec: Any,
    cfg: Any,
    stop: JobGuard,
) -> tuple[bytes, dict]:
    """Train in a torchrun child with `processes` processes (api.worker_ddp); its epochs
    become progress; a cancel, shutdown or lost lease kills it."""
    from twin.twin_model import Twin  # late: torch loads only when there is work

    with tempfile.TemporaryDirectory(prefix=f"job{run_id}-") as tmp:
        folder = Path(tmp)
        write_log(df, folder / "log.parquet")
        process_spec.save(folder / "spec.json")
        (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
        command = torchrun_command(folder, processes, folder / "twin.pt")
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        tail: list[str] = []
        threading.Thread(target=_relay, args=(child, lines), daemon=True).start()
        try:
            while True:
                try:
                    line = lines.get(timeout=PROGRESS_EVERY_S)
                except queue.Empty:  # between epochs too: a cancel stops it within a second
                    check_job(session, run_id, stop)
                    continue
                if line is None:
                    break
                tail = [*tail[-19:], line]
                if line.startswith("EPOCH "):
                    epoch = json.loads(line[len("EPOCH ") :])
                    record_progress_held(
                        session,
                        run_id,
                        stop,
                        {
                            "epoch": epoch["epoch"],
                            "of": cfg.epochs,
                            "processes": processes,
                            "train_loss": epoch["train_loss"],
                            "holdout_prediction": epoch["holdout_prediction"],
                            "seconds": epoch["seconds"],
                        },
                    )
                    check_job(session, run_id, stop)
        finally:
            if child.poll() is None:  # torchrun and its ranks: their own process group
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        if child.returncode != 0:
            raise RuntimeError(
                f"torchrun with {processes} processes exited with "
                f"{child.returncode}: " + " | ".join(tail[-5:])
            )
        checkpoint = (folder / "twin.pt").read_bytes()
    return checkpoint, Twin.from_bytes(checkpoint).metrics


def _relay(child: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def torchrun_command(folder: Path, processes: int, out: Path) -> list[str]:
    """torchrun on this machine for `api.worker_ddp`, reading the log, spec and config
    written in `folder`."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "api.worker_ddp",
        "--data",
        str(folder / "log.parquet"),
        "--spec",
        str(folder / "spec.json"),
        "--config",
        str(folder / "config.json"),
        "--out",
        str(out),
    ]
