"""Jobs: a queue kept in the `runs` table, run by `twin worker`.

Two job types share the queue, told apart by the run's kind: training jobs (kind
"train", defined here) and replays (kind "replay", defined in api.services.replays).
A job is a run row and nothing else, so it survives restarts of the API and of the
worker. Its life:

    queued --claim_next_job--> running --finish_job--> succeeded (model registered)
       |                          |------fail_job----> failed (metrics["error"])
       |                          |------stop_job----> stopped (cancel was requested)
       |                          '----requeue_job---> queued (the worker was shut down)
       '--------cancel_job------> stopped
A running job's worker holds a lease (api.services.job_leases): its heartbeat stops when it
dies, and another worker puts the job back in the queue (or fails it past a retry limit).

The job definition lives in `runs.config` (validated by `TrainJobSpec`), progress in
`runs.metrics["progress"]`, committed after every epoch so the API sees it live. Only
the API writes `config` after enqueueing (the cancel flag `config["cancel_requested"]`)
and only the worker writes `metrics` while the job runs: the two never overwrite each
other's update, since an ORM flush writes only the columns it changed.

Claiming is safe with several workers:

* PostgreSQL: `SELECT ... FOR UPDATE SKIP LOCKED` picks the oldest queued row that no
  other transaction holds; a concurrent claimer skips it instead of waiting for it.
* SQLite has no row locks (SQLAlchemy drops FOR UPDATE there) and serialises writers on
  the whole database file. Two workers may pick the same row, but the claim itself is a
  conditional `UPDATE ... WHERE status = 'queued'`, so only one of them gets it; the
  other tries the next row. Several workers work, with no parallelism in their writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.errors import Conflict, Invalid, NotFound
from api.orm import Run, RunKind, RunStatus, utcnow
from api.services.audit import Actor, record
from api.services.job_leases import Lease, check

# The job definitions are re-exported: callers and tests use them as jobs.TrainJobSpec etc.
from api.services.job_specs import (  # noqa: F401
    CsvData,
    DataSource,
    ModelSettings,
    SimulatorData,
    TrainJobSpec,
    TrainSettings,
    parse_job_config,
    train_config,
)
from api.services.jsonsafe import json_safe
from api.services.models import DataProvenance, log_provenance, register_model
from api.services.processes import process_or_builtin
from api.services.runs import create_run, get_run

if TYPE_CHECKING:
    from twin.spec import ProcessSpec

CONTROLLER = "jepa"  # the runs.controller of training runs, as `twin train` records them
# Run kinds the worker claims. A replay run made by `twin replay` is stored finished
# (status succeeded), so only replays queued through the API are ever claimed.
JOB_KINDS = (RunKind.TRAIN, RunKind.REPLAY)
_JOB_NAMES = {RunKind.TRAIN: "training job", RunKind.REPLAY: "replay job"}


# ---------------------------------------------------------------- API side


def enqueue_training(
    session: Session, process: str, config: dict[str, Any], *, actor: Actor | None = None
) -> Run:
    """Validate the job and store it as a queued train run; stores nothing if invalid.
    With an `actor`, the audit row ("job.enqueue") is committed with the job."""
    spec = parse_job_config(process, config)
    if spec.data.source == "simulator":
        from processes import PROCESS_MODULES  # late: simulators are not free to import

        if process not in PROCESS_MODULES:
            known = ", ".join(sorted(PROCESS_MODULES))
            raise Invalid(
                f"process '{process}' has no built-in simulator (those with one: "
                f"{known}); train it from a csv data source"
            )
    try:
        try:
            process_or_builtin(session, process)
        except NotFound as exc:  # in a job definition, an unknown process is bad input
            raise Invalid(str(exc)) from None
        run = create_run(
            session,
            kind=RunKind.TRAIN,
            process=process,
            controller=CONTROLLER,
            config=spec.stored(),
            status=RunStatus.QUEUED,
            commit=False,
        )
        record(
            session,
            actor,
            "job.enqueue",
            f"run:{run.id}",
            {
                "process": process,
                "model_name": spec.model_name,
                "data": spec.data.source,
                "epochs": spec.train.epochs,
            },
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


def get_job(session: Session, run_id: int, kind: RunKind = RunKind.TRAIN) -> Run:
    """A job of one type (the API's routes are per type); NotFound for any other run."""
    run = get_run(session, run_id)
    if run.kind != kind:
        raise NotFound(f"run {run_id} is a {run.kind} run, not a {_JOB_NAMES[kind]}")
    return run


def _job(session: Session, run_id: int) -> Run:
    """A job of any type: the worker's bookkeeping is the same for all of them."""
    run = get_run(session, run_id)
    if run.kind not in JOB_KINDS:
        raise NotFound(f"run {run_id} is a {run.kind} run, not a job")
    return run


def list_jobs(
    session: Session, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[Run]:
    query = (
        select(Run)
        .where(Run.kind == RunKind.TRAIN)
        .order_by(Run.id.desc())
        .limit(limit)
        .offset(offset)
    )
    if status is not None:
        query = query.where(Run.status == status)
    return list(session.scalars(query))


def cancel_job(
    session: Session, run_id: int, *, actor: Actor | None = None, kind: RunKind = RunKind.TRAIN
) -> Run:
    """Queued: stopped now. Running: flagged (config["cancel_requested"]); the worker stops
    it after the current epoch (a replay: within about a second). Cancelling a stopped job
    again is harmless; cancelling a finished one is a Conflict. With an `actor`, a real
    change is audited ("job.cancel", or "replay.cancel" for a replay)."""
    action = "job.cancel" if kind == RunKind.TRAIN else f"{kind}.cancel"
    try:
        run = get_job(session, run_id, kind)
        session.refresh(run)
        flagged = {**run.config, "cancel_requested": True}
        if run.status == RunStatus.QUEUED:
            # Conditional: a worker may claim it at this very moment (then it is running).
            stopped = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
                .values(status=RunStatus.STOPPED, finished_at=utcnow(), config=flagged)
                .execution_options(synchronize_session=False)
            ).rowcount
            if stopped:
                record(
                    session,
                    actor,
                    action,
                    f"run:{run_id}",
                    {"was": RunStatus.QUEUED, "status": RunStatus.STOPPED},
                )
                session.commit()
                return _fresh(session, run_id)
        # Lock the row so the worker's finish cannot slip in between read and write.
        run = session.scalars(
            select(Run)
            .where(Run.id == run_id)
            .with_for_update(of=Run)
            .execution_options(populate_existing=True)
        ).one()
        if run.status == RunStatus.RUNNING:
            if not run.config.get("cancel_requested"):
                run.config = {**run.config, "cancel_requested": True}
                record(
                    session,
                    actor,
                    action,
                    f"run:{run_id}",
                    {
                        "was": RunStatus.RUNNING,
                        "status": RunStatus.RUNNING,
                        "cancel_requested": True,
                    },
                )
        elif run.status != RunStatus.STOPPED:
            raise Conflict(f"job {run_id} already {run.status}; nothing to cancel")
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


# ---------------------------------------------------------------- worker side


def claim_next_job(session: Session) -> Run | None:
    """Mark the oldest queued job (of any type) running and return it (None: queue empty)."""
    while True:  # a lost race means another worker got a job: the queue shrinks
        try:
            run_id = session.scalar(
                select(Run.id)
                .where(Run.kind.in_(JOB_KINDS), Run.status == RunStatus.QUEUED)
                .order_by(Run.id)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            if run_id is None:
                session.commit()
                return None
            # Conditional: on SQLite another worker may have claimed the same row meanwhile.
            claimed = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.QUEUED)
                .values(status=RunStatus.RUNNING, started_at=utcnow())
                .execution_options(synchronize_session=False)
            ).rowcount
            session.commit()
        except BaseException:
            session.rollback()
            raise
        if claimed:
            return _fresh(session, run_id)


