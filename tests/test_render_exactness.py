"""The renderer's labels are exact: hand-computed scenes and geometric consistency on random scenes."""

import math

import numpy as np
import pytest
import torch

from stablemtl.data.synthetic import make_scene, render_sample
from stablemtl.data.synthetic.camera import Camera, intrinsics_from_fov, look_at
from stablemtl.data.synthetic.lighting import Lights
from stablemtl.data.synthetic.primitives import BOX, QUAD, nearest_hit
from stablemtl.data.synthetic.render import TONEMAP_GAMMA, _edges, render_scene, trace
from stablemtl.data.synthetic.scene import SceneBuilder, rotation

SIZE = 33  # odd: the centre pixel is the optical axis


def _camera(pos, target, size=SIZE, fov=60.0):
    pos = torch.tensor(pos, dtype=torch.float32)
    return Camera(intrinsics_from_fov(fov, size, size), look_at(pos, torch.tensor(target)), pos, size, size)


def _street_toy(camera_next=None, move=(0.0, 0.0, 0.0)):
    """Ground (road) + a box (building) 10 m ahead, sun straight overhead."""
    b = SceneBuilder()
    grey = b.material("solid", [(0.5, 0.4, 0.3)])
    b.add("quad", (0, 0, 0), (100, 1, 100), grey, semantic=0)
    b.add("box", (0, 2.0, 11.0), (1.0, 2.0, 1.0), grey, semantic=1, move=move)
    cam = _camera((0.0, 1.5, 0.0), (0.0, 1.5, 10.0))
    sun = Lights(0.3, torch.tensor([0.0, 1.0, 0.0]), 0.6, torch.zeros(0, 3), torch.zeros(0), torch.zeros(0))
    return b.build(cam, camera_next or cam, sun, (0.2, 0.3, 0.9), (0.8, 0.8, 0.9), 6)


