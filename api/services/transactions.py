"""The one way a service undoes a failed write: roll the session back, re-raise."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session


@contextmanager
def rollback_on_error(session: Session) -> Iterator[Session]:
    """Roll back and re-raise on any exception, KeyboardInterrupt included (BaseException):
    a half-written transaction never stays open on the session."""
    try:
        yield session
    except BaseException:
        session.rollback()
        raise
