"""Whether the chosen planner keeps up with the process, timed when a live loop starts.

A step must finish within the process's sample period, and a plan slower than the
planner's deadline is thrown away (the baseline drives instead). So before a loop starts,
its controller's planner makes a handful of plans on the loop's own twin
(`twin.planning.timing.time_planner`); a p99 over the shorter of deadline and sample
period refuses the start (422), naming the planner, its p99 and the sample period, and
suggesting the first other planner this caller may use that does fit (a few plans each,
within `SUGGESTION_BUDGET_S`). What fits is kept in the loop's config (`planner_timing`).

A controller without a twin and a planner (a test's fake, injected as the LoopManager's
factory) is not timed.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from api.errors import Invalid
from api.orm import Role
from api.services.audit import Actor
from api.services.auth import role_allows
from api.services.loop_limits import LoopLimits

START_PLANS = 5  # timed plans of the chosen planner (after one untimed)
SUGGESTION_PLANS = 3  # of each other planner tried
SUGGESTION_BUDGET_S = 10.0  # no further planner is tried once this is spent
# The order other planners are tried in: the usually cheaper first.
SUGGESTION_ORDER = ("casadi", "mppi", "cem", "hierarchical", "casadi-ipopt", "casadi-fatrop")


def check_planner_timing(
    controller: Any, planner_name: str, allowed: Sequence[str]
) -> dict[str, float] | None:
    """The timing of a planner that keeps up, for the loop's config; None for a controller
    that is not timed. Refused (Invalid) when it does not keep up; `allowed`: the planners
    the caller may start a loop with, among which one that fits is suggested."""
    planner, twin = getattr(controller, "planner", None), getattr(controller, "twin", None)
    if twin is None or not callable(getattr(planner, "plan", None)):
        return None
    # late: torch loads with the first real controller, not at import
    from twin.planning.timing import time_planner

    timing = time_planner(planner, twin, START_PLANS, budget_share=1.0)
    if timing.fits:
        return {
            "p99_ms": round(timing.p99_ms, 1),
            "median_ms": round(timing.median_ms, 1),
            "plans": timing.plans,
            "budget_ms": timing.budget_ms,
        }
    others = [name for name in SUGGESTION_ORDER if name in allowed and name != planner_name]
    raise Invalid(
        f"planner {planner_name} cannot keep up with process '{twin.spec.name}': it took "
        f"{timing.p99_ms:.0f} ms p99 per plan ({timing.plans} plans on this model), over its "
        f"budget of {timing.budget_ms:.0f} ms (sample period {timing.sample_period_s:g} s, "
        f"planner deadline {timing.deadline_ms:.0f} ms); nothing was started. "
        + suggestion(twin, others)
    )


def allowed_planners(limits: LoopLimits, actor: Actor | None) -> list[str]:
    """The planners this caller may start a loop with (no actor: the CLI, any enabled)."""
    engineer = actor is None or role_allows(actor.role, Role.ENGINEER)
    return [*limits.loop_planners, *(limits.engineer_loop_planners if engineer else ())]


def suggestion(twin: Any, candidates: Sequence[str]) -> str:
    """The first of `candidates` (planner names, default settings) that keeps up, in words."""
    from twin.planning.factory import make_planner
    from twin.planning.timing import time_planner

    began = time.monotonic()
    tried = []
    for name in candidates:
        if time.monotonic() - began > SUGGESTION_BUDGET_S:
            break
        timing = time_planner(make_planner(name, twin), twin, SUGGESTION_PLANS, budget_share=1.0)
        if timing.fits:
            return (
                f"Planner {name} keeps up ({timing.p99_ms:.0f} ms p99 within "
                f'{timing.budget_ms:.0f} ms): start with "planner": "{name}".'
            )
        tried.append(f"{name} {timing.p99_ms:.0f} ms")
    if not tried:
        return "No other planner is enabled for you here to suggest."
    return (
        f"No other planner tried keeps up either ({', '.join(tried)} p99); a smaller model "
        "or a longer sample period is needed."
    )
