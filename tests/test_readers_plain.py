"""Own data: a plain folder of images plus per-task label files, partially labelled."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from stablemtl.data import load_source
from stablemtl.data.readers.formats import write_flo, write_png16
from stablemtl.tasks import IGNORE_INDEX

H, W = 4, 6


@pytest.fixture
def plain(tmp_path):
    root = tmp_path / "garage"
    for folder in ("images", "next_images", "depth", "semantic", "optical_flow", "valid/depth"):
        (root / folder).mkdir(parents=True)
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((H, W, 3), 50, np.uint8)).save(root / f"images/{name}.png")
    write_png16(root / "depth/a.png", np.full((H, W), 1500, np.uint16))  # 1.5 m in millimetres
    mask = np.full((H, W), 255, np.uint8)
    mask[0, 0] = 0
    Image.fromarray(mask).save(root / "valid/depth/a.png")
    ids = np.full((H, W), 3, np.uint8)
    ids[1, 1] = 255
    Image.fromarray(ids).save(root / "semantic/b.png")
    Image.fromarray(np.full((H, W, 3), 60, np.uint8)).save(root / "next_images/c.png")
    write_flo(root / "optical_flow/c.flo", np.full((H, W, 2), (1.0, -2.0), np.float32))
    return root


def test_partial_labels_are_absent_not_zero_filled(plain):
    reader = load_source(plain)  # a folder with images/ is a plain folder
    assert reader.source == "garage" and len(reader) == 3
    assert reader.tasks == ["depth", "semantic", "optical_flow"]
    assert [reader.rows_with_task(t) for t in reader.tasks] == [[0], [1], [2]]
    a, b, c = reader[0], reader[1], reader[2]
    assert list(a["labels"]) == ["depth"] and "next_image" not in a
    assert a["labels"]["depth"][0, 2, 2].item() == pytest.approx(1.5)
    assert not a["valid"]["depth"][0, 0] and a["valid"]["depth"].sum() == H * W - 1
    assert list(b["labels"]) == ["semantic"] and b["labels"]["semantic"][0, 1, 1] == IGNORE_INDEX
    assert b["labels"]["semantic"][0, 0, 0] == 3 and not b["valid"]["semantic"][1, 1]
    assert c["next_image"].shape == (3, H, W)
    torch.testing.assert_close(c["labels"]["optical_flow"][:, 0, 0], torch.tensor([1.0, -2.0]))


def test_depth_scale_resolution_and_augmentation_options(plain):
    reader = load_source(
        {
            "reader": "plain",
            "root": plain,
            "depth_scale": 100,
            "resolution": [8, 12],
            "augmentation": {"vflip": True},
        },
        augment=True,
    )
    assert reader[0]["labels"]["depth"][0, 4, 4].item() == pytest.approx(15.0)
    assert reader[0]["image"].shape == (3, 8, 12)
    assert reader.augmentation.vflip and reader.augmentation.hflip


def test_a_frame_whose_flow_lacks_its_next_image_is_skipped_and_counted(plain, caplog):
    (plain / "next_images/c.png").unlink()
    with caplog.at_level(logging.WARNING):
        reader = load_source(plain)
    assert len(reader) == 2 and "1 of 3 frames" in caplog.text


def test_an_8bit_depth_png_is_an_unexpected_encoding(plain):
    Image.fromarray(np.full((H, W), 9, np.uint8)).save(plain / "depth/a.png")
    with pytest.raises(ValueError, match="16-bit PNG"):
        load_source(plain)[0]
