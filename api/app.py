"""The FastAPI application factory.

`create_app` refuses to start on a database that is not at the latest migration
(see `api.migrate`): run `twin db upgrade` first.

Access: every route but /api/health, /docs and /openapi.json needs an API key with a
role (api.services.auth); the dashboards' pages need the viewer role and also accept
the key from the `twin_key` cookie. Without TWIN_AUTH_REQUIRED, keyless requests pass
as an anonymous admin (api.settings).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.contract import document_auth
from api.db import make_engine, make_session_factory
from api.deps import require_page_viewer
from api.error_handlers import add_error_handlers
from api.migrate import check_migrated
from api.routes import alarms, catalog, jobs, keys, loops, models, replays, runs
from api.services.loop_limits import LoopLimits
from api.services.loops import ControllerFactory, LoopManager, default_controller_factory
from api.settings import Settings


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
                                  max_tags=settings.max_tags_per_step,
                                  limits=LoopLimits.of(settings))
    add_error_handlers(app)
    document_auth(app, required=settings.auth_required)
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
