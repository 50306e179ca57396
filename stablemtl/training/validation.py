"""Validation during training: the latent loss per task and a PNG grid of predictions.

Each row of the grid is one task; each image contributes three tiles: the input frame, the label and
the prediction, both drawn by ``Task.visualize`` (the label after the ``encode``/``decode`` round trip,
so that it is in the prediction's space, e.g. affine-normalised depth).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils import make_image_grid
from PIL import Image
from torch.utils.data import Dataset

from stablemtl.data import collate_task_batch
from stablemtl.tasks import get_task
from stablemtl.training.loss import masked_latent_mse
from stablemtl.training.objective import StableMTLObjective

logger = logging.getLogger(__name__)


def validation_groups(datasets: Sequence[Dataset], tasks: Sequence[str], num_images: int) -> list[dict]:
    """One collated group per task: the first ``num_images`` samples of the first source labelling it."""
    groups = []
    for task in tasks:
        source = next((d for d in datasets if task in d.tasks), None)
        if source is None:
            logger.warning("no validation source labels %s: it is left out of validation", task)
            continue
        samples = [source[i] for i in range(min(num_images, len(source)))]
        groups.append(collate_task_batch(samples, task))
    return groups


def _to_pil(image: torch.Tensor) -> Image.Image:
    """``(3,H,W)`` in [0, 1] -> PIL RGB."""
    array = (image.clamp(0, 1).permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array)


@torch.no_grad()
def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """``(B,4,h,w)`` latents -> ``(B,3,8h,8w)`` images clipped to [-1, 1] (spec §1.1 decoding)."""
    images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    return images.float().clamp(-1, 1)


@torch.no_grad()
def run_validation(
    objective: StableMTLObjective,
    unet: UNet2DConditionModel,
    groups: Sequence[dict],
    dtype: torch.dtype | None = None,
) -> tuple[dict[str, float], Image.Image]:
    """Predict every validation group; return ``({task: latent MSE}, grid image)``."""
    losses, tiles, cols = {}, [], 0
    for group in groups:
        task = get_task(group["task"])
        batch = objective.prepare([group], dtype=dtype)
        prediction = objective.predict(unet, batch)
        losses[task.name] = float(masked_latent_mse(prediction, batch.target, batch.mask))
        predicted = task.decode(decode_latents(objective.vae, prediction))
        label_image, _ = task.encode(group["label"], group["valid"])
        label = task.decode(label_image)
        row = []
        for i in range(predicted.shape[0]):
            image, truth, guess = group["image"][i], label[i].cpu(), predicted[i].cpu()
            row += [_to_pil(image), task.visualize(truth), task.visualize(guess)]
        cols = max(cols, len(row))
        tiles.append(row)
    size = tiles[0][0].size
    flat = []
    for row in tiles:
        row = [t.convert("RGB").resize(size, Image.NEAREST) for t in row]
        flat += row + [Image.new("RGB", size)] * (cols - len(row))
    return losses, make_image_grid(flat, rows=len(tiles), cols=cols)


def save_grid(grid: Image.Image, output_dir: str | Path, step: int) -> Path:
    """Write ``validation/step-<step>.png`` under ``output_dir`` and return its path."""
    path = Path(output_dir) / "validation" / f"step-{step:07d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    grid.save(tmp)
    tmp.replace(path)
    return path
