"""Processes: the tag specifications runs and models refer to."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Conflict, NotFound
from api.orm import Process, TwinModel
from api.services.audit import Actor, record
from twin.spec import ProcessSpec, SpecError


def ensure_process(session: Session, spec: ProcessSpec, *, commit: bool = True) -> Process:
    """Insert the process or update its spec (the spec in code is the source of truth)."""
    process = find_process(session, spec.name)
    if process is None:
        process = Process(name=spec.name, spec=spec.to_dict())
        session.add(process)
    elif process.spec != spec.to_dict():
        process.spec = spec.to_dict()
    session.flush()
    if commit:
        session.commit()
    return process


def define_process(session: Session, spec: ProcessSpec, *,
                   actor: Actor | None = None) -> Process:
    """Store a process known only from its tag file (a plant engineer's own process).

    Built-in names are refused (their spec lives in code), and so is a new spec for a
    process that already has trained models: those models were trained on the old tags.
    With an `actor`, a new or changed spec is audited ("process.define"); the same spec
    again changes nothing and records nothing.
    """
    from processes import PROCESS_MODULES  # late: the registry imports simulators lazily

    if spec.name in PROCESS_MODULES:
        raise Conflict(f"'{spec.name}' is a built-in process; choose another name")
    existing = find_process(session, spec.name)
    if existing is not None and existing.spec != spec.to_dict():
        has_models = session.scalars(
            select(TwinModel.id).where(TwinModel.process_id == existing.id).limit(1)).first()
        if has_models is not None:
            raise Conflict(f"process '{spec.name}' already has trained models on other tags; "
                           "register the new tag file under a new name")
    if existing is not None and existing.spec == spec.to_dict():
        return existing
    try:
        process = ensure_process(session, spec, commit=False)
        record(session, actor, "process.define", f"process:{spec.name}",
               {"created": existing is None, "tags": len(spec.tags)})
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return process


def find_process(session: Session, name: str) -> Process | None:
    return session.scalars(select(Process).where(Process.name == name)).one_or_none()


def get_process(session: Session, name: str) -> Process:
    process = find_process(session, name)
    if process is None:
        raise NotFound(f"unknown process '{name}'")
    return process


def list_processes(session: Session, with_builtins: bool = False) -> list[Process]:
    if with_builtins:
        from processes import process_names  # late: importing simulators is not free

        for name in process_names():
            process_or_builtin(session, name, commit=True)
    return list(session.scalars(select(Process).order_by(Process.name)))


def process_or_builtin(session: Session, name: str, commit: bool = False) -> Process:
    """The stored process, else a built-in one from `processes/`, stored on first use."""
    process = find_process(session, name)
    if process is not None:
        return process
    from processes import get_spec  # late: importing simulators is not free

    try:
        spec = get_spec(name)
    except SpecError as exc:
        raise NotFound(str(exc)) from None
    return ensure_process(session, spec, commit=commit)


def spec_of(process: Process) -> ProcessSpec:
    return ProcessSpec.from_dict(process.spec, source=f"stored process '{process.name}'")
