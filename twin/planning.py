"""Planning in embedding space: CasADi planners (the controller) and the classic JEPA sampling
planners (CEM, MPPI) batched in torch.

All solve the same problem, in normalised units, behind one interface:

    minimise   sum_k |z_k - z_goal|^2 + move_weight * sum_k (du_k / rate)^2 + slack_weight * s
    subject to z_{k+1} = predictor(z_k, u_k)              (the twin's dynamics)
               u_low <= u_k <= u_high                      (hard actuator bounds)
               |u_k - u_{k-1}| <= rate                     (hard rate limits, u_{-1} = applied)
               readout(z_k) <= sensor_high - margin + s_k  (sensor limits, penalised slack)
               readout(z_k) >= sensor_low + margin - s_k

(one slack per limited sensor and stage). Costs live in `PlanningProblem`; solvers only see
arrays. A planner never applies anything: its output always passes through
`twin.safety.SafetyLayer`.

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

Timings for each setup: `benchmarks/planning_speed.py`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import casadi as ca
import numpy as np
import torch

from .dense_qp import CasadiQPSolver, DAQPSolver, QPSolution, QPSolver
from .latent_linearisation import NumpyLinearisation
from .planner_names import PLANNER_NAMES
from .twin_model import Twin


@dataclass(frozen=True)
class PlannerSettings:
    horizon: int = 20
    move_weight: float = 0.5
    slack_weight: float = 1e4
    limit_margin: float = 0.25  # back-off from sensor limits, normalised units (model error)
    deadline_ms: float = 1000.0
    max_iterations: int = 60

    @classmethod
    def for_twin(cls, twin: Twin) -> PlannerSettings:
        """The defaults, with the move weight and limit margin of the twin's process spec."""
        control = twin.spec.control
        return cls(move_weight=control.move_weight, limit_margin=control.limit_margin)


@dataclass
class PlanningProblem:
    """One instance: where we are, what we applied last, where we want to go."""

    z0: np.ndarray  # (D,)
    u_prev: np.ndarray  # (A,) normalised, last applied
    z_goal: np.ndarray  # (D,)
    # (D, D) factor W of the stage cost |W (z - z_goal)|^2; None is the identity
    metric: np.ndarray | None = None
    # (L,) per limited sensor (`Constraints.limit_rows` order), normalised: how far the plant
    # has read above the twin's forecast of late (below: negative); see `sensor_bounds`
    limit_shift: np.ndarray | None = None
    # (H, A) normalised moves given from outside (a baseline drives these actuators: the
    # spec's `control.baseline_actuators`), NaN where the planner chooses; each actuator's
    # column is pinned whole or free
    pinned: np.ndarray | None = None

    def with_pinned(self, actions: np.ndarray) -> np.ndarray:
        """(H, A) moves with the pinned ones in their place."""
        if self.pinned is None:
            return actions
        return np.where(np.isfinite(self.pinned), self.pinned, actions)

    def sensor_bounds(self, lim: Constraints) -> tuple[np.ndarray, np.ndarray]:
        """The sensor limits the twin's readouts must keep in this problem: (low, high).

        With a `limit_shift` both the readout and the readout plus the shift must keep the
        limits: a plant that reads above its forecast brings the high limit nearer and
        leaves the low one where it is (and the other way round), so a bias only ever
        tightens the plan."""
        if self.limit_shift is None:
            return lim.y_low, lim.y_high
        shift = np.asarray(self.limit_shift, dtype=float)
        return lim.y_low - np.minimum(shift, 0.0), lim.y_high - np.maximum(shift, 0.0)

    def weighted(self, z: np.ndarray) -> np.ndarray:
        """W z for embeddings along the first axis (D, ...)."""
        return z if self.metric is None else np.tensordot(self.metric, z, axes=1)

    def metric_or_identity(self) -> np.ndarray:
        return np.eye(len(self.z_goal)) if self.metric is None else \
            np.asarray(self.metric, dtype=float)


def weighted_distance(z: torch.Tensor, z_goal: torch.Tensor,
                      metric: torch.Tensor | None) -> torch.Tensor:
    """|W (z - z_goal)|^2 per embedding, over the last axis (the sampling planners' stage
    cost; the identity without a metric)."""
    delta = z - z_goal
    if metric is not None:
        delta = delta @ metric.T
    return (delta**2).sum(dim=-1)


@dataclass
class PlanResult:
    ok: bool
    actions: np.ndarray  # (H, A) normalised
    embeddings: np.ndarray  # (H, D) predicted z_1..z_H
    cost: float
    solve_ms: float
    message: str = ""
    stats: dict[str, float] = field(default_factory=dict)


class Planner(Protocol):
    name: str
    settings: PlannerSettings

    def plan(self, problem: PlanningProblem) -> PlanResult: ...


@dataclass(frozen=True)
class Constraints:
    """Bounds, rates and sensor limits in the twin's normalised units."""

    u_low: np.ndarray
    u_high: np.ndarray
    rate: np.ndarray
    limit_rows: np.ndarray  # readout rows of limited sensors
    y_low: np.ndarray  # -inf where unlimited
    y_high: np.ndarray  # +inf where unlimited

    @classmethod
    def from_twin(cls, twin: Twin, margin_fraction: float) -> Constraints:
        spec, layout, norm = twin.spec, twin.layout, twin.norm
        acts = [spec.tag(a) for a in layout.actions]
        lo = twin.normalise_actions(np.array([t.low for t in acts]))
        hi = twin.normalise_actions(np.array([t.high for t in acts]))
        std_u = np.array([norm.std[norm.index(a)] for a in layout.actions])
        rate = np.array([spec.rate_limit_per_sample(t) for t in acts]) / std_u
        rows, y_lo, y_hi = [], [], []
        for i, name in enumerate(layout.observed):
            tag = spec.tag(name)
            if name not in layout.sensors or (tag.low is None and tag.high is None):
                continue
            rows.append(i)
            y_lo.append(-np.inf if tag.low is None
                        else twin.normalise_sensor(name, tag.low) + margin_fraction)
            y_hi.append(np.inf if tag.high is None
                        else twin.normalise_sensor(name, tag.high) - margin_fraction)
        return cls(lo, hi, rate, np.array(rows, dtype=int), np.array(y_lo), np.array(y_hi))


@dataclass
class SensorRows:
    """Where an NLP's sensor-limit rows sit in its constraint vector (position, limited
    sensor, upper side or not), so a problem's `limit_shift` moves their bounds at solve
    time without rebuilding the solver."""

    positions: list[int] = field(default_factory=list)
    sensors: list[int] = field(default_factory=list)
    upper: list[bool] = field(default_factory=list)

    def add(self, position: int, sensor: int, upper: bool) -> None:
        self.positions.append(position)
        self.sensors.append(sensor)
        self.upper.append(upper)

    def bounds(self, lbg: np.ndarray, ubg: np.ndarray, problem: PlanningProblem
               ) -> tuple[np.ndarray, np.ndarray]:
        if problem.limit_shift is None or not self.positions:
            return lbg, ubg
        shift = np.asarray(problem.limit_shift, dtype=float)[self.sensors]
        lbg, ubg = lbg.copy(), ubg.copy()
        upper, positions = np.array(self.upper), np.array(self.positions)
        ubg[positions[upper]] -= np.maximum(shift[upper], 0.0)  # as `sensor_bounds`
        lbg[positions[~upper]] -= np.minimum(shift[~upper], 0.0)
        return lbg, ubg


