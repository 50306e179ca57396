"""Run stage-1 (or, with ``STABLEMTL_STAGE=2``, stage-2) training from command-line flags and record what
every micro-batch held (used by tests).

    STABLEMTL_RECORD=dir python tests/training_worker.py --config ... [flags]
    STABLEMTL_RECORD=dir torchrun --standalone --nproc_per_node 2 tests/training_worker.py [flags]
    STABLEMTL_STAGE=2 STABLEMTL_RECORD=dir torchrun ... tests/training_worker.py --stage1_model ... [flags]

Each rank writes ``dir/rank<r>.jsonl`` (one line per micro-batch: step, whether the optimizer stepped,
tasks, sources, a fingerprint of every image) and, after its last optimizer step,
``dir/rank<r>.safetensors`` with its in-memory trained weights (stage 1: the UNet; stage 2: every
trainable parameter of the two-stream model).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from stablemtl.training import parse_args, train
from stablemtl.training.config import TrainConfig, parse_configs
from stablemtl.training.loop import train as train_loop
from stablemtl.training.objectives.lora import LoRATrainConfig
from stablemtl.training.objectives.multi_stream import MultiStreamConfig, stage2_objective


def main(argv: list[str] | None = None) -> None:
    stage2 = os.environ.get("STABLEMTL_STAGE") == "2"
    if stage2:
        config, model_config, lora_config = parse_configs(
            argv, TrainConfig, MultiStreamConfig, LoRATrainConfig
        )
    else:
        config = parse_args(argv)
    record = Path(os.environ["STABLEMTL_RECORD"])
    record.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    log = (record / f"rank{rank}.jsonl").open("a")

    def hook(step, groups, sync, modules) -> None:
        line = {
            "step": step,
            "sync": sync,
            "tasks": [g["task"] for g in groups],
            "sources": sorted({s for g in groups for s in g["source"]}),
            "images": [round(float(x), 4) for g in groups for x in g["image"].flatten(1).sum(1)],
        }
        log.write(json.dumps(line) + "\n")
        log.flush()
        if sync and step == config.max_train_steps - 1:
            if stage2:
                named = modules["multistream"].named_parameters()
                weights = {k: v.detach().contiguous().clone() for k, v in named if v.requires_grad}
            else:
                weights = {
                    k: v.detach().contiguous().clone() for k, v in modules["unet"].state_dict().items()
                }
            save_file(weights, str(record / f"rank{rank}.safetensors"))

    if stage2:
        train_loop(
            config,
            lambda tasks, cfg, res: stage2_objective(tasks, cfg, res, model_config, lora_config),
            on_micro_batch=hook,
        )
    else:
        train(config, on_micro_batch=hook)
    log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
