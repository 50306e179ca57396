import pytest
import torch

from stablemtl.tasks import get_task
from stablemtl.tasks.optical_flow import OpticalFlowTask


def hand_flow() -> torch.Tensor:
    """(2, 2, 3): max|u| = 4, max|v| = 6."""
    u = torch.tensor([[2.0, -4.0, 1.0], [0.0, 3.0, -1.0]])
    v = torch.tensor([[0.0, 3.0, -6.0], [1.5, 0.0, 2.0]])
    return torch.stack([u, v])


def test_attributes():
    task = get_task("optical_flow")
    assert isinstance(task, OpticalFlowTask)
    assert (task.prompt, task.label_channels, task.needs_pair) == ("optical flow", 2, True)
    assert (task.primary_metric, task.higher_is_better) == ("epe", False)


def test_encode_divides_each_axis_by_its_max_abs_and_repeats_u():
    image3, valid = OpticalFlowTask().encode(hand_flow(), torch.ones(2, 3, dtype=torch.bool))
    assert image3.shape == (3, 2, 3) and valid.all()
    assert image3[0].tolist() == [[0.5, -1.0, 0.25], [0.0, 0.75, -0.25]]
    torch.testing.assert_close(image3[1], torch.tensor([[0.0, 0.5, -1.0], [0.25, 0.0, 2.0 / 6.0]]))
    assert torch.equal(image3[2], image3[0])


def test_round_trip_gives_per_axis_normalised_flow():
    flow = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 20
    task = OpticalFlowTask()
    image3, _ = task.encode(flow, torch.ones(3, 8, 8, dtype=torch.bool))
    expected = flow / flow.abs().amax(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(task.decode(image3), expected, atol=1e-6, rtol=0)


def test_invalid_pixels_are_zero_and_excluded_from_the_max():
    flow = hand_flow()
    flow[:, 1, 0] = torch.tensor([100.0, -100.0])
    flow[0, 0, 0] = torch.inf
    valid = torch.ones(2, 3, dtype=torch.bool)
    valid[1, 0] = False
    image3, out_valid = OpticalFlowTask().encode(flow, valid)
    assert not out_valid[1, 0] and not out_valid[0, 0] and out_valid.sum() == 4
    assert image3[:, 1, 0].tolist() == [0.0, 0.0, 0.0] and image3[:, 0, 0].tolist() == [0.0, 0.0, 0.0]
    assert image3[0, 0, 1].item() == -1.0 and image3[1, 0, 2].item() == -1.0  # maxima unchanged


def test_zero_axis_stays_zero():
    flow = torch.zeros(2, 3, 3)
    flow[1] = 5.0
    image3, _ = OpticalFlowTask().encode(flow, torch.ones(3, 3, dtype=torch.bool))
    assert torch.isfinite(image3).all() and image3[0].abs().max() == 0 and image3[1].eq(1.0).all()


def test_decode_keeps_channels_0_and_1_clipped():
    image3 = torch.tensor([1.5, -0.25, 0.9]).view(3, 1, 1).repeat(1, 2, 2)
    decoded = OpticalFlowTask().decode(image3)
    assert decoded.shape == (2, 2, 2)
    assert decoded[:, 0, 0].tolist() == [1.0, -0.25]


@pytest.mark.parametrize("horizontal", [True, False])
def test_flip_negates_the_matching_axis_and_commutes_with_encode(horizontal):
    task = OpticalFlowTask()
    flow = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(1))
    valid = torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) > 0.25
    dim = -1 if horizontal else -2
    flipped = task.flip(flow, horizontal)
    negated = 0 if horizontal else 1
    torch.testing.assert_close(flipped[negated], -flow[negated].flip(dim))
    torch.testing.assert_close(flipped[1 - negated], flow[1 - negated].flip(dim))
    torch.testing.assert_close(task.flip(flipped, horizontal), flow)
    image3, _ = task.encode(flow, valid)
    encoded_flipped, _ = task.encode(flipped, valid.flip(dim))
    # in image space [u, v, u]: an h-flip negates channels 0 and 2, a v-flip channel 1
    signs = torch.tensor([-1.0, 1.0, -1.0] if horizontal else [1.0, -1.0, 1.0]).view(3, 1, 1)
    torch.testing.assert_close(encoded_flipped, image3.flip(dim) * signs)


def test_visualize_uses_the_flow_wheel():
    prediction = torch.zeros(2, 3, 4)
    prediction[0, 0, 0] = 1.0  # right
    prediction[0, 0, 1] = -1.0  # left
    image = OpticalFlowTask().visualize(prediction)
    assert image.mode == "RGB" and image.size == (4, 3)
    assert image.getpixel((3, 2)) == (255, 255, 255)  # no motion is white on the wheel
    right, left = image.getpixel((0, 0)), image.getpixel((1, 0))
    assert right != left and right != (255, 255, 255)
