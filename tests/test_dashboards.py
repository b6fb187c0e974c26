"""Dashboards: figure builders and health cards (pure), and the served pages and their
JSON endpoints (no CDN anywhere). The same pages in a real browser: tests/test_browser.py."""

from __future__ import annotations

import json
import re

import plotly.graph_objects as go
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api import services
from api.errors import Invalid
from dashboards import figures, health, pages, run_pages
from twin.spec import ProcessSpec


def _series(n: int = 10) -> dict:
    return {
        "run_id": 1,
        "steps": list(range(n)),
        "stride": 1,
        "time_s": [6.0 * k for k in range(n)],
        "series": {
            "sensor": {"T": [350.0 + k for k in range(n)], "Ca": [0.5] * n},
            "setpoint": {"T": [365.0] * n},
            "actuator": {"Tc": [300.0] * n},
            "disturbance": {"Tf": [350.0] * n},
        },
    }


def _plan_at() -> dict:
    return {
        "step": 4,
        "time_s": 24.0,
        "plan": {
            "time_s": [6.0, 12.0],
            "actuators": {"Tc": [301.0, 302.0]},
            "sensors": {"T": [355.0, 356.0]},
            "spread": {"T": [0.5, 1.0]},
        },
    }


def _axis_of(fig: go.Figure, trace: go.Scatter) -> str:
    return "yaxis" + trace.yaxis.removeprefix("y")


def _trace(fig: go.Figure, name: str) -> go.Scatter:
    return next(t for t in fig.data if t.name == name)


def _by_meta(fig: go.Figure, meta: str) -> go.Scatter:
    return next(t for t in fig.data if t.meta == meta)


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


def test_plan_is_dashed_from_now_with_its_spread(cstr_spec: ProcessSpec) -> None:
    fig = figures.run_figure(cstr_spec, _series(), plan_at=_plan_at())
    plan_t = _by_meta(fig, "plan/T")
    assert list(plan_t.x) == [30.0, 36.0] and plan_t.line.dash == "dash"
    assert plan_t.yaxis == _trace(fig, "T measured").yaxis
    assert list(_by_meta(fig, "plan/Tc").y) == [301.0, 302.0]
    spread = _by_meta(fig, "spread/T")
    assert list(spread.x) == [30.0, 36.0, 36.0, 30.0]
    assert list(spread.y) == [355.5, 357.0, 355.0, 354.5] and spread.fill == "toself"
    (now,) = [s for s in fig.layout.shapes if s.name == "now"]
    assert now.x0 == now.x1 == 24.0 and (now.yref, now.y0, now.y1) == ("paper", 0, 1)
    # a stored run has no "now": the line marks the step whose plan is drawn
    assert any("plan made at step 4" in (a.text or "") for a in fig.layout.annotations)
    assert not any("now" in (a.text or "") for a in fig.layout.annotations)
    live = figures.run_figure(cstr_spec, _series(), plan_at=_plan_at(), live=True)
    assert any("now (step 4)" in (a.text or "") for a in live.layout.annotations)


def test_events_are_markers_on_their_tag(cstr_spec: ProcessSpec) -> None:
    events = [
        {"time_s": 12.0, "kind": "rate_limited", "message": "Tc limited", "tag": "Tc"},
        {"time_s": 18.0, "kind": "solver_failed", "message": "ipopt", "tag": None},
    ]
    fig = figures.run_figure(cstr_spec, _series(), events=events)
    markers = [t for t in fig.data if t.name == "safety events"]
    assert len(markers) == 2
    on_tc = next(m for m in markers if m.yaxis == _trace(fig, "Tc applied").yaxis)
    assert list(on_tc.y) == [300.0] and "rate_limited" in on_tc.hovertext[0]
    assert sum(bool(m.showlegend) for m in markers) == 1


def test_live_figure_has_empty_traces_to_fill(cstr_spec: ProcessSpec) -> None:
    empty = {"run_id": 1, "steps": [], "time_s": [], "stride": 1, "series": {}}
    fig = figures.run_figure(cstr_spec, empty, live=True)
    metas = {t.meta for t in fig.data}
    assert {"plan/T", "plan/Ca", "plan/Tc", "spread/T", "events/T", "events/Tc"} <= metas
    assert not any(t.meta and t.meta.startswith("plan/Tf") for t in fig.data)
    finished = figures.run_figure(cstr_spec, _series())
    assert not any(t.meta and t.meta.startswith(("plan/", "events/")) for t in finished.data)


