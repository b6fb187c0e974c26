"""Training on several processes or machines, launched by torchrun.

    torchrun --nproc-per-node 2 -m api.cli train --process cstr --data log.parquet --out twin.pt
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id twin1 -m api.cli train ...   # on every machine

`twin.train.train_twin` trains through a `Trainer`. Outside torchrun it is the plain
single-process loop (same order, same random draws as before). Under torchrun (the
WORLD_SIZE, RANK and LOCAL_RANK variables it sets), the process group starts (nccl with a
GPU, gloo on CPU), the loss runs inside DistributedDataParallel (gradients averaged across
processes every batch), and a DistributedSampler gives each process its share of every
epoch's shuffled windows: with `batch_size` B and N processes, each takes B / N windows
per step, so the effective batch stays B and the run follows the one-process schedule.
A time budget ends every process at the same batch (their "finished" votes are reduced),
since one process leaving early would leave the others waiting in their all-reduce.

Only rank 0 returns from training (and so saves the checkpoint and registers the model);
the other ranks leave the process group and exit with status 0 once training is done.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

LossFn = Callable[..., tuple[torch.Tensor, Any]]


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class _LossModule(nn.Module):
    """DDP synchronises gradients of what its forward computes: the whole batch loss."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, cfg: Any) -> None:
        super().__init__()
        self.model, self.loss_fn, self.cfg = model, loss_fn, cfg

    def forward(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, Any]:
        return self.loss_fn(self.model, batch, self.cfg, generator)


@dataclass
class Trainer:
    model: nn.Module
    loss_fn: LossFn
    cfg: Any  # twin.train.TrainConfig
    rank: int = 0
    world_size: int = 1
    ddp: DistributedDataParallel | None = None

    @classmethod
    def create(cls, model: nn.Module, cfg: Any, loss_fn: LossFn) -> Trainer:
        """Plain training, or distributed when launched by torchrun."""
        if not launched_by_torchrun():
            return cls(model, loss_fn, cfg)
        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            dist.init_process_group(backend=backend)
        world, rank = dist.get_world_size(), dist.get_rank()
        if cfg.batch_size % world:
            warnings.warn(
                f"batch_size {cfg.batch_size} is not a multiple of {world} "
                f"processes: the effective batch is "
                f"{(cfg.batch_size // world) * world}",
                stacklevel=2,
            )
        ddp = DistributedDataParallel(_LossModule(model, loss_fn, cfg))
        return cls(model, loss_fn, cfg, rank, world, ddp)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def batch_size(self) -> int:
        """Windows per step in this process."""
        return max(1, self.cfg.batch_size // self.world_size)

    def epoch_order(
        self, train_idx: torch.Tensor, generator: torch.Generator, epoch: int
    ) -> torch.Tensor:
        """This process's training windows for `epoch`, in order."""
        if self.ddp is None:
            return train_idx[torch.randperm(len(train_idx), generator=generator)]
        sampler = DistributedSampler(
            range(len(train_idx)),
            num_replicas=self.world_size,
            rank=self.rank,
            shuffle=True,
            seed=self.cfg.seed,
        )
        sampler.set_epoch(epoch)
        return train_idx[torch.tensor(list(sampler), dtype=torch.long)]

    def loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator
    ) -> tuple[torch.Tensor, Any]:
        if self.ddp is None:
            return self.loss_fn(self.model, batch, self.cfg, generator)
        return self.ddp(batch, generator)

    def finished(self, schedule: Any) -> bool:
        """The schedule's verdict, agreed by all processes (any one done: all done)."""
        return self._anyone(bool(schedule.finished()))

    def skip(self, loss: torch.Tensor) -> bool:
        """A batch whose loss is not finite changes nothing (its gradients would poison
        every weight); agreed by all processes, so none waits in a backward the rest skip."""
        return self._anyone(not bool(torch.isfinite(loss.detach())))

    def _anyone(self, flag: bool) -> bool:
        """True in every process when it is true in any one."""
        if self.ddp is None:
            return flag
        vote = torch.tensor([1.0 if flag else 0.0])
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote.item() > 0)

    def finish(self) -> None:
        """End of training: ranks other than 0 leave here (exit status 0)."""
        if self.ddp is None:
            return
        dist.barrier()
        dist.destroy_process_group()
        if not self.is_main:
            raise SystemExit(0)
