"""Service layer: processes, models (sha256), episodes and series, on both backends."""

from __future__ import annotations

import hashlib
import math

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api import services
from api.errors import ChecksumMismatch, Invalid, NotFound
from api.orm import Process, Run, RunEvent, RunStep, RunValue, TwinModel
from twin.spec import ProcessSpec


def _count(session: Session, table: type) -> int:
    return session.scalar(select(func.count()).select_from(table)) or 0


def test_ensure_process_inserts_then_updates(session: Session, cstr_spec: ProcessSpec) -> None:
    first = services.ensure_process(session, cstr_spec)
    changed = ProcessSpec.from_dict({**cstr_spec.to_dict(), "description": "changed"})
    second = services.ensure_process(session, changed)
    assert first.id == second.id
    assert _count(session, Process) == 1
    assert services.spec_of(services.get_process(session, "cstr")).description == "changed"


def test_register_model_versions_and_checksum(session: Session) -> None:
    blob = b"\x00weights" * 100
    one = services.register_model(session, "cstr", "jepa", blob, {"epochs": 3}, {"loss": 0.1})
    two = services.register_model(session, "cstr", "jepa", blob + b"!", {}, {})
    other = services.register_model(session, "cstr", "other", blob, {}, {})
    assert (one.version, two.version, other.version) == (1, 2, 1)
    assert one.sha256 == hashlib.sha256(blob).hexdigest() and one.size_bytes == len(blob)
    assert services.load_model_bytes(session, one.id) == blob


def test_register_model_stores_json_safe_metrics(session: Session) -> None:
    model = services.register_model(session, "cstr", "m", b"x", {}, {"loss": math.nan})
    session.expire_all()
    assert services.get_model(session, model.id).metrics == {"loss": None}


def test_corrupted_checkpoint_is_detected(session: Session) -> None:
    model = services.register_model(session, "cstr", "jepa", b"good bytes", {}, {})
    session.execute(
        update(TwinModel).where(TwinModel.id == model.id).values(checkpoint=b"evil bytes")
    )
    session.commit()
    session.expire_all()
    with pytest.raises(ChecksumMismatch, match="corrupted"):
        services.load_model_bytes(session, model.id)


def test_unknown_model_and_process(session: Session) -> None:
    with pytest.raises(NotFound):
        services.load_model_bytes(session, 999)
    with pytest.raises(NotFound, match="unknown process"):
        services.register_model(session, "no-such-plant", "m", b"x", {}, {})


def test_store_episode_writes_everything(session: Session, make_episode) -> None:
    episode = make_episode(40, event_every=10)
    model = services.register_model(session, "cstr", "jepa", b"w", {}, {})
    run = services.store_episode(session, episode, kind="control", model_id=model.id)
    assert (run.kind, run.status, run.model_id) == ("control", "succeeded", model.id)
    assert run.metrics == {"iae": 12.5, "violations": 0.0}
    assert run.finished_at is not None
    assert _count(session, RunStep) == 40
    assert _count(session, RunEvent) == 4
    # per step: Ca, T (sensor), Caf, Tf (disturbance), Tc, setpoint T, margin T,
    # prediction T and Ca; minus the one NaN sample (Ca at step 3).
    assert _count(session, RunValue) == 40 * 9 - 1
    detail = services.step_values(session, run.id, 5)
    assert detail["sensor"] == {"Ca": pytest.approx(0.495), "T": 352.5}
    assert detail["disturbance"] == {"Caf": 1.0, "Tf": 350.0}
    assert detail["prediction"]["T"] == pytest.approx(352.7)
    assert services.get_step(session, run.id, 5).plan["actuators"]["Tc"][0] == 300.0


def test_store_episode_is_one_transaction(session: Session, make_episode) -> None:
    episode = make_episode(10)
    episode.steps[7].measurements["bogus"] = 1.0
    with pytest.raises(Invalid, match="unknown tag 'bogus'"):
        services.store_episode(session, episode)
    assert _count(session, Run) == 0
    assert _count(session, RunStep) == 0
    assert _count(session, RunValue) == 0


def test_store_episode_rejects_unknown_kind(session: Session, make_episode) -> None:
    with pytest.raises(Invalid, match="kind"):
        services.store_episode(session, make_episode(2), kind="holiday")


def test_get_series_shape(session: Session, make_episode) -> None:
    run = services.store_episode(session, make_episode(20))
    data = services.get_series(session, run.id)
    assert data["run_id"] == run.id and data["stride"] == 1
    assert data["time_s"] == [6.0 * k for k in range(20)]
    assert set(data["series"]) == {
        "sensor",
        "disturbance",
        "actuator",
        "setpoint",
        "margin",
        "prediction",
    }
    assert data["series"]["sensor"]["T"][4] == 352.0
    assert data["series"]["sensor"]["Ca"][3] is None  # missing stays missing
    assert data["series"]["actuator"]["Tc"][2] == pytest.approx(300.1)


def test_get_series_filters(session: Session, make_episode) -> None:
    run = services.store_episode(session, make_episode(10))
    data = services.get_series(session, run.id, channels=["sensor"], tags=["T"])
    assert data["series"] == {"sensor": {"T": [350.0 + 0.5 * k for k in range(10)]}}
    with pytest.raises(Invalid, match="unknown channel"):
        services.get_series(session, run.id, channels=["weather"])


def test_get_series_downsamples(session: Session, make_episode) -> None:
    run = services.store_episode(session, make_episode(101))
    data = services.get_series(session, run.id, channels=["sensor"], max_points=10)
    assert data["stride"] == 11
    assert len(data["time_s"]) <= 10
    assert data["steps"] == list(range(0, 101, 11))
    assert data["series"]["sensor"]["T"] == [350.0 + 0.5 * k for k in range(0, 101, 11)]


def test_list_runs_filters(session: Session, make_episode) -> None:
    services.store_episode(session, make_episode(3), kind="control")
    replay = services.store_episode(session, make_episode(3), kind="replay")
    assert [r.id for r in services.list_runs(session, kind="replay")] == [replay.id]
    assert len(services.list_runs(session, process="cstr")) == 2
    assert services.list_runs(session, process="other") == []
    assert services.step_counts(session, [replay.id]) == {replay.id: 3}


def test_open_session_for_the_cli(db_url: str, make_episode) -> None:
    from api.db import open_session

    with open_session(db_url) as session:
        run = services.store_episode(session, make_episode(3))
    with open_session(db_url) as session:
        assert services.get_run(session, run.id).status == "succeeded"


def test_open_session_refuses_an_unmigrated_database(tmp_path) -> None:
    from api.db import open_session
    from api.migrate import DatabaseNotMigrated

    with pytest.raises(DatabaseNotMigrated, match="twin db upgrade"):
        with open_session(f"sqlite:///{tmp_path / 'empty.db'}"):
            pass
