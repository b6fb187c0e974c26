"""How every exception becomes an HTTP answer (the bodies are documented in api.contract).

No answer ever carries SQL or a driver's message verbatim: a unique-constraint race is a
plain 409 ("retry"), a value the database cannot hold names the field's problem only.
A 405 lists every method the path accepts, not only those of the first route matched.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from api.errors import ServiceError
from api.services.jsonsafe import json_safe
from twin.errors import InvalidInput
from twin.spec import SpecError

Handler = Callable[[Request, Exception], Awaitable[Response]]
CONCURRENT_CHANGE = (
    "another request changed the same data at the same time (a unique value "
    "already exists); read the current state and retry"
)
# Driver messages that say what is wrong with a value without quoting the statement.
KNOWN_DATA_ERRORS = ("out of range", "NUL", "too long", "invalid byte sequence")


def add_error_handlers(app: FastAPI) -> None:
    def message(status_code: int | None) -> Handler:
        async def respond(_request: Request, exc: Exception) -> Response:
            code = status_code or getattr(exc, "status_code", 500)
            return JSONResponse(
                {"detail": str(exc)}, status_code=code, headers=getattr(exc, "headers", None)
            )

        return respond

    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(ServiceError, message(None))
    app.add_exception_handler(InvalidInput, message(422))
    app.add_exception_handler(SpecError, message(422))
    # Two writers raced (e.g. two registrations of the same model version): retryable.
    app.add_exception_handler(IntegrityError, _concurrent_change)
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(OverflowError, _unstorable)
    app.add_exception_handler(StatementError, _overflow_or_raise)
    app.add_exception_handler(StarletteHTTPException, _http_error)


async def _invalid_request(_request: Request, exc: Exception) -> Response:
    # The default handler echoes the input, and a NaN input cannot be written as JSON.
    assert isinstance(exc, RequestValidationError)
    errors = json_safe(jsonable_encoder(exc.errors()))
    return JSONResponse({"detail": errors}, status_code=422)


async def _concurrent_change(_request: Request, _exc: Exception) -> Response:
    return JSONResponse({"detail": CONCURRENT_CHANGE}, status_code=409)


async def _unstorable(_request: Request, exc: Exception) -> Response:
    """Input the database cannot hold (an id beyond 64 bits, a NUL byte in a name) is the
    client's error. The answer names the kind of problem, never the SQL."""
    cause = str(getattr(exc, "orig", None) or exc)
    kind = next((k for k in KNOWN_DATA_ERRORS if k.lower() in cause.lower()), None)
    why = f" ({kind})" if kind else ""
    return JSONResponse(
        {"detail": f"a value in the request cannot be stored or looked up{why}"}, status_code=422
    )


async def _overflow_or_raise(request: Request, exc: Exception) -> Response:
    """SQLAlchemy wraps a driver's OverflowError (SQLite: an int beyond 64 bits) in a
    StatementError; any other StatementError is a server fault and stays a 500."""
    if isinstance(getattr(exc, "orig", None), OverflowError):
        return await _unstorable(request, exc)
    raise exc


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            exc = StarletteHTTPException(
                405,
                detail=f"method {request.method} not allowed here; allowed: {', '.join(allowed)}",
                headers={"Allow": ", ".join(allowed)},
            )
    return await http_exception_handler(request, exc)


def _allowed_methods(request: Request) -> list[str]:
    """Every method the OpenAPI documents on this path (Starlette names only those of the
    first route it matched); GET implies HEAD, as Starlette serves it."""
    methods: set[str] = set()
    for pattern, documented in _documented_paths(request.app):
        if pattern.match(request.url.path):
            methods.update(documented)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


def _documented_paths(app: FastAPI) -> list[tuple[re.Pattern[str], set[str]]]:
    cached = getattr(app.state, "documented_paths", None)
    if cached is None:
        cached = [
            (compile_path(path)[0], {m.upper() for m in item})
            for path, item in app.openapi().get("paths", {}).items()
        ]
        app.state.documented_paths = cached
    return cached
