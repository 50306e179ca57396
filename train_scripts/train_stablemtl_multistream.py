"""Train a StableMTL multi-stream model (stage 2) from a stage-1 model.

    accelerate launch train_scripts/train_stablemtl_multistream.py --config configs/stage2.yaml \
        --stage1_model runs/s1 --output_dir runs/s2 [--train_only_task_attention]
    # main UNet frozen, task-adaptive LoRA adapters on it, task attention trained fully (docs/lora.md)
    accelerate launch train_scripts/train_stablemtl_multistream.py --config configs/stage2.yaml \
        --stage1_model runs/s1 --output_dir runs/s2-lora --lora_rank 8 --lora_task_rank 4

The stage-1 UNet becomes the frozen auxiliary stream and the initial main stream; the task attention starts
at zero, so step 0 predicts exactly what stage 1 predicts. Every other setting (data, task isolation,
schedule, checkpoints, resume, push) is the shared loop's, as for stage 1 (``--help`` lists them).
"""

from __future__ import annotations

from pathlib import Path

from stablemtl.training.config import TrainConfig, parse_configs
from stablemtl.training.loop import train
from stablemtl.training.objectives.lora import LoRATrainConfig
from stablemtl.training.objectives.multi_stream import MultiStreamConfig, stage2_objective


def main(argv: list[str] | None = None) -> Path:
    train_config, model_config, lora_config = parse_configs(
        argv, TrainConfig, MultiStreamConfig, LoRATrainConfig
    )
    return train(
        train_config,
        lambda tasks, config, resolution: stage2_objective(
            tasks, config, resolution, model_config, lora_config
        ),
    )


if __name__ == "__main__":
    main()
