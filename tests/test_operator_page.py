"""The operator's controls on a live loop's page (dashboards.operator_panel), without a
browser: who sees the form, and the page's endpoint refusing what the API refuses and a
change without the page's CSRF token. The loop and its fake controller are those of the
operator's other controls (tests/test_operator_controls.py); in a browser:
tests/test_operator_page_browser.py."""

from __future__ import annotations

import re

import test_operator_controls as controls
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from test_operator_controls import _auth

from api.orm import AuditEntry, Role, Run

# the fixtures of the operator's other controls, under the names pytest finds them by
api, built, loop_id, operated_app = (
    controls.api,
    controls.built,
    controls.loop_id,
    controls.operated_app,
)


def _page(api: TestClient, run_id: int, tokens, role: Role) -> str:
    response = api.get(f"/runs/{run_id}", headers=_auth(tokens, role))
    assert response.status_code == 200, response.text
    return response.text


def _csrf(page: str) -> str:
    found = re.search(r'"X-CSRF-Token": "([0-9a-f]+)"', page)
    assert found, "the operator's form carries the page's CSRF token"
    return found.group(1)


def _change(api: TestClient, run_id: int, tokens, role: Role, body, csrf: str | None):
    headers = {**_auth(tokens, role), **({"X-CSRF-Token": csrf} if csrf else {})}
    return api.put(f"/dash/api/loops/{run_id}/operator", json=body, headers=headers)


def _stored(session: Session, run_id: int) -> dict:
    session.expire_all()
    return session.get(Run, run_id).config.get("operator", {})


def test_an_operator_sees_the_form_and_a_viewer_the_settings(
    api: TestClient, loop_id: int, tokens
) -> None:
    page = _page(api, loop_id, tokens, Role.OPERATOR)
    assert '<select name="mode" id="operator-mode">' in page
    assert 'name="out_of_service"' in page and 'name="range_low"' in page
    assert 'id="operator-reason"' in page
    viewer = _page(api, loop_id, tokens, Role.VIEWER)
    assert "Operator controls" in viewer
    assert '<b id="operator-mode">on</b>' in viewer
    assert "operator-reason" not in viewer and "X-CSRF-Token" not in viewer
    assert "Read-only" in viewer


def test_the_page_changes_the_loop_as_the_api_does(
    api: TestClient, loop_id: int, tokens, session: Session
) -> None:
    csrf = _csrf(_page(api, loop_id, tokens, Role.OPERATOR))
    body = {"mode": "standby", "ranges": {"T": {"low": 340.0, "high": 355.0}}, "reason": "pump"}
    response = _change(api, loop_id, tokens, Role.OPERATOR, body, csrf)
    assert response.status_code == 200, response.text
    assert response.json()["mode"] == "standby"
    got = api.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER)).json()
    assert got["mode"] == "standby" and got["ranges"] == {"T": {"low": 340.0, "high": 355.0}}
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "loop.operator")).one()
    assert entry.actor == "operator-key" and entry.detail["reason"] == "pump"
    viewer = _page(api, loop_id, tokens, Role.VIEWER)
    assert '<b id="operator-mode">standby</b>' in viewer and "340.0 … 355.0 K" in viewer


def test_the_page_refuses_what_the_api_refuses(
    api: TestClient, loop_id: int, tokens, session: Session
) -> None:
    csrf = _csrf(_page(api, loop_id, tokens, Role.OPERATOR))
    standby = {"mode": "standby", "reason": "r"}
    refusals = [
        (Role.OPERATOR, standby, None, 403, "CSRF token"),
        (Role.OPERATOR, standby, "0" * 64, 403, "CSRF token"),
        (Role.VIEWER, standby, csrf, 403, "'operator' role"),
        (Role.OPERATOR, {"mode": "standby"}, csrf, 422, "reason"),
        (
            Role.OPERATOR,
            {"ranges": {"T": {"low": 350.0, "high": 390.0}}, "reason": "r"},
            csrf,
            422,
            "engineering high limit 385 K",
        ),
    ]
    for role, body, token, code, named in refusals:
        response = _change(api, loop_id, tokens, role, body, token)
        assert response.status_code == code, (body, response.text)
        assert named in response.text
        assert _stored(session, loop_id) == {}


def test_the_page_sets_and_clears_an_economic_direction(
    api: TestClient, loop_id: int, tokens, session: Session
) -> None:
    page = _page(api, loop_id, tokens, Role.OPERATOR)
    assert '<select name="economic" data-tag="Tc" data-was="">' in page
    assert '<select name="economic" data-tag="Ca" data-was="">' in page
    assert "data-economic=" not in page  # the operator gets selects, not text
    body = {"economic": {"Tc": "maximise"}, "reason": "cheap coolant"}
    response = _change(api, loop_id, tokens, Role.OPERATOR, body, _csrf(page))
    assert response.status_code == 200, response.text
    assert response.json()["economic"] == {"Tc": "maximise"}
    got = api.get(f"/api/loops/{loop_id}/operator", headers=_auth(tokens, Role.VIEWER)).json()
    assert got["economic"] == {"Tc": "maximise"}
    entry = session.scalars(select(AuditEntry).where(AuditEntry.action == "loop.operator")).one()
    assert entry.detail["reason"] == "cheap coolant"
    viewer = _page(api, loop_id, tokens, Role.VIEWER)
    assert '<span data-economic="Tc">maximise</span>' in viewer
    assert '<span data-economic="Ca">none</span>' in viewer
    assert 'name="economic"' not in viewer  # read-only
    page = _page(api, loop_id, tokens, Role.OPERATOR)
    chosen = re.search(r'data-tag="Tc" data-was="maximise">(.*?)</select>', page, re.S)
    assert chosen and '<option value="maximise" selected>' in chosen.group(1)
    body = {"economic": {"Tc": None}, "reason": "coolant dear again"}
    response = _change(api, loop_id, tokens, Role.OPERATOR, body, _csrf(page))
    assert response.status_code == 200, response.text
    assert "economic" not in _stored(session, loop_id)
    assert '<span data-economic="Tc">none</span>' in _page(api, loop_id, tokens, Role.VIEWER)


def test_the_page_refuses_a_bad_economic_direction(
    api: TestClient, loop_id: int, tokens, session: Session
) -> None:
    csrf = _csrf(_page(api, loop_id, tokens, Role.OPERATOR))
    refusals = [
        (Role.OPERATOR, {"economic": {"Tc": "up"}, "reason": "r"}, 422, "maximise"),
        (Role.OPERATOR, {"economic": {"Cb": "maximise"}, "reason": "r"}, 422, "'Cb'"),
        (Role.OPERATOR, {"economic": {"Tc": "maximise"}}, 422, "reason"),
        (Role.VIEWER, {"economic": {"Tc": "maximise"}, "reason": "r"}, 403, "'operator' role"),
    ]
    for role, body, code, named in refusals:
        response = _change(api, loop_id, tokens, role, body, csrf)
        assert response.status_code == code, (body, response.text)
        assert named in response.text
        assert _stored(session, loop_id) == {}
