"""Errors of the dashboards' pages as pages a person can read.

The JSON API keeps its JSON errors (`api.error_handlers`); a page's address (anything
outside the JSON prefixes below) that fails with a 4xx, an unknown address included,
gets the same status with the site's error page instead: `/models/99` and `/runs/99`
alike. The JSON handler still decides the status and the message; this only dresses it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.errors import ServiceError
from twin.errors import InvalidInput
from twin.spec import SpecError

# Paths answered in JSON whatever happens; every other path is a page.
JSON_PREFIXES = (
    "/api/",
    "/dash/api/",
    "/openapi.json",
    "/static/",
    "/dash/static/",
    "/docs-static/",
    "/docs/oauth2-redirect",
)
PAGE_ERRORS: tuple[type[Exception], ...] = (
    ServiceError,
    InvalidInput,
    SpecError,
    StarletteHTTPException,
    RequestValidationError,
)
Handler = Callable[[Request, Exception], Awaitable[Response]]
templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")


def is_page(request: Request) -> bool:
    return not request.url.path.startswith(JSON_PREFIXES)


def _message(body: bytes) -> str:
    try:
        detail: Any = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")[:500]
    if detail == "Not Found":
        return "no page at this address"
    if isinstance(detail, list):  # a query parameter the page cannot take
        return "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}"
            for d in detail
            if isinstance(d, dict)
        )
    return str(detail)


def error_page(
    request: Request, status_code: int, message: str, headers: dict[str, str] | None = None
) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"status": status_code, "message": message},
        status_code=status_code,
        headers=headers,
    )


def html_errors_for_pages(app: FastAPI) -> None:
    """Wrap the JSON handlers of the errors a page can meet (call after they are added)."""
    for error in PAGE_ERRORS:
        json_handler = app.exception_handlers.get(error)
        if json_handler is None:
            continue
        app.add_exception_handler(error, _dressed(json_handler))


def _dressed(json_handler: Handler) -> Handler:
    async def respond(request: Request, exc: Exception) -> Response:
        response = await json_handler(request, exc)
        if not is_page(request) or not 400 <= response.status_code < 500:
            return response
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() in ("www-authenticate", "allow", "retry-after")
        }
        return error_page(request, response.status_code, _message(bytes(response.body)), headers)

    return respond
