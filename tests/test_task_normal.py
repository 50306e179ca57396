import pytest
import torch

from stablemtl.tasks import get_task
from stablemtl.tasks.normal import NormalTask


def unit_normals(h: int = 8, w: int = 8, seed: int = 0) -> torch.Tensor:
    n = torch.randn(3, h, w, generator=torch.Generator().manual_seed(seed))
    return n / n.norm(dim=0, keepdim=True)


def test_attributes():
    task = get_task("normal")
    assert isinstance(task, NormalTask)
    assert (task.prompt, task.label_channels, task.primary_metric, task.higher_is_better) == (
        "normal",
        3,
        "mean_angular_error",
        False,
    )


def test_round_trip_within_1e6():
    normals = unit_normals()
    task = NormalTask()
    image3, valid = task.encode(normals, torch.ones(8, 8, dtype=torch.bool))
    assert torch.equal(image3, normals) and valid.all()
    torch.testing.assert_close(task.decode(image3), normals, atol=1e-6, rtol=0)


def test_invalid_pixels_are_zero_and_decode_to_zero():
    normals = unit_normals()
    normals[:, 0, 0] = torch.nan
    valid = torch.ones(8, 8, dtype=torch.bool)
    valid[1, 1] = False
    image3, out_valid = NormalTask().encode(normals, valid)
    assert image3[:, 0, 0].tolist() == [0.0, 0.0, 0.0] and image3[:, 1, 1].tolist() == [0.0, 0.0, 0.0]
    assert not out_valid[0, 0] and not out_valid[1, 1] and out_valid.sum() == 62
    decoded = NormalTask().decode(image3)
    assert decoded[:, 0, 0].tolist() == [0.0, 0.0, 0.0]


def test_decode_clips_and_normalises():
    image3 = torch.tensor([[[0.5]], [[0.0]], [[0.0]]]) * torch.ones(3, 1, 2)
    image3[:, 0, 1] = torch.tensor([3.0, 3.0, 0.0])  # clipped to (1, 1, 0) -> (1, 1, 0) / sqrt 2
    decoded = NormalTask().decode(image3[None])
    assert decoded.shape == (1, 3, 1, 2)
    torch.testing.assert_close(decoded[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(decoded[0, :, 0, 1], torch.tensor([2**-0.5, 2**-0.5, 0.0]))


@pytest.mark.parametrize("horizontal", [True, False])
def test_flip_sign_rule_and_commutes_with_encode(horizontal):
    task = NormalTask()
    normals = unit_normals(4, 6)
    valid = torch.rand(4, 6, generator=torch.Generator().manual_seed(1)) > 0.2
    flipped = task.flip(normals, horizontal)
    axis, other = (0, 1) if horizontal else (1, 0)
    dim = -1 if horizontal else -2
    torch.testing.assert_close(flipped[axis], -normals[axis].flip(dim))
    torch.testing.assert_close(flipped[other], normals[other].flip(dim))
    torch.testing.assert_close(flipped[2], normals[2].flip(dim))
    torch.testing.assert_close(task.flip(flipped, horizontal), normals)
    # encode(flip(label)) == image-space flip of encode(label) with the same sign rule
    image3, _ = task.encode(normals, valid)
    encoded_flipped, valid_flipped = task.encode(flipped, valid.flip(dim))
    signs = torch.tensor(task.hflip_signs if horizontal else task.vflip_signs).view(3, 1, 1)
    torch.testing.assert_close(encoded_flipped, image3.flip(dim) * signs)
    assert torch.equal(valid_flipped, valid.flip(dim))


def test_visualize_maps_minus_one_one_to_rgb():
    prediction = torch.zeros(3, 2, 3)
    prediction[2] = 1.0  # facing the camera
    prediction[:, 1, 2] = torch.tensor([-1.0, 1.0, 0.0])
    image = NormalTask().visualize(prediction)
    assert image.mode == "RGB" and image.size == (3, 2)
    assert image.getpixel((0, 0)) == (128, 128, 255)
    assert image.getpixel((2, 1)) == (0, 255, 128)
