"""Cityscapes reader: labelIds map to the 8 classes; everything else is ignored."""

import numpy as np
import pytest
from PIL import Image

from stablemtl.data import load_source
from stablemtl.tasks import IGNORE_INDEX


@pytest.fixture
def cityscapes(tmp_path):
    root = tmp_path / "cityscapes"
    (root / "leftImg8bit/val/frankfurt").mkdir(parents=True)
    (root / "gtFine/val/frankfurt").mkdir(parents=True)
    stem = "frankfurt_000000_000294"
    Image.fromarray(np.full((4, 8, 3), 90, np.uint8)).save(
        root / f"leftImg8bit/val/frankfurt/{stem}_leftImg8bit.png"
    )
    ids = np.array([[7, 11, 17, 19, 20, 21, 23, 26], [28, 27, 8, 24, 0, 255, 7, 7]], np.uint8)
    Image.fromarray(np.repeat(ids, 2, axis=0)).save(root / f"gtFine/val/frankfurt/{stem}_gtFine_labelIds.png")
    return root


def test_label_ids_become_the_eight_classes(cityscapes):
    split = cityscapes / "val.txt"
    split.write_text("leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png\n")
    sample = load_source({"reader": "cityscapes", "root": cityscapes, "split": split, "resolution": None})[0]
    ids = sample["labels"]["semantic"][0, 0].tolist()
    assert ids == [0, 1, 2, 3, 4, 5, 6, 7]  # road ... car
    row = sample["labels"]["semantic"][0, 2].tolist()
    ignored = IGNORE_INDEX
    assert row == [
        7,
        ignored,
        ignored,
        ignored,
        ignored,
        ignored,
        0,
        0,
    ]  # bus -> vehicle; truck, sidewalk, person
    assert sample["valid"]["semantic"][2].tolist() == [True] + [False] * 5 + [True, True]


def test_default_resolution_and_an_absent_label_file_is_named(cityscapes):
    sample = load_source("cityscapes:" + str(cityscapes))[0]
    assert sample["image"].shape == (3, 256, 512) and sample["labels"]["semantic"].shape == (1, 256, 512)
    split = cityscapes / "val.txt"
    split.write_text("gtFine/val/frankfurt/frankfurt_000000_000999_gtFine_labelIds.png\n")
    with pytest.raises(ValueError, match=r"frankfurt_000000_000999_leftImg8bit\.png"):
        load_source({"reader": "cityscapes", "root": cityscapes, "split": split})
