"""Errors the twin raises for bad input; callers turn them into clear messages."""


class InvalidInput(ValueError):
    """Input rejected at the edge (NaN, unknown tag, wrong shape, out-of-order time...)."""
