"""Gain check: does each twin learn the right cause and effect?

    python benchmarks/gain_check.py --label after --signs on --threads 1 --seconds 200
    python benchmarks/gain_check.py --label before --signs off --process cstr turbofan \
        --threads 1 --seconds 200
    python benchmarks/gain_check.py --label before --signs off --process glucose \
        --data-tag meal-bound-01984cd --threads 1 --seconds 200
    python benchmarks/gain_check.py --label ablation_new_data_signs_off --signs off \
        --process glucose --threads 1 --seconds 200

The glucose "before" trains on logs of the generator before probe boluses (commit
01984cd: meal boluses of 70-130 % of the carb count, corrections only above 180 mg/dL),
stored in the log cache as glucose_<patient>_120h_seed1_meal-bound-01984cd.pkl: make
them with that commit's `processes.glucose.generate_training_log(120, 1, patient=...)`.

For each process (the CSTR, glucose for adolescent#001, adult#001 and child#001, the
turbofan) a twin is trained on the process's excitation log (seed 1) with the process's
training recipe, cut to a short budget of epochs (`EPOCHS`) with a wall-clock cap
(`--seconds`), both stated in the results with the epochs each twin got done;
then `processes.step_tests.gain_check` steps every actuator by 10 % of its range (at most
one training std) in the twin's embedding rollout and on the true simulator from the
nominal operating point, and reads out the change after the horizon. A row's sign matches
when the twin's gain has the plant's sign; a plant effect smaller than 2 % of the sensor's
training spread is not judged. `--signs off` trains on specs whose `effects` are removed
(the twin is still judged against the declared signs). Results merge into
benchmarks/results/gain_check.json under the label.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processes import get_process  # noqa: E402
from processes.step_tests import gain_check  # noqa: E402
from twin.spec import ProcessSpec  # noqa: E402
from twin.train import train_twin  # noqa: E402
from twin.twin_model import Twin  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gain_check.json"
CACHE = Path(tempfile.gettempdir()) / "twin-gain-check-logs"
TWINS = Path(tempfile.gettempdir()) / "twin-gain-check-twins"
TRAIN_SEED = 1
CASES: dict[str, list[dict[str, Any]]] = {
    "cstr": [{}],
    "glucose": [{"patient": p} for p in ("adolescent#001", "adult#001", "child#001")],
    "turbofan": [{}],
}
HOURS = {"cstr": 12.0, "glucose": 120.0, "turbofan": 1.5}
"""Excitation log per twin: the CSTR's and turbofan's recipe amounts; glucose 120 h of
its recipe's 360 (the simulator is the slow part on a shared machine)."""
EPOCHS = {"cstr": 4, "glucose": 8, "turbofan": 1}
"""Short budgets for a busy 2-core machine (recipes: 20, 20 and 8 epochs); epochs, not
seconds, so that a before and an after train alike however loaded the machine is."""
console = Console(width=170)


def generator_version(module: ModuleType) -> str:
    """The process module's source hash: a log is reused only from the same generator."""
    return hashlib.sha256(Path(module.__file__).read_bytes()).hexdigest()[:12]


