"""Street scenes in the spirit of Virtual KITTI: a road between buildings, poles with signs and traffic
lights, trees, parked and moving vehicles, sky; the camera drives forward along the road (+z)."""

from __future__ import annotations

import math

import numpy as np

from stablemtl.data.synthetic.sampling import (
    Domain,
    make_camera,
    moved_camera,
    random_material,
    sun_lights,
    uniform,
)
from stablemtl.data.synthetic.scene import Scene, SceneBuilder, rotation
from stablemtl.tasks import get_task
from stablemtl.tasks.base import IGNORE_INDEX

# Class ids as the semantic task names them (its class_names are the one list of classes).
ROAD, BUILDING, POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, SKY, VEHICLE = (
    get_task("semantic").class_names.index(name)
    for name in ("road", "building", "pole", "traffic light", "traffic sign", "vegetation", "sky", "vehicle")
)
ROAD_HALF_WIDTH = 4.0
FAR = 90.0  # scene extent along the road (metres)


def _buildings(b: SceneBuilder, rng, domain: Domain, side: float) -> None:
    z = rng.uniform(-6, 2)
    while z < FAR:
        length = rng.uniform(6, 16)
        if rng.random() < 0.85:
            height = rng.uniform(5, 22)
            depth = rng.uniform(6, 12)
            x = side * (ROAD_HALF_WIDTH + rng.uniform(3.5, 6) + depth / 2)
            mat = random_material(b, rng, domain, patterns=("checker", "stripes", "palette", "solid"))
            b.add("box", (x, height / 2, z + length / 2), (depth / 2, height / 2, length / 2), mat, BUILDING)
        z += length + rng.uniform(0, 3)


def _poles(b: SceneBuilder, rng, domain: Domain, side: float) -> None:
    grey = b.material("noise", [(0.35, 0.35, 0.37), (0.5, 0.5, 0.5)], 4.0)
    sign_mat = random_material(b, rng, domain, patterns=("solid", "stripes"), value=(0.6, 0.9))
    light_mat = b.material("solid", [(0.08, 0.08, 0.07)])
    z = rng.uniform(3, 12)
    while z < FAR * 0.8:
        x = side * (ROAD_HALF_WIDTH + rng.uniform(0.6, 1.8))
        height = rng.uniform(3, 5.5)
        b.add("cylinder", (x, height / 2, z), (0.07, height / 2, 0.07), grey, POLE)
        kind = rng.random()
        if kind < 0.35:  # traffic sign: a thin panel facing the road
            b.add("box", (x, height - 0.4, z), (0.3, 0.3, 0.03), sign_mat, TRAFFIC_SIGN)
        elif kind < 0.65:  # traffic light: a housing hanging towards the road
            arm = -side * 1.2
            b.add("box", (x + arm / 2, height - 0.1, z), (abs(arm) / 2, 0.05, 0.05), grey, POLE)
            b.add("box", (x + arm, height - 0.5, z), (0.15, 0.4, 0.15), light_mat, TRAFFIC_LIGHT)
        z += rng.uniform(10, 22)


def _trees(b: SceneBuilder, rng, domain: Domain, side: float) -> None:
    bark = b.material("noise", [(0.2, 0.13, 0.08), (0.3, 0.2, 0.12)], 6.0)
    z = rng.uniform(2, 10)
    while z < FAR * 0.8:
        x = side * (ROAD_HALF_WIDTH + rng.uniform(1.8, 3.2))
        leaves = random_material(b, rng, domain, hue=domain.vegetation_hue, patterns=("noise", "palette"))
        if rng.random() < 0.6:
            trunk = rng.uniform(1.5, 3)
            b.add("cylinder", (x, trunk / 2, z), (0.15, trunk / 2, 0.15), bark, VEGETATION)
            r = rng.uniform(1.0, 2.0)
            b.add("sphere", (x, trunk + r * 0.8, z), (r, r * rng.uniform(0.8, 1.3), r), leaves, VEGETATION)
        else:  # a bush
            r = rng.uniform(0.4, 0.9)
            b.add("sphere", (x, r * 0.6, z), (r, r * 0.7, r * 1.3), leaves, VEGETATION)
        z += rng.uniform(6, 16)


