"""Errors the services raise; `api.app` maps each to one HTTP status.

Services never import FastAPI: the CLI calls them too, and gets these exceptions
with messages meant for a person.
"""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500


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
