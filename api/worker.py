"""The worker (`twin worker`): runs queued jobs, training and replays, one at a time.

Jobs are rows of the `runs` table (see api.services.jobs); the API only enqueues them,
nothing trains or replays inside an HTTP request. A job's run kind picks what runs it:
"train" below, "replay" in `_replay` (api.services.replays does the work). Run as many
workers as you like against PostgreSQL (SKIP LOCKED hands each job to one of them); with
SQLite they are safe but their writes are serialised.

Per training job: load the data (built-in simulator or a CSV/Parquet file), train with
`twin.train.train_twin`, store progress after every epoch, register the model. Between
epochs the worker checks whether the job was cancelled (then it is `stopped`) and
whether the worker itself is shutting down (SIGTERM/SIGINT, or `stop` set): then the
job goes back to the queue for the next worker instead of being lost half-trained.
A job whose training raises is `failed` with the message in metrics["error"]; the
worker goes on with the next one.

Leases (api.services.job_leases): a claimed job gets a heartbeat thread; before claiming,
every worker puts back in the queue the running jobs whose heartbeat stopped (their worker
was killed or lost), or fails them past the retry limit. A worker that finds its lease
gone (it was paused past it) abandons the job without writing anything.

A training job asking for `processes` > 1 trains in a torchrun child (api.worker_ddp,
DistributedDataParallel); the worker relays its epochs as progress and kills it on a
cancel or shutdown.

Per replay: the same, with progress {"step", "of", "phase"} committed about once a second
(and cancel and shutdown checked then); the result's steps are written only when it
succeeds, in the transaction that marks it so. A replay handed back on shutdown starts
over on the next worker.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from api.db import make_engine, make_session_factory
from api.migrate import check_migrated
from api.orm import Run, RunKind
from api.services import job_leases, jobs
from api.services.job_leases import Heartbeat, LeaseLost
from api.services.processes import spec_of
from api.settings import Settings
from api.worker_guard import (
    PROGRESS_EVERY_S,
    JobCancelled,
    JobGuard,
    WorkerStopping,
    check_job,
    record_progress_held,
    train_in_processes,
)
from twin.logs import read_log

log = logging.getLogger("api.worker")


def run_worker(
    database_url: str | None = None,
    poll_seconds: float = 2.0,
    once: bool = False,
    stop: threading.Event | None = None,
    *,
    heartbeat_s: float = job_leases.HEARTBEAT_S,
    stale_after_s: float = job_leases.STALE_AFTER_S,
    max_attempts: int = job_leases.MAX_ATTEMPTS,
) -> int:
    """Run queued jobs (training, replays) until `stop` is set (or SIGTERM/SIGINT arrives).

    With `once`, return as soon as the queue is empty instead of polling every
    `poll_seconds`. Returns the number of jobs run to an end (succeeded, failed or
    stopped); a job handed back to the queue on shutdown does not count.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    stop = stop or threading.Event()
    engine = make_engine(database_url or Settings().database_url)
    processed = 0
    try:
        check_migrated(engine)
        factory = make_session_factory(engine)
        log.info("worker started on %s", engine.url.render_as_string(hide_password=True))
        with _stop_on_signals(stop):
            while not stop.is_set():
                with factory() as session:
                    try:
                        job_leases.reclaim_stale(
                            session, jobs.JOB_KINDS, stale_after_s, max_attempts
                        )
                        run = jobs.claim_next_job(session)
                    except OperationalError as exc:  # database restarting, SQLite busy...
                        log.warning("could not claim a job: %s", exc)
                        run = None
                    if run is None:
                        if once:
                            break
                        stop.wait(poll_seconds)
                        continue
                    lease = job_leases.take(session, run)
                    with Heartbeat(factory, lease, heartbeat_s) as beat:
                        if run_job(session, run, stop, beat):
                            processed += 1
    finally:
        engine.dispose()
    log.info("worker stopped after %d job(s)", processed)
    return processed


def run_job(
    session: Session, run: Run, stop: threading.Event | None = None, beat: Heartbeat | None = None
) -> bool:
    """Run one claimed job to its end; False when it was handed back to the queue or its
    lease was lost (`beat`: the claim's heartbeat, None when run without one)."""
    run_id = run.id
    replay = run.kind == RunKind.REPLAY
    started = time.perf_counter()
    try:
        if replay:
            _replay(session, run, JobGuard(stop, beat))
        else:
            _train(session, run, JobGuard(stop, beat))
        log.info("job %d: succeeded in %.1f s", run_id, time.perf_counter() - started)
    except LeaseLost as exc:
        session.rollback()
        log.warning("job %d: abandoned, nothing written: %s", run_id, exc)
        return False
    except JobCancelled:
        jobs.stop_job(session, run_id, "replaying" if replay else "training")
        log.info("job %d: cancelled", run_id)
    except WorkerStopping:
        jobs.requeue_job(session, run_id, "worker shut down")
        log.info("job %d: handed back to the queue (worker shutting down)", run_id)
        return False
    except KeyboardInterrupt:  # a second Ctrl+C: leave now, but do not strand the job
        jobs.requeue_job(session, run_id, "worker interrupted")
        raise
    except Exception as exc:
        log.exception("job %d: failed", run_id)
        try:
            jobs.fail_job(session, run_id, f"{type(exc).__name__}: {exc}")
        except Exception:  # the database itself is gone: the row stays running
            log.exception("job %d: could not record the failure", run_id)
    return True