def _vehicles(b: SceneBuilder, rng, domain: Domain) -> None:
    tyre = b.material("solid", [(0.05, 0.05, 0.05)])
    glass = b.material("solid", [(0.1, 0.12, 0.15)])
    wheel_axis = rotation(roll=math.pi / 2)  # cylinders run along local y; wheels turn about x
    for _ in range(int(rng.integers(2, 8))):
        lane = rng.choice([-1.0, 1.0])
        parked = rng.random() < 0.3
        centre = np.array([lane * (ROAD_HALF_WIDTH - 1.0 if parked else rng.uniform(1.5, 2.3)), 0.0, 0.0])
        centre[2] = rng.uniform(5, 55)
        # Traffic on the -x lane (image-right) drives away from the camera, the other lane towards it.
        speed = 0.0 if parked else (-lane) * rng.uniform(0.3, 1.6)
        yaw = rng.normal(0, 0.04)
        rot = rotation(yaw=yaw)
        turn = rotation(yaw=rng.normal(0, 0.01))
        move = np.array([math.sin(yaw) * speed, 0.0, math.cos(yaw) * speed])
        body = random_material(b, rng, domain, patterns=("solid",), value=(0.3, 0.9))
        length, width = rng.uniform(1.9, 2.5), rng.uniform(0.8, 1.0)
        parts = [
            ("box", (0, 0.75, 0), (width, 0.38, length), body, np.eye(3)),
            ("box", (0, 1.35, -0.2), (width * 0.9, 0.25, length * 0.5), glass, np.eye(3)),
        ]
        for wx in (-width, width):
            for wz in (-length * 0.65, length * 0.65):
                parts.append(("cylinder", (wx, 0.35, wz), (0.35, 0.12, 0.35), tyre, wheel_axis))
        for kind, offset, half, mat, local_rot in parts:
            # Parts sit in the car's frame; the car turns about its centre and then moves, rigidly.
            arm = rot @ np.asarray(offset, dtype=np.float64)
            shift = turn @ arm - arm + move
            b.add(kind, centre + arm, half, mat, VEHICLE, rot=rot @ local_rot, move=shift, turn=turn)


def build_street(rng: np.random.Generator, domain: Domain, height: int, width: int) -> Scene:
    """A random street scene (see module docstring) at ``height x width`` pixels."""
    b = SceneBuilder()
    road = b.material("noise", [(0.12, 0.12, 0.13), (0.2, 0.2, 0.21)], uniform(rng, (1.0, 4.0)))
    b.add("quad", (0, 0, FAR / 2), (ROAD_HALF_WIDTH, 1, FAR / 2 + 10), road, ROAD)
    terrain = random_material(b, rng, domain, hue=domain.vegetation_hue, patterns=("noise", "palette"))
    walk = b.material("checker", [(0.45, 0.44, 0.42), (0.55, 0.54, 0.5)], 1.5)
    for side in (-1.0, 1.0):
        centre = side * (ROAD_HALF_WIDTH + 20)
        b.add("quad", (centre, 0, FAR / 2), (20, 1, FAR / 2 + 10), terrain, IGNORE_INDEX)
        centre = side * (ROAD_HALF_WIDTH + 1.5)
        b.add("box", (centre, 0.075, FAR / 2), (1.5, 0.075, FAR / 2 + 10), walk, IGNORE_INDEX)
        _buildings(b, rng, domain, side)
        _poles(b, rng, domain, side)
        _trees(b, rng, domain, side)
    _vehicles(b, rng, domain)

    cam_height = uniform(rng, domain.camera_height)
    x0 = rng.uniform(-2.5, 2.5)
    yaw = rng.normal(0, 0.05)
    target = (x0 + 10 * math.sin(yaw), cam_height - rng.uniform(0.3, 1.2), 10 * math.cos(yaw))
    camera = make_camera((x0, cam_height, 0.0), target, uniform(rng, domain.fov_deg), height, width)
    step = rng.uniform(0.3, 1.5)
    heading = camera.rotation[:, 2].numpy().astype(np.float64)
    heading = np.array([heading[0], 0.0, heading[2]]) / np.hypot(heading[0], heading[2])
    camera_next = moved_camera(camera, rotation(yaw=rng.normal(0, 0.02)), heading * step)
    lights = sun_lights(rng, domain)
    return b.build(camera, camera_next, lights, domain.sky_zenith, domain.sky_horizon, SKY)
