"""Planners by name (`twin.planner_names` lists the names without importing any planner)."""

from __future__ import annotations

from ..planner_names import PLANNER_NAMES
from ..twin_model import Twin
from .hierarchical import HierarchicalPlanner
from .nlp import CasadiPlanner
from .problem import Planner, PlannerSettings
from .rti import RTIPlanner
from .sampling import CEMPlanner, MPPIPlanner
from .structured_nlp import StructuredNLPPlanner


def make_planner(name: str, twin: Twin, settings: PlannerSettings | None = None) -> Planner:
    """A planner by name (see the package's docstring for what each one is)."""
    factories = {
        "casadi": lambda: RTIPlanner(twin, settings),
        "casadi-ipopt": lambda: CasadiPlanner(twin, settings),
        "casadi-fatrop": lambda: StructuredNLPPlanner(twin, settings),
        "cem": lambda: CEMPlanner(twin, settings),
        "mppi": lambda: MPPIPlanner(twin, settings),
        "hierarchical": lambda: HierarchicalPlanner(twin, settings),
    }
    if name not in factories:
        raise ValueError(f"unknown planner '{name}' (choose {', '.join(PLANNER_NAMES)})")
    return factories[name]()
