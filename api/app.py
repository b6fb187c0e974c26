"""The FastAPI application factory.

`create_app` refuses to start on a database that is not at the latest migration
(see `api.migrate`): run `twin db upgrade` first.

Access: every route but /api/health, /docs and /openapi.json needs an API key with a
role (api.services.auth); the dashboards' pages need the viewer role and also accept
the key from the `twin_key` cookie. Without TWIN_AUTH_REQUIRED, keyless requests pass
as an anonymous admin (api.settings).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, IntegrityError, StatementError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.db import make_engine, make_session_factory
from api.deps import require_page_viewer
from api.errors import ServiceError
from api.migrate import check_migrated
from api.routes import alarms, catalog, jobs, keys, loops, models, replays, runs
from api.services.jsonsafe import json_safe
from api.services.loops import ControllerFactory, LoopManager, default_controller_factory
from api.settings import Settings
from twin.errors import InvalidInput
from twin.spec import SpecError


def create_app(settings: Settings | None = None, *,
               controller_factory: ControllerFactory | None = None) -> FastAPI:
    """Build the app; `controller_factory(checkpoint_bytes, planner)` is injectable for tests."""
    settings = settings or Settings()
    engine = make_engine(settings.database_url, echo=settings.echo_sql)
    try:
        check_migrated(engine)
    except BaseException:
        engine.dispose()
        raise

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(title="plant-twin", version="0.1.0", lifespan=lifespan,
                  description="Process-control digital twin: runs, models, live control loops.")
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.loops = LoopManager(controller_factory or default_controller_factory,
                                  lock_timeout_s=settings.loop_lock_timeout_s,
                                  max_tags=settings.max_tags_per_step)
    _add_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for router in (catalog.public_router, catalog.router, models.router, runs.router,
                   loops.router, jobs.router, replays.router, keys.router,
                   alarms.router):
        app.include_router(router)
    from dashboards.pages import router as pages_router  # late: dashboards import api

    # Read-only pages: the viewer role, from a header or the twin_key cookie.
    app.include_router(pages_router, dependencies=[require_page_viewer()])
    from dashboards.alarms_page import router as alarms_page_router
    from dashboards.model_page import router as model_page_router

    for page_router in (model_page_router, alarms_page_router):
        app.include_router(page_router, dependencies=[require_page_viewer()])
    return app


def _add_error_handlers(app: FastAPI) -> None:
    def handler(status_code: int | None) -> Callable[[Request, Exception], Awaitable[Response]]:
        async def respond(_request: Request, exc: Exception) -> Response:
            code = status_code or getattr(exc, "status_code", 500)
            return JSONResponse({"detail": str(exc)}, status_code=code,
                                headers=getattr(exc, "headers", None))
        return respond

    async def invalid_request(_request: Request, exc: Exception) -> Response:
        # The default handler echoes the input, and a NaN input cannot be written as JSON.
        assert isinstance(exc, RequestValidationError)
        errors = json_safe(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": errors}, status_code=422)

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(ServiceError, handler(None))
    app.add_exception_handler(InvalidInput, handler(422))
    app.add_exception_handler(SpecError, handler(422))
    # Two writers raced (e.g. two registrations of the same model version): retryable.
    app.add_exception_handler(IntegrityError, handler(409))

    async def unstorable(_request: Request, exc: Exception) -> Response:
        # Input the database cannot hold (an id beyond 64 bits, a NUL byte in a name)
        # is the client's error. The message names the cause, never the SQL.
        cause = getattr(exc, "orig", None) or exc
        return JSONResponse({"detail": f"a value in the request cannot be stored or looked "
                                       f"up: {str(cause).splitlines()[0][:200]}"},
                            status_code=422)

    app.add_exception_handler(DataError, unstorable)
    app.add_exception_handler(OverflowError, unstorable)
    app.add_exception_handler(StatementError, _overflow_or_raise(unstorable))


def _overflow_or_raise(respond: Callable[[Request, Exception], Awaitable[Response]]
                       ) -> Callable[[Request, Exception], Awaitable[Response]]:
    """SQLAlchemy wraps a driver's OverflowError (SQLite: an int beyond 64 bits) in a
    StatementError; any other StatementError is a server fault and stays a 500."""
    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(getattr(exc, "orig", None), OverflowError):
            return await respond(request, exc)
        raise exc
    return handle


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413, before they are read whole."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._message()}, status_code=413)
            await response(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                # Raised inside the route's body read, so FastAPI turns it into a 413.
                raise HTTPException(status_code=413, detail=self._message())
            return message

        return counted

    def _message(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"
