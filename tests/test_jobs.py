"""Training jobs: queue (runs rows), worker, HTTP routes; on SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from api import services
from api.app import create_app
from api.db import make_engine, make_session_factory
from api.errors import Conflict, Invalid
from api.orm import Run
from api.services import jobs
from api.settings import Settings
from api.worker import run_worker

# Small enough to train in about a second on a CPU.
TINY: dict[str, Any] = {
    "data": {"source": "simulator", "hours": 0.3, "seed": 1},
    "train": {
        "epochs": 2,
        "seed": 0,
        "batch_size": 64,
        "rollout_steps": 4,
        "model": {"window": 8, "encoder_hidden": 32, "predictor_hidden": 32},
    },
    "model_name": "tiny",
}


def tiny(**changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(TINY)
    for key, value in changes.items():
        if key == "train":  # merged; anything else is replaced
            config[key].update(value)
        else:
            config[key] = value
    return config


@pytest.fixture
def other_engine(db_url: str) -> Iterator[Engine]:
    """A second engine: another process's view of the database (other connections)."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def read_run(engine: Engine, run_id: int) -> Run:
    with make_session_factory(engine)() as session:
        run = session.get(Run, run_id)
        assert run is not None
        return run


@pytest.fixture
def progress_hook(monkeypatch: pytest.MonkeyPatch, other_engine: Engine):
    """Wraps record_progress; `hook.seen` is what another connection saw after each epoch,
    `hook.after(epoch)` runs extra code (cancel, stop) at an epoch."""

    original = jobs.record_progress

    def record(session: Session, run_id: int, epoch_metrics: dict[str, Any]) -> Run:
        run = original(session, run_id, epoch_metrics)
        seen = read_run(other_engine, run_id)
        hook.seen.append(
            (seen.status, seen.metrics["progress"]["epoch"], seen.metrics["progress"]["of"])
        )
        hook.after(epoch_metrics["epoch"])
        return run

    class Hook:
        seen: list[tuple[str, int, int]] = []

        @staticmethod
        def after(epoch: int) -> None:
            return None

    hook = Hook()
    hook.seen = []
    monkeypatch.setattr(jobs, "record_progress", record)
    return hook


# ---------------------------------------------------------------- running jobs


def test_worker_trains_and_registers_the_model(
    db_url: str, session: Session, other_engine: Engine, progress_hook
) -> None:
    run = services.enqueue_training(session, "cstr", TINY)
    assert (run.kind, run.status, run.controller) == ("train", "queued", "jepa")
    assert run.config == {"process": "cstr", **TINY}

    assert run_worker(db_url, poll_seconds=0.01, once=True) == 1

    # Progress was committed after each epoch: another connection saw it during training.
    assert progress_hook.seen == [("running", 1, 2), ("running", 2, 2)]
    done = read_run(other_engine, run.id)
    assert done.status == "succeeded" and done.finished_at is not None
    assert done.metrics["progress"]["epoch"] == 2
    assert done.metrics["epochs"] == 2 and "train_loss" in done.metrics
    with make_session_factory(other_engine)() as reader:
        model = services.get_model(reader, done.model_id)
        checkpoint = services.load_model_bytes(reader, model.id)  # verifies the sha256
    assert model.sha256 == hashlib.sha256(checkpoint).hexdigest()
    assert done.metrics["model"]["sha256"] == model.sha256
    assert (model.name, model.version, model.process.name) == ("tiny", 1, "cstr")
    assert model.config["job_run_id"] == run.id
    assert model.config["data"]["source"] == "simulator" and model.config["data"]["rows"] > 0
    assert model.config["train"]["epochs"] == 2 and model.config["train"]["model"]["window"] == 8

    from twin.twin_model import Twin

    assert Twin.from_bytes(checkpoint).spec.name == "cstr"
    with pytest.raises(Conflict, match="succeeded"):
        services.cancel_job(session, run.id)


def test_csv_job_and_a_failing_job(
    db_url: str, session: Session, other_engine: Engine, tmp_path
) -> None:
    from processes.cstr import generate_training_log

    path = tmp_path / "log.csv"
    generate_training_log(hours=0.3, seed=2).to_csv(path, index=False)
    good = services.enqueue_training(
        session, "cstr", tiny(data={"source": "csv", "path": str(path)})
    )
    missing = services.enqueue_training(
        session, "cstr", tiny(data={"source": "csv", "path": str(tmp_path / "nope.csv")})
    )
    after = services.enqueue_training(session, "cstr", tiny(model_name="after"))

    assert run_worker(db_url, poll_seconds=0.01, once=True) == 3

    ok = read_run(other_engine, good.id)
    assert ok.status == "succeeded" and ok.model_id is not None
    failed = read_run(other_engine, missing.id)
    assert failed.status == "failed" and failed.model_id is None
    assert "nope.csv not found" in failed.metrics["error"]
    assert failed.finished_at is not None
    # A failure does not stop the worker: the next job ran.
    assert read_run(other_engine, after.id).status == "succeeded"


