"""Shared builders for the edge tests (OPC UA, MQTT): a migrated SQLite database with the
tiny CSTR twin registered, and a running loop on it served by a LoopManager."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api import services
from api.db import make_engine, make_session_factory
from api.edge.stepping import LoopStepper
from api.migrate import upgrade
from api.orm import Alarm, RunEvent, RunStep
from api.services.loops import LoopManager
from processes import cstr


@dataclass
class EdgeDb:
    sessions: sessionmaker[Session]
    manager: LoopManager
    model_id: int

    def start_loop(self, planner: str = "casadi") -> LoopStepper:
        with self.sessions() as session:
            run = self.manager.start(session, "cstr", self.model_id, planner, {"T": 352.0})
        return LoopStepper(self.manager, self.sessions, run.id)

    def steps(self, run_id: int) -> list[RunStep]:
        with self.sessions() as session:
            return list(
                session.scalars(
                    select(RunStep).where(RunStep.run_id == run_id).order_by(RunStep.step)
                )
            )

    def events(self, run_id: int, kind: str | None = None) -> list[RunEvent]:
        with self.sessions() as session:
            query = select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)
            if kind is not None:
                query = query.where(RunEvent.kind == kind)
            return list(session.scalars(query))

    def alarms(self, run_id: int) -> list[Alarm]:
        with self.sessions() as session:
            return list(session.scalars(select(Alarm).where(Alarm.run_id == run_id)))


def edge_db(tmp_path, twin) -> EdgeDb:
    url = f"sqlite:///{tmp_path / 'edge.db'}"
    upgrade(url)
    sessions = make_session_factory(make_engine(url))
    with sessions() as session:
        services.ensure_process(session, cstr.SPEC)
        model = services.register_model(session, "cstr", "tiny", twin.to_bytes(), {}, {})
        model_id = int(model.id)
    return EdgeDb(sessions, LoopManager(), model_id)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
