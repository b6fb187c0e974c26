"""Open-loop prediction: the JEPA twin against honest baselines, on held-out logs.

    python benchmarks/prediction.py --process cstr            # main table
    python benchmarks/prediction.py --process cstr --quick    # smaller data and budget
    python benchmarks/prediction.py --process cstr --study ablation   # anti-collapse
    python benchmarks/prediction.py --process cstr --study data       # data amount, policy
    python benchmarks/prediction.py --process cstr --study coarse     # coarse vs chained
    python benchmarks/prediction.py --process cstr --study encoder    # window-relative input

Training data: the process's `generate_training_log` (its TRAINING_RECIPE hours, seed 1);
held-out data: the same generator with other seeds (other disturbance sequences and, for
the turbofan, another engine unit). From every `stride`-th held-out sample each model
predicts the next 50 samples given the actions really applied; the error at horizon h is
the RMSE of each sensor in its engineering unit divided by that sensor's range (max - min)
in the held-out log, averaged over sensors (as `twin.replay.open_loop` reports nrmse).

Every learned model gets the same data, epochs and wall-clock cap. Results are merged into
benchmarks/results/prediction.json under the process name.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prediction_baselines import (  # noqa: E402
    ARX,
    AutoencoderWorldModel,
    Budget,
    Forecaster,
    GRUForecaster,
    Persistence,
)

from processes import get_process  # noqa: E402
from twin.data import WindowDataset  # noqa: E402
from twin.model import effective_rank  # noqa: E402
from twin.train import TrainConfig, train_twin  # noqa: E402
from twin.twin_model import Twin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "prediction.json"
CACHE = Path(tempfile.gettempdir()) / "twin-prediction-logs"
PLANNING_HORIZON = 20
HORIZONS = (1, 10, PLANNING_HORIZON, 50)
TRAIN_SEED, HELD_OUT_SEEDS = 1, (101, 102)
console = Console(width=160)


# -- data ------------------------------------------------------------------------------------


def cached_log(module: ModuleType, name: str, hours: float, seed: int) -> pd.DataFrame:
    """Generated logs are deterministic per (hours, seed): keep them between runs."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}_{hours:g}h_seed{seed}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    df = module.generate_training_log(hours, seed=seed)
    df.to_pickle(path)
    return df


def held_out_log(module: ModuleType, name: str, hours: float) -> pd.DataFrame:
    """Two held-out logs joined with a gap in time, so no window spans both."""
    parts, offset = [], 0.0
    for seed in HELD_OUT_SEEDS:
        df = cached_log(module, name, hours / len(HELD_OUT_SEEDS), seed).copy()
        column = module.SPEC.timestamp_column
        df[column] = df[column] - df[column].iloc[0] + offset
        offset = float(df[column].iloc[-1]) + 100.0 * module.SPEC.sample_period_s
        parts.append(df)
    return pd.concat(parts, ignore_index=True)


def settings(module: ModuleType, quick: bool) -> dict[str, Any]:
    recipe = module.TRAINING_RECIPE
    scale = 0.25 if quick else 1.0
    return {
        "train_hours": recipe.hours * scale,
        "held_out_hours": recipe.hours * 0.25,
        "epochs": max(2, int(recipe.epochs * (0.5 if quick else 1.0))),
        "max_seconds": 25.0 if quick else 90.0,
        "eval_starts": 400 if quick else 1200,
    }


# -- evaluation ------------------------------------------------------------------------------


