"""Navigation and pages: self-hosted API docs, the models list, HTML errors under the
dashboards, the training run's page, human metric names, and logging in with a key."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session
from twin_fixtures import tiny_twin

from api import services
from api.orm import Role
from api.services import auth
from api.services.models import DataProvenance
from dashboards.humanise import human_bytes, metric_label, metric_rows
from dashboards.login import SESSION_COOKIE

TOP_BAR = ("/", "/compare", "/models", "/alarms", "/docs")


def _offline(html: str) -> None:
    assert "cdn" not in html.lower() and "https://" not in html and "http://" not in html


def test_swagger_ui_and_redoc_load_their_assets_from_this_server(client: TestClient) -> None:
    for path, asset in (
        ("/docs", "/docs-static/swagger-ui-bundle.js"),
        ("/redoc", "/docs-static/redoc.standalone.js"),
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        assert asset in response.text
        _offline(response.text)
        served = client.get(asset)
        assert served.status_code == 200 and len(served.content) > 100_000
    assert client.get("/docs-static/swagger-ui.css").status_code == 200
    assert b"cdn.redoc.ly" not in client.get("/docs-static/redoc.standalone.js").content


def test_every_top_bar_link_is_a_page(client: TestClient) -> None:
    for path in TOP_BAR:
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("text/html"), path


@pytest.mark.parametrize(
    "path", ["/models/99", "/runs/99", "/no/such/page", "/runs/abc", "/compare?runs=98&runs=99"]
)
def test_dashboard_errors_are_pages(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code in (404, 422), path
    assert response.headers["content-type"].startswith("text/html"), path
    assert '<nav class="top">' in response.text


def test_api_errors_stay_json(client: TestClient) -> None:
    for path in ("/api/runs/99", "/api/models/99", "/api/nope", "/dash/api/runs/99/tail"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/json", path


def _register(session: Session, metrics: dict, checkpoint: bytes | None = None) -> tuple[int, int]:
    provenance = DataProvenance(
        sha256="ab" * 32,
        rows=7200,
        start_s=0.0,
        end_s=43_194.0,
        source="file:/data/cstr_train.parquet",
    )
    model = services.register_model(
        session,
        "cstr",
        "jepa",
        checkpoint or b"x" * 2_848_365,
        {"train": {"epochs": 20}},
        metrics,
        provenance=provenance,
    )
    run = services.create_run(
        session,
        kind="train",
        process="cstr",
        controller="jepa",
        config={"train": {"epochs": 20}, "data": {"path": "x"}},
        model_id=model.id,
    )
    services.finish_run(session, run.id, "succeeded", metrics)
    return model.id, run.id


_CUT = {
    "epochs": 5,
    "epochs_asked": 20,
    "epochs_done": 4.4,
    "stopped_by_budget": True,
    "train_seconds": 270.0,
    "holdout_prediction": 0.0123,
    "budget_note": "training stopped by its time budget (4 min 30 s) after 4.4 of 20 epochs (22 %)",
    "readout_rmse": {"T": 0.31, "Ca": 0.002},
    "history": [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "holdout_prediction": 0.1 / e,
            "effective_rank": 5.0,
            "dim_std_min": 0.9,
            "dim_std_mean": 1.0,
            "holdout_readout_rmse": {"T": 0.3},
        }
        for e in range(1, 6)
    ],
}


def test_models_list_names_sizes_and_budget_cuts(client: TestClient, session: Session) -> None:
    model_id, run_id = _register(session, _CUT)
    html = client.get("/models").text
    assert f'href="/models/{model_id}"' in html and f'href="/runs/{run_id}"' in html
    assert "2.85 MB" in html and "4.4 of 20 epochs" in html
    assert "cut by the time budget" in html


def test_training_run_page_has_curves_provenance_and_its_model(
    client: TestClient, session: Session
) -> None:
    twin = tiny_twin()[0]
    model_id, run_id = _register(session, _CUT, twin.to_bytes())
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    html = response.text
    assert f'href="/models/{model_id}"' in html  # link to the model
    assert "Training curves" in html and "Plotly.newPlot" in html  # the curves are drawn
    assert "ab" * 32 in html and "7 200" in html  # provenance: sha256 and rows
    assert "file:/data/cstr_train.parquet" in html
    assert 'id="budget-note"' in html and "4.4 of 20" in html
    assert "run-plot" not in html  # no empty control trends
    assert "{&#39;" not in html and "{'" not in html  # no Python dict dumped
    assert "held-out embedding prediction error (MSE)" in html


def test_metric_names_and_sizes_read_as_words_and_units() -> None:
    assert metric_label("max_T_K") == "max T (K)"
    assert metric_label("min_SM_hpc_pct") == "min SM hpc (%)"
    assert metric_label("plan_ms_p99") == "plan ms p99"
    assert metric_label("max_T_K", {"max_T_K": ("max T", "K")}) == "max T (K)"
    assert human_bytes(2_848_365) == "2.85 MB" and human_bytes(512) == "512 B"
    assert human_bytes(48_000) == "48 kB"
    rows = {
        r.key: r.text
        for r in metric_rows({"readout_rmse": {"T": 0.31}, "history": []}, units={"T": "K"})
    }
    assert rows == {"readout_rmse": "T 0.31 K"}


def test_run_page_gives_the_clock_of_second_zero(client: TestClient, run_id: int) -> None:
    html = client.get(f"/runs/{run_id}").text
    found = re.search(r'"clockOriginMs": ([0-9.e+]+)', html)
    assert found is not None and float(found.group(1)) > 1.5e12  # a real UTC date
    assert "time, UTC" in html


@pytest.fixture
def run_id(session: Session, make_episode) -> int:
    return services.store_episode(session, make_episode(), kind="control").id


# ---------------------------------------------------------------- login


def test_pages_send_a_browser_without_a_session_to_login(secure: TestClient) -> None:
    response = secure.get("/runs/1?range=all", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=/runs/1%3Frange%3Dall"
    page = secure.get("/login")
    assert page.status_code == 200 and 'name="api_key"' in page.text
    assert secure.get("/api/runs").status_code == 401  # the JSON API still answers JSON


def test_login_exchanges_a_key_for_an_httponly_signed_cookie(
    secure: TestClient, tokens: dict[Role, str]
) -> None:
    response = secure.post(
        "/login", data={"api_key": tokens[Role.OPERATOR], "next": "/models"}, follow_redirects=False
    )
    assert response.status_code == 303 and response.headers["location"] == "/models"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
    assert tokens[Role.OPERATOR] not in cookie  # the key itself never goes to the browser
    page = secure.get("/models")
    assert page.status_code == 200
    assert 'id="who"' in page.text and "operator-key" in page.text
    assert "<b>operator</b>" in page.text
    assert 'id="logout"' in page.text
    out = secure.post("/logout", follow_redirects=False)
    assert out.status_code == 303
    assert secure.get("/models", follow_redirects=False).status_code == 303


def test_bad_key_forged_cookie_and_revoked_key_get_no_page(
    secure: TestClient, session: Session, tokens: dict[Role, str]
) -> None:
    bad = secure.post("/login", data={"api_key": "twin_abc_def"})
    assert bad.status_code == 401 and 'id="login-error"' in bad.text
    assert SESSION_COOKIE not in secure.cookies
    secure.cookies.set(SESSION_COOKIE, "eyJmb3JnZWQiOjF9.forged.sig")
    assert secure.get("/", follow_redirects=False).status_code == 303
    secure.post("/login", data={"api_key": tokens[Role.VIEWER]})
    assert secure.get("/").status_code == 200
    key = next(k for k in auth.list_keys(session) if k.name == "viewer-key")
    auth.revoke_key(session, key.id, auth.cli_actor())
    assert secure.get("/", follow_redirects=False).status_code == 303  # revoked at once


def test_login_never_redirects_off_site(secure: TestClient, tokens: dict[Role, str]) -> None:
    for target in ("//evil.example/", "https://evil.example/", "/\\evil"):
        response = secure.post(
            "/login", data={"api_key": tokens[Role.VIEWER], "next": target}, follow_redirects=False
        )
        assert response.headers["location"] == "/", target


def test_without_required_keys_the_header_says_anonymous(client: TestClient) -> None:
    html = client.get("/").text
    assert 'id="who"' in html and "anonymous" in html and 'href="/login"' in html
