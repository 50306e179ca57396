"""Conversions shared by readers: crops, luminance, disparity -> depth, back-projection, depth -> normals.

Camera coordinates here follow OpenCV (x right, y down, z forward) until the last step; normals are
returned in the toolkit's convention (+x image-left, +y up, +z towards the camera).
"""

from __future__ import annotations

import numpy as np

KITTI_BENCHMARK_HW = (352, 1216)
ALBEDO_MIN = 0.004  # an albedo channel below this is too dark to divide the image by (official mask)


def bottom_centre_crop(array: np.ndarray, height: int, width: int) -> tuple[np.ndarray, int, int]:
    """Crop ``(H, W, ...)`` to the bottom ``height`` rows and the centred ``width`` columns (the KITTI
    benchmark crop); returns the crop and its (top, left) offset."""
    h, w = array.shape[:2]
    if h < height or w < width:
        raise ValueError(f"a {h}x{w} frame is smaller than the {height}x{width} crop")
    top, left = h - height, (w - width) // 2
    return array[top : top + height, left : left + width], top, left


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``Y = 0.3 R + 0.59 G + 0.11 B`` of an ``(H, W, 3)`` image (the official shading grey level)."""
    return rgb[..., 0] * 0.3 + rgb[..., 1] * 0.59 + rgb[..., 2] * 0.11


def albedo_valid(albedo: np.ndarray) -> np.ndarray:
    """``(H, W)`` mask of pixels whose albedo (``(H, W, 3)`` in [0, 1]) is >= 0.004 in every channel."""
    return (albedo >= ALBEDO_MIN).all(axis=-1)


def disparity_to_depth(disparity: np.ndarray, focal: float, baseline: float) -> np.ndarray:
    """Depth ``f * b / d`` (inf where the disparity is not positive)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(disparity > 0, focal * baseline / np.where(disparity > 0, disparity, 1.0), np.inf)


def backproject(x: np.ndarray, y: np.ndarray, depth: np.ndarray, fx, fy, cx, cy) -> np.ndarray:
    """Camera points ``(..., 3)`` of pixels ``(x, y)`` at ``depth`` (OpenCV axes)."""
    return np.stack([(x - cx) * depth / fx, (y - cy) * depth / fy, depth], axis=-1)


def scene_flow_from_disparities(
    flow: np.ndarray,
    disparity0: np.ndarray,
    disparity1: np.ndarray,
    focal: float,
    baseline: float,
    cx: float,
    cy: float,
) -> tuple[np.ndarray, np.ndarray]:
    """3D motion (metres, OpenCV axes) of every pixel from its optical flow ``(H, W, 2)``, its disparity at
    time 0 and the disparity of the same point at time 1 (both ``(H, W)``, in the frame-0 grid).

    ``P1 - P0`` with ``P0 = backproject(x, y, fb/d0)`` and ``P1 = backproject(x + u, y + v, fb/d1)``.
    Returns ``(H, W, 3)`` and the mask of pixels with both disparities positive.
    """
    h, w = disparity0.shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    z0 = disparity_to_depth(disparity0, focal, baseline)
    z1 = disparity_to_depth(disparity1, focal, baseline)
    valid = (disparity0 > 0) & (disparity1 > 0)
    with np.errstate(invalid="ignore"):  # inf depths of invalid pixels; masked out below
        p0 = backproject(x, y, z0, focal, focal, cx, cy)
        p1 = backproject(x + flow[..., 0], y + flow[..., 1], z1, focal, focal, cx, cy)
        motion = np.where(valid[..., None], p1 - p0, 0.0)
    return motion.astype(np.float32), valid


def opencv_to_toolkit(vectors: np.ndarray) -> np.ndarray:
    """OpenCV-axis vectors ``(..., 3)`` -> the toolkit's normal axes (x left, y up, z towards camera)."""
    return -vectors


def normals_from_depth(depth: np.ndarray, valid: np.ndarray, fx: float, fy: float, cx: float, cy: float):
    """Unit normals ``(H, W, 3)`` (toolkit axes) of a depth map, and where they are defined.

    The camera points are back-projected with the intrinsics; the normal is the cross product of the
    point differences along the image rows and columns (central, one-sided next to an invalid pixel),
    turned to face the camera. This is exact on planes (the official vKITTI normals use D2NT, a
    gradient form of the same relation). Defined where the pixel and a neighbour on each axis are valid.
    """
    z = np.where(valid, depth, np.nan).astype(np.float64)
    h, w = z.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    points = backproject(u, v, z, fx, fy, cx, cy)  # [H,W,3], NaN where invalid

    def tangent(axis: int) -> np.ndarray:
        pad = [(0, 0)] * 3
        pad[axis] = (1, 1)
        padded = np.pad(points, pad, constant_values=np.nan)
        ahead = np.take(padded, range(2, padded.shape[axis]), axis=axis)
        behind = np.take(padded, range(0, padded.shape[axis] - 2), axis=axis)
        central = (ahead - behind) / 2
        forward, backward = ahead - points, points - behind
        return np.where(np.isfinite(central), central, np.where(np.isfinite(forward), forward, backward))

    normal = np.cross(tangent(0), tangent(1))  # rows x columns: towards the camera for a frontal plane
    facing = np.sum(normal * points, axis=-1) > 0
    normal = np.where(facing[..., None], -normal, normal)
    norm = np.linalg.norm(normal, axis=-1, keepdims=True)
    defined = np.isfinite(norm[..., 0]) & (norm[..., 0] > 0) & valid
    normal = np.where(defined[..., None], normal / np.where(defined[..., None], norm, 1.0), 0.0)
    return opencv_to_toolkit(normal).astype(np.float32) * defined[..., None], defined
