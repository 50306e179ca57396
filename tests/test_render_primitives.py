"""Ray-primitive intersection against hand-computed values, and culling that never loses a hit."""

import math

import pytest
import torch

from stablemtl.data.synthetic import make_scene
from stablemtl.data.synthetic.culling import cone_candidates
from stablemtl.data.synthetic.primitives import (
    _INTERSECT,
    BOX,
    CYLINDER,
    QUAD,
    SPHERE,
    Shapes,
    local_normal,
    nearest_hit,
)
from stablemtl.data.synthetic.scene import rotation


def _one(kind, centre=(0.0, 0.0, 5.0), scale=(1.0, 1.0, 1.0), rot=None):
    r = torch.eye(3) if rot is None else torch.tensor(rot, dtype=torch.float32)
    return Shapes(torch.tensor([kind]), r[None], torch.tensor([centre]), torch.tensor([scale]))


@pytest.mark.parametrize(
    "kind,scale,expected",
    [(SPHERE, (1.0, 1.0, 1.0), 4.0), (BOX, (0.5, 2.0, 1.5), 3.5), (CYLINDER, (0.7, 1.0, 0.7), 4.3)],
)
def test_axis_ray_hits_at_hand_computed_distance(kind, scale, expected):
    t, idx = nearest_hit(_one(kind, scale=scale), torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 1.0]]))
    assert t.item() == pytest.approx(expected, abs=1e-5) and idx.item() == 0


def test_oblique_ray_sphere_and_miss():
    shapes = _one(SPHERE, centre=(0.0, 0.0, 5.0))
    d = torch.tensor([[math.sin(0.1), 0.0, math.cos(0.1)], [0.5, 0.0, 1.0 / math.sqrt(2)]])
    t, idx = nearest_hit(shapes, torch.zeros(1, 3), d)
    # |o + t d - c|^2 = 1 with unit d: t = 5 cos a - sqrt(1 - 25 sin^2 a)
    a = 0.1
    assert t[0].item() == pytest.approx(5 * math.cos(a) - math.sqrt(1 - 25 * math.sin(a) ** 2), abs=1e-5)
    assert math.isinf(t[1].item()) and idx[1].item() == -1


def test_rotated_quad_and_its_normal():
    # A quad turned 90 deg about x stands upright facing -z/+z at z = 5.
    shapes = _one(QUAD, scale=(2.0, 1.0, 2.0), rot=rotation(pitch=math.pi / 2))
    t, idx = nearest_hit(shapes, torch.zeros(1, 3), torch.tensor([[0.1, 0.2, 1.0]]))
    assert t.item() == pytest.approx(5.0, abs=1e-5)
    p = torch.tensor([[0.5, 1.0, 5.0]])
    local = shapes.to_local(p, idx)
    n = shapes.normal_to_world(local_normal(shapes.kind[idx], local), idx)
    assert torch.allclose(n.abs(), torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6)


def test_cylinder_cap_is_hit_from_above():
    shapes = _one(CYLINDER, centre=(0.0, 0.0, 0.0), scale=(1.0, 2.0, 1.0))
    t, _ = nearest_hit(shapes, torch.tensor([[0.3, 10.0, 0.2]]), torch.tensor([[0.0, -1.0, 0.0]]))
    assert t.item() == pytest.approx(8.0, abs=1e-5)


def test_back_transform_round_trip():
    scene = make_scene("flying", 3, 16)
    sh = scene.shapes
    idx = torch.arange(sh.kind.shape[0])
    local = torch.randn(idx.shape[0], 3)
    assert torch.allclose(sh.to_local(sh.to_world(local, idx), idx), local, atol=1e-4)


def _brute_force(shapes, origins, dirs):
    """Every ray against every object with no culling: nearest ``t`` and index."""
    n = max(origins.shape[0], dirs.shape[0])
    origins, dirs = origins.expand(n, 3), dirs.expand(n, 3)
    ts = []
    for m in range(shapes.kind.shape[0]):
        rot, scale = shapes.rotation[m], shapes.scale[m]
        o_l = (origins - shapes.translation[m]) @ rot / scale
        d_l = dirs @ rot / scale
        ts.append(_INTERSECT[int(shapes.kind[m])](o_l, d_l))
    t, idx = torch.stack(ts, 1).min(1)
    return t, torch.where(torch.isfinite(t), idx, -1)


@pytest.mark.parametrize("profile", ["street", "flying", "indoor"])
def test_culled_intersection_equals_brute_force(profile):
    scene = make_scene(profile, 2, 48, split="test")
    sh = scene.shapes
    o, d = scene.camera.rays(scene.camera.pixel_grid()[0])
    t, idx = nearest_hit(sh, o, d)  # shared origin: tiled cones
    t_ref, idx_ref = _brute_force(sh, o, d)
    assert torch.equal(torch.isfinite(t), torch.isfinite(t_ref))
    fin = torch.isfinite(t)
    assert torch.allclose(t[fin], t_ref[fin], rtol=1e-4) and (idx[fin] == idx_ref[fin]).float().mean() > 0.999
    pts = o + d * torch.rand(d.shape[0], 1, generator=torch.Generator().manual_seed(0)) * 20
    sun = torch.tensor([[0.3, 0.8, -0.2]])
    t, idx = nearest_hit(sh, pts, sun)  # shared direction: tiled slabs
    t_ref, _ = _brute_force(sh, pts, sun)
    assert torch.equal(torch.isfinite(t), torch.isfinite(t_ref))
    assert torch.allclose(t[torch.isfinite(t)], t_ref[torch.isfinite(t)], rtol=1e-4)
    # Culling is conservative: every true hit pair is among the candidates.
    centre, radius = sh.translation, sh.scale.norm(dim=-1)
    pairs = {tuple(p) for p in cone_candidates(centre, radius, o, d).tolist()}
    hits = {(i, int(m)) for i, m in enumerate(_brute_force(sh, o, d)[1].tolist()) if m >= 0}
    assert hits <= pairs
    assert len(pairs) < d.shape[0] * sh.kind.shape[0] / 3  # and it does prune
