"""OPC UA client loop against an in-process asyncua server with the CSTR behind its nodes:
the loop closes through the server, and bad status codes, frozen timestamps, refused
writes and a lost connection are recorded stale holds / events / alarms."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
import yaml
from asyncua import ua
from edge_fixtures import EdgeDb, edge_db, free_port
from twin_fixtures import tiny_twin

from api.edge.nodemap import NodeMap
from api.edge.opcua import OpcUaLoop
from api.edge.opcua_plant import SimulatedPlant
from api.edge.stepping import EDGE_STALE, WRITE_REFUSED
from processes import cstr
from twin.errors import InvalidInput

pytestmark = pytest.mark.slow  # trains the shared tiny twin
PERIOD_S = 0.1


@pytest.fixture
def db(tmp_path) -> EdgeDb:
    return edge_db(tmp_path, tiny_twin()[0])


async def until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def check_written_within_limits(written: list) -> None:
    """Bounds, and the rate limit from the previous write or the plant's read-back."""
    coolant = cstr.SPEC.tag("Tc")
    assert written
    for (t0, a, _), (t1, b, readback) in zip(written, written[1:], strict=False):
        assert coolant.low <= b["Tc"] <= coolant.high
        allowed = coolant.rate_limit * (t1 - t0) + 1e-9
        assert (
            min(abs(b["Tc"] - base) for base in (a["Tc"], readback.get("Tc", a["Tc"]))) <= allowed
        )


def test_the_map_is_checked_against_the_process() -> None:
    with pytest.raises(InvalidInput, match="actuator 'Tc' has no node"):
        NodeMap(tags={"Ca": "ns=2;s=a", "T": "ns=2;s=b"}).check(cstr.SPEC)
    with pytest.raises(InvalidInput, match="'X' is not a tag"):
        NodeMap(tags={"Ca": "a", "T": "b", "Tc": "c", "X": "d"}).check(cstr.SPEC)


def test_closes_the_loop_and_holds_on_bad_status_and_frozen_timestamps(db: EdgeDb) -> None:
    stepper = db.start_loop()
    plant = SimulatedPlant(free_port(), tick_s=0.02)
    loop = OpcUaLoop(plant.endpoint, plant.node_map(0), stepper, period_s=PERIOD_S)

    async def scenario() -> None:
        await plant.start()
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        try:
            await until(lambda: loop.stats.steps >= 10)
            # The plant applied what the loop wrote: its readback shows the last setpoint.
            await until(lambda: plant.units[0].writes[-1][1] == loop.stats.written[-1][1]["Tc"])
            plant.units[0].forced_status["T"] = ua.StatusCodes.BadSensorFailure
            await until(lambda: loop.stats.holds["status"] >= 3)
            plant.units[0].forced_status["T"] = ua.StatusCodes.UncertainLastUsableValue
            held = loop.stats.holds["status"]
            await until(lambda: loop.stats.holds["status"] >= held + 2)
            plant.units[0].forced_status.clear()
            fresh = loop.stats.steps
            await until(lambda: loop.stats.steps >= fresh + 3)
            plant.units[0].frozen = True
            await until(lambda: loop.stats.holds["timestamp"] >= 2)
            plant.units[0].frozen = False
            fresh = loop.stats.steps
            await until(lambda: loop.stats.steps >= fresh + 3)
        finally:
            stop.set()
            await task
            await plant.stop()

    asyncio.run(scenario())
    steps = db.steps(stepper.run_id)
    assert len(steps) == loop.stats.steps + sum(loop.stats.holds.values())
    assert loop.stats.unsafe == 0 and not db.events(stepper.run_id, "unsafe_setpoint")
    assert sum(s.status == "stale" for s in steps) >= sum(loop.stats.holds.values())
    reasons = [e.message for e in db.events(stepper.run_id, EDGE_STALE)]
    assert any("T (ns=" in r and "BadSensorFailure" in r for r in reasons)
    assert any("Uncertain" in r for r in reasons)
    assert any("did not advance" in r for r in reasons)
    kinds = {(a.kind, a.tag) for a in db.alarms(stepper.run_id)}
    assert ("stale_data", "") in kinds
    check_written_within_limits(loop.stats.written)


