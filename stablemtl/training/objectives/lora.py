"""Stage 1 with task-adaptive LoRA (docs/lora.md): the single-stream objective, base UNet frozen.

:class:`TaskLoRAObjective` is :class:`~stablemtl.training.objectives.single_stream.StableMTLObjective`
(same inputs, same latent loss, same validation) with :class:`~stablemtl.models.lora.TaskLoRA` installed on
its UNet: the optimizer sees only the adapters and their gates, and every UNet call is routed so that each
sample uses the shared adapter plus its own task's adapter. The final folder holds the frozen base pipeline
plus ``pytorch_lora_weights.safetensors``; ``StableMTLPipeline.from_pretrained(folder)`` followed by
``load_lora_weights(folder)`` restores the trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stablemtl.models.lora import DEFAULT_TARGETS, TASK_LAYER_CHOICES, TaskLoRA, TaskLoRASettings
from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline
from stablemtl.training.config import TrainConfig
from stablemtl.training.objectives.single_stream import PreparedBatch, StableMTLObjective, stage1_objective


@dataclass
class LoRATrainConfig:
    """The LoRA flags of the stage-1 training script; without ``lora_rank`` the UNet trains fully."""

    lora_rank: int | None = field(
        default=None, metadata={"help": "rank R of the shared adapter; set it to train LoRA adapters only"}
    )
    lora_task_rank: int | None = field(
        default=None, metadata={"help": "rank r of each task's adapter (default: --lora_rank)"}
    )
    lora_task_layers: str = field(
        default="dec",
        metadata={"help": f"layers carrying task adapters, one of {TASK_LAYER_CHOICES} (dec: up_blocks)"},
    )
    lora_targets: list[str] = field(
        default_factory=lambda: list(DEFAULT_TARGETS),
        metadata={"help": "module-name suffixes the adapters wrap (peft target_modules)"},
    )

    def __post_init__(self) -> None:
        if self.lora_task_rank is not None and self.lora_rank is None:
            raise ValueError("--lora_task_rank needs --lora_rank")

    @property
    def enabled(self) -> bool:
        return self.lora_rank is not None

    def settings(self, tasks: Sequence[str], seed: int) -> TaskLoRASettings:
        """The adapter settings for ``tasks``; ``ValueError`` naming a bad flag."""
        settings = TaskLoRASettings(
            rank=self.lora_rank,
            task_rank=self.lora_task_rank if self.lora_task_rank is not None else self.lora_rank,
            tasks=list(tasks),
            task_layers=self.lora_task_layers,
            targets=list(self.lora_targets),
            seed=seed,
        )
        try:
            settings.validate()
        except ValueError as error:
            raise ValueError(f"--lora_*: {error}") from error
        return settings


class TaskLoRAObjective(StableMTLObjective):
    """The stage-1 objective training only shared + per-task adapters and the task gates.

    Args:
        pipe: the pipeline to adapt; its UNet is frozen and gets the adapters.
        settings: the adapters' ranks, layers, targets and tasks.
        training_info: facts for the model card.
        latent_cache_mb: host memory for latents of images met before (as in the stage-1 objective).
    """

    # A micro-batch of task m leaves the other tasks' adapters and gates without a gradient.
    ddp_find_unused_parameters = True

    def __init__(
        self,
        pipe: StableMTLPipeline,
        settings: TaskLoRASettings,
        training_info: Mapping[str, Any] | None = None,
        latent_cache_mb: float = 0.0,
    ):
        super().__init__(pipe, training_info, latent_cache_mb)
        self.lora = pipe.install_task_lora(settings)
        self.info["lora"] = settings.to_dict()

    def predict_latents(self, unet: torch.nn.Module, batch: PreparedBatch) -> torch.Tensor:
        # Set, not scoped: gradient checkpointing re-runs this forward during backward.
        self.lora.set_routing(batch.tasks)
        return super().predict_latents(unet, batch)

    @torch.no_grad()
    def predict(
        self,
        modules: Mapping[str, torch.nn.Module],
        images: torch.Tensor,
        next_images: torch.Tensor | None,
        tasks: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        out = {}
        for task in tasks:
            with self.lora.routing(task):
                out.update(super().predict(modules, images, next_images, [task]))
        return out

    def save_model(self, modules: Mapping[str, torch.nn.Module], output_dir: Path) -> None:
        """The frozen base pipeline folder plus the adapters (``pytorch_lora_weights.safetensors``)."""
        self.pipe.register_modules(unet=modules["unet"])
        self.lora = save_with_adapters(
            self.pipe, output_dir, lambda: super(TaskLoRAObjective, self).save_model(modules, output_dir)
        )


def save_with_adapters(pipe: StableMTLPipeline, output_dir: Path, save_base: Callable[[], None]) -> TaskLoRA:
    """Write ``pipe``'s task-adaptive adapters (``pytorch_lora_weights.safetensors``) into ``output_dir``,
    then the base pipeline through ``save_base`` with the adapters taken off (the folder's UNet is the frozen
    base, ``from_pretrained`` puts the adapters back on). Returns the reinstalled adapters, so that the
    objective stays usable; the optimizer's parameters are gone with the old ones (call it at the end)."""
    lora = pipe.task_lora
    state = lora.state_dict()
    pipe.save_lora_weights(output_dir, base_model="this folder's pipeline")
    pipe.unload_lora_weights()
    save_base()
    restored = pipe.install_task_lora(lora.settings)
    restored.load_state_dict(state)
    return restored


def lora_objective_factory(lora_config: LoRATrainConfig):
    """An ``objective_factory`` for :func:`stablemtl.training.loop.train`: stage 1 with TA-LoRA."""

    def factory(tasks: list[str], config: TrainConfig, resolution: int) -> TaskLoRAObjective:
        settings = lora_config.settings(tasks, config.seed)
        base = stage1_objective(tasks, config, resolution)
        return TaskLoRAObjective(base.pipe, settings, base.info, config.latent_cache_mb)

    return factory
