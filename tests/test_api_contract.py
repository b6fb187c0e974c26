"""The API's contract, checked over every route the app serves (found, not listed):

* the OpenAPI schema lists every route with its request and response models;
* hostile input (malformed JSON, wrong shapes, NaN, deep nesting, oversized bodies,
  absurd path and query values) gets a 4xx with a JSON `detail`, never a 5xx;
* a rejected write changes nothing: every table holds the same rows afterwards.

New routes are covered without editing this file, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api import services
from api.orm import Base

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
# Bodies that no route may accept. Each is (label, raw bytes, content type).
HOSTILE_BODIES: list[tuple[str, bytes, str]] = [
    ("malformed JSON", b'{"time_s": 1.0,', "application/json"),
    ("a JSON array", b"[1, 2, 3]", "application/json"),
    ("a bare string", b'"hello"', "application/json"),
    ("NaN token", b"NaN", "application/json"),
    (
        "NaN field",
        b'{"time_s": NaN, "measurements": {"T": NaN}, "process": NaN}',
        "application/json",
    ),
    (
        "Infinity field",
        b'{"time_s": Infinity, "measurements": {"T": -Infinity}}',
        "application/json",
    ),
    ("unknown fields only", b'{"no_such_field": 1}', "application/json"),
    ("deep nesting", b'{"a": ' * 5_000 + b"1" + b"}" * 5_000, "application/json"),
    ("not UTF-8", b'{"name": "\xff\xfe"}', "application/json"),
    ("form data", b"a=1&b=2", "application/x-www-form-urlencoded"),
]
HOSTILE_PATH_VALUES = ["0", "-1", "99999999999999999999999", "abc", "1.5", "%00", "nan"]
HOSTILE_QUERY_VALUES = [
    "nan",
    "inf",
    "-inf",
    "1e999",
    "-1",
    "",
    "x" * 300,
    "99999999999999999999999",
]


@pytest.fixture
def seeded(client: TestClient, session: Session, make_episode) -> Iterator[dict[str, int]]:
    """One of everything a path parameter can point at: model, loop, stored run."""
    model = services.register_model(session, "cstr", "contract", b"weights", {}, {})
    loop = client.post(
        "/api/loops", json={"process": "cstr", "model_id": model.id, "setpoints": {"T": 365.0}}
    )
    assert loop.status_code == 201, loop.text
    run_id = loop.json()["run_id"]
    step = client.post(
        f"/api/loops/{run_id}/step",
        json={"time_s": 0.0, "measurements": {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}},
    )
    assert step.status_code == 200, step.text
    stored = services.store_episode(session, make_episode(12))
    yield {"model": model.id, "loop": run_id, "run": stored.id}


def api_routes(app: FastAPI) -> list[APIRoute]:
    return [r for r in _walk(app.routes) if r.path.startswith("/api")]


def _walk(routes: list[Any]) -> Iterator[APIRoute]:
    """Every APIRoute, also inside routers that newer FastAPI versions include lazily.

    Our routers carry their prefix themselves and are included without one, so a
    nested route's own path is its full path."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):
            yield from _walk(route.original_router.routes)


def table_counts(session: Session) -> dict[str, int]:
    session.expire_all()
    counts = {
        t.name: session.scalar(select(func.count()).select_from(t))
        for t in Base.metadata.sorted_tables
    }
    session.rollback()  # end the read transaction: the app writes through its own sessions
    return counts


def fill_path(path: str, ids: dict[str, int], value: str | None = None) -> str:
    """A route path with its parameters filled: with `value`, or a real id of its kind."""

    def replace(match: re.Match[str]) -> str:
        if value is not None:
            return value
        name = match.group(1)
        if "model" in name:
            return str(ids["model"])
        if name in ("step",):
            return "0"
        if name == "name":
            return "cstr"
        return str(ids["loop"])

    return re.sub(r"\{(\w+)\}", replace, path)


# ---------------------------------------------------------------- the schema


