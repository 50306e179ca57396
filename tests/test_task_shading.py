import pytest
import torch

from stablemtl.tasks import get_task
from stablemtl.tasks.shading import ShadingTask


def test_attributes():
    task = get_task("shading")
    assert isinstance(task, ShadingTask)
    assert (task.prompt, task.label_channels, task.needs_pair) == ("shading", 1, False)
    assert (task.primary_metric, task.higher_is_better) == ("si_rmse", False)
    assert task.luminance_weights == (0.3, 0.59, 0.11)


def test_grey_round_trip_is_exact():
    shading = torch.arange(0, 257, dtype=torch.float32).reshape(1, 1, 257) / 256
    task = ShadingTask()
    image3, valid = task.encode(shading, torch.ones(1, 257, dtype=torch.bool))
    assert image3.shape == (3, 1, 257) and valid.all()
    assert torch.equal(image3[0], image3[1]) and torch.equal(image3[0], image3[2])
    assert image3[0, 0, 64].item() == -0.5
    assert torch.equal(task.decode(image3), shading)


def test_rgb_label_uses_luminance():
    rgb = torch.tensor([[[1.0, 0.2]], [[0.0, 0.4]], [[0.0, 0.6]]])  # (3, 1, 2)
    image3, _ = ShadingTask().encode(rgb, torch.ones(1, 2, dtype=torch.bool))
    # Y = 0.3 and 0.3*0.2 + 0.59*0.4 + 0.11*0.6 = 0.362
    torch.testing.assert_close(image3[:, 0, 0], torch.full((3,), 0.3 * 2 - 1))
    torch.testing.assert_close(image3[:, 0, 1], torch.full((3,), 0.362 * 2 - 1))
    custom, _ = ShadingTask(luminance_weights=(0.0, 0.0, 1.0)).encode(rgb, torch.ones(1, 2, dtype=torch.bool))
    torch.testing.assert_close(custom[0, 0], torch.tensor([-1.0, 0.2]))


def test_bad_channels_and_weights_raise():
    with pytest.raises(ValueError, match="1 \\(grey\\) or 3"):
        ShadingTask().encode(torch.ones(2, 2, 2), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="luminance_weights"):
        ShadingTask(luminance_weights=(1.0, 1.0))


def test_decode_is_channel_mean_clipped():
    image3 = torch.tensor([0.0, 0.3, 0.6]).view(3, 1, 1).repeat(1, 2, 2)
    decoded = ShadingTask().decode(image3)
    assert decoded.shape == (1, 2, 2)
    torch.testing.assert_close(decoded, torch.full((1, 2, 2), 0.65))
    assert ShadingTask().decode(torch.full((1, 3, 1, 1), 4.0)).item() == 1.0


def test_non_finite_shading_is_invalid_and_black():
    image3, valid = ShadingTask().encode(
        torch.tensor([[[torch.inf, 0.5]]]), torch.ones(1, 2, dtype=torch.bool)
    )
    assert valid.tolist() == [[False, True]] and image3[:, 0, 0].tolist() == [1.0, 1.0, 1.0]
    image3, _ = ShadingTask().encode(torch.tensor([[[torch.nan]]]), torch.ones(1, 1, dtype=torch.bool))
    assert image3.flatten().tolist() == [-1.0, -1.0, -1.0]


def test_visualize_is_grey():
    image = ShadingTask().visualize(torch.tensor([[[0.0, 0.5, 1.0]]]))
    assert image.mode == "RGB" and image.size == (3, 1)
    assert [image.getpixel((i, 0)) for i in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]
