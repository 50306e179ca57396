"""Procedural albedo textures, evaluated at object-space hit points so they move rigidly with objects.

A material is ``pattern`` (one of ``PATTERNS``), three linear RGB ``colours`` in [0, 1], a spatial
``frequency`` (cycles per metre) and a unit ``axis`` (stripe direction / noise offset seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PATTERNS = ("solid", "checker", "stripes", "noise", "palette")
ALBEDO_MIN, ALBEDO_MAX = 0.02, 0.95  # keep albedo strictly inside (0, 1): the albedo mask needs >= 0.004


@dataclass
class Materials:
    """``M`` materials: ``pattern (M,)`` long, ``colours (M, 3, 3)``, ``frequency (M,)``, ``axis (M, 3)``."""

    pattern: torch.Tensor
    colours: torch.Tensor
    frequency: torch.Tensor
    axis: torch.Tensor


def _hash(cell: torch.Tensor, salt: torch.Tensor) -> torch.Tensor:
    """Pseudo-random value in [0, 1) per integer lattice cell ``(N, 3)`` (float) and salt ``(N,)``."""
    dot = cell[:, 0] * 12.9898 + cell[:, 1] * 78.233 + cell[:, 2] * 37.719 + salt * 17.13
    return torch.frac(torch.sin(dot) * 43758.5453).abs()


def value_noise(points: torch.Tensor, salt: torch.Tensor) -> torch.Tensor:
    """Smooth 3-D value noise in [0, 1) at ``points (N, 3)`` (trilinear with a smoothstep fade)."""
    base = torch.floor(points)
    frac = points - base
    fade = frac * frac * (3 - 2 * frac)
    total = torch.zeros(points.shape[0])
    for corner in range(8):
        offset = torch.tensor([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1], dtype=points.dtype)
        weight = torch.where(offset.bool(), fade, 1 - fade).prod(-1)
        total = total + weight * _hash(base + offset, salt)
    return total


def albedo(materials: Materials, index: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linear albedo ``(N, 3)`` in ``[ALBEDO_MIN, ALBEDO_MAX]`` of material ``index (N,)`` at object-space
    ``points (N, 3)`` (metres in the object's frame)."""
    pattern = materials.pattern[index]
    colours = materials.colours[index]  # (N, 3 colours, 3 channels)
    p = points * materials.frequency[index, None]
    axis = materials.axis[index]
    salt = index.to(points.dtype)

    checker = (torch.floor(p).sum(-1).remainder(2) > 0.5).long()
    stripes = (torch.frac((p * axis).sum(-1)) > 0.5).long()
    noise = value_noise(p + 7.0 * axis, salt)
    # A second octave makes the noise look less like blobs.
    noise = (0.65 * noise + 0.35 * value_noise(2.7 * p - 3.0 * axis, salt + 0.5)).clamp(0, 1)
    palette = (noise * 3).long().clamp(0, 2)

    pick = torch.where(pattern == 1, checker, torch.where(pattern == 2, stripes, palette))
    picked = torch.gather(colours, 1, pick[:, None, None].expand(-1, 1, 3)).squeeze(1)
    blended = colours[:, 0] * (1 - noise[:, None]) + colours[:, 1] * noise[:, None]
    out = torch.where((pattern == 0)[:, None], colours[:, 0], picked)
    out = torch.where((pattern == 3)[:, None], blended, out)
    return out.clamp(ALBEDO_MIN, ALBEDO_MAX)
