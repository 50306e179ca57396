"""Paired bootstrap intervals over test images for every primary metric and every Δm.

Every metric's state is a sum over images (docs/evaluation.md), so the contribution of each image is
the difference of the states before and after its update. A bootstrap resample draws N of the N test
images with replacement; the resampled data set's metric is the metric of the count-weighted sum of
those contributions. This is exact for every pooling: per-image means (depth, normals, intrinsics),
one confusion matrix over the data set (semantic mIoU is recomputed from the resampled images'
confusion matrices), and pixels pooled over the data set (flows).

The resamples are a function of ``(number of samples, resamples, seed)`` only, so every model scored
on the same data, in any run, sees the same resamples: the intervals are paired, and a Δm can be
resampled jointly with its reference. Reports record a fingerprint of the data to check this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

LEVEL = 0.95


def resamplable(metric) -> bool:
    """Whether ``metric`` keeps torchmetrics sum states that the bootstrap can resample (the built-in
    accumulators do; a task scored by ``TaskMetricsAverager`` gets no interval)."""
    return isinstance(getattr(metric, "_defaults", None), dict)


def state_names(metric) -> list[str]:
    """The names of a torchmetrics ``Metric``'s states (all sums here)."""
    return list(metric._defaults)


def snapshot(metric) -> dict[str, torch.Tensor]:
    return {name: getattr(metric, name).clone() for name in state_names(metric)}


def contribution(metric, before: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What one update added to each state of ``metric`` since ``before``."""
    return {name: getattr(metric, name) - value for name, value in before.items()}


def resample_counts(num_samples: int, resamples: int, seed: int) -> torch.Tensor:
    """``(resamples, num_samples)`` int64: how often each sample is drawn in each resample."""
    if num_samples < 1 or resamples < 1:
        raise ValueError(f"need num_samples >= 1 and resamples >= 1, got {num_samples}, {resamples}")
    generator = torch.Generator().manual_seed(int(seed))
    draws = torch.randint(num_samples, (resamples, num_samples), generator=generator)
    counts = torch.zeros(resamples, num_samples, dtype=torch.int64)
    counts.scatter_add_(1, draws, torch.ones_like(draws))
    return counts


def bootstrap_metric(
    fresh_metric,
    records: Sequence[tuple[int, Mapping[str, torch.Tensor]]],
    counts: torch.Tensor,
    name: str,
    chunk: int = 64,
) -> list[float]:
    """Value of metric ``name`` on each resample: ``records`` are ``(sample index, contribution)``,
    ``counts`` comes from :func:`resample_counts`; ``fresh_metric`` is an empty metric of the family."""
    if not records:
        return [math.nan] * len(counts)
    indices = torch.tensor([index for index, _ in records])
    weights = counts[:, indices].double()  # (B, R): an image drawn twice counts twice
    states = state_names(fresh_metric)
    stacked = {s: torch.stack([c[s] for _, c in records]).double().reshape(len(records), -1) for s in states}
    compute = type(fresh_metric).compute  # the class's compute, without torchmetrics' update checks
    values = []
    for start in range(0, len(counts), chunk):
        sums = {s: weights[start : start + chunk] @ stacked[s] for s in states}
        for b in range(len(sums[states[0]])):
            for s in states:
                default = getattr(fresh_metric, s)
                value = sums[s][b].view(default.shape)
                value = value.round() if not default.is_floating_point() else value
                setattr(fresh_metric, s, value.to(default.dtype))
            values.append(float(compute(fresh_metric)[name]))
    return values


def interval(values: Sequence[float], level: float = LEVEL) -> list[float] | None:
    """The central percentile interval ``[lo, hi]`` of the finite bootstrap values (None if none)."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return None
    tail = (1.0 - level) / 2 * 100
    return [float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))]


def same_resamples(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two reports' bootstrap settings (``report["bootstrap"]``) draw the same resamples of the
    same data, so that their values can be paired."""
    keys = ("fingerprint", "num_samples", "resamples", "seed")
    return bool(a) and bool(b) and all(a.get(k) == b.get(k) for k in keys)


def verdict(low: float, high: float) -> str:
    """How a difference with interval ``[low, high]`` (positive = better) reads."""
    if low > 0:
        return "better, outside noise"
    if high < 0:
        return "worse, outside noise"
    return "within noise (the interval contains 0)"
