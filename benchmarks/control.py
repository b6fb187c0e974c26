"""Closed-loop benchmark for any built-in process: baseline, oracle, twin + CasADi, twin + CEM.

    python benchmarks/control.py --process cstr                  # trains a twin first
    python benchmarks/control.py --process turbofan --model t.pt # uses a trained checkpoint
    python benchmarks/control.py --process glucose --cases all   # every virtual patient

The twin is trained on the process's own excitation data (its TRAINING_RECIPE, or
--hours/--epochs), with training seed --train-seed; plant seeds differ from the data seed.
Every controller meets the same cases x seeds. Scores come from the true plant state.

Writes benchmarks/results/control_<process>.json shaped
{"<process>": {"<controller>": {"cost", "cost_ratio_to_oracle", "violations",
"worst_violation", "fallbacks", "fallback_reasons", "plan_ms_median", "plan_ms_p99",
"metrics": {...}, "episodes": [...]}}, "groups": {...}, "meta": {...}}. "groups" holds,
per controller, the means over each case group where the process defines `case_group`
(glucose: adults, adolescents, children, unannounced meals). Costs are means over
episodes; the ratio is the mean of per-episode ratios to the oracle (or to the baseline
where a process has no oracle, and then says so in meta.reference); planning times are
over the steps of all episodes on which a planner ran (not stale steps, not a twin's
warm-up). "fallback_reasons" counts fallback steps by their first recorded reason, and
the steps on which the plant's own limit protection changed the move.

Where a process has a limit protection that every twin move goes through (the turbofan's
FADEC regulators), its `protected_oracle_policy` runs too, as "oracle_nmpc_protected", and
every controller gets "cost_ratio_to_protected_oracle" beside the ratio to the bare oracle:
the protection's margins cost any controller behind it, however good its model.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processes import get_process, plant_parts, process_names  # noqa: E402
from processes.base import benchmark_cases, fallback_reasons, planning_times_ms  # noqa: E402
from twin.assembly import build_controller  # noqa: E402
from twin.records import EpisodeResult  # noqa: E402
from twin.train import train_twin  # noqa: E402
from twin.twin_model import Twin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
console = Console(width=160)
PROTECTED_ORACLE = "oracle_nmpc_protected"


TrainingKey = tuple[tuple[str, Any], ...]


def training_key(module: ModuleType, case: dict[str, Any]) -> TrainingKey:
    """Case arguments that change the plant a twin must learn (glucose: the patient)."""
    return tuple((k, case[k]) for k in getattr(module, "TRAINING_CASE_KEYS", ()) if k in case)


def get_twin(
    module: ModuleType,
    key: TrainingKey,
    model: Path | None,
    hours: float | None,
    epochs: int | None,
    seed: int,
) -> Twin:
    if model is not None:
        return Twin.load(model)
    recipe, kwargs = module.TRAINING_RECIPE, dict(key)
    spec = module.spec_for(**kwargs) if kwargs and hasattr(module, "spec_for") else module.SPEC
    console.log(f"training a twin of {spec.name} {kwargs or ''}")
    df = module.generate_training_log(hours or recipe.hours, seed=1, show_progress=True, **kwargs)
    config = recipe.train_config(
        epochs=epochs or recipe.epochs, seed=seed, max_seconds=recipe.max_minutes * 60.0
    )
    twin, _ = train_twin(df, spec, config, show_progress=True)
    return twin


def controllers(
    module: ModuleType, twin: Twin, planners: list[str]
) -> dict[str, Callable[[], Any]]:
    """Fresh policy factories: each episode starts from a clean controller state."""
    out: dict[str, Callable[[], Any]] = {"baseline": module.baseline_policy}
    if module.oracle_policy() is not None:
        out["oracle_nmpc"] = module.oracle_policy
    if hasattr(module, "protected_oracle_policy"):
        out[PROTECTED_ORACLE] = module.protected_oracle_policy
    for planner in planners:
        out[f"twin_{planner}"] = lambda p=planner: module.twin_policy(
            build_controller(twin, p, parts=plant_parts(twin.spec))
        )
    return out


def run(
    module: ModuleType,
    twins: dict[TrainingKey, Twin],
    seeds: list[int],
    cases: list[dict[str, Any]],
    planners: list[str],
) -> tuple[dict[str, dict[str, Any]], str]:
    episodes: dict[str, list[tuple[dict[str, Any], int, EpisodeResult]]] = {}
    for case in cases:
        twin = twins[training_key(module, case)]
        for name, factory in controllers(module, twin, planners).items():
            for seed in seeds:
                episode = module.run_episode(
                    factory(), name, seed=seed, show_progress=False, **case
                )
                episodes.setdefault(name, []).append((case, seed, episode))
                console.log(
                    f"{name} {case or ''} seed {seed}: cost "
                    f"{episode.metrics['cost']:.4g}, violations "
                    f"{episode.metrics['violations']}, fallbacks "
                    f"{episode.metrics['fallbacks']}"
                )
    reference = "oracle_nmpc" if "oracle_nmpc" in episodes else "baseline"
    reference_costs = [ep.metrics["cost"] for _, _, ep in episodes[reference]]
    protected_costs = [ep.metrics["cost"] for _, _, ep in episodes.get(PROTECTED_ORACLE, [])]
    return {
        name: summarise(runs, reference_costs, protected_costs or None)
        for name, runs in episodes.items()
    }, reference


def _mean_ratio(metrics: list[dict[str, Any]], reference_costs: list[float]) -> float:
    """Mean over episodes of each one's cost over the reference's on the same case and seed."""
    return float(
        np.mean(
            [
                m["cost"] / ref if ref > 0 else float("nan")
                for m, ref in zip(metrics, reference_costs, strict=True)
            ]
        )
    )


def summarise(
    runs: list[tuple[dict[str, Any], int, EpisodeResult]],
    reference_costs: list[float],
    protected_costs: list[float] | None = None,
) -> dict[str, Any]:
    metrics = [ep.metrics for _, _, ep in runs]
    plan_ms = np.concatenate([planning_times_ms(ep.steps) or [0.0] for _, _, ep in runs])
    numeric = sorted({k for m in metrics for k, v in m.items() if isinstance(v, int | float)})
    protected = (
        {}
        if protected_costs is None
        else {"cost_ratio_to_protected_oracle": _mean_ratio(metrics, protected_costs)}
    )
    return {
        "cost": float(np.mean([m["cost"] for m in metrics])),
        "cost_ratio_to_oracle": _mean_ratio(metrics, reference_costs),
        **protected,
        "violations": int(sum(m["violations"] for m in metrics)),
        "worst_violation": float(max(m["worst_violation"] for m in metrics)),
        "fallbacks": int(sum(m["fallbacks"] for m in metrics)),
        "fallback_reasons": _fallback_reasons(runs),
        "plan_ms_median": float(np.median(plan_ms)),
        "plan_ms_p99": float(np.percentile(plan_ms, 99)),
        "metrics": {k: float(np.mean([m[k] for m in metrics if k in m])) for k in numeric},
        "episodes": [
            {
                "case": case,
                "seed": seed,
                **{k: v for k, v in ep.metrics.items() if isinstance(v, int | float)},
            }
            for case, seed, ep in runs
        ],
    }


def _fallback_reasons(runs: list[tuple[dict[str, Any], int, EpisodeResult]]) -> dict[str, int]:
    """Fallback steps of all episodes by reason (zero reasons left out), and the steps the
    plant's limit protection changed."""
    total: dict[str, int] = {}
    for _, _, episode in runs:
        for reason, count in fallback_reasons(episode.steps).items():
            total[reason] = total.get(reason, 0) + count
    return {reason: count for reason, count in total.items() if count}