def test_hand_computed_depth_normal_semantic_shading():
    s = render_scene(_street_toy(), antialias=False)
    c = SIZE // 2
    f = s["intrinsics"][0, 0].item()
    # Centre pixel: the box's front face at z = 10, facing the camera, lit only by ambient light.
    assert s["labels"]["depth"][0, c, c].item() == pytest.approx(10.0, abs=1e-4)
    assert torch.allclose(s["labels"]["normal"][:, c, c], torch.tensor([0.0, 0.0, 1.0]), atol=1e-5)
    assert s["labels"]["semantic"][0, c, c].item() == 1
    assert s["labels"]["shading"][0, c, c].item() == pytest.approx(0.3, abs=1e-6)
    # Bottom row: the road, at z = 1.5 f / (v - cy); its normal is up; ambient + sun = 0.9.
    v = SIZE - 1
    assert s["labels"]["depth"][0, v, 0].item() == pytest.approx(1.5 * f / (v - c), rel=1e-5)
    assert torch.allclose(s["labels"]["normal"][:, v, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-5)
    assert s["labels"]["semantic"][0, v, 0].item() == 0
    assert s["labels"]["shading"][0, v, 0].item() == pytest.approx(0.9, abs=1e-6)
    # Top corner: sky -> class 6, no depth / normal / albedo.
    assert s["labels"]["semantic"][0, 0, 0].item() == 6
    assert not s["valid"]["depth"][0, 0] and not s["valid"]["normal"][0, 0] and not s["valid"]["albedo"][0, 0]
    assert torch.allclose(s["labels"]["albedo"][:, c, c], torch.tensor([0.5, 0.4, 0.3]))


def test_hand_computed_flow_forward_motion_and_moving_object():
    cam = _camera((0.0, 1.5, 0.0), (0.0, 1.5, 10.0))
    cam_next = Camera(cam.intrinsics, cam.rotation, cam.position + torch.tensor([0.0, 0.0, 1.0]), SIZE, SIZE)
    s = render_scene(_street_toy(cam_next, move=(0.5, 0.0, 0.0)), antialias=False)
    k = s["intrinsics"]
    f, c = k[0, 0].item(), SIZE // 2
    u, v = c + 2, c - 3  # on the box front face (x = 2/f*10 < 1, y above ground)
    x, y, z = (u - c) / f * 10.0, (v - c) / f * 10.0, 10.0
    # Box moves +0.5 m in world x = image-left for this camera (OpenCV x = -world x); camera forward 1 m.
    x1, y1, z1 = x - 0.5, y, z - 1.0
    flow = s["labels"]["optical_flow"][:, v, u]
    assert flow[0].item() == pytest.approx(f * x1 / z1 + c - u, abs=1e-3)
    assert flow[1].item() == pytest.approx(f * y1 / z1 + c - v, abs=1e-3)
    assert torch.allclose(s["labels"]["scene_flow"][:, v, u], torch.tensor([-0.5, 0.0, -1.0]), atol=1e-4)
    # Static road: scene flow is exactly the camera's motion, -1 m along z.
    assert torch.allclose(
        s["labels"]["scene_flow"][:, SIZE - 1, 0], torch.tensor([0.0, 0.0, -1.0]), atol=1e-4
    )
    assert not s["valid"]["optical_flow"][0, 0]  # sky


def test_occluded_and_out_of_view_points_have_no_flow():
    # Camera moves 3 m to the right: the road left of the box disappears behind it or leaves the view.
    cam = _camera((0.0, 1.5, 0.0), (0.0, 1.5, 10.0))
    right = cam.rotation[:, 0]
    cam_next = Camera(cam.intrinsics, cam.rotation, cam.position + 3.0 * right, SIZE, SIZE)
    scene = _street_toy(cam_next)
    s = render_scene(scene, antialias=False)
    flow, valid = s["labels"]["optical_flow"], s["valid"]["optical_flow"]
    uv = torch.stack(torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="xy"), 0)
    target = uv + flow
    outside = (target < -0.5).any(0) | (target > SIZE - 0.5).any(0)
    hit = s["valid"]["depth"]
    assert not (valid & outside).any()
    assert (hit & outside).any()  # some points do leave the view
    # Every remaining invalid hit is occluded at t+1: the ray to it hits something nearer.
    occluded = hit & ~outside & ~valid
    assert occluded.any()
    depth, k = s["labels"]["depth"][0], s["intrinsics"]
    vv, uu = occluded.nonzero(as_tuple=True)
    pts_cam = torch.stack(
        [(uu - k[0, 2]) / k[0, 0], (vv - k[1, 2]) / k[1, 1], torch.ones_like(uu.float())], -1
    )
    world = (pts_cam * depth[vv, uu][:, None]) @ cam.rotation.T + cam.position
    t, _ = nearest_hit(scene.shapes_next, cam_next.position[None], world - cam_next.position)
    assert (t < 0.999).all()


def _backproject(depth, k):
    h, w = depth.shape
    v, u = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([(u - k[0, 2]) / k[0, 0] * depth, (v - k[1, 2]) / k[1, 1] * depth, depth], -1)


@pytest.mark.parametrize("profile,seed", [("street", 1), ("flying", 2), ("indoor", 3)])
def test_flow_reprojection_lands_on_the_surface_at_t_plus_1(profile, seed):
    scene = make_scene(profile, seed, 40, split="test")
    s = render_scene(scene, antialias=False)
    k = s["intrinsics"]
    valid = s["valid"]["optical_flow"]
    assert valid.float().mean() > 0.2
    p_t = _backproject(s["labels"]["depth"][0], k)[valid]  # (P, 3) camera-t points
    sf = s["labels"]["scene_flow"].permute(1, 2, 0)[valid]
    flow = s["labels"]["optical_flow"].permute(1, 2, 0)[valid]
    p_next = p_t + sf
    proj = torch.stack(
        [k[0, 0] * p_next[:, 0] / p_next[:, 2] + k[0, 2], k[1, 1] * p_next[:, 1] / p_next[:, 2] + k[1, 2]], -1
    )
    vv, uu = valid.nonzero(as_tuple=True)
    assert torch.allclose(proj, torch.stack([uu, vv], -1).float() + flow, atol=2e-3)
    # Independently: the t+1 ray through (u, v) + flow hits a surface exactly at the moved point's depth.
    o, d = scene.camera_next.rays(torch.stack([uu, vv], -1).float() + flow)
    t, _ = nearest_hit(scene.shapes_next, o, d)
    assert torch.allclose(t, p_next[:, 2], rtol=2e-3)