def _train(session: Session, run: Run, stop: JobGuard) -> None:
    run_id = run.id
    log.info(
        "job %d: training '%s' for process '%s'",
        run_id,
        run.config.get("model_name"),
        run.process.name,
    )
    spec = jobs.parse_job_config(run.process.name, run.config)
    cfg = jobs.train_config(spec)
    df, process_spec = load_data(spec, run)
    provenance = jobs.training_data_provenance(spec, df, process_spec)
    check_job(session, run_id, stop)  # loading may take a while: honour a cancel first

    def on_epoch(epoch: Any) -> None:
        record_progress_held(
            session,
            run_id,
            stop,
            {
                "epoch": epoch.epoch,
                "of": cfg.epochs,
                "train_loss": epoch.train_loss,
                "holdout_prediction": epoch.holdout_prediction,
                "holdout_readout_rmse": epoch.holdout_readout_rmse,
                "effective_rank": epoch.effective_rank,
                "dim_std_min": epoch.dim_std_min,
                "seconds": epoch.seconds,
            },
        )
        log.info("job %d: epoch %d/%d loss %.4f", run_id, epoch.epoch, cfg.epochs, epoch.train_loss)
        check_job(session, run_id, stop)

    if spec.processes > 1:
        checkpoint, metrics = train_in_processes(
            session, run_id, spec.processes, df, process_spec, cfg, stop
        )
    else:
        from twin.train import train_twin  # late: torch loads only when there is work

        twin, _history = train_twin(df, process_spec, cfg, show_progress=False, on_epoch=on_epoch)
        checkpoint, metrics = twin.to_bytes(), twin.metrics
    model_config = {
        "train": cfg.to_dict(),
        "data": _provenance(spec, df, process_spec),
        "job_run_id": run_id,
        "processes": spec.processes,
    }
    done = jobs.finish_job(
        session, run_id, checkpoint, metrics, model_config, provenance, lease=stop.lease
    )
    log.info("job %d: model %s registered", run_id, done.model_id)


def _replay(session: Session, run: Run, stop: JobGuard) -> None:
    from api.services import replays  # late: pandas and the replay code only when needed

    run_id = run.id
    log.info(
        "job %d: %s replay of %s for process '%s'",
        run_id,
        run.config.get("mode"),
        run.config.get("source"),
        run.process.name,
    )
    check_job(session, run_id, stop)
    throttle = replays.Throttle(PROGRESS_EVERY_S)

    def on_step(done: int, total: int | None, phase: str) -> None:
        if not throttle.due(done, total):
            if stop is not None and stop.is_set():  # cheap: no database round trip
                raise WorkerStopping()
            return
        record_progress_held(session, run_id, stop, {"step": done, "of": total, "phase": phase})
        check_job(session, run_id, stop)

    episode = replays.execute(session, run, on_step)
    check_job(session, run_id, stop)  # a cancel during the last second is honoured
    replays.finish_replay(session, run_id, episode)
    log.info("job %d: replay stored with %d steps", run_id, len(episode.steps))


def load_data(spec: jobs.TrainJobSpec, run: Run) -> tuple[Any, Any]:
    """(training log, process spec) for a job."""

    data = spec.data
    if isinstance(data, jobs.SimulatorData):
        from processes import get_process

        module = get_process(spec.process)
        return module.generate_training_log(hours=data.hours, seed=data.seed), module.SPEC
    path = Path(data.path)
    if not path.is_file():
        raise FileNotFoundError(
            f"training data {path} not found on the worker "
            f"(paths are read by the worker, not the API)"
        )
    return read_log(path), spec_of(run.process)


def _provenance(spec: jobs.TrainJobSpec, df: Any, process_spec: Any) -> dict[str, Any]:
    out: dict[str, Any] = spec.data.model_dump()
    out["rows"] = len(df)
    column = getattr(process_spec, "timestamp_column", None)
    if column in getattr(df, "columns", ()):
        from twin.data import timestamps_s

        ts = timestamps_s(df, process_spec)
        out["time_s"] = [float(ts.min()), float(ts.max())]
    return out


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM (docker stop) and SIGINT set `stop`; only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and stop.is_set():
            raise KeyboardInterrupt  # asked twice: do not wait for the epoch to end
        log.info(
            "received %s: stopping after the current epoch (a running job goes back to the queue)",
            signal.Signals(signum).name,
        )
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