def torch_mlp_to_casadi(module: torch.nn.Sequential, x: ca.SX | ca.MX) -> ca.SX | ca.MX:
    """Rebuild a Linear/Tanh Sequential as a CasADi expression with the same weights."""
    for layer in module:
        if isinstance(layer, torch.nn.Linear):
            w = ca.DM(layer.weight.detach().double().numpy())
            b = ca.DM(layer.bias.detach().double().numpy())
            x = ca.mtimes(w, x) + b
        elif isinstance(layer, torch.nn.Tanh):
            x = ca.tanh(x)
        else:
            raise TypeError(f"cannot export layer {type(layer).__name__} to CasADi")
    return x


def mlp_with_jacobian(module: torch.nn.Sequential, x: ca.MX) -> tuple[ca.MX, ca.MX]:
    """A Linear/Tanh Sequential and its Jacobian, accumulated forward layer by layer as
    dense matrix products (far cheaper than CasADi's generic AD through the same graph)."""
    jac: ca.MX | None = None
    for layer in module:
        if isinstance(layer, torch.nn.Linear):
            w = ca.DM(layer.weight.detach().double().numpy())
            x = ca.mtimes(w, x) + ca.DM(layer.bias.detach().double().numpy())
            jac = w if jac is None else ca.mtimes(w, jac)
        elif isinstance(layer, torch.nn.Tanh):
            x = ca.tanh(x)
            if jac is not None:
                jac = ca.repmat(1 - x**2, 1, jac.shape[1]) * jac
        else:
            raise TypeError(f"cannot export layer {type(layer).__name__} to CasADi")
    assert jac is not None, "an MLP starts with a Linear layer"
    return x, ca.MX(jac)


def casadi_dynamics(twin: Twin, symbol: type = ca.SX) -> tuple[ca.Function, ca.Function]:
    """(z, u) -> z_next and z -> readout, as CasADi functions equal to the torch modules.

    `ca.SX` gives scalar expression graphs (fast to evaluate for small nets, but compiled
    code grows with the square of the width); `ca.MX` keeps the weights as dense matrix
    products (compact, compiles in a second at any width)."""
    d, a = twin.config.embed_dim, len(twin.layout.actions)
    z, u = symbol.sym("z", d), symbol.sym("u", a)
    z_next = z + torch_mlp_to_casadi(twin.model.predictor.net, ca.vertcat(z, u))
    readout_net = twin.model.readout.net
    readout_seq = readout_net if isinstance(readout_net, torch.nn.Sequential) else \
        torch.nn.Sequential(readout_net)
    y = torch_mlp_to_casadi(readout_seq, z)
    return ca.Function("f", [z, u], [z_next]), ca.Function("h", [z], [y])


class CasadiPlanner:
    """Multiple-shooting NLP solved by IPOPT with exact Hessians; built once per twin.

    The problem is parametric in (z0, u_prev, z_goal), so each step only updates numbers
    and warm-starts from the previous solution shifted by one sample.
    """

    name = "casadi-ipopt"

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None) -> None:
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self._build()
        self._warm: tuple[np.ndarray, np.ndarray] | None = None

    def _build(self) -> None:
        s, lim = self.settings, self.limits
        f, h = casadi_dynamics(self.twin)
        d, a, n_lim, horizon = (self.twin.config.embed_dim, len(lim.u_low), len(lim.limit_rows),
                                s.horizon)
        Z, U = ca.SX.sym("Z", d, horizon), ca.SX.sym("U", a, horizon)
        S = ca.SX.sym("S", max(n_lim, 1), horizon)
        z0, u_prev, z_goal = ca.SX.sym("z0", d), ca.SX.sym("u_prev", a), ca.SX.sym("z_goal", d)
        metric = ca.SX.sym("metric", d, d)
        g, lbg, ubg, cost = [], [], [], 0
        self._sensor_rows = rows = SensorRows()
        z_k, u_before = z0, u_prev
        for k in range(horizon):
            g.append(Z[:, k] - f(z_k, U[:, k]))
            lbg += [0.0] * d
            ubg += [0.0] * d
            g.append(U[:, k] - u_before)
            lbg += list(-lim.rate)
            ubg += list(lim.rate)
            if n_lim:
                y = h(Z[:, k])[lim.limit_rows.tolist()]
                for j in range(n_lim):
                    if np.isfinite(lim.y_high[j]):
                        g.append(y[j] - S[j, k])
                        lbg.append(-np.inf)
                        ubg.append(float(lim.y_high[j]))
                        rows.add(len(ubg) - 1, j, True)
                    if np.isfinite(lim.y_low[j]):
                        g.append(y[j] + S[j, k])
                        lbg.append(float(lim.y_low[j]))
                        ubg.append(np.inf)
                        rows.add(len(lbg) - 1, j, False)
            cost += ca.sumsqr(metric @ (Z[:, k] - z_goal))
            cost += s.move_weight * ca.sumsqr((U[:, k] - u_before) / ca.DM(lim.rate))
            cost += s.slack_weight * ca.sum1(S[:, k])
            z_k, u_before = Z[:, k], U[:, k]
        x = ca.vertcat(ca.vec(Z), ca.vec(U), ca.vec(S))
        nlp = {"x": x, "p": ca.vertcat(z0, u_prev, z_goal, ca.vec(metric)), "f": cost,
               "g": ca.vertcat(*g)}
        options = {
            "print_time": False,
            "ipopt": {"print_level": 0, "sb": "yes", "max_iter": s.max_iterations,
                      "max_cpu_time": s.deadline_ms / 1e3, "tol": 1e-6,
                      "acceptable_tol": 1e-4, "mu_strategy": "adaptive"},
        }
        self.solver = ca.nlpsol("latent_mpc", "ipopt", nlp, options)
        inf_z = np.full(d * horizon, np.inf)
        self.lbx = np.concatenate([-inf_z, np.tile(lim.u_low, horizon),
                                   np.zeros(S.numel())])
        self.ubx = np.concatenate([inf_z, np.tile(lim.u_high, horizon),
                                   np.full(S.numel(), np.inf)])
        self.lbg, self.ubg = np.array(lbg), np.array(ubg)
        self._dims = (d, a, S.numel(), horizon)
        self._f, self._h = f, h

    def _initial_guess(self, problem: PlanningProblem) -> np.ndarray:
        d, a, n_s, horizon = self._dims
        if self._warm is not None:
            z_prev, u_prev = self._warm
            Z = np.hstack([z_prev[:, 1:], z_prev[:, -1:]])
            U = np.hstack([u_prev[:, 1:], u_prev[:, -1:]])
        else:
            U = np.tile(problem.u_prev[:, None], (1, horizon))
            Z = np.empty((d, horizon))
            z = problem.z0
            for k in range(horizon):
                z = np.asarray(self._f(z, U[:, k])).ravel()
                Z[:, k] = z
        U = np.clip(U, self.limits.u_low[:, None], self.limits.u_high[:, None])
        U = problem.with_pinned(U.T).T
        return np.concatenate([Z.ravel(order="F"), U.ravel(order="F"), np.zeros(n_s)])

    def reset(self) -> None:
        self._warm = None

    def plan(self, problem: PlanningProblem) -> PlanResult:
        d, a, n_s, horizon = self._dims
        p = np.concatenate([problem.z0, problem.u_prev, problem.z_goal,
                            problem.metric_or_identity().ravel(order="F")])
        start = time.perf_counter()
        if problem.pinned is not None:
            why = _pinned_problem(np.asarray(problem.pinned, dtype=float), problem.u_prev,
                                  self.limits, horizon)
            if why is not None:
                raise ValueError(why)
        lbg, ubg = self._sensor_rows.bounds(self.lbg, self.ubg, problem)
        lbx, ubx = self.lbx.copy(), self.ubx.copy()
        if problem.pinned is not None:  # U is stored (A, H) column-major: stage-major
            given = np.isfinite(problem.pinned).ravel()
            at = d * horizon + np.flatnonzero(given)
            lbx[at] = ubx[at] = np.asarray(problem.pinned).ravel()[given]
        sol = self.solver(x0=self._initial_guess(problem), p=p, lbx=lbx, ubx=ubx,
                          lbg=lbg, ubg=ubg)
        solve_ms = (time.perf_counter() - start) * 1e3
        stats = self.solver.stats()
        x = np.asarray(sol["x"]).ravel()
        Z = x[: d * horizon].reshape((d, horizon), order="F")
        U = x[d * horizon: d * horizon + a * horizon].reshape((a, horizon), order="F")
        ok = bool(stats.get("success", False)) and np.all(np.isfinite(x))
        if ok:
            self._warm = (Z, U)
        else:
            self._warm = None
        return PlanResult(ok, U.T.copy(), Z.T.copy(), float(sol["f"]), solve_ms,
                          message=str(stats.get("return_status", "")),
                          stats={"iterations": float(stats.get("iter_count", -1))})


