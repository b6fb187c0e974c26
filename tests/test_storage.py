"""Time-series storage: the batched write path (COPY on PostgreSQL), rollups, and min/max
downsampling of `get_series`, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import migrate, services
from api.errors import Invalid
from api.orm import Run, RunEvent, RunStep, RunValue, RunValueRollup
from api.series import ROLLUP_WIDTHS_STEPS, Extremes, bucket_plan, write_steps
from api.series.downsample import _cover
from twin.records import EpisodeResult, StepRecord
from twin.spec import ProcessSpec, TagRole

# ---------------------------------------------------------------- helpers


def _one_tag_spec() -> ProcessSpec:
    return ProcessSpec.from_dict(
        {
            "name": "one_tag",
            "sample_period_s": 1.0,
            "tags": [
                {"name": "T", "role": "sensor", "unit": "K"},
                {
                    "name": "u",
                    "role": "actuator",
                    "unit": "%",
                    "low": 0.0,
                    "high": 100.0,
                    "rate_limit": 1.0,
                },
            ],
        },
        source="test",
    )


def _signal_run(session: Session, values: np.ndarray, *, batch: int | None = None) -> int:
    """A run whose sensor T takes `values` at steps 0.. (time_s = 2 s x step)."""
    spec = _one_tag_spec()
    services.ensure_process(session, spec)
    run = services.create_run(
        session, kind="replay", process=spec.name, controller="log", config={}
    )
    records = [
        (
            k,
            StepRecord(
                step=k, time_s=2.0 * k, measurements={"T": float(v)}, setpoints={}, actuators={}
            ),
        )
        for k, v in enumerate(values)
    ]
    size = batch or len(records)
    for start in range(0, len(records), size):
        write_steps(session, run.id, spec, records[start : start + size])
        session.commit()
    return run.id


def _count(session: Session, table: Any, run_id: int) -> int:
    return int(
        session.scalar(select(func.count()).select_from(table).where(table.run_id == run_id)) or 0
    )


def _reference_rows(
    run_id: int, spec: ProcessSpec, episode: EpisodeResult
) -> dict[str, list[dict[str, Any]]]:
    """The rows each record should give, written out independently of the service."""
    channel_of = {TagRole.SENSOR: "sensor", TagRole.DISTURBANCE: "disturbance"}
    steps, values, events = [], [], []
    for rec in episode.steps:
        steps.append(
            {
                "run_id": run_id,
                "step": rec.step,
                "time_s": rec.time_s,
                "status": str(rec.status),
                "solve_ms": rec.solve_ms,
                "plan": rec.plan.to_dict() if rec.plan else None,
            }
        )
        groups = [("actuator", rec.actuators), ("setpoint", rec.setpoints), ("margin", rec.margins)]
        groups += [
            (channel_of[spec.tag(t).role], {t: v})
            for t, v in rec.measurements.items()
            if spec.tag(t).role in channel_of
        ]
        if rec.plan:
            groups.append(("prediction", {t: v[0] for t, v in rec.plan.sensors.items()}))
        values += [
            {"run_id": run_id, "step": rec.step, "channel": c, "tag": t, "value": v}
            for c, group in groups
            for t, v in group.items()
            if math.isfinite(v)
        ]
        events += [
            {
                "run_id": run_id,
                "step": rec.step,
                "time_s": rec.time_s,
                "kind": e.kind,
                "message": e.message,
                "tag": e.tag,
            }
            for e in rec.events
        ]
    return {"steps": steps, "values": values, "events": events}


def _stored(session: Session, run_id: int) -> dict[str, list[tuple[Any, ...]]]:
    def rows(*columns: Any) -> list[tuple[Any, ...]]:
        table = columns[0].class_
        return sorted(
            tuple(r) for r in session.execute(select(*columns).where(table.run_id == run_id))
        )

    return {
        "steps": rows(RunStep.step, RunStep.time_s, RunStep.status, RunStep.solve_ms),
        "plans": [
            (s.step, s.plan)
            for s in session.scalars(
                select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.step)
            )
        ],
        "values": rows(RunValue.step, RunValue.channel, RunValue.tag, RunValue.value),
        "events": rows(
            RunEvent.step, RunEvent.time_s, RunEvent.kind, RunEvent.message, RunEvent.tag
        ),
    }


def _rollups(session: Session, run_id: int) -> list[tuple[Any, ...]]:
    table = RunValueRollup
    return sorted(
        tuple(r)
        for r in session.execute(
            select(
                table.width_steps,
                table.channel,
                table.tag,
                table.bucket,
                table.n_values,
                table.min_value,
                table.min_step,
                table.max_value,
                table.max_step,
            ).where(table.run_id == run_id)
        )
    )


def _spiky(n: int, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(0.0, 0.1, n)) + 350.0


# ---------------------------------------------------------------- writing


def test_batched_write_stores_what_plain_inserts_store(
    session: Session, make_episode, cstr_spec: ProcessSpec
) -> None:
    """COPY (PostgreSQL) or driver executemany (SQLite) against ORM inserts of rows
    written out by hand: same steps, plans, values (NaN skipped) and events."""
    episode = make_episode(25)
    fast = services.store_episode(session, episode)
    slow = services.create_run(session, kind="control", process="cstr", controller="x", config={})
    for table, rows in zip(
        (RunStep, RunValue, RunEvent),
        _reference_rows(slow.id, cstr_spec, episode).values(),
        strict=True,
    ):
        session.execute(insert(table), rows)
    session.commit()
    stored_fast, stored_slow = _stored(session, fast.id), _stored(session, slow.id)
    assert stored_fast == stored_slow
    assert len(stored_fast["values"]) == 25 * 9 - 1  # 9 values a step, one NaN left out
    assert (3, "sensor", "Ca") not in {(s, c, t) for s, c, t, _ in stored_fast["values"]}
    assert len(stored_fast["events"]) == 3
    assert stored_fast["plans"][4][1]["sensors"]["T"][0] == pytest.approx(352.2)


def test_a_step_without_plan_stores_null(session: Session, make_episode) -> None:
    episode = make_episode(3)
    episode.steps[1].plan = None
    run = services.store_episode(session, episode)
    plans = _stored(session, run.id)["plans"]
    assert plans[1] == (1, None) and plans[0][1] is not None


@pytest.mark.parametrize("clash", ["stored_step", "step_twice"])
def test_a_rejected_batch_stores_nothing(
    session: Session, cstr_spec: ProcessSpec, make_episode, clash: str
) -> None:
    run = services.store_episode(session, make_episode(5))
    before = {t: _count(session, t, run.id) for t in (RunStep, RunValue, RunEvent, RunValueRollup)}
    records = [(rec.step + 5, rec) for rec in make_episode(5).steps]
    records[3] = (2 if clash == "stored_step" else 6, records[3][1])
    with pytest.raises(IntegrityError):
        write_steps(session, run.id, cstr_spec, records)
    session.rollback()
    after = {t: _count(session, t, run.id) for t in before}
    assert after == before and before[RunValue] > 0
    assert _count(session, RunValueRollup, run.id) == before[RunValueRollup]


def test_a_batch_failing_after_its_copy_stores_nothing(
    session: Session, make_episode, cstr_spec: ProcessSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps and values already sent (COPY or executemany) go when the caller rolls back."""
    run = services.store_episode(session, make_episode(3))
    values_before = _count(session, RunValue, run.id)

    def fail(*_: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr("api.series.writes.upsert_rollups", fail)
    with pytest.raises(RuntimeError):
        write_steps(session, run.id, cstr_spec, [(r.step + 3, r) for r in make_episode(4).steps])
    session.rollback()
    assert _count(session, RunStep, run.id) == 3
    assert _count(session, RunValue, run.id) == values_before == 3 * 9


def test_an_unknown_tag_stores_nothing(
    session: Session, cstr_spec: ProcessSpec, make_episode
) -> None:
    run = services.store_episode(session, make_episode(2))
    steps = make_episode(6).steps
    steps[4].measurements["bogus"] = 1.0
    with pytest.raises(Invalid, match="unknown tag 'bogus'"):
        write_steps(session, run.id, cstr_spec, [(r.step + 2, r) for r in steps])
    session.rollback()
    assert _count(session, RunStep, run.id) == 2


def test_rollups_match_the_values_whatever_the_batches(session: Session) -> None:
    values = np.round(_spiky(700), 1)  # ties: the earliest step of a tied extreme is kept
    assert len(np.unique(values)) < 350
    whole = _signal_run(session, values)
    steps = _signal_run(session, values, batch=1)  # a live loop: one step at a time
    chunks = _signal_run(session, values, batch=97)
    assert _rollups(session, whole) == _rollups(session, steps) == _rollups(session, chunks)
    rows = [r for r in _rollups(session, whole) if r[0] == 64]
    assert len(rows) == math.ceil(700 / 64)
    for width, _, _, bucket, count, low, low_step, high, high_step in rows:
        part = values[bucket * width : (bucket + 1) * width]
        assert count == len(part)
        assert (low, high) == (part.min(), part.max())
        assert (low_step, high_step) == (
            bucket * width + part.argmin(),
            bucket * width + part.argmax(),
        )


def test_rollups_go_with_their_run(session: Session) -> None:
    run_id = _signal_run(session, _spiky(40))
    assert _count(session, RunValueRollup, run_id) == len(ROLLUP_WIDTHS_STEPS) * 1 + 2
    session.delete(session.get(Run, run_id))
    session.commit()
    assert _count(session, RunValueRollup, run_id) == 0


def test_migration_computes_the_same_rollups_for_older_runs(
    db_url: str, session: Session, make_episode
) -> None:
    signal = _spiky(1500)
    signal[-3] = -1.0
    runs = [_signal_run(session, signal), services.store_episode(session, make_episode(40)).id]
    written = [_rollups(session, r) for r in runs]
    session.close()
    migrate.downgrade(db_url, "0003")  # drops the rollups (and anything after them)
    migrate.upgrade(db_url)  # rebuilds them from the stored values
    assert [_rollups(session, r) for r in runs] == written


# ---------------------------------------------------------------- downsampling


def _pairs_match_buckets(data: dict[str, Any], values: np.ndarray, last_step: int) -> None:
    """Each pair of points is the min and max of the raw values of its bucket (in the
    order they occurred), which runs from its first step to the next pair's first step."""
    steps, column = data["steps"], data["series"]["sensor"]["T"]
    assert len(steps) % 2 == 0
    ends = [*steps[2::2], last_step + 1]
    for k, end in enumerate(ends):
        part = values[steps[2 * k] : end]
        first, second = column[2 * k : 2 * k + 2]
        low_first = part.argmin() <= part.argmax()
        assert (first, second) == (
            (part.min(), part.max()) if low_first else (part.max(), part.min())
        ), (k, steps[2 * k], end)


@pytest.mark.parametrize(
    "n_steps,max_points,start_step,end_step",
    [
        (3000, 100, 0, 2999),  # whole rollup buckets of 16 steps
        (3000, 100, 37, 2890),  # unaligned range: narrower rollups and raw values at the ends
        (3000, 1000, 5, 2996),  # too few steps per bucket for rollups: raw values
        (9000, 24, 1001, 8999),  # wide buckets built from several rollup widths
    ],
)
def test_minmax_keeps_each_buckets_extremes(
    session: Session, n_steps: int, max_points: int, start_step: int, end_step: int
) -> None:
    values = _spiky(n_steps)
    spike_at = (start_step + end_step) // 2 + 3
    values[spike_at] = 1000.0
    values[spike_at + 100] = -1000.0
    if start_step > 0:
        values[start_step - 1] = 5000.0  # just outside the range: must not show
    run_id = _signal_run(session, values)
    data = services.get_series(
        session,
        run_id,
        channels=["sensor"],
        max_points=max_points,
        start_s=2.0 * start_step,
        end_s=2.0 * end_step,
        method="minmax",
    )
    column = data["series"]["sensor"]["T"]
    assert data["method"] == "minmax"
    assert len(column) == len(data["time_s"]) == len(data["steps"]) <= max_points
    assert len(column) >= max_points // 2  # rollup widths never cost more than half
    assert max(column) == 1000.0 and min(column) == -1000.0
    assert data["steps"][0] == start_step and data["time_s"][0] == 2.0 * start_step
    assert data["time_s"] == [2.0 * s for s in data["steps"]]
    assert all(start_step <= s <= end_step for s in data["steps"])
    _pairs_match_buckets(data, values, end_step)


def test_stride_misses_the_spike_minmax_keeps(session: Session) -> None:
    values = _spiky(2000)
    values[1001] = 1000.0  # stride 20 keeps steps 0, 20, ... 1000, 1020
    run_id = _signal_run(session, values)
    stride = services.get_series(session, run_id, max_points=100)
    minmax = services.get_series(session, run_id, max_points=100, method="minmax")
    assert stride["stride"] == 20 and stride["method"] == "stride"
    assert max(stride["series"]["sensor"]["T"]) < 1000.0
    assert max(minmax["series"]["sensor"]["T"]) == 1000.0


@pytest.mark.parametrize("max_points", [2, 3, 7, 64, 999])
def test_minmax_never_returns_more_than_max_points(session: Session, max_points: int) -> None:
    run_id = _signal_run(session, _spiky(1234))
    data = services.get_series(session, run_id, max_points=max_points, method="minmax")
    assert 0 < len(data["time_s"]) <= max_points
    assert all(len(c) == len(data["time_s"]) for c in data["series"]["sensor"].values())


def test_a_short_range_comes_back_whole(session: Session, make_episode) -> None:
    run = services.store_episode(session, make_episode(30))
    data = services.get_series(
        session, run.id, max_points=100, method="minmax", start_s=60.0, end_s=90.0
    )
    assert data["steps"] == list(range(10, 16)) and data["stride"] == 1
    assert data["series"]["sensor"]["T"] == [350.0 + 0.5 * k for k in range(10, 16)]
    assert services.get_series(session, run.id, start_s=1e6)["steps"] == []


def test_a_bucket_without_samples_stays_empty(session: Session) -> None:
    values = _spiky(200)
    values[40:80] = np.nan  # not stored: a gap of two whole buckets of 20 steps
    run_id = _signal_run(session, values)
    data = services.get_series(session, run_id, max_points=20, method="minmax")
    assert data["stride"] == 10 and data["steps"][4:8] == [40, 50, 60, 70]
    column = data["series"]["sensor"]["T"]
    assert column[4:8] == [None] * 4
    assert None not in column[:4] + column[8:]


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"start_s": 10.0, "end_s": 5.0}, "before start_s"),
        ({"start_s": math.nan}, "finite"),
        ({"end_s": math.inf}, "finite"),
        ({"method": "average"}, "unknown method"),
        ({"max_points": 0}, "at least 1"),
    ],
)
def test_bad_requests_are_refused(
    session: Session, make_episode, bad: dict[str, Any], match: str
) -> None:
    run = services.store_episode(session, make_episode(3))
    with pytest.raises(Invalid, match=match):
        services.get_series(session, run.id, **bad)


