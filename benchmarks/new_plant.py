"""A plant the project was not built for: from a tag file and a log, does the twin beat a
well-tuned PI out of the box?

For every zoo plant (`benchmarks.zoo`): export its excitation log (6-significant-digit CSV,
1 % sensor noise) and its tag file (physical facts and the PI pairing, no gains), then,
through the files alone, as a plant engineer would:

* load the tag file and the log, tune the declared PI pairing by SIMC from the log
  (`twin.simc.with_simc_gains`), train the twin with the default settings
  (`processes.train_config_for(None)`) within a CPU budget;
* run the scored setpoint episode three ways from the same steady state:
  - the twin with the default planner, built by the API's own factory
    (`api.services.loops.default_controller_factory`) and stepped through the same
    `step(time_s, measurements, setpoints)` a control loop posts to;
  - the SIMC PI the tag file's pairing gets (`twin.baseline.spec_fallback`);
  - the oracle NMPC on the true equations with the same bounds and rate limits.

Cost: mean over the episode of sum over controlled sensors of ((y - setpoint) / span)^2
on the TRUE outputs (span: the sensor's instrument range). Offset: mean |y - setpoint|
(true) over the last quarter of each setpoint segment, in sensor noise standard deviations.
Violations: samples where a true output is beyond a hard limit. Fallback share: steps
whose status is `fallback` after the twin's warm-up window.

    .venv/bin/python -m benchmarks.new_plant                # full: 5 min budget, 3 x 2 seeds
    .venv/bin/python -m benchmarks.new_plant --quick        # 60 s budget, 1 x 1 seed
    .venv/bin/python -m benchmarks.new_plant --plants level_tank --budget-s 120
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from api.services.loops import default_controller_factory
from benchmarks.zoo import HELD_OUT, PLANTS, OracleNmpc, Plant
from processes import train_config_for
from twin.baseline import spec_fallback
from twin.logs import read_log
from twin.simc import with_simc_gains
from twin.spec import ProcessSpec
from twin.train import train_twin

RESULTS = Path(__file__).parent / "results" / "new_plant.json"
ALL_PLANTS = {**PLANTS, **HELD_OUT}
TARGETS = {
    "cost_vs_pi": 0.8,
    "cost_vs_oracle": 1.3,
    "violations": 0,
    "fallback_share": 0.05,
    "offset_noise_stds": 2.0,
    "training_s": 300.0,
}
PLANNER = "casadi"  # the API's default planner for a loop


@dataclass
class Episode:
    outputs: np.ndarray  # (T, sensors), true
    setpoints: np.ndarray  # (T, controlled)
    statuses: list[str]
    step_ms: list[float]


def run_episode(plant: Plant, decide: Any, noise_seed: int) -> Episode:
    """`decide(k, time_s, measured, setpoints, state) -> (actuators, status)`; the plant
    applies the actuators after bounds and rate limits. The measured disturbances follow
    the episode's segments (`state.disturbance`, seen by every controller)."""
    rng = np.random.default_rng(1000 + noise_seed)
    state = plant.start()
    controlled = [s.name for s in plant.sensors if s.controlled]
    outputs, wanted, statuses, step_ms = [], [], [], []
    schedule = zip(plant.setpoint_schedule(), plant.disturbance_schedule(), strict=True)
    for k, (setpoints, disturbance) in enumerate(schedule):
        state.disturbance = disturbance
        true = plant.measure(state)
        measured = true + rng.normal(0.0, plant.noise_std())
        started = time.perf_counter()
        proposal, status = decide(k, k * plant.sample_period_s, measured, setpoints, state)
        step_ms.append(1e3 * (time.perf_counter() - started))
        applied = plant.clip(np.asarray(proposal, dtype=float), state.history[-1])
        state = plant.advance(state, applied)
        outputs.append(plant.measure(state))
        wanted.append([setpoints[c] for c in controlled])
        statuses.append(status)
    return Episode(np.array(outputs), np.array(wanted), statuses, step_ms)


def twin_decider(plant: Plant, checkpoint: bytes) -> Any:
    """The twin as a control loop runs it: built by the API's own factory from the
    checkpoint bytes, stepped once per sample."""
    controller = default_controller_factory(checkpoint, PLANNER)
    sensors, actuators = [s.name for s in plant.sensors], [a.name for a in plant.actuators]
    disturbances = [d.name for d in plant.disturbances]

    def decide(
        k: int, time_s: float, measured: np.ndarray, setpoints: dict[str, float], state: Any
    ) -> tuple[np.ndarray, str]:
        measurements: dict[str, float | None] = dict(
            zip(sensors, map(float, measured), strict=True)
        )
        measurements.update(zip(disturbances, map(float, state.disturbance), strict=True))
        # the plant reports what is applied (valve positions), as a loop client may
        measurements.update(zip(actuators, map(float, state.history[-1]), strict=True))
        record = controller.step(time_s, measurements, setpoints)
        return np.array([record.actuators[a] for a in actuators]), str(record.status)

    return decide


