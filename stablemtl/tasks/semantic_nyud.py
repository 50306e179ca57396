"""NYUD-v2 semantic segmentation, 13 classes: the semantic encoding (docs/encodings.md) with NYUD's own
classes, palette and prompt, registered as ``"semantic_nyud"`` beside the 8-class Cityscapes ``"semantic"``.

Classes: the 13-class NYUD-v2 set of Couprie et al. (ICLR 2013), as used by the multi-task benchmarks of
MTAN, MTL-PSL and HiTT. Its ids follow the alphabetical order of the class names; the MTAN / MTL-PSL
``label/<i>.npy`` files store them 0-based (the 1..13 ids of the 13-class mapping minus one, -1 =
unlabelled), which is how the ``nyud`` reader returns them (with -1 -> ``IGNORE_INDEX``).

Palette: the 13 points left of the 14-point max-min packing of the RGB cube (its 8 corners and 6 face
centres) once black, the ignore colour, is removed. Any two colours are at least 179 apart (8-bit units;
black is 181 away), so a VAE round trip must move a colour by about 90 before the nearest-colour decoding
changes its class.
"""

from __future__ import annotations

from stablemtl.tasks.registry import register_task
from stablemtl.tasks.semantic import SemanticTask

CLASS_NAMES: tuple[str, ...] = (
    "bed",
    "books",
    "ceiling",
    "chair",
    "floor",
    "furniture",
    "objects",
    "picture",
    "sofa",
    "table",
    "tv",
    "wall",
    "window",
)
# 8-bit RGB, in class-id order: 7 non-black cube corners and 6 face centres (128 = mid-level).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),  # bed
    (0, 255, 0),  # books
    (0, 0, 255),  # ceiling
    (255, 255, 0),  # chair
    (255, 0, 255),  # floor
    (0, 255, 255),  # furniture
    (255, 255, 255),  # objects
    (128, 128, 0),  # picture
    (128, 0, 128),  # sofa
    (0, 128, 128),  # table
    (255, 128, 128),  # tv
    (128, 255, 128),  # wall
    (128, 128, 255),  # window
)


class NyudSemanticTask(SemanticTask):
    """NYUD-v2 class ids ``(1, H, W)`` int64 in 0..12 (255 = unlabelled) <-> 13-colour palette image3;
    prediction ``(B, 1, H, W)`` int64 ids. Scored like ``"semantic"`` (mIoU over its 13 class names)."""

    name = "semantic_nyud"
    prompt = "indoor semantic segmentation"

    def __init__(
        self,
        palette: tuple[tuple[int, int, int], ...] = PALETTE,
        class_names: tuple[str, ...] = CLASS_NAMES,
        **kwargs,
    ) -> None:
        super().__init__(palette=palette, class_names=class_names, **kwargs)


register_task(NyudSemanticTask())
