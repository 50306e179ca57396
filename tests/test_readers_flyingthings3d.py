"""FlyingThings3D subset reader on a tiny pair written as PNG, .flo and PFM."""

import numpy as np
import pytest
import torch
from PIL import Image

from stablemtl.data import load_source
from stablemtl.data.readers.formats import write_flo, write_pfm

H, W = 540, 4  # FT3D's 540 rows (cropped to 536); few columns keep the fixture small
F, CX, CY = 1050.0, 479.5, 269.5


@pytest.fixture
def ft3d(tmp_path):
    root = tmp_path / "ft3d"
    for folder in (
        "image_clean/left",
        "flow/left/into_future",
        "disparity/left",
        "disparity_change/left/into_future",
    ):
        (root / "val" / folder).mkdir(parents=True)
    for i in (0, 1):
        Image.fromarray(np.full((H, W, 3), 100, np.uint8)).save(root / f"val/image_clean/left/{i:07d}.png")
    flow = np.zeros((H, W, 2), np.float32)
    flow[..., 0] = 2.0
    flow[5, 1] = (600.0, 0.0)  # beyond the 500 px bound: invalid
    write_flo(root / "val/flow/left/into_future/0000000.flo", flow)
    disparity = np.full((H, W), 50.0, np.float32)  # depth 21
    disparity[300, 2] = 20.0  # depth 52.5: beyond 35
    write_pfm(root / "val/disparity/left/0000000.pfm", disparity)
    write_pfm(root / "val/disparity_change/left/into_future/0000000.pfm", np.full((H, W), 10.0, np.float32))
    return root


def test_scene_flow_from_disparity_and_change_uses_the_uncropped_principal_point(ft3d):
    split = ft3d / "vis.txt"
    split.write_text("val/flow_2d/0000000.png\n")  # the official split format
    reader = load_source({"reader": "flyingthings3d", "root": ft3d, "split": split, "resolution": None})
    sample = reader[0]
    assert sample["image"].shape == (3, 536, W) and sample["next_image"].shape == (3, 536, W)
    flow = sample["labels"]["optical_flow"]
    torch.testing.assert_close(flow[:, 0, 0], torch.tensor([2.0, 0.0]))
    assert not sample["valid"]["optical_flow"][5 - 2, 1]  # the crop drops the top two rows
    # Pixel x = 1 of cropped row 98 is original row 100: d0 = 50 (z 21), d1 = 60 (z 17.5), u = 2.
    x, y = 1, 100
    p0 = np.array([(x - CX) * 21 / F, (y - CY) * 21 / F, 21.0])
    p1 = np.array([(x + 2 - CX) * 17.5 / F, (y - CY) * 17.5 / F, 17.5])
    torch.testing.assert_close(sample["labels"]["scene_flow"][:, y - 2, x], torch.from_numpy(p1 - p0).float())
    assert not sample["valid"]["scene_flow"][300 - 2, 2]  # beyond 35
    assert sample["valid"]["scene_flow"].sum() == 536 * W - 2  # and the invalid-flow pixel
    assert sample["intrinsics"][1, 2].item() == pytest.approx(CY - 2)  # 267.5 after the crop


def test_official_size_and_flip_jitter_recipe(ft3d):
    reader = load_source("flyingthings3d:" + str(ft3d), augment=True)
    sample = reader.raw(0)
    assert sample["image"].shape == (3, 268, 480)
    torch.testing.assert_close(sample["labels"]["optical_flow"][:, 0, 0], torch.tensor([2.0 * 480 / W, 0.0]))
    assert reader.augmentation.vflip and reader.augmentation.hflip
    assert reader.augmentation.jitter == (0.3, 0.3, 0.3, 0.159)
    augmented = reader.item(0, "scene_flow")
    assert list(augmented["labels"]) == ["scene_flow"]


def test_a_split_line_without_a_frame_id_is_an_error(ft3d):
    split = ft3d / "bad.txt"
    split.write_text("val/flow_2d/frame.png\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: .*7-digit"):
        load_source({"reader": "flyingthings3d", "root": ft3d, "split": split})
