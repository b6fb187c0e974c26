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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .effects import Effect, check_effects, effect_pair
from .spec_control import (  # noqa: F401 (the defaults are re-exported with the classes)
    FORECAST_BIAS_GAIN,
    SETPOINT_PRIORITY,
    TRACKING_WEIGHT,
    ControlWeights,
    PILoop,
)


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
    kind: ActuatorKind = Field(
        default=ActuatorKind.LEVEL, description="actuator: level (held as is) or dose (held at 0)"
    )
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
                raise ValueError(
                    f"a dose is held at 0, which must lie inside its bounds "
                    f"[{self.low}, {self.high}]"
                )
        if self.nominal is not None:
            if (self.low is not None and self.nominal < self.low) or (
                self.high is not None and self.nominal > self.high
            ):
                raise ValueError(f"nominal {self.nominal} lies outside [{self.low}, {self.high}]")
        return self


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
        default="time_s", description="seconds (numbers) or date-times (ISO 8601 strings)"
    )
    tags: tuple[Tag, ...] = Field(min_length=2)
    ignore_columns: tuple[str, ...] = Field(
        default=(), description="log columns that are neither tags nor the timestamp"
    )
    baseline: tuple[PILoop, ...] = Field(
        default=(), description="PI loops the controller falls back to (else it holds)"
    )
    control: ControlWeights = Field(
        default_factory=ControlWeights, description="the controller's cost weights"
    )
    version: int = Field(
        default=1,
        ge=1,
        description=(
            "revision of the tag file: the store counts it up each time it accepts a change"
        ),
    )
    effects: tuple[Effect, ...] = Field(
        default=(), description="known signs of actuator-to-sensor effects"
    )

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
        check_effects(
            self.effects, [t.name for t in self.actuators], [t.name for t in self.sensors]
        )
        for name in self.control.baseline_actuators:
            if roles.get(name) is not TagRole.ACTUATOR:
                raise ValueError(f"control.baseline_actuators: '{name}' is not an actuator tag")
        for name in self.control.economic:
            if roles.get(name) is not TagRole.SENSOR:
                raise ValueError(f"control.economic: '{name}' is not a sensor tag")
        if set(self.control.baseline_actuators) >= {t.name for t in self.actuators}:
            raise ValueError(
                "control.baseline_actuators lists every actuator: the twin would have none to plan"
            )
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
            where = (
                f"effects[{loc[1]}]"
                + effect_pair(data, loc[1])
                + "".join(f" field '{p}'" for p in loc[2:3])
            )
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"  - {where}: {message}")
    return "\n".join(lines)
