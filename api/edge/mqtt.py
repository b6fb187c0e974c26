"""MQTT bridge: measurements from a broker step the loop, setpoints go back on a topic.

Two conventions, one loop per bridge:

* **plain JSON**: the gateway publishes `{"time_s": 12.0, "measurements": {"T": 350.1,
  ...}, "setpoints": {...}}` (setpoints optional) on `<prefix>/loops/<id>/measurements`;
  the bridge answers on `<prefix>/loops/<id>/setpoints` with `{"run_id", "step",
  "time_s", "status", "actuators"}`. The gateway's status topic
  `<prefix>/loops/<id>/gateway` carries its last will: the payload `offline` (the
  broker publishes it when the gateway's connection dies) is a death.
* **Sparkplug B** (api.edge.sparkplug): NBIRTH/NDATA/NDEATH of an edge node, or
  DBIRTH/DDATA/DDEATH of one of its devices; metric names are the process's tag names.
  Setpoints go out as NCMD/DCMD. Sequence-number jumps are stored as `sequence_gap`
  run events.

Setpoints are published with QoS 1 and never retained (a retained setpoint would be
applied again by a gateway reconnecting much later). Measurements are taken with QoS 1
on a persistent session (fixed client id, clean session off), so the broker keeps what
arrives while the bridge reconnects.

A death (last will, NDEATH, DDEATH) is a recorded stale hold at once; silence longer
than `STALE_AFTER_PERIODS` sample periods is one too, repeated every period while it
lasts. A message that cannot be parsed or that the step path refuses changes nothing: it
is logged and counted.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from sqlalchemy.exc import SQLAlchemyError

from api.edge.sparkplug import Address, SparkplugSession, encode_command
from api.edge.stepping import SEQUENCE_GAP, EdgeStats, EdgeStep, LoopStepper, UnsafeSetpoint
from api.errors import ServiceError

log = logging.getLogger("api.edge.mqtt")
STALE_AFTER_PERIODS = 3
OFFLINE = b"offline"


@dataclass
class JsonTopics:
    prefix: str
    run_id: int

    @property
    def measurements(self) -> str:
        return f"{self.prefix}/loops/{self.run_id}/measurements"

    @property
    def setpoints(self) -> str:
        return f"{self.prefix}/loops/{self.run_id}/setpoints"

    @property
    def gateway(self) -> str:
        return f"{self.prefix}/loops/{self.run_id}/gateway"


@dataclass
class MqttBridge:
    stepper: LoopStepper
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "twin"  # plain JSON topics
    sparkplug: Address | None = None  # Sparkplug B instead of plain JSON
    period_s: float | None = None
    keepalive_s: int = 10
    client_id: str | None = None  # default: derived from the topics and the loop id
    persistent: bool = True  # keep the broker session (QoS 1 queue) across reconnects
    stats: EdgeStats = field(default_factory=EdgeStats)
    rejected: int = 0
    seq_jumps: int = 0

    def __post_init__(self) -> None:
        self.period_s = self.period_s or self.stepper.spec.sample_period_s
        self.topics = JsonTopics(self.prefix, self.stepper.run_id)
        self._session = SparkplugSession(self.sparkplug) if self.sparkplug else None
        self._inbox: queue.Queue[tuple[float, str, bytes]] = queue.Queue()
        self._last_data: tuple[float, float] | None = None  # (monotonic arrival, time_s)
        self._last_hold = 0.0
        self.connected = threading.Event()  # connected and subscribed
        where = f"{self.sparkplug.group}-{self.sparkplug.node}" if self.sparkplug else self.prefix
        client_id = self.client_id or f"twin-{where}-loop-{self.stepper.run_id}"
        self.client = paho.Client(client_id=client_id, clean_session=not self.persistent)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)

    # ------------------------------------------------------------ MQTT callbacks (its thread)

    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, rc: int) -> None:
        if rc != 0:
            log.warning("loop %d: broker refused the connection (rc %s)", self.stepper.run_id, rc)
            return
        topics = (
            self.sparkplug.subscriptions()
            if self.sparkplug
            else [self.topics.measurements, self.topics.gateway]
        )
        client.subscribe([(topic, 1) for topic in topics])

    def _on_subscribe(self, _client: paho.Client, _userdata: Any, _mid: int, _granted: Any) -> None:
        self.connected.set()  # subscribed: from now on nothing published is missed

    def _on_message(self, _client: paho.Client, _userdata: Any, msg: paho.MQTTMessage) -> None:
        self._inbox.put((time.perf_counter(), msg.topic, bytes(msg.payload)))

    # ------------------------------------------------------------ the loop (caller's thread)

    def run(self, stop: threading.Event) -> None:
        """Serve the loop until `stop` is set (the MQTT client reconnects by itself)."""
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive_s)
        self.client.loop_start()
        try:
            while not stop.is_set():
                try:
                    arrived, topic, payload = self._inbox.get(timeout=self._wait_s())
                    self._handle(arrived, topic, payload)
                except queue.Empty:
                    self._check_silence()
                except SQLAlchemyError as exc:  # an event or a hold not stored: go on
                    self.stats.db_errors += 1
                    log.warning("loop %d: not stored: %s", self.stepper.run_id, exc)
        finally:
            self.client.loop_stop()
            self.client.disconnect()

    def _wait_s(self) -> float:
        assert self.period_s is not None
        return min(self.period_s, 0.5)

    def _handle(self, arrived: float, topic: str, payload: bytes) -> None:
        try:
            message = self._parse(topic, payload)
        except (ValueError, KeyError, TypeError) as exc:
            self.rejected += 1
            log.warning("loop %d: message on %s ignored: %s", self.stepper.run_id, topic, exc)
            return
        if message is None:
            return
        kind, time_s, measurements, setpoints = message
        if kind == "death":
            self._hold("death", f"gateway died ({topic})")
            return
        self._last_data = (time.monotonic(), time_s)
        try:
            done = self.stepper.step(time_s, measurements, setpoints)
        except SQLAlchemyError as exc:  # nothing stored, nothing published
            self.stats.db_errors += 1
            log.warning("loop %d: step not stored: %s", self.stepper.run_id, exc)
            return
        except ServiceError as exc:
            self.rejected += 1
            log.warning("loop %d: step refused: %s", self.stepper.run_id, exc)
            return
        self._publish(done, arrived)

    def _parse(
        self, topic: str, payload: bytes
    ) -> tuple[str, float, dict[str, float | None], dict[str, float]] | None:
        if self._session is not None:
            got = self._session.receive(topic, payload)
            if got.seq_jump:
                self.seq_jumps += 1
                self.stepper.edge_event(SEQUENCE_GAP, got.seq_jump)
            if got.kind == "death":
                return "death", 0.0, {}, {}
            if got.kind not in ("data", "birth") or not got.values:
                return None
            return "data", got.time_s, got.values, {}
        if topic == self.topics.gateway:
            return ("death", 0.0, {}, {}) if payload.strip() == OFFLINE else None
        body = json.loads(payload)
        if not isinstance(body, dict) or not isinstance(body.get("measurements"), dict):
            raise ValueError("expected an object with time_s and measurements")
        time_s = body["time_s"]
        if not isinstance(time_s, int | float) or isinstance(time_s, bool):
            raise ValueError("time_s must be a number")
        setpoints = body.get("setpoints") or {}
        if not isinstance(setpoints, dict):
            raise ValueError("setpoints must be an object")
        return "data", float(time_s), body["measurements"], setpoints

    def _publish(self, done: EdgeStep, arrived: float) -> None:
        self.stats.steps += 1
        try:
            values = self.stepper.outgoing(done)
        except UnsafeSetpoint as exc:  # never happens unless the step path has a bug
            self.stats.unsafe += 1
            self.stepper.edge_event("unsafe_setpoint", str(exc))
            return
        if self.sparkplug is not None:
            topic, body = self.sparkplug.topic("CMD"), encode_command(self.sparkplug, values)
        else:
            topic = self.topics.setpoints
            body = json.dumps(
                {
                    "run_id": self.stepper.run_id,
                    "step": done.step,
                    "time_s": done.time_s,
                    "status": str(done.record.status),
                    "actuators": values,
                }
            ).encode()
        self.client.publish(topic, body, qos=1, retain=False)
        self.stepper.confirm_written(done, values)
        self.stats.latencies_ms.append((time.perf_counter() - arrived) * 1000.0)
        self.stats.step_ms.append(done.step_ms)
        readback = {
            tag: done.record.measurements[tag] for tag in values if tag in done.record.measurements
        }
        self.stats.written.append((done.time_s, values, readback))

    def _check_silence(self) -> None:
        assert self.period_s is not None
        if self._last_data is None:
            return
        now = time.monotonic()
        silent = now - self._last_data[0]
        if silent > STALE_AFTER_PERIODS * self.period_s and now - self._last_hold >= self.period_s:
            limit = STALE_AFTER_PERIODS * self.period_s
            self._hold(
                "silence",
                f"no measurement for {silent:.1f} s (limit {limit:g} s, "
                f"{STALE_AFTER_PERIODS} sample periods)",
            )

    def _hold(self, kind: str, reason: str) -> None:
        """A recorded stale hold, stamped in the gateway's time base: its last sample's
        time plus the seconds since that sample arrived."""
        now = time.monotonic()
        self._last_hold = now
        time_s = (
            None if self._last_data is None else self._last_data[1] + (now - self._last_data[0])
        )
        try:
            self.stepper.hold(reason, time_s)
            self.stats.holds[kind] += 1  # counted once stored
        except SQLAlchemyError as exc:
            self.stats.db_errors += 1
            log.warning("loop %d: hold not stored: %s", self.stepper.run_id, exc)
        except ServiceError as exc:
            log.warning("loop %d: hold not stored: %s", self.stepper.run_id, exc)
