import math

import numpy as np
import pytest
import torch

from stablemtl.evaluation import DepthMetrics, fit_scale_shift
from stablemtl.evaluation.depth_metrics import depth_errors


def test_fit_scale_shift_matches_numpy_lstsq():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 50)
    y = 3.0 * x + 2.0 + rng.normal(0, 0.1, 50)
    expected, *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)
    scale, shift = fit_scale_shift(torch.from_numpy(x), torch.from_numpy(y))
    assert scale == pytest.approx(expected[0], abs=1e-10)
    assert shift == pytest.approx(expected[1], abs=1e-10)
    assert fit_scale_shift(torch.ones(4), torch.tensor([1.0, 2, 3, 6])) == (0.0, 3.0)


def test_depth_errors_by_hand():
    # p = [1, 2, 4], g = [2, 2, 2]: diff [-1, 0, 2], log ratio [-ln2, 0, ln2], max ratio [2, 1, 2].
    e = depth_errors(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([2.0, 2.0, 2.0]))
    ln2 = math.log(2)
    assert e["abs_rel"] == pytest.approx(0.5)
    assert e["sq_rel"] == pytest.approx(2.5 / 3)
    assert e["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert e["rmse_log"] == pytest.approx(ln2 * math.sqrt(2 / 3))
    assert e["log10"] == pytest.approx(2 * math.log10(2) / 3)
    assert e["delta1"] == pytest.approx(1 / 3)
    assert e["delta2"] == pytest.approx(1 / 3)  # 2 > 1.25^2 = 1.5625
    assert e["delta3"] == pytest.approx(1 / 3)  # 2 > 1.25^3 = 1.953
    assert e["silog"] == pytest.approx(100 * ln2 * math.sqrt(2 / 3))
    assert e["i_rmse"] == pytest.approx(math.sqrt((0.25 + 0.0625) / 3))


def _img(values):
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1)


def test_errors_are_averaged_per_image_and_invalid_pixels_ignored():
    metric = DepthMetrics(alignment="none")
    # Image 1: abs_rel 0.5 (hand case above) plus an invalid NaN pixel; image 2: perfect, 5 pixels.
    metric.update(_img([1, 2, 4, 7]), _img([2, 2, 2, float("nan")]), torch.ones(1, 1, 4, dtype=torch.bool))
    metric.update(_img([3] * 5), _img([3] * 5), torch.ones(1, 1, 5, dtype=torch.bool))
    out = metric.results()
    assert int(metric.num_images) == 2
    assert out["abs_rel"] == pytest.approx(0.25)  # per image then mean, not pixel-pooled (1.5/8)
    assert out["delta1"] == pytest.approx((1 / 3 + 1) / 2)


def test_least_squares_alignment_recovers_affine_prediction():
    gt = torch.linspace(1.0, 10.0, 12).view(1, 1, 3, 4)
    pred = (gt - 1.0) / 9.0  # affine-invariant depth in [0, 1]
    metric = DepthMetrics()
    metric.update(pred, gt, torch.ones(1, 3, 4, dtype=torch.bool))
    out = metric.results()
    assert out["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert out["delta1"] == 1.0


def test_disparity_alignment_recovers_affine_disparity():
    gt = torch.linspace(1.0, 10.0, 12).view(1, 1, 3, 4)
    pred = 0.2 / gt + 0.1  # affine in disparity, not in depth
    valid = torch.ones(1, 3, 4, dtype=torch.bool)
    disparity = DepthMetrics(alignment="least_squares_disparity")
    disparity.update(pred, gt, valid)
    depth = DepthMetrics(alignment="least_squares")
    depth.update(pred, gt, valid)
    assert disparity.results()["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    assert depth.results()["abs_rel"] > 0.05


def test_prediction_is_resized_to_the_label_and_clipped_to_range():
    metric = DepthMetrics(alignment="none", max_depth=5.0)
    # A 1x1 prediction of 9 m is upsampled to the 2x2 label and clipped to 5 m.
    metric.update(
        torch.full((1, 1, 1, 1), 9.0), torch.full((1, 1, 2, 2), 4.0), torch.ones(1, 2, 2, dtype=torch.bool)
    )
    assert metric.results()["abs_rel"] == pytest.approx(0.25)


def test_inverse_depth_is_taken_after_clipping_to_the_valid_ground_truth_range():
    # One aligned pixel at 1 mm: unclipped, its inverse (1000) alone gives i_rmse ~ 500 on 4 pixels.
    pred, gt = torch.tensor([1e-3, 2.0, 3.0, 8.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert depth_errors(pred, gt)["i_rmse"] == pytest.approx(math.sqrt((1000 - 1) ** 2 / 4))
    # Clipped to [1, 4] m the prediction is [1, 2, 3, 4]: no inverse-depth error at all.
    assert depth_errors(pred, gt, (1.0, 4.0))["i_rmse"] == pytest.approx(0.0, abs=1e-12)
    metric = DepthMetrics(alignment="none")
    metric.update(pred.view(1, 1, 1, 4), gt.view(1, 1, 1, 4), torch.ones(1, 1, 4, dtype=torch.bool))
    out = metric.results()
    assert out["i_rmse"] == pytest.approx(0.0, abs=1e-12)
    # Only the inversion is clipped: AbsRel still sees the 1 mm and 8 m pixels, (0.999 + 1) / 4.
    assert out["abs_rel"] == pytest.approx((0.999 + 1.0) / 4)
    # A near-constant prediction aligns to the mean depth: its i_rmse stays of the order of 1/gt.
    constant = DepthMetrics()
    constant.update(torch.full((1, 1, 1, 4), 0.5), gt.view(1, 1, 1, 4), torch.ones(1, 1, 4, dtype=torch.bool))
    expected = math.sqrt(sum((1 / 2.5 - 1 / g) ** 2 for g in (1.0, 2.0, 3.0, 4.0)) / 4)
    assert constant.results()["i_rmse"] == pytest.approx(expected)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="alignment"):
        DepthMetrics(alignment="median")
    with pytest.raises(ValueError, match="channel"):
        DepthMetrics().update(
            torch.zeros(1, 1, 2, 2), torch.ones(1, 3, 2, 2), torch.ones(1, 2, 2, dtype=torch.bool)
        )