def test_openapi_lists_every_route_with_its_models(app: FastAPI, client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    routes = api_routes(app)
    assert len(routes) >= 20
    for route in routes:
        for method in route.methods - {"HEAD", "OPTIONS"}:
            operation = paths.get(route.path, {}).get(method.lower())
            assert operation is not None, f"{method} {route.path} missing from the OpenAPI schema"
            success = [code for code in operation["responses"] if code.startswith("2")]
            assert success, f"{method} {route.path} documents no success response"
            content = operation["responses"][success[0]].get("content", {})
            if route.response_model is None:
                # Only file downloads and empty answers may go without a response model.
                assert "application/json" not in content or success[0] == "204", (
                    f"{method} {route.path} answers JSON without a response model"
                )
            else:
                schema = content["application/json"]["schema"]
                assert schema, f"{method} {route.path} has an empty response schema"
            if route.body_field is not None:
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                assert "$ref" in body or "properties" in body or "anyOf" in body, (
                    f"{method} {route.path} has no request model"
                )


# ---------------------------------------------------------------- hostile input


def test_hostile_bodies_are_4xx_and_change_nothing(
    app: FastAPI, client: TestClient, session: Session, seeded: dict[str, int]
) -> None:
    before = table_counts(session)
    checked = 0
    for route in api_routes(app):
        if route.body_field is None:
            continue
        for method in route.methods & WRITE_METHODS:
            url = fill_path(route.path, seeded)
            for label, body, content_type in HOSTILE_BODIES:
                response = client.request(
                    method, url, content=body, headers={"Content-Type": content_type}
                )
                assert 400 <= response.status_code < 500, (
                    f"{method} {route.path} with {label}: {response.status_code} "
                    f"{response.text[:300]}"
                )
                assert "detail" in response.json(), f"{method} {route.path} with {label}"
                checked += 1
    assert checked >= 5 * len(HOSTILE_BODIES)
    assert table_counts(session) == before


def test_oversized_bodies_are_413_on_every_write_route(
    app: FastAPI, client: TestClient, session: Session, seeded: dict[str, int]
) -> None:
    before = table_counts(session)
    huge = b'{"pad": "' + b"x" * 60_000 + b'"}'  # the test app allows 50 kB
    for route in api_routes(app):
        for method in route.methods & WRITE_METHODS:
            response = client.request(
                method,
                fill_path(route.path, seeded),
                content=huge,
                headers={"Content-Type": "application/json"},
            )
            assert response.status_code == 413, f"{method} {route.path}: {response.status_code}"
    assert table_counts(session) == before


def test_absurd_path_values_are_never_5xx(
    app: FastAPI, client: TestClient, seeded: dict[str, int]
) -> None:
    for route in api_routes(app):
        if "{" not in route.path:
            continue
        for method in route.methods & {"GET"}:
            for value in HOSTILE_PATH_VALUES:
                response = client.request(method, fill_path(route.path, seeded, value))
                assert response.status_code < 500, (
                    f"{method} {route.path} with {value!r}: {response.status_code} "
                    f"{response.text[:300]}"
                )


def test_absurd_query_values_are_never_5xx(
    app: FastAPI, client: TestClient, seeded: dict[str, int]
) -> None:
    checked = 0
    for route in api_routes(app):
        if "GET" not in route.methods:
            continue
        url = fill_path(route.path, seeded)
        for param in route.dependant.query_params:
            for value in HOSTILE_QUERY_VALUES:
                response = client.get(url, params={param.alias: value})
                assert response.status_code < 500, (
                    f"GET {route.path}?{param.alias}={value[:20]}: {response.status_code} "
                    f"{response.text[:300]}"
                )
                checked += 1
    assert checked > 0


def test_a_rejected_step_stores_nothing_and_the_loop_goes_on(
    client: TestClient, session: Session, seeded: dict[str, int]
) -> None:
    loop = seeded["loop"]
    before = table_counts(session)
    bad: list[dict[str, Any]] = [
        {"time_s": 6.0, "measurements": {"Ca": 0.5, "T": 350.0, "Bogus": 1.0}},  # unknown tag
        {"time_s": 0.0, "measurements": {"Ca": 0.5, "T": 350.0}},  # not after the last step
        {"time_s": -6.0, "measurements": {"Ca": 0.5, "T": 350.0}},  # backwards
        {"time_s": 6.0, "measurements": {"Ca": "hot", "T": 350.0}},  # wrong type
        {"time_s": 6.0, "measurements": [0.5, 350.0]},  # wrong shape
        {"time_s": 6.0, "measurements": {"Ca": 0.5, "T": 350.0}, "setpoints": {"Nope": 1.0}},
    ]
    for body in bad:
        response = client.post(f"/api/loops/{loop}/step", json=body)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
        assert response.json()["detail"], body
    assert table_counts(session) == before
    good = client.post(
        f"/api/loops/{loop}/step",
        json={"time_s": 6.0, "measurements": {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0}},
    )
    assert good.status_code == 200 and good.json()["step"] == 1
