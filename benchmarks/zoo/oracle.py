"""The oracle: an NMPC on a zoo plant's true equations, seeing its true state (the
continuous state and the actuators' recent history) and the measured disturbances now,
held to the same actuator bounds and rate limits as every other controller. It knows
today's setpoints, not the future schedule: it is the limit of a controller that plans
with a perfect model.

Single shooting with CasADi's Opti and IPOPT (exact Hessian, warm-started from the
previous plan shifted by one sample). Stage cost, per controlled sensor c:

    ((y_c - setpoint_c) / span_c)^2 + MOVE_WEIGHT * sum_j (du_j / rate_j)^2

and the hard sensor limits as soft constraints with a heavy penalty (a hard constraint
the plant cannot meet after a disturbance would make the problem infeasible).
"""

from __future__ import annotations

import casadi as ca
import numpy as np

from .base import Plant, PlantState

MOVE_WEIGHT = 1e-3
LIMIT_PENALTY = 1e4


class OracleNmpc:
    def __init__(self, plant: Plant, controlled: list[str], horizon: int | None = None) -> None:
        self.plant, self.controlled = plant, controlled
        self.horizon = horizon or plant.oracle_horizon
        self._build()
        self._guess: np.ndarray | None = None

    def _build(self) -> None:
        plant, n = self.plant, self.horizon
        nu, d_max = len(plant.actuators), plant.max_delay
        opti = ca.Opti()
        self._implicit: list[ca.MX] = []
        u = opti.variable(nu, n)
        slack = opti.variable(len(plant.sensors), n)
        x0 = opti.parameter(len(plant.x0))
        history = opti.parameter(d_max + 1, nu)  # rows oldest..newest; last: applied now
        setpoint = opti.parameter(len(self.controlled))
        # the measured disturbances now, held over the plan
        disturbance = opti.parameter(len(plant.disturbances)) if plant.disturbances else None
        step, names = plant.step_function(), [s.name for s in plant.sensors]
        index = [names.index(c) for c in self.controlled]
        spans = plant.spans(self.controlled)
        rate = np.array([a.rate_limit for a in plant.actuators]) * plant.sample_period_s
        low = np.array([a.low for a in plant.actuators])
        high = np.array([a.high for a in plant.actuators])
        cost = 0
        x = x0
        previous = history[d_max, :].T
        for k in range(n):
            move = u[:, k] - previous
            opti.subject_to(opti.bounded(-rate, move, rate))
            opti.subject_to(opti.bounded(low, u[:, k], high))
            cost += MOVE_WEIGHT * ca.sumsqr(move / rate)
            previous = u[:, k]
            channels = []
            for j, d in plant.channels:
                # input applied at sample k - d: a decision if k >= d, else history
                channels.append(u[j, k - d] if k >= d else history[d_max - (d - k), j])
            if disturbance is not None:
                channels.append(disturbance)
            x = step(x, ca.vertcat(*channels))
            if plant.output_residual is None:
                y = plant.output_function()(x)
            else:  # outputs defined implicitly (pH): decisions held to their equation
                y = opti.variable(len(plant.sensors))
                opti.subject_to(plant.output_residual(y, x) == 0)
                self._implicit.append(y)
            for i, c in enumerate(index):
                cost += ((y[c] - setpoint[i]) / spans[i]) ** 2
            for s, sensor in enumerate(plant.sensors):
                span = sensor.span[1] - sensor.span[0]
                if sensor.high is not None:
                    opti.subject_to(y[s] <= sensor.high + slack[s, k] * span)
                if sensor.low is not None:
                    opti.subject_to(y[s] >= sensor.low - slack[s, k] * span)
        opti.subject_to(ca.vec(slack) >= 0)
        cost += LIMIT_PENALTY * ca.sumsqr(slack) + LIMIT_PENALTY * ca.sum1(ca.vec(slack))
        opti.minimize(cost)
        opti.solver(
            "ipopt",
            {
                "print_time": False,
                "expand": True,
                "ipopt.print_level": 0,
                "ipopt.sb": "yes",
                "ipopt.max_iter": 100,
                "ipopt.tol": 1e-6,
                "ipopt.acceptable_tol": 1e-4,
            },
        )
        self.opti, self.u, self.slack = opti, u, slack
        self.x0, self.history, self.setpoint = x0, history, setpoint
        self.disturbance = disturbance

    def reset(self) -> None:
        self._guess = None

    def step(self, state: PlantState, setpoints: dict[str, float]) -> np.ndarray:
        """The next actuator values; the previous plan's next move if IPOPT fails."""
        opti = self.opti
        opti.set_value(self.x0, state.x)
        opti.set_value(self.history, state.history)
        opti.set_value(self.setpoint, [setpoints[c] for c in self.controlled])
        if self.disturbance is not None:
            opti.set_value(self.disturbance, state.disturbance)
        applied = state.history[-1]
        if self._guess is None:
            self._guess = np.tile(applied[:, None], (1, self.horizon))
        opti.set_initial(self.u, self._guess)
        opti.set_initial(self.slack, 0.0)
        for y in self._implicit:
            opti.set_initial(y, self.plant.measure(state))
        try:
            solution = opti.solve()
            plan = np.asarray(solution.value(self.u)).reshape(len(applied), self.horizon)
        except RuntimeError:  # not converged: the debug values are the last iterate
            plan = np.asarray(opti.debug.value(self.u)).reshape(len(applied), self.horizon)
            if not np.all(np.isfinite(plan)):
                plan = self._guess
        self._guess = np.hstack([plan[:, 1:], plan[:, -1:]])
        return self.plant.clip(plan[:, 0], applied)
