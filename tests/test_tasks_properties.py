"""Property tests over every built-in task: random labels with NaN / inf, random masks, all-invalid images."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from stablemtl.tasks import IGNORE_INDEX, get_task

BUILTIN = ["albedo", "shading", "depth", "normal", "semantic", "optical_flow", "scene_flow"]
PREDICTION_CHANNELS = {
    "albedo": 3,
    "shading": 1,
    "depth": 1,
    "normal": 3,
    "semantic": 1,
    "optical_flow": 2,
    "scene_flow": 3,
}
CHECKS = settings(max_examples=40, deadline=None, derandomize=True)

any_float = st.floats(width=32, allow_nan=True, allow_infinity=True)
class_id = st.sampled_from([*range(8), IGNORE_INDEX]).map(float) | st.sampled_from([np.nan, np.inf])


@st.composite
def labelled(draw, name: str):
    """A random (label, valid) pair for task ``name``, batched or not."""
    task = get_task(name)
    batch = draw(st.sampled_from([None, 1, 3]))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    channels = draw(st.sampled_from([1, 3])) if name == "shading" else task.label_channels
    lead = () if batch is None else (batch,)
    elements = class_id if name == "semantic" else any_float
    label = draw(hnp.arrays(np.float32, (*lead, channels, h, w), elements=elements))
    valid = draw(hnp.arrays(np.bool_, (*lead, h, w)))
    return torch.from_numpy(label), torch.from_numpy(valid)


def check_outputs(name: str, label: torch.Tensor, valid: torch.Tensor):
    task = get_task(name)
    image3, out_valid = task.encode(label, valid)
    assert image3.shape == (*label.shape[:-3], 3, *label.shape[-2:]) and image3.dtype == torch.float32
    assert torch.isfinite(image3).all()
    assert image3.min() >= -1.0 and image3.max() <= 1.0
    assert out_valid.shape == valid.shape and out_valid.dtype == torch.bool
    assert not (out_valid & ~valid).any()  # encoding never adds valid pixels
    assert not (out_valid & ~torch.isfinite(label).all(dim=-3)).any()  # non-finite pixels are invalid
    prediction = task.decode(image3)
    assert prediction.shape == (*label.shape[:-3], PREDICTION_CHANNELS[name], *label.shape[-2:])
    if name == "semantic":
        assert prediction.dtype == torch.int64 and prediction.min() >= 0 and prediction.max() < 8
    else:
        assert torch.isfinite(prediction).all()
    return image3, out_valid


@pytest.mark.parametrize("name", BUILTIN)
def test_random_labels_give_finite_images_in_range(name):
    @CHECKS
    @given(labelled(name))
    def check(pair):
        check_outputs(name, *pair)

    check()


@pytest.mark.parametrize("name", BUILTIN)
@pytest.mark.parametrize("fill", [np.nan, np.inf, -np.inf])
def test_all_invalid_labels_give_an_all_invalid_mask(name, fill):
    task = get_task(name)
    label = torch.full((2, task.label_channels, 8, 8), fill, dtype=torch.float32)
    _, out_valid = check_outputs(name, label, torch.ones(2, 8, 8, dtype=torch.bool))
    assert not out_valid.any()
    assert not task.latent_valid_mask(out_valid).any()
    # a finite label under an all-False mask is all-invalid too
    finite = torch.zeros(1, task.label_channels, 8, 8)
    _, out_valid = check_outputs(name, finite, torch.zeros(1, 8, 8, dtype=torch.bool))
    assert not out_valid.any()


@pytest.mark.parametrize("name", BUILTIN)
def test_batch_equals_images_one_by_one(name):
    task = get_task(name)
    generator = torch.Generator().manual_seed(3)
    if name == "semantic":
        label = torch.randint(0, 8, (3, 1, 8, 8), generator=generator)
    else:
        label = torch.rand(3, task.label_channels, 8, 8, generator=generator) * 2
    valid = torch.rand(3, 8, 8, generator=generator) > 0.2
    image3, out_valid = task.encode(label, valid)
    prediction = task.decode(image3)
    for i in range(3):
        single_image3, single_valid = task.encode(label[i], valid[i])
        torch.testing.assert_close(image3[i], single_image3)
        assert torch.equal(out_valid[i], single_valid)
        torch.testing.assert_close(prediction[i], task.decode(single_image3))
        assert task.visualize(prediction[i]).size == (8, 8)
