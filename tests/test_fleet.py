"""Fleet training: several `twin worker` processes over one database. No job runs twice,
a worker killed with SIGKILL mid-job has its job picked up again (heartbeat, reclaim,
retry limit, and a reclaimed worker cannot register a model), a cancelled job stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session
from test_jobs import TINY, tiny

from api import services
from api.db import make_engine, make_session_factory
from api.orm import Run, TwinModel, utcnow
from api.services import job_leases, jobs
from api.services.job_leases import LeaseLost
from api.worker import run_worker

pytestmark = pytest.mark.slow  # trains tiny twins in worker processes
# Short, but with room for a busy machine: a live worker's heartbeat is never 8 s late.
FAST = {"heartbeat_s": 0.5, "stale_after_s": 8.0}


@pytest.fixture
def reader(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def job(engine: Engine, run_id: int) -> Run:
    with make_session_factory(engine)() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


def until(predicate: Callable[[], bool], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def start_worker(db_url: str, once: bool = False) -> subprocess.Popen[bytes]:
    """A worker process, as `twin worker` runs it, with short heartbeats for the test."""
    code = (
        f"from api.worker import run_worker; run_worker({db_url!r}, poll_seconds=0.1, "
        f"once={once}, heartbeat_s={FAST['heartbeat_s']}, "
        f"stale_after_s={FAST['stale_after_s']})"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def test_no_job_runs_twice_with_two_worker_processes(
    db_url: str, session: Session, reader: Engine
) -> None:
    ids = [
        services.enqueue_training(
            session, "cstr", tiny(train={"epochs": 1}, model_name=f"unit{i}")
        ).id
        for i in range(4)
    ]
    workers = [start_worker(db_url, once=True) for _ in range(2)]
    try:
        for worker in workers:
            assert worker.wait(timeout=600) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    runs = [job(reader, run_id) for run_id in ids]
    assert [r.status for r in runs] == ["succeeded"] * 4
    assert [r.metrics["attempts"] for r in runs] == [1] * 4  # claimed once each
    assert {r.metrics["worker"].split(":")[1] for r in runs} <= {str(w.pid) for w in workers}
    with make_session_factory(reader)() as check:
        per_job = check.execute(select(TwinModel.name, func.count()).group_by(TwinModel.name))
        assert dict(per_job.all()) == {f"unit{i}": 1 for i in range(4)}  # one model each


def test_a_killed_worker_s_job_is_picked_up_again(
    db_url: str, session: Session, reader: Engine
) -> None:
    run_id = services.enqueue_training(session, "cstr", tiny(train={"epochs": 4})).id
    victim = start_worker(db_url)
    try:
        until(lambda: (job(reader, run_id).metrics.get("progress") or {}).get("epoch", 0) >= 1)
    finally:
        victim.send_signal(signal.SIGKILL)  # mid-job: no chance to hand the job back
        victim.wait()
    stranded = job(reader, run_id)
    assert stranded.status == "running" and stranded.metrics["attempts"] == 1
    time.sleep(FAST["stale_after_s"] + 0.5)  # its heartbeat is now older than the limit

    assert run_worker(db_url, poll_seconds=0.05, once=True, **FAST) == 1
    done = job(reader, run_id)
    assert done.status == "succeeded" and done.model_id is not None
    assert done.metrics["attempts"] == 2
    assert f":{victim.pid} silent for" in done.metrics["requeued"][0]["reason"]
    assert done.metrics["worker"].endswith(f":{os.getpid()}")
    assert len(services.list_models(session)) == 1


def test_retry_limit_and_a_reclaimed_worker_cannot_register(
    session: Session, engine: Engine
) -> None:
    first = services.enqueue_training(session, "cstr", TINY)
    claimed = jobs.claim_next_job(session)
    lease = job_leases.take(session, claimed, worker="host:1")
    assert job_leases.beat(session, lease)
    # Its worker falls silent: reclaimed, then claimed by another worker.
    later = utcnow() + timedelta(seconds=job_leases.STALE_AFTER_S + 1)
    assert job_leases.reclaim_stale(session, jobs.JOB_KINDS, now=later) == [first.id]
    again = job_leases.take(session, jobs.claim_next_job(session), worker="host:2")
    assert not job_leases.beat(session, lease)  # the old lease no longer holds
    with pytest.raises(LeaseLost):
        jobs.finish_job(session, first.id, b"checkpoint", {}, {}, lease=lease)
    assert services.list_models(session) == []
    assert job_leases.beat(session, again)
    # Past the retry limit a silent job fails instead of going round again.
    later += timedelta(seconds=job_leases.STALE_AFTER_S + 1)
    job_leases.reclaim_stale(session, jobs.JOB_KINDS, now=later, max_attempts=2)
    failed = session.get(Run, first.id, populate_existing=True)
    assert failed.status == "failed" and failed.metrics["attempts"] == 2
    assert "gave up after 2 attempt(s)" in failed.metrics["error"]


def test_a_cancelled_job_stops_in_a_worker_process(
    db_url: str, session: Session, reader: Engine
) -> None:
    run_id = services.enqueue_training(session, "cstr", tiny(train={"epochs": 500})).id
    worker = start_worker(db_url)
    try:
        until(lambda: job(reader, run_id).status == "running")
        with make_session_factory(reader)() as api:
            services.cancel_job(api, run_id)
        until(lambda: job(reader, run_id).status == "stopped")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    stopped = job(reader, run_id)
    assert stopped.metrics["cancelled"] == "while training" and stopped.model_id is None
    # Stopped before its end (possibly before its first epoch: a cancel is honoured as
    # soon as the job's data is loaded).
    assert stopped.metrics.get("progress", {}).get("epoch", 0) < 500
