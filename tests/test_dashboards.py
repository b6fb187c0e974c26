"""Dashboards: figure builders (pure) and the served pages (no CDN anywhere)."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api import services
from dashboards import figures
from twin.spec import ProcessSpec


def _series(n: int = 10) -> dict:
    return {
        "run_id": 1, "steps": list(range(n)), "stride": 1,
        "time_s": [6.0 * k for k in range(n)],
        "series": {
            "sensor": {"T": [350.0 + k for k in range(n)], "Ca": [0.5] * n},
            "setpoint": {"T": [365.0] * n},
            "actuator": {"Tc": [300.0] * n},
            "disturbance": {"Tf": [350.0] * n},
        },
    }


def _plan_at() -> dict:
    return {"step": 4, "time_s": 24.0,
            "plan": {"time_s": [6.0, 12.0], "actuators": {"Tc": [301.0, 302.0]},
                     "sensors": {"T": [355.0, 356.0]}, "spread": {"T": [0.5, 1.0]}}}


def _axis_of(fig: go.Figure, trace: go.Scatter) -> str:
    return "yaxis" + trace.yaxis.removeprefix("y")


def _trace(fig: go.Figure, name: str) -> go.Scatter:
    return next(t for t in fig.data if t.name == name)


def test_axis_titles_carry_units(cstr_spec: ProcessSpec) -> None:
    fig = figures.run_figure(cstr_spec, _series())
    titles = {fig.layout[_axis_of(fig, t)].title.text for t in fig.data}
    assert {"T [K]", "Ca [mol/L]", "Tc [K]", "Tf [K]"} <= titles
    assert fig.layout[_axis_of(fig, _trace(fig, "T measured"))].title.text == "T [K]"


def test_limits_are_drawn_as_red_bands_beyond_them(cstr_spec: ProcessSpec) -> None:
    fig = figures.run_figure(cstr_spec, _series())
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    t_axis = _trace(fig, "T measured").yaxis
    t_rects = [r for r in rects if r.yref == t_axis]
    assert len(t_rects) == 1 and t_rects[0].y0 == 385.0 and t_rects[0].y1 > 385.0
    assert "214, 39, 40" in t_rects[0].fillcolor
    tc_axis = _trace(fig, "Tc applied").yaxis
    tc_rects = sorted((r.y0, r.y1) for r in rects if r.yref == tc_axis)
    coolant = cstr_spec.tag("Tc")
    assert tc_rects[0][1] == coolant.low and tc_rects[1][0] == coolant.high  # both bounds
    ca_axis = _trace(fig, "Ca measured").yaxis
    assert [r.y1 for r in rects if r.yref == ca_axis] == [0.0]  # Ca >= 0 only


def test_limit_bands_helper() -> None:
    assert figures.limit_bands(None, None, [1.0, 2.0]) == []
    (low_band,) = figures.limit_bands(0.0, None, [0.2, 0.6])
    assert low_band[1] == 0.0 and low_band[0] < 0.0
    bands = figures.limit_bands(280.0, 320.0, [None, 300.0])
    assert bands[0][1] == 280.0 and bands[1][0] == 320.0


def test_setpoint_drawn_against_the_controlled_sensor(cstr_spec: ProcessSpec) -> None:
    fig = figures.run_figure(cstr_spec, _series())
    setpoint, measured = _trace(fig, "T setpoint"), _trace(fig, "T measured")
    assert setpoint.yaxis == measured.yaxis and setpoint.line.dash == "dash"
    assert not any(t.name == "Ca setpoint" for t in fig.data)


def test_plan_is_dashed_from_now(cstr_spec: ProcessSpec) -> None:
    fig = figures.run_figure(cstr_spec, _series(), plan_at=_plan_at())
    plan_t = _trace(fig, "T plan @ step 4")
    assert list(plan_t.x) == [30.0, 36.0] and plan_t.line.dash == "dash"
    assert plan_t.yaxis == _trace(fig, "T measured").yaxis
    assert list(_trace(fig, "Tc plan @ step 4").y) == [301.0, 302.0]
    now_lines = [s for s in fig.layout.shapes if s.type == "line" and s.x0 == 24.0]
    assert len(now_lines) == len({t.yaxis for t in fig.data})  # one per subplot
    assert any("now" in (a.text or "") for a in fig.layout.annotations)


def test_events_are_markers_on_their_tag(cstr_spec: ProcessSpec) -> None:
    events = [{"time_s": 12.0, "kind": "rate_limited", "message": "Tc limited", "tag": "Tc"},
              {"time_s": 18.0, "kind": "solver_failed", "message": "ipopt", "tag": None}]
    fig = figures.run_figure(cstr_spec, _series(), events=events)
    markers = [t for t in fig.data if t.name == "safety events"]
    assert len(markers) == 2
    on_tc = next(m for m in markers if m.yaxis == _trace(fig, "Tc applied").yaxis)
    assert list(on_tc.y) == [300.0] and "rate_limited" in on_tc.hovertext[0]


def test_undisturbed_disturbances_are_not_plotted(cstr_spec: ProcessSpec) -> None:
    tags = [t.name for t in figures.plotted_tags(cstr_spec, _series())]
    assert tags == ["Ca", "T", "Tc", "Tf"]


# ---------------------------------------------------------------- pages


@pytest.fixture
def run_id(session: Session, make_episode) -> int:
    services.register_model(session, "cstr", "jepa", b"w", {}, {})
    return services.store_episode(session, make_episode(30)).id


def _assert_offline(html: str) -> None:
    assert '<script src="/static/plotly.min.js"></script>' in html
    assert "cdn" not in html.lower()
    assert "https://" not in html


def test_index_page(client: TestClient, run_id: int) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.text
    _assert_offline(html)
    assert f'href="/runs/{run_id}"' in html and "iae=12.5" in html
    assert "cstr" in html and "jepa" in html


def test_index_page_when_empty(client: TestClient) -> None:
    assert "No runs yet" in client.get("/").text


def test_run_page(client: TestClient, run_id: int) -> None:
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    html = response.text
    _assert_offline(html)
    assert "Plotly.newPlot" in html and "T [K]" in html
    assert 'name="step"' in html and 'value="14"' in html  # middle step by default
    assert "plan @ step 14" in html
    chosen = client.get(f"/runs/{run_id}", params={"step": 3}).text
    assert "plan @ step 3" in chosen
    assert "plan @ step 29" in client.get(f"/runs/{run_id}", params={"step": 999}).text


def test_run_page_unknown_run(client: TestClient) -> None:
    assert client.get("/runs/987").status_code == 404


def test_plotly_js_is_served_locally(client: TestClient) -> None:
    response = client.get("/static/plotly.min.js")
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    assert len(response.content) > 1_000_000 and b"plotly" in response.content[:2000].lower()
