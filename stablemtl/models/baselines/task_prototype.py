"""The learnable task prototype of the task-prototype baseline (prototype paper §3, "task prototype").

V = [v_1 .. v_T] holds one slot per task (``slot_dim`` = 1024 by default, the paper's best value). A task
feature map f_t is pooled over space and projected to the slot space, f^_t; its cosine similarity to each
slot, over a temperature, gives the task-affinity logits, and their softmax the task-affinity scores
A(f^_t, V). The task-affinity feature keeps the T slots as a token set weighted by those scores,
``f_ta = diag(A) V`` (``[B, T, slot_dim]``), so that the retrieval transformer has T keys to attend over
(a single pooled vector ``A V`` would make its cross-attention degenerate). See docs/baselines-prototype.md.

The projection is shared by all tasks: a per-task projection could map any feature onto its own slot and
make the task-knowledge-embedding loss vacuous, while a shared one must tell the tasks apart by content.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TaskPrototype(nn.Module):
    """Slots ``V [T, slot_dim]``, the shared projection of task features and the affinity computations.

    Args:
        num_slots: T, one slot per task.
        feature_channels: channels of the task feature maps f_t.
        slot_dim: dimension d of each slot and of the projected features.
        temperature: divides the cosine similarities before the softmax (> 0).
    """

    def __init__(self, num_slots: int, feature_channels: int, slot_dim: int = 1024, temperature: float = 0.1):
        super().__init__()
        for name, value in (
            ("num_slots", num_slots),
            ("feature_channels", feature_channels),
            ("slot_dim", slot_dim),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        # Orthogonal rows: the slots start as distinct as possible (orthonormal when T <= d).
        self.slots = nn.Parameter(nn.init.orthogonal_(torch.empty(num_slots, slot_dim)))
        self.projection = nn.Sequential(
            nn.Linear(feature_channels, slot_dim), nn.GELU(), nn.Linear(slot_dim, slot_dim)
        )

    @property
    def num_slots(self) -> int:
        return int(self.slots.shape[0])

    def project(self, task_features: torch.Tensor) -> torch.Tensor:
        """Task feature maps ``[B, C, h, w]`` (or ``[B, T, C, h, w]``) -> f^ ``[B, d]`` (``[B, T, d]``),
        by spatial average pooling and the shared MLP."""
        return self.projection(task_features.mean(dim=(-2, -1)))

    def affinity_logits(self, projected: torch.Tensor) -> torch.Tensor:
        """``[..., d]`` projected features -> ``[..., T]`` cosine similarities to the slots / temperature."""
        cosine = F.normalize(projected, dim=-1) @ F.normalize(self.slots, dim=-1).t()
        return cosine / self.temperature

    def affinity_features(self, affinity_logits: torch.Tensor) -> torch.Tensor:
        """``[..., T]`` logits -> task-affinity features ``[..., T, d]``: softmax scores times the slots."""
        scores = affinity_logits.softmax(dim=-1)
        return scores.unsqueeze(-1) * self.slots
