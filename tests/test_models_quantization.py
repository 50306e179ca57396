"""Quantisation of regression targets: bins, centres, nearest assignment, soft expectation, k-means."""

import pytest
import torch
import torch.nn.functional as F

from stablemtl.models.baselines.quantization import (
    assign,
    fibonacci_sphere,
    fit_centres,
    grid_centres,
    initial_centres,
    linear_bins,
    log_bins,
    soft_expectation,
)


def test_log_bins_are_increasing_inside_the_range_and_finer_near_low():
    bins = log_bins(30, 0.0, 1.0)[:, 0]
    assert bins.shape == (30,) and (bins.diff() > 0).all()
    assert bins[0] > 0.0 and bins[-1] < 1.0
    assert bins.diff()[0] < bins.diff()[-1] / 10  # geometric spacing


def test_linear_bins_and_grid():
    torch.testing.assert_close(linear_bins(4, 0.0, 1.0)[:, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    grid = grid_centres(64, 3, -1.0, 1.0)
    assert grid.shape == (64, 3) and len(torch.unique(grid, dim=0)) == 64 and grid.abs().max() < 1
    with pytest.raises(ValueError, match="num_bins=60"):
        grid_centres(60, 3, 0.0, 1.0)
    with pytest.raises(ValueError, match="high > low"):
        linear_bins(4, 1.0, 1.0)
    with pytest.raises(ValueError, match="unknown"):
        initial_centres("kmeans++", 4, 1, 0.0, 1.0)


def test_fibonacci_sphere_is_unit_and_spread():
    points = fibonacci_sphere(40)
    torch.testing.assert_close(points.norm(dim=1), torch.ones(40))
    cosine = points @ points.T - 2 * torch.eye(40)
    assert cosine.max() < 0.9  # no two centres nearly coincide
    torch.testing.assert_close(points.mean(dim=0), torch.zeros(3), atol=0.05, rtol=0)


def test_assign_picks_the_nearest_centre_and_max_cosine_for_unit_vectors():
    centres = torch.tensor([[0.0], [0.5], [1.0]])
    values = torch.tensor([0.1, 0.3, 0.74, 0.76, 2.0]).view(1, 1, 1, 5)
    assert assign(values, centres).tolist() == [[[0, 1, 1, 2, 2]]]
    unit_centres = torch.eye(3)
    vector = F.normalize(torch.tensor([0.2, 0.9, -0.3]), dim=0).view(1, 3, 1, 1)
    assert assign(vector, unit_centres, unit=True).item() == 1


def test_soft_expectation_of_a_peaked_distribution_is_its_centre():
    centres = grid_centres(16, 2, -1.0, 1.0)
    logits = torch.full((1, 16, 1, 2), -1e4)
    logits[0, 5, 0, 0] = 0.0
    logits[0, :, 0, 1] = 0.0  # uniform -> mean of the centres
    value = soft_expectation(logits, centres)
    torch.testing.assert_close(value[0, :, 0, 0], centres[5])
    torch.testing.assert_close(value[0, :, 0, 1], centres.mean(dim=0))


def test_fit_centres_finds_clusters_and_is_reproducible():
    g = torch.Generator().manual_seed(0)
    blobs = torch.cat(
        [0.2 + 0.01 * torch.randn(200, 1, generator=g), 0.8 + 0.01 * torch.randn(200, 1, generator=g)]
    )
    fitted = fit_centres(blobs, linear_bins(2, 0.0, 1.0))
    torch.testing.assert_close(fitted[:, 0], torch.tensor([0.2, 0.8]), atol=0.005, rtol=0)
    torch.testing.assert_close(fit_centres(blobs, linear_bins(2, 0.0, 1.0)), fitted)
    normals = F.normalize(torch.tensor([0.0, 0.0, 1.0]) + 0.05 * torch.randn(300, 3, generator=g), dim=1)
    unit = fit_centres(normals, fibonacci_sphere(4), unit=True)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(4))
    with pytest.raises(ValueError, match="samples"):
        fit_centres(torch.rand(10, 2), linear_bins(2, 0.0, 1.0))
