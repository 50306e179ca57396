"""Procedural albedo textures, evaluated at object-space hit points so they move rigidly with objects.

A material is ``pattern`` (one of ``PATTERNS``), three linear RGB ``colours`` in [0, 1], a spatial
``frequency`` (cycles per metre) and a unit ``axis`` (stripe direction / noise offset seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stablemtl.data.synthetic.select import select

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


def _corners(lower: torch.Tensor, upper: torch.Tensor, combine) -> torch.Tensor:
    """``(8, N)``: row ``c`` combines per-axis values ``(3, N)`` of the lower (bit 0) or upper (bit 1) cell
    side, corner ``c`` having bits ``(c & 1, c >> 1 & 1, c >> 2 & 1)`` along x, y, z, as
    ``combine(combine(x, y), z)``. Broadcasting over leading dims keeps every op on contiguous rows."""
    pick = torch.stack([lower, upper], dim=1)  # (3 axes, 2 sides, N)
    x, y, z = pick[0][None, None], pick[1][None, :, None], pick[2][:, None, None]
    return combine(combine(x, y), z).reshape(8, -1)


def value_noise(points: torch.Tensor, salt: torch.Tensor) -> torch.Tensor:
    """Smooth 3-D value noise in [0, 1) at ``points (N, 3)`` (trilinear with a smoothstep fade).

    Computed for all 8 cell corners at once with exactly the arithmetic of :func:`_hash` per corner (so the
    values are bit for bit those of a corner-by-corner loop), and summed in corner order."""
    base = torch.floor(points).T  # (3, N)
    frac = points.T - base
    fade = frac * frac * (3 - 2 * frac)
    weight = _corners(1 - fade, fade, torch.mul)
    coef = torch.tensor([[12.9898], [78.233], [37.719]], dtype=points.dtype)
    dot = _corners(base * coef, (base + 1) * coef, torch.add) + salt * 17.13
    value = weight * torch.frac(torch.sin(dot) * 43758.5453).abs()
    total = torch.zeros(points.shape[0], dtype=points.dtype)
    for corner in range(8):  # summed in corner order (a tree sum would round differently)
        total = total + value[corner]
    return total


def albedo(materials: Materials, index: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Linear albedo ``(N, 3)`` in ``[ALBEDO_MIN, ALBEDO_MAX]`` of material ``index (N,)`` at object-space
    ``points (N, 3)`` (metres in the object's frame)."""
    pattern = materials.pattern.index_select(0, index)
    colours = materials.colours.index_select(0, index)  # (N, 3 colours, 3 channels)
    p = points * materials.frequency.index_select(0, index)[:, None]
    axis = materials.axis.index_select(0, index)
    salt = index.to(points.dtype)

    checker = (torch.floor(p).sum(-1).remainder(2) > 0.5).long()
    stripes = (torch.frac((p * axis).sum(-1)) > 0.5).long()
    # Noise (two octaves: less blob-like) only where a noise or palette material needs it: it is the
    # costly part, and every value is computed per point, so the subset gives the same numbers.
    noise = torch.zeros(points.shape[0], dtype=points.dtype)
    noisy = (pattern >= 3).nonzero().squeeze(1)
    if noisy.numel():
        q, ax, sa = p.index_select(0, noisy), axis.index_select(0, noisy), salt.index_select(0, noisy)
        fine = value_noise(q + 7.0 * ax, sa)
        noise[noisy] = (0.65 * fine + 0.35 * value_noise(2.7 * q - 3.0 * ax, sa + 0.5)).clamp(0, 1)
    palette = (noise * 3).long().clamp(0, 2)

    pick = select(pattern == 1, checker, select(pattern == 2, stripes, palette))
    picked = torch.gather(colours, 1, pick[:, None, None].expand(-1, 1, 3)).squeeze(1)
    blended = colours[:, 0] * (1 - noise[:, None]) + colours[:, 1] * noise[:, None]
    out = select((pattern == 0)[:, None], colours[:, 0], picked)
    out = select((pattern == 3)[:, None], blended, out)
    return out.clamp(ALBEDO_MIN, ALBEDO_MAX)
