"""How a process is controlled, as its spec says (re-exported by twin.spec): the twin
controller's cost weights and loop policy (`ControlWeights`, with the defaults it falls
back on) and the plain PI loops of a tag file's baseline (`PILoop`)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .policies import DEFAULT_POLICY, LoopPolicy, loop_policy, policy_named_by


class PILoop(BaseModel):
    """A plain PI loop from the tag file: the fallback of a process that has no code.

    Velocity form: u += kp (e - e_prev) + kp dt / ti_s e, with e = setpoint - measurement,
    so kp > 0 when raising the actuator raises the sensor (kp in actuator unit per sensor
    unit). It starts from what is applied (bumpless) and the safety layer clips it.

    A loop may name only the pairing, without kp and ti_s: the gains are then tuned by
    SIMC from the log the twin is trained on (`twin.simc.with_simc_gains`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor: str
    actuator: str
    kp: float | None = None
    ti_s: float | None = Field(default=None, gt=0, description="integral time, seconds")

    @model_validator(mode="after")
    def _check_gain(self) -> PILoop:
        if (self.kp is None) != (self.ti_s is None):
            raise ValueError("give both kp and ti_s, or neither (tuned from the log)")
        if (
            self.kp is not None
            and self.ti_s is not None
            and (not math.isfinite(self.kp) or self.kp == 0 or not math.isfinite(self.ti_s))
        ):
            raise ValueError("kp must be a finite, non-zero number and ti_s finite")
        return self

    @property
    def tuned(self) -> bool:
        return self.kp is not None


SETPOINT_PRIORITY = 10.0
"""Weight of a setpoint's squared miss (training stds) and of the window's unsteadiness
against a measured condition's when the goal is picked from the bank: the goal must first
be a steady state where the operator asked. With equal weights the turbofan's goal for
100 kN at the benchmark's warm-day flight read out at 78.5 kN (the log rarely ran that hot
a day at full power) and the twin never got past 87 kN; at 10 it reads 93 kN, and 26 kN
for 25 kN where it had read 37 kN. Weighing the setpoint alone up cost the CSTR (a twin
cut to 14 epochs, seeds 7 and 11: 14.8 -> 16.4): its goals drifted to unsteady windows."""

TRACKING_WEIGHT = 150.0
"""Weight of each controlled sensor's squared setpoint error (training stds) against the
embedding distance in the plan's stage cost. With 0 a plan chases the goal embedding alone
(on the CSTR its plans overshot into the runaway region). Chosen over the five zoo plants
(`benchmarks/new_plant.py`, two twins each): 10 lost to the SIMC PI on three of them, 40
on two (pH 0.79-0.87 x the PI, van de Vusse 0.97-1.03 x), 150 beat it on four and tied
the oracle on the fifth, 500 lost again (more fallbacks on model mismatch); the CSTR
demo twin costs the same at 40 and 150 (13.35 and 13.37, seed 7). A tag file needs no
control settings to track."""

FORECAST_BIAS_GAIN = 0.2
"""Per sample, how far the twin's forecast bias (measured minus one-step forecast, per
sensor) moves towards the latest miss (a miss beyond the mismatch trip counts as the
trip). The mismatch check judges the miss net of that bias, and the plan's sensor limits
tighten by it. On the turbofan the twin's surge-margin forecast ran 0.8-2.2 % below the
new engine all flight, steadily: judged on the raw miss, the twin never got to act (the
baseline ran 300 of 300 samples)."""


class ControlWeights(BaseModel):
    """How the twin's controller weighs its goals for this process (the plant's own MPC
    tuning), and which loop policy it follows. Each planned stage costs

        |z - z_goal|^2 + tracking_weight * e^2 + move_weight * (du / rate_limit)^2

    with z the embedding and e the setpoint error of each controlled sensor, in training
    standard deviations (default `TRACKING_WEIGHT`). With tracking_weight 0 the goal is the
    embedding alone.

    `horizon`: samples each plan covers; None (the default) takes it from the twin's own
    step responses (`twin.response.planning_horizon`: dead time plus three time constants
    of the slowest controlled sensor, 20 to 60 samples).

    `policy`: the name of a `twin.policies.LoopPolicy` (how the twin and the baseline
    share the loop: data envelope, moves near a limit); `default` unless the log calls for
    another. Specs written before policies had names give the two switches
    `data_envelope` and `guard_keeps_twin_moves`; they are read as the policy with them.

    `limit_margin`: how far inside each hard sensor limit the plan keeps the twin's readout,
    in training standard deviations (room for the twin's error). A plant whose sensors span
    a wide range in training (a fan speed from idle to takeoff) and whose own limit
    protection stands behind the plan can take less.

    `setpoint_priority`: when the goal is picked from the bank, a setpoint's squared miss
    and the window's unsteadiness weigh this many times a measured condition's miss
    (`twin.twin_model.Twin.goal_embedding`). High where the log rarely ran at the asked
    setpoint under today's conditions; 1 where conditions say much about the right state.

    `forecast_bias_gain`: per sample, how far the estimate of the twin's steady forecast
    bias moves towards the latest miss (`twin.estimator`); the mismatch check judges misses
    net of it, and the plan's sensor limits tighten by it. 0 turns the estimate off: every
    miss counts whole, and the limits stay where the spec puts them.

    `baseline_actuators`: actuators the baseline drives at every sample, whoever plans the
    rest: the twin plans around their moves (this one, then back to the tag's nominal)
    and its own on them never go out (a hybrid closed loop, where a log cannot tell an
    actuator's effect from the event that moved it). Without a baseline configured the
    twin drives them too.

    `economic`: sensor -> minimise / maximise, what the plant's operation costs or earns
    (steam, compressor power, purge losses). The steady-state target the plan tracks is
    then the cheapest the goal bank holds near the setpoints (`twin.goals`), as an APC's
    steady-state optimiser picks its targets; the setpoints keep their priority, and the
    offset-free estimate closes what the target gives up on them. None by default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_weight: float = Field(default=TRACKING_WEIGHT, ge=0, allow_inf_nan=False)
    horizon: int | None = Field(
        default=None, ge=2, le=200, description="samples; None: from the twin's step response"
    )
    move_weight: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    policy: str = Field(default=DEFAULT_POLICY, description="a twin.policies loop policy")
    limit_margin: float = Field(default=0.25, ge=0, allow_inf_nan=False)
    setpoint_priority: float = Field(default=SETPOINT_PRIORITY, ge=1, allow_inf_nan=False)
    forecast_bias_gain: float = Field(default=FORECAST_BIAS_GAIN, ge=0, le=1, allow_inf_nan=False)
    baseline_actuators: tuple[str, ...] = ()
    economic: dict[str, Literal["minimise", "maximise"]] = Field(
        default_factory=dict, description="sensor -> minimise/maximise: the plant's economics"
    )

    @model_validator(mode="before")
    @classmethod
    def _named_policy(cls, data: Any) -> Any:
        """Read the switches of a spec written before policies had names."""
        if not isinstance(data, dict) or not (
            {"data_envelope", "guard_keeps_twin_moves"} & data.keys()
        ):
            return data
        data = dict(data)
        envelope = bool(data.pop("data_envelope", True))
        keeps = bool(data.pop("guard_keeps_twin_moves", True))
        if "policy" not in data:
            data["policy"] = policy_named_by(envelope, keeps)
        return data

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        loop_policy(name)
        return name

    @property
    def loop_policy(self) -> LoopPolicy:
        return loop_policy(self.policy)

    @property
    def data_envelope(self) -> bool:
        return self.loop_policy.data_envelope

    @property
    def guard_keeps_twin_moves(self) -> bool:
        return self.loop_policy.guard_keeps_twin_moves
