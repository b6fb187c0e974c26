"""The dashboards in a real browser: Debian's chromium, headless, driven by Playwright.

A real uvicorn server on a free loopback port serves a temporary SQLite database seeded
by real code: a CSTR baseline episode and a twin-controlled one (a tiny twin trained
here, `processes.cstr.run_episode` + `api.services.store_episode`), and a live loop that
the same twin drives through the HTTP API with CSTR measurements. Every page must load
with no console error and with plots that hold data; the time-range picker must change
what is shown; zooming must re-query a finer window; a step posted while the live page
is open must appear without a reload. Screenshots go to test-artifacts/screenshots/.

Skipped, with the reason, where playwright or the chromium package is missing
(`pip install -e '.[dev]'`, `apt-get install chromium`; `.ci/run` installs both).
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path(os.environ.get("TWIN_CHROMIUM", "/usr/bin/chromium"))
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
)
if not CHROMIUM.is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `apt-get install chromium` (CI's .ci/run does) "
        "or set TWIN_CHROMIUM",
        allow_module_level=True,
    )

import uvicorn  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from api import services  # noqa: E402
from api.app import create_app  # noqa: E402
from api.db import make_engine, make_session_factory  # noqa: E402
from api.migrate import upgrade  # noqa: E402
from api.settings import Settings  # noqa: E402
from processes import cstr  # noqa: E402

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "screenshots"
EPISODE_STEPS = 120
LIVE_STEPS = 12
SAMPLE_S = cstr.SPEC.sample_period_s
TIMEOUT_MS = 60_000  # generous: a busy CI machine, not an idle one


@dataclass
class Site:
    url: str
    baseline_run: int
    twin_run: int
    loop_run: int
    model_id: int
    loop_measurements: list[dict[str, float]]
    next_loop_step: int = LIVE_STEPS
    database_url: str = ""

    def post_loop_step(self) -> float:
        """Post the loop's next CSTR sample; returns its time [s]."""
        k = self.next_loop_step
        time_s = SAMPLE_S * k
        body = {
            "time_s": time_s,
            "measurements": self.loop_measurements[k % len(self.loop_measurements)],
        }
        response = httpx.post(f"{self.url}/api/loops/{self.loop_run}/step", json=body, timeout=30)
        assert response.status_code == 200, response.text
        self.next_loop_step += 1
        return time_s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _seed(session: Session) -> tuple[int, int, int, list[dict[str, float]]]:
    """A baseline episode, a twin episode (tiny twin, CEM) and the twin's model id."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from twin_fixtures import tiny_twin

    torch.set_num_threads(1)  # a shared CI machine: threads only fight each other

    from twin.controller import TwinController

    twin, _ = tiny_twin()
    model = services.register_model(session, "cstr", "tiny", twin.to_bytes(), {}, {})
    scenario = dataclasses.replace(cstr.benchmark_scenario(), steps=EPISODE_STEPS)
    baseline = cstr.run_episode(cstr.baseline_policy(), "baseline", scenario, seed=3)
    controller = TwinController.from_twin(twin, "cem", fallback=cstr.baseline_fallback())
    twin_episode = cstr.run_episode(
        cstr.twin_policy(controller), "twin/cem", scenario, seed=3, config={"planner": "cem"}
    )
    baseline_run = services.store_episode(session, baseline).id
    twin_run = services.store_episode(session, twin_episode, model_id=model.id).id
    measurements = [dict(s.measurements) for s in baseline.steps]
    return baseline_run, twin_run, model.id, measurements


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'twin.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        baseline_run, twin_run, model_id, measurements = _seed(session)
    engine.dispose()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(Settings(database_url=url)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    start = httpx.post(
        f"{base}/api/loops",
        json={"process": "cstr", "model_id": model_id, "planner": "cem", "setpoints": {"T": 360.0}},
        timeout=60,
    )
    assert start.status_code == 201, start.text
    live = Site(
        base,
        baseline_run,
        twin_run,
        start.json()["run_id"],
        model_id,
        measurements,
        next_loop_step=0,
        database_url=url,
    )
    for _ in range(LIVE_STEPS):
        live.post_loop_step()
    try:
        yield live
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        try:
            yield chromium
        finally:
            chromium.close()


class Page:
    """A browser page that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, name: str) -> None:
        self.name = name
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def open(self, url: str) -> Any:
        response = self.page.goto(url)
        return response

    def rendered(self) -> None:
        self.page.wait_for_function("window.dashState && window.dashState.rendered !== null")

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def trace(self, div: str, meta: str) -> dict[str, Any]:
        return self.js(
            "([div, meta]) => { const t = document.getElementById(div).data"
            ".find((t) => t.meta === meta); return t ? {x: Array.from(t.x), "
            "y: Array.from(t.y)} : null; }",
            [div, meta],
        )

    def close(self, check_console: bool = True) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{self.name}.png"), full_page=True)
        self.context.close()
        if check_console:
            assert self.errors == [], f"console errors on {self.name}: {self.errors}"


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Page]:
    opened = Page(browser, request.node.name.removeprefix("test_"))
    yield opened
    opened.close(check_console=not request.node.get_closest_marker("console_errors_expected"))


