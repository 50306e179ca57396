"""Discrete quantisation of regression targets (HiTT paper §A.3, Eq. 7): bins and cluster centres.

HiTT turns every regression task into pixel-wise classification over ``K`` centres ``c_k`` (scalar bins for
depth, unit vectors for normals); the prediction is the soft-weighted sum ``y = sum_k softmax(G')_k c_k``.
Here the centres are a ``(K, C)`` tensor for a ``C``-channel target, so one code path serves depth and
shading (C = 1), normals and albedo (C = 3) and the flows (C = 2 / 3, per-axis normalised in [-1, 1]).

Initial centres are deterministic (log or linear bins, a Fibonacci sphere, a regular grid); ``fit_centres``
refines them with k-means on training targets (spherical for unit vectors, as the paper's normal centres).
"""

from __future__ import annotations

import math

import torch
from kornia.contrib import KMeans

CENTRE_INITS = ("log", "linear", "sphere", "grid")


def log_bins(num_bins: int, low: float, high: float, floor: float = 1e-2) -> torch.Tensor:
    """``(K, 1)`` geometric bin centres between ``low`` and ``high`` (finest near ``low``).

    The range is shifted so that its start sits at ``floor * (high - low)`` before the geometric spacing
    (log bins need a positive start; an affine-invariant depth in [0, 1] starts at 0).
    """
    _check_bins(num_bins, low, high)
    shift = floor * (high - low) - low
    start, stop = math.log10(low + shift), math.log10(high + shift)
    edges = torch.logspace(start, stop, num_bins + 1, dtype=torch.float64)
    centres = (edges[:-1] * edges[1:]).sqrt() - shift  # geometric mid-points of the log-uniform edges
    return centres.float()[:, None]


def linear_bins(num_bins: int, low: float, high: float) -> torch.Tensor:
    """``(K, 1)`` centres of ``K`` equal bins covering ``[low, high]``."""
    _check_bins(num_bins, low, high)
    step = (high - low) / num_bins
    return (low + step * (torch.arange(num_bins, dtype=torch.float64) + 0.5)).float()[:, None]


def fibonacci_sphere(num_points: int) -> torch.Tensor:
    """``(K, 3)`` unit vectors spread evenly over the sphere (golden-angle spiral)."""
    if num_points < 2:
        raise ValueError(f"num_bins must be >= 2 for sphere centres, got {num_points}")
    i = torch.arange(num_points, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / num_points
    radius = (1.0 - z * z).sqrt()
    angle = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack([radius * angle.cos(), radius * angle.sin(), z], dim=1).float()


def grid_centres(num_bins: int, channels: int, low: float, high: float) -> torch.Tensor:
    """``(K, C)`` points of a regular grid with ``K ** (1/C)`` cell centres per axis (K must be a power)."""
    per_axis = round(num_bins ** (1.0 / channels))
    if per_axis**channels != num_bins or per_axis < 2:
        raise ValueError(f"num_bins={num_bins} must be n**{channels} with n >= 2 for a {channels}-D grid")
    axis = linear_bins(per_axis, low, high)[:, 0]
    mesh = torch.meshgrid(*([axis] * channels), indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def initial_centres(init: str, num_bins: int, channels: int, low: float, high: float) -> torch.Tensor:
    """``(K, C)`` starting centres of one task (see ``CENTRE_INITS``)."""
    if init == "log":
        centres = log_bins(num_bins, low, high)
    elif init == "linear":
        centres = linear_bins(num_bins, low, high)
    elif init == "sphere":
        centres = fibonacci_sphere(num_bins)
    elif init == "grid":
        centres = grid_centres(num_bins, channels, low, high)
    else:
        raise ValueError(f"centre init {init!r} is unknown; known: {', '.join(CENTRE_INITS)}")
    if centres.shape[1] != channels:
        raise ValueError(f"centre init {init!r} gives {centres.shape[1]}-D centres, the task has {channels}")
    return centres


def assign(values: torch.Tensor, centres: torch.Tensor, unit: bool = False) -> torch.Tensor:
    """Nearest centre of each pixel: ``values (B, C, H, W)``, ``centres (K, C)`` -> ``(B, H, W)`` int64.

    Unit vectors go to the centre of largest cosine (the paper's rule for normals), others by L2 distance.
    """
    flat = values.permute(0, 2, 3, 1).reshape(-1, values.shape[1]).float()  # [BHW,C]
    c = centres.float().to(flat.device)
    if unit:
        ids = (flat @ c.T).argmax(dim=1)
    else:
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the ||x||^2 term does not change the argmin.
        ids = (c.square().sum(dim=1)[None] - 2.0 * flat @ c.T).argmin(dim=1)
    return ids.reshape(values.shape[0], *values.shape[2:])


def soft_expectation(logits: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """HiTT Eq. 7: ``sum_k softmax(logits)_k c_k``; ``logits (B, K, H, W)`` -> ``(B, C, H, W)``."""
    probs = logits.float().softmax(dim=1)
    return torch.einsum("bkhw,kc->bchw", probs, centres.float().to(probs.device))


@torch.no_grad()
def fit_centres(
    samples: torch.Tensor,
    initial: torch.Tensor,
    unit: bool = False,
    max_iterations: int = 50,
    seed: int = 0,
) -> torch.Tensor:
    """k-means centres of training targets: ``samples (N, C)`` valid target values, ``initial (K, C)``.

    Unit vectors are clustered by Euclidean k-means of the unit vectors with the final centres re-normalised
    (close to spherical k-means), which matches the max-cosine assignment of ``assign``. kornia's KMeans
    moves an empty cluster to a random point from the global RNG, so that RNG is forked and seeded here.
    """
    if samples.ndim != 2 or samples.shape[1] != initial.shape[1]:
        raise ValueError(f"samples must be (N, {initial.shape[1]}), got {tuple(samples.shape)}")
    if samples.shape[0] < initial.shape[0]:
        raise ValueError(f"need at least {initial.shape[0]} samples for {initial.shape[0]} centres")
    points = samples.float()
    if unit:
        points = torch.nn.functional.normalize(points, dim=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kmeans = KMeans(initial.shape[0], initial.float().clone(), 1e-8, max_iterations=max_iterations)
        kmeans.fit(points)
    centres = kmeans.cluster_centers.float()
    if unit:
        centres = torch.nn.functional.normalize(centres, dim=1)
    # Sorted scalar bins keep the id order meaningful (and equal to the initial order for 1-D targets).
    if centres.shape[1] == 1:
        centres = centres.sort(dim=0).values
    return centres


def _check_bins(num_bins: int, low: float, high: float) -> None:
    if num_bins < 2:
        raise ValueError(f"num_bins must be >= 2, got {num_bins}")
    if not high > low:
        raise ValueError(f"range must have high > low, got [{low}, {high}]")
