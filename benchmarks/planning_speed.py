"""Planning speed in the twin's embedding space: every planner setup, one machine, one run.

    .venv/bin/python benchmarks/planning_speed.py           # full run (about 10 minutes)
    .venv/bin/python benchmarks/planning_speed.py --quick   # small twins, short sequences
    .venv/bin/python benchmarks/planning_speed.py --twins random-w16 --merge  # a part, added

Twins: one trained on CSTR data (embedding width 32) and randomly initialised twins of the
production shape (width 32 and 16, predictor 128 wide, 1, 2 and 4 actuators, three limited
sensors; and width 32 with Tennessee Eastman's 12 actuators, where IPOPT runs 40 steps).
Each setup runs a closed sequence of consecutive control steps, so warm starts act as they
do in service: on the trained twin, the CSTR benchmark episode itself (the plant is the
simulator, the controller `twin.assembly.build_controller`'s, the closed-loop cost is the
episode's); on a random twin, the twin is its own plant (the first planned move is applied,
the embedding moves on through the predictor plus noise, the goal jumps every 50 steps).
Times are per control step (the planner's own clock). The IPOPT planner runs in the same
process on the same sequences, so ratios to it hold even on a loaded machine. One thread
for torch and for CasADi's solvers.

Writes benchmarks/results/planning_speed.json and prints the table of every setup tried.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy/torch/casadi load their pools

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processes import cstr, plant_parts  # noqa: E402
from processes.base import planning_times_ms  # noqa: E402
from twin.assembly import build_controller  # noqa: E402
from twin.data import Normalizer  # noqa: E402
from twin.model import JEPA, JEPAConfig  # noqa: E402
from twin.planning import (  # noqa: E402
    CasadiPlanner,
    CEMPlanner,
    MPPIPlanner,
    Planner,
    PlannerSettings,
    PlanningProblem,
    RTIPlanner,
    StructuredNLPPlanner,
    find_compiler,
)
from twin.spec import ProcessSpec, Tag, TagRole  # noqa: E402
from twin.train import TrainConfig, train_twin  # noqa: E402
from twin.twin_model import GoalBank, Twin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
BASELINE = "ipopt"
WIDE_BASELINE_STEPS = 40
console = Console(width=170)


@dataclass(frozen=True)
class Setup:
    name: str
    build: Callable[[Twin], Planner]
    notes: str
    sweep: bool = False  # only on the sweep twins (the trained one and random width 32 x 4)


SETUPS = (
    Setup(
        BASELINE,
        lambda t: CasadiPlanner(t),
        "casadi-ipopt: multiple-shooting NLP, SX, exact Hessian, warm start (the old default)",
    ),
    Setup(
        "rti-daqp-1",
        lambda t: RTIPlanner(t, sqp_iterations=1),
        "casadi (default): real-time iteration, one QP per sample (acados style); numpy "
        "linearisation, DAQP warm-started from the last active set",
    ),
    Setup(
        "rti-daqp-3",
        lambda t: RTIPlanner(t, sqp_iterations=3),
        "the same, up to 3 Gauss-Newton iterations per sample",
    ),
    Setup(
        "rti-casadi-daqp-1",
        lambda t: RTIPlanner(t, qp_solver="casadi-daqp", linearisation="casadi"),
        "the default until now: CasADi linearisation, DAQP through CasADi (cold start)",
    ),
    Setup(
        "rti-casadi-daqp-3",
        lambda t: RTIPlanner(t, qp_solver="casadi-daqp", linearisation="casadi", sqp_iterations=3),
        "the same, up to 3 iterations",
    ),
    Setup("mppi-256x4", lambda t: MPPIPlanner(t), "MPPI in torch, 256 samples x 4 iterations"),
    Setup("cem-256x6", lambda t: CEMPlanner(t), "CEM in torch, 256 samples x 6 iterations"),
    Setup(
        "rti-daqp-converged",
        lambda t: RTIPlanner(t, sqp_iterations=40, step_tolerance=1e-7),
        "Gauss-Newton SQP run to convergence (up to 40 QPs)",
        sweep=True,
    ),
    Setup(
        "rti-daqp-1-casadi-lin",
        lambda t: RTIPlanner(t, linearisation="casadi"),
        "default QP, CasADi linearisation (VM)",
        sweep=True,
    ),
    Setup(
        "rti-daqp-1-compiled",
        lambda t: RTIPlanner(t, compile=True),
        "default QP, CasADi linearisation compiled with gcc -O2, cached by content hash",
        sweep=True,
    ),
    Setup(
        "rti-qpoases-1",
        lambda t: RTIPlanner(t, qp_solver="qpoases"),
        "QP by qpOASES (dense, through CasADi)",
        sweep=True,
    ),
    Setup(
        "rti-highs-1",
        lambda t: RTIPlanner(t, qp_solver="highs"),
        "QP by HiGHS (through CasADi)",
        sweep=True,
    ),
    Setup(
        "rti-proxqp-1",
        lambda t: RTIPlanner(t, qp_solver="proxqp"),
        "QP by ProxQP (through CasADi)",
        sweep=True,
    ),
    Setup(
        "rti-osqp-1",
        lambda t: RTIPlanner(t, qp_solver="osqp"),
        "QP by OSQP (ADMM, eps 1e-7, through CasADi)",
        sweep=True,
    ),
    Setup(
        "rti-qrqp-1",
        lambda t: RTIPlanner(t, qp_solver="qrqp"),
        "QP by qrqp (CasADi's active set, sparse QR)",
        sweep=True,
    ),
    Setup(
        "fatrop",
        lambda t: StructuredNLPPlanner(t, solver="fatrop", compile=False),
        "casadi-fatrop: fatrop's OCP structure, MX, exact Hessian, VM",
        sweep=True,
    ),
    Setup(
        "fatrop-jit",
        lambda t: StructuredNLPPlanner(t, solver="fatrop", compile=True),
        "fatrop + CasADi jit (gcc -O1) of the NLP functions",
        sweep=True,
    ),
)


# -- twins ------------------------------------------------------------------------------
def synthetic_spec(n_actuators: int) -> ProcessSpec:
    """Three sensors (one limited above, one below, one free) and n actuators."""
    tags = [
        Tag(name="s_high", role=TagRole.SENSOR, unit="1", high=1.5, controlled=True),
        Tag(name="s_low", role=TagRole.SENSOR, unit="1", low=-1.5),
        Tag(name="s_free", role=TagRole.SENSOR, unit="1"),
    ]
    tags += [
        Tag(
            name=f"u{i}",
            role=TagRole.ACTUATOR,
            unit="1",
            low=-2.0,
            high=2.0,
            rate_limit=0.25,
            nominal=0.0,
        )
        for i in range(n_actuators)
    ]
    return ProcessSpec(name=f"synthetic-{n_actuators}", sample_period_s=1.0, tags=tuple(tags))


def random_twin(embed_dim: int, n_actuators: int, seed: int) -> Twin:
    """A randomly initialised twin of the production predictor shape (unit normalisation)."""
    spec = synthetic_spec(n_actuators)
    names = tuple(t.name for t in spec.tags)
    norm = Normalizer(names, tuple(0.0 for _ in names), tuple(1.0 for _ in names))
    config = JEPAConfig(window=8, embed_dim=embed_dim, encoder_hidden=16)
    torch.manual_seed(seed)
    model = JEPA(config, len(names), n_actuators, 3)
    bank = GoalBank(torch.randn(16, embed_dim), torch.randn(16, 3), torch.zeros(16))
    return Twin(spec, config, norm, model, bank)


def trained_cstr_twin(quick: bool, model: Path | None) -> Twin:
    if model is not None:
        return Twin.load(model)
    hours, epochs = (1.0, 2) if quick else (4.0, 8)
    console.log(f"training a CSTR twin (width 32, {hours:g} h of data, {epochs} epochs)")
    df = cstr.generate_training_log(hours=hours, seed=1)
    cfg = TrainConfig(epochs=epochs, seed=0, max_seconds=150.0, model=JEPAConfig(embed_dim=32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train_twin(df, cstr.SPEC, cfg, show_progress=False)[0]


# -- closed sequences -------------------------------------------------------------------
def twin_loop(twin: Twin, planner: Planner, steps: int, seed: int) -> dict[str, Any]:
    """The twin as its own plant: plan, apply the first move, step the predictor plus noise."""
    rng = np.random.default_rng(seed)
    lim = planner.limits  # type: ignore[attr-defined]
    a, horizon = len(lim.u_low), planner.settings.horizon
    z = twin.bank.embeddings[0].double().numpy()
    u_prev = np.zeros(a)
    times, realised, failures = [], 0.0, 0
    goal = z
    for k in range(steps):
        if k % 50 == 0:  # a reachable goal: where a random feasible sequence leads
            moves = rng.uniform(-1.0, 1.0, (horizon, a)) * lim.rate
            path = np.clip(u_prev + np.cumsum(moves, axis=0), lim.u_low, lim.u_high)
            goal = _rollout(twin, z, path)[-1]
        result = planner.plan(PlanningProblem(z, u_prev, goal))
        times.append(result.solve_ms)
        u = result.actions[0] if result.ok else u_prev
        failures += int(not result.ok)
        u = np.clip(np.clip(u, u_prev - lim.rate, u_prev + lim.rate), lim.u_low, lim.u_high)
        z = _rollout(twin, z, u[None, :])[0] + rng.normal(0.0, 0.01, z.shape)
        realised += float(((z - goal) ** 2).sum()) + planner.settings.move_weight * float(
            (((u - u_prev) / lim.rate) ** 2).sum()
        )
        u_prev = u
    return {"times_ms": times, "loop_cost": realised, "failures": failures}


def _rollout(twin: Twin, z0: np.ndarray, actions: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = torch.as_tensor(z0, dtype=torch.float32).unsqueeze(0)
        u = torch.as_tensor(actions, dtype=torch.float32).unsqueeze(0)
        return twin.model.predictor.rollout(z, u)[0].double().numpy()


def cstr_loop(twin: Twin, planner: Planner, seed: int) -> dict[str, Any]:
    """The CSTR benchmark episode with this planner inside the twin controller."""
    controller = build_controller(twin, planner, parts=plant_parts(twin.spec))
    episode = cstr.run_episode(cstr.twin_policy(controller), planner.name, seed=seed)
    return {
        "times_ms": planning_times_ms(episode.steps),
        "loop_cost": float(episode.metrics["cost"]),
        "failures": sum(any(e.kind == "solver_failed" for e in s.events) for s in episode.steps),
        "violations": int(episode.metrics["violations"]),
        "fallbacks": int(episode.metrics["fallbacks"]),
    }


def measure(setup: Setup, twin: Twin, kind: str, steps: int, seed: int) -> dict[str, Any]:
    """Build the setup's planner for this twin and run its closed sequence."""
    started = time.perf_counter()
    planner = setup.build(twin)
    build_s = time.perf_counter() - started
    run = (
        cstr_loop(twin, planner, seed) if kind == "cstr" else twin_loop(twin, planner, steps, seed)
    )
    times = np.asarray(run.pop("times_ms"))
    compiled = getattr(planner, "compiled", None)
    return {
        "median_ms": float(np.median(times)),
        "p99_ms": float(np.percentile(times, 99)),
        "max_ms": float(times.max()),
        "steps": len(times),
        "build_s": build_s,
        "compiled": compiled,
        **run,
    }


