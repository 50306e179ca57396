"""Your own partially labelled data, without writing a reader: a folder of images plus per-task files.

::

    my_data/
      images/<name>.png|.jpg          the input frames (RGB, 8-bit)
      next_images/<name>.png|.jpg     the following frames (only needed for optical_flow / scene_flow)
      depth/<name>.png|.npy|.pfm      16-bit PNG in millimetres (``depth_scale``), or metres as float
      normal/<name>.npy|.png          (H, W, 3) unit vectors (+x left, +y up, +z to the camera); an 8-bit
                                      PNG stores (n + 1) / 2 * 255
      semantic/<name>.png             8-bit class ids, 255 = unlabelled
      optical_flow/<name>.flo|.png    Middlebury .flo, or a KITTI 16-bit flow PNG (pixels)
      scene_flow/<name>.npy|.pfm      (H, W, 3) metres, OpenCV axes (x right, y down, z forward)
      albedo/<name>.png|.npy          RGB in [0, 1]; valid where every channel is >= 0.004
      shading/<name>.png|.npy         grey (or RGB, reduced to 0.3 R + 0.59 G + 0.11 B) in [0, 1]
      valid/<task>/<name>.png         optional mask (non-zero = valid), intersected with the rules above

A task folder may hold files for only some images: the others are unlabelled for that task (absent from
their Sample). Non-finite values are invalid everywhere; depth must also be > 0, normals non-zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stablemtl.data.augment import Augmentation
from stablemtl.data.readers.base import Entry, Reader, add_label, check_shape, new_sample
from stablemtl.data.readers.formats import (
    read_flo,
    read_kitti_flow,
    read_npy,
    read_pfm,
    read_png16,
    read_png_uint8,
    read_rgb,
)
from stablemtl.data.readers.geometry import albedo_valid, luminance
from stablemtl.tasks import IGNORE_INDEX, get_task, task_names

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SUFFIXES = {
    "depth": (".png", ".npy", ".pfm"),
    "normal": (".npy", ".png"),
    "semantic": (".png",),
    "optical_flow": (".flo", ".png"),
    "scene_flow": (".npy", ".pfm"),
    "albedo": (".png", ".npy"),
    "shading": (".png", ".npy"),
}


def _find(folder: Path, stem: str, suffixes: Sequence[str]) -> Path | None:
    for suffix in suffixes:
        path = folder / f"{stem}{suffix}"
        if path.exists():
            return path
    return None


class PlainFolderReader(Reader):
    """A plain folder (layout above); ``depth_scale`` divides 16-bit depth PNGs (default 1000: mm -> m).

    The source name defaults to the folder's name; samples keep the native size unless ``resolution``
    is given (needed when image sizes differ, since a batch stacks samples).
    """

    name = "plain"
    available_tasks = tuple(SUFFIXES)
    default_resolution = None
    augmentation_default = Augmentation(hflip=True)

    def __init__(self, root, split=None, *args, depth_scale: float = 1000.0, source=None, **kwargs) -> None:
        self.depth_scale = float(depth_scale)
        if self.depth_scale <= 0:
            raise ValueError(f"depth_scale must be > 0, got {depth_scale}")
        root = Path(root)
        if not (root / "images").is_dir():
            raise ValueError(f"plain: {root / 'images'} is missing (a plain folder keeps its frames there)")
        super().__init__(root, split, *args, source=source or root.resolve().name, **kwargs)
        present = [t for t in self.tasks if any(t in e["labels"] for e in self.entries)]
        if not present:
            raise ValueError(f"plain: {root} has no label file for {self.tasks}")
        self.tasks = [t for t in task_names() if t in present]

    def discover(self) -> list[Entry]:
        images = sorted(p for p in (self.root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return [self._entry(p.stem) for p in images]

    def parse_line(self, fields: list[str]) -> Entry:
        entry = self._entry(Path(fields[0]).stem)
        if entry["image"] is None:
            raise ValueError(f"images/{Path(fields[0]).stem}.png|.jpg does not exist")
        return entry

    def _entry(self, stem: str) -> Entry:
        labels = {}
        for task, suffixes in SUFFIXES.items():
            path = _find(self.root / task, stem, suffixes)
            if path is not None and task in self.tasks:
                labels[task] = path
        return {
            "stem": stem,
            "image": _find(self.root / "images", stem, IMAGE_SUFFIXES),
            "next_image": _find(self.root / "next_images", stem, IMAGE_SUFFIXES),
            "labels": labels,
        }

    def files(self, entry: Entry, tasks: Sequence[str]) -> list[Path]:
        files = [entry["image"] or self.root / "images" / f"{entry['stem']}.png"]
        if any(get_task(t).needs_pair for t in entry["labels"]):
            files.append(entry["next_image"] or self.root / "next_images" / f"{entry['stem']}.png")
        return files + list(entry["labels"].values())

    def tasks_of(self, index: int) -> list[str]:
        return [t for t in self.tasks if t in self.entries[index]["labels"]]

    def load(self, entry: Entry, tasks: Sequence[str]) -> dict:
        pair = entry["next_image"] is not None and any(get_task(t).needs_pair for t in tasks)
        sample = new_sample(read_rgb(entry["image"]), read_rgb(entry["next_image"]) if pair else None)
        h, w = sample["image"].shape[-2:]
        for task in tasks:
            path = entry["labels"][task]
            label, valid = self._read(task, path)
            check_shape(label, (None, h, w), str(path))
            mask_path = _find(self.root / "valid" / task, entry["stem"], (".png",))
            if mask_path is not None:
                mask = read_png_uint8(mask_path)
                check_shape(mask, (h, w), str(mask_path))
                valid = valid & (mask > 0)
            add_label(sample, task, label, valid)
        return sample

    def _read(self, task: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """``(C, H, W)`` label and ``(H, W)`` valid mask of one label file."""
        suffix = path.suffix
        if task == "depth":
            if suffix == ".png":
                depth = read_png16(path, 1).astype(np.float32) / self.depth_scale
            else:
                depth = (
                    read_pfm(path) if suffix == ".pfm" else read_npy(path, "(H, W) depth").astype(np.float32)
                )
            depth = depth[..., 0] if depth.ndim == 3 else depth
            return depth[None], depth > 0
        if task == "semantic":
            ids = read_png_uint8(path).astype(np.int64)
            if ids.ndim != 2:
                raise ValueError(f"{path}: semantic PNGs hold one class id per pixel (grey or palette)")
            return ids[None], ids != IGNORE_INDEX
        if task == "optical_flow":
            flow, valid = read_kitti_flow(path) if suffix == ".png" else (read_flo(path), None)
            return flow.transpose(2, 0, 1), np.isfinite(flow).all(-1) if valid is None else valid
        if task in ("normal", "scene_flow", "albedo"):
            if suffix == ".png":
                array = read_rgb(path).permute(1, 2, 0).numpy()
                array = array * 2 - 1 if task == "normal" else array
            else:
                array = read_pfm(path) if suffix == ".pfm" else read_npy(path, "(H, W, 3) values")
            check_shape(array, (None, None, 3), str(path))
            array = array.astype(np.float32)
            if task == "normal":
                return array.transpose(2, 0, 1), np.linalg.norm(array, axis=-1) > 0.5
            if task == "albedo":
                return array.transpose(2, 0, 1), albedo_valid(array)
            return array.transpose(2, 0, 1), np.isfinite(array).all(-1)
        # shading
        if suffix == ".png":
            grey = read_png_uint8(path).astype(np.float32) / 255.0
        else:
            grey = read_npy(path, "(H, W) shading").astype(np.float32)
        grey = luminance(grey) if grey.ndim == 3 else grey
        return grey[None], np.isfinite(grey)