def test_undisturbed_disturbances_are_not_plotted(cstr_spec: ProcessSpec) -> None:
    tags = [t.name for t in figures.plotted_tags(cstr_spec, _series())]
    assert tags == ["Ca", "T", "Tc", "Tf"]


def test_focus_tags_of_a_large_process() -> None:
    from processes import get_spec

    tep = get_spec("tennessee_eastman")
    focus = figures.focus_tags(tep)
    assert set(focus) >= {t.name for t in tep.controlled} | {t.name for t in tep.actuators}
    assert len(focus) < len(tep.tags)
    cstr = get_spec("cstr")
    assert figures.focus_tags(cstr) == [t.name for t in cstr.tags]
    every = {"time_s": [0.0], "series": {"sensor": {t.name: [1.0] for t in tep.sensors}}}
    fig = figures.run_figure(tep, every, only=[t.name for t in tep.tags])  # 53 rows fit
    assert len({t.yaxis for t in fig.data}) == len(tep.sensors) + len(tep.actuators)


def test_only_some_tags(cstr_spec: ProcessSpec) -> None:
    fig = figures.run_figure(cstr_spec, _series(), only=["T", "Tc"])
    assert {t.meta for t in fig.data} == {"sensor/T", "setpoint/T", "actuator/Tc"}
    assert set(figures.series_traces(cstr_spec, _series(), only=["Tc"])) == {"actuator/Tc"}


def test_series_traces_are_keyed_like_the_figure(cstr_spec: ProcessSpec) -> None:
    fig = figures.run_figure(cstr_spec, _series(4))
    traces = figures.series_traces(cstr_spec, _series(4))
    assert set(traces) == {t.meta for t in fig.data}
    assert traces["sensor/T"]["y"] == [350.0, 351.0, 352.0, 353.0]
    assert traces["setpoint/T"]["x"] == [0.0, 6.0, 12.0, 18.0]
    no_ca = _series(2)
    del no_ca["series"]["sensor"]["Ca"]
    assert figures.series_traces(cstr_spec, no_ca)["sensor/Ca"]["y"] == [None, None]


def test_plan_traces_clear_an_old_plan(cstr_spec: ProcessSpec) -> None:
    cleared = figures.plan_traces(cstr_spec, None)
    assert cleared["plan/T"] == {"x": [], "y": []} and cleared["spread/T"]["x"] == []
    no_spread = _plan_at()
    no_spread["plan"]["spread"] = {}
    assert figures.plan_traces(cstr_spec, no_spread)["spread/T"] == {"x": [], "y": []}


def test_status_spans_merge_consecutive_steps() -> None:
    times = [0.0, 6.0, 12.0, 18.0, 24.0, 30.0]
    statuses = ["ok", "fallback", "fallback", "ok", "stale", "fallback"]
    spans = figures.status_spans(times, statuses, 6.0)
    assert [(s.x0, s.x1, s.status) for s in spans] == [
        (6.0, 18.0, "fallback"),
        (24.0, 30.0, "stale"),
        (30.0, 36.0, "fallback"),
    ]
    shapes = figures.span_shapes(spans)
    assert shapes[1]["name"] == "span:stale" and shapes[1]["yref"] == "paper"


def test_status_spans_are_capped() -> None:
    times = [float(k) for k in range(2_000)]
    statuses = ["fallback" if k % 2 else "ok" for k in range(2_000)]  # flapping
    spans = figures.status_spans(times, statuses, 1.0, max_spans=50)
    assert 0 < len(spans) <= 50
    assert spans[0].x0 == 1.0 and spans[-1].x1 == 2_000.0


def test_compare_figure_overlays_runs(cstr_spec: ProcessSpec) -> None:
    other = _series(5)
    other["series"]["sensor"]["T"] = [340.0] * 5
    runs = [figures.ComparedRun(1, "run 1", _series()), figures.ComparedRun(2, "run 2", other)]
    fig = figures.compare_figure(cstr_spec, runs)
    one, two = _by_meta(fig, "run1/sensor/T"), _by_meta(fig, "run2/sensor/T")
    assert one.yaxis == two.yaxis and one.line.color != two.line.color
    assert list(two.y) == [340.0] * 5
    assert _by_meta(fig, "run2/actuator/Tc").line.color == two.line.color
    legend = [t.name for t in fig.data if t.showlegend is not False]
    assert legend == ["run 1", "run 2"]  # one legend entry (and toggle) per run
    assert fig.layout[_axis_of(fig, one)].title.text == "T [K]"
    assert any(s.type == "rect" and s.y0 == 385.0 for s in fig.layout.shapes)