# ---------------------------------------------------------------- HTTP


def test_series_route_time_range_and_method(client: TestClient, session: Session) -> None:
    values = _spiky(3000)
    values[2500] = 999.0
    run_id = _signal_run(session, values)
    url = f"/api/runs/{run_id}/series"
    data = client.get(url, params={"max_points": 200}).json()
    assert data["method"] == "minmax" and max(data["series"]["sensor"]["T"]) == 999.0
    window = client.get(url, params={"start_s": 1000, "end_s": 2000, "max_points": 50}).json()
    assert window["time_s"][0] == 1000.0 and window["time_s"][-1] <= 2000.0
    assert len(window["time_s"]) <= 50
    assert max(window["series"]["sensor"]["T"]) == pytest.approx(values[500:1001].max())
    stride = client.get(url, params={"max_points": 200, "method": "stride"}).json()
    assert stride["method"] == "stride" and 999.0 not in stride["series"]["sensor"]["T"]


@pytest.mark.parametrize(
    "params,status,text",
    [
        ({"start_s": "nan"}, 422, "finite"),
        ({"end_s": "inf"}, 422, "finite"),
        ({"start_s": 10, "end_s": 5}, 422, "before start_s"),
        ({"start_s": "noon"}, 422, "number"),
        ({"method": "mean"}, 422, "minmax"),
        ({"max_points": 0}, 422, "greater than or equal"),
    ],
)
def test_series_route_refuses_bad_ranges(
    client: TestClient,
    session: Session,
    make_episode,
    params: dict[str, Any],
    status: int,
    text: str,
) -> None:
    run = services.store_episode(session, make_episode(5))
    response = client.get(f"/api/runs/{run.id}/series", params=params)
    assert response.status_code == status
    assert text in response.text
    assert client.get("/api/runs/999/series", params={"start_s": 0}).status_code == 404


