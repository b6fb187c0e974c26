"""Processes: the tag specifications runs and models refer to."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Conflict, NotFound
from api.orm import Process, TwinModel
from api.services.audit import Actor, record
from twin.spec import ProcessSpec, SpecError


def ensure_process(session: Session, spec: ProcessSpec, *, commit: bool = True) -> Process:
    """Insert the process if it is new. A built-in process's stored spec follows the code
    (the source of truth); a file-defined one's changes only through `store_spec`, so a
    run stored with an older checkpoint's spec never overwrites a newer version."""
    from processes import PROCESS_MODULES  # late: the registry imports simulators lazily

    process = find_process(session, spec.name)
    if process is None:
        process = Process(name=spec.name, spec=spec.to_dict())
        session.add(process)
    elif spec.name in PROCESS_MODULES and process.spec != spec.to_dict():
        process.spec = spec.to_dict()
    session.flush()
    if commit:
        session.commit()
    return process


@dataclass(frozen=True)
class SpecVersion:
    """What storing a tag file did: the process, the version it now has, the top-level
    fields that changed (none: the same spec again) and whether it was new."""

    process: Process
    version: int
    changed: tuple[str, ...]
    created: bool


def check_spec_change(session: Session, spec: ProcessSpec) -> None:
    """Refuse a tag file whose tags or sampling differ from a stored process that already
    has trained models (they were trained on the old ones); anything else is a new
    version. Raises Conflict, naming what changed; changes nothing."""
    existing = find_process(session, spec.name)
    if existing is None:
        return
    model_changes = spec.model_changes(spec_of(existing))
    if not model_changes:
        return
    has_models = session.scalars(
        select(TwinModel.id).where(TwinModel.process_id == existing.id).limit(1)
    ).first()
    if has_models is not None:
        raise Conflict(
            f"process '{spec.name}' already has trained models on other tags "
            f"(changed: {', '.join(model_changes)}); register the new tag file "
            "under a new name"
        )


def store_spec(session: Session, spec: ProcessSpec, *, actor: Actor | None = None) -> SpecVersion:
    """Store a tag file: a new process at version 1, the same spec again unchanged, any
    other change (a PI gain, controller weights) as the next version. The API and
    `twin train --spec` both store through here, so they agree."""
    check_spec_change(session, spec)
    existing = find_process(session, spec.name)
    if existing is None:
        stored, changed = spec.model_copy(update={"version": 1}), ()
    else:
        previous = spec_of(existing)
        changed = spec.changed_fields(previous)
        if not changed:
            return SpecVersion(existing, previous.version, (), created=False)
        stored = spec.model_copy(update={"version": previous.version + 1})
    try:
        if existing is None:
            process = Process(name=spec.name, spec=stored.to_dict())
            session.add(process)
        else:
            process = existing
            process.spec = stored.to_dict()
        session.flush()
        record(
            session,
            actor,
            "process.define",
            f"process:{spec.name}",
            {
                "created": existing is None,
                "tags": len(spec.tags),
                "version": stored.version,
                "changed": list(changed),
            },
        )
        session.commit()
    except BaseException:
        session.rollback()
        raise
    return SpecVersion(process, stored.version, changed, created=existing is None)


def define_process(session: Session, spec: ProcessSpec, *, actor: Actor | None = None) -> Process:
    """Store a process known only from its tag file (a plant engineer's own process).

    Built-in names are refused (their spec lives in code). A changed tag file is the
    next version of the spec, unless its tags or sampling changed while trained models
    exist (`check_spec_change`). With an `actor`, a new or changed spec is audited
    ("process.define"); the same spec again changes nothing and records nothing.
    """
    from processes import PROCESS_MODULES  # late: the registry imports simulators lazily

    if spec.name in PROCESS_MODULES:
        raise Conflict(f"'{spec.name}' is a built-in process; choose another name")
    return store_spec(session, spec, actor=actor).process


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
