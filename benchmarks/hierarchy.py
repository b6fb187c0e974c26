"""Flat vs hierarchical planning where a move's effect shows beyond the fine horizon.

    python benchmarks/hierarchy.py                   # trains the twins it needs (cached)
    python benchmarks/hierarchy.py --seeds 3 --fine-horizon 8

The plant is a heated pipeline described by a tag file and a log only (no simulator
module): the heater's power reaches the outlet temperature sensor after a transport delay
of DELAY_SAMPLES (2 min) and a first-order lag, longer than the fine planner's horizon
(8 samples, 80 s). The flat `casadi` planner (`RTIPlanner`) sees the outlet within its
horizon only through the embedding's memory of the heater; the `hierarchical` planner's
coarse predictor looks 60 samples (10 min) ahead, past the delay, and hands the fine
planner a subgoal on that path. The CSTR (fast, no delay) is run too as the control case.

Every controller meets the same setpoint schedule and plant noise per seed; costs come from
the true outlet temperature. Writes benchmarks/results/hierarchy.json.
Timings run single-threaded (torch.set_num_threads(1)); on a shared machine they are
inflated, so compare the two planners' times within one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processes import cstr  # noqa: E402
from processes.base import aprbs_levels  # noqa: E402
from twin.assembly import build_controller  # noqa: E402
from twin.baseline import PlantParts  # noqa: E402
from twin.controller import TwinController  # noqa: E402
from twin.model import JEPAConfig  # noqa: E402
from twin.planning import PlannerSettings  # noqa: E402
from twin.spec import ProcessSpec, Tag, TagRole  # noqa: E402
from twin.train import TrainConfig, train_twin  # noqa: E402
from twin.twin_model import Twin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(__file__).resolve().parent / ".cache"
console = Console(width=160)

# -- the delayed plant -------------------------------------------------------------------------

SAMPLE_PERIOD_S = 10.0
DELAY_SAMPLES = 12  # transport delay heater -> outlet sensor, 120 s
LAG_SAMPLES = 6.0  # first-order time constant of the outlet, 60 s
AMBIENT_C, GAIN_C_PER_PCT = 20.0, 0.6
POWER_LOW, POWER_HIGH, POWER_RATE_PCT_PER_S = 0.0, 100.0, 0.5
OUTLET_HIGH_C = 80.0
NOISE_C = 0.1
TRACKING_SCALE_C, MOVE_WEIGHT = 5.0, 0.05

SPEC = ProcessSpec(
    name="heated-pipeline",
    description="Heater at the inlet, outlet temperature measured after a 2-minute transport "
    "delay.",
    sample_period_s=SAMPLE_PERIOD_S,
    timestamp_column="time_s",
    tags=(
        Tag(
            name="T_out",
            role=TagRole.SENSOR,
            unit="degC",
            high=OUTLET_HIGH_C,
            nominal=50.0,
            controlled=True,
            description="outlet temperature",
        ),
        Tag(
            name="power",
            role=TagRole.ACTUATOR,
            unit="%",
            low=POWER_LOW,
            high=POWER_HIGH,
            rate_limit=POWER_RATE_PCT_PER_S,
            nominal=50.0,
            description="heater power",
        ),
    ),
)
RATE_PER_SAMPLE = POWER_RATE_PCT_PER_S * SAMPLE_PERIOD_S


class Pipeline:
    """y_{n+1} = y_n + (T_ss(u_{n-D}) - y_n) / tau, measured with white noise."""

    def __init__(self, seed: int, power: float = 50.0) -> None:
        self.rng = np.random.default_rng(seed)
        self.queue = [power] * DELAY_SAMPLES
        self.outlet = AMBIENT_C + GAIN_C_PER_PCT * power
        self.time_s = 0.0

    def measure(self) -> dict[str, float]:
        return {"T_out": self.outlet + float(self.rng.normal(0.0, NOISE_C))}

    def step(self, power: float) -> dict[str, float]:
        self.queue.append(power)
        arrived = self.queue.pop(0)
        target = AMBIENT_C + GAIN_C_PER_PCT * arrived
        self.outlet += (target - self.outlet) / LAG_SAMPLES
        self.time_s += SAMPLE_PERIOD_S
        return self.measure()


def pipeline_log(hours: float, seed: int) -> pd.DataFrame:
    """Excitation: random power levels held 2-40 samples, moved at the rate limit."""
    rng = np.random.default_rng(seed)
    n = int(round(hours * 3600.0 / SAMPLE_PERIOD_S))
    levels = aprbs_levels(rng, n, 10.0, 95.0, 2, 40)
    plant, u, rows = Pipeline(seed + 10_000), 50.0, []
    meas = plant.measure()
    for k in range(n):
        u = float(
            np.clip(
                np.clip(levels[k], u - RATE_PER_SAMPLE, u + RATE_PER_SAMPLE), POWER_LOW, POWER_HIGH
            )
        )
        rows.append({"time_s": plant.time_s, **meas, "power": u})
        meas = plant.step(u)
    return pd.DataFrame(rows, columns=["time_s", "T_out", "power"])


@dataclass(frozen=True)
class Schedule:
    steps: int
    setpoints: tuple[tuple[int, float], ...]

    def at(self, k: int) -> float:
        return [v for start, v in self.setpoints if k >= start][-1]


PIPELINE_SCHEDULE = Schedule(200, ((0, 50.0), (10, 72.0), (80, 40.0), (140, 62.0)))


def pipeline_episode(controller: TwinController, seed: int, schedule: Schedule) -> dict[str, float]:
    plant, before = Pipeline(seed), 50.0
    outlet, moves, solve_ms, fallbacks = [], [], [], 0
    for k in range(schedule.steps):
        record = controller.step(plant.time_s, plant.measure(), {"T_out": schedule.at(k)})
        u = record.actuators["power"]
        moves.append(u - before)
        before = u
        plant.step(u)
        outlet.append(plant.outlet)
        solve_ms.append(record.solve_ms)
        fallbacks += record.status != "ok"
    setpoints = np.array([schedule.at(k) for k in range(schedule.steps)])
    return _score(
        np.array(outlet),
        setpoints,
        np.array(moves),
        solve_ms,
        fallbacks,
        TRACKING_SCALE_C,
        OUTLET_HIGH_C,
    )


def _score(
    true: np.ndarray,
    setpoints: np.ndarray,
    moves: np.ndarray,
    solve_ms: list[float],
    fallbacks: int,
    scale: float,
    limit: float,
) -> dict[str, float]:
    tracking = float((((true - setpoints) / scale) ** 2).sum())
    return {
        "cost": tracking + float(MOVE_WEIGHT * ((moves / RATE_PER_SAMPLE) ** 2).sum()),
        "tracking_cost": tracking,
        "violations": int((true > limit).sum()),
        "mean_abs_error": float(np.abs(true - setpoints).mean()),
        "fallbacks": fallbacks,
        "solve_ms_median": float(np.median(solve_ms)),
        "solve_ms_p99": float(np.quantile(solve_ms, 0.99)),
    }


# -- twins ---------------------------------------------------------------------------------------


def cached_twin(name: str, build: Any) -> Twin:
    path = CACHE / f"hierarchy_{name}.pt"
    if path.is_file():
        return Twin.load(path)
    console.print(f"training the {name} twin (cached at {path})")
    twin = build()
    twin.save(path)
    return twin


def pipeline_twin() -> Twin:
    cfg = TrainConfig(
        epochs=12, max_seconds=150.0, seed=0, rollout_steps=16, model=JEPAConfig(window=16)
    )
    return train_twin(pipeline_log(12.0, seed=1), SPEC, cfg, show_progress=False)[0]


def cstr_twin() -> Twin:
    cfg = TrainConfig(epochs=12, max_seconds=150.0, seed=0)
    return train_twin(cstr.generate_training_log(8.0, seed=1), cstr.SPEC, cfg, show_progress=False)[
        0
    ]


# -- the comparison ------------------------------------------------------------------------------


def controller_for(twin: Twin, planner: str, horizon: int, fallback: Any) -> TwinController:
    settings = replace(PlannerSettings.for_twin(twin), horizon=horizon)  # the spec's weights
    return build_controller(twin, planner, settings=settings, parts=PlantParts(fallback=fallback))


def setups(horizon: int) -> list[tuple[str, str, int]]:
    """(label, planner, fine horizon): flat and hierarchical at the same fine horizon, and
    the flat planner over the coarse level's whole reach as the reference it approximates."""
    return [
        (f"flat H={horizon}", "casadi", horizon),
        (f"hierarchical H={horizon}", "hierarchical", horizon),
        (f"flat H={COARSE_REACH}", "casadi", COARSE_REACH),
    ]


