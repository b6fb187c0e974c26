"""Replaying a logged process with a twin: no simulator needed, only the log and its tags.

Three views of the same log, each an `EpisodeResult` so it is stored and drawn like any
closed-loop run:

- `as_logged`: what happened (measurements and the actuators really applied);
- `open_loop`: from every sample, what the twin predicted over the horizon given the
  actions that were really applied, against what was then measured;
- `shadow`: what the twin's controller would have set at each sample, while the plant ran
  on what was logged (rate limits count from the logged values, as they would live).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch
from rich.progress import track

from .controller import TwinController
from .data import check_log, features, segment_ids, timestamps_s
from .errors import InvalidInput
from .records import EpisodeResult, Plan, StepRecord, StepStatus
from .spec import ProcessSpec
from .twin_model import Twin

REPORT_HORIZONS = (1, 10)
BATCH = 512


def _finite(values: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def _margins(spec: ProcessSpec, row: Mapping[str, float]) -> dict[str, float]:
    margins = {}
    for tag in spec.sensors:
        value = row.get(tag.name)
        if value is None or not math.isfinite(value) or (tag.low is None and tag.high is None):
            continue
        margins[tag.name] = float(
            min(
                tag.high - value if tag.high is not None else math.inf,
                value - tag.low if tag.low is not None else math.inf,
            )
        )
    return margins


def as_logged(df: pd.DataFrame, spec: ProcessSpec, name: str = "as logged") -> EpisodeResult:
    """The log itself as a run: the reference the other replays are compared with."""
    check_log(df, spec)
    ts = timestamps_s(df, spec)
    measured = [t.name for t in (*spec.sensors, *spec.disturbances)]
    actuators = [t.name for t in spec.actuators]
    steps = []
    for k, row in enumerate(df[measured + actuators].to_dict("records")):
        steps.append(
            StepRecord(
                step=k,
                time_s=float(ts[k] - ts[0]),
                measurements=_finite({t: row[t] for t in measured}),
                setpoints={},
                actuators=_finite({t: row[t] for t in actuators}),
                margins=_margins(spec, row),
            )
        )
    metrics = {"samples": len(df), "violations": _violations(df, spec)}
    return EpisodeResult(
        spec.name, name, {"mode": "as_logged", "start_time_s": float(ts[0])}, steps, metrics
    )


def _violations(df: pd.DataFrame, spec: ProcessSpec) -> int:
    count = 0
    for tag in spec.sensors:
        values = df[tag.name].to_numpy(dtype=float)
        if tag.high is not None:
            count += int((values > tag.high).sum())
        if tag.low is not None:
            count += int((values < tag.low).sum())
    return count


@torch.no_grad()
def open_loop(
    twin: Twin,
    df: pd.DataFrame,
    horizon: int | None = None,
    stride: int = 1,
    show_progress: bool = False,
) -> EpisodeResult:
    """Multi-step predictions from every `stride`-th sample, given the applied actions.

    Metrics: RMSE per sensor at each reported horizon in the sensor's unit, and the mean
    over sensors of RMSE / (max - min of that sensor in the log) as `nrmse_h<k>`.
    """
    spec, layout, window = twin.spec, twin.layout, twin.config.window
    check_log(df, spec)
    horizon = horizon or 20
    if horizon < 1 or stride < 1:
        raise InvalidInput("horizon and stride must be at least 1")
    ts = timestamps_s(df, spec)
    seg = segment_ids(ts, spec.sample_period_s)
    starts = [
        t
        for t in range(window, len(df) - horizon, stride)
        if seg[t - window + 1] == seg[t + horizon]
    ]
    if not starts:
        raise InvalidInput(
            f"log too short for open-loop replay: need more than "
            f"{window + horizon + 1} contiguous samples"
        )
    feats, mask = features(df, layout, twin.norm)
    windows_all = torch.from_numpy(np.concatenate([feats, mask], axis=1))
    actions_all = torch.from_numpy(
        twin.normalise_actions(df[list(layout.actions)].to_numpy(dtype=float)).astype(np.float32)
    )
    sensors = list(layout.sensors)
    predicted = {tag: np.empty((len(starts), horizon)) for tag in sensors}
    batches = range(0, len(starts), BATCH)
    for b in track(batches, description="open-loop replay", disable=not show_progress):
        rows = torch.tensor(starts[b : b + BATCH])
        windows = windows_all[rows.unsqueeze(-1) + torch.arange(-window + 1, 1)]
        actions = actions_all[rows.unsqueeze(-1) + torch.arange(horizon)]
        z0 = twin.model.encode(windows)
        z = twin.model.predictor.rollout(z0, actions).numpy()
        present = twin.readout(z0.numpy())
        miss = {tag: df[tag].to_numpy(dtype=float)[rows.numpy()] - present[tag] for tag in sensors}
        for tag, values in twin.carried(twin.readout(z), miss).items():
            predicted[tag][b : b + BATCH] = values
    return _open_loop_result(twin, df, ts, starts, predicted, horizon)


def _open_loop_result(
    twin: Twin,
    df: pd.DataFrame,
    ts: np.ndarray,
    starts: list[int],
    predicted: dict[str, np.ndarray],
    horizon: int,
) -> EpisodeResult:
    spec, dt = twin.spec, twin.spec.sample_period_s
    actual = {tag: df[tag].to_numpy(dtype=float) for tag in predicted}
    measured = [t.name for t in (*spec.sensors, *spec.disturbances)]
    actuators = list(twin.layout.actions)
    records = df[measured + actuators].to_dict("records")
    steps = []
    for i, t in enumerate(starts):
        plan = Plan(
            time_s=[dt * (k + 1) for k in range(horizon)],
            actuators={a: [float(records[t + k][a]) for k in range(horizon)] for a in actuators},
            sensors={tag: [float(v) for v in predicted[tag][i]] for tag in predicted},
        )
        steps.append(
            StepRecord(
                step=i,
                time_s=float(ts[t] - ts[0]),
                measurements=_finite({m: records[t][m] for m in measured}),
                setpoints={},
                actuators=_finite({a: records[t][a] for a in actuators}),
                plan=plan,
                margins=_margins(spec, records[t]),
            )
        )
    metrics: dict[str, float] = {"samples": len(starts), "horizon": horizon}
    rows = np.array(starts)
    for h in sorted({*[h for h in REPORT_HORIZONS if h <= horizon], horizon}):
        normalised = []
        for tag, values in predicted.items():
            truth = actual[tag][rows + h]
            ok = np.isfinite(truth)
            if not ok.any():
                continue
            rmse = float(np.sqrt(np.mean((values[ok, h - 1] - truth[ok]) ** 2)))
            metrics[f"rmse_{tag}_h{h}"] = rmse
            span = float(np.nanmax(actual[tag]) - np.nanmin(actual[tag]))
            normalised.append(rmse / span if span > 0 else 0.0)
        metrics[f"nrmse_h{h}"] = float(np.mean(normalised)) if normalised else math.nan
    config = {"mode": "open_loop", "horizon": horizon, "start_time_s": float(ts[0])}
    return EpisodeResult(spec.name, "twin (open loop)", config, steps, metrics)


def default_setpoints(df: pd.DataFrame, spec: ProcessSpec) -> dict[str, float]:
    """Without a setpoint given, each controlled sensor holds its median in the log."""
    if not spec.controlled:
        raise InvalidInput(
            f"process '{spec.name}' marks no sensor as controlled; give setpoints explicitly"
        )
    return {t.name: float(np.nanmedian(df[t.name].to_numpy(dtype=float))) for t in spec.controlled}


def shadow(
    controller: TwinController,
    df: pd.DataFrame,
    setpoints: Mapping[str, float] | None = None,
    show_progress: bool = False,
) -> EpisodeResult:
    """What the controller would have set, sample by sample, while the log's actions ran."""
    spec = controller.spec
    check_log(df, spec)
    setpoints = dict(setpoints or default_setpoints(df, spec))
    ts = timestamps_s(df, spec)
    measured = [t.name for t in (*spec.sensors, *spec.disturbances)]
    actuators = [t.name for t in spec.actuators]
    records = df[measured + actuators].to_dict("records")
    controller.reset({a: float(records[0][a]) for a in actuators})
    steps, gaps = [], {a: [] for a in actuators}
    for k in track(range(len(records)), description="shadow replay", disable=not show_progress):
        meas: dict[str, float | None] = {
            m: (None if not math.isfinite(records[k][m]) else float(records[k][m]))
            for m in measured
        }
        if k > 0:  # what the plant really had applied going into this sample
            meas.update({a: float(records[k - 1][a]) for a in actuators})
        record = controller.step(float(ts[k] - ts[0]), meas, setpoints)
        record.step = k
        steps.append(record)
        for a in actuators:
            gaps[a].append(record.actuators[a] - float(records[k][a]))
    metrics: dict[str, float] = {
        "samples": len(steps),
        "fallbacks": int(sum(s.status == StepStatus.FALLBACK for s in steps)),
        "plan_ms_median": float(np.median([s.solve_ms for s in steps])),
        "plan_ms_p99": float(np.percentile([s.solve_ms for s in steps], 99)),
    }
    for a, diffs in gaps.items():
        metrics[f"mean_abs_diff_{a}"] = float(np.mean(np.abs(diffs)))
    config = {"mode": "shadow", "setpoints": setpoints, "start_time_s": float(ts[0])}
    return EpisodeResult(spec.name, "twin (shadow)", config, steps, metrics)
