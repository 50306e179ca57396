"""Procedural renderer with exact labels for every task (see ``render.py`` for the image formation)."""

from stablemtl.data.synthetic.camera import Camera, intrinsics_from_fov, look_at
from stablemtl.data.synthetic.render import ALL_TASKS, TONEMAP_GAMMA, render_scene, tonemap
from stablemtl.data.synthetic.sample import make_scene, render_sample, scene_rng
from stablemtl.data.synthetic.sampling import Domain
from stablemtl.data.synthetic.scene import Scene, SceneBuilder

__all__ = [
    "ALL_TASKS",
    "TONEMAP_GAMMA",
    "Camera",
    "Domain",
    "Scene",
    "SceneBuilder",
    "intrinsics_from_fov",
    "look_at",
    "make_scene",
    "render_sample",
    "render_scene",
    "scene_rng",
    "tonemap",
]
