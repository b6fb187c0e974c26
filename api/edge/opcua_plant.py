"""A simulated plant behind an OPC UA server: CSTR units whose tags are server nodes.

The tests and `benchmarks/edge_opcua.py` connect `api.edge.opcua.OpcUaLoop` to it, and it
is a way to try `twin connect opcua` without a plant. Unit i has the nodes
`ns=<idx>;s=cstr<i>/<tag>` for Ca, T, Caf, Tf (read only), Tc (the coolant setpoint,
writable) and Tc_pv (the coolant temperature the plant applied, read only).

The plant runs in wall-clock time: every `tick_s` each unit advances one sample period of
the CSTR with the last Tc written, and its sensor nodes get fresh values with source
timestamps of now. Faults for the tests: a status code forced on a node, frozen
timestamps, refused writes, and the server going away and coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asyncua import Server, ua

from api.edge.nodemap import NodeMap
from processes import cstr

NAMESPACE = "urn:plant-twin:simulated-plant"
INPUT_TAGS = ("Ca", "T", "Caf", "Tf")


@dataclass
class Unit:
    sim: cstr.CSTRSimulator
    nodes: dict[str, object] = field(default_factory=dict)
    forced_status: dict[str, int] = field(default_factory=dict)  # tag -> StatusCodes value
    frozen: bool = False
    writes: list[tuple[datetime, float]] = field(default_factory=list)  # Tc as applied


class SimulatedPlant:
    def __init__(self, port: int, units: int = 1, tick_s: float = 0.05, seed: int = 0):
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/plant"
        self.tick_s = tick_s
        self.units = [Unit(cstr.CSTRSimulator(seed=seed + i)) for i in range(units)]
        self.server: Server | None = None
        self.ns = 2
        self._task: asyncio.Task[None] | None = None

    def node_map(self, unit: int, period_s: float | None = None) -> NodeMap:
        prefix = f"ns={self.ns};s=cstr{unit}/"
        return NodeMap(
            tags={tag: prefix + tag for tag in (*INPUT_TAGS, "Tc")},
            readback={"Tc": prefix + "Tc_pv"},
            period_s=period_s,
        )

    async def start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.ns = await server.register_namespace(NAMESPACE)
        objects = server.nodes.objects
        for i, unit in enumerate(self.units):
            folder = await objects.add_object(ua.NodeId(f"cstr{i}", self.ns), f"cstr{i}")
            values = {**unit.sim.measure(), "Tc": cstr.TC_NOMINAL, "Tc_pv": cstr.TC_NOMINAL}
            if unit.writes:
                values["Tc"] = values["Tc_pv"] = unit.writes[-1][1]
            for tag, value in values.items():
                node = await folder.add_variable(
                    ua.NodeId(f"cstr{i}/{tag}", self.ns),
                    tag,
                    ua.Variant(float(value), ua.VariantType.Double),
                )
                if tag == "Tc":
                    await node.set_writable(True)
                unit.nodes[tag] = node
        await server.start()
        self.server = server
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """The server goes away (clients see a lost connection); the units keep state."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.server is not None:
            await self.server.stop()
        self.server, self._task = None, None

    async def refuse_writes(self, unit: int, refuse: bool = True) -> None:
        await self.units[unit].nodes["Tc"].set_writable(not refuse)  # type: ignore[attr-defined]

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            for unit in self.units:
                await self._tick(unit)

    async def _tick(self, unit: Unit) -> None:
        if unit.frozen:
            return
        tc = float(await unit.nodes["Tc"].read_value())  # type: ignore[attr-defined]
        values = {**unit.sim.step(tc), "Tc_pv": tc}
        unit.writes.append((datetime.now(UTC), tc))
        now = datetime.now(UTC)
        for tag, value in values.items():
            status = ua.StatusCode(unit.forced_status.get(tag, ua.StatusCodes.Good))
            await unit.nodes[tag].write_value(
                ua.DataValue(  # type: ignore[attr-defined]
                    ua.Variant(float(value), ua.VariantType.Double),
                    StatusCode=status,
                    SourceTimestamp=now,
                    ServerTimestamp=now,
                )
            )
