"""Leases on running jobs: heartbeats, reclaiming a dead worker's job, a retry limit.

A worker that claims a job (api.services.jobs.claim_next_job) holds a lease on it:

* the lease is the claim itself: `runs.started_at` as the claim wrote it. Every claim
  writes a new one, so a worker whose job was reclaimed and claimed again no longer
  matches, and every write that ends the job checks it (fencing: a worker paused past its
  lease cannot register a second model for the same job);
* while the job runs, a heartbeat thread stamps `runs.last_step_at` (for a job it is the
  worker's latest sign of life) every `HEARTBEAT_S`, only while the lease still matches;
* any worker, before it claims, reclaims running jobs whose heartbeat is older than
  `STALE_AFTER_S` (a worker killed with SIGKILL, a lost machine): back to the queue, or
  `failed` once the job has been attempted `MAX_ATTEMPTS` times (a job that kills its
  worker must not kill every worker in turn). `metrics["attempts"]` counts the claims,
  `metrics["worker"]` names the latest holder (host:pid), `metrics["requeued"]` lists why
  it went back.

Row locks (SKIP LOCKED on PostgreSQL) keep two reclaimers from reclaiming the same job;
SQLite serialises them.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from api.orm import Run, RunStatus, utcnow

log = logging.getLogger("api.services.job_leases")
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0  # six missed heartbeats
MAX_ATTEMPTS = 3


class LeaseLost(Exception):
    """The job was reclaimed from this worker (its heartbeat stopped for too long)."""


@dataclass(frozen=True)
class Lease:
    run_id: int
    claimed_at: datetime  # runs.started_at as the claim stored it
    worker: str


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def take(session: Session, run: Run, worker: str | None = None) -> Lease:
    """Record the claim on a just-claimed job: one more attempt, its worker, a heartbeat."""
    worker = worker or worker_name()
    try:
        metrics = dict(run.metrics or {})
        metrics["attempts"] = int(metrics.get("attempts", 0)) + 1
        metrics["worker"] = worker
        run.metrics = metrics
        run.last_step_at = utcnow()
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return Lease(run.id, run.started_at, worker)


def beat(session: Session, lease: Lease) -> bool:
    """Stamp the heartbeat; False when the lease is lost (reclaimed, or the job ended)."""
    try:
        stamped = session.execute(
            update(Run)
            .where(
                Run.id == lease.run_id,
                Run.status == RunStatus.RUNNING,
                Run.started_at == lease.claimed_at,
            )
            .values(last_step_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return bool(stamped)


def check(session: Session, lease: Lease, *, lock: bool = False) -> None:
    """Raise LeaseLost unless the job still runs under this lease (with `lock`, the row
    stays locked until the caller's transaction ends, so nothing reclaims it meanwhile)."""
    query = select(Run.status, Run.started_at).where(Run.id == lease.run_id)
    if lock:
        query = query.with_for_update()
    row = session.execute(query).one_or_none()
    if row is None or row.status != RunStatus.RUNNING or row.started_at != lease.claimed_at:
        if not lock:
            session.rollback()
        raise LeaseLost(f"job {lease.run_id} is no longer held by {lease.worker}")
    if not lock:
        session.commit()


def reclaim_stale(
    session: Session,
    job_kinds: tuple[str, ...],
    stale_after_s: float = STALE_AFTER_S,
    max_attempts: int = MAX_ATTEMPTS,
    now: datetime | None = None,
) -> list[int]:
    """Requeue (or fail, past the retry limit) running jobs whose heartbeat is older than
    `stale_after_s`; returns their ids."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stale_after_s)
    done = []
    try:
        stale = session.scalars(
            select(Run)
            .where(
                Run.kind.in_(job_kinds),
                Run.status == RunStatus.RUNNING,
                or_(
                    Run.last_step_at < cutoff,
                    Run.last_step_at.is_(None) & (Run.started_at < cutoff),
                ),
            )
            .order_by(Run.id)
            .with_for_update(skip_locked=True, of=Run)
            .execution_options(populate_existing=True)
        ).all()
        for run in stale:
            metrics = {k: v for k, v in (run.metrics or {}).items() if k != "progress"}
            attempts = int(metrics.get("attempts", 1))
            seen = run.last_step_at or run.started_at
            silent = (now.replace(tzinfo=None) - seen.replace(tzinfo=None)).total_seconds()
            why = f"worker {metrics.get('worker', '?')} silent for {silent:.0f} s"
            if attempts >= max_attempts:
                run.status, run.finished_at = RunStatus.FAILED, now
                metrics["error"] = f"{why}; gave up after {attempts} attempt(s)"
            else:
                run.status = RunStatus.QUEUED
                metrics["requeued"] = [
                    *metrics.get("requeued", []),
                    {"at": now.isoformat(), "reason": why},
                ]
            run.metrics = metrics
            done.append(run.id)
            log.warning("job %d: %s; %s", run.id, why, run.status)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return done


class Heartbeat:
    """A thread that keeps a lease alive; `lost` is set once it no longer holds."""

    def __init__(
        self, sessions: sessionmaker[Session], lease: Lease, every_s: float = HEARTBEAT_S
    ) -> None:
        self.lost = threading.Event()
        self._stop = threading.Event()
        self.lease = lease
        self._sessions, self._every_s = sessions, every_s
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat-{lease.run_id}", daemon=True
        )

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                with self._sessions() as session:
                    if not beat(session, self.lease):
                        self.lost.set()
                        return
            except Exception:  # the database is away: try again next beat
                log.exception("job %d: heartbeat failed", self.lease.run_id)