def test_cancel_a_running_job_stops_it_after_the_epoch(
    db_url: str, session: Session, other_engine: Engine, progress_hook
) -> None:
    run = services.enqueue_training(session, "cstr", tiny(train={"epochs": 50}))

    def cancel(epoch: int) -> None:
        if epoch == 1:
            with make_session_factory(other_engine)() as api_session:
                flagged = services.cancel_job(api_session, run.id)
                assert flagged.status == "running" and flagged.config["cancel_requested"]

    progress_hook.after = cancel
    assert run_worker(db_url, poll_seconds=0.01, once=True) == 1

    stopped = read_run(other_engine, run.id)
    assert stopped.status == "stopped" and stopped.model_id is None
    assert stopped.metrics["progress"]["epoch"] == 1
    assert stopped.metrics["cancelled"] == "while training"
    assert services.list_models(session) == []
    assert services.cancel_job(session, run.id).status == "stopped"  # harmless again


def test_worker_shutdown_hands_the_job_back(
    db_url: str, session: Session, other_engine: Engine, progress_hook
) -> None:
    run = services.enqueue_training(session, "cstr", TINY)
    stop = threading.Event()
    progress_hook.after = lambda epoch: stop.set()

    assert run_worker(db_url, poll_seconds=0.01, stop=stop) == 0
    requeued = read_run(other_engine, run.id)
    assert requeued.status == "queued" and "progress" not in requeued.metrics
    assert requeued.metrics["requeued"][0]["reason"] == "worker shut down"

    progress_hook.after = lambda epoch: None
    assert run_worker(db_url, poll_seconds=0.01, once=True) == 1
    assert read_run(other_engine, run.id).status == "succeeded"


def test_sigterm_stops_an_idle_worker(db_url: str) -> None:
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    try:
        assert run_worker(db_url, poll_seconds=0.05) == 0  # returns instead of polling on
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------- queue


def test_job_settings_map_onto_train_config() -> None:
    """Every setting a job accepts is a field of TrainConfig / JEPAConfig."""
    import dataclasses

    from twin.model import JEPAConfig
    from twin.train import TrainConfig

    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert set(jobs.TrainSettings.model_fields) <= train_fields
    assert set(jobs.ModelSettings.model_fields) <= {f.name for f in dataclasses.fields(JEPAConfig)}
    cfg = jobs.train_config(jobs.parse_job_config("cstr", TINY))
    assert (cfg.epochs, cfg.batch_size, cfg.rollout_steps) == (2, 64, 4)
    assert (cfg.model.window, cfg.model.encoder_hidden) == (8, 32)
    assert cfg.learning_rate == TrainConfig().learning_rate  # unset: TrainConfig's default
    default = jobs.train_config(jobs.parse_job_config("glucose", {"data": TINY["data"]}))
    assert default.model == JEPAConfig() and default.epochs == TrainConfig().epochs


def test_a_built_in_process_trains_with_its_recipe_under_the_jobs_settings() -> None:
    from processes import get_process
    from twin.model import JEPAConfig

    recipe = get_process("turbofan").TRAINING_RECIPE
    default = jobs.train_config(jobs.parse_job_config("turbofan", {"data": TINY["data"]}))
    assert default == recipe.train_config()
    assert default.model.predictor_layers == 2 != JEPAConfig().predictor_layers
    given = jobs.train_config(
        jobs.parse_job_config(
            "turbofan", tiny(train={"model": {"window": 8, "predictor_layers": 3}})
        )
    )
    assert (given.model.predictor_layers, given.model.window, given.epochs) == (3, 8, 2)
    assert given.predicted_readout_weight == recipe.predicted_readout_weight == 25.0


