"""Hypersim reader on a tiny scene folder written in the preprocessed layout's formats."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from stablemtl.data import load_source
from stablemtl.data.readers.formats import write_png16

H, W = 4, 6


def _frame(scene, key, depth_mm, albedo, shading):
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(scene / f"rgb_{key}.png")
    write_png16(scene / f"depth_plane_{key}.png", depth_mm)
    normal = np.zeros((H, W, 3), np.float32)
    normal[..., 2] = 1.0
    normal[0, 0] = (0.6, 0.0, 0.8)
    np.save(scene / f"normal_cam_{key}.npy", normal)
    mask = np.ones((H, W), bool)
    mask[1, 1] = False
    np.save(scene / f"normal_valid_mask_{key}.npy", mask)
    Image.fromarray(albedo).save(scene / f"albedo_{key}.png")
    Image.fromarray(shading).save(scene / f"shading_{key}.png")


@pytest.fixture
def hypersim(tmp_path):
    root = tmp_path / "hypersim" / "train"
    scene = root / "ai_001_001"
    scene.mkdir(parents=True)
    depth = np.full((H, W), 2500, np.uint16)  # 2.5 m
    depth[0, 1] = 0  # no geometry
    depth[0, 2] = 65535  # 65.535 m: beyond the 65 m cap
    albedo = np.full((H, W, 3), 200, np.uint8)
    albedo[2, 3] = (200, 0, 200)  # a black channel: below 0.004
    shading = np.zeros((H, W, 3), np.uint8)
    shading[...] = (100, 200, 50)
    _frame(scene, "cam_00_fr0000", depth, albedo, shading)
    _frame(scene, "cam_00_fr0001", depth, albedo, shading)
    return root


def test_values_masks_and_official_split_format(hypersim):
    split = hypersim / "split.txt"
    k = "cam_00_fr0001"
    split.write_text(
        f"ai_001_001/rgb_{k}.png ai_001_001/depth_plane_{k}.png ai_001_001/normal_cam_{k}.npy "
        f"ai_001_001/normal_cam_{k}.png ai_001_001/normal_valid_mask_{k}.npy\n"
    )
    reader = load_source({"reader": "hypersim", "root": hypersim, "split": split, "resolution": None})
    assert len(reader) == 1 and reader.source == "hypersim"
    sample = reader[0]
    assert sample["image"].shape == (3, H, W) and sample["image"].max() <= 1
    depth, valid = sample["labels"]["depth"], sample["valid"]["depth"]
    assert depth[0, 3, 3].item() == pytest.approx(2.5)  # millimetres -> metres
    assert not valid[0, 1] and not valid[0, 2] and valid.sum() == H * W - 2
    torch.testing.assert_close(sample["labels"]["normal"][:, 0, 0], torch.tensor([0.6, 0.0, 0.8]))
    assert not sample["valid"]["normal"][1, 1]
    assert sample["labels"]["albedo"][0, 0, 0].item() == pytest.approx(200 / 255)
    assert not sample["valid"]["albedo"][2, 3] and sample["valid"]["albedo"].sum() == H * W - 1
    expected = (0.3 * 100 + 0.59 * 200 + 0.11 * 50) / 255
    assert sample["labels"]["shading"].shape == (1, H, W)
    assert sample["labels"]["shading"][0, 0, 0].item() == pytest.approx(expected, abs=1e-6)
    assert torch.equal(sample["valid"]["shading"], sample["valid"]["albedo"])


def test_item_for_one_task_reads_only_that_label_and_resizes(hypersim):
    reader = load_source({"reader": "hypersim", "root": hypersim, "resolution": [8, 12]})
    sample = reader.item(0, "depth")
    assert list(sample["labels"]) == ["depth"]
    assert sample["image"].shape == (3, 8, 12) and sample["labels"]["depth"].shape == (1, 8, 12)
    assert sample["labels"]["depth"][0, 7, 11].item() == pytest.approx(2.5)  # nearest: no invented depth


def test_albedo_is_read_from_albedo_files_and_missing_files_are_named(hypersim, caplog):
    scene = hypersim / "ai_001_001"
    (scene / "albedo_cam_00_fr0001.png").rename(scene / "reflectance_cam_00_fr0001.png")
    split = hypersim / "s.txt"
    split.write_text("ai_001_001/rgb_cam_00_fr0000.png\nai_001_001/rgb_cam_00_fr0001.png\n")
    with pytest.raises(ValueError, match=r"1 file\(s\).*albedo_cam_00_fr0001\.png"):
        load_source({"reader": "hypersim", "root": hypersim, "split": split})
    # Depth alone does not need the albedo; listing the folder skips the incomplete frame with a count.
    assert len(load_source({"reader": "hypersim", "root": hypersim, "split": split, "tasks": ["depth"]})) == 2
    with caplog.at_level(logging.WARNING):
        reader = load_source("hypersim:" + str(hypersim))
    assert len(reader) == 1 and "1 of 2 frames" in caplog.text


def test_training_augmentation_is_the_official_flip_only(hypersim):
    reader = load_source("hypersim:" + str(hypersim), augment=True)
    assert reader.augmentation.hflip and not reader.augmentation.vflip and reader.augmentation.jitter is None
