import pytest
import torch

from stablemtl.tasks import get_task
from stablemtl.tasks.depth import DepthTask, masked_quantiles

# 50 depths 1..50 m. With linear interpolation the 2% quantile sits at position 0.02 * 49 = 0.98
# (between 1 and 2 -> 1.98 m) and the 98% quantile at 48.02 (between 49 and 50 -> 49.02 m).
Q_LOW, Q_HIGH = 1.98, 49.02


def ramp() -> torch.Tensor:
    return torch.arange(1, 51, dtype=torch.float32).reshape(1, 5, 10)


def test_attributes():
    task = get_task("depth")
    assert isinstance(task, DepthTask)
    assert (task.prompt, task.label_channels, task.needs_pair) == ("depth", 1, False)
    assert (task.primary_metric, task.higher_is_better) == ("abs_rel", False)
    assert (task.quantile, task.clip) == (0.02, True)


def test_encode_is_the_quantile_affine_map_repeated_over_three_channels():
    depth = ramp()
    image3, valid = DepthTask().encode(depth, torch.ones(5, 10, dtype=torch.bool))
    expected = ((depth - Q_LOW) / (Q_HIGH - Q_LOW) * 2 - 1).clamp(-1, 1)
    assert image3.shape == (3, 5, 10) and valid.all()
    for channel in range(3):
        torch.testing.assert_close(image3[channel : channel + 1], expected, atol=1e-6, rtol=0)
    # hand-computed values: 26 m -> (26 - 1.98) / 47.04 * 2 - 1
    assert image3[0, 2, 5].item() == pytest.approx(24.02 / 47.04 * 2 - 1, abs=1e-6)
    assert image3[0, 0, 0].item() == -1.0 and image3[0, -1, -1].item() == 1.0


def test_decode_of_encode_is_the_clipped_affine_map():
    depth = ramp()
    task = DepthTask()
    prediction = task.decode(task.encode(depth, torch.ones(5, 10, dtype=torch.bool))[0])
    expected = ((depth - Q_LOW) / (Q_HIGH - Q_LOW)).clamp(0, 1)
    assert prediction.shape == (1, 5, 10)
    torch.testing.assert_close(prediction, expected, atol=1e-6, rtol=0)
    assert prediction[0, 2, 5].item() == pytest.approx(0.5106293, abs=1e-6)


def test_quantiles_ignore_invalid_and_non_positive_pixels():
    # Pad the ramp with pixels that must not move the quantiles: invalid far ones, a valid 0 and -5.
    depth = torch.cat([ramp(), torch.tensor([[[1000.0] * 8 + [0.0, -5.0]]])], dim=1)  # [1,6,10]
    valid = torch.ones(6, 10, dtype=torch.bool)
    valid[5, :8] = False
    image3, out_valid = DepthTask().encode(depth, valid)
    expected = ((ramp() - Q_LOW) / (Q_HIGH - Q_LOW) * 2 - 1).clamp(-1, 1)
    torch.testing.assert_close(image3[:1, :5], expected, atol=1e-6, rtol=0)
    assert torch.equal(out_valid, valid)
    # invalid 1000 m is clipped to the far value; valid 0 m and -5 m map below q_low -> -1
    assert image3[0, 5].tolist() == [1.0] * 8 + [-1.0, -1.0]


def test_no_clip_and_other_quantile():
    depth = ramp()
    valid = torch.ones(5, 10, dtype=torch.bool)
    unclipped, _ = DepthTask(clip=False).encode(depth, valid)
    assert unclipped[0, 0, 0].item() == pytest.approx((1 - Q_LOW) / (Q_HIGH - Q_LOW) * 2 - 1, abs=1e-6)
    assert unclipped[0, -1, -1].item() == pytest.approx((50 - Q_LOW) / (Q_HIGH - Q_LOW) * 2 - 1, abs=1e-6)
    min_max, _ = DepthTask(quantile=0.0).encode(depth, valid)
    torch.testing.assert_close(min_max[0], (depth[0] - 1) / 49 * 2 - 1, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="quantile"):
        DepthTask(quantile=0.5)


def test_batch_images_are_normalised_independently():
    a, b = ramp(), ramp() * 7 + 3
    valid = torch.ones(2, 5, 10, dtype=torch.bool)
    task = DepthTask()
    batch, _ = task.encode(torch.stack([a, b]), valid)
    assert batch.shape == (2, 3, 5, 10)
    torch.testing.assert_close(batch[0], task.encode(a, valid[0])[0])
    # an affine change of the depth leaves the affine-invariant encoding unchanged
    torch.testing.assert_close(batch[1], batch[0], atol=1e-5, rtol=0)


def test_degenerate_images_stay_finite():
    task = DepthTask()
    valid = torch.ones(4, 4, dtype=torch.bool)
    constant, _ = task.encode(torch.full((1, 4, 4), 3.0), valid)
    assert torch.equal(constant, torch.full((3, 4, 4), -1.0))
    nothing, nothing_valid = task.encode(torch.full((1, 4, 4), torch.nan), valid)
    assert torch.equal(nothing, torch.full((3, 4, 4), -1.0)) and not nothing_valid.any()
    mixed = torch.tensor([[[torch.inf, -torch.inf], [torch.nan, 2.0]]])
    image3, mixed_valid = task.encode(mixed, torch.ones(2, 2, dtype=torch.bool))
    assert mixed_valid.tolist() == [[False, False], [False, True]]
    assert image3[0].tolist() == [[1.0, -1.0], [-1.0, -1.0]]


def test_masked_quantiles_match_torch_quantile():
    generator = torch.Generator().manual_seed(0)
    values = torch.rand(3, 200, generator=generator) * 10
    mask = torch.rand(3, 200, generator=generator) > 0.3
    mask[2] = False
    low, high = masked_quantiles(values, mask, 0.1)
    for row in range(2):
        expected = torch.quantile(values[row][mask[row]], torch.tensor([0.1, 0.9]))
        torch.testing.assert_close(torch.stack([low[row], high[row]]), expected)
    assert low[2].isnan() and high[2].isnan()


def test_bad_shapes_raise():
    task = DepthTask()
    with pytest.raises(ValueError, match="channel"):
        task.encode(torch.ones(3, 4, 4), torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="valid"):
        task.encode(torch.ones(1, 4, 4), torch.ones(4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="image3"):
        task.decode(torch.ones(1, 4, 4))


def test_decode_takes_channel_mean():
    image3 = torch.stack([torch.full((2, 2), -1.0), torch.full((2, 2), 0.0), torch.full((2, 2), 0.4)])
    prediction = DepthTask().decode(image3[None])
    assert prediction.shape == (1, 1, 2, 2)
    torch.testing.assert_close(prediction, torch.full((1, 1, 2, 2), 0.4))


def test_visualize_uses_the_colormap():
    from matplotlib import colormaps

    prediction = torch.zeros(1, 4, 6)
    prediction[0, :, 3:] = 1.0
    image = DepthTask().visualize(prediction)
    assert image.mode == "RGB" and image.size == (6, 4)
    near = tuple(round(c * 255) for c in colormaps["Spectral"](0.0)[:3])
    far = tuple(round(c * 255) for c in colormaps["Spectral"](1.0)[:3])
    assert image.getpixel((0, 0)) == near and image.getpixel((5, 3)) == far
    assert DepthTask().visualize(prediction[0]).size == (6, 4)
    with pytest.raises(ValueError, match="prediction"):
        DepthTask().visualize(torch.zeros(2, 1, 4, 6))