# -- report -----------------------------------------------------------------------------
def print_table(results: dict[str, dict[str, Any]]) -> None:
    table = Table(
        title="Planning speed: what we tried and what each gave "
        "(ms per control step; ratio = median / IPOPT's median, same run)"
    )
    for col in (
        "twin",
        "setup",
        "median ms",
        "p99 ms",
        "ratio",
        "build s",
        "loop cost",
        "loop cost / IPOPT",
        "failed",
        "notes",
    ):
        table.add_column(col, justify="left" if col in ("twin", "setup", "notes") else "right")
    notes = {s.name: s.notes for s in SETUPS}
    for twin_name, rows in results.items():
        base = rows.get(BASELINE)
        for name, r in rows.items():
            ratio = r["median_ms"] / base["median_ms"] if base else float("nan")
            same_run = base is not None and base["steps"] == r["steps"]
            cost_ratio = r["loop_cost"] / base["loop_cost"] if same_run else float("nan")
            extra = (
                " (no compiler: VM)" if r.get("compiled") is False and "compiled" in name else ""
            )
            table.add_row(
                twin_name,
                name,
                f"{r['median_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{ratio:.3f}",
                f"{r['build_s']:.1f}",
                f"{r['loop_cost']:.4g}",
                f"{cost_ratio:.3f}",
                str(r["failures"]),
                notes[name] + extra,
            )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small trained twin, 60-step random sequences, no sweep",
    )
    parser.add_argument("--steps", type=int, help="steps per random-twin sequence (200)")
    parser.add_argument("--model", type=Path, help="trained CSTR twin checkpoint to use")
    parser.add_argument("--setups", nargs="*", help="only these setups (and the baseline)")
    parser.add_argument(
        "--baseline-steps",
        type=int,
        help="steps of the IPOPT baseline on random twins (default: --steps)",
    )
    parser.add_argument("--twins", nargs="*", help="only twins whose name contains one of these")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add to the results already in --out instead of replacing them",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "planning_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = args.steps or (60 if args.quick else 200)
    started = time.perf_counter()
    twins: list[tuple[str, str, Twin, bool]] = [
        ("cstr-trained-w32-a1", "cstr", trained_cstr_twin(args.quick, args.model), True)
    ]
    for width in (32, 16):
        for n_actuators in (1, 2, 4):
            sweep = width == 32 and n_actuators == 4 and not args.quick
            twins.append(
                (
                    f"random-w{width}-a{n_actuators}",
                    "random",
                    random_twin(width, n_actuators, seed=n_actuators),
                    sweep,
                )
            )
    # Tennessee Eastman's shape: 12 manipulated variables (outside the 1-4 of the target)
    twins.append(("random-w32-a12", "random", random_twin(32, 12, seed=12), False))
    if args.quick:
        twins = [twins[0], twins[3]]
    if args.twins:
        twins = [t for t in twins if any(part in t[0] for part in args.twins)]
    chosen = [
        s for s in SETUPS if args.setups is None or s.name in args.setups or s.name == BASELINE
    ]
    previous = json.loads(args.out.read_text()) if args.merge and args.out.is_file() else {}
    results: dict[str, dict[str, Any]] = previous.get("results", {})
    for twin_name, kind, twin, sweep in twins:
        results[twin_name] = {}
        for setup in chosen:
            if setup.sweep and not (sweep and not args.quick):
                continue
            if setup.name == "fatrop-jit" and kind != "cstr":
                continue  # tens of seconds of compiling per model: measured once
            n = args.baseline_steps if setup.name == BASELINE and args.baseline_steps else steps
            if setup.name == BASELINE and twin_name.endswith("a12"):
                n = min(n, WIDE_BASELINE_STEPS)  # IPOPT takes seconds a step on this shape
            row = measure(setup, twin, kind, n, args.seed)
            results[twin_name][setup.name] = row
            console.log(
                f"{twin_name} {setup.name}: median {row['median_ms']:.2f} ms, "
                f"p99 {row['p99_ms']:.2f} ms, loop cost {row['loop_cost']:.4g}, "
                f"failed {row['failures']}"
            )
    print_table(results)
    payload = {
        "results": results,
        "setups": {s.name: s.notes for s in SETUPS},
        "meta": {
            "command": " ".join(["benchmarks/planning_speed.py", *sys.argv[1:]]),
            "horizon": PlannerSettings().horizon,
            "steps_random": steps,
            "steps_baseline_random": args.baseline_steps or steps,
            "steps_cstr": cstr.benchmark_scenario().steps,
            "threads": {
                "torch": torch.get_num_threads(),
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            },
            "compiler": find_compiler(),
            "machine": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "wall_s": time.perf_counter() - started,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2, default=float))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