# -- compiled CasADi functions, cached on disk ------------------------------------------------

CACHE_DIR_ENV = "TWIN_CASADI_CACHE"
COMPILE_FLAGS = ("-O2", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120.0


def casadi_cache_dir() -> Path:
    """Where compiled planner code lives (`TWIN_CASADI_CACHE`, else the user's cache)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "plant-twin" / "casadi"


def find_compiler() -> str | None:
    """The C compiler to use (`CC`, else gcc, else cc), or None when there is none."""
    for candidate in (os.environ.get("CC"), "gcc", "cc"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def compiled_function(fn: ca.Function) -> tuple[ca.Function, bool]:
    """`fn` as compiled C, built once and cached on disk under the hash of its content (the
    weights are constants inside it, so a new model gets new code); `(fn, False)` when no
    compiler is present or compiling fails: CasADi's virtual machine gives the same numbers."""
    compiler = find_compiler()
    if compiler is None:
        return fn, False
    content = "\n".join([ca.__version__, " ".join(COMPILE_FLAGS), fn.serialize()])
    key = hashlib.sha256(content.encode()).hexdigest()[:32]
    library = casadi_cache_dir() / f"{fn.name()}_{key}.so"
    try:
        if not library.is_file():
            _compile(fn, compiler, library)
        return ca.external(fn.name(), str(library)), True
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return fn, False


def _compile(fn: ca.Function, compiler: str, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as build:
        source = f"{fn.name()}.c"
        generator = ca.CodeGenerator(source, {"with_header": False})
        generator.add(fn)
        generator.generate(build + os.sep)
        target = Path(build) / library.name
        subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(target), str(Path(build) / source)],
                       check=True, capture_output=True, timeout=COMPILE_TIMEOUT_S)
        os.replace(target, library)  # atomic: a concurrent builder never sees half a file


def _project_moves(u: np.ndarray, u_prev: np.ndarray, lim: Constraints) -> np.ndarray:
    """(H, A) actions moved, stage by stage, into the rate limits and then the bounds.

    With u_prev inside the bounds the result keeps both (the rate window around a point
    inside the bounds always meets them); it is the identity on a feasible sequence."""
    out, before = np.empty_like(u), u_prev
    for k in range(u.shape[0]):
        step = np.clip(u[k], before - lim.rate, before + lim.rate)
        out[k] = before = np.clip(step, lim.u_low, lim.u_high)
    return out


def _inputs_problem(problem: PlanningProblem, lim: Constraints, dims: tuple[int, int],
                    horizon: int | None = None) -> str | None:
    """Why a planning problem cannot be solved as posed, or None."""
    d, a = dims
    shapes = (np.shape(problem.z0), np.shape(problem.u_prev), np.shape(problem.z_goal))
    if shapes != ((d,), (a,), (d,)):
        return f"problem shapes {shapes}, expected {((d,), (a,), (d,))}"
    for label, value in (("z0", problem.z0), ("u_prev", problem.u_prev),
                         ("z_goal", problem.z_goal)):
        if not np.all(np.isfinite(value)):
            return f"{label} is not finite"
    if np.any(problem.u_prev < lim.u_low - lim.rate) or \
            np.any(problem.u_prev > lim.u_high + lim.rate):
        return "previous action is more than one rate step outside its bounds"
    if problem.limit_shift is not None:
        if np.shape(problem.limit_shift) != (len(lim.limit_rows),):
            return (f"limit_shift shape {np.shape(problem.limit_shift)}, expected "
                    f"{(len(lim.limit_rows),)}")
        if not np.all(np.isfinite(problem.limit_shift)):
            return "limit_shift is not finite"
    if problem.pinned is not None:
        return _pinned_problem(np.asarray(problem.pinned, dtype=float), problem.u_prev, lim,
                               horizon)
    return None


def _pinned_problem(pinned: np.ndarray, u_prev: np.ndarray, lim: Constraints,
                    horizon: int | None) -> str | None:
    """Why pinned moves cannot be planned around (shape, a half-pinned actuator, moves
    outside the bounds or rate limits), or None."""
    a = len(lim.u_low)
    if pinned.ndim != 2 or pinned.shape[1] != a or (horizon and pinned.shape[0] != horizon):
        return f"pinned shape {pinned.shape}, expected ({horizon or 'H'}, {a})"
    given = np.isfinite(pinned)
    if np.any(given.any(axis=0) != given.all(axis=0)):
        return "pinned: an actuator is pinned for some steps only"
    path = np.vstack([u_prev, np.where(given, pinned, 0.0)])
    tol = 1e-9
    outside = (pinned < lim.u_low - tol) | (pinned > lim.u_high + tol)
    too_fast = np.abs(np.diff(path, axis=0)) > lim.rate + tol
    if np.any(given & (outside | too_fast)):
        return "pinned moves break the actuator bounds or rate limits"
    return None


