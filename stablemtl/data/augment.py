"""Per-source augmentation (docs/training.md): flips that transform labels correctly, joint colour jitter.

Flips go through ``Task.flip`` (which negates normal x / flow u / scene-flow x on a horizontal flip
and the y components on a vertical one); the intrinsics follow the flip. Colour jitter draws one set of
factors and one order of the four operations and applies them to *both* frames, like torchvision's
``ColorJitter`` on the stacked pair, implemented with ``kornia.enhance``.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.enhance as ke
import torch

from stablemtl.tasks import get_task


@dataclass(frozen=True)
class Augmentation:
    """What a source's training samples may undergo: each flip with probability ``flip_p``; colour
    ``jitter`` = (brightness, contrast, saturation, hue) as in torchvision (hue in [0, 0.5]) or None."""

    hflip: bool = True
    vflip: bool = False
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"flip_p must be a probability in [0, 1], got {self.flip_p}")
        if self.jitter is not None:
            if len(self.jitter) != 4 or min(self.jitter) < 0 or self.jitter[3] > 0.5:
                raise ValueError(
                    "jitter must be (brightness, contrast, saturation, hue) >= 0 with hue <= 0.5, "
                    f"got {self.jitter}"
                )


def _factor(strength: float, generator: torch.Generator) -> float:
    return 1.0 + strength * (2 * torch.rand((), generator=generator).item() - 1)


def color_jitter(images: list[torch.Tensor], jitter, generator: torch.Generator) -> list[torch.Tensor]:
    """Apply one random colour jitter jointly to every ``(3, H, W)`` image in [0, 1] of ``images``."""
    brightness, contrast, saturation, hue = jitter
    ops = []
    if brightness > 0:
        f = _factor(brightness, generator)
        ops.append(lambda x, f=f: (x * f).clamp(0, 1))
    if contrast > 0:
        f = _factor(contrast, generator)
        ops.append(lambda x, f=f: ke.adjust_contrast_with_mean_subtraction(x, f))
    if saturation > 0:
        f = _factor(saturation, generator)
        ops.append(lambda x, f=f: ke.adjust_saturation(x, f))
    if hue > 0:
        # kornia's hue shift is in radians on [-pi, pi]; torchvision's factor h is a fraction of a turn.
        shift = hue * (2 * torch.rand((), generator=generator).item() - 1) * 2 * torch.pi
        ops.append(lambda x, s=shift: ke.adjust_hue(x, s))
    order = torch.randperm(len(ops), generator=generator).tolist()
    batch = torch.stack(images)
    for i in order:
        batch = ops[i](batch)
    return list(batch.clamp(0, 1).unbind(0))


def _flip_sample(sample: dict, horizontal: bool) -> None:
    dim = -1 if horizontal else -2
    sample["image"] = sample["image"].flip(dim)
    if sample.get("next_image") is not None:
        sample["next_image"] = sample["next_image"].flip(dim)
    for task, label in sample["labels"].items():
        sample["labels"][task] = get_task(task).flip(label, horizontal)
        sample["valid"][task] = sample["valid"][task].flip(dim)
    if sample.get("intrinsics") is not None:
        k = sample["intrinsics"].clone()
        h, w = sample["image"].shape[-2:]
        if horizontal:
            k[0, 2] = (w - 1) - k[0, 2]
        else:
            k[1, 2] = (h - 1) - k[1, 2]
        sample["intrinsics"] = k


def augment_sample(sample: dict, augmentation: Augmentation, generator: torch.Generator) -> dict:
    """Return an augmented copy of ``sample`` (a Sample dict); all randomness from ``generator``."""
    out = {**sample, "labels": dict(sample["labels"]), "valid": dict(sample["valid"])}
    for enabled, horizontal in ((augmentation.hflip, True), (augmentation.vflip, False)):
        if enabled and torch.rand((), generator=generator).item() < augmentation.flip_p:
            _flip_sample(out, horizontal)
    if augmentation.jitter is not None:
        frames = [out["image"]] + ([out["next_image"]] if out.get("next_image") is not None else [])
        jittered = color_jitter(frames, augmentation.jitter, generator)
        out["image"] = jittered[0]
        if len(jittered) > 1:
            out["next_image"] = jittered[1]
    return out


def crop_sample(sample: dict, top: int, left: int, height: int, width: int) -> dict:
    """Return a copy of ``sample`` cropped to ``[top:top+height, left:left+width]``; label values are
    unchanged by a crop (flows keep their pixel units) and the principal point moves with the window."""
    h, w = sample["image"].shape[-2:]
    if not (0 <= top and 0 <= left and top + height <= h and left + width <= w):
        raise ValueError(f"crop {height}x{width} at ({top}, {left}) does not fit a {h}x{w} sample")
    window = (slice(top, top + height), slice(left, left + width))
    out = {**sample, "image": sample["image"][..., window[0], window[1]]}
    if sample.get("next_image") is not None:
        out["next_image"] = sample["next_image"][..., window[0], window[1]]
    out["labels"] = {t: v[..., window[0], window[1]] for t, v in sample["labels"].items()}
    out["valid"] = {t: v[..., window[0], window[1]] for t, v in sample["valid"].items()}
    if sample.get("intrinsics") is not None:
        k = sample["intrinsics"].clone()
        k[0, 2] -= left
        k[1, 2] -= top
        out["intrinsics"] = k
    return out
