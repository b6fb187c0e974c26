"""The twin's planning predictor and limited-sensor readout in float64 numpy, with Jacobians.

The real-time-iteration planner (`RTIPlanner`) linearises the twin along its
warm start every control step: a rollout over the horizon and each stage's Jacobians
d z_{k+1} / d (z_k, u_k) and d y_k / d z_k. CasADi builds the same functions exactly (the
`casadi` linearisation, kept as the reference and for comparison), but its virtual machine
multiplies dense matrices element by element: for a 128-wide predictor, 32 embedding
dimensions and 4 actuators that is about 3 ms of a plan. Here the rollout runs stage by
stage (it must: each stage starts where the last ended) and every stage's Jacobian comes
from one batched BLAS product afterwards, about six times faster on the same twin
(`benchmarks/planning_speed.py`), equal to CasADi's to round-off (tests/test_planning.py).

Layouts: Z (D, H) and Y (L, H) hold one column per stage, as CasADi returns them;
A (H, D, D), B (H, D, Act) and C (H, L, D) stack the stages' Jacobians.
"""

from __future__ import annotations

import numpy as np
import torch


def mlp_layers(module: torch.nn.Module) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) per Linear layer of a Linear/Tanh stack (tanh between layers)."""
    layers = list(module) if isinstance(module, torch.nn.Sequential) else [module]
    out: list[tuple[np.ndarray, np.ndarray]] = []
    expect_linear = True
    for layer in layers:
        if isinstance(layer, torch.nn.Linear) and expect_linear:
            out.append(
                (
                    layer.weight.detach().double().numpy().copy(),
                    layer.bias.detach().double().numpy().copy(),
                )
            )
            expect_linear = False
        elif isinstance(layer, torch.nn.Tanh) and not expect_linear:
            expect_linear = True
        else:
            raise TypeError(
                f"cannot linearise layer {type(layer).__name__} here: "
                "only Linear layers with a Tanh between them"
            )
    if not out or expect_linear:
        raise TypeError("an MLP here starts and ends with a Linear layer")
    return out


def _forward(
    layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Output of the MLP for inputs x (..., In) and each hidden layer's tanh activations."""
    hidden = []
    for w, b in layers[:-1]:
        x = np.tanh(x @ w.T + b)
        hidden.append(x)
    w, b = layers[-1]
    return x @ w.T + b, hidden


def _jacobians(
    layers: list[tuple[np.ndarray, np.ndarray]], hidden: list[np.ndarray], batch: int
) -> np.ndarray:
    """(batch, Out, In): the MLP's Jacobian at each input, from its hidden activations."""
    jac = np.broadcast_to(layers[0][0], (batch, *layers[0][0].shape))
    for (w, _), h in zip(layers[1:], hidden, strict=True):
        jac = w @ ((1.0 - h**2)[:, :, None] * jac)  # tanh' = 1 - tanh^2
    return np.ascontiguousarray(jac)


class NumpyLinearisation:
    """Rollout and stage Jacobians of a twin's planning predictor and its limited sensors."""

    def __init__(
        self,
        predictor: torch.nn.Module,
        readout: torch.nn.Module,
        embed_dim: int,
        limit_rows: list[int],
        action_gain: np.ndarray | None = None,
    ) -> None:
        self.d = embed_dim
        self.predictor = mlp_layers(predictor)
        self.action_gain = action_gain  # B (D, A) of a linear action path, added to each step
        readout_layers = mlp_layers(readout)
        w, b = readout_layers[-1]
        # only the limited sensors' rows are ever read out while planning
        self.readout = [*readout_layers[:-1], (w[limit_rows], b[limit_rows])]
        self.n_lim = len(limit_rows)

    def _rollout(self, z0: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, list[list[np.ndarray]]]:
        """Z (H, D) and, per stage, the predictor's hidden activations. U is (A, H)."""
        horizon = U.shape[1]
        Z = np.empty((horizon, self.d))
        hidden: list[list[np.ndarray]] = [[] for _ in self.predictor[:-1]]
        z = np.asarray(z0, dtype=float)
        for k in range(horizon):
            step, acts = _forward(self.predictor, np.concatenate([z, U[:, k]]))
            for store, a in zip(hidden, acts, strict=True):
                store.append(a)
            if self.action_gain is not None:
                step = step + self.action_gain @ U[:, k]
            z = Z[k] = z + step
        return Z, hidden

    def _sensors(self, Z: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        if not self.n_lim:
            return np.zeros((len(Z), 0)), []
        return _forward(self.readout, Z)

    def simulate(self, z0: np.ndarray, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Z (D, H) and the limited sensors Y (L, H) along moves U (A, H)."""
        Z, _ = self._rollout(z0, U)
        Y, _ = self._sensors(Z)
        return Z.T, Y.T

    def linearise(
        self, z0: np.ndarray, U: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Z (D, H), A (H, D, D), B (H, D, Act), Y (L, H), C (H, L, D) along moves U (A, H).

        A_k, B_k are the Jacobians of z_{k+1} at the stage's own (z_k, u_k); C_k that of y at
        z_{k+1} (the k-th column of Z)."""
        horizon, d = U.shape[1], self.d
        Z, hidden = self._rollout(z0, U)
        jac = _jacobians(self.predictor, [np.asarray(h) for h in hidden], horizon)
        A = jac[:, :, :d] + np.eye(d)
        B = np.ascontiguousarray(jac[:, :, d:])
        if self.action_gain is not None:
            B += self.action_gain
        Y, sensor_hidden = self._sensors(Z)
        if self.n_lim:
            C = _jacobians(self.readout, sensor_hidden, horizon)
        else:
            C = np.zeros((horizon, 0, d))
        return Z.T, A, B, Y.T, C
