"""Re-exported from api.jsonsafe, where the time-series storage (api.series) reaches it
without importing the services package."""

from api.jsonsafe import json_safe

__all__ = ["json_safe"]
