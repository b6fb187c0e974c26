"""Every database query of the platform; routes, dashboards and the CLI call these."""

from api.services.jobs import (
    cancel_job,
    claim_next_job,
    enqueue_training,
    get_job,
    list_jobs,
    record_progress,
)
from api.services.loops import (
    Controller,
    ControllerFactory,
    LoopManager,
    default_controller_factory,
)
from api.services.models import get_model, list_models, load_model_bytes, register_model
from api.services.processes import (
    define_process,
    ensure_process,
    find_process,
    get_process,
    list_processes,
    process_or_builtin,
    spec_of,
)
from api.services.runs import (
    create_run,
    finish_run,
    get_run,
    get_series,
    get_step,
    list_events,
    list_runs,
    step_counts,
    step_range,
    step_values,
    store_episode,
)

__all__ = [
    "Controller",
    "ControllerFactory",
    "LoopManager",
    "cancel_job",
    "claim_next_job",
    "create_run",
    "default_controller_factory",
    "enqueue_training",
    "define_process",
    "ensure_process",
    "find_process",
    "finish_run",
    "get_job",
    "get_model",
    "get_process",
    "get_run",
    "get_series",
    "get_step",
    "list_events",
    "list_jobs",
    "list_models",
    "list_processes",
    "process_or_builtin",
    "list_runs",
    "load_model_bytes",
    "record_progress",
    "register_model",
    "spec_of",
    "step_counts",
    "step_range",
    "step_values",
    "store_episode",
]
