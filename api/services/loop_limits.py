"""What one key, or all of them, may ask of the server's live loops (see api.settings).

* Which planners a loop may use: `loop_planners` for any operator, `engineer_loop_planners`
  in addition for engineers and admins. The NLP planners (casadi-ipopt, casadi-fatrop)
  are in neither by default: one such loop took 53-74 s and over 3 GB to build.
* How many loops run: at most `max_loops` in the whole deployment (counted in the
  database, so every API worker sees the same number) and `max_loops_per_key` per key.
* Building a controller: in a worker thread (never under a lock other loops' steps wait
  on), at most `max_concurrent_builds` at once, within `planner_build_timeout_s`, and
  refused when the server's resident memory is already at `max_server_memory_mb` or the
  build itself grew it by more than `max_build_memory_mb`. A build that times out is
  abandoned: its result is dropped when its thread finishes, nothing is stored.

Memory is read from /proc/self/statm (Linux, as in the container); where that file does
not exist the memory limits are not checked. Memory is admission control, measured
before and after a build, not a hard cap on a thread (Python offers none): builds are
serialised by default so that the growth measured is the build's own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import Forbidden, Invalid, Unavailable
from api.orm import Role, Run, RunKind, RunStatus
from api.services.audit import Actor
from api.services.auth import role_allows
from api.services.loop_checks import TimeWindow

if TYPE_CHECKING:
    from api.settings import Settings

T = TypeVar("T")
MB = 1024 * 1024


@dataclass(frozen=True)
class LoopLimits:
    loop_planners: tuple[str, ...] = ("casadi", "cem", "mppi", "hierarchical")
    engineer_loop_planners: tuple[str, ...] = ()
    max_loops: int = 32
    max_loops_per_key: int = 8
    planner_build_timeout_s: float = 30.0
    max_concurrent_builds: int = 1
    max_server_memory_mb: float = 2048.0
    max_build_memory_mb: float = 1024.0
    time_window: TimeWindow = TimeWindow()
    unit_check_sigmas: float = 6.0
    unit_check_ratio: float = 4.0

    @classmethod
    def of(cls, settings: Settings) -> LoopLimits:
        return cls(
            loop_planners=tuple(settings.loop_planners),
            engineer_loop_planners=tuple(settings.engineer_loop_planners),
            max_loops=settings.max_loops,
            max_loops_per_key=settings.max_loops_per_key,
            planner_build_timeout_s=settings.planner_build_timeout_s,
            max_concurrent_builds=settings.max_concurrent_builds,
            max_server_memory_mb=settings.max_server_memory_mb,
            max_build_memory_mb=settings.max_build_memory_mb,
            time_window=TimeWindow(settings.max_clock_lead_s, settings.max_gap_periods),
            unit_check_sigmas=settings.unit_check_sigmas,
            unit_check_ratio=settings.unit_check_ratio,
        )


def resident_mb() -> float | None:
    """This process's resident memory (MB), or None where /proc is not available."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / MB


def check_planner(limits: LoopLimits, planner: str, actor: Actor | None) -> None:
    """Refuse a planner the actor's role may not use in a live loop (no actor: the CLI)."""
    if planner in limits.loop_planners:
        return
    if planner in limits.engineer_loop_planners:
        if actor is None or role_allows(actor.role, Role.ENGINEER):
            return
        raise Forbidden(
            f"planner '{planner}' needs the 'engineer' role for a live loop "
            f"(operators may use: {', '.join(limits.loop_planners)})"
        )
    allowed = limits.loop_planners + limits.engineer_loop_planners
    raise Invalid(
        f"planner '{planner}' is not enabled for live loops on this server "
        f"(enabled: {', '.join(allowed) or 'none'}; settings TWIN_LOOP_PLANNERS, "
        "TWIN_ENGINEER_LOOP_PLANNERS)"
    )


def check_loop_count(session: Session, limits: LoopLimits, key_id: int | None) -> None:
    """Refuse a new loop beyond the server's or this key's limit (running loops count)."""
    running = (
        select(func.count())
        .select_from(Run)
        .where(Run.kind == RunKind.CONTROL, Run.status == RunStatus.RUNNING)
    )
    total = session.scalar(running) or 0
    if total >= limits.max_loops:
        raise Unavailable(
            f"{total} loops are running, the server's limit "
            f"(TWIN_MAX_LOOPS={limits.max_loops}): stop one first"
        )
    mine = (
        session.scalar(
            running.where(
                Run.config["started_by_key"].as_integer() == key_id
                if key_id is not None
                else Run.config["started_by_key"].as_string().is_(None)
            )
        )
        or 0
    )
    if mine >= limits.max_loops_per_key:
        raise Unavailable(
            f"this key runs {mine} loops, its limit (TWIN_MAX_LOOPS_PER_KEY="
            f"{limits.max_loops_per_key}): stop one first"
        )


class ControllerBuilder:
    """Builds controllers in worker threads, within the limits' time and memory."""

    def __init__(self, limits: LoopLimits) -> None:
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.max_concurrent_builds)
        self._pool = ThreadPoolExecutor(
            max_workers=limits.max_concurrent_builds, thread_name_prefix="controller-build"
        )

    def build(self, what: str, make: Callable[[], T]) -> T:
        """`make()` in a worker thread; `what` names it in errors ("model 3, planner cem")."""
        before = resident_mb()
        cap = self.limits.max_server_memory_mb
        if before is not None and before >= cap:
            raise Unavailable(
                f"the server holds {before:.0f} MB, at its limit "
                f"(TWIN_MAX_SERVER_MEMORY_MB={cap:g}): no new controller now"
            )
        timeout = self.limits.planner_build_timeout_s
        # Builds queue for a slot, as long as one build may take (then: retry later).
        if not self._slots.acquire(timeout=timeout):
            raise Unavailable(
                f"other controllers were being built for {timeout:g} s; try again shortly",
                retry_after_s=max(1, int(timeout)),
            )
        try:
            future: Future[T] = self._pool.submit(make)
        except BaseException:
            self._slots.release()
            raise
        # The slot frees when the thread is done, even if we stopped waiting for it.
        future.add_done_callback(lambda _f: self._slots.release())
        try:
            built = future.result(timeout=timeout)
        except FutureTimeout:
            raise Unavailable(
                f"building the controller ({what}) took longer than {timeout:g} "
                "s (TWIN_PLANNER_BUILD_TIMEOUT_S); nothing was started. Try a "
                "lighter planner"
            ) from None
        after = resident_mb()
        if before is not None and after is not None:
            grown = after - before
            if grown > self.limits.max_build_memory_mb:
                raise Unavailable(
                    f"building the controller ({what}) took {grown:.0f} MB, "
                    f"over TWIN_MAX_BUILD_MEMORY_MB="
                    f"{self.limits.max_build_memory_mb:g}; nothing was started"
                )
        return built

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
