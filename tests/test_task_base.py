import numpy as np
import pytest
import torch

from stablemtl.tasks import get_task, latent_valid_mask, task_names
from stablemtl.tasks.base import batched, batched_image3, single_prediction, to_pil_rgb, unbatch


def test_one_invalid_pixel_invalidates_exactly_its_latent_cell():
    valid = torch.ones(32, 48, dtype=torch.bool)
    valid[19, 42] = False  # cell (19 // 8, 42 // 8) = (2, 5)
    mask = latent_valid_mask(valid)
    assert mask.shape == (4, 6) and mask.dtype == torch.bool
    expected = torch.ones(4, 6, dtype=torch.bool)
    expected[2, 5] = False
    assert torch.equal(mask, expected)
    for name in task_names():
        assert torch.equal(get_task(name).latent_valid_mask(valid, 8), expected)


def test_latent_mask_on_cell_borders_batches_and_other_factors():
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[0, 7, 8] = False  # last row of cell row 0, first column of cell column 1
    valid[1] = False
    mask = latent_valid_mask(valid)
    assert mask.shape == (2, 2, 2)
    assert mask[0].tolist() == [[True, False], [True, True]] and not mask[1].any()
    assert latent_valid_mask(valid[0], 4).tolist()[1] == [True, True, False, True]
    with pytest.raises(ValueError, match="multiple"):
        latent_valid_mask(torch.ones(12, 16, dtype=torch.bool))


def test_batched_checks_shapes_and_drops_non_finite_pixels():
    label = torch.ones(2, 3, 4)
    label[1, 0, 0] = torch.nan
    out, valid, was_batched = batched(label, torch.ones(3, 4, dtype=torch.bool), 2)
    assert out.shape == (1, 2, 3, 4) and not was_batched and valid.sum() == 11 and not valid[0, 0, 0]
    with pytest.raises(ValueError, match="2 channel"):
        batched(torch.ones(1, 3, 4), torch.ones(3, 4, dtype=torch.bool), 2)
    with pytest.raises(ValueError, match="label must be"):
        batched(torch.ones(3, 4), torch.ones(3, 4, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match="valid mask"):
        batched(torch.ones(2, 1, 3, 4), torch.ones(3, 4, dtype=torch.bool), 1)


def test_image3_and_prediction_helpers():
    image3, was_batched = batched_image3(torch.zeros(3, 2, 2))
    assert image3.shape == (1, 3, 2, 2) and not was_batched
    assert unbatch(image3, was_batched).shape == (3, 2, 2)
    with pytest.raises(ValueError, match="image3"):
        batched_image3(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="float"):
        batched_image3(torch.zeros(3, 4, 4, dtype=torch.long))
    assert single_prediction(torch.zeros(4, 5), 1).shape == (1, 4, 5)
    assert single_prediction(torch.zeros(1, 3, 4, 5), 3).shape == (3, 4, 5)
    with pytest.raises(ValueError, match="prediction"):
        single_prediction(torch.zeros(4, 5), 3)


def test_to_pil_rgb_rounds_and_clips():
    image = to_pil_rgb(np.array([[[0.0, 0.5, 1.0], [2.0, -1.0, np.nan]]]))
    assert image.mode == "RGB" and image.size == (2, 1)
    assert image.getpixel((0, 0)) == (0, 128, 255) and image.getpixel((1, 0)) == (255, 0, 0)
    with pytest.raises(ValueError, match="rgb"):
        to_pil_rgb(np.zeros((2, 2)))


@pytest.mark.parametrize("horizontal", [True, False])
def test_plain_tasks_flip_without_signs(horizontal):
    dim = -1 if horizontal else -2
    for name in ("depth", "semantic", "albedo", "shading"):
        task = get_task(name)
        label = torch.arange(2 * task.label_channels * 12).reshape(2, task.label_channels, 3, 4).float()
        assert torch.equal(task.flip(label, horizontal), label.flip(dim))
        assert torch.equal(task.flip(task.flip(label, horizontal), horizontal), label)


def test_encode_rejects_non_tensor_inputs_naming_the_argument():
    for name in task_names():
        task = get_task(name)
        label = np.zeros((task.label_channels, 8, 8), dtype=np.float32)
        with pytest.raises(ValueError, match=r"label must be a torch\.Tensor, got ndarray"):
            task.encode(label, torch.ones(8, 8, dtype=torch.bool))
        with pytest.raises(ValueError, match=r"valid must be a torch\.Tensor, got list"):
            task.encode(torch.zeros(task.label_channels, 8, 8), [[True] * 8] * 8)
