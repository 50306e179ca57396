"""The demo's training runs: each model of the comparison, trained through the shared loop.

Every run writes its model folder under ``<out>/models/<name>`` and is reused when that folder is
complete; a run that was interrupted resumes from its last checkpoint, so an interrupted ``make demo``
continues where it stopped. All runs share the demo's data,
batch size and seed (``configs/demo.yaml``); each model keeps its own learning rate and step budget.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stablemtl.cli.parallel_runs import TrainingRun
from stablemtl.resources import config_file
from stablemtl.training import train
from stablemtl.training.config import TrainConfig, load_config, load_configs

logger = logging.getLogger("stablemtl.demo")


def _done(folder: Path, index: str) -> bool:
    if (folder / index).is_file():
        logger.info("reusing %s", folder)
        return True
    return False


# Runs up to this many steps (a few minutes at most) checkpoint and validate only at their end; longer
# ones also half way, so that an interrupted demo loses at most half a run.
SHORT_RUN_STEPS = 200


def _loop_settings(args, out: Path, name: str, data: Sequence[Path], steps: int, **extra: Any) -> dict:
    every = steps if steps <= SHORT_RUN_STEPS else steps // 2
    settings = {
        "train_data": [str(d) for d in data],
        "output_dir": str(out / "models" / name),
        "seed": args.seed,
        "max_train_steps": steps,
        "checkpointing_steps": every,
        "validation_steps": every,
        "resume_from_checkpoint": "latest",  # a fresh run when there is no checkpoint yet
    }
    if getattr(args, "validation_data", None):
        settings["validation_data"] = [str(d) for d in args.validation_data]
    return {**settings, **extra}


def demo_config_path(args) -> Path:
    """The stage-1 YAML of the demo: ``--config`` or the shipped ``configs/demo.yaml``."""
    return Path(args.config) if args.config else config_file("demo.yaml")


def train_stage1(
    args, out: Path, name: str, data: Sequence[Path], tasks: list[str] | None, steps: int
) -> Path:
    """StableMTL-S on ``tasks`` (all labelled tasks when None); a StableMTLPipeline folder."""
    settings = _loop_settings(args, out, name, data, steps, tasks=tasks)
    if args.base:
        settings["pretrained_model_name_or_path"] = args.base
    config = load_config(demo_config_path(args), **settings)
    folder = Path(config.output_dir)
    return folder if _done(folder, "model_index.json") else train(config)


def train_stage1_lora(args, out: Path, data: Sequence[Path], steps: int) -> Path:
    """StableMTL-S as task-adaptive LoRA adapters on the frozen base (docs/lora.md), same data and steps as
    the full stage-1 run, at ``args.lora_learning_rate`` (adapters take a larger rate than full weights)."""
    from stablemtl.training.loop import train as train_loop
    from stablemtl.training.objectives.lora import LoRATrainConfig, lora_objective_factory

    settings = _loop_settings(
        args, out, "stablemtl_s_lora", data, steps, learning_rate=args.lora_learning_rate
    )
    if args.base:
        settings["pretrained_model_name_or_path"] = args.base
    config = load_config(demo_config_path(args), **settings)
    folder = Path(config.output_dir)
    if _done(folder, "model_index.json"):
        return folder
    lora_config = LoRATrainConfig(lora_rank=args.lora_rank, lora_task_rank=args.lora_task_rank)
    return train_loop(config, lora_objective_factory(lora_config))


def train_stage2(args, out: Path, stage1: Path, data: Sequence[Path], steps: int) -> Path:
    """StableMTL (multi-stream) from the stage-1 folder: task attention only, for the demo's budget."""
    from stablemtl.training.loop import train as train_loop
    from stablemtl.training.objectives.multi_stream import MultiStreamConfig, stage2_objective

    settings = _loop_settings(
        args, out, "stablemtl", data, steps, stage1_model=str(stage1), train_only_task_attention=True
    )
    train_config, model_config = load_configs(
        demo_config_path(args), [TrainConfig, MultiStreamConfig], **settings
    )
    folder = Path(train_config.output_dir)
    if _done(folder, "model_index.json"):
        return folder
    return train_loop(
        train_config,
        lambda tasks, config, resolution: stage2_objective(tasks, config, resolution, model_config),
    )


