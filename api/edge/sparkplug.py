"""Sparkplug B for one edge node (and optionally one of its devices), over pysparkplug.

Payloads are the Sparkplug B protobuf messages, encoded and decoded by the pysparkplug
package (its generated protobuf code). `SparkplugSession` follows one edge node the way
a Sparkplug host application does:

* NBIRTH starts a session: it lists every metric (names, aliases, datatypes), and its
  sequence number is 0; DBIRTH does the same for a device;
* every later message of the node carries `seq` = previous + 1 (mod 256); a jump is
  reported (the host should ask for a rebirth; we record the jump as an event);
* NDEATH (the node's MQTT last will, published by the broker when the node vanishes) or
  DDEATH ends the session: the node's metrics are stale until the next birth.

Topics: spBv1.0/<group>/<NBIRTH|NDATA|NDEATH|NCMD>/<node> and
spBv1.0/<group>/<DBIRTH|DDATA|DDEATH|DCMD>/<node>/<device>.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from pysparkplug import (
    DataType,
    DBirth,
    DCmd,
    DData,
    DDeath,
    MessageType,
    Metric,
    NBirth,
    NCmd,
    NData,
    NDeath,
    Topic,
)

SEQ_MODULUS = 256
BDSEQ = "bdSeq"


@dataclass(frozen=True)
class Address:
    group: str
    node: str
    device: str | None = None

    def topic(self, kind: str) -> str:
        """kind: BIRTH, DATA, DEATH or CMD; N... for the node, D... for its device."""
        prefix = "D" if self.device else "N"
        parts = ["spBv1.0", self.group, prefix + kind, self.node]
        return "/".join(parts + ([self.device] if self.device else []))

    def subscriptions(self) -> list[str]:
        """Everything of the node: its births, data and death, and its devices'."""
        return [f"spBv1.0/{self.group}/+/{self.node}", f"spBv1.0/{self.group}/+/{self.node}/+"]


@dataclass
class Received:
    """What one message means for the loop."""

    kind: str  # "birth", "data", "death" or "ignored"
    time_s: float = 0.0
    values: dict[str, float | None] = field(default_factory=dict)
    seq_jump: str | None = None  # a message, when the sequence number jumped


def now_ms() -> int:
    return int(time.time() * 1000)


def _metrics(
    values: Mapping[str, float | None], stamp: int, aliases: Mapping[str, int] | None = None
) -> tuple[Metric, ...]:
    return tuple(
        Metric(
            timestamp=stamp,
            name=name,
            datatype=DataType.DOUBLE,
            value=None if value is None else float(value),
            is_null=value is None,
            alias=(aliases or {}).get(name),
        )
        for name, value in values.items()
    )


def encode_birth(
    address: Address,
    values: Mapping[str, float],
    seq: int = 0,
    bdseq: int = 0,
    stamp: int | None = None,
) -> bytes:
    stamp = stamp or now_ms()
    metrics = _metrics(values, stamp)
    if address.device:
        return DBirth(timestamp=stamp, seq=seq, metrics=metrics).encode(include_dtypes=True)
    bd = Metric(timestamp=stamp, name=BDSEQ, datatype=DataType.INT64, value=bdseq)
    return NBirth(timestamp=stamp, seq=seq, metrics=(bd, *metrics)).encode(include_dtypes=True)


def encode_data(
    address: Address, values: Mapping[str, float | None], seq: int, stamp: int | None = None
) -> bytes:
    stamp = stamp or now_ms()
    payload = DData if address.device else NData
    return payload(timestamp=stamp, seq=seq, metrics=_metrics(values, stamp)).encode(
        include_dtypes=True
    )


def encode_death(address: Address, bdseq: int = 0, seq: int = 0) -> bytes:
    if address.device:
        return DDeath(timestamp=now_ms(), seq=seq).encode()
    bd = Metric(timestamp=now_ms(), name=BDSEQ, datatype=DataType.INT64, value=bdseq)
    return NDeath(timestamp=now_ms(), bd_seq_metric=bd).encode(include_dtypes=True)


def encode_command(address: Address, values: Mapping[str, float]) -> bytes:
    stamp = now_ms()
    payload = DCmd if address.device else NCmd
    return payload(timestamp=stamp, metrics=_metrics(values, stamp)).encode(include_dtypes=True)


def decode_command(raw: bytes, address: Address) -> dict[str, float]:
    payload = (DCmd if address.device else NCmd).decode(raw)
    return {
        m.name: float(m.value)
        for m in payload.metrics
        if m.name is not None and m.value is not None
    }


class SparkplugSession:
    """Births, deaths and sequence numbers of one edge node, as a host application sees."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.node_birth: NBirth | None = None
        self.device_birth: DBirth | None = None
        self.expected_seq: int | None = None

    def receive(self, topic: str, raw: bytes) -> Received:
        """Decode one message of the node; ValueError for a malformed payload."""
        parsed = Topic.from_str(topic)
        kind = parsed.message_type
        if parsed.group_id != self.address.group or parsed.edge_node_id != self.address.node:
            return Received("ignored")
        ours = parsed.device_id == self.address.device
        if kind == MessageType.NDEATH:
            NDeath.decode(raw)
            self.node_birth = self.device_birth = None
            self.expected_seq = None
            return Received("death", time.time())
        if kind in (MessageType.NCMD, MessageType.DCMD, MessageType.STATE):
            return Received("ignored")
        if kind == MessageType.NBIRTH:
            self.node_birth = NBirth.decode(raw)
            self.expected_seq = (self.node_birth.seq + 1) % SEQ_MODULUS
            return Received(
                "birth",
                self.node_birth.timestamp / 1000.0,
                self._values(self.node_birth.metrics) if ours else {},
            )
        if kind == MessageType.NDATA:
            payload = NData.decode(raw, birth=self.node_birth)
        elif kind == MessageType.DBIRTH:
            payload = DBirth.decode(raw)
        elif kind == MessageType.DDATA:
            payload = DData.decode(raw, birth=self.device_birth if ours else None)
        elif kind == MessageType.DDEATH:
            payload = DDeath.decode(raw)
        else:
            return Received("ignored")
        jump = self._check_seq(payload.seq, topic)
        if not ours:
            return Received("ignored", seq_jump=jump)
        if kind == MessageType.DBIRTH:
            self.device_birth = payload
            return Received(
                "birth", payload.timestamp / 1000.0, self._values(payload.metrics), jump
            )
        if kind == MessageType.DDEATH:
            self.device_birth = None
            return Received("death", time.time(), seq_jump=jump)
        return Received("data", payload.timestamp / 1000.0, self._values(payload.metrics), jump)

    def _check_seq(self, seq: int, topic: str) -> str | None:
        expected, self.expected_seq = self.expected_seq, (seq + 1) % SEQ_MODULUS
        if expected is None:
            return f"{topic}: seq {seq} with no birth seen (a rebirth is needed)"
        if seq != expected:
            return (
                f"{topic}: seq jumped to {seq}, expected {expected} "
                f"({(seq - expected) % SEQ_MODULUS} message(s) missing)"
            )
        return None

    @staticmethod
    def _values(metrics: tuple[Metric, ...]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for metric in metrics:
            if metric.name is None or metric.name == BDSEQ:
                continue
            value = metric.value
            number = isinstance(value, int | float) and not isinstance(value, bool)
            out[metric.name] = (
                float(value) if number and math.isfinite(value) and not metric.is_null else None
            )
        return out
