"""One module per process: simulator, tag spec, constraints, baseline and oracle controllers.

Modules load on first use: the Tennessee Eastman and glucose simulators are not free to
import, and a CLI call about one process should not pay for the others.

A process gives the twin data only (its spec, baseline, protection and training recipe);
it never builds a controller. A module with variants (glucose: one per virtual patient)
offers `VARIANTS`, `spec_for(variant)`, `variant_of(spec)` and takes the variant in
`baseline_fallback(variant)` and `generate_training_log(..., patient=variant)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from twin.baseline import PlantParts, spec_fallback
from twin.safety import Fallback, Protection
from twin.spec import ActuatorKind, ProcessSpec, SpecError
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
        raise SpecError(
            f"unknown process '{name}' (built in: {known}; a process of your "
            f"own is given by its tag file, --spec FILE)"
        )
    return check_module(importlib.import_module(PROCESS_MODULES[name]))


def find_process(name: str) -> ModuleType | None:
    """The built-in module for `name`, or None for a process known only from its files."""
    return get_process(name) if name in PROCESS_MODULES else None


def get_spec(name: str, variant: str | None = None) -> ProcessSpec:
    """The process's spec, of `variant` where one is given (a glucose patient)."""
    module = get_process(name)
    if variant is None:
        return module.SPEC
    if not hasattr(module, "VARIANTS"):
        raise SpecError(f"process '{name}' has no variants (no patient or unit to choose)")
    return module.spec_for(variant)


def variant_of(spec: ProcessSpec) -> str | None:
    """The variant of a built-in process whose settings `spec` carries (the patient a
    glucose twin was trained for), None for a process without variants or one known only
    from its files."""
    module = find_process(spec.name)
    finder = getattr(module, "variant_of", None) if module is not None else None
    return finder(spec) if finder is not None else None


def train_config_for(name: str | None, **fields: Any) -> TrainConfig:
    """The twin a process trains: the built-in process's recipe, else TrainConfig's defaults,
    with `fields` on top."""
    module = find_process(name) if name else None
    return (
        module.TRAINING_RECIPE.train_config(**fields)
        if module is not None
        else TrainConfig(**fields)
    )


def plant_parts(spec: ProcessSpec) -> PlantParts:
    """What the process of `spec` lends a twin controller (`twin.assembly.build_controller`),
    bound to the variant the spec is of: a glucose twin of adult#006 falls back to
    adult#006's basal and bolus wizard, not the default patient's.

    The baseline is the built-in process's own, else the PI loops its tag file declares,
    else None (hold the actuators); the protection is the built-in process's
    `limit_protection` where it has one (the turbofan's FADEC limits)."""
    module = find_process(spec.name)
    if module is None:
        return PlantParts(fallback=spec_fallback(spec))
    variant = variant_of(spec)
    fallback = (
        module.baseline_fallback(variant) if variant is not None else module.baseline_fallback()
    )
    factory = getattr(module, "limit_protection", None)
    doses = tuple(t.name for t in module.SPEC.actuators if t.kind is ActuatorKind.DOSE)
    return PlantParts(variant, fallback, factory() if factory is not None else None, doses)


def fallback_for(spec: ProcessSpec) -> Fallback | None:
    """The baseline of `plant_parts`."""
    return plant_parts(spec).fallback


def protection_for(spec: ProcessSpec) -> Protection | None:
    """The limit protection of `plant_parts`."""
    return plant_parts(spec).protection
