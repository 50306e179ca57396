import math

import numpy as np
import pytest
import torch

from stablemtl.evaluation import NormalMetrics
from stablemtl.evaluation.normal_metrics import histogram_median


def _rotated(angles_deg):
    """Unit vectors at the given angles from +z, in the x-z plane: (1, 3, 1, N)."""
    a = torch.deg2rad(torch.tensor(angles_deg, dtype=torch.float64))
    return torch.stack([a.sin(), torch.zeros_like(a), a.cos()]).view(1, 3, 1, -1)


def test_angular_errors_by_hand():
    angles = [0.0, 10.0, 20.0, 45.0, 60.0]
    gt = _rotated([0.0] * 5)
    metric = NormalMetrics()
    # Predictions need not be unit length: scaled by 3, the angles are the same.
    metric.update(3.0 * _rotated(angles), gt, torch.ones(1, 1, 5, dtype=torch.bool))
    out = metric.results()
    assert out["mean_angular_error"] == pytest.approx(27.0)
    assert out["mean_angular_error_pooled"] == pytest.approx(27.0)  # one image: both means agree
    assert out["rmse_angular_error"] == pytest.approx(math.sqrt((100 + 400 + 2025 + 3600) / 5))
    assert out["median_angular_error"] == pytest.approx(20.0, abs=0.011)
    assert out["within_11.25"] == pytest.approx(40.0)
    assert out["within_22.5"] == pytest.approx(60.0)
    assert out["within_30"] == pytest.approx(60.0)


def test_mean_is_per_image_and_pooled_mean_pools_pixels_invalid_pixels_ignored():
    metric = NormalMetrics()
    metric.update(_rotated([10.0]), _rotated([0.0]), torch.ones(1, 1, 1, dtype=torch.bool))
    # Second image: 3 pixels at 40 deg, one invalid pixel whose label is NaN, one zero label.
    gt = _rotated([0.0] * 5)
    gt[0, :, 0, 3] = float("nan")
    gt[0, :, 0, 4] = 0.0
    metric.update(_rotated([40.0, 40.0, 40.0, 90.0, 90.0]), gt, torch.ones(1, 1, 5, dtype=torch.bool))
    out = metric.results()
    assert out["mean_angular_error"] == pytest.approx((10 + 40) / 2)  # per image: 10 and 40
    assert out["mean_angular_error_pooled"] == pytest.approx((10 + 3 * 40) / 4)  # 4 valid pixels
    # Median and thresholds pool the 4 pixels {10, 40, 40, 40}.
    assert out["median_angular_error"] == pytest.approx(40.0, abs=0.011)
    assert out["within_11.25"] == pytest.approx(25.0)
    assert out["within_30"] == pytest.approx(25.0)


def test_per_image_mean_in_one_batch_with_different_valid_counts():
    # Image 0: 4 valid pixels with errors 0, 0, 32, 60 (mean 23). Image 1: only its first pixel is
    # valid, error 90 (the others, 0 deg, are masked out). An image with no valid pixel is skipped.
    pred = torch.cat([_rotated([0.0, 0.0, 32.0, 60.0]), _rotated([90.0, 0.0, 0.0, 0.0]), _rotated([5.0] * 4)])
    gt = _rotated([0.0] * 4).expand(3, -1, -1, -1)
    valid = torch.tensor([[[True] * 4], [[True, False, False, False]], [[False] * 4]])
    metric = NormalMetrics()
    metric.update(pred, gt, valid)
    out = metric.results()
    assert int(metric.num_images) == 2
    assert out["mean_angular_error"] == pytest.approx((23.0 + 90.0) / 2)  # 56.5
    assert out["mean_angular_error_pooled"] == pytest.approx((0 + 0 + 32 + 60 + 90) / 5)  # 36.4
    assert out["rmse_angular_error"] == pytest.approx(math.sqrt((32**2 + 60**2 + 90**2) / 5))
    assert out["within_11.25"] == pytest.approx(40.0)
    assert out["within_30"] == pytest.approx(40.0)  # 0, 0 only


def test_no_scored_image_gives_nan_for_every_name():
    metric = NormalMetrics()
    metric.update(_rotated([1.0, 2.0]), _rotated([0.0, 0.0]), torch.zeros(1, 1, 2, dtype=torch.bool))
    out = metric.results()
    assert list(out) == metric.metric_names() and all(math.isnan(v) for v in out.values())


def test_histogram_median_against_numpy():
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 90, 1001)
    counts = torch.bincount(torch.from_numpy(values / 0.01).long(), minlength=18000)
    assert histogram_median(counts, 0.01) == pytest.approx(float(np.median(values)), abs=0.01)


def test_states_merge_like_a_ddp_sum():
    # Two "ranks" each score half of the images; merging their sum states equals scoring all on one.
    images = [(_rotated([a, a + 5.0, 3 * a]), _rotated([0.0, 1.0, 2.0])) for a in (3.0, 12.0, 25.0, 40.0)]
    valid = torch.ones(1, 1, 3, dtype=torch.bool)
    whole, rank0, rank1 = NormalMetrics(), NormalMetrics(), NormalMetrics()
    for i, (pred, gt) in enumerate(images):
        whole.update(pred, gt, valid)
        (rank0 if i % 2 == 0 else rank1).update(pred, gt, valid)
    rank0.merge_state(rank1)
    assert rank0.results() == pytest.approx(whole.results())
