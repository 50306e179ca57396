"""The stage-1 objective: one deterministic step from image latents to the latent of a task's label.

For a micro-batch of task ``m`` (spec §2, §3.3):

1. the frozen VAE encodes the frame ``z1``, the next frame ``z2`` (flow tasks with a pair; otherwise
   ``z2 = z1``, the official "duplicate" mode, or zeros) and the label drawn by ``Task.encode`` as a
   3-channel image, giving the target latent; posterior means times ``vae.config.scaling_factor``;
   all images of the micro-batch go through the VAE as one call;
2. the UNet sees ``cat[z1, z2, 0]`` (12 channels) at the fixed timestep, conditioned on the task
   embedding, and predicts the target latent directly (x0 prediction);
3. the loss is the masked latent MSE with ``Task.latent_valid_mask``.

A micro-batch is a list of *groups*, each the output of ``collate_task_batch`` for one task: one group
under task isolation, one group per task present under the ``joint`` ablation (the groups share a
source, hence a resolution, and the task prompts are padded with an ``encoder_attention_mask``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from stablemtl.models.task_tokens import TaskEmbeddings
from stablemtl.tasks import get_task
from stablemtl.training.loss import masked_latent_mse


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


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """``(N,3,H,W)`` images in [-1, 1] -> ``(N,4,H/8,W/8)`` posterior means times the scaling factor."""
    latents = vae.encode(images.to(dtype=vae.dtype)).latent_dist.mean
    return latents * vae.config.scaling_factor


class StableMTLObjective:
    """Turns collated micro-batches into UNet inputs and computes the masked latent MSE.

    Args:
        vae: the frozen VAE (its device and dtype are used for the inputs).
        task_embeddings: the cached task-prompt embeddings.
        timestep: the fixed timestep (999).
        second_frame: ``"duplicate"`` (``z2 = z1`` when there is no second frame) or ``"zero"``.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        task_embeddings: TaskEmbeddings,
        timestep: int = 999,
        second_frame: str = "duplicate",
    ):
        if second_frame not in ("duplicate", "zero"):
            raise ValueError(f"second_frame must be 'duplicate' or 'zero', got {second_frame!r}")
        self.vae, self.task_embeddings = vae, task_embeddings
        self.timestep, self.second_frame = timestep, second_frame

    @torch.no_grad()
    def prepare(self, groups: Sequence[Mapping], dtype: torch.dtype | None = None) -> PreparedBatch:
        """Encode one micro-batch (a list of per-task collated groups) into a :class:`PreparedBatch`."""
        if not groups:
            raise ValueError("a micro-batch needs at least one group")
        device = self.vae.device
        dtype = dtype or self.vae.dtype
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
        latents = encode_latents(self.vae, torch.cat(images)).to(dtype)
        z1 = torch.cat([latents[frame] for frame, _, _ in plan])
        z2 = torch.cat([self._second(latents, frame, second) for frame, second, _ in plan])
        target = torch.cat([latents[label] for _, _, label in plan])
        sample = torch.cat([z1, z2, torch.zeros_like(z1)], dim=1)  # [B,12,h,w]; y_in = 0 (deterministic)
        hidden, attention_mask = self.task_embeddings.batch(tasks, device=device, dtype=dtype)  # [B,L,D]
        return PreparedBatch(sample, hidden, attention_mask, target, torch.cat(masks), tasks)

    def _second(self, latents: torch.Tensor, frame: slice, second: slice | None) -> torch.Tensor:
        if second is not None:
            return latents[second]
        return latents[frame] if self.second_frame == "duplicate" else torch.zeros_like(latents[frame])

    def predict(self, unet: UNet2DConditionModel, batch: PreparedBatch) -> torch.Tensor:
        """The UNet's x0 prediction ``[B,4,h,w]`` of the target latent."""
        timesteps = torch.full((batch.sample.shape[0],), self.timestep, device=batch.sample.device)
        return unet(
            batch.sample,
            timesteps,
            encoder_hidden_states=batch.encoder_hidden_states,
            encoder_attention_mask=batch.encoder_attention_mask,
        ).sample

    def loss(self, unet: UNet2DConditionModel, batch: PreparedBatch) -> torch.Tensor:
        """The masked latent MSE of ``unet`` on ``batch`` (a float32 scalar)."""
        return masked_latent_mse(self.predict(unet, batch), batch.target, batch.mask)
