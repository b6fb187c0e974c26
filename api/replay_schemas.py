"""The definition of a replay: the body of POST /api/replays and the stored run's config,
validated once here (api.services.replays checks what only the database can tell)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    FiniteFloat,
    Tag,
    ValidationError,
    model_validator,
)

from api.errors import Invalid
from twin.logs import LOG_SUFFIXES
from twin.planner_names import PlannerName

Mode = Literal["open_loop", "shadow", "counterfactual"]
Planner = PlannerName  # see twin.planner_names
Counterfactual = Literal["baseline", "oracle", "twin"]

# Keys the platform adds to a replay's config after it was validated.
_NOT_SPEC = ("cancel_requested", "episode")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Range(_Strict):
    start_s: FiniteFloat | None = Field(default=None, description="first time included")
    end_s: FiniteFloat | None = Field(default=None, description="last time included")

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.start_s is not None and self.end_s is not None and self.start_s > self.end_s:
            raise ValueError(
                f"empty time range: start_s {self.start_s:g} is after end_s {self.end_s:g}"
            )
        return self


class RunSource(_Range):
    """A stored run; the range is in its `time_s` (seconds from its first step)."""

    run_id: int = Field(ge=1)


class FileSource(_Range):
    """A .csv or .parquet log on the worker's file system, in the process's log shape;
    the range is in the log's own seconds (date-times: seconds since 1970 UTC)."""

    path: str = Field(min_length=1, max_length=4096)

    @model_validator(mode="after")
    def _suffix(self) -> FileSource:
        if Path(self.path).suffix.lower() not in LOG_SUFFIXES:
            raise ValueError("path must name a .csv or .parquet file")
        return self


def _source_type(value: Any) -> str:
    if isinstance(value, dict):
        return "file" if "path" in value else "run"
    return "file" if isinstance(value, FileSource) else "run"


Source = Annotated[
    Annotated[RunSource, Tag("run")] | Annotated[FileSource, Tag("file")],
    Discriminator(_source_type),
]

# Which fields mean something in which mode: a field given for another mode is refused
# rather than silently ignored (an analyst who sets a horizon in shadow mode expects it).
_FIELD_MODES: dict[str, tuple[str, ...]] = {
    "horizon": ("open_loop",),
    "stride": ("open_loop",),
    "setpoints": ("shadow",),
    "controller": ("counterfactual",),
}


class ReplaySpec(_Strict):
    """What a replay does: the body of POST /api/replays (and the stored run's config)."""

    mode: Mode
    source: Source
    process: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="needed for a file; for a run, its process",
    )
    model_id: int | None = Field(
        default=None, ge=1, description="open_loop, shadow, and counterfactual 'twin'"
    )
    planner: Planner = "casadi"
    horizon: int = Field(default=20, ge=1, le=500, description="open_loop: steps ahead")
    stride: int = Field(
        default=1, ge=1, le=10_000, description="open_loop: predict from every stride-th sample"
    )
    setpoints: dict[str, FiniteFloat] | None = Field(
        default=None,
        max_length=1_000,
        description="shadow: constant setpoints; default: the recorded ones, else medians",
    )
    controller: Counterfactual | None = Field(
        default=None, description="counterfactual: who drives"
    )

    @model_validator(mode="after")
    def _fits_mode(self) -> ReplaySpec:
        for name, modes in _FIELD_MODES.items():
            if (
                name in self.model_fields_set
                and getattr(self, name) is not None
                and self.mode not in modes
            ):
                raise ValueError(f"{name} applies to mode {' or '.join(modes)} only")
        if self.mode == "counterfactual":
            self._check_counterfactual()
        elif self.model_id is None:
            raise ValueError(f"mode {self.mode} replays a twin: give model_id")
        if "planner" in self.model_fields_set and not self.uses_planner:
            raise ValueError("planner applies to shadow and counterfactual 'twin' only")
        if isinstance(self.source, FileSource) and self.process is None:
            raise ValueError("a file source needs process: which tag file it follows")
        return self

    def _check_counterfactual(self) -> None:
        if self.controller is None:
            raise ValueError("mode counterfactual needs controller: baseline, oracle or twin")
        if (self.controller == "twin") != (self.model_id is not None):
            raise ValueError("model_id goes with controller 'twin', and only with it")
        if not isinstance(self.source, RunSource):
            raise ValueError(
                "a counterfactual re-runs a stored simulator episode: give a "
                "run_id (a log file records no initial state to start from)"
            )

    @property
    def uses_planner(self) -> bool:
        return self.mode == "shadow" or self.controller == "twin"

    def stored(self) -> dict[str, Any]:
        """The run's config: only what applies to the mode, defaults made explicit."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "process": self.process,
            "source": self.source.model_dump(exclude_none=True),
        }
        if self.model_id is not None:
            out["model_id"] = self.model_id
        if self.uses_planner:
            out["planner"] = self.planner
        if self.mode == "open_loop":
            out.update(horizon=self.horizon, stride=self.stride)
        if self.setpoints is not None:
            out["setpoints"] = dict(self.setpoints)
        if self.controller is not None:
            out["controller"] = self.controller
        return out


def parse_replay_config(config: Mapping[str, Any]) -> ReplaySpec:
    """Validate a replay definition; raises Invalid with one line per problem."""
    if not isinstance(config, Mapping):
        raise Invalid("replay config must be an object with mode and source")
    try:
        return ReplaySpec.model_validate({k: v for k, v in config.items() if k not in _NOT_SPEC})
    except ValidationError as exc:
        raise Invalid(
            "invalid replay: "
            + "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'replay'}: {err['msg']}"
                for err in exc.errors()
            )
        ) from None


def controller_label(spec: ReplaySpec) -> str:
    """The run's `controller`, telling replays apart in run lists."""
    if spec.mode == "open_loop":
        return "twin (open loop)"
    if spec.mode == "shadow":
        return f"twin+{spec.planner} (shadow)"
    who = f"twin+{spec.planner}" if spec.controller == "twin" else str(spec.controller)
    return f"{who} (counterfactual)"
