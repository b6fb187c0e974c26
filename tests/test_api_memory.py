"""Starting and stopping 50 live loops returns the server's memory to where it began.

Real controllers (the tiny test twin, the default planner) through the HTTP API; memory is
the process's resident set (/proc/self/statm), measured after a warm-up that loads
torch, CasADi and the planner's code once. `-s` prints the figures.
"""

from __future__ import annotations

import gc
import weakref

import pytest
from fastapi.testclient import TestClient
from twin_fixtures import tiny_twin

from api import services
from api.app import create_app
from api.services.loop_limits import resident_mb
from api.services.loops import default_controller_factory
from api.settings import Settings

LOOPS = 50
GOOD = {"Ca": 0.5, "T": 350.0, "Caf": 1.0, "Tf": 350.0, "Tc": 330.0}

pytestmark = pytest.mark.skipif(resident_mb() is None, reason="needs /proc/self/statm")


def _cycle(client: TestClient, model_id: int, loops: int) -> float:
    """Start `loops` loops (one step each), all running at once, then stop them all;
    returns the resident memory while they all ran."""
    ids = []
    for _ in range(loops):
        started = client.post(
            "/api/loops", json={"process": "cstr", "model_id": model_id, "planner": "casadi"}
        )
        assert started.status_code == 201, started.text
        ids.append(started.json()["run_id"])
        step = client.post(f"/api/loops/{ids[-1]}/step", json={"time_s": 0.0, "measurements": GOOD})
        assert step.status_code == 200, step.text
    peak = _settled_mb()
    for run_id in ids:
        assert client.post(f"/api/loops/{run_id}/stop").status_code == 200
    return peak


def _settled_mb() -> float:
    gc.collect()
    value = resident_mb()
    assert value is not None
    return value


@pytest.mark.slow  # trains the tiny twin (shared with the other real-twin tests)
def test_fifty_loops_give_their_memory_back(db_url: str, session) -> None:
    twin, _ = tiny_twin()
    model_id = services.register_model(session, "cstr", "tiny", twin.to_bytes(), {}, {}).id
    built: list[weakref.ref] = []

    def factory(checkpoint: bytes, planner: str):
        controller = default_controller_factory(checkpoint, planner)
        built.append(weakref.ref(controller))
        return controller

    app = create_app(
        Settings(database_url=db_url, max_loops_per_key=LOOPS, max_loops=LOOPS),
        controller_factory=factory,
    )
    with TestClient(app) as client:
        _cycle(client, model_id, 5)  # warm-up: imports, planner code, allocator pools
        before = _settled_mb()
        running = _cycle(client, model_id, LOOPS)
        after = _settled_mb()
        assert app.state.loops._loops == {}  # no stopped loop is held
    assert len(built) == 5 + LOOPS
    assert [ref for ref in built if ref() is not None] == []  # every controller was freed
    print(
        f"\nresident memory: {before:.1f} MB before, {running:.1f} MB with {LOOPS} loops "
        f"running, {after:.1f} MB after they stopped ({100 * (after - before) / before:+.1f} %)"
    )
    assert after <= 1.10 * before
