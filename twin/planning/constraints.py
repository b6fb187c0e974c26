"""The constraint rows every planner keeps, defined once.

- `Constraints`: actuator bounds, rate limits and sensor limits in the twin's normalised
  units, read from the process spec.
- `project_moves` (numpy) and `project_moves_torch` (batched): a move sequence moved stage by
  stage into the rate limits and then the bounds, the one projection every planner uses.
- `add_sensor_limit_rows` and `SensorRows`: the sensor-limit rows of a CasADi NLP,
  `readout - slack <= high` and `readout + slack >= low` (one slack per limited sensor and
  stage serves both sides), and where they sit so a problem's limit shift moves their
  bounds at solve time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import casadi as ca
import numpy as np
import torch

from ..twin_model import Twin


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
            y_lo.append(
                -np.inf
                if tag.low is None
                else twin.normalise_sensor(name, tag.low) + margin_fraction
            )
            y_hi.append(
                np.inf
                if tag.high is None
                else twin.normalise_sensor(name, tag.high) - margin_fraction
            )
        return cls(lo, hi, rate, np.array(rows, dtype=int), np.array(y_lo), np.array(y_hi))


# -- move projection: numpy and torch, the same definition -----------------------------------


def project_moves(u: np.ndarray, u_prev: np.ndarray, lim: Constraints) -> np.ndarray:
    """(H, A) actions moved, stage by stage, into the rate limits and then the bounds.

    With u_prev inside the bounds the result keeps both (the rate window around a point
    inside the bounds always meets them); it is the identity on a feasible sequence."""
    out, before = np.empty_like(u), u_prev
    for k in range(u.shape[0]):
        step = np.clip(u[k], before - lim.rate, before + lim.rate)
        out[k] = before = np.clip(step, lim.u_low, lim.u_high)
    return out


@dataclass(frozen=True)
class TorchLimits:
    """`Constraints`' actuator bounds and rates as float32 tensors, made once per planner."""

    u_low: torch.Tensor
    u_high: torch.Tensor
    rate: torch.Tensor

    @classmethod
    def of(cls, lim: Constraints) -> TorchLimits:
        return cls(
            *(torch.as_tensor(v, dtype=torch.float32) for v in (lim.u_low, lim.u_high, lim.rate))
        )


def project_moves_torch(
    u: torch.Tensor, u_prev: torch.Tensor, lim: TorchLimits, pinned: torch.Tensor | None = None
) -> torch.Tensor:
    """`project_moves` for a batch (S, H, A) from u_prev (1, A) or (S, A); pinned moves
    (H, A, NaN where free) replace their columns afterwards (they keep the bounds and rates
    on their own: rate limits are per actuator)."""
    out, before = [], u_prev.expand(u.shape[0], -1)
    for k in range(u.shape[1]):
        step = torch.clamp(u[:, k], before - lim.rate, before + lim.rate)
        step = torch.clamp(step, lim.u_low, lim.u_high)
        out.append(step)
        before = step
    projected = torch.stack(out, dim=1)
    if pinned is None:
        return projected
    return torch.where(torch.isfinite(pinned), pinned, projected)


# -- sensor-limit rows of a CasADi NLP --------------------------------------------------------


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

    def bounds(
        self, lbg: np.ndarray, ubg: np.ndarray, limit_shift: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The rows' bounds for a problem's limit shift, as `PlanningProblem.sensor_bounds`
        moves them (a bias only ever tightens)."""
        if limit_shift is None or not self.positions:
            return lbg, ubg
        shift = np.asarray(limit_shift, dtype=float)[self.sensors]
        lbg, ubg = lbg.copy(), ubg.copy()
        upper, positions = np.array(self.upper), np.array(self.positions)
        ubg[positions[upper]] -= np.maximum(shift[upper], 0.0)
        lbg[positions[~upper]] -= np.minimum(shift[~upper], 0.0)
        return lbg, ubg


def add_sensor_limit_rows(
    y: ca.SX | ca.MX,
    slack: ca.SX | ca.MX,
    lim: Constraints,
    g: list,
    lbg: list[float],
    ubg: list[float],
    rows: SensorRows,
) -> None:
    """Append one stage's sensor rows to an NLP's constraints: y_j - s_j <= high_j and
    y_j + s_j >= low_j for each limited sensor j with that limit (y: the limited readouts)."""
    for j in range(len(lim.limit_rows)):
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
