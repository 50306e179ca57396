"""StableMTL, the multi-stream model (paper §3.3): the stage-2 objective of the shared loop.

For a micro-batch of main task ``m`` the stage-1 latent step prepares the UNet input and the target
(:class:`~stablemtl.training.objectives.single_stream.StableMTLObjective`); the auxiliary tasks' inputs are
the same frame latents with each task's second-frame rule; then one no-grad auxiliary UNet call over the
auxiliary tasks and one main UNet call (``MultiStreamUNet``) predict the target latent, with the masked
latent MSE of stage 1. Trainable: the main UNet and the task attention (``train_only_task_attention``:
the task attention alone; with task-adaptive LoRA: the main UNet's adapters and the task attention);
frozen: the auxiliary (stage-1) UNet and the VAE.

Task masking draws come from a generator seeded, per micro-batch, from the run's seed and the micro-batch's
pixels, so a resumed run masks the same tasks as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stablemtl.models.attention_processors import CAPTURE_POINTS
from stablemtl.models.lora import TaskLoRA
from stablemtl.models.task_attention import FUSIONS, LAYER_CHOICES
from stablemtl.models.task_masking import MASKING_MODES, TaskMasking
from stablemtl.pipelines.pipeline_stablemtl_multistream import StableMTLMultiStreamPipeline
from stablemtl.tasks import get_task
from stablemtl.training.config import TrainConfig
from stablemtl.training.loss import masked_latent_mse
from stablemtl.training.objectives.lora import LoRATrainConfig, save_with_adapters
from stablemtl.training.objectives.single_stream import PreparedBatch, StableMTLObjective


def _setting(default: Any, text: str) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass
class MultiStreamConfig:
    """Stage-2 settings, parsed from the same YAML/flags as ``TrainConfig``."""

    stage1_model: str | None = _setting(None, "stage-1 pipeline folder or Hub id (the auxiliary stream)")
    train_only_task_attention: bool = _setting(False, "freeze the main UNet, train the task attention only")
    task_attention_layers: str = _setting("all", f"blocks with task attention: {', '.join(LAYER_CHOICES)}")
    task_attention_heads: int = _setting(4, "heads of the per-pixel task attention")
    task_attention_hidden_dim: int = _setting(640, "hidden width of the query MLPs")
    task_fusion: str = _setting("attention", f"ablation switch: {', '.join(FUSIONS)}")
    exclude_main_task: bool = _setting(True, "a task never attends to its own auxiliary features")
    capture_point: str = _setting("self_attn_residual", "where auxiliary features are read")
    task_masking: str = _setting("attn_prob", f"task masking mode: none, {', '.join(MASKING_MODES)}")
    task_masking_ratio: float = _setting(0.4, "probability of masking, per layer and sample")
    task_masking_per_batch: bool = _setting(False, "one masking decision per batch (official) not per sample")

    def __post_init__(self) -> None:
        if self.task_attention_layers not in LAYER_CHOICES:
            raise ValueError(f"task_attention_layers must be one of {LAYER_CHOICES}")
        if self.task_fusion not in FUSIONS:
            raise ValueError(f"task_fusion must be one of {FUSIONS}")
        if self.capture_point not in CAPTURE_POINTS:
            raise ValueError(f"capture_point must be one of {CAPTURE_POINTS}")
        if self.task_masking != "none" and self.task_masking not in MASKING_MODES:
            raise ValueError(f"task_masking must be 'none' or one of {MASKING_MODES}")
        TaskMasking(self.task_masking_ratio)  # validates the ratio


class MultiStreamObjective(StableMTLObjective):
    """Trains a ``StableMTLMultiStreamPipeline``'s main UNet and task attention.

    Args:
        pipe: the multi-stream pipeline (e.g. ``StableMTLMultiStreamPipeline.from_stage1``).
        config: the stage-2 settings (masking, which parts train).
        training_info: facts recorded in the saved pipeline's model card.
        latent_cache_mb: host memory for latents of images met before (as in the stage-1 objective).
    """

    # Each micro-batch trains one main task: the other tasks' query MLPs (and, with exclude_main_task, the
    # main task's own key/value MLPs) get no gradient, so DDP must look for unused parameters (as officially).
    ddp_find_unused_parameters = True

    def __init__(
        self,
        pipe: StableMTLMultiStreamPipeline,
        config: MultiStreamConfig | None = None,
        training_info: Mapping[str, Any] | None = None,
        latent_cache_mb: float = 0.0,
    ):
        super().__init__(pipe, training_info, latent_cache_mb)
        self.config = config or MultiStreamConfig()
        self.seed = int(self.info.get("seed", 0))
        self.model = pipe.multistream
        if self.config.train_only_task_attention:
            self.model.unet.requires_grad_(False)
        self.model.task_attention.requires_grad_(True)
        # Task-adaptive LoRA on the main UNet (docs/lora.md), installed by stage2_objective: the adapters
        # and gates train, the main UNet's own weights stay frozen, the task attention trains fully.
        self.lora: TaskLoRA | None = pipe.task_lora

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        # One module: the processors call the task attention from inside the main UNet, so DDP must wrap
        # the whole two-stream forward. Its frozen auxiliary UNet has no trainable parameters.
        return {"multistream": self.model}

    def setup(self, device: torch.device, weight_dtype: torch.dtype) -> None:
        super().setup(device, weight_dtype)
        self.model.aux_unet.to(device=device, dtype=weight_dtype)

    def masking(self, groups: Sequence[Mapping]) -> TaskMasking | None:
        """This micro-batch's masking, or None (mode none, or evaluation without gradients).

        The generator is seeded from the run's seed and the micro-batch's pixels: the sampler makes the data
        of every step exactly reproducible (also across a resume), so the masking draws are too, without a
        random state of their own to checkpoint."""
        if self.config.task_masking == "none" or not torch.is_grad_enabled():
            return None
        digest = hashlib.blake2b(str(self.seed).encode(), digest_size=8)
        for group in groups:
            digest.update(group["image"].detach().cpu().contiguous().numpy().tobytes())
        return TaskMasking(
            self.config.task_masking_ratio,
            self.config.task_masking,
            per_batch=self.config.task_masking_per_batch,
            generator=torch.Generator().manual_seed(int.from_bytes(digest.digest(), "little") >> 1),
        )

    def stream_inputs(
        self, batch: PreparedBatch, tasks: Sequence[str], next_latents: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """``{task: (B, 12, h, w)}`` for the main task of ``batch`` and ``tasks``: the main sample's frame
        latents and target slot, the next frame's latents ``next_latents`` for pair tasks (when there is a
        next frame), the ``second_frame`` fallback for the others."""
        z1, _, y_in = batch.sample.split(4, dim=1)
        fallback = z1 if self.pipe.config.second_frame == "duplicate" else torch.zeros_like(z1)
        inputs = {batch.tasks[0]: batch.sample}
        for task in tasks:
            if task not in inputs:
                pair = next_latents is not None and get_task(task).needs_pair
                inputs[task] = torch.cat([z1, next_latents if pair else fallback, y_in], dim=1)
        return inputs

    def loss(self, modules: Mapping[str, torch.nn.Module], groups: Sequence[Mapping]) -> torch.Tensor:
        model = modules["multistream"]
        masking = self.masking(groups)
        predictions, targets, masks = [], [], []
        for group in groups:  # one under task isolation
            batch = self.prepare([group])
            main = batch.tasks[0]
            aux = self.model.aux_tasks_for([main])
            next_latents = self._next_latents(group, batch, aux)
            inputs = self.stream_inputs(batch, aux, next_latents)
            if self.lora is not None:
                # Set, not scoped: gradient checkpointing re-runs the main UNet's forward during backward.
                self.lora.set_routing(main)
            out = model(inputs, [main], self.pipe.task_embeddings, self.pipe.config.timestep, masking)
            predictions.append(out.main[main])
            targets.append(batch.target)
            masks.append(batch.mask)
        return masked_latent_mse(torch.cat(predictions), torch.cat(targets), torch.cat(masks))

    @torch.no_grad()
    def _next_latents(self, group: Mapping, batch: PreparedBatch, aux: Sequence[str]) -> torch.Tensor | None:
        """The next frame's latents if an auxiliary task needs them (None without a next frame): those of
        the main sample for a pair main task, else one more VAE call."""
        if group.get("next_image") is None or not any(get_task(t).needs_pair for t in aux):
            return None
        if get_task(batch.tasks[0]).needs_pair:
            return batch.sample[:, 4:8]
        device = self.step.vae.device
        return self.step.encode(group["next_image"].to(device) * 2 - 1).to(self.dtype)

    @torch.no_grad()
    def predict(
        self,
        modules: Mapping[str, torch.nn.Module],
        images: torch.Tensor,
        next_images: torch.Tensor | None,
        tasks: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        model = modules["multistream"]
        device = self.step.vae.device
        frames = images.to(device) * 2 - 1
        count = frames.shape[0]
        if next_images is not None:
            frames = torch.cat([frames, next_images.to(device) * 2 - 1])
        latents = self.step.encode(frames).to(self.dtype)  # one VAE call for both frames
        first = latents[:count]
        second = latents[count:] if next_images is not None else first
        inputs = self.pipe.stream_samples(first, second, tasks, use_pair=next_images is not None)
        with self.pipe.lora_routing(tasks, count, task_major=True):
            out = model(inputs, list(tasks), self.pipe.task_embeddings, self.pipe.config.timestep)
        return {name: get_task(name).decode(self.step.decode(out.main[name])) for name in tasks}

    def save_model(self, modules: Mapping[str, torch.nn.Module], output_dir: Path) -> None:
        """Save the multi-stream pipeline with the trained main UNet and task attention."""
        self.log_latent_cache()
        model = modules["multistream"]
        self.pipe.register_modules(
            unet=model.unet, aux_unet=model.aux_unet, task_attention=model.task_attention
        )
        for module in (self.pipe.vae, model.aux_unet):
            if module.dtype != torch.float32:
                module.to(dtype=torch.float32)
        self.pipe.set_training_info(**self.info)
        if self.lora is None:
            self.pipe.save_pretrained(output_dir)
        else:  # the folder: the pipeline with the frozen main UNet, plus the main UNet's adapters
            self.lora = save_with_adapters(
                self.pipe, output_dir, lambda: self.pipe.save_pretrained(output_dir)
            )


def stage2_objective(
    tasks: list[str],
    config: TrainConfig,
    resolution: int,
    model_config: MultiStreamConfig,
    lora_config: LoRATrainConfig | None = None,
) -> MultiStreamObjective:
    """The stage-2 objective of a run: an untrained multi-stream pipeline from ``--stage1_model``; with
    ``lora_config.lora_rank``, task-adaptive LoRA adapters on its main UNet instead of full fine-tuning."""
    if not model_config.stage1_model:
        raise ValueError("--stage1_model is required: the stage-1 pipeline folder or Hub id")
    lora = lora_config if lora_config is not None and lora_config.enabled else None
    if lora is not None and model_config.train_only_task_attention:
        raise ValueError(
            "--lora_rank adapts the main UNet, --train_only_task_attention freezes it: choose one"
        )
    pipe = StableMTLMultiStreamPipeline.from_stage1(
        model_config.stage1_model,
        tasks=tasks,
        layers=model_config.task_attention_layers,
        n_heads=model_config.task_attention_heads,
        query_hidden_dim=model_config.task_attention_hidden_dim,
        fusion=model_config.task_fusion,
        exclude_main_task=model_config.exclude_main_task,
        capture_point=model_config.capture_point,
    )
    pipe.register_to_config(
        **config.latent_step_settings().to_dict(), default_processing_resolution=resolution
    )
    info = {
        "stage1_model": model_config.stage1_model,
        "tasks": {"names": list(tasks)},
        "train_data": {"folders": [str(p) for p in config.train_data]},
        "max_train_steps": config.max_train_steps,
        "learning_rate": config.learning_rate,
        "seed": config.seed,
        "resolution": resolution,
        "multi_stream": {
            "layers": model_config.task_attention_layers,
            "fusion": model_config.task_fusion,
            "task_masking": model_config.task_masking,
            "task_masking_ratio": model_config.task_masking_ratio,
            "train_only_task_attention": model_config.train_only_task_attention,
        },
    }
    if lora is not None:
        settings = lora.settings(tasks, config.seed)
        pipe.install_task_lora(settings)
        info["lora"] = settings.to_dict()
    return MultiStreamObjective(pipe, model_config, info, config.latent_cache_mb)
