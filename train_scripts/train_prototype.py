"""Train the task-prototype baseline (docs/baselines-prototype.md) with the shared training loop.

    accelerate launch train_scripts/train_prototype.py --config configs/prototype.yaml \
        --train_data data/hypersim data/vkitti2 data/flyingthings3d --output_dir runs/prototype

Settings come from the YAML file given by ``--config``; every flag overrides it. ``--help`` lists the
loop's flags (as in diffusers' training examples) and the model's (``--prototype_*``, ``--lambda_tae``,
``--lambda_akg``, ``--alpha_tc``, ``--use_task_consistency``/``--no-use_task_consistency``). The saved
folder loads with ``PrototypeModel.from_pretrained``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from stablemtl.training.config import TrainConfig, parse_configs
from stablemtl.training.loop import train
from stablemtl.training.objectives.prototype import PrototypeConfig, PrototypeObjective


def main(argv: list[str] | None = None) -> Path:
    train_config, model_config = parse_configs(argv, TrainConfig, PrototypeConfig)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # The loop calls the factory once the data has decided the task list (extra arguments unused).
    return train(train_config, lambda tasks, *_: PrototypeObjective(model_config, tasks))


if __name__ == "__main__":
    main()
