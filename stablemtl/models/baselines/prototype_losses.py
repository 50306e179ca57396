"""Losses of the task-prototype baseline (Oh, Kim and Kim, AAAI 2026; see ``docs/baselines-prototype.md``).

- ``supervised_task_loss``: the prediction-level loss of one *labelled* task (cross-entropy for classes,
  L1 for regression maps), averaged over its valid pixels. Unlabelled tasks never reach it.
- ``task_knowledge_embedding_loss`` (TKE, prototype paper Eq. 4): the projected features of task t must
  have their highest affinity with prototype slot v_t. Needs only the task identity.
- ``task_consistency_loss`` (TC, prototype paper Eq. 5): each image's task-t feature must be closer to the
  batch aggregate of task t than to the aggregates of the other tasks.
- ``PrototypeLossWeights``: lambda_1, lambda_2, alpha and the TKE-only ablation switch, and how the terms
  add up. The paper does not give the weights; our defaults are argued in the docs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

OUTPUT_KINDS = ("classification", "unit_interval", "signed_unit_interval", "unit_vector")


def supervised_task_loss(
    output: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, kind: str
) -> torch.Tensor:
    """Mean loss over the valid pixels of one task; 0 (still in the graph) when no pixel is valid.

    Args:
        output: ``[B, C, H, W]``: class logits for ``"classification"``, otherwise the activated map in
            the task's prediction space (see ``OUTPUT_KINDS``).
        target: ``[B, 1, H, W]`` int64 class ids for classification, else ``[B, C, H, W]`` float in the
            same space as ``output``.
        valid: ``[B, H, W]`` bool; pixels outside it (and images without a label) add nothing.
        kind: one of ``OUTPUT_KINDS``. Classification uses cross-entropy, every other kind the per-pixel
            L1 averaged over channels (the prototype paper's L1 for depth and normals).
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"kind must be one of {OUTPUT_KINDS}, got {kind!r}")
    if valid.shape != (output.shape[0], *output.shape[-2:]):
        raise ValueError(
            f"valid must be [B, H, W] = {(output.shape[0], *output.shape[-2:])}, got {tuple(valid.shape)}"
        )
    valid = valid.bool()
    if kind == "classification":
        if target.shape != (output.shape[0], 1, *output.shape[-2:]):
            raise ValueError(f"target must be [B, 1, H, W] class ids, got {tuple(target.shape)}")
        ids = torch.where(valid, target[:, 0].long(), -100)  # -100: cross_entropy's ignore index
        per_pixel = F.cross_entropy(output.float(), ids, ignore_index=-100, reduction="none")  # [B,H,W]
    else:
        if target.shape != output.shape:
            raise ValueError(f"target must match output {tuple(output.shape)}, got {tuple(target.shape)}")
        # nan_to_num: invalid pixels may hold NaN labels; where() alone would still back-propagate NaN.
        target = torch.nan_to_num(target.float())
        per_pixel = (output.float() - target).abs().mean(dim=1)  # [B,H,W]
    per_pixel = torch.where(valid, per_pixel, 0.0)
    return per_pixel.sum() / valid.sum().clamp_min(1)


def task_knowledge_embedding_loss(affinity_logits: torch.Tensor, slot_index: torch.Tensor) -> torch.Tensor:
    """TKE: cross-entropy of each task's affinity over the slots, with its own slot as the target.

    Args:
        affinity_logits: ``[B, T, S]``: cosine similarity of task t's projected feature to slot s, divided
            by the temperature (``TaskPrototype.affinity_logits``).
        slot_index: ``[T]`` int64, the slot that belongs to each of the T tasks.
    Returns the mean over images and tasks; minimal when every task is most similar to its own slot.
    """
    batch, tasks, slots = affinity_logits.shape
    if slot_index.shape != (tasks,):
        raise ValueError(f"slot_index must be [T] = [{tasks}], got {tuple(slot_index.shape)}")
    target = slot_index.to(affinity_logits.device).expand(batch, tasks).reshape(-1)
    return F.cross_entropy(affinity_logits.float().reshape(-1, slots), target)


def task_consistency_loss(projected: torch.Tensor, temperature: float) -> torch.Tensor:
    """TC: InfoNCE of each image's task feature against the batch aggregates of all tasks.

    Args:
        projected: ``[B, T, D]`` projected task features (any scale: they are L2-normalised here).
        temperature: divides the cosine similarities (> 0).
    The aggregate of task t is the normalised mean of its normalised features over the batch (our choice
    of the paper's unspecified aggregation: a direction, like the cosine it is compared with). Returns
    ``-(1/BT) sum_b,t log softmax_k(cos(f_bt, agg_k) / temperature)[t]``; 0 when T = 1.
    """
    if projected.ndim != 3:
        raise ValueError(f"projected must be [B, T, D], got {tuple(projected.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    features = F.normalize(projected.float(), dim=-1)  # [B,T,D]
    aggregates = F.normalize(features.mean(dim=0), dim=-1)  # [T,D]
    logits = torch.einsum("btd,kd->btk", features, aggregates) / temperature  # [B,T,T]
    batch, tasks = logits.shape[:2]
    target = torch.arange(tasks, device=logits.device).expand(batch, tasks).reshape(-1)
    return F.cross_entropy(logits.reshape(-1, tasks), target)


@dataclass
class PrototypeLossWeights:
    """How the loss terms add up: ``L = L_MTL + lambda_1 L_rec + L_vq + lambda_2 (L_tke + alpha L_tc)``.

    Args:
        tae: lambda_1, weight of the image reconstruction of the task-agnostic enhancement (TAE).
        akg: lambda_2, weight of the association-knowledge terms TKE + alpha TC.
        tc: alpha, weight of TC inside the association-knowledge term.
        use_task_consistency: False gives the paper's "TKE only" ablation (TC is still reported, not added).
        vq: weight of the codebook + commitment terms of the vector quantiser (standard VQ-VAE: 1).
    """

    tae: float = 1.0
    akg: float = 0.1
    tc: float = 1.0
    use_task_consistency: bool = True
    vq: float = 1.0

    def __post_init__(self) -> None:
        for name in ("tae", "akg", "tc", "vq"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")

    def combine(self, terms: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The total loss from the terms ``supervised``, ``reconstruction``, ``vq``, ``tke`` and ``tc``."""
        missing = {"supervised", "reconstruction", "vq", "tke"} - set(terms)
        if self.use_task_consistency:
            missing |= {"tc"} - set(terms)
        if missing:
            raise ValueError(f"terms lacks {sorted(missing)}")
        akg = terms["tke"] + (self.tc * terms["tc"] if self.use_task_consistency else 0.0)
        return (
            terms["supervised"] + self.tae * terms["reconstruction"] + self.vq * terms["vq"] + self.akg * akg
        )
