"""Hand-computed lighting and textures: hard sun and point-light shadows, point-light falloff, patterns."""

import pytest
import torch

from stablemtl.data.synthetic.camera import Camera, intrinsics_from_fov, look_at
from stablemtl.data.synthetic.lighting import Lights
from stablemtl.data.synthetic.render import render_scene
from stablemtl.data.synthetic.scene import SceneBuilder
from stablemtl.data.synthetic.textures import PATTERNS, Materials, albedo

SIZE = 33
C = SIZE // 2


def _camera():
    pos = torch.tensor([0.0, 1.5, 0.0])
    k = intrinsics_from_fov(60.0, SIZE, SIZE)
    return Camera(k, look_at(pos, torch.tensor([0.0, 1.5, 10.0])), pos, SIZE, SIZE)


def _render(builder: SceneBuilder, lights: Lights) -> dict:
    cam = _camera()
    scene = builder.build(cam, cam, lights, (0.2, 0.3, 0.9), (0.8, 0.8, 0.9), 6)
    return render_scene(scene, tasks=("depth", "shading"), pair=False, antialias=False)


def test_sun_casts_a_hard_shadow_of_a_floating_slab():
    # Ground at y = 0; a thin slab over z in [5, 7], |x| < 1 at y = 1; the sun straight overhead.
    b = SceneBuilder()
    grey = b.material("solid", [(0.5, 0.5, 0.5)])
    b.add("quad", (0, 0, 0), (100, 1, 100), grey, semantic=0)
    b.add("box", (0.0, 1.0, 6.0), (1.0, 0.05, 1.0), grey, semantic=1)
    sun = Lights(0.3, torch.tensor([0.0, 1.0, 0.0]), 0.6, torch.zeros(0, 3), torch.zeros(0), torch.zeros(0))
    s = _render(b, sun)
    f = s["intrinsics"][1, 1].item()
    depth, shade = s["labels"]["depth"][0], s["labels"]["shading"][0]
    shadowed = lit = 0
    for v in range(C + 1, SIZE):
        z = 1.5 * f / (v - C)  # the ground seen in row v, below the horizon
        if 5.2 < z < 6.8:  # under the slab (the camera sees it past the slab's near edge)
            assert depth[v, C].item() == pytest.approx(z, rel=1e-5)
            assert shade[v, C].item() == pytest.approx(0.3, abs=1e-6)  # ambient only
            shadowed += 1
        elif z < 4.5:
            assert shade[v, C].item() == pytest.approx(0.9, abs=1e-6)  # ambient + sun
            lit += 1
    assert shadowed >= 1 and lit >= 3
    # Beside the slab (same depth, |x| > 1) the ground is lit.
    v = next(v for v in range(C + 1, SIZE) if 5.2 < 1.5 * f / (v - C) < 6.8)
    u_side = C + int(1.6 * (v - C) / 1.5) + 1  # |x| = z (u - c) / f > 1.05
    assert u_side < SIZE and shade[v, u_side].item() == pytest.approx(0.9, abs=1e-6)
    # The slab's top, facing the sun, is fully lit.
    assert shade[depth < 5.0].max().item() == pytest.approx(0.9, abs=1e-6)


