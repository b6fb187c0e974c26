"""Scenario replays through the HTTP API (queued, run by the worker) and run exports.

A real CSTR episode (the PI baseline, 240 samples of 6 s) is the source; a tiny twin
trained once for the module drives the replays. Everything runs on SQLite and, with
TWIN_TEST_POSTGRES_URL, PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import services
from api.app import create_app
from api.orm import AuditEntry, Role, Run
from api.services import auth, jobs, replay_export, replays
from api.settings import Settings
from api.worker import run_worker
from twin.data import check_log
from twin.logs import read_log
from twin.records import EpisodeResult
from twin.spec import ProcessSpec

OWN_PROCESS = {
    "name": "my_reactor",
    "sample_period_s": 6,
    "tags": [
        {"name": "T", "role": "sensor", "unit": "K", "high": 385.0, "controlled": True},
        {
            "name": "Tc",
            "role": "actuator",
            "unit": "K",
            "low": 280.0,
            "high": 360.0,
            "rate_limit": 0.5,
        },
    ],
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Planning a tiny twin step by step is a chain of small ops: on a busy machine, torch's
    thread pool turns 12 ms steps into seconds. One thread keeps these tests fast."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pi_episode() -> EpisodeResult:
    from processes import cstr

    return cstr.run_episode(cstr.pi_policy(), "pi")  # seed 7, the benchmark scenario


@pytest.fixture(scope="module")
def tiny_twin() -> tuple[bytes, dict[str, Any]]:
    """A twin small enough to train in about a second (see tests/test_jobs.py)."""
    from processes import cstr
    from twin.model import JEPAConfig
    from twin.train import TrainConfig, train_twin

    cfg = TrainConfig(
        epochs=1,
        seed=0,
        batch_size=64,
        rollout_steps=4,
        model=JEPAConfig(window=8, encoder_hidden=32, predictor_hidden=32),
    )
    twin, _ = train_twin(
        cstr.generate_training_log(hours=0.3, seed=1), cstr.SPEC, cfg, show_progress=False
    )
    return twin.to_bytes(), {"train": cfg.to_dict()}


@pytest.fixture
def source(session: Session, pi_episode: EpisodeResult) -> int:
    return services.store_episode(session, pi_episode, kind="control").id


@pytest.fixture
def model_id(session: Session, tiny_twin: tuple[bytes, dict[str, Any]]) -> int:
    checkpoint, config = tiny_twin
    return services.register_model(session, "cstr", "tiny", checkpoint, config, {}).id


def queue(client: TestClient, body: dict[str, Any], **headers: str) -> dict[str, Any]:
    response = client.post("/api/replays", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def replay_rows(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Run).where(Run.kind == "replay")) or 0


def audit_rows(session: Session) -> list[AuditEntry]:
    session.expire_all()
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def cstr_spec(extra_columns: list[str]) -> ProcessSpec:
    from processes import get_spec

    return get_spec("cstr").model_copy(update={"ignore_columns": tuple(extra_columns)})


# ---------------------------------------------------------------- the three modes


def test_open_loop_shadow_and_counterfactual_replays(
    client: TestClient, db_url: str, source: int, model_id: int
) -> None:
    run = {"run_id": source}
    open_loop = queue(
        client,
        {
            "mode": "open_loop",
            "model_id": model_id,
            "horizon": 10,
            "source": {**run, "start_s": 0, "end_s": 600},
        },
    )
    shadow = queue(
        client,
        {
            "mode": "shadow",
            "model_id": model_id,
            "planner": "cem",
            "source": {**run, "start_s": 60, "end_s": 240},
        },
    )
    baseline = queue(
        client,
        {"mode": "counterfactual", "controller": "baseline", "source": {**run, "end_s": 600}},
    )
    twin = queue(
        client,
        {
            "mode": "counterfactual",
            "controller": "twin",
            "planner": "cem",
            "model_id": model_id,
            "source": {**run, "end_s": 180},
        },
    )
    assert open_loop["status"] == "queued" and open_loop["progress"] is None
    assert open_loop["result_run_id"] is None and open_loop["n_steps"] == 0
    assert (shadow["mode"], shadow["controller"]) == ("shadow", "twin+cem (shadow)")

    assert run_worker(db_url, poll_seconds=0.01, once=True) == 4

    done = {
        name: client.get(f"/api/replays/{job['id']}").json()
        for name, job in [
            ("open_loop", open_loop),
            ("shadow", shadow),
            ("baseline", baseline),
            ("twin", twin),
        ]
    }
    for name, job in done.items():
        assert job["status"] == "succeeded", (name, job["error"])
        assert job["result_run_id"] == job["id"] and job["finished_at"] is not None
        assert job["progress"]["step"] == job["progress"]["of"], name
        assert job["config"]["source"]["run_id"] == source
        result = client.get(f"/api/runs/{job['id']}").json()
        assert (result["kind"], result["status"]) == ("replay", "succeeded")
        assert result["n_steps"] == job["n_steps"] > 0

    # Open loop: predictions from every sample with 8 samples behind and 10 ahead.
    ol = done["open_loop"]
    assert ol["n_steps"] == 101 - 8 - 10 and ol["model_id"] == model_id
    assert ol["config"]["source"] == {"run_id": source, "start_s": 0.0, "end_s": 600.0}
    assert (ol["config"]["horizon"], ol["config"]["stride"]) == (10, 1)
    assert ol["metrics"]["rmse_T_h10"] > 0 and "nrmse_h1" in ol["metrics"]
    series = client.get(
        f"/api/runs/{ol['id']}/series", params={"channels": ["sensor", "prediction"], "tags": "T"}
    ).json()
    assert len(series["series"]["prediction"]["T"]) == len(series["series"]["sensor"]["T"])

    # Shadow: every sample of the range, chasing the setpoints the plant recorded.
    sh = done["shadow"]
    assert sh["n_steps"] == 31 and sh["config"]["planner"] == "cem"
    assert sh["config"]["episode"]["setpoints"] == "recorded"
    assert sh["config"]["episode"]["start_time_s"] == 60.0
    assert "mean_abs_diff_Tc" in sh["metrics"] and sh["metrics"]["samples"] == 31
    setpoints = client.get(f"/api/runs/{sh['id']}/series", params={"channels": "setpoint"}).json()[
        "series"
    ]["setpoint"]["T"]
    assert setpoints[:10] == [350.0] * 10 and setpoints[10:] == [365.0] * 21  # step at 120 s

    # Counterfactual with the same controller as the source: the same episode again.
    bl = done["baseline"]
    assert bl["n_steps"] == 101 and bl["config"]["episode"]["seed"] == 7
    assert bl["config"]["episode"]["scenario"]["steps"] == 101
    replayed = client.get(f"/api/runs/{bl['id']}/series", params={"channels": "actuator"})
    recorded = client.get(f"/api/runs/{source}/series", params={"channels": "actuator"})
    assert (
        replayed.json()["series"]["actuator"]["Tc"]
        == recorded.json()["series"]["actuator"]["Tc"][:101]
    )
    tw = done["twin"]
    assert tw["n_steps"] == 31 and tw["controller"] == "twin+cem (counterfactual)"
    assert tw["config"]["episode"]["model_id"] == model_id and "cost" in tw["metrics"]

    listed = client.get("/api/runs", params={"kind": "replay"}).json()
    assert {r["id"] for r in listed} == {job["id"] for job in done.values()}
    assert len(client.get("/api/replays", params={"status": "succeeded"}).json()) == 4

    # A counterfactual is itself a simulator episode: it can be re-run in turn.
    again = queue(
        client,
        {
            "mode": "counterfactual",
            "controller": "baseline",
            "source": {"run_id": bl["id"], "end_s": 60},
        },
    )
    assert run_worker(db_url, poll_seconds=0.01, once=True) == 1
    rerun = client.get(f"/api/runs/{again['id']}/series", params={"channels": "actuator"})
    assert (
        rerun.json()["series"]["actuator"]["Tc"] == recorded.json()["series"]["actuator"]["Tc"][:11]
    )


def test_replay_of_a_log_file_and_failures(
    client: TestClient, db_url: str, session: Session, source: int, model_id: int, tmp_path: Path
) -> None:
    exported = client.get(f"/api/runs/{source}/export", params={"format": "parquet"})
    path = tmp_path / "log.parquet"
    path.write_bytes(exported.content)
    log = read_log(path)
    log[[c for c in log.columns if "." not in c and c != "status"]].to_csv(
        tmp_path / "log.csv", index=False
    )
    from_file = queue(
        client,
        {
            "mode": "open_loop",
            "model_id": model_id,
            "process": "cstr",
            "source": {"path": str(tmp_path / "log.csv"), "end_s": 300},
        },
    )
    missing = queue(
        client,
        {
            "mode": "shadow",
            "model_id": model_id,
            "process": "cstr",
            "setpoints": {"T": 360.0},
            "source": {"path": str(tmp_path / "nope.csv")},
        },
    )

    assert run_worker(db_url, poll_seconds=0.01, once=True) == 2

    ok = client.get(f"/api/replays/{from_file['id']}").json()
    assert ok["status"] == "succeeded" and ok["n_steps"] == 51 - 8 - 20
    assert ok["config"]["source"] == {"path": str(tmp_path / "log.csv"), "end_s": 300.0}
    failed = client.get(f"/api/replays/{missing['id']}").json()
    assert failed["status"] == "failed" and "nope.csv not found" in failed["error"]
    assert failed["n_steps"] == 0 and failed["result_run_id"] is None


def test_cancel_and_shutdown(
    client: TestClient,
    db_url: str,
    session: Session,
    source: int,
    model_id: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    body = {
        "mode": "shadow",
        "model_id": model_id,
        "planner": "cem",
        "source": {"run_id": source, "end_s": 120},
    }
    queued = queue(client, body)
    cancelled = client.post(f"/api/replays/{queued['id']}/cancel").json()
    assert cancelled["status"] == "stopped" and cancelled["cancel_requested"]
    running = queue(client, body)
    stop = threading.Event()
    original = jobs.record_progress

    def progress(session_: Session, run_id: int, values: dict[str, Any]) -> Run:
        if run_id == running["id"] and not stop.is_set():
            stop.set()  # the worker is asked to shut down in the middle of the replay
        return original(session_, run_id, values)

    monkeypatch.setattr(jobs, "record_progress", progress)
    assert run_worker(db_url, poll_seconds=0.01, stop=stop) == 0
    handed_back = client.get(f"/api/replays/{running['id']}").json()
    assert handed_back["status"] == "queued" and handed_back["n_steps"] == 0
    assert handed_back["metrics"]["requeued"][0]["reason"] == "worker shut down"

    def cancel(session_: Session, run_id: int, values: dict[str, Any]) -> Run:
        out = original(session_, run_id, values)
        if values.get("phase") == "shadowing":
            assert client.post(f"/api/replays/{run_id}/cancel").json()["cancel_requested"]
        return out

    monkeypatch.setattr(jobs, "record_progress", cancel)
    monkeypatch.setattr(replays.Throttle, "due", lambda *_: True)  # report every step
    assert run_worker(db_url, poll_seconds=0.01, once=True) == 1
    stopped = client.get(f"/api/replays/{running['id']}").json()
    assert stopped["status"] == "stopped" and stopped["n_steps"] == 0
    assert stopped["metrics"]["cancelled"] == "while replaying"
    assert client.post(f"/api/replays/{running['id']}/cancel").status_code == 200
    assert client.post("/api/replays/4242/cancel").status_code == 404
    assert client.get(f"/api/replays/{source}").status_code == 404  # a control run


# ---------------------------------------------------------------- bad input


def test_bad_replays_are_refused_and_nothing_stored(
    client: TestClient,
    session: Session,
    source: int,
    model_id: int,
    make_episode,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    other_model = services.register_model(session, "turbofan", "jepa", b"weights", {}, {}).id
    train_job = services.enqueue_training(
        session, "cstr", {"data": {"source": "simulator", "hours": 0.3}}
    ).id
    services.define_process(session, ProcessSpec.model_validate(OWN_PROCESS))
    own = make_episode(20, process="my_reactor")
    for rec in own.steps:
        rec.measurements = {"T": rec.measurements["T"]}
        rec.plan, rec.margins = None, {}
    own_run = services.store_episode(session, own).id
    unseeded = make_episode(20)
    unseeded.config = {}
    unseeded_run = services.store_episode(session, unseeded).id
    runs_before, audit_before = replay_rows(session), len(audit_rows(session))

    twin = {"model_id": model_id}
    run = {"run_id": source}
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"mode": "open_loop", **twin, "source": {"run_id": 999}}, 404, "unknown run id 999"),
        ({"mode": "open_loop", "model_id": 999, "source": run}, 404, "unknown model id 999"),
        (
            {"mode": "shadow", "model_id": other_model, "source": run},
            422,
            "trained for process 'turbofan', not 'cstr'",
        ),
        (
            {"mode": "open_loop", **twin, "source": {**run, "start_s": 1e6}},
            422,
            "the run covers 0 to 1434 s",
        ),
        (
            {"mode": "open_loop", **twin, "source": {**run, "start_s": 7, "end_s": 8}},
            422,
            "no step of run",
        ),
        (
            {"mode": "open_loop", **twin, "source": {**run, "start_s": 600, "end_s": 60}},
            422,
            "empty time range",
        ),
        (
            {"mode": "open_loop", **twin, "source": {**run, "end_s": 60}},
            422,
            "needs more than 29 samples",
        ),
        ({"mode": "rewind", **twin, "source": run}, 422, "mode"),
        ({"mode": "shadow", "source": run}, 422, "give model_id"),
        (
            {"mode": "shadow", **twin, "horizon": 5, "source": run},
            422,
            "horizon applies to mode open_loop only",
        ),
        ({"mode": "open_loop", **twin, "planner": "cem", "source": run}, 422, "planner applies to"),
        (
            {"mode": "shadow", **twin, "setpoints": {"Tc": 300.0}, "source": run},
            422,
            "only sensors take setpoints",
        ),
        (
            {"mode": "shadow", **twin, "setpoints": {"T": 400.0}, "source": run},
            422,
            "not inside its limits",
        ),
        (
            {"mode": "shadow", **twin, "setpoints": {"X": 1.0}, "source": run},
            422,
            "unknown tag 'X'",
        ),
        (
            {"mode": "open_loop", **twin, "process": "turbofan", "source": run},
            422,
            "is of process 'cstr', not 'turbofan'",
        ),
        ({"mode": "open_loop", **twin, "source": {"run_id": train_job}}, 422, "is a training job"),
        (
            {"mode": "open_loop", **twin, "source": {"path": "log.csv"}},
            422,
            "a file source needs process",
        ),
        (
            {"mode": "open_loop", **twin, "process": "cstr", "source": {"path": "log.txt"}},
            422,
            ".csv or .parquet",
        ),
        (
            {"mode": "open_loop", **twin, "process": "nope", "source": {"path": "a.csv"}},
            422,
            "unknown process 'nope'",
        ),
        ({"mode": "counterfactual", "source": run}, 422, "needs controller"),
        (
            {"mode": "counterfactual", "controller": "twin", "source": run},
            422,
            "model_id goes with controller 'twin'",
        ),
        (
            {"mode": "counterfactual", "controller": "baseline", **twin, "source": run},
            422,
            "model_id goes with controller 'twin'",
        ),
        (
            {
                "mode": "counterfactual",
                "controller": "baseline",
                "process": "cstr",
                "source": {"path": "a.csv"},
            },
            422,
            "give a run_id",
        ),
        (
            {"mode": "counterfactual", "controller": "baseline", "source": {**run, "start_s": 60}},
            422,
            "starts where the recorded episode started",
        ),
        (
            {"mode": "counterfactual", "controller": "baseline", "source": {"run_id": own_run}},
            422,
            "has no simulator",
        ),
        (
            {
                "mode": "counterfactual",
                "controller": "baseline",
                "source": {"run_id": unseeded_run},
            },
            422,
            "records no simulator episode",
        ),
        (
            {"mode": "open_loop", **twin, "source": {"run_id": own_run}},
            422,
            "trained for process 'cstr', not 'my_reactor'",
        ),
        ({"mode": "open_loop", **twin, "source": run, "extra": 1}, 422, "extra"),
    ]
    for body, status, message in cases:
        response = client.post("/api/replays", json=body)
        assert response.status_code == status, (body, response.text)
        assert message in str(response.json()["detail"]), (body, response.text)

    monkeypatch.setattr(replays, "MAX_REPLAY_SAMPLES", 100)
    too_big = client.post("/api/replays", json={"mode": "open_loop", **twin, "source": run})
    assert too_big.status_code == 413 and "narrow it" in too_big.json()["detail"]
    assert replay_rows(session) == runs_before == 0
    assert len(audit_rows(session)) == audit_before


@pytest.fixture
def secure(db_url: str) -> Iterator[TestClient]:
    app: FastAPI = create_app(Settings(database_url=db_url, auth_required=True))
    with TestClient(app) as test_client:
        yield test_client


def test_viewers_read_and_export_but_only_engineers_queue(
    secure: TestClient, session: Session, source: int, model_id: int
) -> None:
    tokens = {
        role: auth.create_key(session, f"{role}-key", role, auth.cli_actor())[1] for role in Role
    }
    body = {"mode": "open_loop", "model_id": model_id, "source": {"run_id": source}}
    for role in (Role.VIEWER, Role.OPERATOR):
        bearer = {"Authorization": f"Bearer {tokens[role]}"}
        refused = secure.post("/api/replays", json=body, headers=bearer)
        assert refused.status_code == 403 and "'engineer' role" in refused.json()["detail"]
    assert secure.post("/api/replays", json=body).status_code == 401
    assert replay_rows(session) == 0

    job = queue(secure, body, Authorization=f"Bearer {tokens[Role.ENGINEER]}")
    entry = audit_rows(session)[-1]
    assert (entry.action, entry.target, entry.actor) == (
        "replay.enqueue",
        f"run:{job['id']}",
        "engineer-key",
    )
    assert entry.detail["mode"] == "open_loop" and entry.detail["source"] == {"run_id": source}
    viewer = {"Authorization": f"Bearer {tokens[Role.VIEWER]}"}
    assert secure.get(f"/api/replays/{job['id']}", headers=viewer).status_code == 200
    assert secure.post(f"/api/replays/{job['id']}/cancel", headers=viewer).status_code == 403
    assert secure.get(f"/api/runs/{source}/export", headers=viewer).status_code == 200
    assert secure.get(f"/api/runs/{source}/export").status_code == 401


# ---------------------------------------------------------------- export


def test_export_csv_and_parquet_read_back_as_logs(
    client: TestClient, source: int, tmp_path: Path
) -> None:
    extra = ["T.setpoint", "status"]
    for fmt, media in (("csv", "text/csv"), ("parquet", "application/vnd.apache.parquet")):
        response = client.get(f"/api/runs/{source}/export", params={"format": fmt})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(media)
        assert (
            response.headers["content-disposition"]
            == f'attachment; filename="run-{source}-cstr.{fmt}"'
        )
        path = tmp_path / f"run.{fmt}"
        path.write_bytes(response.content)
        log = read_log(path)
        assert list(log.columns) == ["time_s", "Ca", "T", "Tc", "Caf", "Tf", *extra]
        assert len(log) == 240 and log["time_s"].iloc[-1] == 1434.0
        assert set(log["status"]) == {"ok"} and log["T.setpoint"].iloc[100] == 375.0
        check_log(log, cstr_spec(extra))  # a valid log of the process, as trained on

    part = client.get(
        f"/api/runs/{source}/export", params={"format": "csv", "start_s": 60, "end_s": 120}
    )
    assert part.headers["content-disposition"].endswith(f'run-{source}-cstr-60-120s.csv"')
    path = tmp_path / "part.csv"
    path.write_bytes(part.content)
    assert read_log(path)["time_s"].tolist() == [60.0 + 6 * k for k in range(11)]


def test_export_of_a_replay_and_bad_exports(
    client: TestClient,
    session: Session,
    source: int,
    make_episode,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    synthetic = services.store_episode(session, make_episode(30), kind="replay").id
    response = client.get(f"/api/runs/{synthetic}/export", params={"format": "parquet"})
    path = tmp_path / "replay.parquet"
    path.write_bytes(response.content)
    log = read_log(path)
    extra = ["T.setpoint", "Ca.prediction", "T.prediction", "status"]
    assert list(log.columns)[6:] == extra and log["Ca"].isna().sum() == 1  # the dropped one
    check_log(log, cstr_spec(extra))
    assert log["status"].iloc[10] == "fallback"

    train_job = services.enqueue_training(
        session, "cstr", {"data": {"source": "simulator", "hours": 0.3}}
    ).id
    url = f"/api/runs/{source}/export"
    assert client.get(url, params={"format": "xlsx"}).status_code == 422
    assert client.get(url, params={"start_s": 10, "end_s": 5}).status_code == 422
    outside = client.get(url, params={"start_s": 5000})
    assert outside.status_code == 422 and "covers 0 to 1434 s" in outside.json()["detail"]
    assert client.get(url, params={"start_s": "nan"}).status_code == 422
    assert client.get("/api/runs/4242/export").status_code == 404
    empty = client.get(f"/api/runs/{train_job}/export")
    assert empty.status_code == 422 and "has no steps" in empty.json()["detail"]
    monkeypatch.setattr(replay_export, "EXPORT_MAX_VALUES", 500)
    too_big = client.get(url)
    assert too_big.status_code == 413 and "narrow the range" in too_big.json()["detail"]
    assert client.get(url, params={"end_s": 60}).status_code == 200
