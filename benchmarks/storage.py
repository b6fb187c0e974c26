"""Time-series storage benchmark: ingest through `write_steps`, dashboard reads through
`get_series` (and the HTTP route), on SQLite and PostgreSQL.

    python benchmarks/storage.py                       # both databases, full size
    python benchmarks/storage.py --database sqlite --quick
    python benchmarks/storage.py --database postgres --postgres-url postgresql://...

Measures, per database:
- ingest: batches of 3,600 steps x 20 tags through `write_steps` (COPY on PostgreSQL,
  executemany on SQLite, rollups included), against the plain ORM path it replaced
  (`insert()` executemany of dict rows, no rollups) timed in the same run, alternating;
  the median of --repeats batches each, and their ratio.
- seeding: a day of 1 s data for 20 tags (1.73 M values) and a month of 1 s data for one
  tag (2.59 M values, one step each) written with the same fast path.
- reads: the day x 20 tags and the month x 1 tag downsampled to at most 2,000 points per
  tag (min/max), through the service and through GET /api/runs/{id}/series (end to end,
  JSON included), the `stride` method for comparison, and a one-hour window of the month;
  median and p95 of --reads reads, each in a new session.

SQLite uses a temporary file; PostgreSQL a schema of its own (dropped at the end) in the
database at --postgres-url or TWIN_TEST_POSTGRES_URL. `--quick`: 2 h x 20 tags and a day x
1 tag instead. Writes benchmarks/results/storage.json (--quick: storage_quick.json in the
temporary folder, so a quick run never replaces the full results).
Timings on a shared machine are pessimistic: compare the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from api import services  # noqa: E402
from api.app import create_app  # noqa: E402
from api.db import make_engine, make_session_factory, normalize_url  # noqa: E402
from api.migrate import upgrade  # noqa: E402
from api.orm import RunEvent, RunStep, RunValue  # noqa: E402
from api.services.runs import step_rows, write_steps  # noqa: E402
from api.settings import Settings  # noqa: E402
from twin.records import StepRecord  # noqa: E402
from twin.spec import ProcessSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
console = Console(width=140)

N_TAGS = 20
DAY_STEPS = 86_400
MONTH_STEPS = 30 * DAY_STEPS
BATCH_STEPS = 3_600
MAX_POINTS = 2_000
# Product targets, checked in the results.
TARGET_INGEST_VALUES_PER_S = 50_000
TARGET_READ_DAY_MS = 1_000
TARGET_READ_MONTH_HTTP_MS = 2_000


@dataclass(frozen=True)
class Sizes:
    day_steps: int
    month_steps: int
    ingest_repeats: int
    reads: int


def bench_spec() -> ProcessSpec:
    """20 sensors (the tags a dashboard plots) and the actuator every spec needs."""
    tags = [{"name": f"TI{i:02d}", "role": "sensor", "unit": "K"} for i in range(N_TAGS)]
    tags.append(
        {
            "name": "FV01",
            "role": "actuator",
            "unit": "%",
            "low": 0.0,
            "high": 100.0,
            "rate_limit": 1.0,
        }
    )
    return ProcessSpec.from_dict(
        {"name": "storage_bench", "sample_period_s": 1.0, "tags": tags}, source="benchmark"
    )


def signal(rng: np.random.Generator, steps: int, tags: int) -> np.ndarray:
    """Random walks with rare spikes (what min/max downsampling must keep)."""
    walk = 350.0 + np.cumsum(rng.normal(0.0, 0.05, (steps, tags)), axis=0)
    spikes = rng.random((steps, tags)) < 1e-4
    return walk + spikes * rng.normal(0.0, 20.0, (steps, tags))


def records(first_step: int, values: np.ndarray, names: list[str]) -> list[tuple[int, StepRecord]]:
    out = []
    for offset, row in enumerate(values.tolist()):
        step = first_step + offset
        out.append(
            (
                step,
                StepRecord(
                    step=step,
                    time_s=float(step),
                    measurements=dict(zip(names, row, strict=True)),
                    setpoints={},
                    actuators={},
                ),
            )
        )
    return out


# ---------------------------------------------------------------- databases


@contextmanager
def sqlite_database() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="twin-storage-") as folder:
        url = f"sqlite:///{Path(folder) / 'bench.db'}"
        upgrade(url)
        yield url


@contextmanager
def postgres_database(base_url: str) -> Iterator[str]:
    """A fresh schema, reached through search_path, dropped whatever happens."""
    base_url = normalize_url(base_url)
    name = f"twin_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        url = make_url(base_url).update_query_dict({"options": f"-csearch_path={name}"})
        rendered = url.render_as_string(hide_password=False)
        upgrade(rendered)
        yield rendered
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


def new_run(factory: sessionmaker[Session], spec: ProcessSpec) -> int:
    with factory() as session:
        services.ensure_process(session, spec)
        return services.create_run(
            session, kind="replay", process=spec.name, controller="historian import", config={}
        ).id


# ---------------------------------------------------------------- ingest


def legacy_write_steps(
    session: Session, run_id: int, spec: ProcessSpec, batch: list[tuple[int, StepRecord]]
) -> None:
    """The write path before COPY (the baseline): dict rows, ORM `insert()` executemany
    per 5,000 rows, no rollups."""
    rows = step_rows(run_id, spec, batch)
    tables = {t.__tablename__: t for t in (RunStep, RunValue, RunEvent)}
    for name, columns, tuples in rows.tables():
        dicts = [dict(zip(columns, row, strict=True)) for row in tuples]
        if name == RunStep.__tablename__:
            for row in dicts:  # the JSON column takes the plan itself, not its text
                row["plan"] = None if row["plan"] is None else json.loads(row["plan"])
        for start in range(0, len(dicts), 5_000):
            session.execute(insert(tables[name]), dicts[start : start + 5_000])


def timed_write(
    factory: sessionmaker[Session],
    spec: ProcessSpec,
    run_id: int,
    batch: list[tuple[int, StepRecord]],
    writer: Callable[..., None],
) -> float:
    """Seconds to write and commit one batch in one transaction."""
    with factory() as session:
        start = time.perf_counter()
        writer(session, run_id, spec, batch)
        session.commit()
        return time.perf_counter() - start


def measure_ingest(
    factory: sessionmaker[Session], spec: ProcessSpec, sizes: Sizes
) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    names = [t.name for t in spec.sensors]
    batch = records(0, signal(rng, BATCH_STEPS, N_TAGS), names)
    values = BATCH_STEPS * N_TAGS
    fast, slow = [], []
    # Alternating, so both paths see the same background load.
    for _ in range(sizes.ingest_repeats):
        fast.append(values / timed_write(factory, spec, new_run(factory, spec), batch, write_steps))
        slow.append(
            values / timed_write(factory, spec, new_run(factory, spec), batch, legacy_write_steps)
        )
    fast_median, slow_median = statistics.median(fast), statistics.median(slow)
    return {
        "ingest_batch_values": values,
        "ingest_repeats": sizes.ingest_repeats,
        "ingest_values_per_s": round(fast_median),
        "ingest_values_per_s_runs": [round(v) for v in fast],
        "ingest_baseline_values_per_s": round(slow_median),
        "ingest_baseline_values_per_s_runs": [round(v) for v in slow],
        "ingest_speedup_ratio": round(fast_median / slow_median, 2),
    }


def seed(
    factory: sessionmaker[Session],
    spec: ProcessSpec,
    steps: int,
    tags: int,
    chunk_steps: int,
    label: str,
    progress: Progress,
) -> tuple[int, float]:
    """A run of `steps` steps of `tags` tags written in chunks; (run id, write seconds)."""
    rng = np.random.default_rng(7)
    run_id = new_run(factory, spec)
    names = [t.name for t in spec.sensors][:tags]
    task = progress.add_task(label, total=steps * tags)
    seconds = 0.0
    for first in range(0, steps, chunk_steps):
        count = min(chunk_steps, steps - first)
        batch = records(first, signal(rng, count, tags), names)
        seconds += timed_write(factory, spec, run_id, batch, write_steps)
        progress.advance(task, count * tags)
    return run_id, seconds


# ---------------------------------------------------------------- reads


def timed_reads(read: Callable[[], dict[str, Any]], count: int) -> tuple[list[float], dict]:
    times, last = [], {}
    for _ in range(count):
        start = time.perf_counter()
        last = read()
        times.append((time.perf_counter() - start) * 1000.0)
    return times, last


def read_stats(name: str, times: list[float], data: dict[str, Any]) -> dict[str, Any]:
    columns = [c for tags in data["series"].values() for c in tags.values()]
    return {
        f"{name}_ms": round(statistics.median(times), 1),
        f"{name}_p95_ms": round(float(np.percentile(times, 95)), 1),
        f"{name}_points_per_tag": max((len(c) for c in columns), default=0),
        f"{name}_tags": len(columns),
    }


def measure_reads(
    url: str, factory: sessionmaker[Session], day_run: int, month_run: int, sizes: Sizes
) -> dict[str, Any]:
    def service(run_id: int, **kwargs: Any) -> Callable[[], dict[str, Any]]:
        def read() -> dict[str, Any]:
            with factory() as session:  # a new session per read, like a request
                return services.get_series(
                    session, run_id, channels=["sensor"], max_points=MAX_POINTS, **kwargs
                )

        return read

    app = create_app(Settings(database_url=url))
    out: dict[str, Any] = {}
    with TestClient(app) as client:

        def http(run_id: int, **params: Any) -> Callable[[], dict[str, Any]]:
            def read() -> dict[str, Any]:
                response = client.get(
                    f"/api/runs/{run_id}/series",
                    params={"channels": "sensor", "max_points": MAX_POINTS, **params},
                )
                response.raise_for_status()
                return response.json()

            return read

        window = {
            "start_s": float(sizes.month_steps // 2),
            "end_s": sizes.month_steps // 2 + 3600.0,
        }
        cases = [
            ("read_day_20_tags", service(day_run, method="minmax")),
            ("read_day_20_tags_http", http(day_run)),
            ("read_day_20_tags_stride", service(day_run, method="stride")),
            ("read_month_1_tag", service(month_run, method="minmax")),
            ("read_month_1_tag_http", http(month_run)),
            ("read_month_1_tag_stride", service(month_run, method="stride")),
            ("read_month_1_tag_1h_window", service(month_run, method="minmax", **window)),
        ]
        for name, read in cases:
            read()  # warm-up: first connection, statement caches
            out.update(read_stats(name, *timed_reads(read, sizes.reads)))
    return out


# ---------------------------------------------------------------- one database


def run_database(label: str, url: str, sizes: Sizes) -> dict[str, Any]:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    spec = bench_spec()
    try:
        console.print(
            f"[bold]{label}[/]: ingest, {sizes.ingest_repeats} x 2 batches of "
            f"{BATCH_STEPS * N_TAGS:,} values"
        )
        result = measure_ingest(factory, spec, sizes)
        with Progress(console=console) as progress:
            day_run, day_s = seed(
                factory,
                spec,
                sizes.day_steps,
                N_TAGS,
                BATCH_STEPS,
                f"{label}: day x {N_TAGS} tags",
                progress,
            )
            month_run, month_s = seed(
                factory,
                spec,
                sizes.month_steps,
                1,
                DAY_STEPS // 4,
                f"{label}: month x 1 tag",
                progress,
            )
        for name, values, seconds in (
            ("day_20_tags", sizes.day_steps * N_TAGS, day_s),
            ("month_1_tag", sizes.month_steps, month_s),
        ):
            result.update(
                {
                    f"seed_{name}_values": values,
                    f"seed_{name}_s": round(seconds, 1),
                    f"seed_{name}_values_per_s": round(values / seconds),
                }
            )
        analyze(engine)
        console.print(f"[bold]{label}[/]: reads, {sizes.reads} each")
        result.update(measure_reads(url, factory, day_run, month_run, sizes))
        result["meets_targets"] = {
            "ingest_values_per_s": result["ingest_values_per_s"] >= TARGET_INGEST_VALUES_PER_S,
            "read_day_20_tags_ms": result["read_day_20_tags_ms"] < TARGET_READ_DAY_MS,
            "read_month_1_tag_http_ms": result["read_month_1_tag_http_ms"]
            < TARGET_READ_MONTH_HTTP_MS,
        }
        return result
    finally:
        engine.dispose()


def analyze(engine: Any) -> None:
    """PostgreSQL's autovacuum analyzes big tables soon after such loads; do it now so the
    reads see the plans a settled database gets. SQLite is left as the app leaves it."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("ANALYZE"))


