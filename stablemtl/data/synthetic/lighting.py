"""White lights and hard shadows: the grey shading term of ``image_linear = albedo * shading``.

Shading at a surface point with unit normal ``n`` (facing the viewer) is

    ambient + sun * max(0, n . s) * visible(s)
            + sum_k I_k * max(0, n . l_k) * visible(l_k) / (1 + (r_k / R_k)^2)

with ``s`` the unit direction to the sun, ``l_k`` the unit direction to point light ``k`` at distance
``r_k`` and ``visible`` a shadow ray. Lights are white, so shading is grey, and ``ambient + sun + sum_k I_k
<= 1`` keeps it in [0, 1] without clipping (so the product image is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stablemtl.data.synthetic.primitives import Shapes, nearest_hit


@dataclass
class Lights:
    """``ambient`` in [0, 1]; ``sun_direction (3,)`` unit world vector towards the sun (or None) with
    ``sun_intensity``; point lights ``point_position (L, 3)``, ``point_intensity (L,)``,
    ``point_range (L,)`` (distance at which a light falls to half)."""

    ambient: float
    sun_direction: torch.Tensor | None
    sun_intensity: float
    point_position: torch.Tensor
    point_intensity: torch.Tensor
    point_range: torch.Tensor

    def total(self) -> float:
        """Largest possible shading value (at most 1 for a valid rig)."""
        sun = self.sun_intensity if self.sun_direction is not None else 0.0
        return float(self.ambient + sun + self.point_intensity.sum())


def _visible(
    shapes: Shapes, points: torch.Tensor, dirs: torch.Tensor, max_t: torch.Tensor, light=None
) -> torch.Tensor:
    """Whether the segment ``points + t dirs``, ``0 < t < max_t``, is free of occluders: ``(N,)`` bool.

    ``light (3,)``: the segments' common end point, which lets culling work from there (hits beyond
    it, which may then be missed, cannot make a segment occluded)."""
    if points.shape[0] == 0:
        return torch.ones(0, dtype=torch.bool)
    t, _ = nearest_hit(shapes, points, dirs, through=light)
    return t >= max_t


def shading(shapes: Shapes, lights: Lights, points: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
    """Grey shading ``(N,)`` in [0, 1] at world ``points (N, 3)`` with unit ``normals (N, 3)``."""
    # Shadow rays start slightly off the surface so they do not re-hit it.
    origin = points + normals * (1e-3 * (1 + points.norm(dim=-1, keepdim=True) * 1e-2))
    out = torch.full((points.shape[0],), float(lights.ambient))
    if lights.sun_direction is not None and lights.sun_intensity > 0:
        s = lights.sun_direction / lights.sun_direction.norm()
        cos = (normals @ s).clamp_min(0)
        lit = (cos > 0).nonzero().squeeze(1)
        vis = torch.zeros(cos.shape, dtype=torch.bool)
        vis[lit] = _visible(shapes, origin.index_select(0, lit), s[None], torch.tensor(float("inf")))
        out = out + lights.sun_intensity * cos * vis
    for pos, power, reach in zip(lights.point_position, lights.point_intensity, lights.point_range):
        to_light = pos - origin
        dist = to_light.norm(dim=-1)
        direction = to_light / dist[:, None]
        cos = (normals * direction).sum(-1).clamp_min(0)
        lit = (cos > 0).nonzero().squeeze(1)
        vis = torch.zeros(cos.shape, dtype=torch.bool)
        # The shadow ray's parameter is in units of ``direction`` (unit), so the light sits at t = dist.
        ray_origin, ray_dir = origin.index_select(0, lit), direction.index_select(0, lit)
        vis[lit] = _visible(shapes, ray_origin, ray_dir, dist.index_select(0, lit), pos)
        out = out + power * cos * vis / (1 + (dist / reach) ** 2)
    return out.clamp(0.0, 1.0)
