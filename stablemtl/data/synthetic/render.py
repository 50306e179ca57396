"""Render a :class:`Scene` into an image pair and exact labels for every task.

Image formation (document of record for every label):

- Per primary ray the renderer finds the nearest surface and computes linear ``albedo`` (RGB in
  [0.02, 0.95]) and grey ``shading`` in [0, 1] (see ``lighting.py``); ``image_linear = albedo * shading``.
  Rays that hit nothing see a sky gradient (no albedo / shading / depth / normal / flow there).
- The stored RGB is tone-mapped: ``image = clip(image_linear, 0, 1) ** (1 / 2.2)`` (``TONEMAP_GAMMA``).
- Anti-aliasing is adaptive: pixels on an object, shadow or texture edge (their 4-neighbour differs) are
  re-rendered with 4 rotated-grid sub-samples whose *linear* colours are averaged before tone mapping.
  Every other pixel is its centre ray, so there ``image ** 2.2 == albedo * shading`` exactly.
- Labels always come from the pixel-centre ray.
- ``depth``: camera z of the hit (metres). ``normal``: unit, camera frame with +x image-left, +y up,
  +z towards the camera, facing the camera. ``semantic``: the object's class, or the sky class.
- ``optical_flow``: ``project_{t+1}(X_{t+1}) - (u, v)`` in pixels, where ``X_{t+1}`` is the same surface
  point after the object's rigid motion. ``scene_flow``: ``X_{t+1}`` in the frame-t+1 camera minus
  ``X_t`` in the frame-t camera (metres, OpenCV axes). Flow is valid where the point is in front of the
  t+1 camera, projects inside the image and is not occluded at t+1: a ray from the t+1 camera centre
  towards it must hit nothing nearer (the exact form of comparing its projected depth with the t+1
  depth render at that sub-pixel position).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from stablemtl.data.synthetic.camera import Camera
from stablemtl.data.synthetic.lighting import shading as shade
from stablemtl.data.synthetic.primitives import Shapes, local_normal, nearest_hit
from stablemtl.data.synthetic.scene import Scene
from stablemtl.data.synthetic.select import select
from stablemtl.data.synthetic.textures import albedo as texture_albedo
from stablemtl.tasks import get_task

TONEMAP_GAMMA = 2.2
# The tasks this renderer draws labels for (a capability of the renderer, not of the task registry).
ALL_TASKS = ("albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow")
PAIR_TASKS = tuple(t for t in ALL_TASKS if get_task(t).needs_pair)
# Rotated-grid sub-pixel offsets (u, v) for anti-aliasing.
AA_OFFSETS = ((0.125, 0.375), (0.375, -0.125), (-0.125, -0.375), (-0.375, 0.125))
OCCLUSION_TOLERANCE = 1e-3  # relative distance by which an occluder must be nearer than the point


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting.

    The renderer's tensors are small (tens of thousands of rays): extra threads cost more in
    synchronisation than they save, and on a shared machine they make a render up to 10x slower.
    Parallelism comes from worker processes instead (``make_dataset(workers=...)``).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tonemap(linear: torch.Tensor) -> torch.Tensor:
    """Linear radiance -> displayed RGB in [0, 1]."""
    return linear.clamp(0, 1) ** (1 / TONEMAP_GAMMA)


def _sky(scene: Scene, dirs: torch.Tensor) -> torch.Tensor:
    elevation = (dirs[:, 1] / dirs.norm(dim=-1)).clamp(0, 1)[:, None]
    return scene.sky_horizon * (1 - elevation) + scene.sky_zenith * elevation


def trace(scene: Scene, shapes: Shapes, origins: torch.Tensor, dirs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Nearest hit of each ray ``(N, 3)``: ``index`` (N,) object id or -1, ``t`` (N,), world ``point``,
    unit-primitive ``local`` point, unit world ``normal`` facing the ray, ``albedo`` (N, 3),
    ``shading`` (N,) and ``linear`` colour (N, 3) (sky colour on misses)."""
    t, index = nearest_hit(shapes, origins, dirs)
    n = t.shape[0]
    origins, dirs = origins.expand(n, 3), dirs.expand(n, 3)
    out = {
        "index": index,
        "t": t,
        "point": torch.zeros(n, 3),
        "local": torch.zeros(n, 3),
        "normal": torch.zeros(n, 3),
        "albedo": torch.zeros(n, 3),
        "shading": torch.zeros(n),
        "linear": _sky(scene, dirs),
    }
    hit = (index >= 0).nonzero().squeeze(1)  # gathers by position: cheaper than repeated boolean masks
    if hit.numel():
        idx = index.index_select(0, hit)
        d = dirs.index_select(0, hit)
        point = origins.index_select(0, hit) + t.index_select(0, hit)[:, None] * d
        local = shapes.to_local(point, idx)
        normal = shapes.normal_to_world(local_normal(shapes.kind.index_select(0, idx), local), idx)
        # Two-sided surfaces: the normal faces the viewer.
        normal = select(((normal * d).sum(-1) > 0)[:, None], -normal, normal)
        scaled = local * shapes.scale.index_select(0, idx)  # metres in the object's frame
        alb = texture_albedo(scene.materials, scene.material.index_select(0, idx), scaled)
        sha = shade(shapes, scene.lights, point, normal)
        for key, value in (("point", point), ("local", local), ("normal", normal), ("albedo", alb)):
            out[key].index_copy_(0, hit, value)
        out["shading"].index_copy_(0, hit, sha)
        out["linear"].index_copy_(0, hit, alb * sha[:, None])
    return out


