"""Train a StableMTL single-stream model (stage 1), fully or as task-adaptive LoRA adapters.

    accelerate launch train_scripts/train_stablemtl.py --config configs/stage1.yaml \
        --pretrained_model_name_or_path stabilityai/stable-diffusion-2 --output_dir runs/s1
    # base UNet frozen, shared rank-8 adapter + rank-4 adapter per task on the decoder (docs/lora.md)
    accelerate launch train_scripts/train_stablemtl.py --config configs/stage1.yaml --output_dir runs/lora \
        --lora_rank 8 --lora_task_rank 4 [--lora_task_layers dec|all] [--lora_targets ...]

Settings come from the YAML file given by ``--config``; every flag overrides it (``--help`` lists them,
named as in diffusers' training examples). Multi-process on CPU: ``torchrun --standalone
--nproc_per_node 2 train_scripts/train_stablemtl.py ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stablemtl.training.config import TrainConfig, parse_configs
from stablemtl.training.loop import train
from stablemtl.training.objectives.lora import LoRATrainConfig, lora_objective_factory
from stablemtl.training.objectives.single_stream import stage1_objective


def main(argv: list[str] | None = None) -> Path:
    train_config, lora_config = parse_configs(argv, TrainConfig, LoRATrainConfig)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if not lora_config.enabled:
        return train(train_config, stage1_objective)
    return train(train_config, lora_objective_factory(lora_config))


if __name__ == "__main__":
    main()
