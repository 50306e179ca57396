"""File formats of the real data sets: 8/16-bit PNG, PFM, Middlebury ``.flo``, ``.npy``, KITTI flow PNG.

Every reader raises ``ValueError`` naming the file when its content is not the expected encoding, so a
wrong download or a truncated file stops the run at the file that caused it. The writers exist for
tests and for users who convert their own data into these formats.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import png  # pypng: Pillow truncates 16-bit RGB PNGs (vKITTI and KITTI flows) to 8 bits
import torch
from PIL import Image

FLO_MAGIC = 202021.25  # the float32 tag that opens every Middlebury .flo file


def read_rgb(path: str | Path) -> torch.Tensor:
    """An 8-bit RGB image (PNG or JPEG) as a ``(3, H, W)`` float tensor in [0, 1]."""
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except Exception as err:
        raise ValueError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def read_png_uint8(path: str | Path) -> np.ndarray:
    """An 8-bit PNG as stored: ``(H, W)`` or ``(H, W, 3)`` uint8 (palette images give their indices)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P", "RGB"):
                raise ValueError(f"mode {image.mode!r}, expected an 8-bit L, P or RGB PNG")
            return np.asarray(image).copy()
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    except Exception as err:
        raise ValueError(f"{path}: not a readable PNG ({type(err).__name__}: {err})") from err


def read_png16(path: str | Path, channels: int) -> np.ndarray:
    """A 16-bit PNG with ``channels`` (1 or 3) as ``(H, W)`` or ``(H, W, 3)`` uint16, RGB order."""
    try:
        width, height, rows, info = png.Reader(filename=str(path)).asDirect()
        data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except Exception as err:
        raise ValueError(f"{path}: not a readable PNG ({type(err).__name__}: {err})") from err
    planes = int(info["planes"])
    if info["bitdepth"] != 16 or planes != channels:
        raise ValueError(
            f"{path}: expected a 16-bit PNG with {channels} channel(s), got {info['bitdepth']}-bit with "
            f"{planes} channel(s)"
        )
    data = data.reshape(height, width, planes)
    return data[..., 0] if channels == 1 else data


def write_png16(path: str | Path, array: np.ndarray) -> None:
    """Write a ``(H, W)`` or ``(H, W, 3)`` uint16 array as a 16-bit PNG (RGB order)."""
    array = np.asarray(array)
    if array.dtype != np.uint16 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"write_png16 needs (H, W) or (H, W, 3) uint16, got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    writer = png.Writer(width, height, greyscale=array.ndim == 2, bitdepth=16)
    with open(path, "wb") as f:
        writer.write(f, array.reshape(height, -1))


def read_pfm(path: str | Path) -> np.ndarray:
    """A PFM file (``Pf`` grey or ``PF`` colour) as float32 ``(H, W)`` / ``(H, W, 3)``, top row first."""
    try:
        with open(path, "rb") as f:
            header = f.readline().strip()
            if header not in (b"PF", b"Pf"):
                raise ValueError(f"header {header[:8]!r} is not PF or Pf")
            dims = re.match(rb"^\s*(\d+)\s+(\d+)\s*$", f.readline())
            if dims is None:
                raise ValueError("the size line is malformed")
            width, height = int(dims.group(1)), int(dims.group(2))
            scale = float(f.readline().strip())
            channels = 3 if header == b"PF" else 1
            # A negative scale means little-endian data (the PFM convention).
            dtype = "<f4" if scale < 0 else ">f4"
            data = np.frombuffer(f.read(), dtype=dtype)
    except ValueError as err:
        raise ValueError(f"{path}: not a PFM file ({err})") from err
    if data.size != width * height * channels:
        raise ValueError(
            f"{path}: PFM holds {data.size} values, the header announces {width}x{height}x{channels}"
        )
    data = data.reshape(height, width, channels) if channels == 3 else data.reshape(height, width)
    return np.flipud(data).astype(np.float32)  # PFM stores the bottom row first


def write_pfm(path: str | Path, array: np.ndarray) -> None:
    """Write a float ``(H, W)`` or ``(H, W, 3)`` array as a little-endian PFM."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"write_pfm needs (H, W) or (H, W, 3), got {array.shape}")
    header = b"PF" if array.ndim == 3 else b"Pf"
    height, width = array.shape[:2]
    with open(path, "wb") as f:
        f.write(header + b"\n" + f"{width} {height}\n".encode() + b"-1.0\n")
        f.write(np.flipud(array).astype("<f4").tobytes())


def read_flo(path: str | Path) -> np.ndarray:
    """A Middlebury ``.flo`` file as float32 ``(H, W, 2)`` (u, v) in pixels."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err})") from err
    if len(raw) < 12 or np.frombuffer(raw[:4], "<f4")[0] != FLO_MAGIC:
        raise ValueError(f"{path}: not a .flo file (the tag {FLO_MAGIC} is missing)")
    width, height = (int(v) for v in np.frombuffer(raw[4:12], "<i4"))
    data = np.frombuffer(raw[12:], "<f4")
    if data.size != width * height * 2:
        raise ValueError(f"{path}: .flo holds {data.size} values, the header announces {width}x{height}x2")
    return data.reshape(height, width, 2).astype(np.float32)


def write_flo(path: str | Path, flow: np.ndarray) -> None:
    """Write a float ``(H, W, 2)`` flow as a Middlebury ``.flo`` file."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"write_flo needs (H, W, 2), got {flow.shape}")
    height, width = flow.shape[:2]
    with open(path, "wb") as f:
        f.write(np.float32(FLO_MAGIC).astype("<f4").tobytes())
        f.write(np.array([width, height], "<i4").tobytes())
        f.write(flow.astype("<f4").tobytes())


def read_kitti_flow(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A KITTI flow PNG (16-bit RGB: ``u = (R - 2^15) / 64``, ``v = (G - 2^15) / 64``, valid where B > 0)
    as ``(H, W, 2)`` float32 pixels and an ``(H, W)`` bool mask."""
    data = read_png16(path, 3).astype(np.float32)
    flow = (data[..., :2] - 32768.0) / 64.0
    return flow, data[..., 2] > 0


def write_kitti_flow(path: str | Path, flow: np.ndarray, valid: np.ndarray) -> None:
    """Write ``(H, W, 2)`` pixel flow and an ``(H, W)`` mask in the KITTI flow PNG encoding."""
    encoded = np.clip(np.round(np.asarray(flow) * 64.0 + 32768.0), 0, 65535)
    out = np.concatenate([encoded, np.asarray(valid, dtype=np.float64)[..., None]], axis=-1)
    write_png16(path, out.astype(np.uint16))


def read_npy(path: str | Path, shape_hint: str) -> np.ndarray:
    """A ``.npy`` array (never a pickle); ``shape_hint`` describes the expected layout for the error."""
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(f"{path}: not a .npy array of {shape_hint} ({type(err).__name__}: {err})") from err
