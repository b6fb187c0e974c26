"""Step tests on the true plants, and the gain check of a twin against them.

The plant's side of `twin.gains`: from the nominal operating point in steady state
(nominal actuators and flight or feed, no meals, no sensor noise), hold the actuators for
the horizon, then again with one actuator stepped (a dose given once at the start); the
sensor's difference at the horizon per unit of step is the plant's gain. Each process
answers with its own simulator: the CSTR's ODE, the turbofan's gas path, a glucose
patient's UVA/Padova model (CGM read as the noise-free plasma glucose it measures).

`gain_check(twin)` is the one call for a table or a page: the twin's step tests next to
the plant's, with the sign match of every pair whose plant effect is clear.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twin.gains import default_horizon, gain_sensors, gain_table, is_dose, step_size
from twin.spec import ProcessSpec
from twin.twin_model import Twin

from . import find_process, get_process

Run = Callable[[dict[str, float], int, int], dict[str, float]]
"""(held actuators, which sample a dose is given at, horizon) -> sensors at the horizon."""


def _cstr_run(_spec: ProcessSpec, **_: Any) -> Run:
    cstr = get_process("cstr")
    start = cstr.steady_state(cstr.TC_NOMINAL)

    def run(held: dict[str, float], _dose_at: int, horizon: int) -> dict[str, float]:
        sim = cstr.CSTRSimulator(noise=False, ca0=start[0], t0=start[1])
        for _ in range(horizon):
            sim.step(held["Tc"])
        return {"Ca": sim.state[0], "T": sim.state[1]}

    return run


def _turbofan_run(_spec: ProcessSpec, **_: Any) -> Run:
    turbofan = get_process("turbofan")
    spec = turbofan.SPEC
    flight = turbofan.Flight(
        spec.tag("alt").nominal, spec.tag("Mach").nominal, spec.tag("dT_isa").nominal
    )

    def run(held: dict[str, float], _dose_at: int, horizon: int) -> dict[str, float]:
        sim = turbofan.TurbofanSimulator(noise=False, wf0=spec.tag("Wf").nominal, flight=flight)
        for _ in range(horizon):
            sim.step(held["Wf"])
        return sim.true_sensors()

    return run


def _glucose_run(spec: ProcessSpec, patient: str | None = None, **_: Any) -> Run:
    glucose = get_process("glucose")
    # the patient asked for, else the one whose pump settings the twin's spec carries
    name = patient or glucose.variant_of(spec) or glucose.DEFAULT_PATIENT

    def run(held: dict[str, float], dose_at: int, horizon: int) -> dict[str, float]:
        sim = glucose.GlucoseSimulator(name, seed=0, meals=())
        for k in range(horizon):
            bolus = held["bolus"] if k == dose_at or dose_at < 0 else 0.0
            sim.step(held["basal"], bolus)
        return {"CGM": sim.bg, "IOB": sim.measure()["IOB"]}

    return run


PLANT_RUNS: dict[str, Callable[..., Run]] = {
    "cstr": _cstr_run,
    "turbofan": _turbofan_run,
    "glucose": _glucose_run,
}
"""Built-in processes whose plant can be step-tested (Tennessee Eastman is not, yet)."""


def nominal_actuators(spec: ProcessSpec) -> dict[str, float]:
    """The held actuators of the nominal point: the tags' nominal values (a glucose
    patient's own scheduled basal in the patient's spec)."""
    return {t.name: float(t.nominal if t.nominal is not None else 0.0) for t in spec.actuators}


def plant_gains(
    spec: ProcessSpec,
    steps: Mapping[str, float],
    horizon_steps: int,
    sensors: list[str],
    **process_case: Any,
) -> dict[tuple[str, str], float]:
    """The true plant's gain per (actuator, sensor), in engineering units per unit of step
    (or of dose), by step tests of `steps` (actuator units) over `horizon_steps` samples."""
    if spec.name not in PLANT_RUNS:
        raise ValueError(
            f"no plant step test for process '{spec.name}' (have: {', '.join(sorted(PLANT_RUNS))})"
        )
    run = PLANT_RUNS[spec.name](spec, **process_case)
    held = nominal_actuators(spec)
    doses = {t.name for t in spec.actuators if is_dose(t)}
    base_held = {name: (0.0 if name in doses else value) for name, value in held.items()}
    base = run(base_held, -1, horizon_steps)
    gains = {}
    for actuator, step in steps.items():
        moved_held = {**base_held, actuator: base_held[actuator] + step}
        # a dose is given once, at the start; a level is held stepped throughout
        moved = run(moved_held, 0 if actuator in doses else -1, horizon_steps)
        for sensor in sensors:
            gains[(actuator, sensor)] = (moved[sensor] - base[sensor]) / step
    return gains


def gain_check(
    twin: Twin, horizon_steps: int | None = None, **process_case: Any
) -> list[dict[str, Any]]:
    """The twin's gain table (`twin.gains.gain_table`) with the true plant's step test of
    the same steps and horizon beside it, for a built-in process; the twin's alone for a
    process without a simulator. `process_case`: e.g. patient='child#001' for glucose."""
    horizon = horizon_steps or default_horizon(twin)
    if find_process(twin.spec.name) is None or twin.spec.name not in PLANT_RUNS:
        return gain_table(twin, None, horizon)
    steps = {t.name: step_size(twin, t.name) for t in twin.spec.actuators}
    plant = plant_gains(twin.spec, steps, horizon, gain_sensors(twin.spec), **process_case)
    return gain_table(twin, plant, horizon)