class CasadiLinearisation:
    """The same rollout and Jacobians as `NumpyLinearisation`, as CasADi functions (exact
    symbolic derivatives; optionally compiled with the system C compiler)."""

    def __init__(self, twin: Twin, horizon: int, limit_rows: list[int], compile: bool) -> None:
        self.d, self.a = twin.config.embed_dim, len(twin.layout.actions)
        z, u = ca.MX.sym("z", self.d), ca.MX.sym("u", self.a)
        step, step_jac = mlp_with_jacobian(twin.model.predictor.net, ca.vertcat(z, u))
        z_next = z + step
        stage = ca.Function("stage", [z, u], [z_next, ca.DM.eye(self.d) + step_jac[:, :self.d],
                                              step_jac[:, self.d:]])
        readout = twin.model.readout.net
        y, y_jac = mlp_with_jacobian(readout if isinstance(readout, torch.nn.Sequential)
                                     else torch.nn.Sequential(readout), z)
        rows = limit_rows
        y, y_jac = (y[rows], y_jac[rows, :]) if rows else (ca.MX(0, 1), ca.MX(0, self.d))
        self.n_lim = len(rows)
        sensor = ca.Function("sensor", [z], [y, y_jac]).map(horizon)
        z0, U = ca.MX.sym("z0", self.d), ca.MX.sym("U", self.a, horizon)
        Z, A, B = stage.mapaccum("rollout", horizon)(z0, U)
        Y, C = sensor(Z)
        linearise = ca.Function("latent_linearise", [z0, U], [Z, A, B, Y, C])
        Z_only = ca.Function("step", [z, u], [z_next]).mapaccum("simulate_z", horizon)(z0, U)
        simulate = ca.Function("latent_simulate", [z0, U], [Z_only, sensor(Z_only)[0]])
        self.compiled = False
        if compile:
            linearise, lin_compiled = compiled_function(linearise)
            simulate, sim_compiled = compiled_function(simulate)
            self.compiled = lin_compiled and sim_compiled
        self._linearise, self._simulate = linearise, simulate

    def simulate(self, z0: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        Z, Y = self._simulate(z0, U)
        return np.asarray(Z), np.asarray(Y)

    def linearise(self, z0: np.ndarray, U: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        Z, A, B, Y, C = (np.asarray(m) for m in self._linearise(z0, U))
        horizon, d = U.shape[1], self.d

        def stages(m: np.ndarray, cols: int) -> np.ndarray:  # (rows, H*cols) -> (H, rows, cols)
            return m.reshape(m.shape[0], horizon, cols).transpose(1, 0, 2)

        return Z, stages(A, d), stages(B, self.a), Y, stages(C, d)


RTI_QP_SOLVERS = ("daqp", "casadi-daqp", "qpoases", "highs", "proxqp", "osqp", "qrqp")


class RTIPlanner:
    """Gauss-Newton SQP, real-time iterations, single shooting condensed to a dense QP.

    Per iteration: the twin is rolled out along the current moves with each stage's
    Jacobians (`twin.latent_linearisation`: numpy by default, CasADi's own functions on
    request); numpy condenses them into dZ/dU (the embeddings are eliminated, so the QP has
    only the moves and the sensor slacks); a dense QP solver takes the Gauss-Newton step
    (the cost is a sum of squares plus a linear slack term, so its Gauss-Newton Hessian is
    exact but for the twin's curvature); a backtracking line search on the exact cost keeps
    the plan no worse than the warm start. The warm start is the previous plan shifted by
    one sample, projected onto the new rate window; the QP starts from the previous QP's
    active set, shifted by one sample the same way (`twin.dense_qp`).

    `sqp_iterations=1` is the acados-style real-time iteration; more iterations converge to
    the same local optimum as IPOPT. `qp_solver`: "daqp" (the DAQP package, warm-started;
    default) or a CasADi conic plugin ("casadi-daqp", "qpoases", ...). `linearisation`:
    "numpy" (default) or "casadi"; `compile=True` compiles the CasADi linearisation with the
    system C compiler (cached on disk per model), falling back to the CasADi VM.
    """

    name = "casadi"
    slack_regularisation = 1e-5  # keeps the QP strictly convex (and solvable) in the slacks
    # Levenberg-Marquardt damping of each step, |U - U_bar|^2: keeps the QP well conditioned
    # where the twin is flat in some move; it shortens steps but leaves the optimum alone
    step_damping = 1e-4
    line_search = (1.0, 0.5, 0.25, 0.1)

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None,
                 qp_solver: str = "daqp", sqp_iterations: int = 1,
                 step_tolerance: float = 1e-4, compile: bool = False,
                 linearisation: str | None = None) -> None:
        if qp_solver not in RTI_QP_SOLVERS:
            raise ValueError(f"unknown QP solver '{qp_solver}' "
                             f"(choose {', '.join(RTI_QP_SOLVERS)})")
        linearisation = linearisation or ("casadi" if compile else "numpy")
        if linearisation not in ("numpy", "casadi") or (compile and linearisation != "casadi"):
            raise ValueError("linearisation is 'numpy' or 'casadi' (compile=True: 'casadi')")
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self.qp_solver_name, self.sqp_iterations = qp_solver, sqp_iterations
        self.step_tolerance = step_tolerance
        self.d, self.a = twin.config.embed_dim, len(self.limits.u_low)
        self.n_lim = len(self.limits.limit_rows)
        rows = self.limits.limit_rows.tolist()
        if linearisation == "numpy":
            self._model: NumpyLinearisation | CasadiLinearisation = NumpyLinearisation(
                twin.model.predictor.net, twin.model.readout.net, self.d, rows)
        else:
            self._model = CasadiLinearisation(twin, self.settings.horizon, rows, compile)
        self.linearisation = linearisation
        self.compiled = getattr(self._model, "compiled", False)
        self._build_qp()
        self._warm: np.ndarray | None = None
        self._multipliers: np.ndarray | None = None  # the last QP's, to seed the next one

    # -- construction ------------------------------------------------------------------
    def _build_qp(self) -> None:
        """The QP's constant parts: bounds, rate rows, the move penalty M (cost |M U - c|^2),
        the solver, and where each constraint sits one sample later (for warm starts)."""
        s, lim, a, horizon = self.settings, self.limits, self.a, self.settings.horizon
        n_u, n_s = a * horizon, self.n_lim * horizon
        difference = np.eye(n_u) - np.eye(n_u, k=-a)  # U stage-major: rows u_k - u_{k-1}
        self._move = np.sqrt(s.move_weight) * difference / np.tile(lim.rate, horizon)[:, None]
        self._rate_rows = difference[a:]  # the first move is bounded through lbx/ubx
        high = np.isfinite(lim.y_high)
        low = np.isfinite(lim.y_low)
        self._high_rows = np.flatnonzero(np.tile(high, horizon))  # over (stage, sensor)
        self._low_rows = np.flatnonzero(np.tile(low, horizon))
        n_g = len(self._rate_rows) + len(self._high_rows) + len(self._low_rows)
        self._dims = (n_u, n_s, n_g)
        self._qp: QPSolver = DAQPSolver() if self.qp_solver_name == "daqp" else \
            CasadiQPSolver(self.qp_solver_name.removeprefix("casadi-"), n_u + n_s, n_g)
        self._next_stage = self._constraints_one_sample_later()

    def _constraints_one_sample_later(self) -> np.ndarray:
        """For each constraint (bounds on moves, on slacks, then the rows), the index of the
        same constraint one stage later, or -1 at the horizon's end: the previous plan's
        multipliers, shifted like its moves, seed the next plan's QP."""
        a, n = self.a, self.n_lim
        n_u, n_s, _ = self._dims

        def along(count: int, width: int, offset: int) -> np.ndarray:
            index = np.arange(count)
            return np.where(index + width < count, offset + index + width, -1)

        def sensor_rows(rows: np.ndarray, offset: int) -> np.ndarray:
            later = {flat: offset + i for i, flat in enumerate(rows)}
            return np.array([later.get(flat + n, -1) for flat in rows], dtype=int)

        n_rate = len(self._rate_rows)
        high_at = n_u + n_s + n_rate
        return np.concatenate([along(n_u, a, 0), along(n_s, n, n_u),
                               along(n_rate, a, n_u + n_s),
                               sensor_rows(self._high_rows, high_at),
                               sensor_rows(self._low_rows, high_at + len(self._high_rows))]
                              ).astype(int)

    def reset(self) -> None:
        self._warm = None
        self._multipliers = None

    # -- one plan ----------------------------------------------------------------------
    def plan(self, problem: PlanningProblem) -> PlanResult:
        start = time.perf_counter()
        why = _inputs_problem(problem, self.limits, (self.d, self.a), self.settings.horizon)
        if why is not None:
            self.reset()
            return self._failed(problem, start, why)
        U = self._initial_moves(problem)
        Z, Y = self._rollout(problem.z0, U)
        cost = self._cost(U, Z, Y, problem)
        iterations, qp_iterations, message = 0, 0, "converged"
        seed = self._shifted_multipliers() if self._warm is not None else None
        for iteration in range(1, self.sqp_iterations + 1):
            iterations = iteration
            solution = self._qp_step(problem, U, seed)
            if solution is None:
                self.reset()
                return self._failed(problem, start, f"QP solver {self.qp_solver_name} failed")
            step, seed = solution.x, solution.multipliers
            qp_iterations += solution.iterations
            U, Z, Y, cost, moved = self._line_search(problem, U, step, cost, Z, Y)
            if moved < self.step_tolerance:
                break
            if (time.perf_counter() - start) * 1e3 > 0.5 * self.settings.deadline_ms:
                message = "stopped early for the deadline"
                break
        else:
            message = f"{self.sqp_iterations} iterations"
        ok = bool(np.isfinite(cost) and np.all(np.isfinite(U)) and np.all(np.isfinite(Z)))
        self._warm = U if ok else None
        self._multipliers = seed if ok else None
        solve_ms = (time.perf_counter() - start) * 1e3
        return PlanResult(ok, U.copy(), Z.T.copy(), float(cost), solve_ms,
                          message=f"rti/{self.qp_solver_name}: {message}",
                          stats={"iterations": float(iterations),
                                 "qp_iterations": float(qp_iterations)})

    def _shifted_multipliers(self) -> np.ndarray | None:
        if self._multipliers is None or len(self._multipliers) != len(self._next_stage):
            return None
        later = self._next_stage
        return np.where(later >= 0, self._multipliers[np.maximum(later, 0)], 0.0)

    def _failed(self, problem: PlanningProblem, start: float, why: str) -> PlanResult:
        """ok=False with a plan that still keeps the bounds: hold, clipped (mid-range if the
        previous action is unusable)."""
        lim, horizon = self.limits, self.settings.horizon
        u_prev = np.broadcast_to(np.asarray(problem.u_prev, dtype=float).ravel()[: self.a],
                                 (self.a,)) if np.size(problem.u_prev) else np.zeros(self.a)
        hold = np.where(np.isfinite(u_prev), u_prev, (lim.u_low + lim.u_high) / 2)
        actions = np.tile(np.clip(hold, lim.u_low, lim.u_high), (horizon, 1))
        return PlanResult(False, actions, np.full((horizon, self.d), np.nan), float("nan"),
                          (time.perf_counter() - start) * 1e3, message=f"rti: {why}")

    def _initial_moves(self, problem: PlanningProblem) -> np.ndarray:
        if self._warm is not None:
            guess = np.vstack([self._warm[1:], self._warm[-1:]])
        else:
            guess = np.tile(problem.u_prev, (self.settings.horizon, 1))
        # u_prev is at most one rate step outside the bounds here, so this meets both (and
        # pinned columns are feasible on their own: rate limits are per actuator)
        return problem.with_pinned(_project_moves(guess, problem.u_prev, self.limits))

    def _rollout(self, z0: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._model.simulate(np.asarray(z0, dtype=float), np.ascontiguousarray(U.T))

    def _cost(self, U: np.ndarray, Z: np.ndarray, Y: np.ndarray,
              problem: PlanningProblem) -> float:
        """The exact objective with each slack at its optimum (the violation)."""
        s, lim = self.settings, self.limits
        moves = np.diff(np.vstack([problem.u_prev, U]), axis=0) / lim.rate
        cost = float((problem.weighted(Z - problem.z_goal[:, None]) ** 2).sum())
        cost += s.move_weight * float((moves**2).sum())
        if self.n_lim:
            low, high = problem.sensor_bounds(lim)
            over = np.maximum(Y - high[:, None], low[:, None] - Y)
            cost += s.slack_weight * float(np.maximum(over, 0.0).sum())
        return cost

    def _qp_step(self, problem: PlanningProblem, U: np.ndarray,
                 seed: np.ndarray | None = None) -> QPSolution | None:
        """The Gauss-Newton QP around U; its x is the QP's moves (H, A), or None on failure.
        `seed`: multipliers of a nearby QP, to start the solver's active set from."""
        lim, s, horizon, a = self.limits, self.settings, self.settings.horizon, self.a
        n_u, n_s, _ = self._dims
        Z, A, B, Y, C = self._model.linearise(np.asarray(problem.z0, dtype=float),
                                              np.ascontiguousarray(U.T))
        G = self._condense(A, B)  # (D*H, n_u): d vec(Z) / d vec(U), stage-major
        u_bar = U.ravel()
        residual = Z.ravel(order="F") - np.tile(problem.z_goal, horizon) - G @ u_bar
        G_cost = G
        if problem.metric is not None:  # W on every stage's block of D rows
            w = np.asarray(problem.metric, dtype=float)
            residual = (residual.reshape(horizon, self.d) @ w.T).ravel()
            G_cost = np.einsum("ij,hjn->hin", w, G.reshape(horizon, self.d, n_u)
                               ).reshape(horizon * self.d, n_u)
        c = np.zeros(n_u)
        c[:a] = np.sqrt(s.move_weight) * problem.u_prev / lim.rate
        hess = np.zeros((n_u + n_s, n_u + n_s))
        hess[:n_u, :n_u] = 2.0 * (G_cost.T @ G_cost + self._move.T @ self._move
                                  + self.step_damping * np.eye(n_u))
        hess[n_u:, n_u:] = 2.0 * self.slack_regularisation * np.eye(n_s)
        grad = np.concatenate([2.0 * (G_cost.T @ residual - self._move.T @ c
                                      - self.step_damping * u_bar),
                               np.full(n_s, s.slack_weight)])
        lbx = np.concatenate([np.tile(lim.u_low, horizon), np.zeros(n_s)])
        ubx = np.concatenate([np.tile(lim.u_high, horizon), np.full(n_s, np.inf)])
        lbx[:a] = np.maximum(lbx[:a], problem.u_prev - lim.rate)
        ubx[:a] = np.minimum(ubx[:a], problem.u_prev + lim.rate)
        if problem.pinned is not None:  # U stage-major, as the pinned moves ravel
            given = np.flatnonzero(np.isfinite(problem.pinned).ravel())
            lbx[given] = ubx[given] = np.asarray(problem.pinned).ravel()[given]
        if np.any(lbx > ubx):
            return None
        rows, lba, uba = self._constraint_rows(G, Y, C, u_bar, problem)
        solution = self._qp.solve(hess, grad, rows, lba, uba, lbx, ubx, start=seed,
                                  x0=np.concatenate([u_bar, np.zeros(n_s)]))
        if solution is None or not np.all(np.isfinite(solution.x)):
            return None
        # clip the solver's round-off: the line search then mixes feasible points only
        moves = problem.with_pinned(_project_moves(solution.x[:n_u].reshape(horizon, a),
                                                   problem.u_prev, lim))
        return QPSolution(moves, solution.multipliers, solution.iterations)

    def _condense(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """A (H, D, D), B (H, D, Act) -> (D*H, Act*H), the stages' sensitivities to U."""
        d, a, horizon = self.d, self.a, self.settings.horizon
        G = np.zeros((d * horizon, a * horizon))
        block = np.zeros((d, a * horizon))
        for k in range(horizon):
            block = A[k] @ block
            block[:, k * a:(k + 1) * a] = B[k]
            G[k * d:(k + 1) * d] = block
        return G

    def _constraint_rows(self, G: np.ndarray, Y: np.ndarray, C: np.ndarray, u_bar: np.ndarray,
                         problem: PlanningProblem
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rate rows on U, then linearised sensor rows with their slacks: y - s <= high,
        y + s >= low (one slack per sensor and stage serves both sides)."""
        lim, horizon, d, n = self.limits, self.settings.horizon, self.d, self.n_lim
        n_u, n_s, n_g = self._dims
        rows = np.zeros((n_g, n_u + n_s))
        n_rate = len(self._rate_rows)
        rows[:n_rate, :n_u] = self._rate_rows
        rate = np.tile(lim.rate, horizon)[self._rate_rows.argmax(axis=1)] if n_rate else []
        lba, uba = [-np.asarray(rate)], [np.asarray(rate)]
        if n:
            sens = np.einsum("hld,hdn->hln", C, G.reshape(horizon, d, n_u)
                             ).reshape(horizon * n, n_u)  # (H*n, n_u)
            offset = Y.ravel(order="F") - sens @ u_bar
            low, high = problem.sensor_bounds(lim)
            y_high, y_low = np.tile(high, horizon), np.tile(low, horizon)
            at = n_rate
            for side, idx in ((1.0, self._high_rows), (-1.0, self._low_rows)):
                rows[at:at + len(idx), :n_u] = sens[idx]
                rows[at + np.arange(len(idx)), n_u + idx] = -side
                bound = (y_high if side > 0 else y_low)[idx] - offset[idx]
                lba.append(np.full(len(idx), -np.inf) if side > 0 else bound)
                uba.append(bound if side > 0 else np.full(len(idx), np.inf))
                at += len(idx)
        return rows, np.concatenate(lba), np.concatenate(uba)

    def _line_search(self, problem: PlanningProblem, U: np.ndarray, target: np.ndarray,
                     cost: float, Z: np.ndarray, Y: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
        """Backtrack from the full step; every trial mixes two feasible plans, so it is
        feasible. Returns the accepted plan and the largest move it made (0: none)."""
        step = target - U
        for alpha in self.line_search:
            trial = U + alpha * step
            Z_t, Y_t = self._rollout(problem.z0, trial)
            trial_cost = self._cost(trial, Z_t, Y_t, problem)
            if trial_cost < cost:
                return trial, Z_t, Y_t, trial_cost, float(np.abs(alpha * step).max())
        return U, Z, Y, cost, 0.0


class StructuredNLPPlanner:
    """The multiple-shooting NLP laid out the way fatrop detects an optimal-control problem.

    Stage k has the state x_k = [z_k; u_{k-1}] (the previous input rides along, so the rate
    limit is a stage constraint) and the controls [u_k; s_k]; x_0 is fixed by its bounds;
    each stage's constraints open with its dynamics x_{k+1} = F(x_k, u_k); costs and
    constraints of a stage involve that stage's variables only. Solved by fatrop
    (structure detection) or IPOPT. `compile=True` compiles the NLP's functions with CasADi's
    jit at construction (tens of seconds per model, and no faster than the virtual machine
    for these dense MX graphs: see `benchmarks/planning_speed.py`).
    """

    name = "casadi-fatrop"

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None,
                 solver: str = "fatrop", compile: bool = False) -> None:
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self.solver_name = solver
        self.compile = compile and find_compiler() is not None
        self.d, self.a = twin.config.embed_dim, len(self.limits.u_low)
        self.n_lim = len(self.limits.limit_rows)
        self._build()
        self._warm: np.ndarray | None = None

    def _build(self) -> None:
        s, lim, d, a, n = self.settings, self.limits, self.d, self.a, self.n_lim
        f, h = casadi_dynamics(self.twin, ca.MX)
        horizon, nx, nu = s.horizon, d + a, a + n
        z_goal, metric = ca.MX.sym("z_goal", d), ca.MX.sym("metric", d, d)
        X = [ca.MX.sym(f"x{k}", nx) for k in range(horizon + 1)]
        W = [ca.MX.sym(f"w{k}", nu) for k in range(horizon)]
        g, lbg, ubg, cost = [], [], [], 0
        self._sensor_rows = rows = SensorRows()
        rate = ca.DM(lim.rate)
        for k in range(horizon):
            z, before, u, slack = X[k][:d], X[k][d:], W[k][:a], W[k][a:]
            z_next = f(z, u)
            g.append(X[k + 1] - ca.vertcat(z_next, u))  # dynamics first: fatrop's structure
            lbg += [0.0] * nx
            ubg += [0.0] * nx
            g.append(u - before)
            lbg += list(-lim.rate)
            ubg += list(lim.rate)
            if n:
                # on f(z_k, u_k), not z_{k+1}: a stage's constraints see only its own stage
                y = h(z_next)[lim.limit_rows.tolist()]
                for j in range(n):
                    if np.isfinite(lim.y_high[j]):
                        g.append(y[j] - slack[j])
                        lbg.append(-np.inf)
                        ubg.append(float(lim.y_high[j]))
                        rows.add(len(ubg) - 1, j, True)
                    if np.isfinite(lim.y_low[j]):
                        g.append(y[j] + slack[j])
                        lbg.append(float(lim.y_low[j]))
                        ubg.append(np.inf)
                        rows.add(len(lbg) - 1, j, False)
            if k:
                cost += ca.sumsqr(metric @ (z - z_goal))
            cost += s.move_weight * ca.sumsqr((u - before) / rate)
            cost += s.slack_weight * ca.sum1(slack)
        cost += ca.sumsqr(metric @ (X[horizon][:d] - z_goal))
        variables = []
        for k in range(horizon):
            variables += [X[k], W[k]]
        variables.append(X[horizon])
        nlp = {"x": ca.vertcat(*variables), "p": ca.vertcat(z_goal, ca.vec(metric)), "f": cost,
               "g": ca.vertcat(*g)}
        options: dict = {"print_time": False, "error_on_fail": False}
        if self.compile:
            options.update({"jit": True, "compiler": "shell",
                            "jit_options": {"flags": ["-O1"], "verbose": False}})
        if self.solver_name == "fatrop":
            options.update({"structure_detection": "auto", "expand": False,
                            "equality": [lo == hi for lo, hi in zip(lbg, ubg, strict=True)],
                            "fatrop": {"print_level": 0, "max_iter": s.max_iterations,
                                       "tol": 1e-6}})
        else:
            options.update({"ipopt": {"print_level": 0, "sb": "yes",
                                      "max_iter": s.max_iterations, "tol": 1e-6,
                                      "max_cpu_time": s.deadline_ms / 1e3,
                                      "acceptable_tol": 1e-4, "mu_strategy": "adaptive"}})
        here = os.getcwd()
        with tempfile.TemporaryDirectory() as scratch:
            os.chdir(scratch)  # CasADi's jit writes its sources to the working directory
            try:
                self.solver = ca.nlpsol("latent_ocp", self.solver_name, nlp, options)
            finally:
                os.chdir(here)
        self.lbg, self.ubg = np.array(lbg), np.array(ubg)
        self._layout = (nx, nu, horizon)
        self._f = f

    def reset(self) -> None:
        self._warm = None

    def _bounds(self, problem: PlanningProblem) -> tuple[np.ndarray, np.ndarray]:
        lim, (nx, _, horizon) = self.limits, self._layout
        x0 = np.concatenate([problem.z0, problem.u_prev])
        free_x = np.full(nx, np.inf)
        u_low = problem.with_pinned(np.tile(lim.u_low, (horizon, 1)))
        u_high = problem.with_pinned(np.tile(lim.u_high, (horizon, 1)))
        slack_low, slack_high = np.zeros(self.n_lim), np.full(self.n_lim, np.inf)
        low, high = [x0], [x0]
        for k in range(horizon):
            low += [np.concatenate([u_low[k], slack_low]), -free_x]
            high += [np.concatenate([u_high[k], slack_high]), free_x]
        return np.concatenate(low), np.concatenate(high)

    def _guess(self, problem: PlanningProblem) -> np.ndarray:
        horizon = self.settings.horizon
        if self._warm is not None:
            U = np.vstack([self._warm[1:], self._warm[-1:]])
        else:
            U = np.tile(problem.u_prev, (horizon, 1))
        U = problem.with_pinned(_project_moves(
            U, np.clip(problem.u_prev, self.limits.u_low, self.limits.u_high), self.limits))
        parts, z, before = [], problem.z0, problem.u_prev
        parts.append(np.concatenate([z, before]))
        for k in range(horizon):
            parts.append(np.concatenate([U[k], np.zeros(self.n_lim)]))
            z = np.asarray(self._f(z, U[k])).ravel()
            parts.append(np.concatenate([z, U[k]]))
        return np.concatenate(parts)

    def plan(self, problem: PlanningProblem) -> PlanResult:
        nx, nu, horizon = self._layout
        start = time.perf_counter()
        why = _inputs_problem(problem, self.limits, (self.d, self.a), horizon)
        if why is not None:
            self._warm = None
            hold = np.clip(np.nan_to_num(np.asarray(problem.u_prev, dtype=float)),
                           self.limits.u_low, self.limits.u_high)
            return PlanResult(False, np.tile(hold, (horizon, 1)),
                              np.full((horizon, self.d), np.nan), float("nan"),
                              (time.perf_counter() - start) * 1e3, message=why)
        lbx, ubx = self._bounds(problem)
        p = np.concatenate([problem.z_goal, problem.metric_or_identity().ravel(order="F")])
        lbg, ubg = self._sensor_rows.bounds(self.lbg, self.ubg, problem)
        sol = self.solver(x0=self._guess(problem), p=p, lbx=lbx, ubx=ubx, lbg=lbg, ubg=ubg)
        solve_ms = (time.perf_counter() - start) * 1e3
        stats = self.solver.stats()
        x = np.asarray(sol["x"]).ravel()
        stride = nx + nu
        U = np.array([x[k * stride + nx: k * stride + nx + self.a] for k in range(horizon)])
        Z = np.array([x[(k + 1) * stride: (k + 1) * stride + self.d] for k in range(horizon)])
        ok = bool(stats.get("success", False)) and bool(np.all(np.isfinite(x)))
        U = np.clip(U, self.limits.u_low, self.limits.u_high)
        self._warm = U if ok else None
        return PlanResult(ok, U, Z, float(sol["f"]), solve_ms,
                          message=f"{self.solver_name}: {stats.get('return_status', '')}",
                          stats={"iterations": float(stats.get("iter_count", -1))})


class SamplingPlanner:
    """What CEM and MPPI share: the batched cost (the same objective as the CasADi planners,
    sensor limits through the slack penalty) and the projection that makes every sampled
    sequence keep the bounds and rate limits."""

    name = "sampling"

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None,
                 samples: int = 256, iterations: int = 6, seed: int = 0) -> None:
        self.twin, self.settings = twin, settings or PlannerSettings.for_twin(twin)
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self.samples, self.iterations = samples, iterations
        self.generator = torch.Generator().manual_seed(seed)
        self._mean: torch.Tensor | None = None
        self._metric: torch.Tensor | None = None  # the current problem's, from `_start`
        self._bounds = (self.limits.y_low, self.limits.y_high)  # likewise
        self._pinned: torch.Tensor | None = None  # likewise, NaN where free

    def reset(self) -> None:
        self._mean = None

    def _start(self, problem: PlanningProblem
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """z0 (1, D), z_goal (D,), u_prev (1, A) as tensors and the warm-started mean (H, A)."""
        horizon, a = self.settings.horizon, len(self.limits.u_low)
        z0 = torch.as_tensor(problem.z0, dtype=torch.float32).unsqueeze(0)
        z_goal = torch.as_tensor(problem.z_goal, dtype=torch.float32)
        u_prev = torch.as_tensor(problem.u_prev, dtype=torch.float32).unsqueeze(0)
        self._metric = None if problem.metric is None else \
            torch.as_tensor(problem.metric, dtype=torch.float32)
        self._bounds = problem.sensor_bounds(self.limits)
        self._pinned = None
        if problem.pinned is not None:
            why = _pinned_problem(np.asarray(problem.pinned, dtype=float), problem.u_prev,
                                  self.limits, horizon)
            if why is not None:
                raise ValueError(why)
            self._pinned = torch.as_tensor(problem.pinned, dtype=torch.float32)
        if self._mean is None:
            mean = u_prev.expand(horizon, a).clone()
        else:
            mean = torch.cat([self._mean[1:], self._mean[-1:]])
        return z0, z_goal, u_prev, mean

    def _project(self, u: torch.Tensor, u_prev: torch.Tensor) -> torch.Tensor:
        lim = self.limits
        rate = torch.as_tensor(lim.rate, dtype=torch.float32)
        lo = torch.as_tensor(lim.u_low, dtype=torch.float32)
        hi = torch.as_tensor(lim.u_high, dtype=torch.float32)
        out, before = [], u_prev.expand(u.shape[0], -1)
        for k in range(u.shape[1]):
            step = torch.clamp(u[:, k], before - rate, before + rate)
            step = torch.clamp(step, lo, hi)
            out.append(step)
            before = step
        projected = torch.stack(out, dim=1)
        if self._pinned is None:  # pinned columns keep the bounds and rates on their own
            return projected
        return torch.where(torch.isfinite(self._pinned), self._pinned, projected)

    @torch.no_grad()
    def _score(self, u: torch.Tensor, z0: torch.Tensor, u_prev: torch.Tensor,
               z_goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, lim = self.settings, self.limits
        z = self.twin.model.predictor.rollout(z0.expand(u.shape[0], -1), u)
        cost = weighted_distance(z, z_goal, self._metric).sum(dim=1)
        du = torch.diff(torch.cat([u_prev.expand(u.shape[0], 1, -1), u], dim=1), dim=1)
        cost += s.move_weight * ((du / torch.as_tensor(lim.rate, dtype=torch.float32)) ** 2
                                 ).sum(dim=(1, 2))
        if len(lim.limit_rows):
            y = self.twin.model.readout(z)[..., lim.limit_rows.tolist()]
            low, high = self._bounds
            over = torch.relu(y - torch.as_tensor(high, dtype=torch.float32))
            under = torch.relu(torch.as_tensor(low, dtype=torch.float32) - y)
            cost += s.slack_weight * (over + under).sum(dim=(1, 2))
        return cost, z


class CEMPlanner(SamplingPlanner):
    """Cross-entropy method over action sequences, batched in torch.

    Samples are projected onto the bounds and rate limits before scoring, so every
    candidate is feasible for the actuators; sensor limits enter as a heavy penalty.
    """

    name = "cem"

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None,
                 samples: int = 256, elites: int = 24, iterations: int = 6,
                 seed: int = 0) -> None:
        super().__init__(twin, settings, samples, iterations, seed)
        self.elites = elites

    def plan(self, problem: PlanningProblem) -> PlanResult:
        start = time.perf_counter()
        horizon, a = self.settings.horizon, len(self.limits.u_low)
        z0, z_goal, u_prev, mean = self._start(problem)
        std = torch.as_tensor(self.limits.rate * 3.0, dtype=torch.float32).expand(horizon, a)
        best_u, best_cost, best_z = mean, float("inf"), None
        for _ in range(self.iterations):
            noise = torch.randn(self.samples, horizon, a, generator=self.generator)
            u = self._project(mean + std * noise, u_prev)
            u[0] = self._project(mean.unsqueeze(0), u_prev)[0]  # keep the current mean
            cost, z = self._score(u, z0, u_prev, z_goal)
            order = torch.argsort(cost)[: self.elites]
            if float(cost[order[0]]) < best_cost:
                best_cost, best_u, best_z = float(cost[order[0]]), u[order[0]], z[order[0]]
            elite = u[order]
            mean, std = elite.mean(dim=0), elite.std(dim=0).clamp_min(1e-3)
        solve_ms = (time.perf_counter() - start) * 1e3
        if best_z is None:  # every candidate scored NaN or inf: nothing to trust
            self._mean = None
            return PlanResult(False, mean.numpy().astype(float),
                              np.full((horizon, len(problem.z0)), np.nan), float("nan"),
                              solve_ms, message="cem: no finite cost")
        self._mean = best_u
        return PlanResult(True, best_u.numpy().astype(float), best_z.numpy().astype(float),
                          best_cost, solve_ms, message="cem")


class MPPIPlanner(SamplingPlanner):
    """Model-predictive path integral control, batched in torch (the PLDM / TD-MPC2 planner).

    Each iteration perturbs the mean sequence with Gaussian noise (a multiple of the rate
    limit), projects the samples onto bounds and rate limits, and moves the mean to the
    samples' average weighted by exp(-cost / temperature). The temperature is relative to
    the spread of this batch's costs, so the same setting works whatever the cost's scale.
    A weighted average of feasible sequences is feasible (the set is convex), so the mean
    keeps bounds and rate limits too. Returns the better of the final mean and the best
    sample seen.
    """

    name = "mppi"

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None,
                 samples: int = 256, iterations: int = 4, temperature: float = 0.1,
                 noise_rate_multiple: float = 2.0, seed: int = 0) -> None:
        super().__init__(twin, settings, samples, iterations, seed)
        self.temperature, self.noise_rate_multiple = temperature, noise_rate_multiple

    def plan(self, problem: PlanningProblem) -> PlanResult:
        start = time.perf_counter()
        horizon, a = self.settings.horizon, len(self.limits.u_low)
        z0, z_goal, u_prev, mean = self._start(problem)
        std = torch.as_tensor(self.limits.rate * self.noise_rate_multiple,
                              dtype=torch.float32).expand(horizon, a)
        best: tuple[float, torch.Tensor, torch.Tensor] | None = None
        for _ in range(self.iterations):
            noise = torch.randn(self.samples, horizon, a, generator=self.generator)
            u = self._project(mean + std * noise, u_prev)
            u[0] = self._project(mean.unsqueeze(0), u_prev)[0]  # keep the current mean
            cost, z = self._score(u, z0, u_prev, z_goal)
            finite = torch.isfinite(cost)
            if not bool(finite.any()):
                break
            cost = torch.where(finite, cost, torch.full_like(cost, float("inf")))
            lowest = int(torch.argmin(cost))
            if best is None or float(cost[lowest]) < best[0]:
                best = (float(cost[lowest]), u[lowest], z[lowest])
            excess = cost - cost[lowest]
            scale = torch.quantile(excess[finite], 0.5).clamp_min(1e-9) * self.temperature
            weights = torch.softmax(-excess / scale, dim=0)
            mean = (weights[:, None, None] * u).sum(dim=0)
        if best is not None:
            final = self._project(mean.unsqueeze(0), u_prev)
            cost, z = self._score(final, z0, u_prev, z_goal)
            if bool(torch.isfinite(cost[0])) and float(cost[0]) <= best[0]:
                best = (float(cost[0]), final[0], z[0])
        solve_ms = (time.perf_counter() - start) * 1e3
        if best is None:
            self._mean = None
            hold = self._project(u_prev.expand(horizon, a).unsqueeze(0), u_prev)[0]
            return PlanResult(False, hold.numpy().astype(float),
                              np.full((horizon, len(problem.z0)), np.nan), float("nan"),
                              solve_ms, message="mppi: no finite cost")
        self._mean = best[1]
        return PlanResult(True, best[1].numpy().astype(float), best[2].numpy().astype(float),
                          best[0], solve_ms, message="mppi")




def make_planner(name: str, twin: Twin, settings: PlannerSettings | None = None) -> Planner:
    """A planner by name (see the module's docstring for what each one is)."""
    from .hierarchy import HierarchicalPlanner  # builds on this module: imported late
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