def _wait(page: Page, condition: str, arg: Any = None) -> None:
    page.page.wait_for_function(condition, arg=arg)


# ---------------------------------------------------------------- pages


def test_overview(page: Page, site: Site) -> None:
    assert page.open(f"{site.url}/?refresh=1").status == 200
    page.rendered()
    row = page.page.locator(f'tr[data-loop="{site.loop_run}"]')
    row.wait_for()
    assert row.locator("[data-status]").inner_text() in ("ok", "fallback", "stale")
    assert "tiny v1" in row.inner_text() and "T = 360 K" in row.inner_text()
    assert row.locator(".dots span").count() == 3  # safe, controller, model at a glance
    assert page.page.locator('[data-process="cstr"]').count() == 1
    page.js("window.notReloaded = true")
    before = row.inner_text()
    site.post_loop_step()
    # The page polls (every second: ?refresh=1) and rewrites the row in place.
    _wait(page, "window.dashState.polls >= 1")
    _wait(
        page,
        "([id, step]) => document.querySelector(`tr[data-loop='${id}']`)"
        ".innerText.includes(`step ${step}`)",
        [site.loop_run, site.next_loop_step - 1],
    )
    assert page.js("window.notReloaded") is True
    assert row.inner_text() != before


def test_run_page_shows_plots_and_the_picker_changes_them(page: Page, site: Site) -> None:
    assert page.open(f"{site.url}/runs/{site.twin_run}").status == 200
    page.rendered()
    measured = page.trace("run-plot", "sensor/T")
    assert len(measured["x"]) == EPISODE_STEPS and None not in measured["y"]
    assert len(page.trace("run-plot", "actuator/Tc")["y"]) == EPISODE_STEPS
    assert len(page.trace("run-plot", "setpoint/T")["y"]) == EPISODE_STEPS
    plan = page.trace("run-plot", "plan/T")
    assert plan["x"] and min(plan["x"]) > EPISODE_STEPS // 2 * SAMPLE_S - 1e-9  # ahead of now
    axes = page.js("document.getElementById('run-plot').layout")
    titles = {axes[k]["title"]["text"] for k in axes if k.startswith("yaxis")}
    assert {"T [K]", "Ca [mol/L]", "Tc [K]"} <= titles
    # A custom range: only its points are shown, and the axis spans it.
    page.page.fill("#custom-range input[name=start_s]", "120")
    page.page.fill("#custom-range input[name=end_s]", "300")
    page.page.click("#custom-range [data-custom]")
    _wait(page, "window.dashState.windowLoads >= 1")
    window = page.trace("run-plot", "sensor/T")
    assert min(window["x"]) >= 120.0 and max(window["x"]) <= 300.0
    assert len(window["x"]) == int((300 - 120) / SAMPLE_S) + 1
    axis = page.js("document.getElementById('run-plot').layout.xaxis.range")
    assert axis == [120, 300]
    assert "start_s=120" in page.page.url
    page.page.click("[data-range=all]")
    _wait(page, "window.dashState.windowLoads >= 2")
    assert len(page.trace("run-plot", "sensor/T")["x"]) == EPISODE_STEPS


