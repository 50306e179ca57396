"""stablemtl.training: the one loop behind every ``train_scripts/`` entry point.

``main(argv)`` parses flags (``--config run.yaml`` plus overrides) and trains stage 1; ``train(config)``
is the same from a :class:`TrainConfig`, for the demo and tests. Other models call
:func:`stablemtl.training.loop.train` with their own objective factory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from stablemtl.training.config import TrainConfig, build_parser, load_config, parse_args, parse_configs


def train(config: TrainConfig, on_micro_batch: Callable | None = None) -> Path:
    """Run stage-1 (StableMTL-S) training (see :func:`stablemtl.training.loop.train`)."""
    from stablemtl.training.loop import train as _train  # heavy imports only when training
    from stablemtl.training.objectives.single_stream import stage1_objective

    return _train(config, stage1_objective, on_micro_batch=on_micro_batch)


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point: ``main(["--config", "configs/demo.yaml", "--max_train_steps", "10"])``."""
    config = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(config)


__all__ = ["TrainConfig", "build_parser", "load_config", "main", "parse_args", "parse_configs", "train"]
