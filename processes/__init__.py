"""One module per process: simulator, tag spec, constraints, baseline and oracle controllers."""

from __future__ import annotations

from types import ModuleType

from twin.spec import ProcessSpec, SpecError

from . import cstr

PROCESSES: dict[str, ModuleType] = {"cstr": cstr}


def get_process(name: str) -> ModuleType:
    try:
        return PROCESSES[name]
    except KeyError:
        known = ", ".join(sorted(PROCESSES))
        raise SpecError(f"unknown process '{name}' (known: {known})") from None


def get_spec(name: str) -> ProcessSpec:
    return get_process(name).SPEC
