"""Control-loop latency under load: real HTTP on loopback, MPC and storage included.

    python benchmarks/api_load.py [--database sqlite|postgres] [--loops 10] [--rate-hz 10]
                                  [--duration-s 60] [--workers 2] [--model twin.pt]

Starts `twin serve --workers N` in a subprocess on a fresh database (a temporary SQLite
file, or a new PostgreSQL database dropped afterwards), registers a CSTR twin, starts
`--loops` control loops and drives each from its own simulated CSTR at `--rate-hz`
steps per second (a fixed-rate schedule: a late step is sent at once, never skipped),
each loop through its own HTTP connection, which stays with one API worker; a loop whose
steps reach another worker (a reconnect) is caught up from the database there.
The plant runs faster than real time: each request carries the next plant sample.

Latency is measured by the client, from sending the step to having the setpoints, so
it includes HTTP, validation, the controller (encoder, planner, safety layer) and the
database commit. The first `--warmup-s` seconds are reported apart (history windows
filling, first solves). Writes benchmarks/results/api_load_<database>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from processes import cstr  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGET_P99_MS = 50.0
console = Console(width=140)


@dataclass
class LoopStats:
    latencies_ms: list[float] = field(default_factory=list)
    warmup_ms: list[float] = field(default_factory=list)
    solve_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    late_sends: int = 0
    finished_at: float = 0.0  # perf_counter when the last answer arrived


# ------------------------------------------------------------------ model and database


def trained_model(path: Path | None, seed: int) -> Path:
    """The twin to serve: the given file, or a CSTR twin trained once and cached."""
    if path is not None:
        return path
    cached = CACHE / f"cstr_twin_seed{seed}.pt"
    if cached.exists():
        return cached
    from twin.train import TrainConfig, train_twin

    recipe = cstr.TRAINING_RECIPE
    console.log(f"training a CSTR twin ({recipe.hours} h of data, cached in {cached})")
    df = cstr.generate_training_log(recipe.hours, seed=1, show_progress=True)
    config = TrainConfig(epochs=recipe.epochs, seed=seed, max_seconds=recipe.max_minutes * 60)
    twin, _ = train_twin(df, cstr.SPEC, config, show_progress=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    twin.save(cached)
    return cached


@contextmanager
def fresh_database(kind: str, postgres_url: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/api_load.db"
        return
    import sqlalchemy as sa

    name = f"twin_api_load_{os.getpid()}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield str(sa.engine.make_url(postgres_url).set(database=name))
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def register(url: str, model: Path) -> int:
    from api import migrate
    from api.db import make_engine, make_session_factory
    from api.services import register_model

    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return register_model(
                session, "cstr", "api-load", model.read_bytes(), {"source": str(model)}, {}
            ).id
    finally:
        engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def server(url: str, port: int, workers: int) -> Iterator[str]:
    env = {**os.environ, "DATABASE_URL": url, "TWIN_AUTH_REQUIRED": "false"}
    twin_cli = Path(sys.executable).parent / "twin"
    command = [str(twin_cli), "serve", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_ready(base: str, proc: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{base}/api/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the server did not answer on {base} within {timeout_s:.0f} s")


# ------------------------------------------------------------------ the load


async def drive_loop(
    client: httpx.AsyncClient,
    run_id: int,
    seed: int,
    rate_hz: float,
    duration_s: float,
    warmup_s: float,
    start: float,
) -> LoopStats:
    """One plant, one loop: post the measurements, apply the answer, on a fixed schedule."""
    stats, sim = LoopStats(), cstr.CSTRSimulator(seed=seed)
    scenario = cstr.benchmark_scenario()
    period, k = 1.0 / rate_hz, 0
    measurements = sim.measure()
    # Loops start spread over one period, as independent clients would.
    next_due = start + (seed % 10) * period / 10
    while next_due < start + warmup_s + duration_s:
        await asyncio.sleep(max(0.0, next_due - time.perf_counter()))
        if time.perf_counter() - next_due > period:
            stats.late_sends += 1
        sent = time.perf_counter()
        # Warm-up is judged by the slot a step was scheduled for, not when it went out.
        in_warmup = next_due - start < warmup_s
        body = {
            "time_s": k * cstr.SAMPLE_PERIOD_S,
            "measurements": measurements,
            "setpoints": {"T": scenario.setpoint(k)},
        }
        try:
            response = await client.post(f"/api/loops/{run_id}/step", json=body)
        except httpx.HTTPError as exc:
            stats.errors.append(f"{type(exc).__name__}: {exc}")
            next_due += period
            continue
        elapsed_ms = (time.perf_counter() - sent) * 1e3
        if response.status_code != 200:
            stats.errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
        else:
            answer = response.json()
            (stats.warmup_ms if in_warmup else stats.latencies_ms).append(elapsed_ms)
            if not in_warmup:
                stats.solve_ms.append(float(answer["solve_ms"]))
                stats.statuses[answer["status"]] = stats.statuses.get(answer["status"], 0) + 1
            sim.disturbances = scenario.disturbances(k)
            measurements = sim.step(answer["actuators"]["Tc"])
        k += 1
        next_due += period
    stats.finished_at = time.perf_counter()
    return stats


async def run_load(base: str, model_id: int, args: argparse.Namespace) -> list[LoopStats]:
    # One client and one kept-alive connection per loop, as independent control systems
    # would have: with several API workers, a connection stays with the worker that took it.
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(base_url=base, timeout=10.0, limits=limits) for _ in range(args.loops)
    ]
    try:
        run_ids = []
        for client in clients:
            response = await client.post(
                "/api/loops",
                json={
                    "process": "cstr",
                    "model_id": model_id,
                    "planner": args.planner,
                    "setpoints": {"T": cstr.benchmark_scenario().setpoint(0)},
                },
            )
            response.raise_for_status()
            run_ids.append(response.json()["run_id"])
        start = time.perf_counter() + 0.5
        args.measured_from = start + args.warmup_s
        return await asyncio.gather(
            *(
                drive_loop(
                    client, run_id, seed, args.rate_hz, args.duration_s, args.warmup_s, start
                )
                for seed, (client, run_id) in enumerate(zip(clients, run_ids, strict=True))
            )
        )
    finally:
        for client in clients:
            await client.aclose()


# ------------------------------------------------------------------ report


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p95": None, "p99": None, "max": None}
    arr = np.asarray(values)
    return {
        "median": float(np.median(arr)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
    }


def summarise(
    all_stats: list[LoopStats], args: argparse.Namespace, database: str
) -> dict[str, Any]:
    latencies = [x for s in all_stats for x in s.latencies_ms]
    statuses: dict[str, int] = {}
    for s in all_stats:
        for key, count in s.statuses.items():
            statuses[key] = statuses.get(key, 0) + count
    step_ms = percentiles(latencies)
    wall_s = max(s.finished_at for s in all_stats) - args.measured_from
    return {
        "database": database,
        "loops": args.loops,
        "rate_hz_per_loop": args.rate_hz,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "planner": args.planner,
        "api_workers": args.workers,
        "steps_measured": len(latencies),
        "achieved_steps_per_s": len(latencies) / wall_s,
        "asked_steps_per_s": args.loops * args.rate_hz,
        "step_latency_ms": step_ms,
        "warmup_latency_ms": percentiles([x for s in all_stats for x in s.warmup_ms]),
        "server_solve_ms": percentiles([x for s in all_stats for x in s.solve_ms]),
        "statuses": statuses,
        "late_sends": sum(s.late_sends for s in all_stats),
        "errors": sum(len(s.errors) for s in all_stats),
        "first_errors": [e for s in all_stats for e in s.errors][:5],
        "target_p99_ms": TARGET_P99_MS,
        "meets_target": step_ms["p99"] is not None and step_ms["p99"] <= TARGET_P99_MS,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }


def print_summary(result: dict[str, Any]) -> None:
    table = Table(
        title=f"control loop steps over HTTP: {result['loops']} loops x "
        f"{result['rate_hz_per_loop']:g} steps/s, {result['database']}, "
        f"planner {result['planner']}, {result['api_workers']} API workers"
    )
    for column in ("", "median ms", "p95 ms", "p99 ms", "max ms"):
        table.add_column(column, justify="right")
    for label, key in (
        ("step latency", "step_latency_ms"),
        ("warm-up", "warmup_latency_ms"),
        ("server solve", "server_solve_ms"),
    ):
        row = result[key]
        table.add_row(
            label,
            *("-" if row[p] is None else f"{row[p]:.1f}" for p in ("median", "p95", "p99", "max")),
        )
    console.print(table)
    console.print(
        f"steps measured {result['steps_measured']} "
        f"({result['achieved_steps_per_s']:.1f} steps/s), statuses {result['statuses']}, "
        f"late sends {result['late_sends']}, errors {result['errors']}; "
        f"p99 target {TARGET_P99_MS:.0f} ms: "
        f"{'met' if result['meets_target'] else 'NOT met'}"
    )
    for error in result["first_errors"]:
        console.print(f"[red]{error}[/]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TWIN_BENCH_POSTGRES_URL", DEFAULT_PG),
        help="a server where a scratch database may be created",
    )
    parser.add_argument("--loops", type=int, default=10)
    parser.add_argument("--rate-hz", type=float, default=10.0, help="steps per second per loop")
    parser.add_argument("--duration-s", type=float, default=60.0, help="measured seconds")
    parser.add_argument("--warmup-s", type=float, default=10.0)
    parser.add_argument("--planner", default="casadi")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="API worker processes (a loop stays with its connection's worker)",
    )
    parser.add_argument("--model", type=Path, default=None, help="a CSTR twin checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the cached twin")
    args = parser.parse_args()
    if (
        args.loops < 1
        or args.workers < 1
        or args.rate_hz <= 0
        or args.duration_s <= 0
        or args.warmup_s < 0
    ):
        parser.error(
            "--loops and --workers must be >= 1; --rate-hz and --duration-s > 0; --warmup-s >= 0"
        )

    model = trained_model(args.model, args.seed)
    with fresh_database(args.database, args.postgres_url) as url:
        model_id = register(url, model)
        with server(url, free_port(), args.workers) as base:
            stats = asyncio.run(run_load(base, model_id, args))
    result = summarise(stats, args, args.database)
    print_summary(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"api_load_{args.database}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
