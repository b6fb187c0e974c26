"""The FastAPI application factory.

`create_app` refuses to start on a database that is not at the latest migration
(see `api.migrate`): run `twin db upgrade` first.

Access: every route but /api/health, /docs, /redoc and /openapi.json needs an API key
with a role (api.services.auth); the dashboards' pages need the viewer role and also
accept the session cookie of /login (dashboards.login). Without TWIN_AUTH_REQUIRED,
keyless requests pass as an anonymous admin (api.settings).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.contract import document_auth
from api.db import make_engine, make_session_factory
from api.error_handlers import add_error_handlers
from api.migrate import check_migrated
from api.routes import alarms, catalog, jobs, keys, loops, models, replays, runs
from api.services.loop_limits import LoopLimits
from api.services.loops import ControllerFactory, LoopManager, default_controller_factory
from api.settings import Settings

# Swagger UI and ReDoc from an installed package's files: plants are often offline.
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
DOCS_ASSETS_URL = "/docs-static"
REDOC_REMOTE_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def create_app(
    settings: Settings | None = None, *, controller_factory: ControllerFactory | None = None
) -> FastAPI:
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

    app = FastAPI(
        title="plant-twin",
        version="0.1.0",
        lifespan=lifespan,
        description="Process-control digital twin: runs, models, live control loops.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.loops = LoopManager(
        controller_factory or default_controller_factory,
        lock_timeout_s=settings.loop_lock_timeout_s,
        max_tags=settings.max_tags_per_step,
        limits=LoopLimits.of(settings),
    )
    add_error_handlers(app)
    document_auth(app, required=settings.auth_required)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for router in (
        catalog.public_router,
        catalog.router,
        models.router,
        runs.router,
        loops.router,
        jobs.router,
        replays.router,
        keys.router,
        alarms.router,
    ):
        app.include_router(router)
    _add_docs(app)
    _add_pages(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, their scripts and styles served by this server."""
    # ReDoc's bundle draws its footer logo from redoc.ly: served with the local icon instead
    redoc_js = (
        (DOCS_ASSETS / "redoc.standalone.js")
        .read_bytes()
        .replace(REDOC_REMOTE_LOGO, f"{DOCS_ASSETS_URL}/favicon.png".encode())
    )

    @app.get(f"{DOCS_ASSETS_URL}/redoc.standalone.js", include_in_schema=False)
    def redoc_bundle() -> Response:
        return Response(
            redoc_js,
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=DOCS_ASSETS), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    title = f"{app.title} · API"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            oauth2_redirect_url=oauth2_redirect,
            swagger_js_url=f"{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
        )

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=title,
            redoc_js_url=f"{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )


def _add_pages(app: FastAPI) -> None:
    """The dashboards: every page needs the viewer role (a key in a header or the session
    cookie of /login); where keys are required, a page without one sends the browser to
    /login, and a page's 4xx is a page, not JSON."""
    # late: the dashboards import api
    from dashboards import login
    from dashboards.alarms_page import router as alarms_page_router
    from dashboards.error_pages import html_errors_for_pages
    from dashboards.model_page import router as model_page_router
    from dashboards.models_page import router as models_page_router
    from dashboards.pages import router as pages_router

    app.state.session_signer = login.session_signer(login.session_secret())
    app.include_router(login.router)
    for page_router in (pages_router, models_page_router, model_page_router, alarms_page_router):
        app.include_router(page_router, dependencies=[login.require_page_role()])

    async def to_login(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, login.LoginRequired)
        return login.login_redirect(exc)

    app.add_exception_handler(login.LoginRequired, to_login)
    html_errors_for_pages(app)


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
