"""Planning in embedding space: CasADi planners (the controller) and the classic JEPA sampling
planners (CEM, MPPI) batched in torch.

All solve the same problem, in normalised units, behind one interface:

    minimise   sum_k |W (z_k - z_goal)|^2 + move_weight * sum_k (du_k / rate)^2
               + slack_weight * sum_k s_k
    subject to z_{k+1} = predictor(z_k, u_k)              (the twin's dynamics)
               u_low <= u_k <= u_high                      (hard actuator bounds)
               |u_k - u_{k-1}| <= rate                     (hard rate limits, u_{-1} = applied)
               readout(z_k) <= sensor_high - margin + s_k  (sensor limits, penalised slack)
               readout(z_k) >= sensor_low + margin - s_k

(one slack per limited sensor and stage). The objective is defined once (`cost.py`), the
constraint rows and the move projection once (`constraints.py`); every planner calls them.
A planner never applies anything: its output always passes through
`twin.safety.SafetyLayer`. A planner never raises for a problem it cannot solve: it answers
`PlanResult(ok=False)` with the reason and a plan that keeps the bounds.

The package, one module per concern:

- `problem`: settings, the problem, the result, input checks, the failed plan;
- `constraints`: bounds, rates and sensor limits, the move projection, the NLP's sensor rows;
- `cost`: the objective (CasADi, numpy, torch side by side);
- `casadi_export`, `linearisation`, `dense_qp`, `compile_cache`: the twin as CasADi and
  numpy functions, the QP solvers, compiled code cached on disk;
- `rti`, `nlp`, `structured_nlp`, `sampling`, `hierarchical`: the planners; `factory`:
  `make_planner`, a planner by name;
- `timing`: how long a planner takes on a twin against its deadline and sample period
  (`time_planner`), and sampling settings that fit (`planner_that_fits`).

The planners, by name (`make_planner`):

- `casadi` (`RTIPlanner`): Gauss-Newton SQP in real-time-iteration form. Each step linearises
  the twin along the warm start (the previous plan shifted by one sample; numpy and BLAS by
  default, CasADi's exact functions on request, equal to round-off), condenses the
  embeddings away and solves one dense QP in the moves per step (DAQP, its active set
  warm-started from the previous step's), with a backtracking line search on the exact
  cost. Bounds and rate limits are linear in the moves, so every iterate keeps them exactly.
- `casadi-ipopt` (`CasadiPlanner`): the full multiple-shooting NLP solved by IPOPT with exact
  Hessians; the reference optimum, several times slower.
- `casadi-fatrop` (`StructuredNLPPlanner`): the same NLP laid out for fatrop's structure
  detection (initial state fixed by bounds, each stage opening with its dynamics, the
  previous input carried as a state for the rate limits), optionally compiled.
- `cem`, `mppi`: sampling planners; every sample keeps bounds and rate limits by
  construction, sensor limits enter as the slack penalty.
- `hierarchical` (`HierarchicalPlanner`): a coarse CEM over a long horizon picks a subgoal,
  the RTI planner tracks it.

Timings for each setup: `benchmarks/planning_speed.py`.
"""

from __future__ import annotations

from ..planner_names import PLANNER_NAMES
from .casadi_export import (
    CasadiLinearisation,
    casadi_dynamics,
    mlp_with_jacobian,
    torch_mlp_to_casadi,
)
from .compile_cache import CACHE_DIR_ENV, casadi_cache_dir, compiled_function, find_compiler
from .constraints import (
    Constraints,
    SensorRows,
    TorchLimits,
    add_sensor_limit_rows,
    project_moves,
    project_moves_torch,
)
from .cost import PlanningCost, TorchProblem, weighted_distance
from .factory import make_planner
from .hierarchical import CoarsePlan, CoarseSettings, HierarchicalPlanner
from .nlp import CasadiPlanner
from .problem import (
    Planner,
    PlannerSettings,
    PlanningProblem,
    PlanResult,
    failed_plan,
    pinned_error,
    problem_error,
)
from .rti import RTI_QP_SOLVERS, RTIPlanner
from .sampling import CEMPlanner, MPPIPlanner, SamplingPlanner
from .structured_nlp import StructuredNLPPlanner
from .timing import PlannerTiming, planner_that_fits, time_planner

__all__ = [
    "CACHE_DIR_ENV",
    "PLANNER_NAMES",
    "RTI_QP_SOLVERS",
    "CEMPlanner",
    "CasadiLinearisation",
    "CasadiPlanner",
    "CoarsePlan",
    "CoarseSettings",
    "Constraints",
    "HierarchicalPlanner",
    "MPPIPlanner",
    "PlanResult",
    "Planner",
    "PlannerSettings",
    "PlanningCost",
    "PlanningProblem",
    "RTIPlanner",
    "SamplingPlanner",
    "SensorRows",
    "StructuredNLPPlanner",
    "TorchLimits",
    "TorchProblem",
    "add_sensor_limit_rows",
    "casadi_cache_dir",
    "casadi_dynamics",
    "compiled_function",
    "failed_plan",
    "find_compiler",
    "make_planner",
    "mlp_with_jacobian",
    "pinned_error",
    "problem_error",
    "project_moves",
    "project_moves_torch",
    "torch_mlp_to_casadi",
    "weighted_distance",
    "PlannerTiming",
    "planner_that_fits",
    "time_planner",
]
