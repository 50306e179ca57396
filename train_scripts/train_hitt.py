"""Train the HiTT baseline (Zhang et al., MM'25) with the shared training loop.

    # phase 1: partial labels only
    accelerate launch train_scripts/train_hitt.py --config configs/hitt.yaml --output_dir runs/hitt_p1
    # phase 2: discover pseudo targets with the frozen phase-1 model, then retrain from scratch
    accelerate launch train_scripts/train_hitt.py --config configs/hitt.yaml --phase 2 \
        --phase1_model runs/hitt_p1 --output_dir runs/hitt

Settings: ``TrainConfig`` (data, optimisation, checkpoints, trackers) and ``HiTTConfig`` (model, ablation
switches, phase), from one YAML file plus flags (``--help`` lists both). The final folder holds
``config.json`` (``"model_type": "hitt"``) and ``model.safetensors``; ``stablemtl-eval --model`` scores it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stablemtl.training.config import TrainConfig, parse_configs
from stablemtl.training.hitt_training import train_hitt
from stablemtl.training.objectives.hitt import HiTTConfig


def main(argv: list[str] | None = None) -> Path:
    train_config, hitt_config = parse_configs(argv, TrainConfig, HiTTConfig)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train_hitt(train_config, hitt_config)


if __name__ == "__main__":
    main()
