"""The renderer's fast paths give bit for bit the numbers of the plain formulations they replace."""

import math

import pytest
import torch

from stablemtl.data.synthetic import make_scene, render_sample
from stablemtl.data.synthetic.culling import candidates, parallel_candidates
from stablemtl.data.synthetic.primitives import _INTERSECT, _local_frames, _local_rays, nearest_hit
from stablemtl.data.synthetic.select import select
from stablemtl.data.synthetic.textures import value_noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.int32])
def test_select_equals_where_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(7, 5, generator=g) * 100).to(dtype)
    b = (torch.randn(7, 5, generator=g) * 100).to(dtype)
    if dtype.is_floating_point:
        a[0, :3] = torch.tensor([math.inf, -math.inf, math.nan], dtype=dtype)
        a[1, 0] = -0.0
    cond = torch.rand(7, 5, generator=g) > 0.5
    cond[0, :3] = True
    for x, y, c in ((a, b, cond), (a, 2.5, cond), (-1.0, b, cond), (a, b, cond[:, :1])):
        got, want = select(c, x, y), torch.where(c, x, y)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.view(-1).view(torch.uint8), want.view(-1).view(torch.uint8))  # same bits


def test_select_needs_a_tensor():
    with pytest.raises(ValueError, match="tensor"):
        select(torch.tensor([True]), 1.0, 2.0)


def test_value_noise_equals_the_corner_by_corner_formula():
    points = torch.randn(300, 3, generator=torch.Generator().manual_seed(1)) * 7
    salt = torch.arange(300, dtype=torch.float32) % 5
    base = torch.floor(points)
    frac = points - base
    fade = frac * frac * (3 - 2 * frac)
    want = torch.zeros(300)
    for corner in range(8):  # the reference: one lattice corner at a time
        bits = torch.tensor([(corner >> k) & 1 for k in range(3)], dtype=torch.float32)
        weight = torch.where(bits.bool(), fade, 1 - fade).prod(-1)
        cell = base + bits
        dot = cell[:, 0] * 12.9898 + cell[:, 1] * 78.233 + cell[:, 2] * 37.719 + salt * 17.13
        want = want + weight * torch.frac(torch.sin(dot) * 43758.5453).abs()
    assert torch.equal(value_noise(points, salt), want)


@pytest.mark.parametrize("shared", ["origin", "direction", "neither"])
def test_local_rays_equal_the_dense_transform(shared):
    """Per-pair transforms equal transforming every ray into every object's frame, bit for bit."""
    scene = make_scene("street", 0, 16)
    shapes = scene.shapes
    g = torch.Generator().manual_seed(2)
    n, m = 300, shapes.kind.shape[0]
    origins = torch.randn(1 if shared == "origin" else n, 3, generator=g) * 5
    dirs = torch.randn(1 if shared == "direction" else n, 3, generator=g)
    ray = torch.randint(0, n, (n // 10,), generator=g)  # few pairs: the per-pair path
    obj = torch.randint(0, m, (n // 10,), generator=g)
    o_l, d_l = _local_rays(shapes, origins, dirs, ray, obj)
    a, offset = _local_frames(shapes)
    rows = a.reshape(m * 3, 3).T

    def dense(x):  # the replaced formulation: every ray (or the shared one) into every object's frame
        every = (x @ rows).view(x.shape[0], m, 3)
        return every.expand(n, m, 3)[ray, obj]

    dense_o, dense_d = dense(origins) + offset[obj], dense(dirs)
    assert torch.equal(o_l, dense_o) and torch.equal(d_l, dense_d)


def test_culling_is_object_major_and_keeps_every_true_hit_of_sun_rays():
    scene = make_scene("street", 1, 32)
    sh = scene.shapes
    o, d = scene.camera.rays(scene.camera.pixel_grid()[0])
    points = o + d * 15.0
    sun = torch.tensor([[0.2, 0.9, 0.3]])
    a, offset = _local_frames(sh)
    ray, obj = candidates(sh.translation, sh.scale.norm(dim=-1), points, sun, a, offset)
    assert bool((obj[1:] >= obj[:-1]).all())  # grouped by object: the intersector relies on it
    pairs = set(zip(ray.tolist(), obj.tolist()))
    assert pairs == {
        tuple(p)
        for p in parallel_candidates(sh.translation, sh.scale.norm(dim=-1), points, sun, a, offset).tolist()
    }
    # Brute force: every (ray, object) with a finite hit must be a candidate.
    m = sh.kind.shape[0]
    every = torch.arange(points.shape[0]).repeat_interleave(m), torch.arange(m).repeat(points.shape[0])
    o_l, d_l = _local_rays(sh, points, sun, *every)
    kinds = sh.kind[every[1]]
    t = torch.full((kinds.shape[0],), math.inf)
    for kind, fn in _INTERSECT.items():
        sel = kinds == kind
        t[sel] = fn(o_l[sel], d_l[sel])
    hits = {(int(r), int(k)) for r, k in zip(every[0][torch.isfinite(t)], every[1][torch.isfinite(t)])}
    assert hits and hits <= pairs


def test_render_is_deterministic_across_calls_and_sizes():
    """Same seed, same bits; the fast paths keep no state between renders."""
    first = render_sample("flying", seed=3, size=24)
    render_sample("street", seed=0, size=40)  # a different scene in between
    again = render_sample("flying", seed=3, size=24)
    assert torch.equal(first["image"], again["image"]) and torch.equal(
        first["next_image"], again["next_image"]
    )
    for task, label in first["labels"].items():
        assert torch.equal(label, again["labels"][task]) and torch.equal(
            first["valid"][task], again["valid"][task]
        )


@pytest.mark.parametrize("profile", ["indoor", "flying"])
def test_point_light_culling_keeps_every_occluder_of_the_segment(profile):
    """Culling from the light's side changes no shadow: the nearest hit before the light is the same."""
    scene = make_scene(profile, 4, 48)
    sh = scene.shapes
    o, d = scene.camera.rays(scene.camera.pixel_grid()[0])
    t, _ = nearest_hit(sh, o, d)
    points = (o + t[:, None] * d)[torch.isfinite(t)] * 0.999  # just off the surfaces, inside the scene
    light = scene.lights.point_position[0]
    to_light = light - points
    dist = to_light.norm(dim=-1)
    dirs = to_light / dist[:, None]
    full, _ = nearest_hit(sh, points, dirs)
    culled, _ = nearest_hit(sh, points, dirs, through=light)
    assert torch.equal(full >= dist, culled >= dist)
    assert (full < dist).any() and (full >= dist).any()  # both shadowed and lit segments are tested
    before = full < dist
    assert torch.equal(full[before], culled[before])  # the occluder's distance itself is exact
