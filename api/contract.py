"""The HTTP contract every route shares: error bodies, ids, strict JSON, documented auth.

* Every error answers `{"detail": ...}`: a sentence (`ErrorOut`) for 400, 401, 403, 404,
  405, 409, 413 and 503; for 422 either the list of schema errors (`loc`, `msg`, `type`)
  or, when the input passed the schema but not the process, a sentence
  (`ValidationErrorOut`). Each router documents them (`error_responses`).
* Ids are database integers: a path id outside 1..2^31-1 is refused at the edge (422),
  never handed to the database (PostgreSQL's "integer out of range").
* Bodies are strict JSON: a key repeated in one object is refused (422), where Python's
  json module would silently keep the last value.
* Auth is documented as it is configured: with TWIN_AUTH_REQUIRED each operation needs a
  key; without it a key is optional (OpenAPI's empty security requirement).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, Path, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BaseModel, Field

MAX_ID = 2**31 - 1  # INTEGER primary keys on PostgreSQL


def _as_utc(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# Every timestamp in an answer carries its zone (RFC 3339 date-time, as documented).
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class ErrorOut(BaseModel):
    detail: str = Field(description="what was wrong, and what to do about it")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="where: ['body', 'measurements', 'T']")
    msg: str
    type: str
    ctx: dict[str, Any] | None = None


class ValidationErrorOut(BaseModel):
    detail: list[ValidationIssue] | str = Field(
        description="the schema errors, or one sentence when the request passed the "
        "schema but not the process (unknown tag, setpoint outside its limits, "
        "implausible time_s or unit)"
    )


_MEANING = {
    400: "the body could not be read",
    401: "no API key where one is required, or an unknown, malformed or revoked one",
    403: "the key's role is too weak for this request",
    404: "no such resource",
    409: "the request clashes with the current state (stopped loop, time order, a "
    "concurrent change): read the state and retry",
    413: "the request is larger than the server accepts",
    422: "the request is not valid",
    503: "the server is at a configured limit (loops, memory, controller builds): retry "
    "after Retry-After seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router or route: each code with its documented body."""
    return {
        code: {
            "model": ValidationErrorOut if code == 422 else ErrorOut,
            "description": _MEANING[code],
        }
        for code in codes
    }


API_ERRORS = (400, 401, 403, 404, 409, 413, 422)


def id_path(what: str) -> Any:
    """A path id: 1..MAX_ID, or 422 before any query."""
    return Path(ge=1, le=MAX_ID, description=f"the {what}'s id")


RunIdPath = Annotated[int, id_path("run")]
KeyIdPath = Annotated[int, id_path("key")]
AlarmIdPath = Annotated[int, id_path("alarm")]
ModelIdPath = Annotated[int, id_path("model")]
StepPath = Annotated[int, Path(ge=0, le=MAX_ID, description="the step number, from 0")]
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]


# ---------------------------------------------------------------- strict JSON


def _no_repeated_keys(body: str) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise json.JSONDecodeError(f"key '{key}' appears twice in one object", body, 0)
            out[key] = value
        return out

    return build


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            text = (await self.body()).decode("utf-8", errors="replace")
            self._json = json.loads(text, object_pairs_hook=_no_repeated_keys(text))
        return self._json


class StrictJSONRoute(APIRoute):
    """FastAPI's documented way to change how a route reads its request."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


# ---------------------------------------------------------------- documented auth


def document_auth(app: FastAPI, *, required: bool) -> None:
    """Make /openapi.json say whether a key is needed: without TWIN_AUTH_REQUIRED every
    secured operation also accepts no key (`{}` among its security requirements)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            if not required:
                for operation in _operations(schema):
                    security = operation.get("security")
                    if security and {} not in security:
                        operation["security"] = [{}, *security]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        op
        for item in schema.get("paths", {}).values()
        for op in item.values()
        if isinstance(op, dict)
    ]
