"""Replay datasets: a stored run's steps in a time range, or a log file on the worker,
in the process's log shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from api.errors import Invalid, PayloadTooLarge
from api.orm import Channel
from api.series.ranges import StepSpan, count_values, step_span, steps_between, values_between
from twin.spec import ProcessSpec, TagRole

# Most samples one replay may take: shadow mode plans at every one (tens of ms each).
MAX_REPLAY_SAMPLES = 50_000
MEASURED_CHANNEL = {
    TagRole.SENSOR: Channel.SENSOR,
    TagRole.DISTURBANCE: Channel.DISTURBANCE,
    TagRole.ACTUATOR: Channel.ACTUATOR,
}


@dataclass
class RunFrame:
    """A stored run's steps inside a range: times, statuses and values by (channel, tag)."""

    time_s: np.ndarray
    status: list[str]
    values: dict[tuple[str, str], np.ndarray]

    def column(self, channel: str, tag: str) -> np.ndarray:
        return self.values.get((channel, tag), np.full(len(self.time_s), np.nan))

    def log(self, spec: ProcessSpec) -> pd.DataFrame:
        """The process's log shape: timestamp column, then every tag in spec order."""
        columns = {spec.timestamp_column: self.time_s}
        columns.update({t.name: self.column(MEASURED_CHANNEL[t.role], t.name) for t in spec.tags})
        return pd.DataFrame(columns)

    def extra(self, channel: Channel) -> pd.DataFrame:
        tags = sorted(tag for c, tag in self.values if c == channel)
        return pd.DataFrame(
            {tag: self.values[(channel, tag)] for tag in tags}, index=range(len(self.time_s))
        )

    def table(self, spec: ProcessSpec) -> pd.DataFrame:
        """The log plus `<tag>.setpoint`, `<tag>.prediction` and `status` (exports)."""
        parts = [self.log(spec)]
        for channel in (Channel.SETPOINT, Channel.PREDICTION):
            parts.append(self.extra(channel).add_suffix(f".{channel}"))
        parts.append(pd.DataFrame({"status": self.status}))
        return pd.concat(parts, axis=1)


def run_frame(
    session: Session,
    run_id: int,
    start_s: float | None = None,
    end_s: float | None = None,
    *,
    max_values: int | None = None,
) -> RunFrame:
    """Read a run's steps in [start_s, end_s] and their values, filled into arrays."""
    span_in(session, run_id, start_s, end_s)
    rows = steps_between(session, run_id, start_s, end_s)
    first, last = rows[0].step, rows[-1].step
    if max_values is not None:
        count = count_values(session, run_id, first, last)
        if count > max_values:
            raise PayloadTooLarge(
                f"run {run_id} holds {count} values in that range, more "
                f"than the {max_values} one request may read: narrow the "
                "range with start_s and end_s"
            )
    row_of = {row.step: i for i, row in enumerate(rows)}
    values: dict[tuple[str, str], np.ndarray] = {}
    channels = [
        Channel.SENSOR,
        Channel.DISTURBANCE,
        Channel.ACTUATOR,
        Channel.SETPOINT,
        Channel.PREDICTION,
    ]
    for channel, tag, step, value in values_between(session, run_id, first, last, channels):
        i = row_of.get(step)
        if i is None:  # a step numbered inside but timed outside the range
            continue
        column = values.get((channel, tag))
        if column is None:
            column = values[(channel, tag)] = np.full(len(rows), np.nan)
        column[i] = value
    return RunFrame(
        np.array([r.time_s for r in rows], dtype=float), [str(r.status) for r in rows], values
    )


def file_frame(
    path: str, spec: ProcessSpec, start_s: float | None, end_s: float | None
) -> pd.DataFrame:
    """A log file on the worker, cut to the range (of its own timestamps)."""
    # late: the log readers load only for a log replay
    from twin.data import timestamps_s
    from twin.logs import read_log

    if not Path(path).is_file():
        raise FileNotFoundError(
            f"replay data {path} not found on the worker "
            "(paths are read by the worker, not the API)"
        )
    df = read_log(path)
    ts = timestamps_s(df, spec)
    keep = np.ones(len(df), dtype=bool)
    if start_s is not None:
        keep &= ts >= start_s
    if end_s is not None:
        keep &= ts <= end_s
    if not keep.any():
        span = f"{ts.min():g} to {ts.max():g} s" if len(ts) else "no rows"
        raise Invalid(
            f"no row of {path} lies between start_s {_fmt(start_s)} and end_s "
            f"{_fmt(end_s)}: the log covers {span}"
        )
    if int(keep.sum()) > MAX_REPLAY_SAMPLES:
        raise PayloadTooLarge(
            f"the range holds {int(keep.sum())} rows of {path}; a replay "
            f"takes at most {MAX_REPLAY_SAMPLES}: narrow it"
        )
    return df.loc[keep].reset_index(drop=True)


def span_in(session: Session, run_id: int, start_s: float | None, end_s: float | None) -> StepSpan:
    """The steps inside the range; Invalid, naming the run's own span, when there are none."""
    span = step_span(session, run_id, start_s, end_s)
    if span.count:
        return span
    whole = step_span(session, run_id)
    if not whole.count:
        raise Invalid(f"run {run_id} has no steps")
    raise Invalid(
        f"no step of run {run_id} lies between start_s {_fmt(start_s)} and end_s "
        f"{_fmt(end_s)}: the run covers {whole.first_s:g} to {whole.last_s:g} s"
    )


def _fmt(value: float | None) -> str:
    return "(open)" if value is None else f"{value:g}"
