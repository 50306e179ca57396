"""Samples <-> rows of a Hugging Face ``datasets`` table (Arrow on disk).

Columns: ``image`` / ``next_image`` (``Image``; ``next_image`` is None for single frames), ``source``
(profile name), ``index`` (row id of the generator), ``tasks`` (labelled task names of the row),
``intrinsics`` (3x3 float32) and, per labelled task, ``label_<task>`` (``Array3D`` (C, H, W): float32, or
uint8 for tasks whose labels are class ids, see ``Task.label_dtype``) and ``valid_<task>`` (``Array2D``
(H, W) bool).
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Array2D, Array3D, Features, Image, Sequence, Value
from PIL import Image as PILImage

from stablemtl.tasks import get_task

LABEL_PREFIX, VALID_PREFIX = "label_", "valid_"


# Class ids (IGNORE_INDEX = 255 included) fit one byte, 4x smaller on disk than float32.
ID_STORAGE = "uint8"


def storage_dtype(task: str) -> str:
    """The Arrow dtype of ``task``'s label column: float32, or uint8 for integer (class id) labels."""
    return "float32" if get_task(task).label_dtype.is_floating_point else ID_STORAGE


def _label_array(task: str, label: torch.Tensor) -> np.ndarray:
    """A label as stored; integer labels outside 0..255 raise instead of wrapping around in uint8."""
    dtype = storage_dtype(task)
    if dtype == ID_STORAGE:
        info = np.iinfo(ID_STORAGE)
        if label.numel() and (int(label.min()) < info.min or int(label.max()) > info.max):
            raise ValueError(
                f"label of task {task!r} holds ids {int(label.min())}..{int(label.max())}, "
                f"outside the {info.min}..{info.max} range it is stored in"
            )
    return label.numpy().astype(dtype)


def features_for(tasks, height: int, width: int) -> Features:
    """The ``Features`` of a table whose rows label (a subset of) ``tasks`` at ``height x width``."""
    cols = {
        "image": Image(),
        "next_image": Image(),
        "source": Value("string"),
        "index": Value("int64"),
        "tasks": Sequence(Value("string")),
        "intrinsics": Array2D((3, 3), "float32"),
    }
    for task in tasks:
        channels = get_task(task).label_channels
        cols[LABEL_PREFIX + task] = Array3D((channels, height, width), storage_dtype(task))
        cols[VALID_PREFIX + task] = Array2D((height, width), "bool")
    return Features(cols)


def _to_pil(image: torch.Tensor) -> PILImage.Image:
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return PILImage.fromarray(array)


def sample_to_row(sample: dict, index: int, tasks) -> dict:
    """A Sample dict -> one row for :func:`features_for` ``(tasks, H, W)`` (absent tasks become None)."""
    row = {
        "image": _to_pil(sample["image"]),
        "next_image": _to_pil(sample["next_image"]) if sample.get("next_image") is not None else None,
        "source": sample["source"],
        "index": int(index),
        "tasks": [t for t in tasks if t in sample["labels"]],
        "intrinsics": sample["intrinsics"].numpy().astype(np.float32),
    }
    for task in tasks:
        label = sample["labels"].get(task)
        row[LABEL_PREFIX + task] = None if label is None else _label_array(task, label)
        valid = sample["valid"].get(task)
        row[VALID_PREFIX + task] = None if valid is None else valid.numpy().astype(bool)
    return row


_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "F")  # PIL modes whose values PIL's RGB conversion clips


def _image(value, what: str) -> torch.Tensor:
    """An image cell (PIL, or the numpy array of the numpy format) -> ``(3, H, W)`` float32 in [0, 1].

    Grey images are repeated to RGB. Range: uint8 / 255, uint16 / 65535; any other integer type (PIL
    mode ``I`` is int32) by its values: all in 0..255 -> / 255 (8-bit data), in 0..65535 -> / 65535,
    else refused; float must already lie in [0, 1].
    """
    try:
        if isinstance(value, PILImage.Image):
            value = value if value.mode in _WIDE_MODES else value.convert("RGB")
        array = np.array(value)
    except Exception as err:  # a damaged PNG surfaces here, at decode time
        raise ValueError(f"{what}: image cannot be decoded ({err})") from err
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{what}: expected an RGB or grey image, got an array of shape {array.shape}")
    if array.dtype == np.uint8:
        scale = 255.0
    elif array.dtype == np.uint16:
        scale = 65535.0
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min(initial=0)), int(array.max(initial=0))
        if low < 0 or high > 65535:
            raise ValueError(f"{what}: {array.dtype} image values [{low}, {high}] are neither 8- nor 16-bit")
        scale = 255.0 if high <= 255 else 65535.0  # the values decide: a wide type hides the bit depth
    elif (
        np.issubdtype(array.dtype, np.floating)
        and np.isfinite(array).all()
        and 0 <= array.min() <= array.max() <= 1
    ):
        scale = 1.0
    else:
        raise ValueError(f"{what}: image of dtype {array.dtype} must be integer or float in [0, 1]")
    return torch.from_numpy(array.astype(np.float32) / np.float32(scale)).permute(2, 0, 1).contiguous()


def row_to_sample(row: dict, where: str) -> dict:
    """One row (numpy-formatted) -> Sample dict; a malformed row raises ``ValueError`` naming ``where``."""
    try:
        image = _image(row["image"], f"{where} column 'image'")
        height, width = image.shape[-2:]
        sample: dict = {"image": image, "source": str(row["source"]), "labels": {}, "valid": {}}
        if row.get("next_image") is not None:
            sample["next_image"] = _image(row["next_image"], f"{where} column 'next_image'")
            if sample["next_image"].shape != image.shape:
                raise ValueError(f"{where}: next_image shape differs from image")
        if row.get("intrinsics") is not None:
            sample["intrinsics"] = torch.from_numpy(np.array(row["intrinsics"], dtype=np.float32))
        for task in [str(t) for t in row["tasks"]]:
            task_obj = get_task(task)
            label, valid = row.get(LABEL_PREFIX + task), row.get(VALID_PREFIX + task)
            if label is None or valid is None:
                raise ValueError(f"{where}: task {task!r} is listed but its label or valid column is missing")
            label = torch.from_numpy(np.array(label))
            label = label.to(task_obj.label_dtype)
            valid = torch.from_numpy(np.array(valid)).bool()
            if label.shape != (task_obj.label_channels, height, width) or valid.shape != (height, width):
                raise ValueError(
                    f"{where}: task {task!r} label {tuple(label.shape)} / valid {tuple(valid.shape)} do not "
                    f"match a ({task_obj.label_channels}, {height}, {width}) label of the image"
                )
            sample["labels"][task], sample["valid"][task] = label, valid
    except KeyError as err:
        raise ValueError(f"{where}: column {err} is missing") from None
    return sample
