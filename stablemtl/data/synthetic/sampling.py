"""Appearance/camera ranges of a scene family (``Domain``) and the random draws profiles share."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
import torch

from stablemtl.data.synthetic.camera import Camera, intrinsics_from_fov, look_at
from stablemtl.data.synthetic.lighting import Lights

Range = tuple[float, float]


@dataclass(frozen=True)
class Domain:
    """Ranges that scene builders draw from; a *shifted* test domain is another ``Domain``.

    Colours are drawn in HSV (``hue`` may wrap past 1) and used as linear RGB.
    """

    hue: Range = (0.0, 1.0)
    saturation: Range = (0.2, 0.7)
    value: Range = (0.3, 0.85)
    vegetation_hue: Range = (0.22, 0.36)
    patterns: tuple[str, ...] = ("solid", "checker", "stripes", "noise", "palette")
    texture_frequency: Range = (0.5, 3.0)
    sun_elevation_deg: Range = (25.0, 70.0)
    sun_intensity: Range = (0.55, 0.7)
    ambient: Range = (0.2, 0.3)
    fov_deg: Range = (60.0, 75.0)
    camera_height: Range = (1.4, 1.8)
    sky_zenith: tuple[float, float, float] = (0.25, 0.45, 0.85)
    sky_horizon: tuple[float, float, float] = (0.75, 0.85, 0.95)


def uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def colour(rng: np.random.Generator, domain: Domain, hue: Range | None = None, value: Range | None = None):
    """One linear RGB colour ``(3,)`` drawn from the domain's HSV ranges."""
    h = uniform(rng, hue or domain.hue) % 1.0
    return np.array(
        colorsys.hsv_to_rgb(h, uniform(rng, domain.saturation), uniform(rng, value or domain.value))
    )


def palette(rng: np.random.Generator, domain: Domain, n: int = 3, hue: Range | None = None, value=None):
    """``n`` related colours: one drawn colour and variations of it (a coherent palette)."""
    base = colour(rng, domain, hue, value)
    out = [base]
    for _ in range(n - 1):
        out.append(np.clip(base * rng.uniform(0.55, 1.35) + rng.normal(0, 0.06, 3), 0.02, 0.95))
    return np.stack(out)


def random_material(builder, rng: np.random.Generator, domain: Domain, hue=None, value=None, patterns=None):
    """Register a random material of the domain on ``builder``; returns its index."""
    pattern = str(rng.choice(patterns or domain.patterns))
    axis = rng.normal(size=3)
    return builder.material(
        pattern, palette(rng, domain, 3, hue, value), uniform(rng, domain.texture_frequency), axis
    )


def make_camera(position, target, fov_deg: float, height: int, width: int) -> Camera:
    """A :class:`Camera` at ``position`` looking at ``target``."""
    pos = torch.tensor(np.asarray(position), dtype=torch.float32)
    rot = look_at(pos, torch.tensor(np.asarray(target), dtype=torch.float32))
    return Camera(intrinsics_from_fov(fov_deg, height, width), rot, pos, height, width)


def moved_camera(camera: Camera, rotation: np.ndarray, translation) -> Camera:
    """``camera`` turned by a world rotation (about its centre) and then moved by ``translation`` (world)."""
    rot = torch.tensor(rotation, dtype=torch.float32) @ camera.rotation
    pos = camera.position + torch.tensor(np.asarray(translation), dtype=torch.float32)
    return Camera(camera.intrinsics, rot, pos, camera.height, camera.width)


def sun_lights(rng: np.random.Generator, domain: Domain) -> Lights:
    """Ambient plus a sun at a random azimuth and an elevation in the domain's range."""
    elevation = math.radians(uniform(rng, domain.sun_elevation_deg))
    azimuth = rng.uniform(0, 2 * math.pi)
    direction = torch.tensor(
        [
            math.cos(elevation) * math.cos(azimuth),
            math.sin(elevation),
            math.cos(elevation) * math.sin(azimuth),
        ],
        dtype=torch.float32,
    )
    ambient = uniform(rng, domain.ambient)
    sun = min(uniform(rng, domain.sun_intensity), 1.0 - ambient)
    return Lights(ambient, direction, sun, torch.zeros(0, 3), torch.zeros(0), torch.zeros(0))
