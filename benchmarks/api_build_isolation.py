"""Do other loops' steps wait while one loop's controller is built?

    python benchmarks/api_build_isolation.py [--loops 4] [--build-s 5]

In one API process (FastAPI's TestClient, SQLite in a temporary file), `--loops` loops
with a light controller are stepped round-robin from 4 client threads, first alone,
for `--build-s` seconds, then while another loop's controller is being built for as long. Two kinds
of build: one that waits (as a build in C code that releases Python's GIL, or one
blocked on I/O), and one that computes in pure Python (holding the GIL the whole time:
the worst case for the other threads). Latency is the client's, from sending a step to
having its setpoints. Writes benchmarks/results/api_build_isolation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from api import services
from api.app import create_app
from api.migrate import upgrade
from api.settings import Settings
from processes import get_spec
from twin.records import StepRecord

GOOD = {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}
RESULTS = Path(__file__).parent / "results" / "api_build_isolation.json"


class Light:
    def __init__(self) -> None:
        self.spec = get_spec("cstr")

    def step(self, time_s, measurements, setpoints) -> StepRecord:
        return StepRecord(
            step=0,
            time_s=time_s,
            measurements={},
            setpoints=dict(setpoints),
            actuators={"Tc": 300.0},
        )


def factory(build_s: float):
    def make(_checkpoint: bytes, planner: str) -> Light:
        if planner == "mppi":  # a build that waits
            time.sleep(build_s)
        elif planner == "hierarchical":  # a build that computes in Python, holding the GIL
            end = time.perf_counter() + build_s
            while time.perf_counter() < end:
                sum(i * i for i in range(1000))
        return Light()

    return make


def drive(
    client: TestClient,
    loops: list[int],
    clock: dict[int, float],
    until: threading.Event,
    threads: int = 4,
) -> list[float]:
    """Step the loops round-robin from `threads` client threads until `until` is set."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(mine: list[int]) -> None:
        while not until.is_set():
            for run_id in mine:
                clock[run_id] += 6.0
                start = time.perf_counter()
                response = client.post(
                    f"/api/loops/{run_id}/step",
                    json={"time_s": clock[run_id], "measurements": GOOD},
                )
                elapsed = time.perf_counter() - start
                assert response.status_code == 200, response.text
                with lock:
                    latencies.append(elapsed * 1e3)

    groups = [loops[i::threads] for i in range(threads) if loops[i::threads]]
    workers = [threading.Thread(target=worker, args=(g,)) for g in groups]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return latencies


def timer(seconds: float) -> threading.Event:
    done = threading.Event()
    threading.Timer(seconds, done.set).start()
    return done


def summary(latencies: list[float]) -> dict[str, float]:
    values = np.asarray(latencies)
    return {
        "steps": int(values.size),
        "median_ms": round(float(np.median(values)), 2),
        "p99_ms": round(float(np.percentile(values, 99)), 2),
        "max_ms": round(float(values.max()), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=4)
    parser.add_argument("--build-s", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/twin.db"
        upgrade(url)
        app = create_app(
            Settings(database_url=url, planner_build_timeout_s=60),
            controller_factory=factory(args.build_s),
        )
        with TestClient(app) as client, app.state.session_factory() as session:
            model = services.register_model(session, "cstr", "jepa", b"weights", {}, {}).id
            loops = [
                client.post(
                    "/api/loops", json={"process": "cstr", "model_id": model, "planner": "cem"}
                ).json()["run_id"]
                for _ in range(args.loops)
            ]
            clock = dict.fromkeys(loops, 0.0)
            rows = {"alone": summary(drive(client, loops, clock, timer(args.build_s)))}
            for kind, planner in (
                ("during a waiting build", "mppi"),
                ("during a pure-Python build", "hierarchical"),
            ):
                built = threading.Event()

                def build(p: str = planner, done: threading.Event = built) -> None:
                    client.post(
                        "/api/loops", json={"process": "cstr", "model_id": model, "planner": p}
                    )
                    done.set()

                started = time.perf_counter()
                builder = threading.Thread(target=build)
                builder.start()
                latencies = drive(client, loops, clock, built)  # steps sent while it builds
                builder.join()
                rows[kind] = {
                    **summary(latencies),
                    "build_s": round(time.perf_counter() - started, 2),
                }
    result = {
        "loops": args.loops,
        "client_threads": 4,
        "build_s": args.build_s,
        "sample_period_s": get_spec("cstr").sample_period_s,
        "machine": platform.platform(),
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for kind, row in rows.items():
        print(f"{kind:28s} {row}")


if __name__ == "__main__":
    main()