class Evaluation:
    """Held-out starts, their windows and future actions, and the truth to score against."""

    def __init__(self, data: WindowDataset, df: pd.DataFrame, n_starts: int) -> None:
        self.data = data
        horizon = max(HORIZONS)
        starts = data.starts
        stride = max(1, len(starts) // n_starts)
        self.rows = starts[::stride]
        self.windows = data.windows_at(self.rows)
        steps = self.rows.unsqueeze(1) + torch.arange(horizon + 1)
        self.actions = data.actions[steps[:, :-1]]
        layout = data.layout
        self.sensor_cols = [layout.observed.index(t) for t in layout.sensors]
        self.truth = data.obs[steps[:, 1:]].numpy()[..., self.sensor_cols]
        self.truth_mask = data.obs_mask[steps[:, 1:]].numpy()[..., self.sensor_cols] > 0.5
        std = np.asarray(data.norm.std)[[data.norm.index(t) for t in layout.sensors]]
        span = np.array([np.nanmax(df[t]) - np.nanmin(df[t]) for t in layout.sensors])
        self.scale = std / np.where(span > 0, span, 1.0)  # normalised error -> share of range

    def nrmse(self, predicted: np.ndarray, horizons: Sequence[int] = HORIZONS) -> dict[str, float]:
        """predicted (S, H, O) normalised observed -> mean over sensors of RMSE / range."""
        pred = predicted[..., self.sensor_cols]
        out = {}
        for h in horizons:
            err = np.where(self.truth_mask[:, h - 1], pred[:, h - 1] - self.truth[:, h - 1], 0.0)
            count = self.truth_mask[:, h - 1].sum(axis=0).clip(min=1)
            rmse = np.sqrt((err**2).sum(axis=0) / count)
            out[str(h)] = float(np.mean(rmse * self.scale))
        return out


class JEPAForecaster(Forecaster):
    """The twin as a forecaster: encode, roll the planning predictor, read out."""

    name = "jepa"

    def __init__(self, twin: Twin, member: int | None = 0) -> None:
        self.twin, self.member = twin, member

    @torch.no_grad()
    def predict(self, windows: torch.Tensor, actions: torch.Tensor) -> np.ndarray:
        model = self.twin.model
        z0 = torch.cat([model.encode(c) for c in windows.split(1024)])
        if self.member is None:  # the ensemble's mean prediction
            z = model.ensemble_rollout(z0, actions).mean(dim=0)
        else:
            z = model.predictor_rollout(z0, actions, self.member)
        return self.carried(model.readout(z).numpy(), model.readout(z0).numpy(), windows)

    def carried(
        self, forecast: np.ndarray, present: np.ndarray, windows: torch.Tensor
    ) -> np.ndarray:
        """The present readout miss carried over the steps as the twin's training measured
        (`Twin.carried`, here in normalised units: the carry is a ratio)."""
        factors = self.twin.carry_factors(forecast.shape[1])
        o, f = factors.shape[1], windows.shape[-1] // 2
        last = windows[:, -1].numpy()
        miss = np.where(last[:, f : f + o] > 0.5, last[:, :o] - present, 0.0)
        return forecast + factors[None] * miss[:, None]


def jepa_config(process: str, budget: Budget, **changes: Any) -> TrainConfig:
    """The twin the process's recipe trains (benchmarks/control.py's), on the shared budget."""
    base = get_process(process).TRAINING_RECIPE.train_config(
        epochs=budget.epochs, max_seconds=budget.max_seconds, seed=budget.seed
    )
    return replace(base, **changes)


def train_jepa(df: pd.DataFrame, module: ModuleType, cfg: TrainConfig) -> Twin:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        twin, _ = train_twin(df, module.SPEC, cfg, show_progress=False)
    return twin


@torch.no_grad()
def held_out_rank(twin: Twin, ev: Evaluation) -> float:
    z = torch.cat([twin.model.encode(c) for c in ev.windows.split(1024)])
    return effective_rank(z)


def ratio(scores: dict[str, dict[str, float]], h: str, model: str = "jepa") -> float:
    best = min(v[h] for k, v in scores.items() if not k.startswith("jepa"))
    return scores[model][h] / best if best > 0 else float("inf")


# -- the main table ----------------------------------------------------------------------------


def study_data(
    name: str, quick: bool
) -> tuple[ModuleType, dict[str, Any], Budget, pd.DataFrame, pd.DataFrame]:
    """What every table and study starts from: the process, its settings and budget, the
    training log and the held-out log."""
    module = get_process(name)
    s = settings(module, quick)
    budget = Budget(epochs=s["epochs"], max_seconds=s["max_seconds"])
    df = cached_log(module, name, s["train_hours"], TRAIN_SEED)
    test_df = held_out_log(module, name, s["held_out_hours"])
    return module, s, budget, df, test_df


def main_table(name: str, quick: bool) -> dict[str, Any]:
    module, s, budget, df, test_df = study_data(name, quick)
    started = time.perf_counter()
    twin = train_jepa(df, module, jepa_config(name, budget))
    jepa_seconds = time.perf_counter() - started
    data = WindowDataset(df, module.SPEC, twin.config.window, budget.rollout_steps, twin.norm)
    test = WindowDataset(test_df, module.SPEC, twin.config.window, max(HORIZONS), twin.norm)
    ev = Evaluation(test, test_df, s["eval_starts"])
    forecasters: list[Forecaster] = [JEPAForecaster(twin)]
    if twin.config.ensemble_size > 1:
        ensemble = JEPAForecaster(twin, None)
        ensemble.name = "jepa_ensemble"
        forecasters.append(ensemble)
    forecasters += [
        Persistence(),
        ARX(),
        GRUForecaster(budget),
        AutoencoderWorldModel(
            budget, twin.config.embed_dim, predictor_layers=twin.config.predictor_layers
        ),
    ]
    scores: dict[str, dict[str, float]] = {}
    train_seconds = {"jepa": jepa_seconds}
    train_epochs = {"jepa": twin.metrics.get("epochs")}
    for f in forecasters:
        t0 = time.perf_counter()
        if not isinstance(f, JEPAForecaster):
            f.fit(data)
            train_seconds[f.name] = time.perf_counter() - t0
            if hasattr(f, "stats"):
                train_epochs[f.name] = f.stats["epochs"]
        scores[f.name] = ev.nrmse(
            np.concatenate(
                [
                    f.predict(w, a)
                    for w, a in zip(ev.windows.split(512), ev.actions.split(512), strict=True)
                ]
            )
        )
        console.log(f"{name}: {f.name} {scores[f.name]}")
    horizons = {
        h: {**{k: v[h] for k, v in scores.items()}, "ratio_to_best_baseline": ratio(scores, h)}
        for h in scores["jepa"]
    }
    out = {
        "embed_dim": twin.config.embed_dim,
        "effective_rank": held_out_rank(twin, ev),
        "horizons": horizons,
        "meta": {
            "quick": quick,
            "train_hours": s["train_hours"],
            "held_out_hours": s["held_out_hours"],
            "held_out_seeds": HELD_OUT_SEEDS,
            "train_seed": TRAIN_SEED,
            "eval_starts": len(ev.rows),
            "budget": {"epochs": budget.epochs, "max_seconds": budget.max_seconds},
            "train_seconds": train_seconds,
            "arx_lag": getattr(forecasters[-3], "p", None),
            "train_epochs": train_epochs,
            "metric": "mean over sensors of RMSE / (max - min in held-out log)",
        },
    }
    coarse = coarse_comparison(twin, ev)
    if coarse:
        out["coarse_predictor"] = coarse
    if twin.config.ensemble_size > 1:
        out["ensemble_uncertainty"] = ensemble_uncertainty(twin, ev)
    return out


@torch.no_grad()
def ensemble_uncertainty(twin: Twin, ev: Evaluation) -> dict[str, float]:
    """Does the members' disagreement say where the planning predictor errs?

    Per held-out start: the spread of the members' sensor predictions and the planning
    predictor's error, both normalised and averaged over sensors; Spearman rank
    correlation between them per horizon (0: no signal, 1: perfect ordering).
    """
    model = twin.model
    z0 = torch.cat([model.encode(c) for c in ev.windows.split(1024)])
    y = model.readout(model.ensemble_rollout(z0, ev.actions)).numpy()[..., ev.sensor_cols]
    spread = y.std(axis=0).mean(axis=-1)  # (S, H)
    error = np.abs(np.where(ev.truth_mask, y[0] - ev.truth, 0.0)).mean(axis=-1)
    out = {}
    for h in HORIZONS:
        a = pd.Series(spread[:, h - 1]).rank().to_numpy()
        b = pd.Series(error[:, h - 1]).rank().to_numpy()
        out[str(h)] = float(np.corrcoef(a, b)[0, 1])
    return out


@torch.no_grad()
def coarse_comparison(twin: Twin, ev: Evaluation) -> dict[str, Any] | None:
    """Chained one-step predictions against the coarse predictor (k steps at once)."""
    model = twin.model
    k = model.config.coarse_steps
    if not k:
        return None
    z0 = torch.cat([model.encode(c) for c in ev.windows.split(1024)])
    fine = model.readout(model.predictor_rollout(z0, ev.actions, 0)).numpy()
    coarse = model.readout(model.coarse_rollout(z0, ev.actions)).numpy()
    n = coarse.shape[1]
    # Every block end: the coarse predictor only predicts there.
    horizons = [k * (j + 1) for j in range(n) if k * (j + 1) <= ev.actions.shape[1]]
    fine_err = ev.nrmse(fine, horizons)
    full = np.repeat(coarse, k, axis=1)  # block values held; scored at block ends only
    pad = ev.actions.shape[1] - full.shape[1]
    full = np.concatenate([full, np.repeat(full[:, -1:], pad, axis=1)], axis=1)
    coarse_err = ev.nrmse(full, horizons)
    rows = {str(h): {"chained": fine_err[str(h)], "coarse": coarse_err[str(h)]} for h in horizons}
    # The crossover: the first horizon from which the coarse predictor stays ahead.
    crossover = None
    for h in reversed(horizons):
        if rows[str(h)]["coarse"] >= rows[str(h)]["chained"]:
            break
        crossover = h
    return {"k": k, "horizons": rows, "coarse_better_from": crossover}


def coarse_study(name: str, quick: bool) -> dict[str, Any]:
    """The coarse predictor against chained one-step prediction at every block end."""
    module, s, budget, df, test_df = study_data(name, quick)
    twin = train_jepa(df, module, jepa_config(name, budget))
    test = WindowDataset(test_df, module.SPEC, twin.config.window, max(HORIZONS), twin.norm)
    result = coarse_comparison(twin, Evaluation(test, test_df, s["eval_starts"]))
    if result is None:
        raise SystemExit(f"{name}: the default twin has no coarse predictor")
    for h, row in result["horizons"].items():
        console.log(f"{name} h={h}: chained {row['chained']:.4f} coarse {row['coarse']:.4f}")
    console.log(f"{name}: coarse ahead from h={result['coarse_better_from']}")
    return result


# -- studies: anti-collapse ablation, data amount and data policy --------------------------------

ABLATION = {
    "ema_vicreg": {"collapse": "ema_vicreg"},
    "ema_only": {"collapse": "ema"},
    "vicreg": {"collapse": "vicreg"},
    "sigreg": {"collapse": "sigreg"},
}


def _score_jepa(
    df: pd.DataFrame, module: ModuleType, cfg: TrainConfig, test_df: pd.DataFrame, n_starts: int
) -> tuple[dict[str, Any], Twin, Evaluation]:
    started = time.perf_counter()
    twin = train_jepa(df, module, cfg)
    seconds = time.perf_counter() - started
    test = WindowDataset(test_df, module.SPEC, twin.config.window, max(HORIZONS), twin.norm)
    ev = Evaluation(test, test_df, n_starts)
    return (
        {
            "nrmse": ev.nrmse(_predict(JEPAForecaster(twin), ev)),
            "effective_rank": held_out_rank(twin, ev),
            "embed_dim": twin.config.embed_dim,
            "train_seconds": seconds,
            "epochs": twin.metrics.get("epochs"),
        },
        twin,
        ev,
    )


def _predict(f: Forecaster, ev: Evaluation) -> np.ndarray:
    return np.concatenate(
        [f.predict(w, a) for w, a in zip(ev.windows.split(512), ev.actions.split(512), strict=True)]
    )


def ablation_study(name: str, quick: bool) -> dict[str, Any]:
    """Each anti-collapse method with everything else at its default."""
    module, s, budget, df, test_df = study_data(name, quick)
    out: dict[str, Any] = {
        "budget": {"epochs": budget.epochs, "max_seconds": budget.max_seconds},
        "default": TrainConfig().collapse,
        "methods": {},
    }
    for method, changes in ABLATION.items():
        result, _, _ = _score_jepa(
            df, module, jepa_config(name, budget, **changes), test_df, s["eval_starts"]
        )
        out["methods"][method] = result
        console.log(
            f"{name} ablation {method}: rank {result['effective_rank']:.2f} nrmse {result['nrmse']}"
        )
    return out


ENCODER_VARIANTS = {
    "plain (default)": {"window_norm": False, "present_skip": False},
    "window_norm + present_skip": {"window_norm": True, "present_skip": True},
}


def encoder_study(name: str, quick: bool) -> dict[str, Any]:
    """The default encoder against the RevIN-style window-relative one with a skip from the
    present sample: open-loop error and rank (closed-loop cost: benchmarks/control.py)."""
    module, s, budget, df, test_df = study_data(name, quick)
    out: dict[str, Any] = {
        "budget": {"epochs": budget.epochs, "max_seconds": budget.max_seconds},
        "variants": {},
    }
    for variant, changes in ENCODER_VARIANTS.items():
        cfg = jepa_config(name, budget)
        cfg = replace(cfg, model=replace(cfg.model, **changes))
        result, _, _ = _score_jepa(df, module, cfg, test_df, s["eval_starts"])
        out["variants"][variant] = result
        console.log(
            f"{name} encoder {variant}: rank {result['effective_rank']:.2f} nrmse {result['nrmse']}"
        )
    return out


def closed_loop_log(module: ModuleType, hours: float, seed: int) -> pd.DataFrame:
    """Logs of the baseline controller on random setpoint and disturbance schedules (CSTR)."""
    from processes import cstr

    rng = np.random.default_rng(seed)
    frames, offset = [], 0.0
    episodes = int(np.ceil(hours * 3600.0 / (240 * cstr.SAMPLE_PERIOD_S)))
    for e in range(episodes):
        scenario = cstr.Scenario(
            steps=240,
            setpoints=[
                (int(k), float(rng.uniform(335.0, 378.0)))
                for k in sorted(rng.choice(200, 4, replace=False))
            ],
            caf_steps=[(int(rng.integers(0, 240)), float(rng.uniform(0.9, 1.1)))],
            tf_steps=[(int(rng.integers(0, 240)), float(rng.uniform(345.0, 355.0)))],
        )
        scenario.setpoints[0] = (0, scenario.setpoints[0][1])
        result = module.run_episode(
            module.baseline_policy(), "baseline", scenario, seed=seed * 1000 + e
        )
        rows = [
            {"time_s": offset + k * cstr.SAMPLE_PERIOD_S, **st.measurements, **st.actuators}
            for k, st in enumerate(result.steps)
        ]
        frames.append(pd.DataFrame(rows))
        offset += (len(rows) + 10) * cstr.SAMPLE_PERIOD_S
    return pd.concat(frames, ignore_index=True)[["time_s", "Ca", "T", "Tc", "Caf", "Tf"]]


def data_study(name: str, quick: bool) -> dict[str, Any]:
    """Error against the share of the training log used, for the twin and two baselines;
    for the CSTR also excitation data against closed-loop baseline data of equal length."""
    module, s, budget, df, test_df = study_data(name, quick)
    out: dict[str, Any] = {"fractions": {}}
    for fraction in (0.1, 0.3, 1.0):
        part = df.iloc[: int(len(df) * fraction)].reset_index(drop=True)
        result, twin, ev = _score_jepa(
            part, module, jepa_config(name, budget), test_df, s["eval_starts"]
        )
        data = WindowDataset(part, module.SPEC, twin.config.window, budget.rollout_steps, twin.norm)
        row = {"hours": s["train_hours"] * fraction, "jepa": result["nrmse"]}
        for f in (ARX(), GRUForecaster(budget)):
            row[f.name] = ev.nrmse(_predict(f.fit(data), ev))
        out["fractions"][str(fraction)] = row
        console.log(f"{name} data {fraction:.0%}: {row}")
    if name == "cstr":
        closed = closed_loop_log(module, s["train_hours"], TRAIN_SEED)
        result, _, _ = _score_jepa(
            closed, module, jepa_config(name, budget), test_df, s["eval_starts"]
        )
        out["policy"] = {
            "excitation": out["fractions"]["1.0"]["jepa"],
            "closed_loop_baseline": result["nrmse"],
            "hours": s["train_hours"],
        }
        console.log(f"{name} closed-loop data: {result['nrmse']}")
    return out


# -- output ------------------------------------------------------------------------------------


def merge(name: str, result: dict[str, Any], key: str | None = None) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry = data.setdefault(name, {})
    if key is None:
        entry.update(result)
    else:
        entry[key] = result
    data.setdefault("meta", {})["machine"] = f"{platform.machine()}, torch threads 1"
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def has_full(name: str) -> bool:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    return not data.get(name, {}).get("meta", {"quick": True}).get("quick", True)


def print_table(name: str, result: dict[str, Any]) -> None:
    horizons = result["horizons"]
    models = [k for k in horizons[str(HORIZONS[0])] if k != "ratio_to_best_baseline"]
    table = Table(title=f"{name}: open-loop NRMSE (share of sensor range), held-out logs")
    table.add_column("model")
    for h in horizons:
        table.add_column(f"h={h}", justify="right")
    for m in models:
        table.add_row(m, *(f"{horizons[h][m]:.4f}" for h in horizons))
    table.add_row(
        "jepa / best baseline", *(f"{horizons[h]['ratio_to_best_baseline']:.2f}" for h in horizons)
    )
    console.print(table)
    console.print(
        f"embed_dim {result['embed_dim']}, held-out effective rank {result['effective_rank']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--process", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--study", choices=["main", "ablation", "data", "coarse", "encoder"], default="main"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.study == "main":
        result = main_table(args.process, args.quick)
        print_table(args.process, result)
        # a quick run never replaces a full one: it goes beside it
        merge(args.process, result, "quick" if args.quick and has_full(args.process) else None)
    else:
        study, key = {
            "ablation": (ablation_study, "ablation"),
            "data": (data_study, "data_size"),
            "coarse": (coarse_study, "coarse_predictor"),
            "encoder": (encoder_study, "encoder"),
        }[args.study]
        merge(args.process, study(args.process, args.quick), key)


if __name__ == "__main__":
    main()
