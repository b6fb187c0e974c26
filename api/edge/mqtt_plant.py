"""A simulated plant behind an MQTT edge gateway: one CSTR publishing its measurements.

For the tests, `benchmarks/edge_mqtt.py`, and trying `twin connect mqtt` without a plant.
Every `period_s` of wall time the gateway advances the CSTR one sample period with the
last coolant setpoint it received, and publishes the sample (QoS 1) in plain JSON or as
Sparkplug B NDATA/DDATA (after a birth). Its MQTT last will is the death message
(`offline` on the JSON gateway topic, or NDEATH). `python -m api.edge.mqtt_plant --help`
runs one as a process (the benchmark kills such processes with SIGKILL).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field

import paho.mqtt.client as paho

from api.edge import sparkplug
from api.edge.mqtt import OFFLINE, JsonTopics
from processes import cstr


@dataclass
class Gateway:
    run_id: int
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "twin"
    address: sparkplug.Address | None = None
    period_s: float = 0.1
    seed: int = 0
    keepalive_s: int = 2
    sim: cstr.CSTRSimulator = field(init=False)
    tc: float = cstr.TC_NOMINAL
    published: int = 0  # samples the broker acknowledged
    setpoints: list[tuple[float, dict[str, float], bool]] = field(default_factory=list)
    skip_seq: int = 0  # the next sample's seq jumps by this much (to test jump detection)
    # JSON: milliseconds from publishing a sample to receiving the setpoint answering it
    latencies_ms: list[float] = field(default_factory=list)
    _sent_at: dict[float, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sim = cstr.CSTRSimulator(seed=self.seed)
        self.topics = JsonTopics(self.prefix, self.run_id)
        name = (
            f"{self.address.node}-{self.address.device}"
            if self.address
            else f"{self.prefix}-{self.run_id}"
        )
        self.client = paho.Client(client_id=f"gateway-{name}", clean_session=True)
        self.seq = 0
        self.online = threading.Event()  # births sent: samples may follow
        if self.address is not None:
            node = sparkplug.Address(self.address.group, self.address.node)
            self.client.will_set(node.topic("DEATH"), sparkplug.encode_death(node), qos=1)
        else:
            self.client.will_set(self.topics.gateway, OFFLINE, qos=1, retain=False)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect

    def _on_connect(self, client: paho.Client, _u: object, _f: object, rc: int) -> None:
        command = self.address.topic("CMD") if self.address else self.topics.setpoints
        client.subscribe(command, qos=1)
        if self.address is not None:
            # A node's session starts with NBIRTH (seq 0); a device's with DBIRTH after it.
            node = sparkplug.Address(self.address.group, self.address.node)
            tags = {**self.sim.measure(), "Tc": self.tc}
            self.seq = 0
            client.publish(
                node.topic("BIRTH"),
                sparkplug.encode_birth(node, {} if self.address.device else tags, seq=0),
                qos=1,
            )
            if self.address.device:
                self.seq = 1
                client.publish(
                    self.address.topic("BIRTH"),
                    sparkplug.encode_birth(self.address, tags, seq=1),
                    qos=1,
                )
        else:
            client.publish(self.topics.gateway, b"online", qos=1)
        self.online.set()

    def _on_message(self, _c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        if self.address is not None:
            values = sparkplug.decode_command(msg.payload, self.address)
        else:
            body = json.loads(msg.payload)
            values = body["actuators"]
            sent = self._sent_at.pop(body.get("time_s"), None)
            if sent is not None:
                self.latencies_ms.append((time.perf_counter() - sent) * 1000.0)
        if "Tc" in values:
            self.tc = float(values["Tc"])
        self.setpoints.append((time.perf_counter(), values, bool(msg.retain)))

    def start(self) -> None:
        """Connect and wait for the session's births: a sample sent before them would
        reach the host with no birth seen, or out of sequence."""
        self.client.connect(self.host, self.port, keepalive=self.keepalive_s)
        self.client.loop_start()
        if not self.online.wait(10.0):
            raise ConnectionError(f"no MQTT session with {self.host}:{self.port} within 10 s")

    def sample(self) -> paho.MQTTMessageInfo:
        """Advance the plant one sample and publish it (QoS 1)."""
        values = self.sim.step(self.tc)
        values["Tc"] = float(self.tc)  # read-back of what the plant applied
        if self.address is not None:
            self.seq = (self.seq + 1 + self.skip_seq) % sparkplug.SEQ_MODULUS
            self.skip_seq = 0
            body = sparkplug.encode_data(self.address, values, self.seq)
            topic = self.address.topic("DATA")
        else:
            body = json.dumps({"time_s": self.sim.time_s, "measurements": values}).encode()
            topic = self.topics.measurements
            self._sent_at[self.sim.time_s] = time.perf_counter()
        return self.client.publish(topic, body, qos=1)

    def run(self, stop: threading.Event, samples: int | None = None) -> None:
        next_at = time.monotonic()
        sent = 0
        while not stop.is_set() and (samples is None or sent < samples):
            info = self.sample()
            sent += 1
            info.wait_for_publish(timeout=5.0)
            if info.is_published():
                self.published += 1
            next_at += self.period_s
            stop.wait(max(0.0, next_at - time.monotonic()))

    def vanish(self) -> None:
        """Drop the connection without DISCONNECT, as a killed process would: the broker
        publishes the last will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--prefix", default="twin")
    parser.add_argument("--period", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparkplug", metavar="GROUP/NODE[/DEVICE]")
    args = parser.parse_args()
    address = None
    if args.sparkplug:
        parts = args.sparkplug.split("/")
        address = sparkplug.Address(parts[0], parts[1], parts[2] if len(parts) > 2 else None)
    gateway = Gateway(args.loop, args.host, args.port, args.prefix, address, args.period, args.seed)
    gateway.start()
    gateway.run(threading.Event())


if __name__ == "__main__":
    main()
