import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from stablemtl.evaluation import IntrinsicImageMetrics
from stablemtl.evaluation.intrinsic_metrics import lmse, masked_ssim


def _lmse_numpy(pred, gt, mask, window=16, stride=8):
    """Independent loop version: per window and channel, own LS scale; normalised by sum mask*g^2."""
    c, h, w = gt.shape
    error = total = 0.0
    for ch in range(c):
        for i in range(0, h - window + 1, stride):
            for j in range(0, w - window + 1, stride):
                p = pred[ch, i : i + window, j : j + window]
                g = gt[ch, i : i + window, j : j + window]
                m = mask[i : i + window, j : j + window]
                pp = np.sum(m * p * p)
                alpha = np.sum(m * p * g) / pp if pp > 0 else 0.0
                error += np.sum(m * (g - alpha * p) ** 2)
                total += np.sum(m * g * g)
    return error / total


def test_si_rmse_by_hand():
    # g = [0.2, 0.4], p = [0.4, 0.4]: s = 0.24 / 0.32 = 0.75, p' = [0.3, 0.3], errors +-0.1.
    metric = IntrinsicImageMetrics(channels=1)
    metric.update(torch.tensor([0.4, 0.4]).view(1, 1, 1, 2), torch.tensor([0.2, 0.4]).view(1, 1, 1, 2),
                  torch.ones(1, 1, 2, dtype=torch.bool))  # fmt: skip
    assert metric.results()["si_rmse"] == pytest.approx(0.1)


def test_scaled_prediction_is_perfect():
    rng = np.random.default_rng(0)
    gt = torch.from_numpy(rng.uniform(0.1, 0.9, (1, 3, 20, 24)))
    metric = IntrinsicImageMetrics(channels=3)
    metric.update(0.5 * gt, gt, torch.ones(1, 20, 24, dtype=torch.bool))
    out = metric.results()
    assert out["si_rmse"] == pytest.approx(0.0, abs=1e-12)
    assert out["lmse"] == pytest.approx(0.0, abs=1e-12)
    assert out["ssim"] == pytest.approx(1.0)


def test_lmse_by_hand_and_against_a_loop():
    # One 16x16 window: g = 1, p = 1 on half the pixels and 0 elsewhere: alpha = 1, error 128 / 256.
    gt = torch.ones(1, 16, 16, dtype=torch.float64)
    pred = torch.zeros(1, 16, 16, dtype=torch.float64)
    pred[:, :8] = 1.0
    assert lmse(pred, gt, torch.ones(16, 16, dtype=torch.bool)) == pytest.approx(0.5)
    rng = np.random.default_rng(2)
    g, p = rng.uniform(0, 1, (3, 20, 28)), rng.uniform(0, 1, (3, 20, 28))
    mask = rng.uniform(0, 1, (20, 28)) > 0.3
    got = lmse(torch.from_numpy(p), torch.from_numpy(g), torch.from_numpy(mask))
    assert got == pytest.approx(_lmse_numpy(p, g, mask.astype(float)), rel=1e-10)


def test_ssim_equals_skimage_when_all_valid_and_honours_the_mask():
    rng = np.random.default_rng(3)
    g = rng.uniform(0, 1, (3, 24, 24))
    p = np.clip(g + rng.normal(0, 0.1, g.shape), 0, 1)
    full = np.ones((24, 24), dtype=bool)
    expected = structural_similarity(
        g.transpose(1, 2, 0), p.transpose(1, 2, 0), data_range=1.0, channel_axis=2
    )
    assert masked_ssim(torch.from_numpy(p), torch.from_numpy(g), torch.from_numpy(full)) == pytest.approx(
        expected
    )
    # Left half valid: garbage in every invalid pixel, even next to valid ones, changes nothing.
    mask = np.zeros((24, 24), dtype=bool)
    mask[:, :10] = True
    before = masked_ssim(torch.from_numpy(p), torch.from_numpy(g), torch.from_numpy(mask))
    p2 = p.copy()
    p2[:, :, 10:] = rng.uniform(0, 1, p2[:, :, 10:].shape)
    after = masked_ssim(torch.from_numpy(p2), torch.from_numpy(g), torch.from_numpy(mask))
    assert after == pytest.approx(before)
    assert before != pytest.approx(
        masked_ssim(torch.from_numpy(p2), torch.from_numpy(g), torch.from_numpy(full))
    )


def test_invalid_pixels_change_no_metric():
    rng = np.random.default_rng(4)
    gt = torch.from_numpy(rng.uniform(0.1, 0.9, (1, 1, 16, 24)))
    pred = torch.from_numpy(rng.uniform(0.1, 0.9, (1, 1, 16, 24)))
    valid = torch.ones(1, 16, 24, dtype=torch.bool)
    valid[:, :, 20:] = False
    a, b = IntrinsicImageMetrics(channels=1), IntrinsicImageMetrics(channels=1)
    a.update(pred, gt, valid)
    gt2 = gt.clone()
    gt2[..., 20:] = float("nan")
    pred2 = pred.clone()
    pred2[..., 20:] = 5.0
    b.update(pred2, gt2, valid)
    for name in ("si_rmse", "lmse", "ssim"):
        assert a.results()[name] == pytest.approx(b.results()[name])