def train_hitt(args, out: Path, data: Sequence[Path], steps: int) -> Path:
    """HiTT: phase 1 on the partial labels, then discovery and phase 2 from scratch (``steps`` each)."""
    from stablemtl.training.hitt_training import train_hitt as run_phase
    from stablemtl.training.objectives.hitt import HiTTConfig

    yaml = config_file("hitt.yaml")
    phase1 = out / "models" / "hitt_phase1"
    if not _done(phase1, "config.json"):
        run_phase(
            *load_configs(
                yaml, [TrainConfig, HiTTConfig], **_loop_settings(args, out, "hitt_phase1", data, steps)
            )
        )
    settings = _loop_settings(args, out, "hitt", data, steps, phase=2, phase1_model=str(phase1))
    train_config, hitt_config = load_configs(yaml, [TrainConfig, HiTTConfig], **settings)
    folder = Path(train_config.output_dir)
    return folder if _done(folder, "config.json") else run_phase(train_config, hitt_config)


def train_prototype(args, out: Path, data: Sequence[Path], steps: int) -> Path:
    """The task-prototype knowledge-retrieval baseline."""
    from stablemtl.training.loop import train as train_loop
    from stablemtl.training.objectives.prototype import PrototypeConfig, PrototypeObjective

    settings = _loop_settings(args, out, "prototype", data, steps)
    train_config, model_config = load_configs(
        config_file("demo_prototype.yaml"), [TrainConfig, PrototypeConfig], **settings
    )
    folder = Path(train_config.output_dir)
    if _done(folder, "config.json"):
        return folder
    return train_loop(train_config, lambda tasks, *_: PrototypeObjective(model_config, tasks))


def training_runs(
    args, out: Path, data: Sequence[Path], tasks: Sequence[str], stage1_steps: int, reference_steps: int
) -> list[TrainingRun]:
    """Every training run of the demo, in the order of the report and, longest first, of their start:
    StableMTL-S, its LoRA variant, StableMTL (after StableMTL-S), HiTT, the task-prototype model and one
    single-task reference per task (``single-task <task>``)."""
    runs = [
        TrainingRun(
            "StableMTL-S",
            "stablemtl_s",
            train_stage1,
            (args, out, "stablemtl_s", data, None, stage1_steps),
            stage1_steps,
        )
    ]
    if args.lora_rank:
        runs.append(
            TrainingRun(
                "StableMTL-S LoRA",
                "stablemtl_s_lora",
                train_stage1_lora,
                (args, out, data, stage1_steps),
                stage1_steps,
            )
        )
    if args.stage2_steps:
        stage1 = out / "models" / "stablemtl_s"
        runs.append(
            TrainingRun(
                "StableMTL",
                "stablemtl",
                train_stage2,
                (args, out, stage1, data, args.stage2_steps),
                args.stage2_steps,
                after=("StableMTL-S",),
            )
        )
    if args.hitt_steps:
        runs.append(
            TrainingRun("HiTT", "hitt", train_hitt, (args, out, data, args.hitt_steps), 2 * args.hitt_steps)
        )
    if args.prototype_steps:
        runs.append(
            TrainingRun(
                "task prototype",
                "prototype",
                train_prototype,
                (args, out, data, args.prototype_steps),
                args.prototype_steps,
            )
        )
    if not args.skip_references:
        runs += [
            TrainingRun(
                f"single-task {task}",
                f"single_{task}",
                train_stage1,
                (args, out, f"single_{task}", data, [task], reference_steps),
                reference_steps,
            )
            for task in tasks
        ]
    return runs
