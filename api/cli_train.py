"""`twin data generate`, `twin train` and `twin register`: logs, training, the registry.

Commands import what they need inside their bodies (late imports): `twin --help` and the
light commands must not pay seconds for torch, CasADi, the simulators or the database layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from api.cli_common import (
    PatientOption,
    UrlOption,
    console,
    friendly_errors,
    resolve_url,
    spec_for,
)
from twin.logs import read_log, write_log
from twin.spec import ProcessSpec

if TYPE_CHECKING:  # the API loads only for the commands that use it
    from api.services.models import DataProvenance


@friendly_errors
def data_generate(
    out: Annotated[Path, typer.Option(help="output .csv or .parquet")],
    process: Annotated[str, typer.Option(help="process name")] = "cstr",
    hours: Annotated[float, typer.Option(min=0.05, max=10_000, help="plant hours to log")] = 6.0,
    seed: Annotated[int, typer.Option(help="random seed (data is reproducible by seed)")] = 1,
    patient: PatientOption = None,
) -> None:
    """Log excitation data from a process simulator (within every actuator limit)."""
    from processes import get_process, get_spec

    module = get_process(process)
    get_spec(process, patient)  # an unknown patient, or one for a process without, is refused
    variant = {} if patient is None else {"patient": patient}
    with console.status(f"simulating {hours:g} h of {process}..."):
        df = module.generate_training_log(hours, seed, **variant)
    write_log(df, out)
    console.print(
        f"wrote {len(df)} samples ({hours:g} h at {module.SPEC.sample_period_s:g} s) "
        f"to [bold]{out}[/]"
    )


@friendly_errors
def train(
    data: Annotated[Path, typer.Option(help="training log, .csv or .parquet")],
    out: Annotated[Path, typer.Option(help="checkpoint file to write")],
    process: Annotated[str | None, typer.Option(help="built-in process name")] = None,
    spec: Annotated[Path | None, typer.Option(help="tag spec .yaml/.json instead")] = None,
    epochs: Annotated[int, typer.Option(min=1, max=10_000)] = 30,
    seed: Annotated[int, typer.Option(help="training seed")] = 0,
    max_minutes: Annotated[float, typer.Option(min=0.1, help="stop after this long")] = 5.0,
    name: Annotated[str, typer.Option(help="model name in the registry")] = "jepa",
    register: Annotated[bool, typer.Option(help="store the model and a train run")] = True,
    patient: PatientOption = None,
    database_url: UrlOption = None,
) -> None:
    """Train a JEPA twin on a log; save the checkpoint and register it in the database.

    A glucose twin is of one patient (--patient, default adult#001): its spec carries that
    patient's limits, and its loops fall back to that patient's basal and bolus wizard."""
    from processes import train_config_for
    from twin.train import train_twin

    process_spec = spec_for(process, spec, patient)
    if register and spec is not None:  # refuse changed tags before training, not after
        _check_spec_change(database_url, process_spec)
    df = read_log(data)
    config = train_config_for(
        process if spec is None else None, epochs=epochs, seed=seed, max_seconds=max_minutes * 60.0
    )
    _fit_threads_to_load()
    # training tunes a PI pairing without gains by SIMC and sets the horizon from the log
    twin, history = train_twin(df, process_spec, config, show_progress=True)
    sha = twin.save(out)
    _print_training(twin.metrics, twin.spec)
    console.print(f"checkpoint [bold]{out}[/] sha256 {sha[:16]}...")
    if register:
        from api.services.models import log_provenance

        provenance = log_provenance(df, process_spec, source=f"file:{data.resolve()}", path=data)
        data_config = {
            "path": str(data),
            "sha256": provenance.sha256,
            "rows": provenance.rows,
            "time_s": [provenance.start_s, provenance.end_s],
        }
        model_id = _register(
            database_url,
            twin.spec,  # as trained: SIMC gains and the horizon the log gave
            name,
            out,
            twin.metrics,
            {"train": config.to_dict(), "data": data_config},
            provenance,
            from_file=spec is not None,
        )
        console.print(f"registered as model [bold]{model_id}[/]")


def _check_spec_change(url: str | None, spec: ProcessSpec) -> None:
    from api.db import open_session
    from api.services.processes import check_spec_change

    with open_session(resolve_url(url)) as session:
        check_spec_change(session, spec)


@friendly_errors
def register(
    model: Annotated[Path, typer.Option(help="checkpoint file of a twin trained elsewhere")],
    data: Annotated[Path, typer.Option(help="the log it was trained on, .csv or .parquet")],
    name: Annotated[str, typer.Option(help="model name in the registry")] = "jepa",
    database_url: UrlOption = None,
) -> None:
    """Register a checkpoint made by `twin train` elsewhere (e.g. the demo's shipped twin),
    with a training run carrying its stored curves and the data's provenance."""
    from api.services.models import log_provenance
    from twin.twin_model import Twin

    twin_model = Twin.load(model)
    df = read_log(data)
    provenance = log_provenance(df, twin_model.spec, source=f"file:{data.resolve()}", path=data)
    data_config = {
        "path": str(data),
        "sha256": provenance.sha256,
        "rows": provenance.rows,
        "time_s": [provenance.start_s, provenance.end_s],
    }
    config = {"train": twin_model.train_config, "data": data_config, "registered_from": str(model)}
    model_id = _register(
        database_url, twin_model.spec, name, model, twin_model.metrics, config, provenance
    )
    console.print(f"registered [bold]{model}[/] as model [bold]{model_id}[/]")


def _fit_threads_to_load() -> None:
    """One torch thread on a machine already busier than its cores: there, two threads
    spin against each other and a batch took 8-12 s instead of 1.1 s (CSTR recipe, 2
    cores at load ~20). OMP_NUM_THREADS, when set, decides instead."""
    import os

    import torch

    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if "OMP_NUM_THREADS" in os.environ or cores < 2 or load < cores:
        return
    torch.set_num_threads(1)
    console.print(
        f"busy machine (load {load:.1f} on {cores} cores): training on one thread "
        "(set OMP_NUM_THREADS to choose)"
    )


def _register(
    url: str | None,
    spec: ProcessSpec,
    name: str,
    checkpoint: Path,
    metrics: dict[str, Any],
    config: dict[str, Any],
    provenance: DataProvenance,
    from_file: bool = False,
) -> int:
    from api.db import open_session
    from api.services import models as models_service
    from api.services import processes as processes_service
    from api.services import runs as runs_service
    from api.services.processes import store_spec

    with open_session(resolve_url(url)) as session:
        if from_file:  # a tag file is versioned as POST /api/processes versions it
            stored = store_spec(session, spec)
            what = (
                "new"
                if stored.created
                else f"changed: {', '.join(stored.changed)}"
                if stored.changed
                else "unchanged"
            )
            console.print(f"process [bold]{spec.name}[/] spec version {stored.version} ({what})")
        else:
            processes_service.ensure_process(session, spec)
        model = models_service.register_model(
            session,
            spec.name,
            name,
            checkpoint.read_bytes(),
            config,
            metrics,
            provenance=provenance,
        )
        run = runs_service.create_run(
            session,
            kind="train",
            process=spec.name,
            controller="jepa",
            config=config,
            model_id=model.id,
        )
        summary = {k: v for k, v in metrics.items() if k != "history"}
        summary["history"] = metrics.get("history", [])
        runs_service.finish_run(session, run.id, "succeeded", summary)
        return int(model.id)


def _print_training(metrics: dict[str, Any], spec: ProcessSpec) -> None:
    units = {t.name: t.unit for t in spec.tags}
    table = Table(title="twin after training (held-out windows)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("epochs", str(metrics["epochs"]))
    table.add_row("training time", f"{metrics['train_seconds']:.1f} s")
    table.add_row("embedding prediction error (MSE)", f"{metrics['holdout_prediction']:.4f}")
    table.add_row("effective rank", f"{metrics['effective_rank']:.2f}")
    table.add_row("min per-dimension std", f"{metrics['dim_std_min']:.3f}")
    for tag, rmse in metrics["readout_rmse"].items():
        table.add_row(f"readout RMSE {tag}", f"{rmse:.4g} {units[tag]}")
    console.print(table)
