"""Run stage-1 training from command-line flags and record what every micro-batch held (used by tests).

    STABLEMTL_RECORD=dir python tests/training_worker.py --config ... [flags]
    STABLEMTL_RECORD=dir torchrun --standalone --nproc_per_node 2 tests/training_worker.py [flags]

Each rank writes ``dir/rank<r>.jsonl`` (one line per micro-batch: step, whether the optimizer stepped,
tasks, sources, a fingerprint of every image) and, after its last optimizer step,
``dir/rank<r>.safetensors`` with its in-memory UNet weights.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from safetensors.torch import save_file

from stablemtl.training import parse_args, train


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    record = Path(os.environ["STABLEMTL_RECORD"])
    record.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0"))
    log = (record / f"rank{rank}.jsonl").open("a")

    def hook(step, groups, sync, modules) -> None:
        unet = modules["unet"]
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
            weights = {k: v.detach().contiguous().clone() for k, v in unet.state_dict().items()}
            save_file(weights, str(record / f"rank{rank}.safetensors"))

    train(config, on_micro_batch=hook)
    log.close()


if __name__ == "__main__":
    main(sys.argv[1:])