def test_summary_table_marks_the_best_run() -> None:
    table = figures.summary_table(
        {
            1: {"cost": 12.0, "violations": 0, "fallbacks": 3, "plan_ms_median": 30.0},
            2: {"cost": 10.0, "violations": 0, "fallbacks": 0},
            3: {},
        }
    )
    labels = [c["label"] for c in table["columns"]]
    cost, violations = labels.index("cost"), labels.index("constraint violations")
    planning = labels.index("planning time median")
    assert table["rows"][2][cost] == {"text": "10.000", "best": True}
    assert table["rows"][1][cost]["best"] is False
    assert table["rows"][3][cost] == {"text": "—", "best": False}
    assert not any(row[violations]["best"] for row in table["rows"].values())  # a tie
    assert table["rows"][1][planning]["text"] == "30.0"


def test_figure_json_cannot_close_its_script(cstr_spec: ProcessSpec) -> None:
    events = [{"time_s": 6.0, "kind": "x", "message": "</script><b>", "tag": "T"}]
    text = figures.to_json(figures.run_figure(cstr_spec, _series(), events=events))
    assert "</script>" not in text and "<" not in text
    marks = next(t for t in json.loads(text)["data"] if t.get("meta") == "events/T")
    assert marks["hovertext"] == ["x: </script><b>"]


# ---------------------------------------------------------------- health and windows


def _recent(
    T: list[float],
    predicted: list[float | None],
    statuses: list[str] | None = None,
    setpoint: float = 360.0,
) -> health.Recent:
    n = len(T)
    return health.Recent(
        list(range(n)),
        statuses or ["ok"] * n,
        {
            "sensor": {"T": T, "Ca": [0.5] * n},
            "setpoint": {"T": [setpoint] * n},
            "prediction": {"T": predicted},
        },
    )


def test_health_cards(cstr_spec: ProcessSpec) -> None:
    T = [350.0, 352.0, 354.0, 356.0, 358.0]
    good = health.health_cards(cstr_spec, _recent(T, [t + 2.1 for t in T]), "ok")
    safety, controller, model = good
    assert (safety.verdict, controller.verdict, model.verdict) == ("ok", "ok", "ok")
    assert "T" in safety.detail and "27 K" in safety.detail  # 385 K - 358 K
    assert "by 6 K on average" in controller.detail  # |360 - T| averages 6 K
    poor = health.health_cards(cstr_spec, _recent(T, [t - 4.0 for t in T]), "ok")[2]
    assert poor.verdict == "bad" and "3.0x persistence" in poor.headline
    hot = _recent([380.0, 384.0, 390.0], [None] * 3, ["ok", "fallback", "fallback"])
    safety, controller, model = health.health_cards(cstr_spec, hot, "fallback")
    assert safety.verdict == "bad" and "beyond its high limit 385 K" in safety.headline
    assert controller.verdict == "warn" and "67 %" in controller.headline
    assert model.verdict == "unknown"
    assert health.health_cards(cstr_spec, health.Recent([], [], {}), "ok")[1].verdict == "unknown"


def test_the_opening_warm_up_is_not_held_against_the_controller(cstr_spec: ProcessSpec) -> None:
    T = [350.0 + 0.1 * k for k in range(20)]
    predicted: list[float | None] = [None] * 4 + [t + 0.05 for t in T[4:]]
    statuses = ["fallback"] * 4 + ["ok"] * 15 + ["fallback"]
    controller = health.health_cards(cstr_spec, _recent(T, predicted, statuses), "ok")[1]
    # 1 of the 16 steps after the 4 warm-up steps fell back
    assert controller.verdict == "ok" and "6 % fallback/stale over 16 steps" in controller.headline
    assert "after 4 of warm-up" in controller.headline
    # fallbacks after the twin began predicting count, and so does a window not at the start
    late = _recent(T, [t + 0.05 for t in T], ["fallback"] * 4 + ["ok"] * 16)
    assert (
        "20 % fallback/stale over 20 steps"
        in health.health_cards(cstr_spec, late, "ok")[1].headline
    )
    shifted = health.Recent(list(range(5, 25)), statuses, _recent(T, predicted).values)
    assert (
        "25 % fallback/stale over 20 steps"
        in health.health_cards(cstr_spec, shifted, "ok")[1].headline
    )


