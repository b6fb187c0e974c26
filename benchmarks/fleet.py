"""Fleet training: many glucose twins queued as jobs, run by 1 and by 2 worker processes.

    python benchmarks/fleet.py                        # 4 patients, 24 h logs, 3 epochs
    python benchmarks/fleet.py --patients 30 --hours 360 --epochs 20    # the full fleet

Each virtual patient's excitation log is simulated once (simglucose, saved as Parquet),
then one training job per patient is queued (`POST /api/jobs/train`'s service, csv data
source, the glucose recipe's twin with the given epochs and no time budget, so wall time
measures work, not a budget) and `twin worker` processes (api.worker, one OS process
each, heartbeats on) run the queue to the end over one database. The same jobs run with
1 worker, then with 2; reported: wall time of each, each worker's share (jobs and
seconds), and that every job ran exactly once.

Scaling: the target fleet is the 30 patients with the recipe's 360 h logs and 20 epochs,
hours of training on this machine; the default is 4 patients, 24 h logs and 3 epochs.
The twins are trained under the default patient's tag file (pump limits differ per
patient; the training throughput does not). The machine has 2 cores shared with other
jobs, so the ratio moves with their load (and a single worker's 2 torch threads suffer
most when the cores are oversubscribed); workers on separate machines over one
PostgreSQL each bring their own cores.
Results: benchmarks/results/fleet.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from edge_opcua import bench_database  # noqa: E402

from api import services  # noqa: E402
from api.db import make_engine, make_session_factory  # noqa: E402
from api.orm import Run  # noqa: E402
from processes import glucose  # noqa: E402
from twin.logs import write_log  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fleet.json"
ROOT = Path(__file__).resolve().parents[1]


def run_fleet(url: str, logs: dict[str, Path], epochs: int, workers: int) -> dict:
    sessions = make_session_factory(make_engine(url))
    with sessions() as session:
        ids = [
            services.enqueue_training(
                session,
                "glucose",
                {
                    "data": {"source": "csv", "path": str(path)},
                    "train": {"epochs": epochs, "max_seconds": 86_400.0, "seed": 0},
                    "model_name": f"{patient}-{workers}w",
                },
            ).id
            for patient, path in logs.items()
        ]
    code = f"from api.worker import run_worker; run_worker({url!r}, poll_seconds=0.2, once=True)"
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(workers)
    ]
    for proc in procs:
        proc.wait()
    wall = time.perf_counter() - started
    with sessions() as session:
        runs = [session.get(Run, run_id) for run_id in ids]
    pids = {str(p.pid): f"worker {i + 1}" for i, p in enumerate(procs)}
    share: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for run in runs:
        who = pids.get(run.metrics.get("worker", "?:?").split(":")[1], "?")
        share[who] += 1
        seconds[who] += (run.finished_at - run.started_at).total_seconds()
    return {
        "workers": workers,
        "wall_s": round(wall, 1),
        "statuses": dict(Counter(r.status for r in runs)),
        "attempts": dict(Counter(r.metrics.get("attempts") for r in runs)),
        "jobs_per_worker": dict(share),
        "busy_s_per_worker": {k: round(v, 1) for k, v in seconds.items()},
        "train_s_per_job": round(
            sum(r.metrics.get("train_seconds", 0.0) for r in runs) / len(runs), 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=4)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (a schema is made and dropped); default: a temporary SQLite file",
    )
    args = parser.parse_args()
    patients = glucose.ALL_PATIENTS[:: max(1, len(glucose.ALL_PATIENTS) // args.patients)]
    patients = patients[: args.patients]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        logs = {}
        for i, patient in enumerate(patients):
            logs[patient] = folder / f"{patient.replace('#', '_')}.parquet"
            write_log(
                glucose.generate_training_log(args.hours, seed=i + 1, patient=patient),
                logs[patient],
            )
        with bench_database(args.database_url) as url:
            one = run_fleet(url, logs, args.epochs, 1)
            two = run_fleet(url, logs, args.epochs, 2)
    result = {
        "setup": {
            "patients": patients,
            "log_hours": args.hours,
            "epochs": args.epochs,
            "database": "postgresql" if args.database_url else "sqlite",
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "scaled_from": "30 patients, 360 h logs, 20 epochs",
        },
        "one_worker": one,
        "two_workers": two,
        "speedup": round(one["wall_s"] / two["wall_s"], 2),
        "every_job_once": all(r["attempts"] == {1: len(patients)} for r in (one, two)),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
