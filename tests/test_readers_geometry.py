"""Reader geometry: normals of a known plane, scene flow of a known motion, the KITTI crop."""

import numpy as np
import pytest

from stablemtl.data.readers.geometry import (
    bottom_centre_crop,
    luminance,
    normals_from_depth,
    scene_flow_from_disparities,
)

FX, FY, CX, CY = 50.0, 60.0, 15.5, 11.5


def _plane_depth(normal_cv, offset, h=24, w=32):
    """Depth of the plane n . P = offset (OpenCV axes) seen through the pixels of a pinhole camera."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    rays = np.stack([(u - CX) / FX, (v - CY) / FY, np.ones_like(u)], axis=-1)
    return offset / (rays @ normal_cv)


def test_normals_of_a_tilted_plane_in_toolkit_axes():
    n_cv = np.array([0.3, -0.4, -1.0])
    n_cv /= np.linalg.norm(n_cv)  # faces the camera (negative z in OpenCV axes)
    depth = _plane_depth(n_cv, -5.0)
    assert (depth > 0).all()
    normal, defined = normals_from_depth(depth, np.ones_like(depth, bool), FX, FY, CX, CY)
    assert defined.all()
    # Toolkit axes: +x left, +y up, +z towards the camera = the OpenCV normal negated.
    np.testing.assert_allclose(normal, np.broadcast_to(-n_cv, normal.shape), atol=1e-5)


def test_fronto_parallel_plane_faces_the_camera_and_invalid_pixels_stay_undefined():
    depth = np.full((8, 10), 4.0)
    valid = np.ones_like(depth, bool)
    valid[3, 4] = False
    normal, defined = normals_from_depth(depth, valid, FX, FY, CX, CY)
    np.testing.assert_allclose(normal[0, 0], [0, 0, 1], atol=1e-7)
    assert not defined[3, 4] and defined.sum() == valid.sum()
    np.testing.assert_array_equal(normal[3, 4], [0, 0, 0])


def test_scene_flow_from_disparities_is_the_difference_of_back_projections():
    h, w, f, b = 5, 6, 100.0, 0.5
    flow = np.zeros((h, w, 2), np.float32)
    flow[..., 0] = 2.0  # two pixels right
    d0 = np.full((h, w), 10.0)  # z0 = 5 m
    d1 = np.full((h, w), 12.5)  # z1 = 4 m: the point came 1 m closer
    d1[0, 0] = 0.0  # no disparity at time 1
    motion, valid = scene_flow_from_disparities(flow, d0, d1, f, b, cx=2.0, cy=1.0)
    x, y = 3, 4
    p0 = np.array([(x - 2.0) * 5 / f, (y - 1.0) * 5 / f, 5.0])
    p1 = np.array([(x + 2 - 2.0) * 4 / f, (y - 1.0) * 4 / f, 4.0])
    np.testing.assert_allclose(motion[y, x], p1 - p0, rtol=1e-6)
    assert motion[y, x, 2] == pytest.approx(-1.0)
    assert not valid[0, 0] and valid.sum() == h * w - 1
    np.testing.assert_array_equal(motion[0, 0], [0, 0, 0])


def test_bottom_centre_crop_offsets_and_luminance():
    array = np.arange(10 * 9).reshape(10, 9)
    crop, top, left = bottom_centre_crop(array, 4, 5)
    assert (top, left) == (6, 2)
    np.testing.assert_array_equal(crop, array[6:, 2:7])
    with pytest.raises(ValueError, match="smaller"):
        bottom_centre_crop(array, 11, 5)
    assert luminance(np.array([1.0, 1.0, 1.0])) == pytest.approx(1.0)
    assert luminance(np.array([0.0, 1.0, 0.0])) == pytest.approx(0.59)
