"""The twin's planning predictor and readout as CasADi functions with the same weights.

`casadi_dynamics` gives (z, u) -> z_next and z -> readout for the NLP planners;
`CasadiLinearisation` gives the rollout and stage Jacobians the real-time-iteration planner
needs, as exact CasADi functions (the reference for `NumpyLinearisation`, and compilable).
"""

from __future__ import annotations

import casadi as ca
import numpy as np
import torch

from ..twin_model import Twin
from .compile_cache import compiled_function


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


def action_gain(twin: Twin) -> np.ndarray | None:
    """The planning predictor's linear action path B (D, A) in float64, if it has one."""
    gain = twin.model.predictor.action_matrix()
    return None if gain is None else gain.double().numpy()


def casadi_dynamics(twin: Twin, symbol: type = ca.SX) -> tuple[ca.Function, ca.Function]:
    """(z, u) -> z_next and z -> readout, as CasADi functions equal to the torch modules.

    `ca.SX` gives scalar expression graphs (fast to evaluate for small nets, but compiled
    code grows with the square of the width); `ca.MX` keeps the weights as dense matrix
    products (compact, compiles in a second at any width)."""
    d, a = twin.config.embed_dim, len(twin.layout.actions)
    z, u = symbol.sym("z", d), symbol.sym("u", a)
    z_next = z + torch_mlp_to_casadi(twin.model.predictor.net, ca.vertcat(z, u))
    gain = action_gain(twin)
    if gain is not None:
        z_next = z_next + ca.mtimes(symbol(gain), u)
    readout_net = twin.model.readout.net
    readout_seq = (
        readout_net
        if isinstance(readout_net, torch.nn.Sequential)
        else torch.nn.Sequential(readout_net)
    )
    y = torch_mlp_to_casadi(readout_seq, z)
    return ca.Function("f", [z, u], [z_next]), ca.Function("h", [z], [y])


class CasadiLinearisation:
    """The same rollout and Jacobians as `NumpyLinearisation`, as CasADi functions (exact
    symbolic derivatives; optionally compiled with the system C compiler)."""

    def __init__(self, twin: Twin, horizon: int, limit_rows: list[int], compile: bool) -> None:
        self.d, self.a = twin.config.embed_dim, len(twin.layout.actions)
        z, u = ca.MX.sym("z", self.d), ca.MX.sym("u", self.a)
        step, step_jac = mlp_with_jacobian(twin.model.predictor.net, ca.vertcat(z, u))
        z_next, u_jac = z + step, step_jac[:, self.d :]
        gain = action_gain(twin)
        if gain is not None:
            z_next, u_jac = z_next + ca.mtimes(ca.MX(gain), u), u_jac + ca.MX(gain)
        stage = ca.Function(
            "stage", [z, u], [z_next, ca.DM.eye(self.d) + step_jac[:, : self.d], u_jac]
        )
        readout = twin.model.readout.net
        y, y_jac = mlp_with_jacobian(
            readout if isinstance(readout, torch.nn.Sequential) else torch.nn.Sequential(readout), z
        )
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

    def linearise(
        self, z0: np.ndarray, U: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        Z, A, B, Y, C = (np.asarray(m) for m in self._linearise(z0, U))
        horizon, d = U.shape[1], self.d

        def stages(m: np.ndarray, cols: int) -> np.ndarray:  # (rows, H*cols) -> (H, rows, cols)
            return m.reshape(m.shape[0], horizon, cols).transpose(1, 0, 2)

        return Z, stages(A, d), stages(B, self.a), Y, stages(C, d)
