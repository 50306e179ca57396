"""Input loading and output visualisation for the StableMTL pipelines.

Extends diffusers' ``MarigoldImageProcessor`` (resizing, padding to the latent grid and depth colormaps
are reused) with what a multi-task, frame-pair model needs: grey and RGBA inputs converted to RGB,
channel-last numpy read correctly, errors that name the bad argument, a visualiser for every task through
``Task.visualize`` (``visualize(task, prediction)``) and a 16-bit depth PNG export that works with current
Pillow.

Conventions (as in Marigold): numpy images are channel-last ``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)``;
torch images are channel-first ``(H, W)``, ``(C, H, W)`` or ``(N, C, H, W)``; C in {1 (grey), 2 (grey +
alpha), 3 (RGB), 4 (RGBA)}. Float values must lie in [0, 1]. Integer ranges: uint8 is divided by 255 and
uint16 by 65535 (the dtype decides); int8/int16 are refused; a 32- or 64-bit integer type (PIL mode ``I``
gives int32) is decided by its values: 8-bit data (all values in 0..255) is divided by 255, 16-bit data
(0..65535) by 65535, and negative or larger values are refused. A 16-bit image darker than 256/65535 in
such a type reads as 8-bit: pass uint16 (PIL mode ``I;16``) to keep it exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from PIL import Image

from stablemtl.tasks import get_task

ImageInput = Image.Image | np.ndarray | torch.Tensor | Sequence[Image.Image | np.ndarray | torch.Tensor]
RESAMPLE_METHODS = ("nearest", "nearest-exact", "bilinear", "bicubic", "area")


def integer_scale(array: np.ndarray, label: str) -> float:
    """The divisor that maps an integer image to [0, 1], from its dtype and values (module docstring)."""
    if array.dtype == np.uint8:
        return 255.0
    if array.dtype == np.uint16:
        return 65535.0
    if array.dtype.itemsize < 4:  # int8/int16: no image format or PIL mode produces these
        raise ValueError(f"{label} has signed dtype {array.dtype}; use uint8/uint16 or float in [0, 1]")
    low, high = int(array.min(initial=0)), int(array.max(initial=0))
    if low < 0 or high > 65535:
        raise ValueError(
            f"{label} has dtype {array.dtype} with values in [{low}, {high}]; integer images must hold 8-bit "
            "(0..255) or 16-bit (0..65535) values; use uint8/uint16 or float in [0, 1]"
        )
    # A wide type says nothing about the bit depth: 8-bit data stored as int32 (PIL mode 'I') must not be
    # divided by 65535, which would make it almost black.
    return 255.0 if high <= 255 else 65535.0


def _as_list(image: ImageInput, name: str) -> list:
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError(f"`{name}` is an empty list")
        return list(image)
    return [image]


class StableMTLImageProcessor(MarigoldImageProcessor):
    """Loads images for the pipelines and draws their predictions (see the module docstring for formats)."""

    # -- reading inputs ----------------------------------------------------------------------------------
    @staticmethod
    def describe(image: ImageInput, name: str = "image") -> tuple[int, tuple[int, int]]:
        """Return ``(number of images, (H, W))`` of an input without converting it; raise ``ValueError`` for
        an unsupported type, shape or channel count, or for list items of different sizes."""
        count, size = 0, None
        for i, item in enumerate(_as_list(image, name)):
            label = f"`{name}[{i}]`" if isinstance(image, (list, tuple)) else f"`{name}`"
            if isinstance(item, Image.Image):
                n, hw = 1, (item.height, item.width)
            elif isinstance(item, np.ndarray):
                if item.ndim == 2:
                    n, hw, c = 1, item.shape, 1
                elif item.ndim in (3, 4):
                    n = 1 if item.ndim == 3 else item.shape[0]
                    hw, c = item.shape[-3:-1], item.shape[-1]
                else:
                    raise ValueError(
                        f"{label} must be a (H, W), (H, W, C) or (N, H, W, C) array, got {item.shape}"
                    )
                if c not in (1, 2, 3, 4):
                    raise ValueError(
                        f"{label} has {c} channels; numpy images are channel-last with C in 1..4"
                    )
            elif isinstance(item, torch.Tensor):
                if item.ndim == 2:
                    n, hw, c = 1, tuple(item.shape), 1
                elif item.ndim in (3, 4):
                    n = 1 if item.ndim == 3 else item.shape[0]
                    hw, c = tuple(item.shape[-2:]), item.shape[-3]
                else:
                    raise ValueError(
                        f"{label} must be a (H, W), (C, H, W) or (N, C, H, W) tensor, got {item.shape}"
                    )
                if c not in (1, 2, 3, 4):
                    raise ValueError(
                        f"{label} has {c} channels; torch images are channel-first with C in 1..4"
                    )
            else:
                raise ValueError(
                    f"{label} has unsupported type {type(item).__name__}; use PIL, numpy or torch"
                )
            hw = (int(hw[0]), int(hw[1]))
            if min(hw) < 1 or n < 1:
                raise ValueError(f"{label} is empty: {n} image(s) of size {hw}")
            if size is not None and hw != size:
                raise ValueError(
                    f"{label} has size {hw}, but the previous images of `{name}` have size {size}"
                )
            count, size = count + n, hw
        return count, size

    @staticmethod
    def _load_one(item, label: str) -> torch.Tensor:
        """One input item as ``(N, 3, H, W)`` float32 in [0, 1]."""
        if isinstance(item, Image.Image):
            if item.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                item = np.array(item)  # keep the bit depth; the numpy branch scales it
            else:
                item = np.array(item.convert("RGBA" if "A" in item.mode else "RGB"))
        scale = None
        if isinstance(item, np.ndarray):
            if item.dtype == bool or np.issubdtype(item.dtype, np.complexfloating):
                raise ValueError(f"{label} has dtype {item.dtype}; use uint8/uint16 or float in [0, 1]")
            if np.issubdtype(item.dtype, np.integer):
                scale = integer_scale(item, label)
            item = item[None, ..., None] if item.ndim == 2 else item
            item = item[None] if item.ndim == 3 else item
            item = torch.from_numpy(np.ascontiguousarray(item.astype(np.float32))).permute(0, 3, 1, 2)
        elif isinstance(item, torch.Tensor):
            item = item[None, None] if item.ndim == 2 else item
            item = item[None] if item.ndim == 3 else item
            if item.dtype == torch.uint8:
                scale = 255.0
            elif not item.is_floating_point():
                raise ValueError(
                    f"{label} has dtype {item.dtype}; use torch.uint8 or a float tensor in [0, 1]"
                )
            item = item.detach().float().cpu()
        channels = item.shape[1]
        # Grey (+alpha) is repeated to RGB; alpha is dropped (the model sees the colour as rendered).
        item = item[:, :1].repeat(1, 3, 1, 1) if channels in (1, 2) else item[:, :3]
        if scale is not None:
            item = item / scale
        if not torch.isfinite(item).all():
            raise ValueError(f"{label} contains NaN or inf values")
        low, high = item.min().item(), item.max().item()
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{label} has values in [{low:.3g}, {high:.3g}]; float images must lie in [0, 1]"
            )
        return item

    def load_images(self, image: ImageInput, name: str = "image") -> torch.Tensor:
        """Any supported input (or a list of them, equal sizes) as ``(N, 3, H, W)`` float32 in [0, 1]."""
        self.describe(image, name)
        items = _as_list(image, name)
        labels = [
            f"`{name}[{i}]`" if isinstance(image, (list, tuple)) else f"`{name}`" for i in range(len(items))
        ]
        return torch.cat([self._load_one(item, label) for item, label in zip(items, labels)])

    def prepare(
        self,
        images: torch.Tensor,
        processing_resolution: int = 0,
        resample_method: str = "bilinear",
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """``(N, 3, H, W)`` in [0, 1] -> ``(N, 3, PPH, PPW)`` in [-1, 1] on ``device``/``dtype``.

        Resized so that the longer edge is ``processing_resolution`` (0 keeps the size), then padded
        (replicate) to a multiple of the VAE factor; also returns the padding ``(ph, pw)`` to remove from the
        bottom/right afterwards.
        """
        images = images.to(device=device, dtype=torch.float32) * 2.0 - 1.0
        if processing_resolution > 0:
            images = self.resize_to_max_edge(images, processing_resolution, resample_method)
        images, padding = self.pad_image(images, self.config.vae_scale_factor)
        return images.to(dtype), padding

    # -- drawing outputs ---------------------------------------------------------------------------------
    @staticmethod
    def visualize(task: str, prediction: np.ndarray | torch.Tensor) -> list[Image.Image]:
        """Draw a batch of predictions of ``task`` (``(N, C, H, W)`` torch or ``(N, H, W, C)`` numpy, as the
        pipeline returns them) with the task's own visualiser: one PIL image per item."""
        if isinstance(prediction, np.ndarray):
            prediction = torch.from_numpy(np.ascontiguousarray(prediction))
            prediction = prediction[None] if prediction.ndim == 3 else prediction
            prediction = prediction.permute(0, 3, 1, 2)
        elif not isinstance(prediction, torch.Tensor):
            raise ValueError(
                f"prediction must be a numpy array or a torch tensor, got {type(prediction).__name__}"
            )
        elif prediction.ndim == 3:
            prediction = prediction[None]
        if prediction.ndim != 4:
            raise ValueError(
                f"prediction of {task!r} must be batched (N, C, H, W), got {tuple(prediction.shape)}"
            )
        visualizer = get_task(task)
        return [visualizer.visualize(item.cpu()) for item in prediction]

    @staticmethod
    def export_depth_to_16bit_png(
        depth: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
        val_min: float = 0.0,
        val_max: float = 1.0,
    ) -> list[Image.Image]:
        """Depth as 16-bit grey PNG-ready images (PIL mode ``I;16``), one per item.

        ``depth``: the pipeline's depth output, ``(N, H, W, 1)`` numpy or ``(N, 1, H, W)`` torch (or one
        ``(H, W)`` map, or a list of them), float. ``[val_min, val_max]`` maps to ``[0, 65535]``, rounded;
        values outside are clipped. Replaces Marigold's version, which passes ``mode="I;16"`` to
        ``Image.fromarray`` and fails on current Pillow; the uint16 array gives that mode by itself.
        """
        if not val_max > val_min:
            raise ValueError(f"val_max={val_max} must be greater than val_min={val_min}")
        items = list(depth) if isinstance(depth, (list, tuple)) else None
        if items is None:
            if isinstance(depth, torch.Tensor):
                depth = depth.detach().float().cpu().numpy()
                depth = depth[:, 0] if depth.ndim == 4 and depth.shape[1] == 1 else depth
            if not isinstance(depth, np.ndarray):
                raise ValueError(f"depth must be a numpy array or a torch tensor, got {type(depth).__name__}")
            depth = depth[..., 0] if depth.ndim == 4 and depth.shape[-1] == 1 else depth
            items = list(depth[None] if depth.ndim == 2 else depth)
        images = []
        for index, item in enumerate(items):
            if isinstance(item, torch.Tensor):
                item = item.detach().float().cpu().numpy()
            item = np.squeeze(np.asarray(item))
            if item.ndim != 2 or not np.issubdtype(item.dtype, np.floating):
                raise ValueError(
                    f"depth[{index}] must be a float (H, W) map (or (N, H, W, 1) / (N, 1, H, W) batch), got "
                    f"{item.dtype} {item.shape}"
                )
            if not np.isfinite(item).all():
                raise ValueError(f"depth[{index}] contains NaN or inf values")
            scaled = (item.astype(np.float64) - val_min) / (val_max - val_min)
            images.append(Image.fromarray(np.round(np.clip(scaled, 0.0, 1.0) * 65535).astype(np.uint16)))
        return images
