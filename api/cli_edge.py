"""`twin connect`: serve a running control loop from a plant's OPC UA server or MQTT broker.

    twin connect opcua --endpoint opc.tcp://HOST:4840 --map nodes.yaml --loop 12
    twin connect mqtt --loop 12 --broker 127.0.0.1:1883                 # plain JSON
    twin connect mqtt --loop 12 --sparkplug plant/gateway1/reactor1     # Sparkplug B

The loop is started first (`POST /api/loops`); each sample goes through the same service
as `POST /api/loops/{id}/step` and is stored the same way (api.edge). Ctrl+C or SIGTERM
stops the connector, not the loop.

Commands import what they need inside their bodies (late imports): `twin --help` and the
light commands must not pay seconds for torch, CasADi, the simulators or the database layer.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from api.cli_common import friendly_errors
from twin.errors import InvalidInput

connect_app = typer.Typer(
    help="Connect a running loop to a plant: OPC UA or MQTT.", no_args_is_help=True
)
console = Console()
UrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url", envvar="DATABASE_URL", help="SQLAlchemy URL; default sqlite:///./twin.db"
    ),
]
LoopOption = Annotated[int, typer.Option("--loop", help="id of a running control loop")]
PeriodOption = Annotated[
    float | None,
    typer.Option("--period", min=0.01, help="seconds between samples (default: the process's)"),
]


def _stepper(url: str | None, loop: int) -> Any:
    # Late imports: `twin --help` must not load the database layer or the edge libraries.
    from api.db import make_engine, make_session_factory
    from api.edge.stepping import LoopStepper
    from api.migrate import check_migrated
    from api.services.loops import LoopManager
    from api.settings import Settings

    engine = make_engine(url or Settings().database_url)
    check_migrated(engine)
    return LoopStepper(LoopManager(), make_session_factory(engine), loop)


@contextmanager
def _stop_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    previous = {
        sig: signal.signal(sig, lambda *_: stop()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _summary(stats: Any, extra: str = "") -> None:
    holds = ", ".join(f"{n} {kind}" for kind, n in stats.holds.items()) or "none"
    console.print(
        f"{stats.steps} step(s) written; stale holds: {holds}; refused writes: "
        f"{stats.refused_writes}{extra}"
    )


@connect_app.command("opcua")
def opcua(
    endpoint: Annotated[str, typer.Option(help="opc.tcp://HOST:PORT[/path] of the server")],
    map_file: Annotated[Path, typer.Option("--map", help="tag map, .yaml or .json")],
    loop: LoopOption,
    period: PeriodOption = None,
    database_url: UrlOption = None,
) -> None:
    """Read measurement nodes, step the loop, write the setpoints back, every sample."""
    # Late: asyncua loads only for this command.
    from api.edge.nodemap import load_node_map
    from api.edge.opcua import OpcUaLoop

    @friendly_errors
    def go() -> None:
        if not endpoint.startswith("opc.tcp://"):
            raise InvalidInput(f"endpoint '{endpoint}' must start with opc.tcp://")
        stepper = _stepper(database_url, loop)
        client = OpcUaLoop(
            endpoint, load_node_map(map_file, stepper.spec), stepper, period_s=period
        )

        async def serve() -> None:
            stop = asyncio.Event()
            running = asyncio.get_running_loop()
            with _stop_on_signals(lambda: running.call_soon_threadsafe(stop.set)):
                await client.run(stop)

        console.print(
            f"loop {loop} ({stepper.spec.name}) <-> {endpoint} every "
            f"{client.period_s:g} s (Ctrl+C to stop)"
        )
        asyncio.run(serve())
        _summary(client.stats)

    go()


@connect_app.command("mqtt")
def mqtt(
    loop: LoopOption,
    broker: Annotated[str, typer.Option(help="HOST:PORT of the MQTT broker")] = "127.0.0.1:1883",
    prefix: Annotated[str, typer.Option(help="plain JSON: topic prefix")] = "twin",
    sparkplug: Annotated[
        str | None,
        typer.Option(help="Sparkplug B instead of JSON: GROUP/EDGE_NODE or GROUP/EDGE_NODE/DEVICE"),
    ] = None,
    period: PeriodOption = None,
    database_url: UrlOption = None,
) -> None:
    """Take measurements from a broker (JSON or Sparkplug B), publish setpoints (QoS 1)."""
    # Late: paho-mqtt loads only for this command.
    from api.edge.mqtt import MqttBridge
    from api.edge.sparkplug import Address

    @friendly_errors
    def go() -> None:
        host, _, port = broker.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidInput(f"broker '{broker}' must look like HOST:PORT")
        address = None
        if sparkplug is not None:
            parts = sparkplug.split("/")
            if len(parts) not in (2, 3) or not all(parts):
                raise InvalidInput(
                    f"--sparkplug '{sparkplug}' must be GROUP/NODE or GROUP/NODE/DEVICE"
                )
            address = Address(*parts)
        stepper = _stepper(database_url, loop)
        bridge = MqttBridge(
            stepper, host, int(port), prefix=prefix, sparkplug=address, period_s=period
        )
        where = bridge.sparkplug.topic("DATA") if address else bridge.topics.measurements
        console.print(
            f"loop {loop} ({stepper.spec.name}) <-> mqtt://{broker} {where} (Ctrl+C to stop)"
        )
        stop = threading.Event()
        with _stop_on_signals(stop.set):
            bridge.run(stop)
        _summary(
            bridge.stats,
            f"; messages refused: {bridge.rejected}; Sparkplug seq jumps: {bridge.seq_jumps}",
        )

    go()
