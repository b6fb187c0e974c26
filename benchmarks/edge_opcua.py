"""OPC UA loops against a local asyncua server with the CSTR behind its nodes.

    python benchmarks/edge_opcua.py                       # 10 loops at 1 Hz for 60 s
    python benchmarks/edge_opcua.py --loops 10 --seconds 300

One asyncua server (api.edge.opcua_plant) holds one CSTR unit per loop, advancing every
0.1 s. Each loop is an `OpcUaLoop` (api.edge.opcua) sampling once a period: one Read of
its 5 input nodes (values, status codes, source timestamps), a step through the HTTP
path's service (LoopManager.step: the twin's controller and safety layer, the step stored
in SQLite, alarms), one Write of the coolant setpoint. Measured per sample: from the
start of the Read to the end of the Write.

Faults injected during the run, all of which must be recorded: unit 3 refuses writes for
5 s (from 30 % of the run), and the server goes away for 3 s (at 60 %) and comes back,
so every loop loses its connection and reconnects. Violations are counted independently
of the code under test: every setpoint the server accepted is checked against the
coolant's bounds and its rate limit (from the previous write, or from the plant's
read-back in the same sample, as the step path defines it).

The twin is a small CSTR twin trained here (8-wide embedding, 4 epochs, a few seconds):
the figure is the connector's and the step path's latency, not control quality.
Results: benchmarks/results/edge_opcua.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, func, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from api import services  # noqa: E402
from api.db import make_engine, make_session_factory  # noqa: E402
from api.edge.opcua import OpcUaLoop  # noqa: E402
from api.edge.opcua_plant import SimulatedPlant  # noqa: E402
from api.edge.stepping import EDGE_STALE, WRITE_REFUSED, LoopStepper  # noqa: E402
from api.migrate import upgrade  # noqa: E402
from api.orm import RunEvent  # noqa: E402
from api.services.loop_limits import LoopLimits  # noqa: E402
from api.services.loops import LoopManager  # noqa: E402
from processes import cstr  # noqa: E402
from twin.model import JEPAConfig  # noqa: E402
from twin.train import TrainConfig, train_twin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "edge_opcua.json"
REFUSING_UNIT = 3


@contextlib.contextmanager
def bench_database(url: str | None) -> Iterator[str]:
    """A migrated, empty database: a temporary SQLite file, or a fresh schema (dropped
    afterwards) in the PostgreSQL database `url`."""
    if url is None:
        with tempfile.TemporaryDirectory() as tmp:
            path = f"sqlite:///{Path(tmp) / 'bench.db'}"
            upgrade(path)
            yield path
        return
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        schema_url = make_url(url).update_query_dict({"options": f"-csearch_path={name}"})
        path = schema_url.render_as_string(hide_password=False)
        upgrade(path)
        yield path
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


def small_twin() -> bytes:
    cfg = TrainConfig(
        epochs=4,
        rollout_steps=4,
        seed=0,
        model=JEPAConfig(window=8, embed_dim=8, encoder_hidden=32, predictor_hidden=32),
    )
    twin, _ = train_twin(
        cstr.generate_training_log(hours=1.5, seed=3), cstr.SPEC, cfg, show_progress=False
    )
    return twin.to_bytes()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def violations(written: list) -> int:
    coolant = cstr.SPEC.tag("Tc")
    bad = 0
    for (t0, a, _), (t1, b, readback) in zip(written, written[1:], strict=False):
        allowed = coolant.rate_limit * (t1 - t0) + 1e-9
        moved = min(abs(b["Tc"] - base) for base in (a["Tc"], readback.get("Tc", a["Tc"])))
        bad += int(not coolant.low <= b["Tc"] <= coolant.high or moved > allowed)
    return bad


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drive(plant: SimulatedPlant, loops: list[OpcUaLoop], seconds: float) -> dict:
    await plant.start()
    stop = asyncio.Event()
    tasks = [asyncio.create_task(loop.run(stop)) for loop in loops]
    started = time.monotonic()
    marks = {}
    await asyncio.sleep(0.3 * seconds)
    await plant.refuse_writes(REFUSING_UNIT)
    marks["refuse_writes_s"] = round(time.monotonic() - started, 1)
    await asyncio.sleep(5.0)
    await plant.refuse_writes(REFUSING_UNIT, refuse=False)
    await asyncio.sleep(max(0.0, 0.6 * seconds - (time.monotonic() - started)))
    await plant.stop()
    marks["server_down_s"] = round(time.monotonic() - started, 1)
    await asyncio.sleep(3.0)
    await plant.start()
    marks["server_back_s"] = round(time.monotonic() - started, 1)
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - started)))
    stop.set()
    await asyncio.gather(*tasks)
    await plant.stop()
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--period", type=float, default=1.0, help="seconds per sample")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--planner", default="casadi")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL URL (a schema is made and dropped); default: a temporary SQLite file",
    )
    args = parser.parse_args()

    checkpoint = small_twin()
    load_start = round(os.getloadavg()[0], 1)
    with bench_database(args.database_url) as url:
        sessions = make_session_factory(make_engine(url))
        manager = LoopManager(limits=LoopLimits(max_loops=args.loops, max_loops_per_key=args.loops))
        with sessions() as session:
            services.ensure_process(session, cstr.SPEC)
            model_id = services.register_model(session, "cstr", "bench", checkpoint, {}, {}).id
            runs = [
                manager.start(session, "cstr", model_id, args.planner, {"T": 352.0}).id
                for _ in range(args.loops)
            ]
        plant = SimulatedPlant(free_port(), units=args.loops, tick_s=0.1)
        loops = [
            OpcUaLoop(
                plant.endpoint,
                plant.node_map(i),
                LoopStepper(manager, sessions, r),
                period_s=args.period,
                backoff_s=(0.5, 2.0),
                timeout_s=2.0,
            )
            for i, r in enumerate(runs)
        ]
        marks = asyncio.run(drive(plant, loops, args.seconds))
        with sessions() as session:
            events = dict(
                session.execute(
                    select(RunEvent.kind, func.count())
                    .where(RunEvent.kind.in_((WRITE_REFUSED, EDGE_STALE)))
                    .group_by(RunEvent.kind)
                ).all()
            )
            lost_recorded = session.scalar(
                select(func.count()).where(
                    RunEvent.kind == EDGE_STALE, RunEvent.message.like("connection to %")
                )
            )
    latencies = sorted(ms for loop in loops for ms in loop.stats.latencies_ms)
    steps_ms = [ms for loop in loops for ms in loop.stats.step_ms]
    p99 = percentile(latencies, 0.99)
    refused = sum(loop.stats.refused_writes for loop in loops)
    lost = sum(loop.stats.reconnects for loop in loops)
    result = {
        "setup": {
            "loops": args.loops,
            "period_s": args.period,
            "seconds": args.seconds,
            "planner": args.planner,
            "database": "postgresql" if args.database_url else "sqlite",
            "twin": "CSTR, embed 8, 4 epochs",
            "python": platform.python_version(),
            "faults": marks,
        },
        "samples_written": len(latencies),
        "read_to_written_ms": {
            "median": round(statistics.median(latencies), 2),
            "p99": round(p99, 2),
            "max": round(latencies[-1], 2),
        },
        "of_which_step_path_ms": {
            "median": round(statistics.median(steps_ms), 2),
            "p99": round(percentile(steps_ms, 0.99), 2),
        },
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 1)},
        "violations": sum(violations(loop.stats.written) for loop in loops),
        "unsafe_refused_by_last_check": sum(loop.stats.unsafe for loop in loops),
        "samples_the_database_refused": sum(loop.stats.db_errors for loop in loops),
        "refused_writes": {"seen": refused, "recorded": events.get(WRITE_REFUSED, 0)},
        "lost_connections": {"seen": lost, "recorded": lost_recorded},
        "stale_holds": {
            kind: sum(loop.stats.holds[kind] for loop in loops)
            for kind in ("status", "timestamp", "value", "connection", "refused")
        },
        "target": "p99 read->written <= 50 ms; 0 violations; every refused write and lost "
        "connection recorded",
    }
    result["met"] = (
        p99 <= 50.0
        and result["violations"] == 0
        and refused > 0
        and lost > 0
        and refused == result["refused_writes"]["recorded"]
        and lost == lost_recorded
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