def test_refused_write_and_lost_connection_are_recorded(db: EdgeDb) -> None:
    stepper = db.start_loop()
    port = free_port()
    plant = SimulatedPlant(port, tick_s=0.02)
    loop = OpcUaLoop(
        plant.endpoint,
        plant.node_map(0),
        stepper,
        period_s=PERIOD_S,
        backoff_s=(0.1, 0.4),
        timeout_s=1.0,
    )

    async def scenario() -> None:
        await plant.start()
        stop = asyncio.Event()
        task = asyncio.create_task(loop.run(stop))
        try:
            await until(lambda: loop.stats.steps >= 5)
            await plant.refuse_writes(0)
            await until(lambda: loop.stats.refused_writes >= 2)
            await plant.refuse_writes(0, refuse=False)
            await plant.stop()  # the plant's server goes away
            await until(lambda: loop.stats.holds["connection"] >= 2)
            await plant.start()  # and comes back on the same endpoint
            fresh = loop.stats.steps
            await until(lambda: loop.stats.steps >= fresh + 3, timeout_s=20.0)
        finally:
            stop.set()
            await task
            await plant.stop()

    asyncio.run(scenario())
    refused = db.events(stepper.run_id, WRITE_REFUSED)
    assert len(refused) == loop.stats.refused_writes >= 2
    assert (
        refused[0].tag == "Tc"
        and "BadNotWritable" in refused[0].message
        or "BadUserAccessDenied" in refused[0].message
    )
    alarm = {(a.kind, a.tag): a for a in db.alarms(stepper.run_id)}[("fallback", "Tc")]
    assert "refused" in alarm.message and alarm.state in ("unacknowledged", "rtn_unacknowledged")
    lost = [e.message for e in db.events(stepper.run_id, EDGE_STALE)]
    assert sum("connection to opc.tcp" in m for m in lost) == loop.stats.holds["connection"]
    assert loop.stats.reconnects >= 2
    check_written_within_limits(loop.stats.written)


def test_twin_connect_opcua_serves_a_loop_until_sigterm(db: EdgeDb, tmp_path) -> None:
    stepper = db.start_loop()
    plant = SimulatedPlant(free_port(), tick_s=0.05)
    map_file = tmp_path / "nodes.yaml"
    map_file.write_text(yaml.safe_dump(plant.node_map(0).model_dump(exclude_none=True)))
    url = str(db.sessions.kw["bind"].url)
    serving = threading.Event()
    done = threading.Event()

    def serve_plant() -> None:
        async def run() -> None:
            await plant.start()
            serving.set()
            while not done.is_set():
                await asyncio.sleep(0.05)
            await plant.stop()

        asyncio.run(run())

    thread = threading.Thread(target=serve_plant, daemon=True)
    thread.start()
    assert serving.wait(180)  # an asyncua server loads its address space: slow when busy
    command = [
        sys.executable,
        "-m",
        "api.cli",
        "connect",
        "opcua",
        "--endpoint",
        plant.endpoint,
        "--map",
        str(map_file),
        "--loop",
        str(stepper.run_id),
        "--period",
        "0.2",
        "--database-url",
        url,
    ]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(db.steps(stepper.run_id)) < 3:
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        child.send_signal(signal.SIGTERM)
        output = child.communicate(timeout=60)[0]
        done.set()
        thread.join(timeout=30)
    assert child.returncode == 0, output
    assert "step(s) written" in output
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "api.cli",
            "connect",
            "opcua",
            "--endpoint",
            "http://plant",
            "--map",
            str(map_file),
            "--loop",
            "1",
            "--database-url",
            url,
        ],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "must start with opc.tcp://" in bad.stdout