COARSE_REACH = 60  # samples the coarse level sees (15 blocks of 4)


def compare(seeds: list[int], horizon: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    twin = cached_twin("pipeline", pipeline_twin)
    for label, planner, h in setups(horizon):
        out.setdefault("heated-pipeline", {})[label] = [
            pipeline_episode(controller_for(twin, planner, h, None), seed, PIPELINE_SCHEDULE)
            for seed in seeds
        ]
    twin = cached_twin("cstr", cstr_twin)
    for label, planner, h in setups(horizon):
        episodes = []
        for seed in seeds:
            controller = controller_for(twin, planner, h, cstr.pi_fallback())
            result = cstr.run_episode(cstr.twin_policy(controller), planner, seed=seed)
            m, steps = result.metrics, result.steps
            episodes.append(
                {
                    "cost": m["cost"],
                    "tracking_cost": m["tracking_cost"],
                    "violations": m["violations"],
                    "mean_abs_error": m["mean_abs_error_K"],
                    "fallbacks": sum(s.status != "ok" for s in steps),
                    "solve_ms_median": float(np.median([s.solve_ms for s in steps])),
                    "solve_ms_p99": float(np.quantile([s.solve_ms for s in steps], 0.99)),
                }
            )
        out.setdefault("cstr", {})[label] = episodes
    return out


def summarise(episodes: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(np.mean([e[key] for e in episodes])) for key in episodes[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="plant seeds per controller")
    parser.add_argument("--fine-horizon", type=int, default=8, help="samples")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    seeds = list(range(7, 7 + args.seeds))
    runs = compare(seeds, args.fine_horizon)
    table = Table(
        title=f"flat vs hierarchical, fine horizon {args.fine_horizon} samples, "
        f"{len(seeds)} seeds (means)"
    )
    for column in (
        "process",
        "planner",
        "cost",
        "mean |error|",
        "violations",
        "fallbacks",
        "solve ms median",
        "solve ms p99",
    ):
        table.add_column(column)
    results: dict[str, Any] = {}
    for process, planners in runs.items():
        for planner, episodes in planners.items():
            mean = summarise(episodes)
            results.setdefault(process, {})[planner] = {**mean, "episodes": episodes}
            table.add_row(
                process,
                planner,
                f"{mean['cost']:.2f}",
                f"{mean['mean_abs_error']:.2f}",
                f"{mean['violations']:.1f}",
                f"{mean['fallbacks']:.1f}",
                f"{mean['solve_ms_median']:.1f}",
                f"{mean['solve_ms_p99']:.1f}",
            )
    console.print(table)
    results["meta"] = {
        "fine_horizon_samples": args.fine_horizon,
        "coarse_horizon_samples": COARSE_REACH,
        "seeds": seeds,
        "pipeline_delay_samples": DELAY_SAMPLES,
        "cost": "sum ((y - y_sp) / scale)^2 + 0.05 (du / max step)^2 on the true state; "
        "scale 5 degC (pipeline), 10 K (CSTR); mean |error| in degC / K",
        "threads": 1,
        "machine": platform.platform(),
        "python": platform.python_version(),
        "seconds": time.perf_counter() - started,
        "note": "timings on a shared machine: compare within this run",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hierarchy.json").write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {RESULTS / 'hierarchy.json'} in {results['meta']['seconds']:.0f} s")


if __name__ == "__main__":
    main()
