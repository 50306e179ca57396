import pytest
import torch

from stablemtl.tasks import get_task
from stablemtl.tasks.scene_flow import SceneFlowTask


def test_attributes():
    task = get_task("scene_flow")
    assert isinstance(task, SceneFlowTask)
    assert (task.prompt, task.label_channels, task.needs_pair) == ("scene flow", 3, True)
    assert (task.primary_metric, task.higher_is_better) == ("epe3d", False)


def test_encode_is_per_axis_max_abs_and_decode_inverts_it():
    x = torch.tensor([[0.5, -2.0]])
    y = torch.tensor([[0.1, 0.05]])
    z = torch.tensor([[-8.0, 4.0]])
    flow = torch.stack([x, y, z])  # (3, 1, 2)
    task = SceneFlowTask()
    image3, valid = task.encode(flow, torch.ones(1, 2, dtype=torch.bool))
    assert valid.all()
    torch.testing.assert_close(image3[:, 0, 0], torch.tensor([0.25, 1.0, -1.0]))
    torch.testing.assert_close(image3[:, 0, 1], torch.tensor([-1.0, 0.5, 0.5]))
    torch.testing.assert_close(task.decode(image3), image3)


def test_round_trip_batched_with_invalid_pixels():
    generator = torch.Generator().manual_seed(0)
    flow = torch.randn(2, 3, 8, 8, generator=generator)
    valid = torch.rand(2, 8, 8, generator=generator) > 0.3
    task = SceneFlowTask()
    image3, _ = task.encode(flow, valid)
    zeroed = torch.where(valid[:, None], flow, 0.0)
    expected = zeroed / zeroed.abs().amax(dim=(-2, -1), keepdim=True)
    torch.testing.assert_close(task.decode(image3), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("horizontal", [True, False])
def test_flip_negates_x_or_y_and_commutes_with_encode(horizontal):
    task = SceneFlowTask()
    flow = torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(1))
    valid = torch.ones(4, 6, dtype=torch.bool)
    dim = -1 if horizontal else -2
    flipped = task.flip(flow, horizontal)
    signs = torch.tensor([-1.0, 1.0, 1.0] if horizontal else [1.0, -1.0, 1.0]).view(3, 1, 1)
    torch.testing.assert_close(flipped, flow.flip(dim) * signs)
    torch.testing.assert_close(task.flip(flipped, horizontal), flow)
    image3, _ = task.encode(flow, valid)
    torch.testing.assert_close(task.encode(flipped, valid)[0], image3.flip(dim) * signs)


def test_visualize_maps_xyz_to_rgb():
    prediction = torch.zeros(3, 2, 2)
    prediction[:, 0, 1] = torch.tensor([1.0, -1.0, 0.0])
    image = SceneFlowTask().visualize(prediction)
    assert image.mode == "RGB" and image.size == (2, 2)
    assert image.getpixel((0, 0)) == (128, 128, 128) and image.getpixel((1, 0)) == (255, 0, 128)
