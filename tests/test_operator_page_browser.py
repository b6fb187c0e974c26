"""The operator's controls of a live loop's page in a real browser: an operator logs in,
switches the loop to standby through the page's form with a reason, and the API then
reports standby and the audit log holds the reason; a viewer sees the settings read-only.

A real uvicorn server with keys required, on a temporary SQLite database, drives the loop
with the fake controller of tests/test_operator_controls.py (the page, not the twin, is
under test). Chromium and the page fixture are tests/test_browser.py's, which skips this
module with the reason where playwright or Chromium is missing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
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


@pytest.fixture(scope="module")
def loop_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopSite]:
    from api.services import auth

    url = f"sqlite:///{tmp_path_factory.mktemp('operator-page') / 'twin.db'}"
    upgrade(url)
    engine = make_engine(url)
    with make_session_factory(engine)() as session:
        model_id = services.register_model(session, "cstr", "fake", b"weights", {}, {}).id
        keys = {
            role: auth.create_key(session, f"{role}-key", role, auth.cli_actor())[1]
            for role in ("viewer", "operator", "admin")
        }
    engine.dispose()
    app = create_app(
        Settings(database_url=url, auth_required=True),
        controller_factory=lambda checkpoint, planner: OperatedFake(cstr.SPEC),
    )
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{server.config.port}"
    operator = {"Authorization": f"Bearer {keys['operator']}"}
    start = httpx.post(
        f"{base}/api/loops",
        json={"process": "cstr", "model_id": model_id, "planner": "cem", "setpoints": {"T": 360.0}},
        headers=operator,
        timeout=60,
    )
    assert start.status_code == 201, start.text
    run_id = start.json()["run_id"]
    for k in range(3):
        step = httpx.post(
            f"{base}/api/loops/{run_id}/step",
            json={"time_s": k * cstr.SAMPLE_PERIOD_S, "measurements": GOOD},
            headers=operator,
            timeout=30,
        )
        assert step.status_code == 200, step.text
    try:
        yield LoopSite(base, run_id, keys)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


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


def test_a_viewer_sees_the_settings_read_only(page: Page, loop_site: LoopSite) -> None:
    _log_in(page, loop_site, "viewer")
    panel = page.page.locator("#operator-form")
    panel.wait_for()
    assert panel.locator("select, input, button").count() == 0
    assert "changing these needs the operator role" in panel.inner_text()
    mode = loop_site.get(f"/api/loops/{loop_site.loop_run}/operator")["mode"]
    assert panel.locator("#operator-mode").inner_text() == mode