def record_progress(session: Session, run_id: int, epoch_metrics: dict[str, Any]) -> Run:
    """Store the latest progress as metrics["progress"]; committed. Training reports
    {"epoch", "of", ...} after each epoch, a replay {"step", "of", "phase"}."""
    try:
        run = _job(session, run_id)
        progress = {**json_safe(epoch_metrics), "updated_at": utcnow().isoformat()}
        run.metrics = {**(run.metrics or {}), "progress": progress}
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


def cancel_requested(session: Session, run_id: int) -> bool:
    """Read from the database, not the session's cached row: the API sets the flag."""
    config = session.scalar(select(Run.config).where(Run.id == run_id))
    session.commit()
    return bool(config and config.get("cancel_requested"))


def finish_job(
    session: Session,
    run_id: int,
    checkpoint: bytes,
    model_metrics: dict[str, Any],
    model_config: dict[str, Any],
    provenance: DataProvenance | None = None,
    lease: Lease | None = None,
) -> Run:
    """Register the trained model (with the `provenance` of its training data) and mark
    the job succeeded, in one transaction; with a `lease`, only while it still holds
    (job_leases.LeaseLost if not: the job was reclaimed, it must not register twice)."""
    try:
        if lease is not None:
            check(session, lease, lock=True)
        run = get_job(session, run_id)
        model = register_model(
            session,
            run.process.name,
            str(run.config.get("model_name", "jepa")),
            checkpoint,
            model_config,
            model_metrics,
            provenance=provenance,
            commit=False,
        )
        run.model_id = model.id
        run.status = RunStatus.SUCCEEDED
        run.finished_at = utcnow()
        run.metrics = json_safe(
            {
                **(run.metrics or {}),
                **model_metrics,
                "model": {
                    "id": model.id,
                    "name": model.name,
                    "version": model.version,
                    "sha256": model.sha256,
                    "size_bytes": model.size_bytes,
                },
            }
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


def training_data_provenance(
    spec: TrainJobSpec, df: Any, process_spec: ProcessSpec
) -> DataProvenance:
    """Provenance of a job's training log: of the file it read, or of the log it generated."""
    data = spec.data
    if isinstance(data, CsvData):
        path = Path(data.path).resolve()
        return log_provenance(df, process_spec, source=f"file:{path}", path=path)
    return log_provenance(
        df, process_spec, source=f"simulator:{spec.process} hours={data.hours:g} seed={data.seed}"
    )


def fail_job(session: Session, run_id: int, error: str) -> Run:
    return _end(session, run_id, RunStatus.FAILED, {"error": error})


def stop_job(session: Session, run_id: int, doing: str = "training") -> Run:
    """The worker honoured a cancel request."""
    return _end(session, run_id, RunStatus.STOPPED, {"cancelled": f"while {doing}"})


def requeue_job(session: Session, run_id: int, reason: str) -> Run:
    """Give a running job back to the queue (its worker is shutting down)."""
    try:
        run = _job(session, run_id)
        metrics = {k: v for k, v in (run.metrics or {}).items() if k != "progress"}
        metrics["requeued"] = [
            *metrics.get("requeued", []),
            {"at": utcnow().isoformat(), "reason": reason},
        ]
        run.metrics = metrics
        run.status = RunStatus.QUEUED
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


def _end(session: Session, run_id: int, status: RunStatus, extra: dict[str, Any]) -> Run:
    session.rollback()  # whatever failed may have left the transaction unusable
    try:
        run = _fresh(session, run_id)
        run.status = status
        run.finished_at = utcnow()
        run.metrics = json_safe({**(run.metrics or {}), **extra})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return run


def _fresh(session: Session, run_id: int) -> Run:
    run = session.get(Run, run_id, populate_existing=True)
    if run is None:
        raise NotFound(f"unknown run id {run_id}")
    return run


def job_progress(run: Run) -> dict[str, Any] | None:
    return (run.metrics or {}).get("progress")
