import torch

from stablemtl.tasks import get_task
from stablemtl.tasks.albedo import AlbedoTask


def test_attributes():
    task = get_task("albedo")
    assert isinstance(task, AlbedoTask)
    assert (task.prompt, task.label_channels, task.needs_pair) == ("albedo", 3, False)
    assert (task.primary_metric, task.higher_is_better) == ("si_rmse", False)


def test_encode_is_two_x_minus_one_and_round_trip_is_exact():
    # multiples of 1/256 survive x * 2 - 1 and (x + 1) / 2 without rounding
    albedo = torch.arange(0, 257, dtype=torch.float32).reshape(1, 1, 257).repeat(3, 2, 1) / 256
    task = AlbedoTask()
    image3, valid = task.encode(albedo, torch.ones(2, 257, dtype=torch.bool))
    assert valid.all() and image3.shape == (3, 2, 257)
    assert (
        image3[0, 0, 0].item() == -1.0 and image3[0, 0, 128].item() == 0.0 and image3[0, 0, 256].item() == 1.0
    )
    assert torch.equal(task.decode(image3), albedo)


def test_random_round_trip_and_batch():
    albedo = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    task = AlbedoTask()
    image3, _ = task.encode(albedo, torch.ones(2, 8, 8, dtype=torch.bool))
    torch.testing.assert_close(task.decode(image3), albedo, atol=1e-7, rtol=0)


def test_non_finite_and_out_of_range_values():
    albedo = torch.tensor([[[0.5, torch.nan, 1.5]], [[0.5, 0.2, -0.5]], [[0.5, 0.2, 0.0]]])
    image3, valid = AlbedoTask().encode(albedo, torch.ones(1, 3, dtype=torch.bool))
    assert valid.tolist() == [[True, False, True]]
    assert image3[:, 0, 1].tolist()[0] == -1.0 and torch.isfinite(image3).all()
    assert image3[:, 0, 2].tolist() == [1.0, -1.0, -1.0]


def test_decode_clips():
    decoded = AlbedoTask().decode(torch.tensor([2.0, -3.0, 0.5]).view(1, 3, 1, 1))
    assert decoded.flatten().tolist() == [1.0, 0.0, 0.75]


def test_visualize():
    prediction = torch.zeros(3, 2, 3)
    prediction[:, 0, 0] = torch.tensor([1.0, 0.5, 0.0])
    image = AlbedoTask().visualize(prediction)
    assert image.mode == "RGB" and image.size == (3, 2)
    assert image.getpixel((0, 0)) == (255, 128, 0) and image.getpixel((2, 1)) == (0, 0, 0)