# ---------------------------------------------------------------- report


ROWS = [
    ("ingest through write_steps", "ingest_values_per_s", "values/s"),
    ("ingest, plain ORM insert (baseline)", "ingest_baseline_values_per_s", "values/s"),
    ("ingest speed-up vs baseline", "ingest_speedup_ratio", "x"),
    ("seed day x 20 tags", "seed_day_20_tags_values_per_s", "values/s"),
    ("seed month x 1 tag", "seed_month_1_tag_values_per_s", "values/s"),
    ("read day x 20 tags, minmax, median", "read_day_20_tags_ms", "ms"),
    ("read day x 20 tags, minmax, p95", "read_day_20_tags_p95_ms", "ms"),
    ("  points per tag", "read_day_20_tags_points_per_tag", "points"),
    ("read day x 20 tags, HTTP, median", "read_day_20_tags_http_ms", "ms"),
    ("read day x 20 tags, stride, median", "read_day_20_tags_stride_ms", "ms"),
    ("read month x 1 tag, minmax, median", "read_month_1_tag_ms", "ms"),
    ("read month x 1 tag, minmax, p95", "read_month_1_tag_p95_ms", "ms"),
    ("  points", "read_month_1_tag_points_per_tag", "points"),
    ("read month x 1 tag, HTTP, median", "read_month_1_tag_http_ms", "ms"),
    ("read month x 1 tag, HTTP, p95", "read_month_1_tag_http_p95_ms", "ms"),
    ("read month x 1 tag, stride, median", "read_month_1_tag_stride_ms", "ms"),
    ("read 1 h window of the month, median", "read_month_1_tag_1h_window_ms", "ms"),
]


