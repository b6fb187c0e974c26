"""Errors the services raise; `api.app` maps each to one HTTP status.

Services never import FastAPI: the CLI calls them too, and gets these exceptions
with messages meant for a person.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    # Extra response headers (WWW-Authenticate on 401); api.app adds them to the response.
    headers: dict[str, str] | None = None


class Unauthorized(ServiceError):
    """No key where one is required, or a key that is unknown, malformed or revoked."""

    status_code = 401

    def __init__(self, message: str, *, invalid_token: bool = False) -> None:
        super().__init__(message)
        # RFC 6750: say `invalid_token` when a key was presented, nothing when none was.
        challenge = 'Bearer realm="twin"'
        if invalid_token:
            challenge += ', error="invalid_token"'
        self.headers = {"WWW-Authenticate": challenge}


class Forbidden(ServiceError):
    """A valid key whose role is too weak for the request."""

    status_code = 403


class NotFound(ServiceError):
    status_code = 404


class Conflict(ServiceError):
    """The request is valid but clashes with the current state (stopped loop, time order)."""

    status_code = 409


class Invalid(ServiceError):
    """Input that passed the schema but not the process: unknown tags, missing sensors."""

    status_code = 422


class PayloadTooLarge(ServiceError):
    status_code = 413


class ChecksumMismatch(ServiceError):
    """A stored checkpoint no longer matches its sha256: corrupted, never served."""

    status_code = 500


class Unavailable(ServiceError):
    """The server is at a configured limit right now (loops, memory, builds): retry later."""

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 30) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after_s)}
