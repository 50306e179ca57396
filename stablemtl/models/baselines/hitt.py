"""HiTT: hierarchical task tokens for partially annotated dense prediction (Zhang et al., MM'25).

The multi-scale ResNet-18 variant of HiTT paper §A.4 (Eq. 11-15), for any subset of this toolkit's tasks:

1. A shared ResNet-18 encodes the image into four maps (strides 4-32). Flow tasks need two frames: the
   same encoder runs on the next frame too and a 1x1 convolution per scale fuses the two maps into the
   shared feature the flow tasks see (a shared siamese encoder, so every task keeps sharing one encoder;
   stacking the pair at the input would need a second encoder for the flow tasks alone). Without a next
   frame the image is paired with itself (a static pair), so every call sees the same ``T`` tasks.
2. Global task tokens ``theta_i`` (``[T, C]``) are projected to each scale, query the shared map
   (``TokenQuery``) and mix tokens and task features through the ``T x T`` inter-task attention.
3. The scales are resized to the ``fuse_stride`` grid and fused per task by a 1x1 convolution; the scale
   tokens are projected back and summed. Intra-task attention (one pre-LN transformer block per task)
   runs over ``[theta'_i; F'_i]``: ``theta''_i`` becomes image-conditioned, ``F''_i`` the task feature.
4. ``M^f_i = sigmoid(<theta''_i, F''_i> / sqrt(C))`` is the feature-level confidence (paper §3.3).
5. ASPP + 1x1 give coarse logits ``G_i`` over ``K_i`` classes or bins; the fine-grained tokens refine them
   (Eq. 1) into ``G'_i``. Regression tasks decode by the soft-weighted sum of their centres (Eq. 7).

Ablation switches (paper Table 4) disable OE, inter- or intra-task attention, the global tokens
(``theta``) or the fine-grained tokens (``phi``); all off (``mtl_baseline=True``) is the MTL baseline
with the same backbone and heads. Save/load: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``
(``config.json`` with ``"model_type": "hitt"`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import save_model
from torch import nn

from stablemtl.models.baselines.backbones import ResNetEncoder
from stablemtl.models.baselines.hitt_heads import HeadSpec, resolve_heads
from stablemtl.models.baselines.hitt_modules import (
    ASPP,
    FineGrainedTokens,
    InterTaskAttention,
    PerTaskLinear,
    TokenQuery,
)
from stablemtl.models.baselines.quantization import assign, initial_centres, soft_expectation
from stablemtl.utils.atomic import atomic_path, atomic_write_text

MODEL_TYPE = "hitt"


@dataclass
class HiTTOutput:
    """Everything one forward pass produces; per-task dicts hold the computed tasks in the model's order.

    logits: ``G'_i [B, K_i, H, W]`` (the coarse ``G_i`` when the fine-grained tokens are off).
    coarse_logits: ``G_i [B, K_i, H, W]``.
    features: ``F''_i [B, C, h, w]`` at the ``fuse_stride`` grid (the targets of the feature loss).
    feature_confidence: ``M^f_i [B, 1, h, w]`` in (0, 1) (all ones without global tokens).
    global_tokens: ``theta''`` ``[B, T', C]`` of the computed tasks, or None without global tokens.
    fine_tokens: ``phi_i [B, K_i, C]`` (empty without fine-grained tokens).
    task_affinity: the inter-task attention ``A [T, T]`` of each scale (empty without global tokens).
    """

    logits: dict[str, torch.Tensor]
    coarse_logits: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    feature_confidence: dict[str, torch.Tensor]
    global_tokens: torch.Tensor | None = None
    fine_tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    task_affinity: list[torch.Tensor] = field(default_factory=list)


class HiTTModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="stablemtl",
    tags=["hitt", "multi-task", "dense-prediction"],
):
    """HiTT over a shared ResNet-18 (see the module docstring for the computation).

    Args:
        tasks: task names (built-in heads, ``hitt_heads.DEFAULT_HEADS``), ``{name: head spec dict}`` or a
            list of head specs with a "name" (``hitt_heads.resolve_heads``); the order is the task order.
        token_dim: ``C``, width of the tokens, the fused task features and the heads.
        num_heads: heads of the intra-task attention.
        fuse_stride: stride (4, 8, 16 or 32) of the grid where the scales meet and attention runs.
        aspp_rates: dilation rates of the ASPP heads (in cells of the fused grid).
        multi_scale: tokens at all four scales (paper §A.4); False uses the ``fuse_stride`` scale only.
        use_global_tokens, use_inter_task_attention, use_intra_task_attention, use_fine_grained_tokens,
        use_orthogonal_embeddings: the ablation switches of paper Table 4.
        orthogonal_basis: "identity" or "random" (a fixed seeded orthogonal matrix) for the OE basis ``o``.
        confidence_sharpening: factor on the logits before the pseudo-label confidence; 1 follows the
            paper, 5 the released code.
        backbone: Hub id or folder of a pretrained ``transformers`` ResNet (random ResNet-18 when None).
        backbone_config: architecture of the encoder (filled in when saving, so loading needs no download).
        seed: seed of the random initialisation (the global RNG is forked, not consumed).
        mtl_baseline: turn every HiTT component off (the paper's MTL baseline).
        model_type: must be "hitt"; written to ``config.json`` so loaders know what the folder holds.
    """

    def __init__(
        self,
        tasks: Sequence[str | Mapping[str, Any]] | Mapping[str, Any],
        token_dim: int = 256,
        num_heads: int = 8,
        fuse_stride: int = 8,
        aspp_rates: Sequence[int] = (6, 12, 18),
        multi_scale: bool = True,
        use_global_tokens: bool = True,
        use_inter_task_attention: bool = True,
        use_intra_task_attention: bool = True,
        use_fine_grained_tokens: bool = True,
        use_orthogonal_embeddings: bool = True,
        orthogonal_basis: str = "identity",
        confidence_sharpening: float = 1.0,
        backbone: str | None = None,
        backbone_config: dict | None = None,
        seed: int = 0,
        mtl_baseline: bool = False,
        model_type: str = MODEL_TYPE,
    ):
        super().__init__()
        if model_type != MODEL_TYPE:
            raise ValueError(f"model_type must be {MODEL_TYPE!r}, got {model_type!r}")
        if token_dim < 1 or token_dim % num_heads:
            raise ValueError(
                f"token_dim ({token_dim}) must be a positive multiple of num_heads ({num_heads})"
            )
        if confidence_sharpening <= 0:
            raise ValueError(f"confidence_sharpening must be > 0, got {confidence_sharpening}")
        self.heads = resolve_heads(tasks)
        self.task_names = list(self.heads)
        if mtl_baseline:
            use_global_tokens = use_inter_task_attention = use_intra_task_attention = False
            use_fine_grained_tokens = use_orthogonal_embeddings = False
        self.use_global_tokens = use_global_tokens
        self.use_intra_task_attention = use_intra_task_attention
        self.use_fine_grained_tokens = use_fine_grained_tokens
        self.confidence_sharpening = float(confidence_sharpening)
        num_tasks = len(self.heads)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if backbone is not None:
                self.encoder = ResNetEncoder.from_pretrained(backbone)
            else:
                self.encoder = ResNetEncoder(backbone_config, seed=seed)
            strides = self.encoder.strides
            if fuse_stride not in strides:
                raise ValueError(f"fuse_stride must be one of {strides}, got {fuse_stride}")
            self.fuse_index = strides.index(fuse_stride)
            self.scales = list(range(len(strides))) if multi_scale else [self.fuse_index]
            widths = [self.encoder.channels[j] for j in self.scales]
            self.has_pairs = any(spec.pair for spec in self.heads.values())
            if self.has_pairs:
                self.pair_fusion = nn.ModuleList(nn.Conv2d(2 * c, c, 1) for c in widths)
            # Switched-off components are not built, so no parameter goes without a gradient (DDP).
            if use_global_tokens:
                self.global_tokens = nn.Parameter(torch.empty(num_tasks, token_dim))
                nn.init.trunc_normal_(self.global_tokens, std=0.02)
                self.token_to_scale = nn.ModuleList(PerTaskLinear(num_tasks, token_dim, c) for c in widths)
                self.scale_to_token = nn.ModuleList(PerTaskLinear(num_tasks, c, token_dim) for c in widths)
                self.inter_task = nn.ModuleList(
                    InterTaskAttention(c, use_inter_task_attention) for c in widths
                )
            self.query = nn.ModuleList(TokenQuery(num_tasks, c) for c in widths)
            self.fuse = nn.ModuleList(nn.Conv2d(sum(widths), token_dim, 1) for _ in range(num_tasks))
            if use_intra_task_attention:
                layer = dict(dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
                self.intra_task = nn.ModuleList(
                    nn.TransformerEncoderLayer(token_dim, num_heads, 4 * token_dim, **layer)
                    for _ in range(num_tasks)
                )
            rates = tuple(aspp_rates)
            self.decoders = nn.ModuleList(ASPP(token_dim, token_dim, rates) for _ in range(num_tasks))
            self.classifiers = nn.ModuleList(nn.Conv2d(token_dim, s.num_bins, 1) for s in self.heads.values())
            if use_fine_grained_tokens:
                self.fine_tokens = nn.ModuleList(
                    FineGrainedTokens(
                        s.num_bins, token_dim, use_orthogonal_embeddings, orthogonal_basis, seed + i
                    )
                    for i, s in enumerate(self.heads.values())
                )
        self.centres = nn.Module()  # the (K, C) quantisation centres, saved with the weights
        for name, spec in self.heads.items():
            if spec.is_regression:
                centres = initial_centres(spec.init, spec.num_bins, spec.channels, spec.low, spec.high)
                self.centres.register_buffer(name, centres)
        # The saved config rebuilds this exact architecture offline (no backbone download on load).
        self._hub_mixin_config = {
            "tasks": [{"name": name, **spec.to_dict()} for name, spec in self.heads.items()],
            "token_dim": token_dim,
            "num_heads": num_heads,
            "fuse_stride": fuse_stride,
            "aspp_rates": [int(r) for r in aspp_rates],
            "multi_scale": multi_scale,
            "use_global_tokens": use_global_tokens,
            "use_inter_task_attention": use_inter_task_attention,
            "use_intra_task_attention": use_intra_task_attention,
            "use_fine_grained_tokens": use_fine_grained_tokens,
            "use_orthogonal_embeddings": use_orthogonal_embeddings,
            "orthogonal_basis": orthogonal_basis,
            "confidence_sharpening": self.confidence_sharpening,
            "backbone": None,
            "backbone_config": self.encoder.config_dict(),
            "seed": seed,
            "mtl_baseline": False,
            "model_type": MODEL_TYPE,
        }

    # ------------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The JSON config written to ``config.json``."""
        return dict(self._hub_mixin_config)

    @property
    def tasks(self) -> list[str]:
        """The tasks this model predicts, in order (the evaluator scores only these)."""
        return list(self.task_names)

    def head(self, task: str) -> HeadSpec:
        if task not in self.heads:
            raise ValueError(f"task {task!r} is not predicted by this model; it has {', '.join(self.heads)}")
        return self.heads[task]

    def task_centres(self, task: str) -> torch.Tensor:
        """``(K, C)`` centres of a regression task."""
        if not self.head(task).is_regression:
            raise ValueError(f"task {task!r} is a classification task and has no centres")
        return getattr(self.centres, task)

    @torch.no_grad()
    def set_centres(self, task: str, centres: torch.Tensor) -> None:
        """Replace a regression task's centres (e.g. by ``quantization.fit_centres`` on training labels)."""
        current = self.task_centres(task)
        if tuple(centres.shape) != tuple(current.shape):
            raise ValueError(
                f"centres of {task!r} must be {tuple(current.shape)}, got {tuple(centres.shape)}"
            )
        if self.heads[task].unit:
            centres = F.normalize(centres.float(), dim=1)
        current.copy_(centres)

    # ------------------------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        next_images: torch.Tensor | None = None,
        tasks: Sequence[str] | None = None,
    ) -> HiTTOutput:
        """``images`` (and ``next_images``) ``[B, 3, H, W]`` in [0, 1] -> ``HiTTOutput``.

        Every task's token and feature take part in the inter-task attention; ``tasks`` (default: all)
        selects the tasks whose intra-task attention and heads run, to spare the others' compute.
        """
        self._check_images(images, next_images)
        wanted = set(self.task_names if tasks is None else tasks)
        for task in wanted:
            self.head(task)  # ValueError for a task the model does not predict
        size = images.shape[-2:]
        feats = self.encoder(images)
        shared = [feats[j] for j in self.scales]
        paired = shared
        if self.has_pairs:
            # A static pair stands in for a missing next frame, so the task set never changes.
            next_feats = self.encoder(images if next_images is None else next_images)
            paired = [
                fusion(torch.cat([feats[j], next_feats[j]], dim=1))
                for fusion, j in zip(self.pair_fusion, self.scales, strict=True)
            ]
        grid = feats[self.fuse_index].shape[-2:]
        tokens = self.global_tokens if self.use_global_tokens else None
        scale_features, scale_tokens, affinities = [], [], []
        for k in range(len(self.scales)):
            inputs = [paired[k] if spec.pair else shared[k] for spec in self.heads.values()]
            scale_token = self.token_to_scale[k](tokens) if tokens is not None else None  # [T,C_j]
            task_features = self.query[k](inputs, scale_token)  # [B,T,C_j,h_j,w_j]
            if scale_token is not None:
                scale_token, task_features, affinity = self.inter_task[k](scale_token, task_features)
                scale_tokens.append(self.scale_to_token[k](scale_token))  # [T,C]
                affinities.append(affinity)
            b, t, c, h, w = task_features.shape
            resized = F.interpolate(
                task_features.reshape(b, t * c, h, w), size=grid, mode="bilinear", align_corners=False
            )
            scale_features.append(resized.reshape(b, t, c, *grid))
        stacked = torch.cat(scale_features, dim=2)  # [B,T,sum C_j,h,w]
        fused_tokens = torch.stack(scale_tokens).sum(dim=0) if scale_tokens else None  # [T,C]

        out = HiTTOutput({}, {}, {}, {}, task_affinity=affinities)
        final_tokens = []
        for i, name in enumerate(self.heads):
            if name not in wanted:
                continue
            feature = self.fuse[i](stacked[:, i])  # F'_i [B,C,h,w]
            token = fused_tokens[i].expand(feature.shape[0], -1) if fused_tokens is not None else None
            if self.use_intra_task_attention:
                token, feature = self._intra_task(i, token, feature)
            out.features[name] = feature
            if token is not None:
                final_tokens.append(token)
                score = torch.einsum("bchw,bc->bhw", feature, token) / math.sqrt(feature.shape[1])
                out.feature_confidence[name] = torch.sigmoid(score)[:, None]
            else:
                out.feature_confidence[name] = torch.ones_like(feature[:, :1])
            coarse = self.classifiers[i](self.decoders[i](feature))
            coarse = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)  # G_i [B,K,H,W]
            out.coarse_logits[name] = coarse
            if self.use_fine_grained_tokens:
                out.logits[name], out.fine_tokens[name] = self.fine_tokens[i](coarse, feature, token)
            else:
                out.logits[name] = coarse
        out.global_tokens = torch.stack(final_tokens, dim=1) if final_tokens else None
        return out

    def _intra_task(
        self, index: int, token: torch.Tensor | None, feature: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Self-attention over ``[theta'_i; flatten(F'_i)]`` ``[B, 1 + hw, C]`` (no token: features only)."""
        b, c, h, w = feature.shape
        sequence = feature.flatten(2).transpose(1, 2)  # [B,hw,C]
        if token is not None:
            sequence = torch.cat([token[:, None], sequence], dim=1)
        sequence = self.intra_task[index](sequence)
        if token is not None:
            token, sequence = sequence[:, 0], sequence[:, 1:]
        return token, sequence.transpose(1, 2).reshape(b, c, h, w)

    # ------------------------------------------------------------------------------------------------
    def decode(self, task: str, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` -> prediction in the task's decode space.

        Classification: class ids ``[B, 1, H, W]`` int64. Regression: the soft-weighted sum of the centres
        (Eq. 7) ``[B, C, H, W]``, L2-normalised for unit vectors, else clamped to ``[low, high]``.
        """
        spec = self.head(task)
        if not spec.is_regression:
            return logits.argmax(dim=1, keepdim=True)
        value = soft_expectation(logits, self.task_centres(task))
        if spec.unit:
            return F.normalize(value, dim=1)
        return value.clamp(spec.low, spec.high)

    def confidence(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(max softmax probability [B, H, W], argmax id [B, H, W])`` after ``confidence_sharpening``."""
        probs = (logits.float() * self.confidence_sharpening).softmax(dim=1)
        confidence, ids = probs.max(dim=1)
        return confidence, ids

    def target_ids(self, task: str, target: torch.Tensor) -> torch.Tensor:
        """Ground truth in decode space ``[B, C, H, W]`` -> class / nearest-centre ids ``[B, H, W]`` int64."""
        spec = self.head(task)
        if not spec.is_regression:
            return target[:, 0].long()
        return assign(target, self.task_centres(task), unit=spec.unit)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, next_images: torch.Tensor | None, tasks: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """The Predictor contract: ``{task: [B, C, H, W]}`` in each task's decode space (eval mode)."""
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        if not tasks:
            raise ValueError("tasks must name at least one task")
        for task in tasks:
            if self.head(task).pair and next_images is None:
                raise ValueError(f"task {task!r} needs next_images (the following frame)")
        was_training = self.training
        self.eval()
        try:
            out = self(images, next_images, tasks)
        finally:
            self.train(was_training)
        return {task: self.decode(task, out.logits[task]) for task in tasks}

    @torch.no_grad()
    def discover(
        self,
        images: torch.Tensor,
        next_images: torch.Tensor | None = None,
        tasks: Sequence[str] | None = None,
    ) -> dict[str, dict[str, torch.Tensor]]:
        """Phase-2 pseudo supervision of the (frozen) model on clean images (HiTT paper §3.3, Eq. 3-4).

        Per task: ``label`` ``[B, H, W]`` int64 class / bin ids (argmax of ``G'``), ``confidence``
        ``[B, H, W]`` (max softmax), ``mask`` = ``confidence > tau`` (the label-level mask ``M^p``),
        ``feature`` ``F'' [B, C, h, w]`` and ``feature_confidence`` ``M^f [B, 1, h, w]`` (feature targets
        and their masks).
        """
        tasks = self.task_names if tasks is None else list(tasks)
        was_training = self.training
        self.eval()
        try:
            out = self(images, next_images, tasks)
        finally:
            self.train(was_training)
        found = {}
        for task in tasks:
            confidence, ids = self.confidence(out.logits[task])
            found[task] = {
                "label": ids,
                "confidence": confidence,
                "mask": confidence > self.head(task).tau,
                "feature": out.features[task],
                "feature_confidence": out.feature_confidence[task],
            }
        return found

    def _check_images(self, images: torch.Tensor, next_images: torch.Tensor | None) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(
                f"images must be a [B, 3, H, W] tensor in [0, 1], got {getattr(images, 'shape', images)}"
            )
        if next_images is not None and tuple(next_images.shape) != tuple(images.shape):
            raise ValueError(
                f"next_images must match images {tuple(images.shape)}, got {tuple(next_images.shape)}"
            )

    # ------------------------------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """``model.safetensors`` and ``config.json``, each written to a temporary file then renamed."""
        save_directory = Path(save_directory)
        with atomic_path(save_directory / "model.safetensors") as tmp:
            save_model(self, str(tmp))
        text = json.dumps(self._hub_mixin_config, sort_keys=True, indent=2)
        atomic_write_text(save_directory / "config.json", text)
