"""HTTP round trip: store with the services, read through the API."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api import services
from api.migrate import head_revision


@pytest.fixture
def stored(session: Session, make_episode) -> dict[str, int]:
    from processes import get_spec

    services.ensure_process(session, get_spec("cstr"))
    model = services.register_model(
        session, "cstr", "jepa", b"checkpoint" * 10, {"epochs": 2}, {"val_loss": 0.05}
    )
    run = services.store_episode(session, make_episode(30), kind="control", model_id=model.id)
    replay = services.store_episode(session, make_episode(5), kind="replay")
    return {"model": model.id, "run": run.id, "replay": replay.id}


def test_health(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert head_revision() is not None
    assert body["status"] == "ok" and body["revision"] == head_revision()


def test_processes(client: TestClient, stored) -> None:
    listed = {p["name"]: p["spec"] for p in client.get("/api/processes").json()}
    assert sorted(listed) == ["cstr", "glucose", "tennessee_eastman", "turbofan"]
    assert len([t for t in listed["tennessee_eastman"]["tags"] if t["role"] == "actuator"]) == 12
    assert "Fn" in {t["name"] for t in listed["turbofan"]["tags"]}
    spec = client.get("/api/processes/cstr").json()["spec"]
    temperature = next(t for t in spec["tags"] if t["name"] == "T")
    assert (temperature["unit"], temperature["high"]) == ("K", 385.0)
    assert client.get("/api/processes/nope").status_code == 404


def test_models_hide_checkpoint_bytes(client: TestClient, stored) -> None:
    listed = client.get("/api/models").json()
    assert [m["id"] for m in listed] == [stored["model"]]
    model = client.get(f"/api/models/{stored['model']}").json()
    assert len(model["sha256"]) == 64 and model["size_bytes"] == 100
    assert "checkpoint" not in model and model["version"] == 1
    assert client.get("/api/models/12345").status_code == 404


def test_runs_list_and_filter(client: TestClient, stored) -> None:
    runs = client.get("/api/runs").json()
    assert {r["id"] for r in runs} == {stored["run"], stored["replay"]}
    replay = client.get("/api/runs", params={"kind": "replay"}).json()
    assert [r["id"] for r in replay] == [stored["replay"]]
    assert client.get("/api/runs", params={"process": "other"}).json() == []
    assert client.get("/api/runs", params={"kind": "bogus"}).status_code == 422


def test_run_detail(client: TestClient, stored) -> None:
    run = client.get(f"/api/runs/{stored['run']}").json()
    assert run["n_steps"] == 30 and run["model_id"] == stored["model"]
    assert run["metrics"]["iae"] == 12.5 and run["config"]["seed"] == 7
    assert client.get("/api/runs/999").status_code == 404


def test_series(client: TestClient, stored) -> None:
    url = f"/api/runs/{stored['run']}/series"
    data = client.get(url).json()
    assert len(data["time_s"]) == 30
    assert data["series"]["sensor"]["T"][0] == 350.0
    assert data["series"]["sensor"]["Ca"][3] is None
    some = client.get(
        url, params={"channels": ["actuator", "setpoint"], "tags": "Tc", "max_points": 10}
    ).json()
    assert set(some["series"]) == {"actuator"} and some["stride"] == 3
    assert len(some["series"]["actuator"]["Tc"]) == len(some["time_s"]) == 10
    assert client.get(url, params={"channels": "weather"}).status_code == 422
    assert client.get(url, params={"max_points": 0}).status_code == 422


def test_step_detail(client: TestClient, stored) -> None:
    step = client.get(f"/api/runs/{stored['run']}/steps/10").json()
    assert step["status"] == "fallback" and step["time_s"] == 60.0
    assert step["plan"]["sensors"]["T"][0] == pytest.approx(355.2)
    assert step["events"][0]["kind"] == "rate_limited"
    assert step["values"]["actuator"]["Tc"] == pytest.approx(300.5)
    assert client.get(f"/api/runs/{stored['run']}/steps/99").status_code == 404


def test_openapi_lists_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/api/health": "get",
        "/api/processes": "get",
        "/api/processes/{name}": "get",
        "/api/processes#define": "post",
        "/api/models": "get",
        "/api/models/{model_id}": "get",
        "/api/runs": "get",
        "/api/runs/{run_id}": "get",
        "/api/runs/{run_id}/series": "get",
        "/api/runs/{run_id}/steps/{step}": "get",
        "/api/loops": "post",
        "/api/loops/{run_id}/step": "post",
        "/api/loops/{run_id}/stop": "post",
        "/api/keys": "post",
        "/api/keys#list": "get",
        "/api/keys/{key_id}/revoke": "post",
        "/api/audit": "get",
        "/api/replays": "post",
        "/api/replays#list": "get",
        "/api/replays/{run_id}": "get",
        "/api/replays/{run_id}/cancel": "post",
    }
    for path, method in expected.items():
        operation = paths[path.split("#")[0]][method]
        success = next(code for code in operation["responses"] if code.startswith("2"))
        assert "application/json" in operation["responses"][success]["content"], path
    export = paths["/api/runs/{run_id}/export"]["get"]["responses"]["200"]["content"]
    assert set(export) == {"text/csv", "application/vnd.apache.parquet"}
    assert client.get("/docs").status_code == 200