def _edges(centre: dict[str, torch.Tensor], height: int, width: int) -> torch.Tensor:
    """Pixels on an object edge, a shadow edge or a strong texture edge: ``(H*W,)`` bool.

    Smooth variation inside an object (noise textures, shading falloff) is left to the centre ray.
    """
    ids = centre["index"].view(height, width)
    shading = centre["shading"].view(height, width)
    albedo = centre["albedo"].view(height, width, 3)
    edge = torch.zeros(height, width, dtype=torch.bool)
    for dim in (0, 1):
        n = (height if dim == 0 else width) - 1
        a, b = (slice(1, None), slice(None)), (slice(None, n), slice(None))
        if dim == 1:
            a, b = a[::-1], b[::-1]
        jump = (
            (ids[a] != ids[b])
            | ((shading[a] - shading[b]).abs() > 0.08)
            | ((albedo[a] - albedo[b]).abs().amax(-1) > 0.12)
        )
        edge[a] |= jump
        edge[b] |= jump
    return edge.view(-1)


def render_view(
    scene: Scene, shapes: Shapes, camera: Camera, antialias: bool = True
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Tone-mapped RGB ``(3, H, W)`` in [0, 1] of one frame and the centre-ray buffers of :func:`trace`."""
    h, w = camera.height, camera.width
    uv = camera.pixel_grid()[0]
    origins, dirs = camera.rays(uv)
    centre = trace(scene, shapes, origins, dirs)
    linear = centre["linear"]
    if antialias:
        edge = _edges(centre, h, w)
        if edge.any():
            # All sub-samples of all edge pixels in one batch: (S * E, 2) -> mean over S.
            sub = (uv[edge][None] + torch.tensor(AA_OFFSETS)[:, None]).reshape(-1, 2)
            o, d = camera.rays(sub)
            samples = trace(scene, shapes, o, d)["linear"].view(len(AA_OFFSETS), -1, 3)
            linear = linear.clone()
            linear[edge] = samples.mean(0)
    return tonemap(linear).T.reshape(3, h, w), centre


def _flow(scene: Scene, centre: dict[str, torch.Tensor], uv: torch.Tensor):
    """Optical flow ``(N, 2)``, scene flow ``(N, 3)`` and their validity ``(N,)`` for frame-t centre hits."""
    n = uv.shape[0]
    optical, scene_flow = torch.zeros(n, 2), torch.zeros(n, 3)
    valid = centre["index"] >= 0
    idx = centre["index"][valid]
    point_t = centre["point"][valid]
    point_next = scene.shapes_next.to_world(centre["local"][valid], idx)
    cam_t = scene.camera.to_camera(point_t)
    cam_next = scene.camera_next.to_camera(point_next)
    ahead = cam_next[:, 2] > 1e-3
    uv_next = scene.camera_next.project(torch.where(ahead[:, None], cam_next, torch.ones_like(cam_next)))
    w, h = scene.camera.width, scene.camera.height
    inside = (
        ahead
        & (uv_next[:, 0] >= -0.5)
        & (uv_next[:, 0] < w - 0.5)
        & (uv_next[:, 1] >= -0.5)
        & (uv_next[:, 1] < h - 0.5)
    )
    # Occlusion at t+1: cast from the t+1 camera centre to the point (t = 1 at the point itself).
    visible = torch.zeros_like(inside)
    if inside.any():
        origin = scene.camera_next.position[None]
        nearest, _ = nearest_hit(scene.shapes_next, origin, point_next[inside] - origin)
        visible[inside] = nearest >= 1 - OCCLUSION_TOLERANCE
    optical[valid] = uv_next - uv[valid]
    scene_flow[valid] = cam_next - cam_t
    valid = valid.clone()
    valid[valid.clone()] = visible
    return optical, scene_flow, valid


def render_scene(
    scene: Scene, tasks: tuple[str, ...] | list[str] = ALL_TASKS, pair: bool = True, antialias: bool = True
) -> dict:
    """Render ``scene`` into a Sample-like dict (``source`` is added by the caller).

    Returns ``{"image": (3,H,W) float [0,1], "next_image": (3,H,W) or absent, "labels": {task: tensor},
    "valid": {task: (H,W) bool}, "intrinsics": (3,3)}`` for the requested ``tasks`` (flow tasks need
    ``pair=True``).
    """
    with single_thread():
        return _render_scene(scene, tasks, pair, antialias)


def _render_scene(scene: Scene, tasks, pair: bool, antialias: bool) -> dict:
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if unknown:
        raise ValueError(f"tasks {unknown} cannot be rendered; the renderer gives {', '.join(ALL_TASKS)}")
    if not pair and any(t in PAIR_TASKS for t in tasks):
        raise ValueError(f"tasks {[t for t in tasks if t in PAIR_TASKS]} need a frame pair (pair=True)")
    cam = scene.camera
    h, w = cam.height, cam.width
    image, centre = render_view(scene, scene.shapes, cam, antialias)
    sample: dict = {"image": image, "labels": {}, "valid": {}, "intrinsics": cam.intrinsics.clone()}
    if pair:
        sample["next_image"], _ = render_view(scene, scene.shapes_next, scene.camera_next, antialias)

    hit = centre["index"] >= 0
    grid = lambda x: x.reshape(h, w, -1).permute(2, 0, 1).contiguous()  # noqa: E731  (N, C) -> (C, H, W)
    labels, valid = sample["labels"], sample["valid"]
    mask = hit.view(h, w)
    if "depth" in tasks:
        depth = cam.to_camera(centre["point"])[:, 2]
        labels["depth"], valid["depth"] = grid(torch.where(hit, depth, 0.0)), mask
    if "normal" in tasks:
        # World -> OpenCV camera (R^T n), then to the label convention (+x left, +y up, +z to camera).
        normal = -(centre["normal"] @ cam.rotation)
        labels["normal"], valid["normal"] = grid(normal), mask
    if "semantic" in tasks:
        ids = torch.where(hit, scene.semantic[centre["index"].clamp_min(0)], scene.sky_semantic)
        labels["semantic"] = grid(ids.long())
        valid["semantic"] = labels["semantic"][0] != 255
    if "albedo" in tasks:
        labels["albedo"], valid["albedo"] = grid(centre["albedo"]), mask
    if "shading" in tasks:
        labels["shading"], valid["shading"] = grid(centre["shading"]), mask
    if pair and any(t in PAIR_TASKS for t in tasks):
        uv = cam.pixel_grid()[0]
        optical, scene_flow, flow_valid = _flow(scene, centre, uv)
        if "optical_flow" in tasks:
            labels["optical_flow"], valid["optical_flow"] = grid(optical), flow_valid.view(h, w)
        if "scene_flow" in tasks:
            labels["scene_flow"], valid["scene_flow"] = grid(scene_flow), flow_valid.view(h, w)
    return sample