def test_relative_range_and_zoom_requery(page: Page, site: Site) -> None:
    page.open(f"{site.url}/runs/{site.baseline_run}?range=15m")
    page.rendered()
    last_s = SAMPLE_S * (EPISODE_STEPS - 1)
    shown = page.trace("run-plot", "sensor/T")["x"]
    assert min(shown) >= last_s - 900 and max(shown) == last_s
    page.page.click("[data-range=all]")
    _wait(page, "window.dashState.windowLoads >= 1")
    assert len(page.trace("run-plot", "sensor/T")["x"]) == EPISODE_STEPS
    # Zooming (a relayout, as a drag does) fetches that window again from the server.
    page.js("Plotly.relayout(document.getElementById('run-plot'), {'xaxis.range': [60, 120]})")
    _wait(page, "window.dashState.windowLoads >= 2")
    zoomed = page.trace("run-plot", "sensor/T")["x"]
    assert min(zoomed) >= 60 and max(zoomed) <= 120 and len(zoomed) == 11
    assert page.page.input_value("#custom-range input[name=start_s]") == "60"
    assert page.page.locator("[data-range].active").count() == 0


def test_live_loop_appends_without_reload(page: Page, site: Site) -> None:
    assert page.open(f"{site.url}/runs/{site.loop_run}?refresh=1").status == 200
    page.rendered()
    page.js("window.notReloaded = true")
    before = page.trace("run-plot", "sensor/T")["x"]
    assert len(before) == site.next_loop_step
    plan = page.trace("run-plot", "plan/Tc")
    assert plan["x"] and min(plan["x"]) > max(before)  # the plan is drawn ahead of now
    assert all(cstr.SPEC.tag("Tc").low <= v <= cstr.SPEC.tag("Tc").high for v in plan["y"])
    new_time = site.post_loop_step()
    _wait(page, "window.dashState.appended > 0")
    after = page.trace("run-plot", "sensor/T")["x"]
    assert after == before + [new_time]
    assert page.js("window.notReloaded") is True
    now = page.js(
        "document.getElementById('run-plot').layout.shapes.find((s) => s.name === 'now').x0"
    )
    assert now == new_time
    assert min(page.trace("run-plot", "plan/Tc")["x"]) > new_time
    status = page.page.locator("#loop-status").inner_text()
    assert status in ("ok", "fallback", "stale")


def test_compare_runs(page: Page, site: Site) -> None:
    url = f"{site.url}/compare?runs={site.twin_run}&runs={site.baseline_run}"
    assert page.open(url).status == 200
    page.rendered()
    rows = page.page.locator("#summary tr[data-run]")
    assert rows.count() == 2
    assert "cost" in page.page.locator("#summary").inner_text()
    for run in (site.twin_run, site.baseline_run):
        assert len(page.trace("compare-plot", f"run{run}/sensor/T")["x"]) == EPISODE_STEPS
    page.js("Plotly.relayout(document.getElementById('compare-plot'), {'xaxis.range': [0, 60]})")
    _wait(page, "window.dashState.windowLoads >= 1")
    assert max(page.trace("compare-plot", f"run{site.twin_run}/sensor/T")["x"]) <= 60


@pytest.mark.console_errors_expected  # the browser logs the 4xx of the document itself
def test_compare_refuses_unknown_runs(page: Page, site: Site) -> None:
    response = page.open(f"{site.url}/compare?runs={site.twin_run}&runs=987654")
    assert response.status == 404
    assert "unknown run id 987654" in page.page.locator(".error[data-status]").inner_text()


