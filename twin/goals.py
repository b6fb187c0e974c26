"""Goal integration: setpoints and measured conditions -> the plan's steady-state target
(goal embedding) and its stage-cost metric, moved by a disturbance estimate per
controlled sensor for offset-free tracking."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .response import disturbance_gain, step_responses
from .twin_model import Twin

OFFSET_GAIN = 0.1
"""Per sample, at most how far each controlled sensor's disturbance estimate moves towards
the measured miss of its setpoint, in training stds per std of miss; a slower sensor gets
less (`twin.response.disturbance_gain`, from the twin's own step response: an integral
faster than the plant answers makes the loop swing). On the CSTR benchmark episode (seeds
7, 11) integral action on the goal took the twin's cost from 17.9 to 16.5 (mean |error|
1.47 -> 1.15 K); 0.2 gave 16.4, so the gentler gain is kept. On the heat exchanger (a
150 s dead time, 10 s samples) 0.1 swung the loop: offsets up to 3.8 noise stds, 0.03:
2.7."""
OFFSET_BAND = 0.5
"""The estimate moves only while the miss is inside this many training stds: a transient
after a setpoint change is not a disturbance (no windup in moves). On the CSTR episode
(seed 7, the demo twin) 1.0 cost 14.80 where 0.5 cost 13.35."""
ECONOMIC_GIVE = OFFSET_BAND
"""How far a steady-state target may miss a setpoint (training stds) for one training std
less of one economic sensor's cost (`ControlWeights.economic`): no farther than the
disturbance estimate acts, so the measured value still reaches the setpoint. On the
Tennessee Eastman (recipe twin, no fault, seed 7; purge, steam and compressor work
minimised) a give of 0.1 std changed no target, 0.3 cost 167.3 $/h, 0.5 160.1 $/h, 1.0
lost the setpoints (production off by 0.14 against 0.05 m3/h); the PI 175.5 $/h."""
OFFSET_LIMIT = 1.0
"""No disturbance estimate exceeds this many training stds of its sensor: a twin off by
more is a mismatch, not an offset to trim."""


class GoalIntegrator:
    """The plan's steady-state target: the goal embedding and its metric, with an
    output-disturbance estimate per controlled sensor that moves the target so that the
    MEASURED value reaches the setpoint (offset-free MPC, Muske & Badgwell 2002,
    Pannocchia & Rawlings 2003), for any number of setpoints.

    The model: measured = twin's steady reading + d, with d constant (integrating
    disturbance). Each sample d moves by `offset_gain` times the gap between the
    measurement and the setpoint (the reading the target asked for plus d); the target
    reading is then setpoint - d. At any steady state with d inside its limits the
    measurement equals the setpoint, whatever the twin's gain error. The twin's one-step
    forecast bias (`twin.estimator`) is no estimate of d: the window is re-encoded from the
    measurements every sample, so that bias is the twin's drift per sample, not the offset
    of its steady state.

    The target embedding: the goal bank's steady state for the setpoints (a state the
    plant has been in), moved along the readout's least-norm direction by the disturbance
    estimates. Moving it further, until the twin read the setpoints there exactly, cost the
    CSTR episode (seed 7, the demo twin) 14.80 -> 15.97: the bank's own steady state is the
    better target, and the estimate removes what remains of its miss."""

    def __init__(self, twin: Twin, tracking_weight: float, offset_gain: float) -> None:
        self.twin, self.spec = twin, twin.spec
        self.tracking_weight, self.offset_gain = tracking_weight, offset_gain
        # each economic sensor's cost in the bank's score: a setpoint miss of ECONOMIC_GIVE
        # weighs as much as one training std of it
        worth = self.spec.control.setpoint_priority * ECONOMIC_GIVE**2
        self.economic = {
            tag: worth * (1.0 if way == "minimise" else -1.0)
            for tag, way in self.spec.control.economic.items()
        }
        self.reset()

    def reset(self) -> None:
        self.goal_key: tuple | None = None
        self.goal: np.ndarray | None = None  # the bank's, before the target correction
        self.metric: np.ndarray | None = None
        self.disturbance: dict[str, float] = {}  # per controlled sensor, training stds
        self.gains: dict[str, float] | None = None  # per controlled sensor, per sample
        self._tags: list[str] = []
        self._offset_map: np.ndarray | None = None

    def goal_for(
        self,
        setpoints: Mapping[str, float],
        measurements: Mapping[str, float | None],
        integrate: bool = True,
    ) -> np.ndarray:
        """The target embedding of this sample (the disturbance estimate moves on by one
        sample first, unless `integrate` is off: the moves were not free to close the
        miss, see `TwinController._held_back`)."""
        # disturbances are rounded so the goal moves only when conditions really change
        conditions = {}
        for tag in self.spec.disturbances:
            value = measurements.get(tag.name)
            if value is not None:
                std = self._std(tag.name)
                conditions[tag.name] = round(float(value) / (0.1 * std)) * 0.1 * std
        key = (tuple(sorted(setpoints.items())), tuple(sorted(conditions.items())))
        if key != self.goal_key:
            self._forget_far_estimates(setpoints)
            self.goal_key = key
            self.goal = self.twin.goal_embedding(dict(setpoints), conditions, self.economic)
            self._tags = list(setpoints)
            self.metric = self._tracking_metric(self.goal, self._tags)
            self._offset_map = self.twin.readout_inverse(self.goal, self._tags)
        assert self.goal is not None and self._offset_map is not None
        if self.gains is None and self.offset_gain:  # the plant's time scales: found once
            controlled = [t.name for t in self.spec.sensors if t.controlled] or self._tags
            responses = step_responses(self.twin, self.goal, sorted({*controlled, *self._tags}))
            self.gains = {
                tag: disturbance_gain(response, self.offset_gain)
                for tag, response in responses.items()
            }
        if integrate:
            self._estimate(setpoints, measurements)
        if not self.offset_gain:
            return self.goal
        shift = -np.array([self.disturbance.get(t, 0.0) for t in self._tags])
        return self.goal + self._offset_map @ shift

    def _forget_far_estimates(self, setpoints: Mapping[str, float]) -> None:
        """Drop the estimate of each sensor whose setpoint moved by more than
        `OFFSET_LIMIT` training stds: a twin's miss is local to where it was measured. Carried
        from idle to takeoff thrust, the turbofan's estimates cost 850 where dropping them
        cost 305.5 (one twin, 3 seeds x 2 cases); on the zoo plants both were within 0.04 x
        the PI (`benchmarks/new_plant.py`)."""
        before = dict(self.goal_key[0]) if self.goal_key is not None else {}
        for tag, value in setpoints.items():
            if tag in before and abs(float(value) - before[tag]) > OFFSET_LIMIT * self._std(tag):
                self.disturbance.pop(tag, None)

    def _std(self, tag: str) -> float:
        return float(self.twin.norm.std[self.twin.norm.index(tag)])

    def _tracking_metric(self, goal: np.ndarray, tags: list[str]) -> np.ndarray | None:
        """The factor W of the plan's stage cost |W (z - z_goal)|^2, W'W = I + w J'J with J
        the readout's Jacobian of the setpoint sensors at the goal: distance in embedding
        space, plus the setpoint error itself (training stds) weighted by w."""
        if not self.tracking_weight:
            return None
        jacobian = self.twin.readout_jacobian(goal, tags)
        gram = np.eye(len(goal)) + self.tracking_weight * jacobian.T @ jacobian
        return np.linalg.cholesky(gram).T

    def _estimate(
        self, setpoints: Mapping[str, float], measurements: Mapping[str, float | None]
    ) -> None:
        """d += gain * (measured - setpoint), near the setpoint only; a sensor without a
        setpoint now keeps its estimate (the disturbance is the plant's, not the goal's)."""
        if not self.offset_gain:
            return
        for tag, target in setpoints.items():
            value = measurements.get(tag)
            if value is None:
                continue
            miss = (float(value) - float(target)) / self._std(tag)
            if abs(miss) < OFFSET_BAND:
                self.disturbance[tag] = float(
                    np.clip(
                        self.disturbance.get(tag, 0.0)
                        + (self.gains or {}).get(tag, self.offset_gain) * miss,
                        -OFFSET_LIMIT,
                        OFFSET_LIMIT,
                    )
                )
