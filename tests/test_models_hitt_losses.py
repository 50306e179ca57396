"""HiTT losses: mixture loss (Eq. 10), pseudo-label loss (Eq. 4), feature loss (Eq. 3), real numbers."""

import pytest
import torch
import torch.nn.functional as F

from stablemtl.models.baselines.hitt_heads import DEFAULT_HEADS
from stablemtl.models.baselines.hitt_losses import (
    centre_values,
    feature_loss,
    mixture_loss_map,
    pseudo_label_loss,
    supervised_loss,
)
from stablemtl.models.baselines.quantization import assign, linear_bins, soft_expectation


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_classification_loss_is_cross_entropy_over_valid_pixels():
    logits, ids = (
        randn(2, 8, 4, 5),
        torch.randint(0, 8, (2, 4, 5), generator=torch.Generator().manual_seed(1)),
    )
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[0, 0] = False
    ids[1, 2, 2] = 255  # ignored class id
    loss_map = mixture_loss_map(logits, ids, None, valid, DEFAULT_HEADS["semantic"])
    keep = valid & (ids != 255)
    expected = F.cross_entropy(logits, torch.where(keep, ids, 255), ignore_index=255)
    torch.testing.assert_close(supervised_loss(loss_map, keep), expected)
    assert (loss_map[~keep] == 0).all()


@pytest.mark.parametrize("weight_on", ["regression", "classification"])
def test_regression_mixture_puts_lambda_where_asked(weight_on):
    spec = DEFAULT_HEADS["shading"]
    centres = linear_bins(30, 0.0, 1.0)
    logits, values = randn(2, 30, 3, 3), torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    ids = assign(values, centres)
    valid = torch.ones(2, 3, 3, dtype=torch.bool)
    loss_map = mixture_loss_map(logits, ids, values, valid, spec, centres, weight_on=weight_on)
    ce = F.cross_entropy(logits, ids, reduction="none")
    l1 = (soft_expectation(logits, centres) - values).abs()[:, 0]
    expected = ce + 0.1 * l1 if weight_on == "regression" else 0.1 * ce + l1
    torch.testing.assert_close(loss_map, expected)


def test_normal_regression_is_one_minus_cosine():
    spec = DEFAULT_HEADS["normal"]
    centres = F.normalize(randn(20, 3), dim=1)
    values = F.normalize(randn(1, 3, 2, 2, seed=3), dim=1)
    logits = randn(1, 20, 2, 2, seed=4)
    ids = assign(values, centres, unit=True)
    loss_map = mixture_loss_map(logits, ids, values, torch.ones(1, 2, 2, dtype=torch.bool), spec, centres)
    cosine = F.cosine_similarity(soft_expectation(logits, centres), values, dim=1)
    torch.testing.assert_close(loss_map, F.cross_entropy(logits, ids, reduction="none") + 0.1 * (1 - cosine))


def test_pseudo_label_loss_is_zero_where_ground_truth_exists():
    centres = linear_bins(30, 0.0, 1.0)
    logits = randn(3, 30, 4, 4).requires_grad_()
    pseudo_ids = randn(3, 30, 4, 4, seed=5).argmax(dim=1)
    mask = torch.ones(3, 4, 4, dtype=torch.bool)
    valid = torch.ones(3, 4, 4, dtype=torch.bool)
    spec = DEFAULT_HEADS["depth"]
    loss_map = mixture_loss_map(logits, pseudo_ids, centre_values(pseudo_ids, centres), valid, spec, centres)
    all_labelled = pseudo_label_loss(loss_map, mask, torch.ones(3, dtype=torch.bool))
    assert all_labelled.item() == 0.0
    all_labelled.backward(retain_graph=True)
    assert logits.grad.abs().sum() == 0  # no gradient from pseudo labels of labelled images
    one_unlabelled = pseudo_label_loss(loss_map, mask, torch.tensor([True, False, True]))
    torch.testing.assert_close(one_unlabelled, loss_map[1].mean() / 3)


def test_pseudo_label_loss_ignores_pixels_below_tau():
    loss_map = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(6))
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, :2] = True
    unlabelled = torch.zeros(2, dtype=torch.bool)
    base = pseudo_label_loss(loss_map, mask, unlabelled)
    changed = loss_map.clone()
    changed[:, 2:] += 100.0  # only pixels outside the confidence mask change
    torch.testing.assert_close(pseudo_label_loss(changed, mask, unlabelled), base)
    torch.testing.assert_close(base, (loss_map * mask).flatten(1).mean(1).mean())


def test_feature_loss_is_mse_for_labelled_and_confidence_weighted_otherwise():
    features, targets = randn(2, 8, 3, 3).requires_grad_(), randn(2, 8, 3, 3, seed=7)
    confidence = torch.rand(2, 1, 3, 3, generator=torch.Generator().manual_seed(8))
    labelled = torch.ones(2, dtype=torch.bool)
    torch.testing.assert_close(
        feature_loss(features, targets, confidence, labelled), F.mse_loss(features, targets)
    )
    unlabelled = torch.zeros(2, dtype=torch.bool)
    per_pixel = (features - targets).square().mean(dim=1, keepdim=True)
    expected = (confidence * per_pixel).mean()
    torch.testing.assert_close(feature_loss(features, targets, confidence, unlabelled), expected)
    zero = feature_loss(features, targets, torch.zeros_like(confidence), unlabelled)
    assert zero.item() == 0.0


def test_losses_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="differ"):
        mixture_loss_map(
            randn(1, 8, 4, 4),
            torch.zeros(1, 3, 3, dtype=torch.long),
            None,
            torch.ones(1, 3, 3, dtype=torch.bool),
            DEFAULT_HEADS["semantic"],
        )
    with pytest.raises(ValueError, match="weight_on"):
        mixture_loss_map(
            randn(1, 8, 2, 2),
            torch.zeros(1, 2, 2, dtype=torch.long),
            None,
            torch.ones(1, 2, 2, dtype=torch.bool),
            DEFAULT_HEADS["semantic"],
            weight_on="both",
        )
    with pytest.raises(ValueError, match="features"):
        feature_loss(
            randn(1, 4, 2, 2), randn(1, 4, 3, 3), torch.ones(1, 1, 2, 2), torch.ones(1, dtype=torch.bool)
        )
