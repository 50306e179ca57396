"""Virtual KITTI 2, in its own layout: ``<root>/SceneXX/<variation>/frames/<kind>/Camera_N/<file>``.

- ``rgb/rgb_NNNNN.jpg``; ``depth/depth_NNNNN.png``: 16-bit, centimetres (sky = 65535, so beyond 80 m);
- ``classSegmentation/classgt_NNNNN.png``: class colours, listed in ``SceneXX/<variation>/colors.txt``
  (the built-in table below is used when the file is absent);
- ``forwardFlow/flow_NNNNN.png``: 16-bit RGB, ``u = (R * 2 / 65535 - 1) * (W - 1)`` and
  ``v = (G * 2 / 65535 - 1) * (H - 1)`` pixels; ``B = 0`` marks invalid flow (sky, frame exits);
- ``forwardSceneFlow/sceneFlow_NNNNN.png``: 16-bit RGB, ``(x, y, z) = (RGB * 2 / 65535 - 1) * 10`` metres,
  valid where the forward flow is;
- ``SceneXX/<variation>/intrinsic.txt``: per-frame ``fx fy cx cy`` of each camera (the official
  values 725.0087, 725.0087, 620.5, 187.0 are used when it is absent).

Normals are computed from the depth with the camera intrinsics (see ``geometry.normals_from_depth``).
Split files: any vKITTI path per line, with or without a leading folder (the official per-task lists
name ``original/SceneXX/.../depth_NNNNN.png``, ``classgt``, flow files or
``normal_estimated/SceneXX/.../normal_NNNNN.npy``); the frames are looked up under ``root``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import Entry, Reader, add_label, check_shape, new_sample
from stablemtl.data.readers.formats import read_png16, read_png_uint8, read_rgb
from stablemtl.data.readers.geometry import normals_from_depth
from stablemtl.tasks import IGNORE_INDEX

MIN_DEPTH, MAX_DEPTH = 1e-5, 80.0
DEFAULT_INTRINSICS = (725.0087, 725.0087, 620.5, 187.0)
# vKITTI 2 category -> the 8 classes (road, building, pole, light, sign, vegetation, sky, vehicle);
# Terrain, GuardRail, Misc and Undefined are ignored.
CLASS_MAP = {
    "Road": 0,
    "Building": 1,
    "Pole": 2,
    "TrafficLight": 3,
    "TrafficSign": 4,
    "Tree": 5,
    "Vegetation": 5,
    "Sky": 6,
    "Truck": 7,
    "Car": 7,
    "Van": 7,
}
# The colours vKITTI 2 ships in colors.txt.
COLOURS = {
    "Terrain": (210, 0, 200),
    "Sky": (90, 200, 255),
    "Tree": (0, 199, 0),
    "Vegetation": (90, 240, 0),
    "Building": (140, 140, 140),
    "Road": (100, 60, 100),
    "GuardRail": (250, 100, 255),
    "TrafficSign": (255, 255, 0),
    "TrafficLight": (200, 200, 0),
    "Pole": (255, 130, 0),
    "Misc": (80, 80, 80),
    "Truck": (160, 60, 60),
    "Car": (255, 127, 80),
    "Van": (0, 139, 139),
    "Undefined": (0, 0, 0),
}
_PATH = re.compile(r"(Scene\d+)/([^/]+)/frames/[^/]+/(Camera_\d)/[A-Za-z]+_(\d+)\.\w+$")
_KIND = {  # task -> (folder, file prefix, extension)
    "rgb": ("rgb", "rgb", "jpg"),
    "depth": ("depth", "depth", "png"),
    "semantic": ("classSegmentation", "classgt", "png"),
    "optical_flow": ("forwardFlow", "flow", "png"),
    "scene_flow": ("forwardSceneFlow", "sceneFlow", "png"),
}


def decode_flow_png(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """vKITTI 2 forward-flow PNG ``(H, W, 3)`` uint16 (RGB) -> flow ``(H, W, 2)`` pixels, valid ``(H, W)``."""
    h, w = data.shape[:2]
    flow = data[..., :2].astype(np.float32) * (2.0 / 65535.0) - 1.0
    flow[..., 0] *= w - 1
    flow[..., 1] *= h - 1
    valid = data[..., 2] != 0
    return np.where(valid[..., None], flow, 0.0), valid


def decode_scene_flow_png(data: np.ndarray) -> np.ndarray:
    """vKITTI 2 scene-flow PNG ``(H, W, 3)`` uint16 (RGB) -> ``(H, W, 3)`` metres (OpenCV axes)."""
    return (data.astype(np.float32) * (2.0 / 65535.0) - 1.0) * 10.0


class VirtualKitti2Reader(Reader):
    """vKITTI 2 frames labelling depth, normal, semantic (8 classes), optical and scene flow, at 187x621.

    With a flow task, a frame needs the next frame and its forward flow (the last frame of a sequence
    has none). The full 375x1242 frame is used (the KITTI benchmark crop is for evaluation only).
    """

    name = "vkitti2"
    available_tasks = ("depth", "normal", "semantic", "optical_flow", "scene_flow")
    default_resolution = (187, 621)
    # Official: horizontal flip for every task; colour jitter for optical flow only (its random
    # 1024x256 crop, which distorts the aspect ratio, is left out).
    augmentation_default = Augmentation(hflip=True)
    task_augmentation_default: ClassVar[Mapping[str, Augmentation]] = {
        "optical_flow": Augmentation(hflip=True, jitter=(0.4, 0.4, 0.2, 0.127))
    }

    def discover(self) -> list[Entry]:
        return [self._entry(p) for p in sorted(self.root.glob("Scene*/*/frames/rgb/Camera_*/rgb_*.jpg"))]

    def parse_line(self, fields: list[str]) -> Entry:
        return self._entry(Path(fields[0]))

    def _entry(self, path: Path) -> Entry:
        match = _PATH.search(path.as_posix())
        if match is None:
            raise ValueError(f"{path} is not a vKITTI 2 SceneXX/<variation>/frames/<kind>/Camera_N/ path")
        scene, variation, camera, frame = match.groups()
        # Any prefix is dropped: the official lists name "original/Scene02/..." (their copy of the data)
        # and "normal_estimated/Scene02/.../normal_00000.npy" (their precomputed normals).
        return {"base": self.root / scene / variation, "camera": camera, "frame": int(frame)}

    def _file(self, entry: Entry, kind: str, frame: int | None = None) -> Path:
        folder, prefix, ext = _KIND[kind]
        frame = entry["frame"] if frame is None else frame
        return entry["base"] / "frames" / folder / entry["camera"] / f"{prefix}_{frame:05d}.{ext}"

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        out = [self._file(entry, "rgb")]
        if {"optical_flow", "scene_flow"} & set(tasks):
            out += [self._file(entry, "rgb", entry["frame"] + 1), self._file(entry, "optical_flow")]
        kinds = {"depth": "depth", "normal": "depth", "semantic": "semantic", "scene_flow": "scene_flow"}
        return out + [self._file(entry, kinds[t]) for t in tasks if t in kinds]

    def intrinsics(self, entry: Entry) -> tuple[float, float, float, float]:
        """``(fx, fy, cx, cy)`` of the frame from ``intrinsic.txt`` (official constants if absent)."""
        path = entry["base"] / "intrinsic.txt"
        if not path.exists():
            return DEFAULT_INTRINSICS
        camera = int(entry["camera"].split("_")[1])
        for line in path.read_text().splitlines()[1:]:
            values = line.split()
            if len(values) == 6 and int(values[0]) == entry["frame"] and int(values[1]) == camera:
                return tuple(float(v) for v in values[2:])  # type: ignore[return-value]
        raise ValueError(f"{path} has no row for frame {entry['frame']} of {entry['camera']}")

    def class_ids(self, entry: Entry, colours: np.ndarray) -> np.ndarray:
        """Class-colour image ``(H, W, 3)`` -> 8-class ids ``(H, W)`` (ignored: IGNORE_INDEX)."""
        table = dict(COLOURS)
        listing = entry["base"] / "colors.txt"
        if listing.exists():
            for line in listing.read_text().splitlines()[1:]:
                name, *rgb = line.split()
                table[name] = tuple(int(c) for c in rgb)
        ids = np.full(colours.shape[:2], IGNORE_INDEX, dtype=np.int64)
        seen = np.zeros(colours.shape[:2], dtype=bool)
        for name, rgb in table.items():
            hit = (colours == np.asarray(rgb, dtype=np.uint8)).all(-1)
            seen |= hit
            if name in CLASS_MAP:
                ids[hit] = CLASS_MAP[name]
        if not seen.all():
            odd = colours[~seen][0].tolist()
            raise ValueError(f"{(~seen).sum()} pixels have colours that are no vKITTI 2 class, e.g. {odd}")
        return ids

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        pair = bool({"optical_flow", "scene_flow"} & set(tasks))
        next_image = read_rgb(self._file(entry, "rgb", entry["frame"] + 1)) if pair else None
        sample = new_sample(read_rgb(self._file(entry, "rgb")), next_image)
        h, w = sample["image"].shape[-2:]
        fx, fy, cx, cy = self.intrinsics(entry)
        sample["intrinsics"] = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=torch.float32)
        if "depth" in tasks or "normal" in tasks:
            depth = read_png16(self._file(entry, "depth"), 1).astype(np.float32) / 100.0
            check_shape(depth, (h, w), "depth")
            valid = (depth > MIN_DEPTH) & (depth < MAX_DEPTH)
            if "depth" in tasks:
                add_label(sample, "depth", depth[None], valid)
            if "normal" in tasks:
                normal, defined = normals_from_depth(depth, valid, fx, fy, cx, cy)
                add_label(sample, "normal", normal.transpose(2, 0, 1), defined)
        if "semantic" in tasks:
            colours = read_png_uint8(self._file(entry, "semantic"))
            check_shape(colours, (h, w, 3), "classgt")
            ids = self.class_ids(entry, colours)
            add_label(sample, "semantic", ids[None], ids != IGNORE_INDEX)
        if pair:
            flow, flow_valid = decode_flow_png(read_png16(self._file(entry, "optical_flow"), 3))
            check_shape(flow, (h, w, 2), "forward flow")
            if "optical_flow" in tasks:
                add_label(sample, "optical_flow", flow.transpose(2, 0, 1), flow_valid)
            if "scene_flow" in tasks:
                motion = decode_scene_flow_png(read_png16(self._file(entry, "scene_flow"), 3))
                check_shape(motion, (h, w, 3), "scene flow")
                add_label(sample, "scene_flow", motion.transpose(2, 0, 1), flow_valid)
        return sample
