"""Training job definitions: what a training job of the worker's queue (api.services.jobs)
does, validated once when it is enqueued, and the `twin.train.TrainConfig` it trains with."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.errors import Invalid


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulatorData(_Strict):
    """Generate a training log with the process's built-in simulator."""

    source: Literal["simulator"]
    hours: float = Field(gt=0, le=24 * 365, description="length of the simulated log")
    seed: int = 0


class CsvData(_Strict):
    """A log file (.csv or .parquet) on the worker's file system: a timestamp column and
    one column per tag of the process spec."""

    source: Literal["csv"]
    path: str = Field(min_length=1, max_length=4096)


DataSource = Annotated[SimulatorData | CsvData, Field(discriminator="source")]


class ModelSettings(_Strict):
    """`twin.model.JEPAConfig`; fields left out keep its defaults."""

    window: int | None = Field(default=None, ge=2, le=1024)
    embed_dim: int | None = Field(default=None, ge=1, le=1024)
    encoder_hidden: int | None = Field(default=None, ge=2, le=8192)
    predictor_hidden: int | None = Field(default=None, ge=1, le=8192)
    predictor_layers: int | None = Field(default=None, ge=1, le=16)
    readout_hidden: int | None = Field(default=None, ge=0, le=8192)


class TrainSettings(_Strict):
    """`twin.train.TrainConfig`; fields left out keep its defaults."""

    epochs: int = Field(default=30, ge=1, le=10_000)
    seed: int = 0
    batch_size: int | None = Field(default=None, ge=1, le=65_536)
    learning_rate: float | None = Field(default=None, gt=0, le=10)
    weight_decay: float | None = Field(default=None, ge=0, le=10)
    rollout_steps: int | None = Field(default=None, ge=1, le=1024)
    ema_momentum: float | None = Field(default=None, ge=0, le=1)
    variance_weight: float | None = Field(default=None, ge=0)
    covariance_weight: float | None = Field(default=None, ge=0)
    readout_weight: float | None = Field(default=None, ge=0)
    holdout_fraction: float | None = Field(default=None, gt=0, lt=1)
    max_seconds: float | None = Field(
        default=None, gt=0, description="stop training after this long"
    )
    model: ModelSettings | None = None


class TrainJobSpec(_Strict):
    """What a training job does: the body of POST /api/jobs/train."""

    process: str = Field(min_length=1, max_length=100)
    data: DataSource
    train: TrainSettings = Field(default_factory=TrainSettings)
    model_name: str = Field(
        default="jepa",
        min_length=1,
        max_length=200,
        description="registry name; each job adds the next version",
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="training processes on the "
        "worker (torchrun, DistributedDataParallel); 1: in the worker",
    )

    def stored(self) -> dict[str, Any]:
        """The run's config: every given field, defaults of TrainConfig left out."""
        out = self.model_dump(
            exclude_none=True, exclude={"processes"} if self.processes == 1 else None
        )
        out["train"] = self.train.model_dump(exclude_none=True)
        return out


def parse_job_config(process: str, config: dict[str, Any]) -> TrainJobSpec:
    """Validate a job definition; raises Invalid with one line per problem."""
    if not isinstance(config, dict):
        raise Invalid("job config must be an object with data, train and model_name")
    body = {k: v for k, v in config.items() if k != "process"}
    if config.get("process", process) != process:
        raise Invalid(f"config names process '{config['process']}', not '{process}'")
    try:
        return TrainJobSpec.model_validate({"process": process, **body})
    except ValidationError as exc:
        raise Invalid(
            "invalid training job: "
            + "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
                for err in exc.errors()
            )
        ) from None


def train_config(spec: TrainJobSpec) -> Any:
    """The `twin.train.TrainConfig` a job trains with (imported late: torch is heavy): the
    built-in process's recipe, or TrainConfig's defaults, with the job's settings on top."""
    from processes import train_config_for  # late: the registry imports simulators lazily

    base = train_config_for(spec.process)
    fields = spec.train.model_dump(exclude_none=True, exclude={"model"})
    if spec.train.model is not None:
        fields["model"] = replace(base.model, **spec.train.model.model_dump(exclude_none=True))
    return replace(base, **fields)
