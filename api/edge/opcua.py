"""OPC UA client loop: read a plant's measurement nodes, step the loop, write setpoints back.

Every `period_s` the loop reads all mapped input nodes in one Read call (value, status
code, source timestamp), steps the loop through `LoopStepper` (the HTTP path's service)
and writes the actuator values back in one Write call.

A sample becomes a recorded stale hold (see api.edge.stepping) when any input node has
a status code that is not Good (Bad or Uncertain), has no timestamp, holds no finite
number, or has a source timestamp that did not advance since the previous read. While
the server cannot be reached, one hold is recorded per connection attempt and the
client reconnects with exponential back-off. A write the server refuses (any status
that is not Good) is a `write_refused` event and an alarm; nothing is retried blindly.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, ua
from sqlalchemy.exc import SQLAlchemyError

from api.edge.nodemap import NodeMap
from api.edge.stepping import EdgeStats, EdgeStep, LoopStepper, UnsafeSetpoint
from api.errors import ServiceError

log = logging.getLogger("api.edge.opcua")
# Exceptions that mean "the connection is gone" rather than "the data is bad".
CONNECTION_ERRORS = (OSError, ConnectionError, asyncio.TimeoutError, ua.UaError)


@dataclass
class OpcUaLoop:
    endpoint: str
    node_map: NodeMap
    stepper: LoopStepper
    period_s: float | None = None
    timeout_s: float = 4.0
    backoff_s: tuple[float, float] = (0.5, 10.0)  # first and longest wait between attempts
    stats: EdgeStats = field(default_factory=EdgeStats)
    _last_source: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.stepper.spec
        self.period_s = self.period_s or self.node_map.period_s or spec.sample_period_s
        self._reads = self.node_map.reads(spec)
        self._writes = self.node_map.writes(spec)

    async def run(self, stop: asyncio.Event) -> None:
        """Serve the loop until `stop` is set or the loop is stopped through the API."""
        wait = self.backoff_s[0]
        while not stop.is_set():
            try:
                async with Client(url=self.endpoint, timeout=self.timeout_s) as client:
                    wait = self.backoff_s[0]
                    log.info("loop %d: connected to %s", self.stepper.run_id, self.endpoint)
                    if not await self._serve(client, stop):
                        return
            except CONNECTION_ERRORS as exc:
                self.stats.reconnects += 1
                why = f"connection to {self.endpoint} lost: {type(exc).__name__}: {exc}"
                log.warning("loop %d: %s; retrying in %.1f s", self.stepper.run_id, why, wait)
                await self._hold("connection", why, time.time())
                await _sleep(stop, wait)
                wait = min(wait * 2, self.backoff_s[1])

    async def _serve(self, client: Client, stop: asyncio.Event) -> bool:
        """Sample until stopped; False when the loop itself ended (stopped via the API)."""
        reads = [client.get_node(node) for node in self._reads.values()]
        writes = {tag: client.get_node(node) for tag, node in self._writes.items()}
        assert self.period_s is not None
        next_at = time.monotonic()
        while not stop.is_set():
            started = time.perf_counter()
            values = await client.read_attributes(reads, ua.AttributeIds.Value)
            measurements, time_s, reason = self._judge(values)
            if reason is not None:
                await self._hold(reason[0], reason[1], time_s)
            else:
                try:
                    done = await asyncio.to_thread(self.stepper.step, time_s, measurements)
                except SQLAlchemyError as exc:  # nothing stored: the plant keeps its values
                    self.stats.db_errors += 1
                    log.warning("loop %d: step not stored: %s", self.stepper.run_id, exc)
                except ServiceError as exc:
                    if await asyncio.to_thread(self.stepper.loop_status) == "stopped":
                        log.info("loop %d was stopped; disconnecting", self.stepper.run_id)
                        return False
                    await self._hold("refused", f"step refused: {exc}", time_s)
                else:
                    try:
                        await self._write(client, writes, done, started)
                    except SQLAlchemyError as exc:  # a refusal's event not stored: go on
                        self.stats.db_errors += 1
                        log.warning("loop %d: not stored: %s", self.stepper.run_id, exc)
            next_at += self.period_s
            await _sleep(stop, max(0.0, next_at - time.monotonic()))
            next_at = max(next_at, time.monotonic() - self.period_s)  # no burst after a stall
        return True

    def _judge(
        self, values: list[ua.DataValue]
    ) -> tuple[dict[str, float | None], float, tuple[str, str] | None]:
        """(measurements, plant time, (reason kind, text) when the sample must be held)."""
        measurements: dict[str, float | None] = {}
        newest, reason = 0.0, None
        for (tag, node), dv in zip(self._reads.items(), values, strict=True):
            status = dv.StatusCode or ua.StatusCode(ua.StatusCodes.Good)
            stamp = dv.SourceTimestamp or dv.ServerTimestamp
            value = dv.Value.Value if dv.Value is not None else None
            if not status.is_good():
                reason = reason or ("status", f"{tag} ({node}) status {status.name}")
                continue
            if stamp is None:
                reason = reason or ("timestamp", f"{tag} ({node}) has no timestamp")
                continue
            seconds = _epoch(stamp)
            if seconds <= self._last_source.get(tag, -math.inf):
                reason = reason or (
                    "timestamp",
                    f"{tag} ({node}) source timestamp {stamp.isoformat()} did not advance",
                )
            self._last_source[tag] = max(seconds, self._last_source.get(tag, -math.inf))
            if not _is_number(value):
                reason = reason or ("value", f"{tag} ({node}) holds {value!r}, not a number")
                continue
            measurements[tag] = float(value)
            newest = max(newest, seconds)
        return measurements, newest or time.time(), reason

    async def _write(
        self, client: Client, writes: dict[str, Any], done: EdgeStep, started: float
    ) -> None:
        self.stats.steps += 1
        try:
            values = self.stepper.outgoing(done)
        except UnsafeSetpoint as exc:  # never happens unless the step path has a bug
            self.stats.unsafe += 1
            await asyncio.to_thread(self.stepper.edge_event, "unsafe_setpoint", str(exc))
            return
        nodes = [writes[tag] for tag in values]
        results = await client.write_values(
            nodes, list(values.values()), raise_on_partial_error=False
        )
        accepted = {}
        for (tag, value), result in zip(values.items(), results, strict=True):
            if result.is_good():
                accepted[tag] = value
            else:
                self.stats.refused_writes += 1
                await asyncio.to_thread(self.stepper.write_refused, done, tag, result.name)
        self.stepper.confirm_written(done, accepted)
        self.stats.latencies_ms.append((time.perf_counter() - started) * 1000.0)
        self.stats.step_ms.append(done.step_ms)
        if accepted:
            readback = {
                tag: done.record.measurements[tag]
                for tag in accepted
                if tag in done.record.measurements
            }
            self.stats.written.append((done.time_s, accepted, readback))

    async def _hold(self, kind: str, reason: str, time_s: float) -> None:
        try:
            await asyncio.to_thread(self.stepper.hold, reason, time_s)
            self.stats.holds[kind] += 1  # counted once stored
        except SQLAlchemyError as exc:
            self.stats.db_errors += 1
            log.warning("loop %d: hold not stored: %s", self.stepper.run_id, exc)
        except ServiceError as exc:  # the loop was stopped meanwhile: nothing to hold
            log.warning("loop %d: hold not stored: %s", self.stepper.run_id, exc)


def _epoch(moment: datetime) -> float:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.timestamp()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        pass
