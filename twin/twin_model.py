"""A trained twin: the JEPA plus everything needed to use it on live data.

Bundles the network with its spec, normalisation, and a bank of embeddings seen in
training (used to turn an engineering-unit setpoint into a goal embedding). A checkpoint
holds all of it, so a twin reloads from one file with bit-identical outputs.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import Layout, Normalizer
from .errors import InvalidInput
from .model import JEPA, JEPAConfig
from .spec import ProcessSpec, SpecError

CHECKPOINT_FORMAT = 1


@dataclass
class GoalBank:
    """Embeddings of training windows with the sensor values they ended on and the move
    the log made next (None in checkpoints written before moves were kept)."""

    embeddings: torch.Tensor  # (N, D)
    observed: torch.Tensor  # (N, O) normalised observed tags at the window's end
    unsteadiness: torch.Tensor  # (N,) spread of the sensors over the window, normalised
    actions: torch.Tensor | None = None  # (N, A) normalised actions applied at the window's end

    def to_dict(self) -> dict[str, torch.Tensor]:
        out = {
            "embeddings": self.embeddings,
            "observed": self.observed,
            "unsteadiness": self.unsteadiness,
        }
        if self.actions is not None:
            out["actions"] = self.actions
        return out


@dataclass
class Twin:
    spec: ProcessSpec
    config: JEPAConfig
    norm: Normalizer
    model: JEPA
    bank: GoalBank
    metrics: dict[str, Any] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    goal_neighbours: int = 8

    def __post_init__(self) -> None:
        self.layout = Layout.from_spec(self.spec)
        self.model.eval()

    # -- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, window: torch.Tensor) -> np.ndarray:
        """One context window (W, 2F) -> embedding (D,)."""
        expected = (self.config.window, 2 * self.layout.feature_dim)
        if tuple(window.shape) != expected:
            raise InvalidInput(
                f"context window has shape {tuple(window.shape)}, expected {expected}"
            )
        return self.model.encode(window.unsqueeze(0))[0].numpy().astype(float)

    @torch.no_grad()
    def readout(self, z: np.ndarray) -> dict[str, np.ndarray]:
        """Embeddings (..., D) -> sensors in engineering units, by tag."""
        y = self.model.readout(torch.as_tensor(z, dtype=torch.float32)).numpy()
        values = self.norm.denormalise(y, self.layout.observed)
        return {
            tag: values[..., i]
            for i, tag in enumerate(self.layout.observed)
            if tag in self.layout.sensors
        }

    def carry_factors(self, steps: int) -> np.ndarray:
        """(steps, O): per forecast step and observed tag, the share of the present readout
        miss still in the forecast's miss, as training measured it on held-out data
        (`twin.train_eval.readout_carry`; later steps keep the last one). Zeros for a twin
        trained before, and for tags that are not sensors."""
        carry = self.metrics.get("readout_carry") or {}
        out = np.zeros((steps, len(self.layout.observed)))
        for i, tag in enumerate(self.layout.observed):
            factors = carry.get(tag)
            if factors:
                out[:, i] = (list(factors[:steps]) + [factors[-1]] * steps)[:steps]
        return out

    def carried(
        self, forecasts: Mapping[str, np.ndarray], present_miss: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Forecasts (tag: (N, H), engineering units) plus each sensor's present readout miss
        (tag: (N,), measured minus the readout of the present embedding; NaN: not measured)
        times its carry at each step (`carry_factors`)."""
        out = dict(forecasts)
        if not forecasts:
            return out
        factors = self.carry_factors(next(iter(forecasts.values())).shape[-1])
        for tag, values in forecasts.items():
            miss = present_miss.get(tag)
            if miss is None:
                continue
            carry = factors[:, self.layout.observed.index(tag)]
            out[tag] = values + carry * np.nan_to_num(np.asarray(miss, dtype=float))[..., None]
        return out

    def readout_jacobian(self, z: np.ndarray, tags: list[str]) -> np.ndarray:
        """(len(tags), D): each sensor's readout (training stds) per unit of embedding at z."""
        rows = [self.layout.observed.index(tag) for tag in tags]
        z_t = torch.as_tensor(z, dtype=torch.float32)
        jacobian = torch.autograd.functional.jacobian(self.model.readout, z_t)[rows]
        return jacobian.numpy().astype(float)

    def readout_inverse(self, z: np.ndarray, tags: list[str]) -> np.ndarray:
        """(D, len(tags)): the least-norm change of embedding per unit (training std) change
        of each sensor's readout, at embedding z (the readout's Jacobian pseudo-inverse)."""
        return np.linalg.pinv(self.readout_jacobian(z, tags))

    @torch.no_grad()
    def predict_next(self, z: np.ndarray, actuators: np.ndarray) -> np.ndarray:
        """Next embedding (D,) from embedding z (D,) and applied actuators in engineering units."""
        u = torch.as_tensor(self.normalise_actions(actuators), dtype=torch.float32)
        z_t = torch.as_tensor(z, dtype=torch.float32)
        return self.model.predictor(z_t.unsqueeze(0), u.unsqueeze(0))[0].numpy().astype(float)

    @torch.no_grad()
    def ensemble_rollout(self, z0: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Every ensemble member's rollout (M, H, D) from z0 (D,) under normalised actions
        (H, A); one member (the planning predictor) for a twin without an ensemble.

        Runs every control step, so the members' layers are stacked once and evaluated
        together in numpy: one batched product per layer and step instead of a torch
        module call per member, layer and step (about 5x less time for 3 members)."""
        layers, gains = self._stacked_members()
        u = np.asarray(actions, dtype=float)
        z = np.repeat(np.asarray(z0, dtype=float)[None, :], layers[0][0].shape[0], axis=0)
        out = np.empty((z.shape[0], u.shape[0], z.shape[1]))
        for k in range(u.shape[0]):
            x = np.concatenate([z, np.broadcast_to(u[k], (z.shape[0], u.shape[1]))], axis=1)
            for weight, bias, tanh in layers:
                x = np.einsum("moi,mi->mo", weight, x) + bias
                if tanh:
                    x = np.tanh(x)
            if gains is not None:
                x = x + gains @ u[k]
            z = z + x
            out[:, k] = z
        return out

    def _stacked_members(
        self,
    ) -> tuple[list[tuple[np.ndarray, np.ndarray, bool]], np.ndarray | None]:
        """(weights (M, out, in), biases (M, out), tanh after?) per layer, and the members'
        dose paths (M, D, A) or None; rebuilt only when a member's parameters changed
        (torch counts in-place writes in `_version`)."""
        params = [p for m in self.model.members() for p in m.parameters()]
        key = tuple((id(p), p._version) for p in params)
        cached = self.__dict__.get("_member_layers")
        if cached is None or cached[0] != key:
            per_member = [_linear_tanh_layers(m.net) for m in self.model.members()]
            layers = [
                (
                    np.stack([m[i][0] for m in per_member]),
                    np.stack([m[i][1] for m in per_member]),
                    per_member[0][i][2],
                )
                for i in range(len(per_member[0]))
            ]
            gains = [m.action_matrix() for m in self.model.members()]
            stacked = (
                None
                if any(g is None for g in gains)
                else np.stack([g.double().numpy() for g in gains])
            )
            cached = (key, (layers, stacked))
            self.__dict__["_member_layers"] = cached
        return cached[1]

    def normalise_actions(self, u: np.ndarray) -> np.ndarray:
        return self.norm.normalise(np.asarray(u, dtype=float), self.layout.actions)

    def denormalise_actions(self, u: np.ndarray) -> np.ndarray:
        return self.norm.denormalise(np.asarray(u, dtype=float), self.layout.actions)

    def normalise_sensor(self, tag: str, value: float) -> float:
        return float(self.norm.normalise(np.array([value]), (tag,))[0])

    def goal_embedding(
        self,
        setpoints: dict[str, float],
        conditions: dict[str, float] | None = None,
        economic: Mapping[str, float] | None = None,
    ) -> np.ndarray:
        """Setpoints in engineering units -> goal embedding.

        The goal is the mean embedding of the training windows that ended closest to the
        setpoints while steady, under conditions (measured disturbances) closest to the
        present ones: a state the plant has really been in, not an invented one. A miss of
        the setpoints and the window's unsteadiness weigh `control.setpoint_priority`
        times a miss
        of the conditions. `economic`: sensor -> cost per training std of its value, added
        to each state's score (the cheaper of the states near the setpoints win).
        """
        if not setpoints:
            raise InvalidInput("at least one setpoint is needed")
        priority = self.spec.control.setpoint_priority
        cols, targets, weights = [], [], []
        for tag, value in setpoints.items():
            if tag not in self.layout.sensors:
                sensors = ", ".join(self.layout.sensors)
                raise InvalidInput(
                    f"setpoint for '{tag}', which is not a sensor of "
                    f"'{self.spec.name}' (sensors: {sensors})"
                )
            if not np.isfinite(value):
                raise InvalidInput(f"setpoint for '{tag}' must be finite, got {value}")
            cols.append(self.layout.observed.index(tag))
            targets.append(self.normalise_sensor(tag, value))
            weights.append(priority)
        for tag, value in (conditions or {}).items():
            if tag in self.layout.observed and tag not in setpoints and np.isfinite(value):
                cols.append(self.layout.observed.index(tag))
                targets.append(self.normalise_sensor(tag, value))
                weights.append(1.0)
        observed = self.bank.observed[:, cols]
        miss = (observed - torch.tensor(targets, dtype=observed.dtype)) ** 2
        distance = (miss * torch.tensor(weights, dtype=observed.dtype)).sum(dim=1)
        score = distance + priority * 0.5 * self.bank.unsteadiness
        for tag, weight in (economic or {}).items():
            score = score + weight * self.bank.observed[:, self.layout.observed.index(tag)]
        k = min(self.goal_neighbours, len(score))
        nearest = torch.topk(score, k, largest=False).indices
        return self.bank.embeddings[nearest].mean(dim=0).numpy().astype(float)

    def action_envelope(
        self, z: np.ndarray, neighbours: int, margin_std: float
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The actuator values the training log applied from the `neighbours` states nearest
        to embedding `z`, widened by `margin_std` training stds: [low, high] per actuator in
        engineering units. None when the bank holds no actions (older checkpoints)."""
        if self.bank.actions is None or neighbours <= 0:
            return None
        distance = (
            (self.bank.embeddings - torch.as_tensor(z, dtype=self.bank.embeddings.dtype)) ** 2
        ).sum(dim=1)
        nearest = torch.topk(distance, min(neighbours, len(distance)), largest=False).indices
        seen = self.bank.actions[nearest].double().numpy()
        low = self.denormalise_actions(seen.min(axis=0) - margin_std)
        high = self.denormalise_actions(seen.max(axis=0) + margin_std)
        return low, high

    # -- persistence ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "spec": self.spec.to_dict(),
            "config": self.config.to_dict(),
            "normalizer": self.norm.to_dict(),
            "weights": self.model.state_dict(),
            "bank": self.bank.to_dict(),
            "metrics": self.metrics,
            "train_config": self.train_config,
        }

    def to_bytes(self) -> bytes:
        """The checkpoint: the state, wrapped with its own sha256 so damage never loads."""
        payload = _torch_bytes(self.state())
        return _torch_bytes(
            {
                "format": CHECKPOINT_FORMAT,
                "payload": payload,
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        )

    def save(self, path: str | Path) -> str:
        """Write the checkpoint; returns its sha256."""
        data = self.to_bytes()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def from_bytes(cls, data: bytes) -> Twin:
        wrapper = _torch_load(data)
        if not isinstance(wrapper, dict) or wrapper.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInput("not a twin checkpoint of a supported format")
        payload = wrapper.get("payload")
        if not isinstance(payload, bytes) or hashlib.sha256(payload).hexdigest() != wrapper.get(
            "sha256"
        ):
            raise InvalidInput("checkpoint is damaged: its content does not match its sha256")
        state = _torch_load(payload)
        if not isinstance(state, dict):
            raise InvalidInput("not a twin checkpoint of a supported format")
        try:
            spec = ProcessSpec.from_dict(state["spec"], source="checkpoint spec")
            config = JEPAConfig.from_dict(state["config"])
            layout = Layout.from_spec(spec)
            model = JEPA(config, layout.feature_dim, len(layout.actions), len(layout.observed))
            model.load_state_dict(state["weights"])
            bank = GoalBank(**state["bank"])
            if bank.actions is not None and tuple(bank.actions.shape) != (
                len(bank.embeddings),
                len(layout.actions),
            ):
                raise InvalidInput(
                    f"checkpoint is inconsistent: its goal bank holds moves of "
                    f"shape {tuple(bank.actions.shape)} for "
                    f"{len(bank.embeddings)} states and "
                    f"{len(layout.actions)} actuators"
                )
            norm = Normalizer.from_dict(state["normalizer"])
        except (KeyError, TypeError, RuntimeError, SpecError) as exc:
            raise InvalidInput(
                f"checkpoint is incomplete or inconsistent: {type(exc).__name__}: {exc}"
            ) from None
        return cls(
            spec, config, norm, model, bank, state.get("metrics", {}), state.get("train_config", {})
        )

    @classmethod
    def load(cls, path: str | Path) -> Twin:
        path = Path(path)
        if not path.is_file():
            raise InvalidInput(f"checkpoint not found: {path}")
        try:
            return cls.from_bytes(path.read_bytes())
        except InvalidInput as exc:  # say which file
            raise InvalidInput(f"{path}: {exc}") from None


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _torch_load(data: bytes) -> Any:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt file
        # torch's own message is many lines of advice about weights_only; one line is enough
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        cause = "" if "weights_only" in first or not first else f": {first}"
        raise InvalidInput(
            f"not a twin checkpoint (torch cannot read it as one: {type(exc).__name__}{cause})"
        ) from None


def _linear_tanh_layers(net: torch.nn.Module) -> list[tuple[np.ndarray, np.ndarray, bool]]:
    """A Linear/Tanh Sequential as (weight, bias, followed by tanh) in float64."""
    modules = list(net)
    layers = []
    for i, module in enumerate(modules):
        if isinstance(module, torch.nn.Linear):
            tanh = i + 1 < len(modules) and isinstance(modules[i + 1], torch.nn.Tanh)
            layers.append(
                (
                    module.weight.detach().double().numpy(),
                    module.bias.detach().double().numpy(),
                    tanh,
                )
            )
        elif not isinstance(module, torch.nn.Tanh):
            raise TypeError(f"ensemble member layer {type(module).__name__} is not Linear/Tanh")
    return layers