def test_resolve_window() -> None:
    relative = pages.resolve_window("15m", None, None, 0.0, 3_600.0, "all")
    assert (relative.key, relative.start_s, relative.end_s) == ("15m", 2_700.0, None)
    assert pages.resolve_window("1d", None, None, 0.0, 3_600.0, "all").start_s is None
    assert pages.resolve_window(None, None, None, 0.0, 10.0, "all").key == "all"
    custom = pages.resolve_window("15m", 5.0, 8.0, 0.0, 10.0, "all")
    assert (custom.key, custom.start_s, custom.end_s) == ("custom", 5.0, 8.0)
    with pytest.raises(Invalid, match="before end_s"):
        pages.resolve_window(None, 8.0, 5.0, 0.0, 10.0, "all")
    with pytest.raises(Invalid, match="unknown range"):
        pages.resolve_window("week", None, None, 0.0, 10.0, "all")


# ---------------------------------------------------------------- pages


@pytest.fixture
def run_id(session: Session, make_episode) -> int:
    services.register_model(session, "cstr", "jepa", b"w", {}, {})
    return services.store_episode(session, make_episode(30)).id


@pytest.fixture
def loop_id(client: TestClient, session: Session) -> int:
    """A live loop (fake controller) with three steps, the last one too hot."""
    model = services.register_model(session, "cstr", "live", b"w", {}, {})
    start = client.post(
        "/api/loops",
        json={"process": "cstr", "model_id": model.id, "planner": "cem", "setpoints": {"T": 360.0}},
    )
    run = start.json()["run_id"]
    for k, temperature in enumerate((350.0, 352.0, 390.0)):
        body = {
            "time_s": 6.0 * k,
            "measurements": {"Ca": 0.5, "T": temperature, "Caf": 1.0, "Tf": 350.0},
        }
        assert client.post(f"/api/loops/{run}/step", json=body).status_code == 200
    return run


def _assert_offline(html: str) -> None:
    assert '<script src="/static/plotly.min.js"></script>' in html
    assert "cdn" not in html.lower()
    assert "https://" not in html


def _page_config(html: str) -> dict:
    return json.loads(re.search(r"Dash\.runPage\((\{.*?\})\)", html).group(1))


