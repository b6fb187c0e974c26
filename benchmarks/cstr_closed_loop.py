"""CSTR closed loop: PI baseline, oracle NMPC, twin + CasADi MPC, twin + CEM.

Every controller meets the same setpoint/disturbance scenario and plant-noise seed; the
cost is computed on the true (noise-free) reactor temperature:

    cost = sum_k ((T_k - T_sp,k) / 10 K)^2 + 0.05 sum_k (dTc_k / max step)^2

Usage:
    python benchmarks/cstr_closed_loop.py                 # trains a twin first (~1-3 min)
    python benchmarks/cstr_closed_loop.py --model twin.pt # uses a trained checkpoint

Prints a table and writes benchmarks/results/control_cstr.json shaped
{"cstr": {"<controller>": {"cost", "cost_ratio_to_oracle", "violations", "plan_ms_median",
"plan_ms_p99", ...}}}. With several seeds, figures are means over seeds (violations: sum).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from processes import cstr
from twin.controller import TwinController
from twin.train import TrainConfig, train_twin
from twin.twin_model import Twin

RESULTS = Path(__file__).resolve().parent / "results" / "control_cstr.json"
console = Console(width=150)


def get_twin(model: Path | None, hours: float, epochs: int, seed: int) -> Twin:
    if model is not None:
        return Twin.load(model)
    df = cstr.generate_training_log(hours, seed=1)
    twin, _ = train_twin(df, cstr.SPEC, TrainConfig(epochs=epochs, seed=seed), show_progress=True)
    return twin


def controllers(twin: Twin) -> dict[str, Any]:
    """Fresh policy factories: each episode starts from a clean controller state."""
    return {
        "pi": cstr.pi_policy,
        "oracle_nmpc": cstr.oracle_policy,
        "twin_casadi": lambda: cstr.twin_policy(
            TwinController.from_twin(twin, "casadi", fallback=cstr.pi_fallback())),
        "twin_cem": lambda: cstr.twin_policy(
            TwinController.from_twin(twin, "cem", fallback=cstr.pi_fallback())),
    }


def run(twin: Twin, seeds: list[int]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name, factory in controllers(twin).items():
        per_seed = []
        for seed in seeds:
            episode = cstr.run_episode(factory(), name, seed=seed, show_progress=True)
            per_seed.append(episode.metrics)
        results[name] = summarise(per_seed, seeds)
    oracle_cost = results["oracle_nmpc"]["cost"]
    for entry in results.values():
        entry["cost_ratio_to_oracle"] = entry["cost"] / oracle_cost
    return results


def summarise(per_seed: list[dict[str, float]], seeds: list[int]) -> dict[str, Any]:
    def mean(key: str) -> float:
        return float(np.mean([m[key] for m in per_seed]))

    return {
        "cost": mean("cost"),
        "violations": int(sum(m["violations"] for m in per_seed)),
        "worst_violation_K": float(max(m["worst_violation_K"] for m in per_seed)),
        "max_T_K": float(max(m["max_T_K"] for m in per_seed)),
        "mean_abs_error_K": mean("mean_abs_error_K"),
        "fallbacks": int(sum(m["fallbacks"] for m in per_seed)),
        "plan_ms_median": mean("plan_ms_median"),
        "plan_ms_p99": mean("plan_ms_p99"),
        "seeds": seeds,
        "per_seed_cost": [m["cost"] for m in per_seed],
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    table = Table(title=f"CSTR closed loop, T limit {cstr.T_LIMIT_K:g} K")
    for col in ("controller", "cost", "ratio to oracle", "violations", "max T [K]",
                "mean |e| [K]", "fallbacks", "plan ms median", "plan ms p99"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        table.add_row(name, f"{r['cost']:.2f}", f"{r['cost_ratio_to_oracle']:.2f}",
                      str(r["violations"]), f"{r['max_T_K']:.1f}", f"{r['mean_abs_error_K']:.2f}",
                      str(r["fallbacks"]), f"{r['plan_ms_median']:.2f}",
                      f"{r['plan_ms_p99']:.2f}")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="trained twin checkpoint (else train one)")
    parser.add_argument("--hours", type=float, default=12.0, help="training log length")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[7], help="plant noise seeds")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    started = time.perf_counter()
    twin = get_twin(args.model, args.hours, args.epochs, args.train_seed)
    results = run(twin, args.seeds)
    print_table(results)
    payload = {
        "cstr": results,
        "meta": {
            "scenario": "processes.cstr.benchmark_scenario",
            "twin": {k: v for k, v in twin.metrics.items() if k != "history"},
            "train_config": twin.train_config,
            "machine": platform.platform(),
            "wall_s": time.perf_counter() - started,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
