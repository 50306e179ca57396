"""HiTT losses (paper Eq. 2-4, 8-10): supervised mixture loss, pseudo-label loss and feature loss.

Every task is pixel-wise classification over its classes or quantisation centres. A regression task adds
the regression of the soft-weighted sum (Eq. 7) to the target: ``L_i = CE(G', Y_oh) + lambda * L_reg``
with ``lambda = 0.1`` (Eq. 10; the released code puts the 0.1 on the CE instead:
``weight_on="classification"``).
``L_reg`` is L1, or ``1 - cos`` for unit vectors (the paper's angle loss in the form MTPSL uses).

Per-image partial labels enter as ``labelled`` ``[B]`` bool (the paper's ``alpha_i``): the pseudo-label loss
acts only on images whose task label is missing, the feature loss weighs unlabelled images' pixels by the
global-token confidence ``M^f``. Masked pixels count as zeros in the per-image mean (they are not
renormalised away), so a low-confidence image pulls less. The paper's ``1/T`` over tasks is left to the
caller: under task-isolated batches it is the uniform draw of the task.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stablemtl.models.baselines.hitt_heads import HeadSpec
from stablemtl.models.baselines.quantization import soft_expectation

WEIGHT_PLACEMENTS = ("regression", "classification")


def mixture_loss_map(
    logits: torch.Tensor,
    ids: torch.Tensor,
    values: torch.Tensor | None,
    valid: torch.Tensor,
    spec: HeadSpec,
    centres: torch.Tensor | None = None,
    weight_on: str = "regression",
) -> torch.Tensor:
    """Per-pixel ``L_i`` ``[B, H, W]`` (zero where ``valid`` is False).

    Args:
        logits: ``G'_i [B, K, H, W]``.
        ids: target class / centre ids ``[B, H, W]`` int64.
        values: regression target ``[B, C, H, W]`` in decode space (None for classification).
        valid: ``[B, H, W]`` bool.
        spec: the task's head; ``centres`` ``(K, C)`` for regression tasks.
        weight_on: where ``spec.regression_weight`` goes: "regression" (paper) or "classification" (code).
    """
    if weight_on not in WEIGHT_PLACEMENTS:
        raise ValueError(f"weight_on must be one of {WEIGHT_PLACEMENTS}, got {weight_on!r}")
    if logits.shape[0] != ids.shape[0] or logits.shape[-2:] != ids.shape[-2:] or ids.shape != valid.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)}, ids {tuple(ids.shape)}, valid {tuple(valid.shape)} differ"
        )
    in_range = valid & (ids >= 0) & (ids < logits.shape[1])
    safe_ids = torch.where(in_range, ids, 0)
    cross_entropy = F.cross_entropy(logits.float(), safe_ids, reduction="none")  # [B,H,W]
    if not spec.is_regression:
        return torch.where(in_range, cross_entropy, 0.0)
    if values is None or centres is None:
        raise ValueError("a regression task needs target values and centres")
    prediction = soft_expectation(logits, centres)  # [B,C,H,W]
    if spec.regression_loss == "cosine":
        regression = 1.0 - F.cosine_similarity(prediction, values.float(), dim=1, eps=1e-6)
    else:
        regression = (prediction - values.float()).abs().mean(dim=1)
    weight = spec.regression_weight
    total = (
        cross_entropy + weight * regression
        if weight_on == "regression"
        else weight * cross_entropy + regression
    )
    return torch.where(in_range, total, 0.0)


def centre_values(ids: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Regression target of pseudo labels: the centre of each id, ``[B, H, W]`` -> ``[B, C, H, W]``."""
    return centres.to(ids.device)[ids.clamp(0, centres.shape[0] - 1)].permute(0, 3, 1, 2)


def supervised_loss(loss_map: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """HiTT Eq. 2 for one task: mean of ``L_i`` over the valid pixels of the batch (0 if there are none)."""
    count = valid.sum()
    return loss_map.sum() / count.clamp_min(1)


def pseudo_label_loss(loss_map: torch.Tensor, mask: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """HiTT Eq. 4 for one task: ``mean_b (1 - alpha_b) mean_p(M^p * L_i(Y, Y~))``.

    ``loss_map`` ``[B, H, W]`` computed against the pseudo labels, ``mask`` ``M^p`` ``[B, H, W]`` bool
    (confidence above tau), ``labelled`` ``[B]`` bool. Labelled images contribute exactly zero.
    """
    per_image = (loss_map * mask.to(loss_map.dtype)).flatten(1).mean(dim=1)  # [B]
    return (per_image * (~labelled).to(per_image.dtype)).mean()


def feature_loss(
    features: torch.Tensor, targets: torch.Tensor, confidence: torch.Tensor, labelled: torch.Tensor
) -> torch.Tensor:
    """HiTT Eq. 3 for one task: ``mean_b [alpha MSE(F, F~) + (1 - alpha) mean_p(M^f ||F - F~||^2 / C)]``.

    ``features``, ``targets`` ``[B, C, h, w]`` (``F''`` of the current and of the frozen phase-1 model),
    ``confidence`` ``M^f`` ``[B, 1, h, w]`` of the frozen model, ``labelled`` ``[B]`` bool.
    """
    if features.shape != targets.shape:
        raise ValueError(f"features {tuple(features.shape)} and targets {tuple(targets.shape)} differ")
    squared = (features.float() - targets.float()).square().mean(dim=1, keepdim=True)  # ||.||^2 / C
    weight = torch.where(labelled[:, None, None, None], torch.ones_like(confidence), confidence.float())
    return (weight * squared).flatten(1).mean(dim=1).mean()
