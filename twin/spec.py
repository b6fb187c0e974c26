"""Process specification: the tags a twin learns from and a controller drives.

A spec is plain data, loadable from YAML or JSON, so a plant engineer can describe
a process without writing code. Validation errors name the offending tag and field.
"""

from __future__ import annotations

import json
import math
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .effects import Effect, check_effects, effect_pair
from .policies import DEFAULT_POLICY, LoopPolicy, loop_policy, policy_named_by


class SpecError(ValueError):
    """A process specification is invalid; the message says where and why."""


class TagRole(StrEnum):
    SENSOR = "sensor"
    ACTUATOR = "actuator"
    DISTURBANCE = "disturbance"


class ActuatorKind(StrEnum):
    """`level`: a value that stays applied until changed (a valve, a basal rate); holding
    it repeats it. `dose`: an amount given once per sample (a bolus); holding it gives
    none, never the last dose again."""

    LEVEL = "level"
    DOSE = "dose"


class Tag(BaseModel):
    """One signal of the process, in engineering units.

    For an actuator, `low`/`high` are hard actuator bounds and `rate_limit` is the largest
    allowed change per second. For a sensor, `low`/`high` are hard safety limits that the
    controller must never cross (None means unlimited on that side).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
    role: TagRole
    unit: str = Field(min_length=1)
    low: float | None = None
    high: float | None = None
    rate_limit: float | None = Field(default=None, gt=0, description="max |change| per second")
    nominal: float | None = None
    controlled: bool = Field(default=False, description="sensor that tracks a setpoint")
    kind: ActuatorKind = Field(default=ActuatorKind.LEVEL,
                               description="actuator: level (held as is) or dose (held at 0)")
    description: str = ""

    @model_validator(mode="after")
    def _check_limits(self) -> Tag:
        for field in ("low", "high", "nominal", "rate_limit"):
            value = getattr(self, field)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{field} must be a finite number, got {value}")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.role is TagRole.ACTUATOR:
            if self.low is None or self.high is None:
                raise ValueError("an actuator needs both bounds, low and high")
            if self.rate_limit is None:
                raise ValueError("an actuator needs a rate_limit (max change per second)")
        elif self.rate_limit is not None:
            raise ValueError("rate_limit applies to actuators only")
        if self.controlled and self.role is not TagRole.SENSOR:
            raise ValueError("only a sensor can be controlled")
        if self.kind is ActuatorKind.DOSE:
            if self.role is not TagRole.ACTUATOR:
                raise ValueError("only an actuator can be a dose")
            if not self.low <= 0.0 <= self.high:  # type: ignore[operator]
                raise ValueError(f"a dose is held at 0, which must lie inside its bounds "
                                 f"[{self.low}, {self.high}]")
        if self.nominal is not None:
            if (self.low is not None and self.nominal < self.low) or (
                self.high is not None and self.nominal > self.high
            ):
                raise ValueError(f"nominal {self.nominal} lies outside [{self.low}, {self.high}]")
        return self


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
        if self.kp is not None and self.ti_s is not None and (
                not math.isfinite(self.kp) or self.kp == 0 or not math.isfinite(self.ti_s)):
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

TRACKING_WEIGHT = 40.0
"""Weight of each controlled sensor's squared setpoint error (training stds) against the
embedding distance in the plan's stage cost. With 0 a plan chases the goal embedding alone:
on the CSTR its plans overshot into the runaway region, and the CSTR and the turbofan were
each tuned to 40 on their own. A tag file needs no control settings to track."""

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
    twin drives them too."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tracking_weight: float = Field(default=TRACKING_WEIGHT, ge=0, allow_inf_nan=False)
    move_weight: float = Field(default=0.5, gt=0, allow_inf_nan=False)
    policy: str = Field(default=DEFAULT_POLICY, description="a twin.policies loop policy")
    limit_margin: float = Field(default=0.25, ge=0, allow_inf_nan=False)
    setpoint_priority: float = Field(default=SETPOINT_PRIORITY, ge=1, allow_inf_nan=False)
    forecast_bias_gain: float = Field(default=FORECAST_BIAS_GAIN, ge=0, le=1, allow_inf_nan=False)
    baseline_actuators: tuple[str, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _named_policy(cls, data: Any) -> Any:
        """Read the switches of a spec written before policies had names."""
        if not isinstance(data, dict) or not (
                {"data_envelope", "guard_keeps_twin_moves"} & data.keys()):
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


MODEL_FIELDS = ("sample_period_s", "timestamp_column", "tags")
"""What a trained twin depends on: a changed baseline, controller weights or description
is a new version of the same process; changed tags or sampling are another process."""


class ProcessSpec(BaseModel):
    """Everything a twin needs to know about a process that is not in the data."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, pattern=r"^[a-z][a-z0-9_\-]*$")
    description: str = ""
    sample_period_s: float = Field(gt=0)
    timestamp_column: str = Field(
        default="time_s", description="seconds (numbers) or date-times (ISO 8601 strings)")
    tags: tuple[Tag, ...] = Field(min_length=2)
    ignore_columns: tuple[str, ...] = Field(
        default=(), description="log columns that are neither tags nor the timestamp")
    baseline: tuple[PILoop, ...] = Field(
        default=(), description="PI loops the controller falls back to (else it holds)")
    control: ControlWeights = Field(
        default_factory=ControlWeights, description="the controller's cost weights")
    version: int = Field(default=1, ge=1, description=(
        "revision of the tag file: the store counts it up each time it accepts a change"))
    effects: tuple[Effect, ...] = Field(
        default=(), description="known signs of actuator-to-sensor effects")

    @model_validator(mode="after")
    def _check_tags(self) -> ProcessSpec:
        names = [t.name for t in self.tags]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate tag names: {', '.join(duplicates)}")
        if self.timestamp_column in names:
            raise ValueError(f"timestamp column '{self.timestamp_column}' is also a tag name")
        roles = {t.name: t.role for t in self.tags}
        for loop in self.baseline:
            if roles.get(loop.sensor) is not TagRole.SENSOR:
                raise ValueError(f"baseline loop: '{loop.sensor}' is not a sensor tag")
            if roles.get(loop.actuator) is not TagRole.ACTUATOR:
                raise ValueError(f"baseline loop: '{loop.actuator}' is not an actuator tag")
        ignored_tags = sorted(set(self.ignore_columns) & set(names))
        if ignored_tags:
            raise ValueError(f"ignore_columns lists tag(s) {', '.join(ignored_tags)}")
        if not self.sensors:
            raise ValueError("a process needs at least one sensor")
        if not self.actuators:
            raise ValueError("a process needs at least one actuator")
        check_effects(self.effects, [t.name for t in self.actuators],
                      [t.name for t in self.sensors])
        for name in self.control.baseline_actuators:
            if roles.get(name) is not TagRole.ACTUATOR:
                raise ValueError(f"control.baseline_actuators: '{name}' is not an actuator tag")
        if set(self.control.baseline_actuators) >= {t.name for t in self.actuators}:
            raise ValueError("control.baseline_actuators lists every actuator: the twin "
                             "would have none to plan")
        return self

    def _by_role(self, role: TagRole) -> tuple[Tag, ...]:
        return tuple(t for t in self.tags if t.role is role)

    @property
    def sensors(self) -> tuple[Tag, ...]:
        return self._by_role(TagRole.SENSOR)

    @property
    def actuators(self) -> tuple[Tag, ...]:
        return self._by_role(TagRole.ACTUATOR)

    @property
    def disturbances(self) -> tuple[Tag, ...]:
        return self._by_role(TagRole.DISTURBANCE)

    @property
    def controlled(self) -> tuple[Tag, ...]:
        return tuple(t for t in self.sensors if t.controlled)

    def tag(self, name: str) -> Tag:
        for t in self.tags:
            if t.name == name:
                return t
        known = ", ".join(t.name for t in self.tags)
        raise SpecError(f"unknown tag '{name}' for process '{self.name}' (known: {known})")

    def rate_limit_per_sample(self, tag: Tag) -> float:
        if tag.rate_limit is None:
            raise SpecError(f"tag '{tag.name}' has no rate limit")
        return tag.rate_limit * self.sample_period_s

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def changed_fields(self, other: ProcessSpec) -> tuple[str, ...]:
        """Top-level fields that differ from `other`, the version aside."""
        mine, theirs = self.to_dict(), other.to_dict()
        return tuple(f for f in mine if f != "version" and mine[f] != theirs.get(f))

    def model_changes(self, other: ProcessSpec) -> tuple[str, ...]:
        """The changed fields a trained twin depends on (`MODEL_FIELDS`)."""
        return tuple(f for f in self.changed_fields(other) if f in MODEL_FIELDS)

    @classmethod
    def from_dict(cls, data: Any, source: str = "spec") -> ProcessSpec:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SpecError(_describe(exc, data, source)) from None

    @classmethod
    def load(cls, path: str | Path) -> ProcessSpec:
        """Load a spec from a .yaml/.yml or .json file."""
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            elif path.suffix.lower() in (".yaml", ".yml"):
                data = yaml.safe_load(text)
            else:
                raise SpecError(f"{path}: unsupported spec format (use .yaml, .yml or .json)")
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SpecError(f"{path}: cannot parse: {exc}") from None
        if not isinstance(data, dict):
            raise SpecError(f"{path}: the top level must be a mapping")
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        data = self.to_dict()
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(data, indent=2), encoding="utf-8")
        else:
            path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _describe(exc: ValidationError, data: Any, source: str) -> str:
    """Turn pydantic's errors into lines that name the tag, not just its index."""
    lines = [f"{source}: invalid process spec"]
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if len(loc) >= 2 and loc[0] == "tags" and isinstance(loc[1], int):
            try:
                name = data["tags"][loc[1]].get("name", f"#{loc[1]}")
            except (KeyError, IndexError, TypeError, AttributeError):
                name = f"#{loc[1]}"
            rest = ".".join(str(p) for p in loc[2:])
            where = f"tag '{name}'" + (f" field '{rest}'" if rest else "")
        elif len(loc) >= 2 and loc[0] == "effects" and isinstance(loc[1], int):
            where = f"effects[{loc[1]}]" + effect_pair(data, loc[1]) + "".join(
                f" field '{p}'" for p in loc[2:3])
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)
