"""The planners by name, without importing them (torch and casadi are slow to load):
the API validates requests against this list before any planner is built."""

from __future__ import annotations

from typing import Literal, get_args

PlannerName = Literal["casadi", "casadi-ipopt", "casadi-fatrop", "cem", "mppi", "hierarchical"]
PLANNER_NAMES: tuple[str, ...] = get_args(PlannerName)
