"""KITTI flow 2015 reader: flow_occ decoding, scene flow from the two disparities and the calibration."""

import numpy as np
import pytest
import torch
from PIL import Image

from stablemtl.data import load_source
from stablemtl.data.readers.formats import write_kitti_flow, write_png16

H, W = 360, 1230  # crop offsets (8, 7)
F, CX, CY = 721.5377, 609.5593, 172.854


@pytest.fixture
def kitti_flow(tmp_path):
    root = tmp_path / "kitti_flow"
    for folder in ("image_2", "flow_occ", "disp_occ_0", "disp_occ_1", "calib_cam_to_cam"):
        (root / "training" / folder).mkdir(parents=True)
    for suffix in ("10", "11"):
        Image.fromarray(np.full((H, W, 3), 50, np.uint8)).save(root / f"training/image_2/000007_{suffix}.png")
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = 2.5
    flow[..., 1] = -1.0
    valid = np.ones((H, W), bool)
    valid[8 + 5, 7 + 5] = False
    write_kitti_flow(root / "training/flow_occ/000007_10.png", flow, valid)
    d0 = np.full((H, W), 50 * 256, np.uint16)
    d1 = np.full((H, W), 40 * 256, np.uint16)
    d1[8 + 6, 7 + 6] = 0
    write_png16(root / "training/disp_occ_0/000007_10.png", d0)
    write_png16(root / "training/disp_occ_1/000007_10.png", d1)
    p_rect = f"{F} 0.0 {CX} 44.85728 0.0 {F} {CY} 0.2163791 0.0 0.0 1.0 0.002745884"
    (root / "training/calib_cam_to_cam/000007.txt").write_text(f"calib_time: x\nP_rect_02: {p_rect}\n")
    return root


def test_flow_and_scene_flow_values_after_the_benchmark_crop(kitti_flow):
    split = kitti_flow / "training.txt"
    split.write_text("training/flow_occ/000007_10.png\n")  # the official format
    reader = load_source({"reader": "kitti_flow", "root": kitti_flow, "split": split, "resolution": None})
    sample = reader[0]
    assert sample["image"].shape == (3, 352, 1216) and sample["next_image"].shape == (3, 352, 1216)
    torch.testing.assert_close(sample["labels"]["optical_flow"][:, 100, 100], torch.tensor([2.5, -1.0]))
    assert (
        not sample["valid"]["optical_flow"][5, 5] and sample["valid"]["optical_flow"].sum() == 352 * 1216 - 1
    )
    # Cropped pixel (r, c) is original (r + 8, c + 7); depths f b / d: d0 = 50, d1 = 40.
    r, c = 100, 200
    x, y = c + 7, r + 8
    z0, z1 = F * 0.54 / 50, F * 0.54 / 40
    p0 = np.array([(x - CX) * z0 / F, (y - CY) * z0 / F, z0])
    p1 = np.array([(x + 2.5 - CX) * z1 / F, (y - 1.0 - CY) * z1 / F, z1])
    torch.testing.assert_close(
        sample["labels"]["scene_flow"][:, r, c], torch.from_numpy(p1 - p0).float(), rtol=1e-5, atol=1e-5
    )
    valid = sample["valid"]["scene_flow"]
    assert not valid[5, 5] and not valid[6, 6] and valid.sum() == 352 * 1216 - 2
    torch.testing.assert_close(sample["intrinsics"][:2, 2], torch.tensor([CX - 7, CY - 8]))


def test_listing_the_folder_and_the_official_size(kitti_flow):
    reader = load_source("kitti_flow:" + str(kitti_flow))
    sample = reader[0]
    assert len(reader) == 1 and sample["image"].shape == (3, 176, 608)
    # Flow vectors follow the half-size grid (pass rescale_flow=False for full-resolution units).
    torch.testing.assert_close(sample["labels"]["optical_flow"][:, 50, 50], torch.tensor([1.25, -0.5]))
    native = load_source({"reader": "kitti_flow", "root": kitti_flow, "rescale_flow": False})[0]
    torch.testing.assert_close(native["labels"]["optical_flow"][:, 50, 50], torch.tensor([2.5, -1.0]))


def test_a_calibration_without_p_rect_02_is_an_error(kitti_flow):
    (kitti_flow / "training/calib_cam_to_cam/000007.txt").write_text("P_rect_00: 1 2 3\n")
    with pytest.raises(ValueError, match="no P_rect_02"):
        load_source("kitti_flow:" + str(kitti_flow))[0]
