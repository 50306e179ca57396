"""One synthetic Sample from a profile, deterministic per (profile, split, shift, seed, index)."""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

from stablemtl.data.synthetic.render import render_scene
from stablemtl.data.synthetic.scene import Scene

if TYPE_CHECKING:
    from stablemtl.data.profiles import SourceProfile


def scene_rng(profile: str, split: str, shift: bool, seed: int, index: int) -> np.random.Generator:
    """The generator of row ``index``: independent streams per profile, split, domain, seed and row.

    The key is five 32-bit words ``(seed, index, crc32(profile), split code, shift)``: with ``seed`` and
    ``index`` bounded to 32 bits the key is injective, so two different splits (or rows, seeds, ...) can
    never share a random stream, whatever seeds the callers pick.
    """
    from stablemtl.data.profiles import SPLIT_CODES, check_split

    check_split(split)
    for name, value in (("seed", seed), ("index", index)):
        if not 0 <= int(value) < 2**32:
            raise ValueError(f"{name} must be in [0, 2**32), got {value}")
    entropy = [int(seed), int(index), zlib.crc32(profile.encode()), SPLIT_CODES[split], int(bool(shift))]
    return np.random.default_rng(np.random.SeedSequence(entropy))


def make_scene(
    profile: str | SourceProfile,
    seed: int,
    size: int | tuple[int, int] = 128,
    split: str = "test",
    shift: bool = False,
    index: int = 0,
) -> Scene:
    """The random :class:`Scene` of one row (``size`` is ``H = W`` or ``(H, W)``)."""
    # Imported here: profiles import the scene builders of this package.
    from stablemtl.data.profiles import check_split, get_profile

    prof = get_profile(profile)
    check_split(split)
    height, width = (size, size) if isinstance(size, int) else size
    if height < 8 or width < 8:
        raise ValueError(f"size must be at least 8 pixels per side, got {size}")
    rng = scene_rng(prof.name, split, shift, seed, index)
    return prof.build_scene(rng, prof.shifted if shift else prof.domain, int(height), int(width))


def render_sample(
    profile: str | SourceProfile,
    seed: int = 0,
    size: int | tuple[int, int] = 128,
    split: str = "test",
    shift: bool = False,
    index: int = 0,
    antialias: bool = True,
) -> dict:
    """Render one Sample of ``profile`` with every task its ``split`` labels (``"test"``: all it can give).

    Returns ``{"image": (3,H,W) float [0,1], "next_image": (3,H,W) (pair splits only), "source": name,
    "labels": {task: tensor}, "valid": {task: (H,W) bool}, "intrinsics": (3,3)}``.
    """
    from stablemtl.data.profiles import get_profile

    prof = get_profile(profile)
    scene = make_scene(prof, seed, size, split, shift, index)
    sample = render_scene(scene, prof.tasks(split), pair=prof.needs_pair(split), antialias=antialias)
    sample["source"] = prof.name
    return sample