def test_point_light_falloff_cosine_and_shadow():
    # A wall (front face of a box) at z = 10 facing the camera; a point light on the axis at z = 5.
    b = SceneBuilder()
    grey = b.material("solid", [(0.5, 0.5, 0.5)])
    b.add("box", (0.0, 1.5, 11.0), (4.0, 4.0, 1.0), grey, semantic=1)
    power, reach, ambient = 0.5, 5.0, 0.2
    light = torch.tensor([[0.0, 1.5, 5.0]])
    lights = Lights(ambient, None, 0.0, light, torch.tensor([power]), torch.tensor([reach]))
    s = _render(b, lights)
    f = s["intrinsics"][0, 0].item()
    shade = s["labels"]["shading"][0]

    def expected(u: int, v: int) -> float:
        # Wall point seen at (u, v): |x| = 10 (u - c) / f, y offset 10 (v - c) / f, 5 m behind the light.
        offset = torch.tensor([10.0 * (u - C) / f, 10.0 * (v - C) / f, 5.0])
        dist = offset.norm().item()
        cos = 5.0 / dist
        return ambient + power * cos / (1.0 + (dist / reach) ** 2)

    assert shade[C, C].item() == pytest.approx(ambient + power / 2, abs=2e-4)  # cos 1, dist = reach
    for u, v in ((C + 8, C), (C, C - 10), (C - 10, C + 5)):
        assert shade[v, u].item() == pytest.approx(expected(u, v), abs=2e-4), (u, v)
    # A small sphere half-way between the light and the wall point seen at (c + 8, c) shadows it; the
    # mirrored pixel stays lit. Pixel u > c is world x < 0 for this camera (image-right = world -x).
    x = -10.0 * 8 / f
    b.add("sphere", (x / 2, 1.5, 7.5), (0.2, 0.2, 0.2), grey, semantic=2)
    s = _render(b, lights)
    shade = s["labels"]["shading"][0]
    assert s["labels"]["depth"][0, C, C + 8].item() == pytest.approx(10.0, abs=1e-4)  # still the wall
    assert shade[C, C + 8].item() == pytest.approx(ambient, abs=1e-6)
    assert shade[C, C - 8].item() == pytest.approx(expected(C - 8, C), abs=2e-4)


def _materials(pattern: str, colours, frequency=1.0, axis=(1.0, 0.0, 0.0)) -> Materials:
    return Materials(
        pattern=torch.tensor([PATTERNS.index(pattern)]),
        colours=torch.tensor([colours], dtype=torch.float32),
        frequency=torch.tensor([frequency]),
        axis=torch.tensor([axis]),
    )


COLOURS = [(0.1, 0.2, 0.3), (0.7, 0.6, 0.5), (0.4, 0.9, 0.2)]


def test_texture_patterns_pick_their_colours():
    points = torch.tensor([[0.25, 0.25, 0.25], [1.25, 0.25, 0.25], [1.25, 1.25, 0.25], [0.75, 0.25, 0.25]])
    index = torch.zeros(4, dtype=torch.long)
    colours = torch.tensor(COLOURS)
    solid = albedo(_materials("solid", COLOURS), index, points)
    assert torch.equal(solid, colours[0].expand(4, 3))
    # Checker: parity of the integer cell (cells (0,0,0), (1,0,0), (1,1,0), (0,0,0)).
    checker = albedo(_materials("checker", COLOURS), index, points)
    assert torch.equal(checker, colours[[0, 1, 0, 0]])
    # Stripes along x at 1 cycle / m: the second half of each metre takes colour 1.
    stripes = albedo(_materials("stripes", COLOURS), index, points)
    assert torch.equal(stripes, colours[[0, 0, 0, 1]])
    # Doubling the frequency halves the period: x = 0.25 -> 0.5 (colour 0), x = 0.75 -> 1.5 (colour 0).
    fine = albedo(_materials("stripes", COLOURS, frequency=2.0), index, points)
    assert torch.equal(fine[[0, 3]], colours[[0, 0]])
    # Noise blends colours 0 and 1; palette picks one of the three colours per point.
    grid = torch.rand(500, 3, generator=torch.Generator().manual_seed(0)) * 4
    many = torch.zeros(500, dtype=torch.long)
    noise = albedo(_materials("noise", COLOURS), many, grid)
    weight = (noise - colours[0]) / (colours[1] - colours[0])  # the same blend weight in every channel
    assert torch.allclose(weight, weight[:, :1].expand(-1, 3), atol=1e-5)
    assert weight.min() >= 0 and weight.max() <= 1 and weight.std() > 0.05
    palette = albedo(_materials("palette", COLOURS), many, grid)
    matches = (palette[:, None] == colours[None]).all(-1)  # [N,3]
    assert matches.any(-1).all() and matches.any(0).sum() >= 2
