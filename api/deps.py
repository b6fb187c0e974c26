"""FastAPI dependencies: everything a route needs comes from `app.state`, set by create_app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.services.loops import LoopManager
from api.settings import Settings


def _session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _loops(request: Request) -> LoopManager:
    return request.app.state.loops


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(_settings)]
LoopsDep = Annotated[LoopManager, Depends(_loops)]