def print_table(results: dict[str, dict[str, Any]]) -> None:
    table = Table(title="time-series storage (shared, busy machine: pessimistic figures)")
    table.add_column("measure")
    for name in results:
        table.add_column(name, justify="right")
    table.add_column("unit")
    for title, key, unit in ROWS:
        cells = []
        for result in results.values():
            value = result.get(key)
            cells.append("-" if value is None else f"{value:,}")
        table.add_row(title, *cells, unit)
    console.print(table)


def meta(args: argparse.Namespace, sizes: Sizes, postgres_version: str | None) -> dict:
    return {
        "command": " ".join(["python benchmarks/storage.py", *sys.argv[1:]]),
        "quick": args.quick,
        "day_steps": sizes.day_steps,
        "month_steps": sizes.month_steps,
        "tags": N_TAGS,
        "batch_steps": BATCH_STEPS,
        "max_points": MAX_POINTS,
        "reads": sizes.reads,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": postgres_version,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "note": "shared machine with other jobs running: absolute figures are pessimistic; "
        "the baseline is timed alternately in the same run",
        "targets": {
            "ingest_values_per_s_min": TARGET_INGEST_VALUES_PER_S,
            "read_day_20_tags_ms_max": TARGET_READ_DAY_MS,
            "read_month_1_tag_http_ms_max": TARGET_READ_MONTH_HTTP_MS,
        },
    }


def postgres_version(url: str) -> str | None:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SHOW server_version")).scalar())
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument(
        "--postgres-url", default=os.environ.get("TWIN_TEST_POSTGRES_URL", DEFAULT_PG_URL)
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 h x 20 tags and a day x 1 tag, 3 repetitions, 5 reads",
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON file")
    args = parser.parse_args(argv)
    sizes = Sizes(2 * 3600, DAY_STEPS, 3, 5) if args.quick else Sizes(DAY_STEPS, MONTH_STEPS, 5, 7)
    results: dict[str, dict[str, Any]] = {}
    if args.database in ("sqlite", "both"):
        with sqlite_database() as url:
            results["sqlite"] = run_database("sqlite", url, sizes)
    pg_version = None
    if args.database in ("postgres", "both"):
        pg_version = postgres_version(args.postgres_url)
        with postgres_database(args.postgres_url) as url:
            results["postgres"] = run_database("postgres", url, sizes)
    print_table(results)
    # A quick run never replaces the full results.
    out = args.out or (
        Path(tempfile.gettempdir()) / "storage_quick.json"
        if args.quick
        else RESULTS / "storage.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**results, "meta": meta(args, sizes, pg_version)}, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
