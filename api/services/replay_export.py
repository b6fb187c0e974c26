"""Export of a run's series as a CSV or Parquet file in its process's log shape."""

from __future__ import annotations

import io
from dataclasses import dataclass

from sqlalchemy.orm import Session

from api.errors import Invalid
from api.orm import Run
from api.services.processes import spec_of
from api.services.replay_data import run_frame
from api.services.runs import get_run

# Most stored values (steps x tags) one export may read: the file is built in memory.
EXPORT_MAX_VALUES = 2_000_000
EXPORT_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


@dataclass(frozen=True)
class Export:
    content: bytes
    media_type: str
    filename: str


def export_run(
    session: Session,
    run_id: int,
    fmt: str,
    start_s: float | None = None,
    end_s: float | None = None,
) -> Export:
    """A run's series as a file in its process's log shape (see RunFrame.table)."""
    if fmt not in EXPORT_MEDIA_TYPES:
        raise Invalid(f"unknown format '{fmt}' (one of: {', '.join(EXPORT_MEDIA_TYPES)})")
    if start_s is not None and end_s is not None and start_s > end_s:
        raise Invalid(f"empty time range: start_s {start_s:g} is after end_s {end_s:g}")
    run = get_run(session, run_id)
    spec = spec_of(run.process)
    table = run_frame(session, run_id, start_s, end_s, max_values=EXPORT_MAX_VALUES).table(spec)
    if fmt == "csv":
        content = table.to_csv(index=False).encode()
    else:
        buffer = io.BytesIO()
        table.to_parquet(buffer, index=False)
        content = buffer.getvalue()
    return Export(content, EXPORT_MEDIA_TYPES[fmt], _filename(run, fmt, start_s, end_s))


def _filename(run: Run, fmt: str, start_s: float | None, end_s: float | None) -> str:
    """run-12-cstr.csv, or run-12-cstr-60-600s.csv for a range (start/end when open)."""
    span = (
        ""
        if start_s is None and end_s is None
        else (
            f"-{'start' if start_s is None else f'{start_s:g}'}"
            f"-{'end' if end_s is None else f'{end_s:g}'}s"
        )
    )
    return f"run-{run.id}-{run.process.name}{span}.{fmt}"