def cached_log(
    module: ModuleType, name: str, hours: float, case: dict[str, Any], data_tag: str | None = None
) -> pd.DataFrame:
    """The excitation log of this generator (kept between runs), or with `data_tag` one
    stored earlier under that tag (a log of an earlier generator, for a before/after)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tag = _case_tag(case)
    version = data_tag or generator_version(module)
    path = CACHE / f"{name}_{tag}_{hours:g}h_seed{TRAIN_SEED}_{version}.pkl"
    if path.exists():
        return pd.read_pickle(path)
    if data_tag:
        raise SystemExit(f"no stored log {path} for --data-tag {data_tag}")
    df = module.generate_training_log(hours, TRAIN_SEED, **case)
    df.to_pickle(path)
    return df


def case_spec(module: ModuleType, case: dict[str, Any], signs: bool) -> ProcessSpec:
    spec = module.spec_for(case["patient"]) if "patient" in case else module.SPEC
    return spec if signs else spec.model_copy(update={"effects": ()})


def run_case(name: str, case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Train (or with --reuse, load the twin this label trained before) and gain-check."""
    module = get_process(name)
    path = TWINS / f"{args.label}_{name}_{_case_tag(case)}.pt"
    if args.reuse and path.exists():
        twin = Twin.load(path)
    else:
        started = time.perf_counter()
        df = cached_log(module, name, HOURS[name], case, args.data_tag)
        log_seconds = time.perf_counter() - started
        signs = args.signs == "on"
        cfg = module.TRAINING_RECIPE.train_config(
            seed=0, epochs=EPOCHS[name], max_seconds=args.seconds
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            twin, _ = train_twin(df, case_spec(module, case, signs), cfg, show_progress=False)
        twin.metrics["gain_check_run"] = {
            "signs_in_training": signs,
            "log_hours": HOURS[name],
            "generator": args.data_tag or generator_version(module),
            "command": "python benchmarks/gain_check.py " + " ".join(sys.argv[1:]),
            "log_seconds": round(log_seconds, 1),
            "train_seconds": round(twin.metrics["train_seconds"], 1),
            "epochs_done": twin.metrics.get("epochs_done", twin.metrics["epochs"]),
            "epochs_asked": cfg.epochs,
        }
        TWINS.mkdir(parents=True, exist_ok=True)
        twin.save(path)
    # judged against the declared signs whether or not training saw them
    twin.spec = case_spec(module, case, True)
    return {
        "process": name,
        **case,
        **twin.metrics["gain_check_run"],
        "rows": gain_check(twin, **case),
    }


def _case_tag(case: dict[str, Any]) -> str:
    return "_".join(str(v).replace("#", "") for v in case.values()) or "default"


def show(label: str, cases: list[dict[str, Any]]) -> None:
    table = Table(title=f"gain check: {label}")
    for col in (
        "process",
        "case",
        "actuator -> sensor",
        "unit",
        "step",
        "horizon",
        "twin gain",
        "agree",
        "plant gain",
        "declared",
        "sign match",
    ):
        table.add_column(col)
    for case in cases:
        for row in case["rows"]:
            match = row.get("sign_match")
            table.add_row(
                case["process"],
                case.get("patient", ""),
                f"{row['actuator']} -> {row['sensor']}",
                row["unit"],
                f"{row['step']:.3g}",
                f"{row['horizon_s']:g} s",
                f"{row['gain']:+.4g}",
                f"{row['agreement']:.2f}",
                f"{row['plant_gain']:+.4g}" if "plant_gain" in row else "-",
                row["declared"] or "",
                "not clear" if match is None else ("yes" if match else "NO"),
            )
    console.print(table)


def summary(cases: list[dict[str, Any]]) -> dict[str, Any]:
    judged = [r for c in cases for r in c["rows"] if r.get("sign_match") is not None]
    return {
        "pairs_judged": len(judged),
        "signs_matched": sum(r["sign_match"] for r in judged),
        "mismatched": [
            f"{c['process']} {c.get('patient', '')} {r['actuator']}->{r['sensor']}".replace(
                "  ", " "
            )
            for c in cases
            for r in c["rows"]
            if r.get("sign_match") is False
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", required=True, help="key of this run in the results")
    parser.add_argument(
        "--signs",
        choices=("on", "off"),
        default="on",
        help="train on specs with (on) or without (off) declared effects",
    )
    parser.add_argument("--process", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--seconds", type=float, default=300.0, help="wall-clock cap on training, per twin"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="gain-check the twins this label trained before, if kept",
    )
    parser.add_argument(
        "--data-tag",
        help="train on logs stored under this tag (an earlier "
        "generator's) instead of generating them",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = []
    for name in args.process:
        for case in CASES[name]:
            console.print(
                f"[bold]{name} {case or ''}[/]: training ({EPOCHS[name]} epochs, "
                f"at most {args.seconds:g} s, signs {args.signs})"
            )
            cases.append(run_case(name, case, args))
            show(args.label, cases[-1:])
    show(args.label, cases)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout.strip()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # runs of two labels may finish together: one read-modify-write at a time
    with open(Path(tempfile.gettempdir()) / "twin-gain-check.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        save(args, cases, commit)


def save(args: argparse.Namespace, cases: list[dict[str, Any]], commit: str) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry = results.get(args.label, {"cases": []})
    done = {(c["process"], c.get("patient")) for c in cases}
    kept = [c for c in entry["cases"] if (c["process"], c.get("patient")) not in done]
    merged = kept + cases
    results[args.label] = {
        "signs_in_training": args.signs == "on",
        "budget": {
            "epochs": EPOCHS,
            "train_seconds_cap": args.seconds,
            "threads": args.threads,
            "log_hours": HOURS,
            "machine": f"{platform.processor() or platform.machine()}, shared 2 cores",
        },
        "commit": commit,
        "summary": summary(merged),
        "cases": merged,
    }
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    console.print(results[args.label]["summary"])


if __name__ == "__main__":
    main()
