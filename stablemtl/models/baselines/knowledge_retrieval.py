"""The knowledge-retrieval transformer of the task-prototype baseline (prototype paper §3, Eq. 7-9).

Every position of a task feature map f_t asks the task-affinity features (the affinity-weighted prototype
slots, ``TaskPrototype.affinity_features``) for knowledge: a pre-LayerNorm cross-attention with f_t as the
queries and the affinity features as keys and values, then a feed-forward layer, each with a residual, so
f_tr = f_t when the attention and feed-forward outputs are zero. One transformer is shared by all tasks
(the queries are already task-specific). ``torch.nn.MultiheadAttention`` with ``kdim = vdim = slot_dim``
projects the slot-space keys/values to the feature width.
"""

from __future__ import annotations

import torch
from torch import nn


class KnowledgeRetrievalBlock(nn.Module):
    """``f [B, N, C]`` attends to ``memory [B, T, D]``: ``f + MHA(LN f, LN m)``, then ``+ FFN(LN f)``."""

    def __init__(self, channels: int, slot_dim: int, heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.norm_query = nn.LayerNorm(channels)
        self.norm_memory = nn.LayerNorm(slot_dim)
        self.attention = nn.MultiheadAttention(
            channels, heads, kdim=slot_dim, vdim=slot_dim, batch_first=True
        )
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(
            nn.Linear(channels, mlp_ratio * channels), nn.GELU(), nn.Linear(mlp_ratio * channels, channels)
        )

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        memory = self.norm_memory(memory)
        retrieved, _ = self.attention(self.norm_query(queries), memory, memory, need_weights=False)
        queries = queries + retrieved
        return queries + self.ffn(self.norm_ffn(queries))


class KnowledgeRetrievalTransformer(nn.Module):
    """Task features ``f_t [B, C, h, w]``, affinity features ``[B, T, D]`` -> refined ``f_tr [B, C, h, w]``.

    Args:
        channels: C, width of the task features (divisible by ``heads``).
        slot_dim: D, width of the prototype slots.
        blocks: number of cross-attention blocks (>= 1).
        heads: attention heads.
    """

    def __init__(self, channels: int, slot_dim: int, blocks: int = 2, heads: int = 8):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"blocks must be >= 1, got {blocks}")
        self.blocks = nn.ModuleList(KnowledgeRetrievalBlock(channels, slot_dim, heads) for _ in range(blocks))

    def forward(self, task_features: torch.Tensor, affinity_features: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = task_features.shape
        tokens = task_features.flatten(2).transpose(1, 2)  # [B,hw,C]
        for block in self.blocks:
            tokens = block(tokens, affinity_features)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)
