"""The operator's controls of a live loop's page in a real browser: an operator logs in,
switches the loop to standby through the page's form with a reason, and the API then
reports standby and the audit log holds the reason; sets economic directions through the
page's selects; takes an actuator out of service and back, and the loop holds it while
out; a viewer sees the settings read-only.

A real uvicorn server with keys required, on a temporary SQLite database, drives the loop
with the fake controller of tests/test_operator_controls.py (the page, not the twin, is
under test); the out-of-service test has a loop of its own that the tiny CSTR twin drives,
closed through the API on the CSTR simulator, so that what the loop sends can be checked.
Chromium and the page fixture are tests/test_browser.py's, which skips this module with
the reason where playwright or Chromium is missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import test_browser as browser_tests
from test_browser import Page, _free_port
from test_operator_controls import GOOD, OperatedFake

from api import services
from api.app import create_app
from api.db import make_engine, make_session_factory
from api.migrate import upgrade
from api.settings import Settings
from processes import cstr

pytestmark = pytest.mark.browser
# Chromium and a recording page, under the names pytest finds them by
browser, page = browser_tests.browser, browser_tests.page


@dataclass
class LoopSite:
    url: str
    loop_run: int
    keys: dict[str, str]  # role -> API key

    def get(self, path: str, role: str = "viewer") -> Any:
        headers = {"Authorization": f"Bearer {self.keys[role]}"}
        response = httpx.get(f"{self.url}{path}", headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def step(self, k: int, measurements: dict[str, float]) -> dict[str, Any]:
        """Post the loop's step `k` as the operator; its answer."""
        response = httpx.post(
            f"{self.url}/api/loops/{self.loop_run}/step",
            json={"time_s": k * cstr.SAMPLE_PERIOD_S, "measurements": measurements},
            headers={"Authorization": f"Bearer {self.keys['operator']}"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def audit(self) -> list[dict[str, Any]]:
        """The loop's operator changes in the audit log, newest first."""
        return self.get(f"/api/audit?action=loop.operator&target=run:{self.loop_run}", "admin")


@contextmanager
def serving(folder: Path, weights: bytes, controller_factory: Any = None) -> Iterator[LoopSite]:
    """A CSTR loop (T at 360 K) on a real server with keys required, its model `weights`,
    driven by `controller_factory`'s controller (None: the twin the weights are)."""
    from api.services import auth

    url = f"sqlite:///{folder / 'twin.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        model_id = services.register_model(session, "cstr", "fake", weights, {}, {}).id
        keys = {
            role: auth.create_key(session, f"{role}-key", role, auth.cli_actor())[1]
            for role in ("viewer", "operator", "admin")
        }
    engine.dispose()
    factory = {} if controller_factory is None else {"controller_factory": controller_factory}
    app = create_app(Settings(database_url=url, auth_required=True), **factory)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{server.config.port}"
    start = httpx.post(
        f"{base}/api/loops",
        json={"process": "cstr", "model_id": model_id, "planner": "cem", "setpoints": {"T": 360.0}},
        headers={"Authorization": f"Bearer {keys['operator']}"},
        timeout=60,
    )
    assert start.status_code == 201, start.text
    try:
        yield LoopSite(base, start.json()["run_id"], keys)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def loop_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopSite]:
    folder = tmp_path_factory.mktemp("operator-page")
    with serving(folder, b"weights", lambda checkpoint, planner: OperatedFake(cstr.SPEC)) as site:
        for k in range(3):
            site.step(k, GOOD)
        yield site


@dataclass
class TwinLoop:
    """A loop the tiny CSTR twin drives, closed through the API on the CSTR simulator."""

    site: LoopSite
    plant: cstr.CSTRSimulator
    steps: int = 0

    def run(self, count: int) -> list[float]:
        """`count` more samples; the coolant temperature the loop sent at each."""
        sent = []
        for _ in range(count):
            answer = self.site.step(self.steps, self.plant.measure())
            self.plant.step(answer["actuators"]["Tc"])
            sent.append(answer["actuators"]["Tc"])
            self.steps += 1
        return sent


@pytest.fixture(scope="module")
def twin_loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwinLoop]:
    import torch
    from twin_fixtures import tiny_twin

    torch.set_num_threads(1)  # a shared machine: threads only fight each other
    folder = tmp_path_factory.mktemp("operator-twin-page")
    with serving(folder, tiny_twin()[0].to_bytes()) as site:
        loop = TwinLoop(site, cstr.CSTRSimulator(seed=4))
        loop.run(12)  # past the twin's warm-up: it plans
        yield loop


def uvicorn_server(app: Any) -> Any:
    import uvicorn

    config = uvicorn.Config(app, host="127.0.0.1", port=_free_port(), log_level="warning")
    return uvicorn.Server(config)


def _log_in(page: Page, site: LoopSite, role: str) -> None:
    page.open(f"{site.url}/login?next=/runs/{site.loop_run}")
    # before a session, the login page's own scripts are refused (behind the page role),
    # which the browser logs; what follows the login must log nothing
    page.errors.clear()
    page.page.fill("#api_key", site.keys[role])
    page.page.click("form.login button[type=submit]")
    page.page.wait_for_url(f"**/runs/{site.loop_run}")


