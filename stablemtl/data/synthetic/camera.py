"""Pinhole camera: intrinsics, pose, primary rays and projection.

Conventions (used by every label of the renderer):

- World frame: metres, +y up (the ground is y = 0).
- Camera frame: OpenCV, +x right, +y down, +z forward. ``rotation`` maps camera axes to world axes
  (its columns are the camera's x, y, z axes in world coordinates); ``position`` is the centre.
- Pixel ``(row i, column j)`` has its centre at image coordinates ``(u, v) = (j, i)``; the principal
  point of a default camera is the image centre ``((W - 1) / 2, (H - 1) / 2)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def intrinsics_from_fov(fov_deg: float, height: int, width: int) -> torch.Tensor:
    """``(3, 3)`` float32 K: square pixels, horizontal field of view ``fov_deg``, centred principal point."""
    focal = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor(
        [[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]], dtype=torch.float32
    )


def look_at(position, target, up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """Camera-to-world rotation ``(3, 3)`` of a camera at ``position`` looking at ``target`` (OpenCV axes)."""
    position = torch.as_tensor(position, dtype=torch.float32)
    forward = torch.as_tensor(target, dtype=torch.float32) - position
    forward = forward / forward.norm()
    right = torch.linalg.cross(forward, torch.as_tensor(up, dtype=torch.float32))
    right = right / right.norm()
    down = torch.linalg.cross(forward, right)
    return torch.stack([right, down, forward], dim=1)


@dataclass
class Camera:
    """A pinhole camera: ``intrinsics`` (3, 3), ``rotation`` camera-to-world (3, 3), ``position`` (3,)."""

    intrinsics: torch.Tensor
    rotation: torch.Tensor
    position: torch.Tensor
    height: int
    width: int

    def pixel_grid(self, offsets: tuple[tuple[float, float], ...] = ((0.0, 0.0),)) -> torch.Tensor:
        """Image coordinates ``(S, H*W, 2)`` of ``(u, v)`` for every pixel and every sub-pixel offset."""
        v, u = torch.meshgrid(
            torch.arange(self.height, dtype=torch.float32),
            torch.arange(self.width, dtype=torch.float32),
            indexing="ij",
        )
        uv = torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)
        return torch.stack([uv + torch.tensor(off) for off in offsets])

    def rays(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """World rays through image points ``uv (N, 2)``: shared origin ``(1, 3)``, directions ``(N, 3)``.

        Directions are scaled so that their camera-space z is 1: the ray parameter of a hit *is* its z-depth.
        """
        k = self.intrinsics
        x = (uv[:, 0] - k[0, 2]) / k[0, 0]
        y = (uv[:, 1] - k[1, 2]) / k[1, 1]
        dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
        dirs = dirs_cam @ self.rotation.T
        return self.position[None], dirs

    def to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """World points ``(N, 3)`` -> camera-frame points ``(N, 3)`` (OpenCV axes)."""
        return (points - self.position) @ self.rotation

    def project(self, points_cam: torch.Tensor) -> torch.Tensor:
        """Camera-frame points ``(N, 3)`` -> image coordinates ``(N, 2)`` (``(u, v)``; z must be > 0)."""
        k = self.intrinsics
        z = points_cam[:, 2]
        return torch.stack(
            [k[0, 0] * points_cam[:, 0] / z + k[0, 2], k[1, 1] * points_cam[:, 1] / z + k[1, 2]], dim=-1
        )