def group_summaries(
    module: ModuleType, results: dict[str, dict[str, Any]], keys: list[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per controller, the mean of `keys` over the episodes of each case group (the
    module's `case_group`, e.g. glucose: adult / adolescent / child); {} without groups."""
    grouping = getattr(module, "case_group", None)
    if grouping is None:
        return {}
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, result in results.items():
        groups: dict[str, list[dict[str, Any]]] = {}
        for episode in result["episodes"]:
            groups.setdefault(grouping(episode["case"]), []).append(episode)
        out[name] = {
            group: {
                "episodes": len(eps),
                **{
                    k: float(np.mean([e[k] for e in eps if k in e]))
                    for k in keys
                    if any(k in e for e in eps)
                },
            }
            for group, eps in groups.items()
        }
    return out


def print_groups(
    process: str, groups: dict[str, dict[str, dict[str, float]]], keys: list[str]
) -> None:
    table = Table(title=f"{process}: by case group, mean over episodes")
    for col in ("controller", "group", "episodes", *keys):
        table.add_column(col, justify="right")
    for name, by_group in groups.items():
        for group, values in sorted(by_group.items()):
            table.add_row(
                name,
                group,
                str(int(values["episodes"])),
                *[f"{values.get(k, float('nan')):.4g}" for k in keys],
            )
    console.print(table)


def print_table(
    process: str, results: dict[str, dict[str, Any]], reference: str, extra: list[str]
) -> None:
    ratio = "ratio to oracle" if reference == "oracle_nmpc" else "ratio to baseline"
    protected = any("cost_ratio_to_protected_oracle" in r for r in results.values())
    table = Table(title=f"{process}: closed loop, true plant state")
    for col in (
        "controller",
        "cost",
        ratio,
        *(["ratio to protected oracle"] if protected else []),
        "violations",
        "worst",
        "fallbacks",
        "plan ms median",
        "plan ms p99",
        *extra,
    ):
        table.add_column(col, justify="right")
    for name, r in results.items():
        ratios = [f"{r['cost_ratio_to_oracle']:.3f}"]
        if protected:
            ratios.append(f"{r.get('cost_ratio_to_protected_oracle', float('nan')):.3f}")
        table.add_row(
            name,
            f"{r['cost']:.4g}",
            *ratios,
            str(r["violations"]),
            f"{r['worst_violation']:.3g}",
            str(r["fallbacks"]),
            f"{r['plan_ms_median']:.2f}",
            f"{r['plan_ms_p99']:.2f}",
            *[f"{r['metrics'].get(k, float('nan')):.4g}" for k in extra],
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--process", choices=process_names(), required=True)
    parser.add_argument("--model", type=Path, help="trained twin checkpoint (else train one)")
    parser.add_argument("--save-model", type=Path, help="keep the trained twin here")
    parser.add_argument("--hours", type=float, help="training log length (default: recipe)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: recipe)")
    parser.add_argument("--train-seed", type=int, default=0)
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[7, 11, 13, 17, 19],
        help="plant seeds (noise, scenario draws)",
    )
    parser.add_argument(
        "--cases",
        default="default",
        help="'default' (the module's BENCHMARK_CASES) or 'all' (ALL_CASES)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="run only the cases whose description contains one of these, e.g. adolescent#007",
    )
    parser.add_argument(
        "--episode-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run_episode argument for every case, e.g. hours=4 (repeat)",
    )
    parser.add_argument("--planners", nargs="+", default=["casadi", "cem", "mppi"])
    parser.add_argument(
        "--extra",
        nargs="*",
        default=None,
        help="process metrics to show as columns (default: EPISODE_SUMMARY)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    module = get_process(args.process)
    started = time.perf_counter()
    cases = (
        [dict(c) for c in module.ALL_CASES]
        if args.cases == "all" and hasattr(module, "ALL_CASES")
        else benchmark_cases(module)
    )
    if args.only:
        cases = [c for c in cases if any(text in json.dumps(c) for text in args.only)]
        if not cases:
            parser.error(f"no case matches {args.only}")
    for item in args.episode_arg:
        key, _, value = item.partition("=")
        for case in cases:
            case[key] = json.loads(value) if value[:1] in "0123456789-[{tf" else value
    keys = list(dict.fromkeys(training_key(module, case) for case in cases))
    if args.model is not None and len(keys) > 1:
        parser.error(
            "--model gives one twin, but these cases need one per "
            f"{', '.join(module.TRAINING_CASE_KEYS)}"
        )
    twins = {
        key: get_twin(module, key, args.model, args.hours, args.epochs, args.train_seed)
        for key in keys
    }
    if args.save_model:
        for i, twin in enumerate(twins.values()):
            twin.save(
                args.save_model
                if len(twins) == 1
                else args.save_model.with_suffix(f".{i}{args.save_model.suffix}")
            )
    results, reference = run(module, twins, args.seeds, cases, args.planners)
    extra = (
        args.extra
        if args.extra is not None
        else [
            row.key
            for row in module.EPISODE_SUMMARY
            if row.key not in ("cost", "violations", "fallbacks", "plan_ms_median", "plan_ms_p99")
        ]
    )
    print_table(args.process, results, reference, extra)
    groups = group_summaries(module, results, ["cost", *extra])
    if groups:
        print_groups(args.process, groups, ["cost", *extra])
    payload = {
        args.process: results,
        "groups": groups,
        "meta": {
            "reference": reference,
            "cases": cases,
            "seeds": args.seeds,
            "twins": [
                {
                    "training_case": dict(key),
                    **{k: v for k, v in twin.metrics.items() if k != "history"},
                }
                for key, twin in twins.items()
            ],
            "train_config": next(iter(twins.values())).train_config,
            "machine": platform.platform(),
            "wall_s": time.perf_counter() - started,
        },
    }
    out = args.out or RESULTS / f"control_{args.process}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=float))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
