"""Integer images in wide types: 8-bit data in PIL mode 'I' / int32 is not divided by 65535."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image as PILImage

from stablemtl.data import load_source, render_sample
from stablemtl.data.storage import features_for, sample_to_row
from stablemtl.pipelines.image_processor import StableMTLImageProcessor

GREY_8BIT = np.array([[0, 51], [102, 255]])


@pytest.mark.parametrize(
    "image",
    [
        PILImage.fromarray(GREY_8BIT.astype(np.int32), mode="I"),
        GREY_8BIT.astype(np.int32),
        GREY_8BIT.astype(np.int64),
        GREY_8BIT.astype(np.uint32),
        GREY_8BIT.astype(np.uint8),
    ],
    ids=["pil-I", "int32", "int64", "uint32", "uint8"],
)
def test_8bit_values_in_any_integer_type_are_divided_by_255(image):
    loaded = StableMTLImageProcessor().load_images(image)
    expected = torch.tensor(GREY_8BIT / 255.0, dtype=torch.float32).expand(1, 3, 2, 2)
    assert torch.allclose(loaded, expected, atol=1e-7)


def test_16bit_values_and_refused_ranges():
    processor = StableMTLImageProcessor()
    wide = np.array([[0, 300], [40000, 65535]])
    for dtype in (np.int32, np.uint32):
        loaded = processor.load_images(wide.astype(dtype))
        assert torch.allclose(loaded[0, 0], torch.tensor(wide / 65535.0, dtype=torch.float32))
    # uint16 says 16 bits by its dtype: a dark 16-bit image stays dark.
    dark = processor.load_images(GREY_8BIT.astype(np.uint16))
    assert torch.allclose(dark[0, 0], torch.tensor(GREY_8BIT / 65535.0, dtype=torch.float32))
    with pytest.raises(ValueError, match=r"`image` has dtype int32 with values in \[-1, 255\]"):
        processor.load_images(np.array([[-1, 255]], dtype=np.int32))
    with pytest.raises(ValueError, match=r"values in \[0, 70000\]; integer images must hold 8-bit"):
        processor.load_images(np.array([[0, 70000]], dtype=np.int64))


def test_data_layer_reads_grey_8_and_16_bit_images_by_their_range(tmp_path):
    tasks = ("depth",)
    sample = render_sample("indoor", seed=0, size=8, split="train")
    rows = []
    for k, picture in enumerate(
        [
            PILImage.fromarray(np.full((8, 8), 200, np.int32), mode="I"),  # 8-bit data in mode 'I'
            PILImage.fromarray(np.full((8, 8), 40000, np.uint16)),  # 16-bit grey (mode 'I;16')
        ]
    ):
        rows.append({**sample_to_row(sample, k, tasks), "image": picture})
    path = tmp_path / "grey"
    Dataset.from_list(rows, features=features_for(tasks, 8, 8)).save_to_disk(str(path))
    ds = load_source(path)
    assert torch.allclose(ds[0]["image"], torch.full((3, 8, 8), 200 / 255))
    assert torch.allclose(ds[1]["image"], torch.full((3, 8, 8), 40000 / 65535))
