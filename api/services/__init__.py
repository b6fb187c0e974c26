"""Every database query of the platform; routes, dashboards and the CLI call these."""

from api.services.loops import (
    Controller,
    ControllerFactory,
    LoopManager,
    default_controller_factory,
)
from api.services.models import get_model, list_models, load_model_bytes, register_model
from api.services.processes import (
    ensure_process,
    find_process,
    get_process,
    list_processes,
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
    "create_run",
    "default_controller_factory",
    "ensure_process",
    "find_process",
    "finish_run",
    "get_model",
    "get_process",
    "get_run",
    "get_series",
    "get_step",
    "list_events",
    "list_models",
    "list_processes",
    "list_runs",
    "load_model_bytes",
    "register_model",
    "spec_of",
    "step_counts",
    "step_range",
    "step_values",
    "store_episode",
]
