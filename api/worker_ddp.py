"""One training job on several processes, for the worker: `python -m api.worker_ddp`.

The worker (api.worker) launches this module with torchrun when a job asks for
`processes` > 1: every process trains through twin.train (DistributedDataParallel, see
twin.distributed); rank 0 prints one `EPOCH {json}` line per epoch (the worker stores it
as the job's progress) and writes the checkpoint, which the worker then registers.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from twin.logs import read_log
from twin.model import JEPAConfig
from twin.spec import ProcessSpec
from twin.train import TrainConfig, train_twin

EPOCH_PREFIX = "EPOCH "


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    fields = dict(data)
    model = JEPAConfig.from_dict(fields.pop("model"))
    return replace(TrainConfig(**fields), model=model)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True, help="process spec (JSON)")
    parser.add_argument("--config", type=Path, required=True, help="TrainConfig (JSON)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    spec = ProcessSpec.load(args.spec)
    cfg = config_from_dict(json.loads(args.config.read_text()))
    df = read_log(args.data)

    def on_epoch(epoch: Any) -> None:
        if os.environ.get("RANK", "0") == "0":
            print(EPOCH_PREFIX + json.dumps(asdict(epoch)), flush=True)

    twin, _history = train_twin(df, spec, cfg, show_progress=False, on_epoch=on_epoch)
    twin.save(args.out)  # only rank 0 gets here (twin.distributed.Trainer.finish)


if __name__ == "__main__":
    main()
