"""FlyingThings3D-like scenes: random textured primitives flying in front of a textured backdrop, each
with its own random rigid motion, seen by a camera that also moves."""

from __future__ import annotations

import numpy as np
import torch

from stablemtl.data.synthetic.lighting import Lights
from stablemtl.data.synthetic.sampling import Domain, make_camera, moved_camera, random_material, uniform
from stablemtl.data.synthetic.scene import Scene, SceneBuilder, random_rotation, rotation

KINDS = ("sphere", "box", "cylinder", "box")  # boxes twice as often: more edges, more texture


def build_flying(rng: np.random.Generator, domain: Domain, height: int, width: int) -> Scene:
    """A random flying-objects scene at ``height x width`` pixels (the backdrop fills the view)."""
    b = SceneBuilder()
    # Backdrop: the inside of a large box, so every ray hits something.
    back = random_material(b, rng, domain, patterns=("noise", "palette", "checker"))
    b.add("box", (0, 0, 0), (60, 60, 60), back, rot=rotation(yaw=rng.uniform(0, 6.3)))
    fov = uniform(rng, domain.fov_deg)
    tan_half = np.tan(np.radians(fov) / 2)
    for _ in range(int(rng.integers(6, 16))):
        depth = rng.uniform(3, 20)
        centre = np.array(
            [
                rng.uniform(-1, 1) * tan_half * depth,
                rng.uniform(-1, 1) * tan_half * depth * height / width,
                depth,
            ]
        )
        size = rng.uniform(0.2, 0.12 * depth + 0.3) * rng.uniform(0.5, 1.0, 3)
        mat = random_material(b, rng, domain)
        turn = rotation(*rng.normal(0, 0.12, 3))
        b.add(
            str(rng.choice(KINDS)),
            centre,
            size,
            mat,
            rot=random_rotation(rng),
            move=rng.normal(0, 0.35, 3),
            turn=turn,
        )

    camera = make_camera((0.0, 0.0, 0.0), (rng.normal(0, 0.5), rng.normal(0, 0.5), 10.0), fov, height, width)
    camera_next = moved_camera(camera, rotation(*rng.normal(0, 0.02, 3)), rng.normal(0, 0.25, 3))
    # Point lights near the camera: a sun would be shadowed by the enclosing backdrop.
    ambient = uniform(rng, domain.ambient)
    n_lights = int(rng.integers(1, 3))
    positions = torch.tensor(
        np.stack([rng.uniform((-6, 2, -4), (6, 8, 2)) for _ in range(n_lights)]), dtype=torch.float32
    )
    power = (1.0 - ambient) / n_lights
    lights = Lights(
        ambient, None, 0.0, positions, torch.full((n_lights,), power), torch.full((n_lights,), 18.0)
    )
    return b.build(camera, camera_next, lights, domain.sky_zenith, domain.sky_horizon, 255)
