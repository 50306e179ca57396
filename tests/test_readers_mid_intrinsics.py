"""MID intrinsics reader: albedo /255 with the 0.004 mask, shading reduced to luminance."""

import numpy as np
import pytest
from PIL import Image

from stablemtl.data import load_source

H, W = 16, 16  # JPEG blocks of one flat colour decode (almost) exactly


@pytest.fixture
def mid(tmp_path):
    root = tmp_path / "mid"
    (root / "test").mkdir(parents=True)
    name = "everett_dining1_dir_13_mip2"
    Image.fromarray(np.full((H, W, 3), 120, np.uint8)).save(root / f"test/{name}.jpg", quality=100)
    albedo = np.full((H, W, 3), 200, np.uint8)
    albedo[8:, :] = (200, 0, 200)  # a black channel in the bottom half: invalid
    Image.fromarray(albedo).save(root / f"test/{name}_albedo.jpg", quality=100)
    shading = np.full((H, W, 3), (100, 200, 50), np.uint8)
    Image.fromarray(shading).save(root / f"test/{name}_shading.jpg", quality=100)
    return root


def test_albedo_shading_and_their_mask(mid):
    split = mid / "test.txt"
    split.write_text("test/everett_dining1_dir_13_mip2.jpg\n")
    sample = load_source({"reader": "mid_intrinsics", "root": mid, "split": split, "resolution": None})[0]
    assert sample["labels"]["albedo"][:, 2, 2].numpy() == pytest.approx([200 / 255] * 3, abs=2 / 255)
    valid = sample["valid"]["albedo"]
    assert valid[:4].all() and not valid[12:].any()
    expected = (0.3 * 100 + 0.59 * 200 + 0.11 * 50) / 255
    assert sample["labels"]["shading"].shape == (1, H, W)
    assert sample["labels"]["shading"][0, 2, 2].item() == pytest.approx(expected, abs=2 / 255)
    assert (sample["valid"]["shading"] == valid).all()


def test_listing_skips_the_label_images_themselves(mid):
    reader = load_source("mid_intrinsics:" + str(mid))
    assert len(reader) == 1 and reader[0]["image"].shape == (3, 256, 384)
