"""Surprise as a fault signal, against thresholds on raw sensor residuals.

    python benchmarks/fault_detection.py --process tennessee_eastman [--quick]
    python benchmarks/fault_detection.py --process turbofan [--quick]

Detectors (each a score per sample, smoothed by a trailing mean of SMOOTHING samples, with
a threshold set on normal data at FALSE_ALARM_RATE):
- surprise: `twin.surprise.surprise_scores`, the twin's one-step embedding prediction error;
- persistence residual: mean over sensors of the squared one-step change, each sensor
  scaled by its spread in the normal data (what a raw-sensor rate alarm sees);
- ARX residual: the same with the one-step error of the ARX baseline fitted on the
  training log.

Tennessee Eastman: a twin trained on the excitation log; thresholds from baseline (PI)
episodes without faults; then IDV(1)..IDV(20), each switched on at IDV_START_H in a
closed-loop baseline episode. Per IDV: detection delay (first alarm after onset, hours;
null when never within the episode) and the alarm rate before onset; plus the alarm rate on
other fault-free episodes (the false-alarm rate out of sample).

Turbofan: a twin trained on flights of a healthy engine (cycles below HEALTHY_CYCLES) only;
thresholds from healthy flights of another unit; then the alarm rate per flight across the
whole life of a third unit, and the first cycle from which most flights alarm.

Results merge into benchmarks/results/fault_detection.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prediction import cached_log  # noqa: E402
from prediction_baselines import ARX  # noqa: E402

from processes import get_process  # noqa: E402
from twin.data import WindowDataset, features  # noqa: E402
from twin.errors import InvalidInput  # noqa: E402
from twin.surprise import calibrate_threshold, surprise_scores, trailing_mean  # noqa: E402
from twin.train import TrainConfig, train_twin  # noqa: E402
from twin.twin_model import Twin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "fault_detection.json"
FALSE_ALARM_RATE = 0.01
SMOOTHING = 5
IDV_START_H = 1.0
HEALTHY_CYCLES = 75.0
console = Console(width=140)


# -- detectors ---------------------------------------------------------------------------------


class ResidualScores:
    """Raw-sensor residual scores: persistence or ARX one-step errors, scaled per sensor."""

    def __init__(self, twin: Twin, train_df: pd.DataFrame) -> None:
        self.twin = twin
        data = WindowDataset(train_df, twin.spec, twin.config.window, 1, twin.norm)
        self.arx = ARX(lags=(1, 2)).fit(data)
        self.sensor_cols = [twin.layout.observed.index(t) for t in twin.layout.sensors]

    def _normalised(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        feats, mask = features(df, self.twin.layout, self.twin.norm)
        n_obs = len(self.twin.layout.observed)
        obs = np.where(mask[:, :n_obs] > 0.5, feats[:, :n_obs], np.nan)
        act = self.twin.normalise_actions(df[list(self.twin.layout.actions)].to_numpy(float))
        return obs, act

    def persistence(self, df: pd.DataFrame) -> np.ndarray:
        obs, _ = self._normalised(df)
        out = np.full(len(df), np.nan)
        out[1:] = np.nanmean(np.diff(obs, axis=0)[:, self.sensor_cols] ** 2, axis=1)
        return out

    def arx_residual(self, df: pd.DataFrame) -> np.ndarray:
        obs, act = self._normalised(df)
        p, out = self.arx.p, np.full(len(df), np.nan)
        x, _ = ARX._regressors(obs, act, p)
        predicted = obs[p - 1 : -1] + x @ self.arx.theta
        err = (predicted - obs[p:]) ** 2
        out[p:] = np.nanmean(err[:, self.sensor_cols], axis=1)
        return out


def all_scores(twin: Twin, residuals: ResidualScores, df: pd.DataFrame) -> dict[str, np.ndarray]:
    raw = {
        "surprise": surprise_scores(twin, df),
        "persistence_residual": residuals.persistence(df),
        "arx_residual": residuals.arx_residual(df),
    }
    return {k: trailing_mean(v, SMOOTHING) for k, v in raw.items()}


def thresholds(normal: list[dict[str, np.ndarray]]) -> dict[str, float]:
    return {
        k: calibrate_threshold(np.concatenate([n[k] for n in normal]), FALSE_ALARM_RATE)
        for k in normal[0]
    }


# -- data --------------------------------------------------------------------------------------


def episode_frame(module, result) -> pd.DataFrame:
    spec = module.SPEC
    rows = [
        {spec.timestamp_column: st.time_s, **st.measurements, **st.actuators} for st in result.steps
    ]
    return pd.DataFrame(rows)[[spec.timestamp_column, *(t.name for t in spec.tags)]]


def train(df: pd.DataFrame, spec, seconds: float) -> Twin:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        twin, _ = train_twin(
            df, spec, TrainConfig(epochs=20, max_seconds=seconds), show_progress=False
        )
    return twin


# -- Tennessee Eastman -------------------------------------------------------------------------


def tennessee_eastman(quick: bool) -> dict[str, Any]:
    module = get_process("tennessee_eastman")
    hours = module.TRAINING_RECIPE.hours * (0.25 if quick else 1.0)
    df = cached_log(module, "tennessee_eastman", hours, 1)
    twin = train(df, module.SPEC, 30.0 if quick else 90.0)
    residuals = ResidualScores(twin, df)
    episode_hours = 3.0 if quick else 6.0

    def run(idv: int | None, seed: int) -> pd.DataFrame:
        result = module.run_episode(
            module.baseline_policy(),
            "baseline",
            seed=seed,
            idv=idv,
            idv_start_h=IDV_START_H,
            hours=episode_hours,
        )
        return episode_frame(module, result)

    normal = [all_scores(twin, residuals, run(None, s)) for s in (201, 202)]
    limit = thresholds(normal)
    held_out = [all_scores(twin, residuals, run(None, s)) for s in (203,)]
    out: dict[str, Any] = {
        "thresholds": limit,
        "false_alarm_rate_out_of_sample": {
            k: float(np.mean(np.concatenate([h[k] for h in held_out]) > limit[k])) for k in limit
        },
        "idv": {},
    }
    onset = int(round(IDV_START_H * 3600.0 / module.SPEC.sample_period_s))
    for idv in range(1, 21):
        scores = all_scores(twin, residuals, run(idv, 300 + idv))
        row = {}
        for k, v in scores.items():
            alarms = np.nan_to_num(v, nan=-np.inf) > limit[k]
            after = np.flatnonzero(alarms[onset:])
            row[k] = {
                "delay_h": float(after[0] * module.SPEC.sample_period_s / 3600.0)
                if after.size
                else None,
                "alarm_rate_before_onset": float(alarms[:onset].mean()),
                "alarm_rate_after_onset": float(alarms[onset:].mean()),
            }
        out["idv"][str(idv)] = row
        console.log(f"IDV({idv}): " + ", ".join(f"{k} {r['delay_h']}" for k, r in row.items()))
    out.update(detection_counts(out["idv"]))
    out["meta"] = {
        "train_hours": hours,
        "episode_hours": episode_hours,
        "idv_start_h": IDV_START_H,
        "false_alarm_rate": FALSE_ALARM_RATE,
        "smoothing_samples": SMOOTHING,
        "quick": quick,
    }
    return out


SUSTAINED_RATE = 5 * FALSE_ALARM_RATE


def detection_counts(idv: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, int]]:
    """IDVs with any alarm after onset, and with a sustained alarm rate after onset.

    Over hours after onset a detector alarms at its false-alarm rate even without a fault,
    so "any alarm" overstates detection; "sustained" asks for an alarm rate after onset
    above SUSTAINED_RATE.
    """
    detectors = next(iter(idv.values())).keys()
    return {
        "detected_any_alarm": {
            k: sum(r[k]["delay_h"] is not None for r in idv.values()) for k in detectors
        },
        "detected_sustained": {
            k: sum(r[k]["alarm_rate_after_onset"] > SUSTAINED_RATE for r in idv.values())
            for k in detectors
        },
        "sustained_rate": SUSTAINED_RATE,
    }


# -- turbofan ----------------------------------------------------------------------------------


def flights(df: pd.DataFrame, spec) -> list[pd.DataFrame]:
    ts = df[spec.timestamp_column].to_numpy(float)
    bounds = [0, *(np.flatnonzero(np.diff(ts) > 1.5 * spec.sample_period_s) + 1), len(df)]
    return [
        df.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def healthy(df: pd.DataFrame, spec) -> pd.DataFrame:
    parts = [
        f for f, c in zip(flights(df, spec), df.attrs["cycles"], strict=True) if c < HEALTHY_CYCLES
    ]
    return pd.concat(parts, ignore_index=True)


def turbofan(quick: bool) -> dict[str, Any]:
    module = get_process("turbofan")
    spec = module.SPEC
    hours = 3.0 if quick else 6.0
    train_df = healthy(cached_log(module, "turbofan", hours, 1), spec)
    twin = train(train_df, spec, 30.0 if quick else 90.0)
    residuals = ResidualScores(twin, train_df)
    calibration = cached_log(module, "turbofan", hours, 2)
    normal = [
        all_scores(twin, residuals, f)
        for f, c in zip(flights(calibration, spec), calibration.attrs["cycles"], strict=True)
        if c < HEALTHY_CYCLES
    ]
    limit = thresholds(normal)
    life = cached_log(module, "turbofan", hours, 3)
    rows = []
    for flight, cycle in zip(flights(life, spec), life.attrs["cycles"], strict=True):
        try:
            scores = all_scores(twin, residuals, flight)
        except InvalidInput as exc:  # a worn engine's sensor beyond its limit: refused
            rows.append({"cycle": float(cycle), "refused": str(exc)})
            continue
        rates = {
            k: float(np.mean(np.nan_to_num(v, nan=-np.inf) > limit[k])) for k, v in scores.items()
        }
        rows.append({"cycle": float(cycle), **rates})
    first = {}
    for k in limit:
        flagged = [r["cycle"] for r in rows if "refused" not in r and r[k] > 0.5]
        first[k] = min(flagged) if flagged else None
    console.log(f"first cycle with most samples alarming: {first}")
    return {
        "thresholds": limit,
        "flights": rows,
        "first_cycle_mostly_alarming": first,
        "meta": {
            "healthy_below_cycles": HEALTHY_CYCLES,
            "log_hours": hours,
            "units": {"train": 1, "calibration": 2, "test": 3},
            "false_alarm_rate": FALSE_ALARM_RATE,
            "smoothing_samples": SMOOTHING,
            "quick": quick,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--process", choices=["tennessee_eastman", "turbofan"], required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = (
        tennessee_eastman(args.quick)
        if args.process == "tennessee_eastman"
        else turbofan(args.quick)
    )
    result.setdefault("meta", {})["seconds"] = time.perf_counter() - started
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[args.process] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