def test_bad_config_is_refused_and_nothing_stored(client: TestClient, session: Session) -> None:
    bad_bodies = {
        "train.epochs": {"process": "cstr", **tiny(train={"epochs": 0})},
        "train.learning_rte": {"process": "cstr", **tiny(train={"learning_rte": 0.1})},
        "data.simulator.hours": {
            "process": "cstr",
            **tiny(data={"source": "simulator", "hours": -1}),
        },
        "data": {"process": "cstr", **tiny(data={"source": "ftp", "path": "x"})},
        "train.model.window": {"process": "cstr", **tiny(train={"model": {"window": 1}})},
        "model_name": {"process": "cstr", **tiny(model_name="")},
        "processes": {"process": "cstr", **TINY, "processes": 0},
    }
    for field, body in bad_bodies.items():
        response = client.post("/api/jobs/train", json=body)
        assert response.status_code == 422, (field, response.text)
        locations = [".".join(str(p) for p in e["loc"][1:]) for e in response.json()["detail"]]
        assert field in locations, (field, locations)

    response = client.post("/api/jobs/train", json={"process": "no-such", **TINY})
    assert response.status_code == 422
    assert "no built-in simulator" in response.json()["detail"]
    response = client.post(
        "/api/jobs/train",
        json={"process": "no-such", **tiny(data={"source": "csv", "path": "a.csv"})},
    )
    assert response.status_code == 422 and "unknown process" in response.json()["detail"]

    with pytest.raises(Invalid, match=r"train\.epochs: Input should be a valid integer"):
        services.enqueue_training(session, "cstr", tiny(train={"epochs": "many"}))
    with pytest.raises(Invalid, match="names process 'other'"):
        services.enqueue_training(session, "cstr", {"process": "other", **TINY})

    assert client.get("/api/jobs").json() == []
    assert services.list_runs(session) == []


def test_cancel_a_queued_job(client: TestClient, db_url: str) -> None:
    created = client.post("/api/jobs/train", json={"process": "cstr", **TINY})
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "queued" and job["progress"] is None

    cancelled = client.post(f"/api/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "stopped" and cancelled.json()["cancel_requested"]
    assert client.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "stopped"

    assert run_worker(db_url, poll_seconds=0.01, once=True) == 0  # skipped
    after = client.get(f"/api/jobs/{job['id']}").json()
    assert after["status"] == "stopped" and after["progress"] is None
    assert client.post("/api/jobs/9999/cancel").status_code == 404


def test_jobs_routes_refuse_other_runs(client: TestClient, session: Session, make_episode) -> None:
    episode = services.store_episode(session, make_episode(3))
    assert client.get(f"/api/jobs/{episode.id}").status_code == 404
    assert client.post(f"/api/jobs/{episode.id}/cancel").status_code == 404


def test_jobs_survive_an_api_restart(db_url: str) -> None:
    """A job is a row: queued through one app, run by the worker, read through another."""
    with TestClient(create_app(Settings(database_url=db_url))) as first:
        job = first.post("/api/jobs/train", json={"process": "cstr", **TINY}).json()
    with TestClient(create_app(Settings(database_url=db_url))) as second:
        assert second.get(f"/api/jobs/{job['id']}").json()["status"] == "queued"
    assert run_worker(db_url, poll_seconds=0.01, once=True) == 1
    with TestClient(create_app(Settings(database_url=db_url))) as third:
        done = third.get(f"/api/jobs/{job['id']}").json()
        assert done["status"] == "succeeded", done
        assert done["progress"]["epoch"] == done["progress"]["of"] == 2
        model = third.get(f"/api/models/{done['model_id']}").json()
        assert model["name"] == "tiny" and len(model["sha256"]) == 64
        assert [j["id"] for j in third.get("/api/jobs?status=succeeded").json()] == [job["id"]]


def test_claims_are_oldest_first_and_never_shared(session: Session, engine: Engine) -> None:
    """Six jobs, four threads claiming at once (each with its own connection)."""
    ids = [services.enqueue_training(session, "cstr", TINY).id for _ in range(6)]
    assert services.claim_next_job(session).id == ids[0]  # oldest first
    factory = make_session_factory(engine)
    start = threading.Barrier(4)
    claimed: list[int] = []
    errors: list[BaseException] = []

    def claimer() -> None:
        try:
            with factory() as own:
                start.wait()
                while (run := services.claim_next_job(own)) is not None:
                    claimed.append(run.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(claimed) == ids[1:]  # each job exactly once
    statuses = session.scalars(select(Run.status).where(Run.id.in_(ids))).all()
    assert set(statuses) == {"running"}


def test_a_locked_job_is_skipped_not_waited_for(
    db_url: str, session: Session, engine: Engine, other_engine: Engine
) -> None:
    """PostgreSQL: while one worker's transaction holds the oldest job's row (mid-claim),
    another worker gets the next job at once (SKIP LOCKED) instead of blocking."""
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks: PostgreSQL only (SQLite serialises writers instead)")
    first = services.enqueue_training(session, "cstr", TINY).id
    second = services.enqueue_training(session, "cstr", TINY).id
    with other_engine.connect() as holder:
        holder.begin()
        locked = holder.execute(select(Run.id).where(Run.id == first).with_for_update())
        assert locked.scalar_one() == first
        with make_session_factory(engine)() as worker:
            # Without SKIP LOCKED this would wait for `holder`, then fail after 2 s.
            worker.execute(text("SET lock_timeout = '2s'"))
            assert services.claim_next_job(worker).id == second
            assert services.claim_next_job(worker) is None  # the first is still held
        holder.rollback()
    with make_session_factory(engine)() as worker:
        assert services.claim_next_job(worker).id == first
