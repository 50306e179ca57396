"""Semantic segmentation: class ids drawn with an 8-colour Cityscapes palette (docs/encodings.md).

Decoding picks the nearest palette colour (L2 in [-1, 1] space), so the palette must stay fixed
between training and inference.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from PIL import Image

from stablemtl.tasks.base import (
    IGNORE_INDEX,
    Task,
    batched,
    batched_image3,
    single_prediction,
    to_pil_rgb,
    unbatch,
)
from stablemtl.tasks.registry import register_task

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "building",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "sky",
    "vehicle",
)
# Cityscapes colours of the 8 classes, 8-bit RGB.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (70, 70, 70),
    (153, 153, 153),
    (250, 170, 30),
    (220, 220, 0),
    (107, 142, 35),
    (70, 130, 180),
    (0, 0, 142),
)


class SemanticTask(Task):
    """Class ids ``(1, H, W)`` int64 -> palette image3; prediction ``(B, 1, H, W)`` int64 ids.

    Args:
        palette: one 8-bit RGB colour per class, in class-id order; must be distinct and not black
            (black is the ignore colour).
        class_names: one name per class.
        ignore_index: the id of unlabelled pixels.
    """

    name = "semantic"
    prompt = "semantic"
    label_channels = 1
    label_dtype = torch.int64
    prediction_channels = 1
    prediction_dtype = torch.int64
    primary_metric = "miou"
    higher_is_better = True
    metric_family = "semantic"

    def __init__(
        self,
        palette: tuple[tuple[int, int, int], ...] = PALETTE,
        class_names: tuple[str, ...] = CLASS_NAMES,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        colours = torch.as_tensor(palette, dtype=torch.float32)
        if colours.dim() != 2 or colours.shape[1] != 3 or len(colours) == 0:
            raise ValueError(f"palette must be a list of RGB triples, got shape {tuple(colours.shape)}")
        if ((colours < 0) | (colours > 255)).any() or (colours.sum(dim=1) == 0).any():
            raise ValueError("palette colours must be 8-bit RGB and not black (black marks ignored pixels)")
        if len(torch.unique(colours, dim=0)) != len(colours):
            raise ValueError("palette colours must be distinct")
        if len(class_names) != len(colours):
            raise ValueError(f"class_names has {len(class_names)} names for {len(colours)} palette colours")
        if 0 <= ignore_index < len(colours):
            raise ValueError(f"ignore_index {ignore_index} collides with a class id")
        self.palette = tuple(tuple(int(c) for c in colour) for colour in palette)
        self.class_names = tuple(class_names)
        self.ignore_index = int(ignore_index)
        self.num_classes = len(colours)
        self.output_space = "class ids (B,1,H,W) int64: " + ", ".join(
            f"{i} {n}" for i, n in enumerate(self.class_names)
        )
        self._colours = colours / 255.0 * 2.0 - 1.0  # [K,3] in [-1,1]

    def baseline_prediction(self, labels: Iterable[tuple[torch.Tensor, torch.Tensor]] = ()) -> torch.Tensor:
        """The majority class over the valid, labelled pixels of ``labels`` (class 0 without any): ``(1,)``
        int64. ``labels`` are ``(label (1, H, W), valid (H, W))`` pairs, e.g. of the training set."""
        counts = torch.zeros(self.num_classes, dtype=torch.long)
        for label, valid in labels:
            ids = label[0][valid.bool() & (label[0] != self.ignore_index)].long()
            counts += torch.bincount(ids.flatten(), minlength=self.num_classes)[: self.num_classes]
        return counts.argmax().view(1)

    def encode(self, label: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw each class id in its palette colour ``/255*2-1``; ignored and invalid pixels are -1 (black).

        ``label`` ``(1, H, W)`` or ``(B, 1, H, W)`` integer ids (a float label with whole values is
        accepted; its non-finite pixels are invalid). The returned ``valid`` also drops ignored pixels.
        Valid ids other than ``0..num_classes-1`` and ``ignore_index`` raise ValueError.
        """
        label, valid, was_batched = batched(label, valid, self.label_channels)
        if label.is_floating_point():
            whole = torch.where(valid[:, None], label, 0.0)
            if (whole != whole.round()).any():
                raise ValueError("label must hold whole class ids; got fractional values")
            label = whole
        ids = torch.where(valid[:, None], label, self.ignore_index).long()[:, 0]  # [B,H,W]
        known = (ids >= 0) & (ids < self.num_classes)
        bad = ~known & (ids != self.ignore_index)
        if bad.any():
            raise ValueError(
                f"label has class ids {sorted(ids[bad].unique().tolist())[:10]} outside "
                f"0..{self.num_classes - 1} and ignore_index {self.ignore_index}"
            )
        colours = self._colours.to(ids.device)
        image3 = colours[ids.clamp(0, self.num_classes - 1)].permute(0, 3, 1, 2)  # [B,3,H,W]
        image3 = torch.where(known[:, None], image3, -1.0)
        return unbatch(image3.contiguous(), was_batched), unbatch(valid & known, was_batched)

    def decode(self, image3: torch.Tensor) -> torch.Tensor:
        """Clip to [-1, 1] and take the nearest palette colour per pixel: ``(B, 1, H, W)`` int64 ids."""
        image3, was_batched = batched_image3(image3)
        pixels = image3.clamp(-1.0, 1.0).permute(0, 2, 3, 1).float()  # [B,H,W,3]
        colours = self._colours.to(pixels.device)
        # Squared L2 distance to each colour, [B,H,W,K]; argmin picks the first colour on ties.
        distance = ((pixels[..., None, :] - colours) ** 2).sum(dim=-1)
        ids = distance.argmin(dim=-1)[:, None]  # [B,1,H,W]
        return unbatch(ids, was_batched)

    def visualize(self, prediction: torch.Tensor) -> Image.Image:
        """Draw one ``(1, H, W)`` or ``(H, W)`` id map in the palette; ignored / unknown ids are black."""
        ids = single_prediction(prediction, 1)[0].long()
        known = (ids >= 0) & (ids < self.num_classes)
        rgb = torch.as_tensor(self.palette, dtype=torch.float32)[ids.clamp(0, self.num_classes - 1)] / 255.0
        return to_pil_rgb(torch.where(known[..., None], rgb, 0.0))


register_task(SemanticTask())