def _figure(html: str, div: str) -> dict:
    found = re.search(rf'<script type="application/json" id="{div}-fig">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def test_index_page(client: TestClient, run_id: int) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.text
    _assert_offline(html)
    assert f'href="/runs/{run_id}"' in html and "iae 12.5" in html  # named, not key=value
    assert "cstr" in html and "jepa" in html
    assert 'name="runs"' in html  # tick runs to compare them
    for link in ('href="/"', 'href="/compare"', 'href="/alarms"', 'href="/models"'):
        assert link in html


def test_index_page_when_empty(client: TestClient) -> None:
    assert "No runs yet" in client.get("/").text


def test_overview_json(client: TestClient, loop_id: int, run_id: int) -> None:
    body = client.get("/dash/api/overview").json()
    (cstr,) = [p for p in body["processes"] if p["name"] == "cstr"]
    loops = {row["run_id"]: row for row in cstr["loops"]}
    loop = loops[loop_id]
    assert loop["status"] in ("ok", "fallback") and loop["run_status"] == "running"
    assert loop["model"]["name"] == "live" and loop["last_step"] == 2
    assert {"tag": "T", "value": 360.0, "unit": "K"} in loop["setpoints"]
    assert [r["tag"] for r in loop["actuators"]] == ["Tc"]
    safety = next(card for card in loop["health"] if card["key"] == "safety")
    assert safety["verdict"] == "bad"  # 390 K is beyond the 385 K limit
    assert any(a["kind"] == "limit_violation" for a in loop["alarms"])
    assert body["open_alarms"] >= 1 and cstr["status"] in ("ok", "fallback")
    assert run_id in loops and loops[run_id]["status"] == "stopped"  # a stored episode
    client.post(f"/api/loops/{loop_id}/stop")
    after = client.get("/dash/api/overview").json()
    (cstr,) = [p for p in after["processes"] if p["name"] == "cstr"]
    assert {r["run_id"]: r["status"] for r in cstr["loops"]}[loop_id] == "stopped"


def test_run_page(client: TestClient, run_id: int) -> None:
    response = client.get(f"/runs/{run_id}")
    assert response.status_code == 200
    html = response.text
    _assert_offline(html)
    assert "T [K]" in html and 'data-card="safety"' in html
    assert 'name="step"' in html and 'value="14"' in html  # middle step by default
    figure = _figure(html, "run-plot")
    plan = next(t for t in figure["data"] if t.get("meta") == "plan/T")
    assert plan["x"][0] == pytest.approx(14 * 6.0 + 6.0)
    assert any(s.get("name", "").startswith("span:fallback") for s in figure["layout"]["shapes"])
    config = _page_config(html)
    assert (config["live"], config["range"]["key"], config["points"]) == (False, "all", 30)
    chosen = _figure(client.get(f"/runs/{run_id}", params={"step": 3}).text, "run-plot")
    assert next(t for t in chosen["data"] if t.get("meta") == "plan/T")["x"][0] == 24.0


def test_run_page_tags(client: TestClient, run_id: int) -> None:
    html = client.get(f"/runs/{run_id}", params={"tags": ["T", "Tc"]}).text
    metas = {t.get("meta") for t in _figure(html, "run-plot")["data"]}
    assert "sensor/T" in metas and "actuator/Tc" in metas and "sensor/Ca" not in metas
    assert _page_config(html)["tags"] == ["T", "Tc"]
    window = client.get(f"/dash/api/runs/{run_id}/window", params={"tags": "Ca"}).json()
    assert set(window["traces"]) == {"sensor/Ca"}
    bad = client.get(f"/runs/{run_id}", params={"tags": "nope"})
    assert bad.status_code == 422 and "unknown tag(s) nope" in bad.text


def test_run_page_time_range(client: TestClient, run_id: int) -> None:
    html = client.get(f"/runs/{run_id}", params={"range": "15m"}).text  # the whole run
    assert _page_config(html)["points"] == 30
    html = client.get(f"/runs/{run_id}", params={"start_s": 60.0, "end_s": 90.0}).text
    config = _page_config(html)
    assert config["range"] == {"key": "custom", "start_s": 60.0, "end_s": 90.0}
    measured = next(t for t in _figure(html, "run-plot")["data"] if t["meta"] == "sensor/T")
    assert measured["x"][0] >= 60.0 and measured["x"][-1] <= 90.0 and len(measured["x"]) == 6
    bad = client.get(f"/runs/{run_id}", params={"start_s": 90.0, "end_s": 60.0})
    assert bad.status_code == 422 and "before end_s" in bad.text
    assert client.get(f"/runs/{run_id}", params={"range": "week"}).status_code == 422


def test_live_loop_page_and_tail(client: TestClient, loop_id: int) -> None:
    html = client.get(f"/runs/{loop_id}").text
    config = _page_config(html)
    assert config["live"] is True and config["lastStep"] == 2
    assert config["range"]["key"] == "1h" and 'id="refresh"' in html
    assert '<option value="5" selected>' in html
    fast = client.get(f"/runs/{loop_id}", params={"refresh": 2}).text
    assert '<option value="2" selected>' in fast  # Grafana's ?refresh=
    assert client.get(f"/runs/{loop_id}", params={"refresh": -1}).status_code == 422
    tail = client.get(f"/dash/api/runs/{loop_id}/tail", params={"after_step": 0}).json()
    assert tail["last_step"] == 2 and tail["traces"]["sensor/T"]["y"] == [352.0, 390.0]
    assert tail["traces"]["sensor/T"]["x"] == [6.0, 12.0]
    assert tail["now"] == {"time_s": 12.0, "step": 2}
    assert tail["plan"]["plan/T"]["x"][0] == pytest.approx(18.0)
    assert tail["loop_status"] in ("ok", "fallback") and not tail["reload"]
    nothing = client.get(f"/dash/api/runs/{loop_id}/tail", params={"after_step": 2}).json()
    assert nothing["traces"] == {} and nothing["last_step"] == 2
    step = {"time_s": 18.0, "measurements": {"Ca": 0.5, "T": 361.0, "Caf": 1.0, "Tf": 350.0}}
    client.post(f"/api/loops/{loop_id}/step", json=step)
    more = client.get(f"/dash/api/runs/{loop_id}/tail", params={"after_step": 2}).json()
    assert more["traces"]["sensor/T"] == {"x": [18.0], "y": [361.0]}


def test_tail_asks_for_a_reload_after_a_long_absence(
    client: TestClient, session: Session, make_episode, monkeypatch
) -> None:
    run = services.store_episode(session, make_episode(12)).id
    monkeypatch.setattr(run_pages, "MAX_TAIL_STEPS", 5)
    body = client.get(f"/dash/api/runs/{run}/tail", params={"after_step": 2}).json()
    assert body["reload"] is True and body["traces"] == {}


def test_run_window(client: TestClient, run_id: int) -> None:
    body = client.get(
        f"/dash/api/runs/{run_id}/window", params={"start_s": 30.0, "end_s": 60.0}
    ).json()
    assert body["traces"]["sensor/T"]["x"] == [30.0, 36.0, 42.0, 48.0, 54.0, 60.0]
    assert body["stride"] == 1 and body["points"] == 6
    assert (body["last_step"], body["last_s"]) == (29, 29 * 6.0)  # where a tail goes on
    assert [s["status"] for s in body["spans"]] == ["fallback"]  # the event at step 10
    coarse = client.get(f"/dash/api/runs/{run_id}/window", params={"max_points": 10}).json()
    assert coarse["points"] <= 10 + 2 and coarse["stride"] > 1  # downsampled
    assert (
        client.get(f"/dash/api/runs/{run_id}/window", params={"start_s": 5, "end_s": 1}).status_code
        == 422
    )
    assert client.get("/dash/api/runs/999/window").status_code == 404


def test_run_page_unknown_run(client: TestClient) -> None:
    response = client.get("/runs/987")
    assert response.status_code == 404
    assert "unknown run id 987" in response.text and "<html" in response.text


def test_compare_page(client: TestClient, session: Session, make_episode) -> None:
    first = services.store_episode(session, make_episode(20)).id
    second_episode = make_episode(30)
    second_episode.metrics = {"cost": 3.0, "violations": 1, "fallbacks": 2}
    second = services.store_episode(session, second_episode, kind="replay").id
    response = client.get("/compare", params={"runs": [first, second]})
    assert response.status_code == 200, response.text
    html = response.text
    _assert_offline(html)
    assert f'data-run="{first}"' in html and f'data-run="{second}"' in html
    assert "constraint violations" in html and "planning time median" in html
    figure = _figure(html, "compare-plot")
    metas = {t.get("meta") for t in figure["data"]}
    assert {f"run{first}/sensor/T", f"run{second}/sensor/T"} <= metas
    window = client.get(
        "/dash/api/compare/window", params={"runs": [first, second], "start_s": 0, "end_s": 30}
    ).json()
    assert window["traces"][f"run{second}/sensor/T"]["x"][-1] == 30.0


def test_compare_page_errors(client: TestClient, session: Session, make_episode) -> None:
    cstr_run = services.store_episode(session, make_episode(5)).id
    other = make_episode(5)
    other.process = "turbofan"
    other.steps = []
    turbofan_run = services.store_episode(session, other).id
    unknown = client.get("/compare", params={"runs": [cstr_run, 4242]})
    assert unknown.status_code == 404 and "unknown run id 4242" in unknown.text
    mixed = client.get("/compare", params={"runs": [cstr_run, turbofan_run]})
    assert mixed.status_code == 422 and "different processes" in mixed.text
    single = client.get("/compare", params={"runs": [cstr_run, cstr_run]})
    assert single.status_code == 422 and "at least two" in single.text
    assert client.get("/compare", params={"runs": "x"}).status_code == 422
    chooser = client.get("/compare")
    assert chooser.status_code == 200 and f'value="{cstr_run}"' in chooser.text


def test_static_files_are_a_fixed_list(client: TestClient) -> None:
    assert "Dash.runPage" in client.get("/dash/static/dash.js").text
    assert client.get("/dash/static/dash.css").status_code == 200
    assert client.get("/dash/static/..%2Fpages.py").status_code == 404
    assert client.get("/dash/static/pages.py").status_code == 404


def test_plotly_js_is_served_locally(client: TestClient) -> None:
    response = client.get("/static/plotly.min.js")
    assert response.status_code == 200
    assert "javascript" in response.headers["content-type"]
    assert len(response.content) > 1_000_000 and b"plotly" in response.content[:2000].lower()