def test_live_page_redraws_after_a_long_absence(
    page: Page, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More new steps than a tail may carry: the page draws the window afresh, then goes
    on appending from its last step (the server runs in this process: patchable)."""
    from dashboards import run_pages

    page.open(f"{site.url}/runs/{site.loop_run}?refresh=1")
    page.rendered()
    monkeypatch.setattr(run_pages, "MAX_TAIL_STEPS", 2)
    times = [site.post_loop_step() for _ in range(3)]
    _wait(page, "window.dashState.windowLoads >= 1")
    shown = page.trace("run-plot", "sensor/T")["x"]
    assert shown[-1] == times[-1] and len(shown) == site.next_loop_step
    monkeypatch.setattr(run_pages, "MAX_TAIL_STEPS", 2_000)
    newest = site.post_loop_step()
    _wait(page, "window.dashState.appended > 0")
    assert page.trace("run-plot", "sensor/T")["x"][-2:] == [times[-1], newest]


# ---------------------------------------------------------------- navigation and login


def _offline(page: Page, base: str) -> list[str]:
    """Refuse every request that leaves this server, as an offline plant network would;
    returns the list the refused addresses are collected in."""
    refused: list[str] = []

    def route(handle: Any) -> None:
        if handle.request.url.startswith(base):
            handle.continue_()
        else:
            refused.append(handle.request.url)
            handle.abort()

    page.page.route("**/*", route)
    return refused


def test_api_docs_render_offline(page: Page, site: Site) -> None:
    refused = _offline(page, site.url)
    assert page.open(f"{site.url}/docs").status == 200
    page.page.locator(".swagger-ui .info .title").wait_for()
    assert "plant-twin" in page.page.locator(".swagger-ui .info .title").inner_text()
    page.page.locator(".opblock").first.wait_for()  # the operations are listed
    assert page.page.locator(".opblock").count() > 10
    assert page.open(f"{site.url}/redoc").status == 200
    page.page.locator("redoc h1, [role=main] h1, h1").first.wait_for()
    assert "plant-twin" in page.page.locator("h1").first.inner_text()
    assert refused == [], f"the docs asked for outside files: {refused}"


def test_every_top_bar_link_opens_a_page(page: Page, site: Site) -> None:
    page.open(f"{site.url}/")
    links = page.page.locator("nav.top a").evaluate_all("(as) => as.map((a) => a.href)")
    assert len(links) >= 6
    for link in dict.fromkeys(link.split("#")[0] for link in links):  # /#runs is /
        response = page.open(link)
        assert response.status == 200, link
        assert response.headers["content-type"].startswith("text/html"), link
        assert page.page.locator("nav.top, #swagger-ui").count() >= 1, link
    for missing in ("/models/987654", "/runs/987654"):
        response = page.open(f"{site.url}{missing}")
        assert response.status == 404 and response.headers["content-type"].startswith(
            "text/html"
        ), missing
    page.errors.clear()  # the 404 documents above are logged by the browser on purpose


def test_models_list_and_training_page(page: Page, site: Site) -> None:
    assert page.open(f"{site.url}/models").status == 200
    row = page.page.locator(f'tr[data-model="{site.model_id}"]')
    assert "tiny v1" in row.inner_text()
    row.locator(f'a[href="/models/{site.model_id}"]').first.click()
    page.page.wait_for_url(f"**/models/{site.model_id}")


def test_trend_ticks_read_clock_time(page: Page, site: Site) -> None:
    page.open(f"{site.url}/runs/{site.baseline_run}")
    page.rendered()
    _wait(page, "document.getElementById('run-plot').dataset.clock === '1'")
    labels = page.js(
        "Array.from(document.querySelectorAll('#run-plot .xaxislayer-above "
        "text[data-seconds]'), (t) => t.textContent)"
    )
    assert labels and all(re.fullmatch(r"\d\d:\d\d:\d\d", text) for text in labels), labels
    assert "plan made at step" in page.js(
        "document.getElementById('run-plot').layout.annotations.map((a) => a.text).join()"
    )


@pytest.fixture(scope="module")
def secure_site(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A second server on the same database with keys required, and an operator's key."""
    from api.services import auth

    url = site.database_url
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        _, token = auth.create_key(session, "olga", "operator", auth.cli_actor())
    engine.dispose()
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(Settings(database_url=url, auth_required=True)),
            host="127.0.0.1",
            port=port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", token
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_login_page_session_cookie_and_logout(page: Page, secure_site: tuple[str, str]) -> None:
    base, token = secure_site
    page.open(f"{base}/models")  # no session: sent to the login page
    page.page.wait_for_url("**/login?next=/models")
    page.page.fill("#api_key", "twin_000000000000_wrong")
    page.page.click("form.login button[type=submit]")
    assert "unknown API key" in page.page.locator("#login-error").inner_text()
    page.page.fill("#api_key", token)
    page.page.click("form.login button[type=submit]")
    page.page.wait_for_url("**/models")
    assert "olga" in page.page.locator("#who").inner_text()
    assert "operator" in page.page.locator("#who").inner_text()
    cookie = next(c for c in page.context.cookies() if c["name"] == "twin_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax"
    assert "twin_session" not in page.js("document.cookie")  # no script can read it
    assert token not in cookie["value"]
    page.page.click("#logout")
    page.page.wait_for_url("**/login")
    page.open(f"{base}/")
    page.page.wait_for_url("**/login?next=/")
    page.errors.clear()  # the refused key's 401 page is logged by the browser on purpose
