"""Indoor scenes in the spirit of Hypersim: a closed room (floor, ceiling, walls) with furniture, lit by
ceiling point lights plus ambient light; the camera stands inside and moves a little between frames."""

from __future__ import annotations

import math

import numpy as np
import torch

from stablemtl.data.synthetic.lighting import Lights
from stablemtl.data.synthetic.sampling import Domain, make_camera, moved_camera, random_material, uniform
from stablemtl.data.synthetic.scene import Scene, SceneBuilder, rotation


def _furniture(b: SceneBuilder, rng, domain: Domain, half_x: float, half_z: float, room_h: float) -> None:
    for _ in range(int(rng.integers(3, 9))):
        mat = random_material(b, rng, domain)
        yaw = rng.uniform(0, math.pi) if rng.random() < 0.5 else 0.0
        rot = rotation(yaw=yaw)
        x = rng.uniform(-half_x + 0.6, half_x - 0.6)
        z = rng.uniform(-half_z + 0.6, half_z - 0.6)
        kind = rng.random()
        if kind < 0.3:  # table: a top on four legs
            w, d, h = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.6), rng.uniform(0.45, 0.8)
            b.add("box", (x, h, z), (w, 0.03, d), mat, rot=rot)
            leg = random_material(b, rng, domain, patterns=("solid",))
            for lx in (-w + 0.05, w - 0.05):
                for lz in (-d + 0.05, d - 0.05):
                    arm = rot @ np.array([lx, 0.0, lz])
                    b.add("cylinder", (x + arm[0], h / 2, z + arm[2]), (0.03, h / 2, 0.03), leg)
        elif kind < 0.55:  # cabinet / sofa block
            w, d, h = rng.uniform(0.3, 1.0), rng.uniform(0.25, 0.5), rng.uniform(0.3, 1.0)
            b.add("box", (x, h, z), (w, h, d), mat, rot=rot)
        elif kind < 0.7:  # stool / lamp base
            r, h = rng.uniform(0.1, 0.35), rng.uniform(0.2, 0.6)
            b.add("cylinder", (x, h, z), (r, h, r), mat)
        elif kind < 0.85:  # ball / lamp shade
            r = rng.uniform(0.1, 0.4)
            b.add("sphere", (x, r + rng.uniform(0, 1.2), z), (r, r, r), mat)
        else:  # rug
            b.add("box", (x, 0.01, z), (rng.uniform(0.5, 1.2), 0.01, rng.uniform(0.4, 1.0)), mat, rot=rot)


def build_indoor(rng: np.random.Generator, domain: Domain, height: int, width: int) -> Scene:
    """A random furnished room at ``height x width`` pixels (no sky is ever visible)."""
    b = SceneBuilder()
    half_x, half_z, room_h = rng.uniform(2.0, 4.0), rng.uniform(2.0, 4.0), rng.uniform(2.5, 3.2)
    floor = random_material(b, rng, domain, patterns=("checker", "stripes", "noise"), value=(0.3, 0.7))
    ceiling = b.material("solid", [(0.85, 0.85, 0.82)])
    wall = random_material(b, rng, domain, value=(0.5, 0.9))
    b.add("quad", (0, 0, 0), (half_x, 1, half_z), floor)
    b.add("quad", (0, room_h, 0), (half_x, 1, half_z), ceiling)
    quarter = math.pi / 2
    for sign in (-1.0, 1.0):
        # Walls are quads turned upright: pitch 90 deg makes local y (the quad normal) horizontal.
        b.add(
            "quad", (sign * half_x, room_h / 2, 0), (room_h / 2, 1, half_z), wall, rot=rotation(roll=quarter)
        )
        b.add(
            "quad", (0, room_h / 2, sign * half_z), (half_x, 1, room_h / 2), wall, rot=rotation(pitch=quarter)
        )
    _furniture(b, rng, domain, half_x, half_z, room_h)

    ambient = uniform(rng, domain.ambient)
    n_lights = int(rng.integers(1, 3))
    positions = torch.tensor(
        [
            [rng.uniform(-half_x, half_x) * 0.6, room_h - 0.3, rng.uniform(-half_z, half_z) * 0.6]
            for _ in range(n_lights)
        ],
        dtype=torch.float32,
    )
    power = (1.0 - ambient) / n_lights
    lights = Lights(
        ambient, None, 0.0, positions, torch.full((n_lights,), power), torch.full((n_lights,), 3.5)
    )

    eye = np.array([rng.uniform(-0.7, 0.7) * half_x, uniform(rng, domain.camera_height) - 0.2, 0.0])
    eye[2] = rng.uniform(-0.7, 0.7) * half_z
    angle = rng.uniform(0, 2 * math.pi)
    target = np.array([math.cos(angle) * half_x, rng.uniform(0.3, 1.4), math.sin(angle) * half_z])
    camera = make_camera(eye, target, uniform(rng, domain.fov_deg), height, width)
    camera_next = moved_camera(
        camera, rotation(yaw=rng.normal(0, 0.03), pitch=rng.normal(0, 0.01)), rng.normal(0, 0.08, 3)
    )
    return b.build(camera, camera_next, lights, domain.sky_zenith, domain.sky_horizon, 255)