def test_an_operator_switches_the_loop_to_standby_on_its_page(
    page: Page, loop_site: LoopSite
) -> None:
    _log_in(page, loop_site, "operator")
    form = page.page.locator("#operator-form")
    assert form.locator("#operator-mode").input_value() == "on"
    form.locator("#operator-mode").select_option("standby")
    form.locator("tr[data-sensor='T'] input[name=range_low]").fill("340")
    # half a range is refused on the page, before anything is sent
    form.locator("#operator-reason").fill("feed pump swap")
    form.locator("#operator-apply").click()
    page.page.wait_for_function(
        "document.getElementById('operator-status').textContent.includes('both a low and a high')"
    )
    assert loop_site.get(f"/api/loops/{loop_site.loop_run}/operator")["mode"] == "on"
    form.locator("tr[data-sensor='T'] input[name=range_high]").fill("355")
    with page.page.expect_navigation():  # the page reloads once the change is taken
        form.locator("#operator-apply").click()
    settings = loop_site.get(f"/api/loops/{loop_site.loop_run}/operator")
    assert settings["mode"] == "standby"
    assert settings["ranges"] == {"T": {"low": 340.0, "high": 355.0}}
    assert page.page.locator("#operator-mode").input_value() == "standby"
    audit = loop_site.get(
        f"/api/audit?action=loop.operator&target=run:{loop_site.loop_run}", "admin"
    )
    assert len(audit) == 1
    assert audit[0]["actor"] == "operator-key"
    assert audit[0]["detail"]["reason"] == "feed pump swap"
    assert "controller mode on -> standby" in audit[0]["detail"]["changes"]


def _apply(page: Page, reason: str) -> None:
    """Give the reason and apply; the page reloads once the change is taken."""
    form = page.page.locator("#operator-form")
    form.locator("#operator-reason").fill(reason)
    with page.page.expect_navigation():
        form.locator("#operator-apply").click()


def test_an_operator_sets_economic_directions_through_the_selects(
    page: Page, loop_site: LoopSite
) -> None:
    _log_in(page, loop_site, "operator")
    form = page.page.locator("#operator-form")
    coolant = form.locator("tr[data-actuator='Tc'] select[name=economic]")
    conversion = form.locator("tr[data-sensor='Ca'] select[name=economic]")
    assert coolant.input_value() == "" and conversion.input_value() == ""
    changes_before = len(loop_site.audit())
    coolant.select_option("maximise")
    conversion.select_option("minimise")
    _apply(page, "warmer coolant is cheaper")
    settings = loop_site.get(f"/api/loops/{loop_site.loop_run}/operator")
    assert settings["economic"] == {"Ca": "minimise", "Tc": "maximise"}
    assert coolant.input_value() == "maximise" and conversion.input_value() == "minimise"
    audit = loop_site.audit()
    assert len(audit) == changes_before + 1
    assert audit[0]["actor"] == "operator-key"
    assert audit[0]["detail"]["reason"] == "warmer coolant is cheaper"
    for change in ("Ca economic direction: minimise", "Tc economic direction: maximise"):
        assert change in audit[0]["detail"]["changes"]
    # "none" clears one direction and leaves the other
    coolant.select_option(label="none")
    _apply(page, "coolant price back to normal")
    settings = loop_site.get(f"/api/loops/{loop_site.loop_run}/operator")
    assert settings["economic"] == {"Ca": "minimise"}
    assert coolant.input_value() == ""
    audit = loop_site.audit()
    assert len(audit) == changes_before + 2
    assert "economic direction on Tc (maximise) cleared" in audit[0]["detail"]["changes"]


def test_an_operator_takes_an_actuator_out_of_service_and_back(
    page: Page, twin_loop: TwinLoop
) -> None:
    """While out of service the loop sends the coolant temperature it last sent, whatever
    the twin would do; back in service it moves it again, within its rate limit."""
    site = twin_loop.site
    held_at = twin_loop.run(1)[-1]
    _log_in(page, site, "operator")
    box = page.page.locator("#operator-form tr[data-actuator='Tc'] input[name=out_of_service]")
    assert not box.is_checked()
    box.check()
    _apply(page, "coolant valve stroke test")
    assert site.get(f"/api/loops/{site.loop_run}/operator")["out_of_service"] == ["Tc"]
    assert box.is_checked()
    audit = site.audit()
    assert audit[0]["detail"]["reason"] == "coolant valve stroke test"
    assert "actuator Tc out of service" in audit[0]["detail"]["changes"]
    assert twin_loop.run(6) == [held_at] * 6

    box.uncheck()
    _apply(page, "stroke test done")
    assert site.get(f"/api/loops/{site.loop_run}/operator")["out_of_service"] == []
    assert not box.is_checked()
    audit = site.audit()
    assert len(audit) == 2 and audit[0]["detail"]["reason"] == "stroke test done"
    assert "actuator Tc back in service" in audit[0]["detail"]["changes"]
    # the twin moves it again (a tracking plan on a noisy plant moves within a few samples)
    sent = [held_at]
    while sent[-1] == held_at and len(sent) <= 30:
        sent += twin_loop.run(1)
    assert sent[-1] != held_at, "the coolant stayed where it was held after 30 samples"
    rate = cstr.SPEC.rate_limit_per_sample(cstr.SPEC.tag("Tc"))
    assert np.all(np.abs(np.diff(sent)) <= rate + 1e-9)


def test_a_viewer_sees_the_settings_read_only(page: Page, loop_site: LoopSite) -> None:
    _log_in(page, loop_site, "viewer")
    panel = page.page.locator("#operator-form")
    panel.wait_for()
    assert panel.locator("select, input, button").count() == 0
    assert "changing these needs the operator role" in panel.inner_text()
    mode = loop_site.get(f"/api/loops/{loop_site.loop_run}/operator")["mode"]
    assert panel.locator("#operator-mode").inner_text() == mode
