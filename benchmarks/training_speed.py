"""Training speed and memory of a twin, and the time to a CSTR twin good enough for control.

    python benchmarks/training_speed.py --part throughput      # windows/s, peak memory
    python benchmarks/training_speed.py --part control         # time to a usable CSTR twin

The twin is the CSTR recipe's (processes/cstr.py). Everything runs with
torch.set_num_threads(1). Throughput is compared with the GRU baseline
of benchmarks/prediction_baselines.py timed in the same run (a ratio, median of several
repetitions), since absolute figures move with the machine's load. Peak memory is the
process's maximum resident set (resource.getrusage), before and after training, plus the
Python-level peak of tracemalloc (torch's own buffers are not seen by tracemalloc).

"Good enough for control": a CSTR twin trained for a budget of S seconds whose closed-loop
cost with the CasADi planner (processes/cstr.py benchmark scenario, mean over seeds) is
within 5 % of the cost of a twin trained for the long reference budget. The first budget
that qualifies is reported. Results go to benchmarks/results/training_speed.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from prediction import cached_log  # noqa: E402
from prediction_baselines import Budget, GRUForecaster  # noqa: E402

from processes import cstr, plant_parts  # noqa: E402
from twin.assembly import build_controller  # noqa: E402
from twin.data import WindowDataset  # noqa: E402
from twin.train import TrainConfig, train_twin  # noqa: E402
from twin.twin_model import Twin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "training_speed.json"
console = Console(width=140)
BUDGETS_S = (30.0, 60.0, 120.0, 180.0)
REFERENCE_S = 240.0
CONTROL_SEEDS = (7, 8)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def train(df, cfg: TrainConfig) -> tuple[Twin, float]:
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        twin, _ = train_twin(df, cstr.SPEC, cfg, show_progress=False)
    return twin, time.perf_counter() - started


def throughput(repetitions: int = 3) -> dict[str, Any]:
    """Windows per second of the twin's training and of the GRU baseline, same data."""
    df = cached_log(cstr, "cstr", 3.0, 1)
    rss_before = peak_rss_mib()
    jepa, gru = [], []
    for rep in range(repetitions):
        cfg = cstr.TRAINING_RECIPE.train_config(epochs=2, seed=rep)
        tracemalloc.start()
        twin, seconds = train(df, cfg)
        _, python_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        windows = twin.metrics["windows"] * (1 - cfg.holdout_fraction) * twin.metrics["epochs"]
        jepa.append(windows / seconds)
        data = WindowDataset(df, cstr.SPEC, twin.config.window, cfg.rollout_steps, twin.norm)
        model = GRUForecaster(Budget(epochs=2, max_seconds=1e9, seed=rep)).fit(data)
        gru.append(model.stats["windows_per_s"])
        console.log(f"rep {rep}: jepa {jepa[-1]:.0f} windows/s, gru {gru[-1]:.0f} windows/s")
    return {
        "jepa_windows_per_s": statistics.median(jepa),
        "gru_windows_per_s": statistics.median(gru),
        "ratio_jepa_to_gru": statistics.median(j / g for j, g in zip(jepa, gru, strict=True)),
        "peak_rss_mib_before": rss_before,
        "peak_rss_mib_after": peak_rss_mib(),
        "python_peak_mib": python_peak / 2**20,
        "repetitions": repetitions,
        "rollout_steps": TrainConfig().rollout_steps,
        "batch_size": TrainConfig().batch_size,
        "note": "1 torch thread on a 2-core machine shared with other jobs: absolute "
        "rates are inflated by contention; the ratio is the figure to compare",
    }


def closed_loop_cost(twin: Twin) -> float:
    costs = []
    for seed in CONTROL_SEEDS:
        controller = build_controller(twin, "casadi", parts=plant_parts(twin.spec))
        episode = cstr.run_episode(cstr.twin_policy(controller), "twin_casadi", seed=seed)
        costs.append(float(episode.metrics["cost"]))
    return statistics.mean(costs)


def time_to_control(budgets: tuple[float, ...]) -> dict[str, Any]:
    recipe = cstr.TRAINING_RECIPE
    df = cached_log(cstr, "cstr", recipe.hours, 1)
    reference, ref_seconds = train(df, recipe.train_config(epochs=10_000, max_seconds=REFERENCE_S))
    ref_cost = closed_loop_cost(reference)
    console.log(
        f"reference ({ref_seconds:.0f} s, {reference.metrics['epochs']} epochs): "
        f"cost {ref_cost:.2f}"
    )
    rows, good_at = [], None
    for budget in budgets:
        twin, seconds = train(df, recipe.train_config(epochs=10_000, max_seconds=budget))
        cost = closed_loop_cost(twin)
        ok = cost <= 1.05 * ref_cost
        rows.append(
            {
                "budget_s": budget,
                "train_seconds": seconds,
                "epochs": twin.metrics["epochs"],
                "cost": cost,
                "ratio_to_reference": cost / ref_cost,
                "good_enough": ok,
            }
        )
        console.log(rows[-1])
        if ok and good_at is None:
            good_at = seconds
            break
    return {
        "criterion": "closed-loop cost with the casadi planner within 5 % of a twin "
        f"trained {REFERENCE_S:.0f} s (mean over seeds {CONTROL_SEEDS})",
        "reference": {
            "train_seconds": ref_seconds,
            "epochs": reference.metrics["epochs"],
            "cost": ref_cost,
        },
        "budgets": rows,
        "seconds_to_good_enough": good_at,
        "data_hours": recipe.hours,
    }


def merge(key: str, result: dict[str, Any]) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = result
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["throughput", "control"], required=True)
    parser.add_argument("--budgets", type=float, nargs="*", default=list(BUDGETS_S))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.part == "throughput":
        result = throughput()
    else:
        result = time_to_control(tuple(args.budgets))
    console.print(result)
    merge(args.part, result)


if __name__ == "__main__":
    main()
