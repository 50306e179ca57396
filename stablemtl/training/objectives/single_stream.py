"""StableMTL-S, the single-stream model (docs/architecture.md): the stage-1 objective of the shared loop.

For a micro-batch of task ``m``:

1. the frozen VAE encodes the frame, the next frame (flow tasks with a pair; otherwise the
   ``second_frame`` fallback) and the label drawn as a 3-channel image by ``Task.encode`` (the target),
   all images of the micro-batch in one VAE call (:class:`~stablemtl.models.latent_step.LatentStep`);
2. the UNet sees ``cat[z1, z2, y_in]`` at the fixed timestep, conditioned on the task token, and
   predicts the target latent directly (x0 prediction);
3. the loss is the masked latent MSE with ``Task.latent_valid_mask`` (docs/training.md).

A micro-batch is a list of per-task groups: one under task isolation, one per task under the ``joint``
ablation (the groups share a source, hence a resolution; the task prompts are padded with an
``encoder_attention_mask``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stablemtl.models.latent_cache import LatentCache
from stablemtl.models.latent_step import LatentStep
from stablemtl.pipelines.pipeline_stablemtl import StableMTLPipeline
from stablemtl.tasks import get_task
from stablemtl.training.components import load_pipeline
from stablemtl.training.config import TrainConfig
from stablemtl.training.loss import masked_latent_mse
from stablemtl.training.objectives.base import Objective

logger = logging.getLogger(__name__)


@dataclass
class PreparedBatch:
    """UNet inputs and targets of one micro-batch (no gradient flows into them).

    ``sample`` ``[B,12,h,w]``; ``encoder_hidden_states`` ``[B,L,D]``; ``encoder_attention_mask``
    ``[B,L]`` bool or None; ``target`` ``[B,4,h,w]``; ``mask`` ``[B,h,w]`` bool; ``tasks`` one name
    per sample.
    """

    sample: torch.Tensor
    encoder_hidden_states: torch.Tensor
    encoder_attention_mask: torch.Tensor | None
    target: torch.Tensor
    mask: torch.Tensor
    tasks: list[str]


class StableMTLObjective(Objective):
    """Trains ``pipe.unet`` to regress task latents with the pipeline's own latent step.

    Args:
        pipe: the ``StableMTLPipeline`` being trained; its config carries the latent-step settings
            (timestep, second_frame, input_noise), so the saved pipeline infers as it was trained.
        training_info: facts recorded in the saved pipeline's model card.
        latent_cache_mb: keep the frozen VAE's latents of images met before, up to this many MB in host
            memory (``--latent_cache_mb``, :mod:`stablemtl.models.latent_cache`); 0 encodes every image.
    """

    def __init__(
        self,
        pipe: StableMTLPipeline,
        training_info: Mapping[str, Any] | None = None,
        latent_cache_mb: float = 0.0,
    ):
        if latent_cache_mb < 0:
            raise ValueError(f"latent_cache_mb must be >= 0, got {latent_cache_mb}")
        self.pipe = pipe
        self.step = pipe.latent_step
        self.info = dict(training_info or {})
        self.dtype = pipe.vae.dtype
        self.latent_cache_mb = latent_cache_mb

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.pipe.unet}

    def setup(self, device: torch.device, weight_dtype: torch.dtype) -> None:
        # Under mixed precision encode with a low-precision copy: casting pipe.vae in place would round
        # the frozen weights that the final pipeline saves.
        vae = self.pipe.vae
        if weight_dtype != vae.dtype:
            vae = copy.deepcopy(vae).to(dtype=weight_dtype)
        cache = LatentCache(int(self.latent_cache_mb * 2**20)) if self.latent_cache_mb else None
        self.step = LatentStep(vae.to(device), self.step.settings, cache)
        self.dtype = weight_dtype

    def log_latent_cache(self) -> None:
        """Log how many VAE encodings the latent cache saved (nothing without a cache)."""
        cache = self.step.cache
        if cache is not None:
            logger.info(cache.memo.summary())

    @torch.no_grad()
    def prepare(self, groups: Sequence[Mapping]) -> PreparedBatch:
        """Encode one micro-batch (a list of per-task collated groups) into a :class:`PreparedBatch`."""
        if not groups:
            raise ValueError("a micro-batch needs at least one group")
        device = self.step.vae.device
        images: list[torch.Tensor] = []  # every image of the micro-batch, for one VAE call

        def add(x: torch.Tensor) -> slice:
            start = sum(i.shape[0] for i in images)
            images.append(x)
            return slice(start, start + x.shape[0])

        plan, masks, tasks = [], [], []
        for group in groups:
            task = get_task(group["task"])
            label_image, valid = task.encode(group["label"].to(device), group["valid"].to(device))
            frame = add(group["image"].to(device) * 2 - 1)
            pair = task.needs_pair and group.get("next_image") is not None
            second = add(group["next_image"].to(device) * 2 - 1) if pair else None
            plan.append((frame, second, add(label_image)))
            masks.append(task.latent_valid_mask(valid))
            tasks += [task.name] * (frame.stop - frame.start)
        latents = self.step.encode(torch.cat(images)).to(self.dtype)
        z1 = torch.cat([latents[frame] for frame, _, _ in plan])
        # Samples without a pair get the second-frame fallback: pass their own frame as a placeholder.
        z2 = torch.cat([latents[second if second is not None else frame] for frame, second, _ in plan])
        has_pair = torch.cat(
            [torch.full((f.stop - f.start,), s is not None, device=device) for f, s, _ in plan]
        )
        target = torch.cat([latents[label] for _, _, label in plan])
        sample = self.step.unet_input(z1, z2, has_pair)  # [B,12,h,w]
        hidden, attention_mask = self.pipe.task_embeddings.batch(tasks, device=device, dtype=self.dtype)
        return PreparedBatch(sample, hidden, attention_mask, target, torch.cat(masks), tasks)

    def predict_latents(self, unet: torch.nn.Module, batch: PreparedBatch) -> torch.Tensor:
        """The UNet's x0 prediction ``[B,4,h,w]`` of the target latent."""
        return self.step.predict(
            unet, batch.sample, batch.encoder_hidden_states, batch.encoder_attention_mask
        )

    def loss(self, modules: Mapping[str, torch.nn.Module], groups: Sequence[Mapping]) -> torch.Tensor:
        batch = self.prepare(groups)
        return masked_latent_mse(self.predict_latents(modules["unet"], batch), batch.target, batch.mask)

    @torch.no_grad()
    def predict(
        self,
        modules: Mapping[str, torch.nn.Module],
        images: torch.Tensor,
        next_images: torch.Tensor | None,
        tasks: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        device = self.step.vae.device
        frames = images.to(device) * 2 - 1
        count = frames.shape[0]
        if next_images is not None:
            frames = torch.cat([frames, next_images.to(device) * 2 - 1])
        latents = self.step.encode(frames).to(self.dtype)
        first = latents[:count]
        second = latents[count:] if next_images is not None else first
        out = {}
        for name in tasks:
            task = get_task(name)
            has_pair = torch.full((count,), task.needs_pair and next_images is not None, device=device)
            hidden, mask = self.pipe.task_embeddings.batch([name] * count, device=device, dtype=self.dtype)
            sample = self.step.unet_input(first, second, has_pair)
            x0 = self.step.predict(modules["unet"], sample, hidden, mask)
            out[name] = task.decode(self.step.decode(x0))
        return out

    def save_model(self, modules: Mapping[str, torch.nn.Module], output_dir: Path) -> None:
        """Save the pipeline with the trained UNet. The VAE is saved as ``pipe`` holds it (float32: the
        encoding copy of :meth:`setup` is not saved), so the saved VAE is the base's, bit for bit."""
        self.log_latent_cache()
        self.pipe.register_modules(unet=modules["unet"])
        if self.pipe.vae.dtype != torch.float32:
            self.pipe.vae.to(dtype=torch.float32)
        self.pipe.set_training_info(**self.info)
        # Writes into output_dir beside checkpoints and logs; model_index.json comes last.
        self.pipe.save_pretrained(output_dir)


def stage1_objective(tasks: list[str], config: TrainConfig, resolution: int) -> StableMTLObjective:
    """The stage-1 objective of a run: the pipeline from ``config``'s base, set to infer as it trains
    (latent-step settings, processing resolution) and recording the run for its model card."""
    pipe = load_pipeline(
        config.resolve_base(), tasks, config.revision, variant=config.variant, cache_dir=config.cache_dir
    )
    pipe.register_to_config(
        **config.latent_step_settings().to_dict(), default_processing_resolution=resolution
    )
    info = {
        "tasks": {"names": list(config.tasks or pipe.tasks)},
        "train_data": {"folders": [str(p) for p in config.train_data]},
        "max_train_steps": config.max_train_steps,
        "effective_batch_size": config.train_batch_size * config.gradient_accumulation_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler": config.lr_scheduler,
        "mixed_precision": config.mixed_precision or "accelerate default",
        "seed": config.seed,
        "resolution": resolution,
        "task_sampling": config.task_sampling,
        "task_grouping": config.task_grouping,
    }
    return StableMTLObjective(pipe, info, config.latent_cache_mb)
