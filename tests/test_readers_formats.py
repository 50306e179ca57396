"""File formats of the readers: 16-bit PNG, PFM, .flo and KITTI flow PNG, decoded to known values."""

import struct

import numpy as np
import pytest
from PIL import Image

from stablemtl.data.readers.formats import (
    read_flo,
    read_kitti_flow,
    read_pfm,
    read_png16,
    read_rgb,
    write_flo,
    write_kitti_flow,
    write_pfm,
    write_png16,
)


def test_png16_round_trip_grey_and_rgb(tmp_path):
    grey = np.array([[0, 1, 65535], [1000, 2**15, 12345]], dtype=np.uint16)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint16).reshape(2, 3, 3) * 3001
    write_png16(tmp_path / "g.png", grey)
    write_png16(tmp_path / "c.png", rgb)
    np.testing.assert_array_equal(read_png16(tmp_path / "g.png", 1), grey)
    np.testing.assert_array_equal(read_png16(tmp_path / "c.png", 3), rgb)  # Pillow would truncate to 8 bits


def test_png16_rejects_an_8bit_file_and_the_wrong_channel_count(tmp_path):
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "d.png")
    with pytest.raises(ValueError, match="16-bit PNG with 1 channel"):
        read_png16(tmp_path / "d.png", 1)
    write_png16(tmp_path / "g.png", np.zeros((2, 2), np.uint16))
    with pytest.raises(ValueError, match="3 channel"):
        read_png16(tmp_path / "g.png", 3)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"x\.png"):
        read_png16(tmp_path / "x.png", 1)


def test_pfm_reads_big_endian_bottom_row_first(tmp_path):
    # A hand-written big-endian grey PFM (positive scale): rows are stored bottom to top.
    body = struct.pack(">4f", 3.0, 4.0, 1.0, 2.0)  # bottom row (3, 4), then top row (1, 2)
    (tmp_path / "a.pfm").write_bytes(b"Pf\n2 2\n1.0\n" + body)
    np.testing.assert_array_equal(read_pfm(tmp_path / "a.pfm"), [[1.0, 2.0], [3.0, 4.0]])
    colour = np.random.default_rng(0).normal(size=(3, 4, 3)).astype(np.float32)
    write_pfm(tmp_path / "c.pfm", colour)
    np.testing.assert_array_equal(read_pfm(tmp_path / "c.pfm"), colour)
    (tmp_path / "bad.pfm").write_bytes(b"P6\n2 2\n255\n")
    with pytest.raises(ValueError, match="not a PFM"):
        read_pfm(tmp_path / "bad.pfm")


def test_flo_decodes_known_vectors_and_rejects_a_wrong_tag(tmp_path):
    # Middlebury layout: tag 202021.25, width, height, then (u, v) interleaved row by row.
    values = struct.pack("<6f", 1.5, -2.0, 0.25, 7.0, -3.0, 0.0)
    (tmp_path / "a.flo").write_bytes(struct.pack("<f2i", 202021.25, 3, 1) + values)
    flow = read_flo(tmp_path / "a.flo")
    np.testing.assert_array_equal(flow[0, :, 0], [1.5, 0.25, -3.0])
    np.testing.assert_array_equal(flow[0, :, 1], [-2.0, 7.0, 0.0])
    write_flo(tmp_path / "b.flo", flow)
    np.testing.assert_array_equal(read_flo(tmp_path / "b.flo"), flow)
    (tmp_path / "c.flo").write_bytes(struct.pack("<f2i", 1.0, 1, 1) + struct.pack("<2f", 0, 0))
    with pytest.raises(ValueError, match=r"not a \.flo"):
        read_flo(tmp_path / "c.flo")


def test_kitti_flow_png_encoding(tmp_path):
    raw = np.zeros((1, 3, 3), np.uint16)
    raw[0, 0] = (32768 + 160, 32768 - 64, 1)  # u = 2.5, v = -1, valid
    raw[0, 1] = (32768, 32768 + 6400, 1)  # u = 0, v = 100
    raw[0, 2] = (40000, 40000, 0)  # invalid
    write_png16(tmp_path / "f.png", raw)
    flow, valid = read_kitti_flow(tmp_path / "f.png")
    np.testing.assert_array_equal(flow[0, :2], [[2.5, -1.0], [0.0, 100.0]])
    np.testing.assert_array_equal(valid[0], [True, True, False])
    write_kitti_flow(tmp_path / "g.png", flow, valid)
    np.testing.assert_array_equal(read_png16(tmp_path / "g.png", 3), raw)


def test_read_rgb_is_in_unit_range(tmp_path):
    Image.fromarray(np.array([[[255, 0, 51]]], np.uint8)).save(tmp_path / "i.png")
    np.testing.assert_allclose(read_rgb(tmp_path / "i.png")[:, 0, 0].numpy(), [1.0, 0.0, 0.2])
