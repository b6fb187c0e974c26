"""One module per process: simulator, tag spec, constraints, baseline and oracle controllers.

Modules load on first use: the Tennessee Eastman and glucose simulators are not free to
import, and a CLI call about one process should not pay for the others.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from twin.baseline import spec_fallback
from twin.safety import Fallback, Protection
from twin.spec import ProcessSpec, SpecError
from twin.train import TrainConfig

from .base import check_module

PROCESS_MODULES: dict[str, str] = {
    "cstr": "processes.cstr",
    "tennessee_eastman": "processes.tennessee_eastman",
    "turbofan": "processes.turbofan",
    "glucose": "processes.glucose",
}
"""Built-in process name -> module. A process defined by files alone is not listed here."""


def process_names() -> list[str]:
    return sorted(PROCESS_MODULES)


def get_process(name: str) -> ModuleType:
    if name not in PROCESS_MODULES:
        known = ", ".join(process_names())
        raise SpecError(f"unknown process '{name}' (built in: {known}; a process of your "
                        f"own is given by its tag file, --spec FILE)")
    return check_module(importlib.import_module(PROCESS_MODULES[name]))


def find_process(name: str) -> ModuleType | None:
    """The built-in module for `name`, or None for a process known only from its files."""
    return get_process(name) if name in PROCESS_MODULES else None


def get_spec(name: str) -> ProcessSpec:
    return get_process(name).SPEC


def train_config_for(name: str | None, **fields: Any) -> TrainConfig:
    """The twin a process trains: the built-in process's recipe, else TrainConfig's defaults,
    with `fields` on top."""
    module = find_process(name) if name else None
    return (module.TRAINING_RECIPE.train_config(**fields) if module is not None
            else TrainConfig(**fields))


def fallback_for(spec: ProcessSpec) -> Fallback | None:
    """The baseline a twin controller falls back to: the built-in process's own, else the
    PI loops its tag file declares, else None (hold the actuators)."""
    module = find_process(spec.name)
    return module.baseline_fallback() if module is not None else spec_fallback(spec)


def protection_for(spec: ProcessSpec) -> Protection | None:
    """The plant's own limit protection, run on every move a twin controller sends: the
    built-in process's `limit_protection` where it has one (the turbofan's FADEC limits),
    else None."""
    module = find_process(spec.name)
    factory = getattr(module, "limit_protection", None) if module is not None else None
    return factory() if factory is not None else None
