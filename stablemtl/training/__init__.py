"""stablemtl.training: the stage-1 loop behind ``train_scripts/train_stablemtl.py``.

``main(argv)`` parses flags (``--config run.yaml`` plus overrides) and trains; ``train(config)`` is the
same from a :class:`TrainConfig`, for the demo and tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from stablemtl.training.config import TrainConfig, build_parser, load_config, parse_args


def train(config: TrainConfig, on_micro_batch: Callable | None = None) -> Path:
    """Run stage-1 training (see :func:`stablemtl.training.loop.train`)."""
    from stablemtl.training.loop import train as _train  # heavy imports only when training

    return _train(config, on_micro_batch=on_micro_batch)


def main(argv: list[str] | None = None) -> Path:
    """Command-line entry point: ``main(["--config", "configs/demo.yaml", "--max_train_steps", "10"])``."""
    config = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    return train(config)


__all__ = ["TrainConfig", "build_parser", "load_config", "main", "parse_args", "train"]