@pytest.mark.parametrize("profile,seed", [("street", 4), ("flying", 5)])
def test_scene_flow_is_the_rigid_displacement_of_the_surface_point(profile, seed):
    scene = make_scene(profile, seed, 32, split="test")
    s = render_scene(scene, antialias=False)
    cam, cam1 = scene.camera, scene.camera_next
    buf = trace(scene, scene.shapes, *cam.rays(cam.pixel_grid()[0]))
    valid = s["valid"]["scene_flow"].reshape(-1)
    idx, x_t = buf["index"][valid], buf["point"][valid]
    sh0, sh1 = scene.shapes, scene.shapes_next
    # World motion of object m: X' = R1 R0^T (X - T0) + T1.
    rel = torch.einsum("nji,nj->ni", sh0.rotation[idx], x_t - sh0.translation[idx])
    x_next = torch.einsum("nij,nj->ni", sh1.rotation[idx], rel) + sh1.translation[idx]
    expected = cam1.to_camera(x_next) - cam.to_camera(x_t)
    got = s["labels"]["scene_flow"].permute(1, 2, 0).reshape(-1, 3)[valid]
    assert torch.allclose(got, expected, atol=1e-4)
    assert expected.abs().max() > 0.05  # the scene does move


def test_normals_agree_with_depth_gradients_on_planes():
    scene = make_scene("indoor", 7, 48, split="train")
    s = render_scene(scene, tasks=("depth", "normal"), pair=False, antialias=False)
    k, depth = s["intrinsics"], s["labels"]["depth"][0]
    pts = _backproject(depth, k)
    du = pts[1:-1, 2:] - pts[1:-1, :-2]
    dv = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n_cv = torch.linalg.cross(dv, du)  # OpenCV camera frame, facing the camera (z < 0)
    n_cv = n_cv / n_cv.norm(dim=-1, keepdim=True)
    n_label = -n_cv  # to +x left, +y up, +z towards the camera
    buf = trace(scene, scene.shapes, *scene.camera.rays(scene.camera.pixel_grid()[0]))
    ids = buf["index"].view(48, 48)
    planar = (scene.shapes.kind[ids] == QUAD) | (scene.shapes.kind[ids] == BOX)
    same = torch.ones(46, 46, dtype=torch.bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            same &= ids[1 + dy : 47 + dy, 1 + dx : 47 + dx] == ids[1:-1, 1:-1]
            same &= (
                s["labels"]["normal"][:, 1 + dy : 47 + dy, 1 + dx : 47 + dx]
                - s["labels"]["normal"][:, 1:-1, 1:-1]
            ).abs().amax(0) < 1e-4
    mask = same & planar[1:-1, 1:-1]
    assert mask.sum() > 500
    cos = (n_label * s["labels"]["normal"][:, 1:-1, 1:-1].permute(1, 2, 0)).sum(-1)[mask]
    assert cos.min() > math.cos(math.radians(0.5))
    assert torch.allclose(
        s["labels"]["normal"].norm(dim=0)[s["valid"]["normal"]], torch.tensor(1.0), atol=1e-5
    )


@pytest.mark.parametrize("profile", ["street", "indoor", "flying"])
def test_image_is_albedo_times_shading(profile):
    scene = make_scene(profile, 11, 40, split="test")
    exact = render_scene(scene, tasks=("albedo", "shading"), pair=False, antialias=False)
    hit = exact["valid"]["albedo"]
    linear = exact["image"] ** TONEMAP_GAMMA
    product = exact["labels"]["albedo"] * exact["labels"]["shading"]
    assert torch.allclose(linear[:, hit], product[:, hit], atol=2e-5)
    # With anti-aliasing the formula still holds on every pixel that is not an edge.
    aa = render_scene(scene, tasks=("albedo", "shading"), pair=False, antialias=True)
    buf = trace(scene, scene.shapes, *scene.camera.rays(scene.camera.pixel_grid()[0]))
    smooth = ~_edges(buf, 40, 40).view(40, 40) & hit
    assert smooth.float().mean() > 0.3
    assert torch.allclose((aa["image"] ** TONEMAP_GAMMA)[:, smooth], product[:, smooth], atol=2e-5)
    assert aa["image"].min() >= 0 and aa["image"].max() <= 1


def test_semantic_ids_match_the_primitives_hit():
    scene = make_scene("street", 3, 40, split="test")
    s = render_scene(scene, tasks=("semantic",), pair=False, antialias=False)
    buf = trace(scene, scene.shapes, *scene.camera.rays(scene.camera.pixel_grid()[0]))
    idx = buf["index"]
    expected = torch.where(idx >= 0, scene.semantic[idx.clamp_min(0)], torch.tensor(6))
    assert torch.equal(s["labels"]["semantic"].view(-1), expected)
    present = set(s["labels"]["semantic"].unique().tolist())
    assert {0, 1, 6} <= present  # road, building and sky in every street view
    assert present <= set(range(8)) | {255}


def test_rotated_scaled_cylinder_depth():
    b = SceneBuilder()
    m = b.material("solid", [(0.5, 0.5, 0.5)])
    # A cylinder lying along world x (rolled 90 deg), radius 0.5, axis at z = 6: the centre ray meets z = 5.5.
    b.add("cylinder", (0.0, 1.5, 6.0), (0.5, 3.0, 0.5), m, rot=rotation(roll=math.pi / 2))
    cam = _camera((0.0, 1.5, 0.0), (0.0, 1.5, 10.0))
    lights = Lights(1.0, None, 0.0, torch.zeros(0, 3), torch.zeros(0), torch.zeros(0))
    s = render_scene(
        b.build(cam, cam, lights, (0, 0, 1), (1, 1, 1), 6), tasks=("depth", "normal"), pair=False
    )
    c = SIZE // 2
    assert s["labels"]["depth"][0, c, c].item() == pytest.approx(5.5, abs=1e-4)
    assert torch.allclose(s["labels"]["normal"][:, c, c], torch.tensor([0.0, 0.0, 1.0]), atol=1e-4)
    # Along the axis (image rows fixed) the depth stays 5.5; across it, it grows.
    assert s["labels"]["depth"][0, c, c + 3].item() == pytest.approx(5.5, abs=1e-4)
    assert s["labels"]["depth"][0, c + 2, c].item() > 5.5


def test_determinism_by_seed():
    a = render_sample("street", seed=5, size=32)
    b = render_sample("street", seed=5, size=32)
    c = render_sample("street", seed=6, size=32)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["next_image"], b["next_image"])
    for task in a["labels"]:
        assert torch.equal(a["labels"][task], b["labels"][task])
        assert torch.equal(a["valid"][task], b["valid"][task])
    assert not torch.equal(a["image"], c["image"])


def test_any_resolution_and_intrinsics():
    default = render_sample("indoor", seed=0, split="train")  # the default: 128 x 128
    assert default["image"].shape == (3, 128, 128) and default["labels"]["depth"].shape == (1, 128, 128)
    s = render_sample("flying", seed=0, size=(24, 40))
    assert s["image"].shape == (3, 24, 40) and s["labels"]["optical_flow"].shape == (2, 24, 40)
    k = s["intrinsics"]
    assert k[0, 2].item() == pytest.approx(19.5) and k[1, 2].item() == pytest.approx(11.5)
    assert np.isclose(k[0, 0].item(), k[1, 1].item())
