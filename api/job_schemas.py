"""What the worker's queue routes read and send: training jobs and replays
(re-exported by api.schemas)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.contract import UtcDatetime
from api.orm import Run
from api.replay_schemas import ReplaySpec
from api.services.job_specs import TrainJobSpec


class TrainJobCreate(TrainJobSpec):
    """A training job: which process, which data, how to train, what to call the model.

    The worker (`twin worker`) runs it; a csv `path` is read on the worker's machine."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "process": "cstr",
                    "data": {"source": "simulator", "hours": 24, "seed": 1},
                    "train": {"epochs": 30, "seed": 0},
                    "model_name": "jepa",
                }
            ]
        },
    )


class JobOut(BaseModel):
    id: int
    status: str = Field(description="queued, running, succeeded, failed or stopped")
    process: str
    model_name: str
    model_id: int | None = Field(description="the registered model, once succeeded")
    cancel_requested: bool
    progress: dict[str, Any] | None = Field(
        description="latest epoch: {epoch, of, train_loss, ...}; null before the first"
    )
    error: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    started_at: UtcDatetime = Field(description="when it was queued, until a worker starts it")
    finished_at: UtcDatetime | None

    @classmethod
    def of(cls, run: Run) -> JobOut:
        metrics = run.metrics or {}
        return cls(
            id=run.id,
            status=run.status,
            process=run.process.name,
            model_name=str(run.config.get("model_name", "")),
            model_id=run.model_id,
            cancel_requested=bool(run.config.get("cancel_requested")),
            progress=metrics.get("progress"),
            error=metrics.get("error"),
            config=run.config,
            metrics=metrics,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )


# ---------------------------------------------------------------- replays


class ReplayCreate(ReplaySpec):
    """A replay of a stored run (or a log file on the worker) through a twin or a simulator.

    The worker (`twin worker`) runs it; the replay's id is also the id of its result run."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "mode": "open_loop",
                    "source": {"run_id": 12, "start_s": 0, "end_s": 1200},
                    "model_id": 3,
                    "horizon": 20,
                },
                {"mode": "shadow", "source": {"run_id": 12}, "model_id": 3, "planner": "casadi"},
                {"mode": "counterfactual", "source": {"run_id": 12}, "controller": "baseline"},
            ]
        },
    )


class ReplayOut(BaseModel):
    id: int = Field(description="the replay, and the run that holds its result")
    status: str = Field(description="queued, running, succeeded, failed or stopped")
    process: str
    mode: str
    source: dict[str, Any] = Field(description="{run_id | path, start_s, end_s}")
    model_id: int | None
    controller: str
    result_run_id: int | None = Field(
        description="the run with the replay's steps, once succeeded (the same id)"
    )
    n_steps: int
    cancel_requested: bool
    progress: dict[str, Any] | None = Field(
        description="{step, of, phase}; null before the worker starts it"
    )
    error: str | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    started_at: UtcDatetime = Field(description="when it was queued, until a worker starts it")
    finished_at: UtcDatetime | None

    @classmethod
    def of(cls, run: Run, n_steps: int = 0) -> ReplayOut:
        metrics, config = run.metrics or {}, run.config or {}
        done = run.status == "succeeded"
        return cls(
            id=run.id,
            status=run.status,
            process=run.process.name,
            mode=str(config.get("mode", "")),
            source=config.get("source") or {},
            model_id=run.model_id,
            controller=run.controller,
            result_run_id=run.id if done else None,
            n_steps=n_steps,
            cancel_requested=bool(config.get("cancel_requested")),
            progress=metrics.get("progress"),
            error=metrics.get("error"),
            config=config,
            metrics=metrics,
            started_at=run.started_at,
            finished_at=run.finished_at,
        )
