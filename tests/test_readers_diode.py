"""DIODE reader: depth with its shipped mask, normals with x negated and the length rule."""

import numpy as np
import pytest
import torch
from PIL import Image

from stablemtl.data import load_source

H, W = 6, 8


@pytest.fixture
def diode(tmp_path):
    root = tmp_path / "diode"
    scan = root / "val/indoors/scene_00019/scan_00183"
    scan.mkdir(parents=True)
    name = "00019_00183_indoors_000_010"
    Image.fromarray(np.full((H, W, 3), 10, np.uint8)).save(scan / f"{name}.png")
    depth = np.full((H, W, 1), 3.25, np.float32)
    np.save(scan / f"{name}_depth.npy", depth)
    mask = np.ones((H, W), np.float32)
    mask[0, 0] = 0
    np.save(scan / f"{name}_depth_mask.npy", mask)
    normal = np.zeros((H, W, 3), np.float32)
    normal[...] = (0.6, 0.0, 0.8)
    normal[1, 1] = 0.0  # unknown
    normal[1, 2] = (0.2, 0.0, 0.2)  # too short: length 0.28
    np.save(scan / f"{name}_normal.npy", normal)
    return root


def test_depth_and_normals(diode):
    split = diode / "val.txt"
    name = "val/indoors/scene_00019/scan_00183/00019_00183_indoors_000_010"
    split.write_text(f"{name}.png {name}_depth.npy {name}_depth_mask.npy\n")
    sample = load_source({"reader": "diode", "root": diode, "split": split, "resolution": None})[0]
    assert sample["labels"]["depth"][0, 3, 3].item() == pytest.approx(3.25)
    assert not sample["valid"]["depth"][0, 0] and sample["valid"]["depth"].sum() == H * W - 1
    torch.testing.assert_close(sample["labels"]["normal"][:, 3, 3], torch.tensor([-0.6, 0.0, 0.8]))
    valid = sample["valid"]["normal"]
    assert not valid[1, 1] and not valid[1, 2] and valid.sum() == H * W - 2


def test_official_size_and_a_wrong_array_is_an_error(diode):
    assert load_source("diode:" + str(diode))[0]["image"].shape == (3, 384, 512)
    path = next(diode.glob("**/*_normal.npy"))
    np.save(path, np.zeros((H, W), np.float32))
    with pytest.raises(ValueError, match=r"_normal\.npy has shape \(6, 8\)"):
        load_source("diode:" + str(diode))[0]
