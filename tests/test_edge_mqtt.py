"""MQTT bridge against the Mosquitto broker on 127.0.0.1:1883 (`.ci/run` starts one):
plain JSON and Sparkplug B measurements step the loop, setpoints come back with QoS 1 and
no retain flag, a gateway's death or silence is a stale hold, Sparkplug seq jumps are
recorded."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from edge_fixtures import EdgeDb, edge_db
from twin_fixtures import tiny_twin

from api.edge.mqtt import MqttBridge
from api.edge.mqtt_plant import Gateway
from api.edge.sparkplug import Address
from api.edge.stepping import EDGE_STALE, SEQUENCE_GAP
from processes import cstr

BROKER = ("127.0.0.1", 1883)
PERIOD_S = 0.1


def broker_answers() -> bool:
    try:
        with socket.create_connection(BROKER, timeout=1.0):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.slow,  # trains the shared tiny twin
    pytest.mark.skipif(
        not broker_answers(), reason="no MQTT broker on 127.0.0.1:1883 (.ci/run starts Mosquitto)"
    ),
]


@pytest.fixture
def db(tmp_path) -> EdgeDb:
    return edge_db(tmp_path, tiny_twin()[0])


def until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


class Running:
    """A callable run in a thread until `stop()`."""

    def __init__(self, target: Callable[[threading.Event], None]) -> None:
        self.event = threading.Event()
        self.thread = threading.Thread(target=target, args=(self.event,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.event.set()
        self.thread.join(timeout=30)


@pytest.fixture
def running() -> Iterator[Callable[..., Running]]:
    """Start callables in threads; all are stopped and joined at the end."""
    started: list[Running] = []

    def start(target: Callable[[threading.Event], None]) -> Running:
        started.append(Running(target))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def test_json_loop_closes_and_a_dead_gateway_is_a_stale_hold(db: EdgeDb, running) -> None:
    stepper = db.start_loop()
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    bridge = MqttBridge(stepper, *BROKER, prefix=prefix, period_s=PERIOD_S, persistent=False)
    serving = running(bridge.run)
    assert bridge.connected.wait(10)
    gateway = Gateway(stepper.run_id, *BROKER, prefix=prefix, period_s=PERIOD_S)
    gateway.start()
    feeding = running(gateway.run)
    until(lambda: len(gateway.setpoints) >= 10)
    # Setpoints arrive on the command topic, never retained, and the plant applies them.
    assert not any(retained for _, _, retained in gateway.setpoints)
    assert gateway.tc == gateway.setpoints[-1][1]["Tc"]
    coolant = cstr.SPEC.tag("Tc")
    assert all(coolant.low <= values["Tc"] <= coolant.high for _, values, _ in gateway.setpoints)
    # A bad message changes nothing.
    rejected = bridge.rejected
    gateway.client.publish(bridge.topics.measurements, b'{"time_s": "soon"}', qos=1)
    until(lambda: bridge.rejected == rejected + 1)

    feeding.stop()
    gateway.vanish()  # no DISCONNECT: the broker publishes the last will
    until(lambda: bridge.stats.holds["death"] >= 1)
    until(lambda: bridge.stats.holds["silence"] >= 1)
    assert stepper.loop_status() == "stale"
    reasons = [e.message for e in db.events(stepper.run_id, EDGE_STALE)]
    assert any("gateway died" in r for r in reasons)
    assert any("no measurement for" in r for r in reasons)
    serving.stop()  # no hold in flight from here on
    steps = db.steps(stepper.run_id)
    assert steps[-1].status == "stale"
    assert len(steps) == bridge.stats.steps + sum(bridge.stats.holds.values())
    assert bridge.stats.unsafe == 0


def test_sparkplug_births_data_seq_jumps_and_death(db: EdgeDb, running) -> None:
    stepper = db.start_loop()
    address = Address(f"test-{uuid.uuid4().hex[:8]}", "gw1", "reactor1")
    bridge = MqttBridge(stepper, *BROKER, sparkplug=address, period_s=PERIOD_S, persistent=False)
    running(bridge.run)
    assert bridge.connected.wait(10)
    gateway = Gateway(stepper.run_id, *BROKER, address=address, period_s=PERIOD_S)
    gateway.start()
    feeding = running(gateway.run)
    until(lambda: len(gateway.setpoints) >= 5)  # DCMD decoded by the gateway
    assert bridge.seq_jumps == 0
    gateway.skip_seq = 3
    until(lambda: bridge.seq_jumps == 1)
    fresh = len(gateway.setpoints)
    until(lambda: len(gateway.setpoints) >= fresh + 3)  # a jump is recorded, not fatal
    feeding.stop()
    gateway.vanish()  # its will: NDEATH of its edge node
    until(lambda: bridge.stats.holds["death"] >= 1)
    jumps = db.events(stepper.run_id, SEQUENCE_GAP)
    assert len(jumps) == 1 and "expected" in jumps[0].message
    assert "3 message(s) missing" in jumps[0].message
    assert stepper.loop_status() == "stale"
    assert any("NDEATH" in e.message for e in db.events(stepper.run_id, EDGE_STALE))
