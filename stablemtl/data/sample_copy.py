"""Copying a Sample and sizing it: what a memo of decoded rows needs (``SourceDataset.row_memo``)."""

from __future__ import annotations

from typing import Any

import torch


def _copy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def copy_sample(sample: dict) -> dict:
    """A Sample whose dicts and tensors are new: changing one, in place or not, leaves the other alone."""
    return _copy(sample)


def sample_bytes(sample: dict) -> int:
    """The bytes of a Sample's tensors (images, labels, masks, intrinsics)."""

    def size(value: Any) -> int:
        if isinstance(value, torch.Tensor):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(size(v) for v in value.values())
        if isinstance(value, list):
            return sum(size(v) for v in value)
        return 0

    return size(sample)
