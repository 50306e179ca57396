"""A scene at two instants: objects with materials and semantic ids, their rigid motion, lights, cameras.

``SceneBuilder`` is the small, declarative way profiles describe scenes (``add("box", centre, half_size,
...)``); ``build`` turns the list into the batched tensors the renderer consumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from stablemtl.data.synthetic.camera import Camera
from stablemtl.data.synthetic.lighting import Lights
from stablemtl.data.synthetic.primitives import KIND_NAMES, Shapes
from stablemtl.data.synthetic.textures import PATTERNS, Materials
from stablemtl.tasks import IGNORE_INDEX

QUAD_THICKNESS = 1e-4  # the y half-size given to every quad (its own y extent is ignored)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """``(3, 3)`` rotation ``Ry(yaw) @ Rx(pitch) @ Rz(roll)`` (radians; y is up)."""
    cy, sy, cp, sp, cr, sr = (
        np.cos(yaw),
        np.sin(yaw),
        np.cos(pitch),
        np.sin(pitch),
        np.cos(roll),
        np.sin(roll),
    )
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random ``(3, 3)`` rotation (from a random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


@dataclass
class Scene:
    """Everything the renderer needs. Object ``m`` uses ``materials[material[m]]`` and has class
    ``semantic[m]``; ``shapes`` / ``camera`` are frame t, ``shapes_next`` / ``camera_next`` frame t+1.
    Rays that hit nothing see the sky (``sky_zenith`` / ``sky_horizon`` linear RGB) of class
    ``sky_semantic``."""

    shapes: Shapes
    shapes_next: Shapes
    material: torch.Tensor
    materials: Materials
    semantic: torch.Tensor
    lights: Lights
    camera: Camera
    camera_next: Camera
    sky_zenith: torch.Tensor
    sky_horizon: torch.Tensor
    sky_semantic: int = IGNORE_INDEX


@dataclass
class SceneBuilder:
    """Collects objects one by one; ``build`` returns a :class:`Scene`."""

    objects: list[dict] = field(default_factory=list)
    material_list: list[tuple[int, np.ndarray, float, np.ndarray]] = field(default_factory=list)

    def material(self, pattern: str, colours, frequency: float = 1.0, axis=(1.0, 0.0, 0.0)) -> int:
        """Register a material; returns its index. ``colours``: up to 3 linear RGB triples in [0, 1]."""
        if pattern not in PATTERNS:
            raise ValueError(f"pattern {pattern!r} is unknown; known: {', '.join(PATTERNS)}")
        cols = np.asarray(colours, dtype=np.float64).reshape(-1, 3)
        cols = np.concatenate([cols, np.repeat(cols[-1:], 3 - len(cols), axis=0)])[:3]
        ax = np.asarray(axis, dtype=np.float64)
        self.material_list.append((PATTERNS.index(pattern), cols, float(frequency), ax / np.linalg.norm(ax)))
        return len(self.material_list) - 1

    def add(
        self,
        kind: str,
        centre,
        half_size,
        material: int,
        semantic: int = IGNORE_INDEX,
        rot: np.ndarray | None = None,
        move=(0.0, 0.0, 0.0),
        turn: np.ndarray | None = None,
    ) -> None:
        """Add a ``kind`` primitive (sphere/box/cylinder/quad) of ``half_size`` (3 half extents, metres;
        a quad's y entry is ignored) at ``centre``, rotated by ``rot``; between the frames it rotates by
        ``turn`` about its centre and translates by ``move``."""
        if kind not in KIND_NAMES:
            raise ValueError(f"kind {kind!r} is unknown; known: {', '.join(KIND_NAMES)}")
        half = np.broadcast_to(np.asarray(half_size, dtype=np.float64), (3,)).copy()
        if kind == "quad":
            # A quad has no thickness: a tiny y half-size keeps its bounding volumes tight.
            half[1] = QUAD_THICKNESS
        r0 = np.eye(3) if rot is None else np.asarray(rot)
        dr = np.eye(3) if turn is None else np.asarray(turn)
        self.objects.append(
            {
                "kind": KIND_NAMES[kind],
                "r0": r0,
                "t0": np.asarray(centre, dtype=np.float64),
                "s": half,
                "r1": dr @ r0,
                "t1": np.asarray(centre, dtype=np.float64) + np.asarray(move, dtype=np.float64),
                "material": material,
                "semantic": semantic,
            }
        )

    def build(
        self, camera: Camera, camera_next: Camera, lights: Lights, sky_zenith, sky_horizon, sky_semantic
    ):
        """The :class:`Scene` (float32 tensors) of everything added so far."""
        if not self.objects:
            raise ValueError("a scene needs at least one object")
        if lights.total() > 1.0 + 1e-6:
            raise ValueError(f"ambient + light intensities must be <= 1 (got {lights.total():.3f})")

        # Objects sorted by kind let the intersector work on contiguous slices.
        objects = sorted(self.objects, key=lambda o: o["kind"])

        def f32(key: str) -> torch.Tensor:
            return torch.tensor(np.stack([o[key] for o in objects]), dtype=torch.float32)

        kind = torch.tensor([o["kind"] for o in objects])
        scale = f32("s")
        shapes = Shapes(kind, f32("r0"), f32("t0"), scale)
        shapes_next = Shapes(kind, f32("r1"), f32("t1"), scale)
        materials = Materials(
            pattern=torch.tensor([m[0] for m in self.material_list]),
            colours=torch.tensor(np.stack([m[1] for m in self.material_list]), dtype=torch.float32),
            frequency=torch.tensor([m[2] for m in self.material_list], dtype=torch.float32),
            axis=torch.tensor(np.stack([m[3] for m in self.material_list]), dtype=torch.float32),
        )
        return Scene(
            shapes=shapes,
            shapes_next=shapes_next,
            material=torch.tensor([o["material"] for o in objects]),
            materials=materials,
            semantic=torch.tensor([o["semantic"] for o in objects]),
            lights=lights,
            camera=camera,
            camera_next=camera_next,
            sky_zenith=torch.as_tensor(sky_zenith, dtype=torch.float32),
            sky_horizon=torch.as_tensor(sky_horizon, dtype=torch.float32),
            sky_semantic=int(sky_semantic),
        )