# ---------------------------------------------------------------- pure parts


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=300),
    st.integers(-40, 40),
    st.sampled_from([1, 2, 3, 16, 64]),
)
def test_bucketed_extremes_match_brute_force(values: list[int], origin: int, width: int) -> None:
    steps = np.arange(len(values)) - 20
    array = np.asarray(values, float)
    merged, bucket = Extremes.of_values([0] * len(values), steps, array).bucketed(width, origin)
    for i, b in enumerate(bucket.tolist()):
        inside = np.floor_divide(steps - origin, width) == b
        part, where = array[inside], steps[inside]
        assert merged.count[i] == len(part)
        assert (merged.low[i], merged.high[i]) == (part.min(), part.max())
        assert merged.low_step[i] == where[part.argmin()]
        assert merged.high_step[i] == where[part.argmax()]
    assert merged.count.sum() == len(values)


@settings(max_examples=300, deadline=None)
@given(st.integers(-100_000, 100_000), st.integers(0, 300_000), st.integers(2, 5_000))
def test_cover_and_plan_split_a_range_exactly(first: int, length: int, points: int) -> None:
    last = first + length
    plan = bucket_plan(first, last, points // 2) if length + 1 > points else None
    width = plan.width_steps if plan else max(ROLLUP_WIDTHS_STEPS)
    widths = [w for w in ROLLUP_WIDTHS_STEPS if w <= width][::-1]
    rollups, raw = _cover(first, last, widths)
    covered = sorted([(b0 * w, (b1 + 1) * w - 1) for w, b0, b1 in rollups] + raw)
    assert covered[0][0] == first and covered[-1][1] == last
    assert all(a[1] + 1 == b[0] for a, b in zip(covered, covered[1:], strict=False))
    if plan:
        assert plan.bucket_steps % plan.width_steps == 0 and plan.bucket_steps % 2 == 0
        assert (last - plan.origin) // plan.bucket_steps + 1 <= points // 2
