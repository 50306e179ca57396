"""Building blocks of HiTT (Zhang et al., MM'25): token query, inter-task attention, ASPP, fine tokens.

Shapes: ``T`` tasks, token width ``C`` (per scale ``C_j``), batch ``B``, feature grid ``(h, w)``,
output ``(H, W)``, ``K`` classes or quantisation centres of a task. Where the paper leaves an operator
open, the docstring says which reading is implemented.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class PerTaskLinear(nn.Module):
    """``T`` independent linear maps applied to ``T`` token rows: ``(.., T, in) -> (.., T, out)``."""

    def __init__(self, num_tasks: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_tasks, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(num_tasks, out_features))
        bound = 1.0 / math.sqrt(in_features)
        nn.init.uniform_(self.weight, -bound, bound)  # nn.Linear's default scale

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...ti,toi->...to", tokens, self.weight) + self.bias


class TokenQuery(nn.Module):
    """Each global task token queries the shared feature (HiTT paper §3.2; operator unspecified).

    ``F_i = Conv1x1_i(F_s) * (1 + sigmoid(<theta_i, F_s(p)> / sqrt(C)))``: a per-task projection of the shared
    map, amplified where the shared feature agrees with the task's token. Without tokens the gate is 1.
    """

    def __init__(self, num_tasks: int, channels: int):
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_tasks))

    def forward(self, shared: list[torch.Tensor], tokens: torch.Tensor | None) -> torch.Tensor:
        """``shared``: per task ``[B,C,h,w]`` (pair tasks: fused pair), ``tokens [T,C]`` -> ``[B,T,C,h,w]``"""
        features = []
        for i, (feature, projection) in enumerate(zip(shared, self.projections, strict=True)):
            task_feature = projection(feature)
            if tokens is not None:
                score = torch.einsum("bchw,c->bhw", feature, tokens[i]) / math.sqrt(feature.shape[1])
                task_feature = task_feature * (1.0 + torch.sigmoid(score))[:, None]
            features.append(task_feature)
        return torch.stack(features, dim=1)


class InterTaskAttention(nn.Module):
    """HiTT paper Eq. 5-6: a ``T x T`` affinity from the tokens mixes both the tokens and the task features.

    ``A = softmax(Theta W_q (Theta W_k)^T / sqrt(C))``, ``Theta' = A Theta``, ``F'_i = sum_j A_ij F_j``. ``A``
    depends on the tokens only (not on the image). The paper writes no scaling; 1/sqrt(C) keeps the softmax
    from saturating at initialisation. Disabled (ablation "w/o inter"), ``A`` is the identity.
    """

    def __init__(self, channels: int, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        if enabled:
            self.query = nn.Linear(channels, channels)
            self.key = nn.Linear(channels, channels)

    def affinity(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [T, C]`` -> row-stochastic ``[T, T]``."""
        if not self.enabled:
            return torch.eye(tokens.shape[0], dtype=tokens.dtype, device=tokens.device)
        scores = self.query(tokens) @ self.key(tokens).T / math.sqrt(tokens.shape[1])
        return scores.softmax(dim=-1)

    def forward(
        self, tokens: torch.Tensor, features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``tokens [T, C]``, ``features [B, T, C, h, w]`` -> mixed tokens, mixed features, ``A [T, T]``."""
        affinity = self.affinity(tokens)
        mixed = torch.einsum("ij,bjchw->bichw", affinity.to(features.dtype), features)
        return affinity @ tokens, mixed, affinity


class ASPP(nn.Module):
    """DeepLab-v3 atrous spatial pyramid pooling head (the task decoders of HiTT's ResNet-18 setting).

    ``[B, C_in, h, w] -> [B, C_out, h, w]``: a 1x1 branch, one dilated 3x3 branch per rate and an
    image-pooling branch, concatenated and projected by a 1x1 convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...] = (6, 12, 18)):
        super().__init__()

        def branch(kernel: int, dilation: int) -> nn.Sequential:
            padding = 0 if kernel == 1 else dilation
            return nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            )

        self.branches = nn.ModuleList([branch(1, 1)] + [branch(3, rate) for rate in rates])
        self.pooling = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Sequential(
            nn.Conv2d(out_channels * (len(rates) + 2), out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The pooled branch has no BatchNorm so a batch of one image still trains.
        pooled = self.pooling(x).expand(-1, -1, *x.shape[-2:])
        return self.project(torch.cat([b(x) for b in self.branches] + [pooled], dim=1))


def orthogonal_basis(size: int, kind: str = "identity", seed: int = 0) -> torch.Tensor:
    """The fixed ``o`` of the orthogonal embeddings, ``[K, K]`` with ``o o^T = I``.

    "identity" or "random" (QR of a seeded Gaussian, signs fixed so the result is unique).
    """
    if kind == "identity":
        return torch.eye(size)
    if kind != "random":
        raise ValueError(f"orthogonal_basis must be 'identity' or 'random', got {kind!r}")
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))[None]).float()


class FineGrainedTokens(nn.Module):
    """Fine-grained task tokens ``phi_i`` and the refinement of HiTT paper Eq. 1 for one task.

    ``E = o W_oe`` (``o [K, K]`` fixed orthogonal basis, ``W_oe: K -> C`` learned) gives every class or bin
    its own embedding; ``phi = MLP(E + theta'')`` (``[B, K, C]``) conditions them on the image-level token.
    Eq. 1 writes ``G' = Conv3x3(G * Softplus(phi x G))``, whose product is undefined as printed (``phi`` is
    ``K x C`` while ``G`` has ``K`` channels); the consistent reading used here scores the ``C``-channel
    task feature: ``S = phi x F'' / sqrt(C)`` (``[B, K, h, w]``). ``S`` is computed at the feature grid and
    upsampled, which equals scoring the upsampled feature (both maps are linear) at a fraction of the memory.
    Without OE (ablation) ``E = 0``: every row of ``phi`` is the same, the collapse the paper reports.
    """

    def __init__(
        self,
        num_bins: int,
        channels: int,
        use_orthogonal: bool = True,
        basis: str = "identity",
        seed: int = 0,
    ):
        super().__init__()
        self.use_orthogonal = use_orthogonal
        self.register_buffer("basis", orthogonal_basis(num_bins, basis, seed))
        self.embed = nn.Linear(num_bins, channels, bias=False)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.GELU(), nn.Linear(channels, channels))
        self.refine = nn.Conv2d(num_bins, num_bins, 3, padding=1)

    def embeddings(self) -> torch.Tensor:
        """``E [K, C]`` (zeros without OE)."""
        embedding = self.embed(self.basis)
        return embedding if self.use_orthogonal else torch.zeros_like(embedding)

    def tokens(self, global_token: torch.Tensor | None, batch: int) -> torch.Tensor:
        """``phi [B, K, C]`` from ``theta'' [B, C]`` (or no global token: the embeddings alone)."""
        embedding = self.embeddings()[None].expand(batch, -1, -1)
        if global_token is not None:
            embedding = embedding + global_token[:, None, :]
        return self.mlp(embedding)

    def forward(
        self, coarse: torch.Tensor, feature: torch.Tensor, global_token: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``G [B,K,H,W]``, ``F'' [B,C,h,w]``, ``theta'' [B,C]`` -> ``G' [B,K,H,W]``, ``phi [B,K,C]``."""
        phi = self.tokens(global_token, coarse.shape[0])
        score = torch.einsum("bkc,bchw->bkhw", phi, feature) / math.sqrt(feature.shape[1])
        score = F.interpolate(score, size=coarse.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(coarse * F.softplus(score)), phi
