"""Planning in embedding space: a CasADi NLP (the controller) and CEM (the classic JEPA planner).

Both solve the same problem, in normalised units, behind one interface:

    minimise   sum_k |z_k - z_goal|^2 + move_weight * sum_k (du_k / rate)^2 + slack_weight * s
    subject to z_{k+1} = predictor(z_k, u_k)              (the twin's dynamics)
               u_low <= u_k <= u_high                      (hard actuator bounds)
               |u_k - u_{k-1}| <= rate                     (hard rate limits, u_{-1} = applied)
               readout(z_k) <= sensor_high - margin + s_k  (sensor limits, penalised slack)
               readout(z_k) >= sensor_low + margin - s_k

Costs live in `PlanningProblem`; solvers only see arrays. A planner never applies anything:
its output always passes through `twin.safety.SafetyLayer`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import casadi as ca
import numpy as np
import torch

from .twin_model import Twin


@dataclass(frozen=True)
class PlannerSettings:
    horizon: int = 20
    move_weight: float = 0.5
    slack_weight: float = 1e4
    limit_margin: float = 0.25  # back-off from sensor limits, normalised units (model error)
    deadline_ms: float = 1000.0
    max_iterations: int = 60


@dataclass
class PlanningProblem:
    """One instance: where we are, what we applied last, where we want to go."""

    z0: np.ndarray  # (D,)
    u_prev: np.ndarray  # (A,) normalised, last applied
    z_goal: np.ndarray  # (D,)


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


def torch_mlp_to_casadi(module: torch.nn.Sequential, x: ca.SX) -> ca.SX:
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


def casadi_dynamics(twin: Twin) -> tuple[ca.Function, ca.Function]:
    """(z, u) -> z_next and z -> readout, as CasADi functions equal to the torch modules."""
    d, a = twin.config.embed_dim, len(twin.layout.actions)
    z, u = ca.SX.sym("z", d), ca.SX.sym("u", a)
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

    name = "casadi"

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None) -> None:
        self.twin, self.settings = twin, settings or PlannerSettings()
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
        g, lbg, ubg, cost = [], [], [], 0
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
                    if np.isfinite(lim.y_low[j]):
                        g.append(y[j] + S[j, k])
                        lbg.append(float(lim.y_low[j]))
                        ubg.append(np.inf)
            cost += ca.sumsqr(Z[:, k] - z_goal)
            cost += s.move_weight * ca.sumsqr((U[:, k] - u_before) / ca.DM(lim.rate))
            cost += s.slack_weight * ca.sum1(S[:, k])
            z_k, u_before = Z[:, k], U[:, k]
        x = ca.vertcat(ca.vec(Z), ca.vec(U), ca.vec(S))
        nlp = {"x": x, "p": ca.vertcat(z0, u_prev, z_goal), "f": cost, "g": ca.vertcat(*g)}
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
        return np.concatenate([Z.ravel(order="F"), U.ravel(order="F"), np.zeros(n_s)])

    def reset(self) -> None:
        self._warm = None

    def plan(self, problem: PlanningProblem) -> PlanResult:
        d, a, n_s, horizon = self._dims
        p = np.concatenate([problem.z0, problem.u_prev, problem.z_goal])
        start = time.perf_counter()
        sol = self.solver(x0=self._initial_guess(problem), p=p, lbx=self.lbx, ubx=self.ubx,
                          lbg=self.lbg, ubg=self.ubg)
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


class CEMPlanner:
    """Cross-entropy method over action sequences, batched in torch.

    Samples are projected onto the bounds and rate limits before scoring, so every
    candidate is feasible for the actuators; sensor limits enter as a heavy penalty.
    """

    name = "cem"

    def __init__(self, twin: Twin, settings: PlannerSettings | None = None,
                 samples: int = 256, elites: int = 24, iterations: int = 6,
                 seed: int = 0) -> None:
        self.twin, self.settings = twin, settings or PlannerSettings()
        self.limits = Constraints.from_twin(twin, self.settings.limit_margin)
        self.samples, self.elites, self.iterations = samples, elites, iterations
        self.generator = torch.Generator().manual_seed(seed)
        self._mean: torch.Tensor | None = None

    def reset(self) -> None:
        self._mean = None

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
        return torch.stack(out, dim=1)

    @torch.no_grad()
    def _score(self, u: torch.Tensor, z0: torch.Tensor, u_prev: torch.Tensor,
               z_goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, lim = self.settings, self.limits
        z = self.twin.model.predictor.rollout(z0.expand(u.shape[0], -1), u)
        cost = ((z - z_goal) ** 2).sum(dim=(1, 2))
        du = torch.diff(torch.cat([u_prev.expand(u.shape[0], 1, -1), u], dim=1), dim=1)
        cost += s.move_weight * ((du / torch.as_tensor(lim.rate, dtype=torch.float32)) ** 2
                                 ).sum(dim=(1, 2))
        if len(lim.limit_rows):
            y = self.twin.model.readout(z)[..., lim.limit_rows.tolist()]
            over = torch.relu(y - torch.as_tensor(lim.y_high, dtype=torch.float32))
            under = torch.relu(torch.as_tensor(lim.y_low, dtype=torch.float32) - y)
            cost += s.slack_weight * (over + under).sum(dim=(1, 2))
        return cost, z

    def plan(self, problem: PlanningProblem) -> PlanResult:
        start = time.perf_counter()
        horizon, a = self.settings.horizon, len(self.limits.u_low)
        z0 = torch.as_tensor(problem.z0, dtype=torch.float32).unsqueeze(0)
        z_goal = torch.as_tensor(problem.z_goal, dtype=torch.float32)
        u_prev = torch.as_tensor(problem.u_prev, dtype=torch.float32).unsqueeze(0)
        if self._mean is None:
            mean = u_prev.expand(horizon, a).clone()
        else:
            mean = torch.cat([self._mean[1:], self._mean[-1:]])
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


def make_planner(name: str, twin: Twin, settings: PlannerSettings | None = None) -> Planner:
    if name == "casadi":
        return CasadiPlanner(twin, settings)
    if name == "cem":
        return CEMPlanner(twin, settings)
    raise ValueError(f"unknown planner '{name}' (choose casadi or cem)")