def pi_decider(plant: Plant, spec: ProcessSpec) -> Any:
    fallback = spec_fallback(spec)
    assert fallback is not None
    sensors, actuators = [s.name for s in plant.sensors], [a.name for a in plant.actuators]

    def decide(
        k: int, time_s: float, measured: np.ndarray, setpoints: dict[str, float], state: Any
    ) -> tuple[np.ndarray, str]:
        applied = dict(zip(actuators, map(float, state.history[-1]), strict=True))
        out = fallback(dict(zip(sensors, map(float, measured), strict=True)), setpoints, applied)
        return np.array([out[a] for a in actuators]), "pi"

    return decide


def hold_decider(
    k: int, time_s: float, measured: np.ndarray, setpoints: dict[str, float], state: Any
) -> tuple[np.ndarray, str]:
    return state.history[-1], "hold"


def oracle_decider(plant: Plant) -> Any:
    controlled = [s.name for s in plant.sensors if s.controlled]
    oracle = OracleNmpc(plant, controlled)

    def decide(
        k: int, time_s: float, measured: np.ndarray, setpoints: dict[str, float], state: Any
    ) -> tuple[np.ndarray, str]:
        return oracle.step(state, setpoints), "oracle"

    return decide


def score(plant: Plant, episode: Episode, warmup: int = 0) -> dict[str, Any]:
    names = [s.name for s in plant.sensors]
    controlled = [s.name for s in plant.sensors if s.controlled]
    index = [names.index(c) for c in controlled]
    error = episode.outputs[:, index] - episode.setpoints
    cost = float(np.mean(np.sum((error / plant.spans(controlled)) ** 2, axis=1)))
    violations = 0
    for i, s in enumerate(plant.sensors):
        y = episode.outputs[:, i]
        violations += int(np.sum((y > s.high) if s.high is not None else 0))
        violations += int(np.sum((y < s.low) if s.low is not None else 0))
    noise = plant.noise_std()[index]
    offsets = []
    for start, end in plant.segment_bounds():
        tail = slice(end - max(1, (end - start) // 4), end)
        offsets.append(np.mean(np.abs(error[tail]), axis=0) / noise)
    after = episode.statuses[warmup:]
    return {
        "cost": cost,
        "violations": violations,
        "offset_noise_stds": float(np.max(offsets)),
        "offsets_by_segment": np.round(np.array(offsets), 2).tolist(),
        "fallback_share": sum(s == "fallback" for s in after) / max(1, len(after)),
        "step_ms_median": float(np.median(episode.step_ms)),
        "step_ms_p99": float(np.percentile(episode.step_ms, 99)),
    }


def from_files(tags: Path, log: Path) -> tuple[ProcessSpec, Any]:
    """What a plant engineer's two files give: the spec (PI gains tuned from the log
    where the tag file names only the pairing) and the log."""
    df = read_log(log)
    return with_simc_gains(ProcessSpec.load(tags), df), df


def bench_plant(
    name: str, noise_seeds: list[int], train_seeds: list[int], budget_s: float, folder: Path
) -> dict[str, Any]:
    plant = ALL_PLANTS[name]()
    tags, log = plant.export(folder / name, seed=7)
    spec, df = from_files(tags, log)
    result: dict[str, Any] = {
        "plant": name,
        "description": plant.description,
        "held_out": name in HELD_OUT,
        "log_rows": len(df),
        "pi": [
            {"sensor": p.sensor, "actuator": p.actuator, "kp": p.kp, "ti_s": p.ti_s}
            for p in spec.baseline
        ],
    }
    print(f"[{name}] SIMC PI: {result['pi']}", flush=True)
    oracle = score(plant, run_episode(plant, oracle_decider(plant), noise_seed=0))
    print(f"[{name}] oracle cost {oracle['cost']:.4g}", flush=True)
    # the valves held where they are: a PI that costs more than this is no baseline
    hold = score(plant, run_episode(plant, hold_decider, noise_seed=0))
    result["hold_cost"] = hold["cost"]
    pi_runs = [score(plant, run_episode(plant, pi_decider(plant, spec), s)) for s in noise_seeds]
    twin_runs = []
    for train_seed in train_seeds:
        started = time.perf_counter()
        twin, _ = train_twin(
            df,
            spec,
            train_config_for(None, seed=train_seed, max_seconds=budget_s),
            show_progress=False,
        )
        training_s = time.perf_counter() - started
        checkpoint = twin.to_bytes()
        for noise_seed in noise_seeds:
            run = score(
                plant,
                run_episode(plant, twin_decider(plant, checkpoint), noise_seed),
                warmup=twin.config.window,
            )
            run.update(
                train_seed=train_seed,
                noise_seed=noise_seed,
                training_s=training_s,
                horizon=twin.spec.control.horizon,  # samples, from the log
            )
            twin_runs.append(run)
            print(
                f"[{name}] twin seed {train_seed}/{noise_seed}: cost {run['cost']:.4g} "
                f"fallback {run['fallback_share']:.0%} offset "
                f"{run['offset_noise_stds']:.2f} sd, {run['violations']} violations, "
                f"trained {training_s:.0f} s",
                flush=True,
            )
    pi_cost = float(np.mean([r["cost"] for r in pi_runs]))
    twin_cost = float(np.mean([r["cost"] for r in twin_runs]))
    result.update(
        oracle=oracle,
        pi_runs=pi_runs,
        twin_runs=twin_runs,
        pi_cost=pi_cost,
        twin_cost=twin_cost,
        summary={
            "cost_vs_pi": twin_cost / pi_cost,
            "cost_vs_oracle": twin_cost / oracle["cost"],
            "pi_vs_oracle": pi_cost / oracle["cost"],
            "pi_vs_hold": pi_cost / result["hold_cost"],
            "violations": int(sum(r["violations"] for r in twin_runs)),
            "pi_violations": int(sum(r["violations"] for r in pi_runs)),
            "fallback_share": float(np.mean([r["fallback_share"] for r in twin_runs])),
            "offset_noise_stds": float(np.max([r["offset_noise_stds"] for r in twin_runs])),
            "pi_offset_noise_stds": float(np.max([r["offset_noise_stds"] for r in pi_runs])),
            "training_s": float(np.max([r["training_s"] for r in twin_runs])),
        },
    )
    result["met"] = met(result["summary"])
    return result


def met(summary: dict[str, float]) -> dict[str, bool]:
    return {
        "cost_vs_pi": summary["cost_vs_pi"] <= TARGETS["cost_vs_pi"],
        "cost_vs_oracle": summary["cost_vs_oracle"] <= TARGETS["cost_vs_oracle"],
        "violations": summary["violations"] <= TARGETS["violations"],
        "fallback_share": summary["fallback_share"] <= TARGETS["fallback_share"],
        "offset": summary["offset_noise_stds"] <= TARGETS["offset_noise_stds"],
        "training_s": summary["training_s"] <= TARGETS["training_s"],
    }


def table(results: list[dict[str, Any]]) -> str:
    head = (
        "| plant | twin/PI (<= 0.8) | twin/oracle (<= 1.3) | PI/oracle | PI/hold | violations twin "
        "(PI) | fallback share (<= 5 %) | offset, noise sd (<= 2; PI) | training s "
        "(<= 300) |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in results:
        s, m = r["summary"], r["met"]

        def mark(ok: bool) -> str:
            return "met" if ok else "NOT met"

        pi_vs_hold = f"{s['pi_vs_hold']:.2f}" if "pi_vs_hold" in s else "-"  # older runs
        lines.append(
            f"| {r['plant']} | {s['cost_vs_pi']:.2f} {mark(m['cost_vs_pi'])} "
            f"| {s['cost_vs_oracle']:.2f} {mark(m['cost_vs_oracle'])} | {s['pi_vs_oracle']:.2f} "
            f"| {pi_vs_hold} "
            f"| {s['violations']} ({s['pi_violations']}) {mark(m['violations'])} "
            f"| {100 * s['fallback_share']:.1f} % {mark(m['fallback_share'])} "
            f"| {s['offset_noise_stds']:.2f} ({s['pi_offset_noise_stds']:.2f}) "
            f"{mark(m['offset'])} | {s['training_s']:.0f} {mark(m['training_s'])} |"
        )
    return "\n".join(lines)


def combine(paths: list[Path], out: Path) -> None:
    """One report from runs of one plant each, which must share their settings."""
    reports = [json.loads(p.read_text()) for p in paths]
    settings = ("budget_s", "noise_seeds", "train_seeds", "planner", "quick")
    for report in reports[1:]:
        if any(report[k] != reports[0][k] for k in settings):
            raise SystemExit(f"runs differ in their settings {settings}; not combined")
    merged = {
        **reports[0],
        "wall_s": max(r["wall_s"] for r in reports),
        "plants": [plant for r in reports for plant in r["plants"]],
    }
    out.write_text(json.dumps(merged, indent=2))
    print(table(merged["plants"]))
    print(f"saved {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plants", nargs="*", default=list(ALL_PLANTS), choices=list(ALL_PLANTS))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="60 s training budget, one noise seed, one training seed",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="training budget per twin, seconds (default 300, quick 60)",
    )
    parser.add_argument("--noise-seeds", type=int, default=None)
    parser.add_argument("--train-seeds", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="*",
        default=None,
        help="merge the JSON of runs made one plant each (in parallel)",
    )
    args = parser.parse_args()
    if args.combine:
        combine(args.combine, args.out)
        return
    budget = args.budget_s or (60.0 if args.quick else 300.0)
    noise_seeds = list(range(args.noise_seeds or (1 if args.quick else 3)))
    train_seeds = list(range(args.train_seeds or (1 if args.quick else 2)))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        results = [
            bench_plant(name, noise_seeds, train_seeds, budget, Path(folder))
            for name in args.plants
        ]
    report = {
        "targets": TARGETS,
        "budget_s": budget,
        "noise_seeds": noise_seeds,
        "train_seeds": train_seeds,
        "planner": PLANNER,
        "quick": args.quick,
        "wall_s": time.perf_counter() - started,
        "plants": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
