"""JSON columns must hold strict JSON: PostgreSQL rejects NaN/Infinity in JSONB."""

from __future__ import annotations

import math
from typing import Any


def json_safe(value: Any) -> Any:
    """Copy of `value` with non-finite floats as None and tuples as lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # numpy values
        return json_safe(value.tolist())
    return value
