"""Task attention: the weights of StableMTL's 1-to-N attention between task streams (StableMTL paper §3.3).

In every chosen self-attention layer of the main UNet, each pixel of the main task's stream queries the
features that the frozen auxiliary UNet computed at the same pixel for the other tasks:

    Q   = MLP_q[m](LN_q[m](S))                 S: the main stream's self-attention output, (R, N, C)
    K_t = MLP_k[t](LN_k[t](F_t)), V_t = ...    F_t: auxiliary features of task t, (R, N, C)
    S  <- S + out(MultiHead(Q, {K_t}, {V_t}))  per pixel, over the auxiliary tasks t, ``n_heads`` heads

``out`` is one linear layer per UNet layer shared by the tasks, initialised to zero, so the untrained model
computes exactly what the single-stream model computes. Query MLPs belong to the main task, key/value MLPs to
the auxiliary task. ``fusion="sum"`` is the ablation without attention: the auxiliary values are summed and
go through the same zero-initialised projection.

This module holds weights and the per-layer math only; ``attention_processors`` feeds it from inside a stock
``UNet2DConditionModel`` and ``multistream`` runs the two streams.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import is_xformers_available

from stablemtl.models.task_masking import TaskMasking
from stablemtl.utils.atomic import atomic_folder

LAYER_CHOICES = ("all", "dec")
FUSIONS = ("attention", "sum")
# Rows of the per-pixel attention processed at once, bounding the (rows, heads, tasks) score tensor.
_CHUNK_ROWS = 1 << 16


class _KeyValueMLP(torch.nn.Module):
    """Linear(C -> C/2), GELU, Linear(C/2 -> C): the official key/value projection of one task."""

    def __init__(self, dim: int):
        super().__init__()
        self.fc1 = torch.nn.Linear(dim, dim // 2)
        self.fc2 = torch.nn.Linear(dim // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _QueryMLP(torch.nn.Module):
    """Linear(C -> H), (GELU, Linear(H -> H)) x n, GELU, Linear(H -> C): the official query projection."""

    def __init__(self, dim: int, hidden: int, hidden_layers: int):
        super().__init__()
        layers: list[torch.nn.Module] = [torch.nn.Linear(dim, hidden)]
        for _ in range(hidden_layers):
            layers += [torch.nn.GELU(), torch.nn.Linear(hidden, hidden)]
        layers += [torch.nn.GELU(), torch.nn.Linear(hidden, dim)]
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TaskAttentionLayer(torch.nn.Module):
    """Task-attention weights of one UNet layer of width ``dim`` (module names as in the official code)."""

    def __init__(
        self, dim: int, tasks: Sequence[str], query_hidden_dim: int, query_hidden_layers: int, fusion: str
    ):
        super().__init__()
        if fusion == "attention":
            self.task_norm_q = torch.nn.ModuleDict({t: torch.nn.LayerNorm(dim) for t in tasks})
            self.task_to_q = torch.nn.ModuleDict(
                {t: _QueryMLP(dim, query_hidden_dim, query_hidden_layers) for t in tasks}
            )
            self.task_norm_k = torch.nn.ModuleDict({t: torch.nn.LayerNorm(dim) for t in tasks})
            self.task_to_k = torch.nn.ModuleDict({t: _KeyValueMLP(dim) for t in tasks})
        self.task_norm_v = torch.nn.ModuleDict({t: torch.nn.LayerNorm(dim) for t in tasks})
        self.task_to_v = torch.nn.ModuleDict({t: _KeyValueMLP(dim) for t in tasks})
        self.to_out_task = torch.nn.Linear(dim, dim)
        torch.nn.init.zeros_(self.to_out_task.weight)
        torch.nn.init.zeros_(self.to_out_task.bias)


class TaskAttention(ModelMixin, ConfigMixin):
    """Per-layer task-attention weights for a UNet with ``len(layer_dims)`` transformer blocks.

    Args:
        tasks: ``{"names": [...]}``, every task the model knows (each gets query and key/value modules).
            A dict rather than a list, because a list-valued setting breaks Hub loading of the pipeline.
        layer_dims: width ``C`` of each transformer block's self-attention, in forward order (SD2: 16).
        layers: ``"all"`` blocks, or ``"dec"``, the decoder's blocks (from ``decoder_start`` on).
        decoder_start: index of the first decoder block (SD2: 7, after 6 encoder blocks and the mid block);
            read only with ``layers="dec"``.
        n_heads: heads of the per-pixel attention (official: 4); must divide every width.
        query_hidden_dim, query_hidden_layers: the query MLP's hidden width and depth (official: 640, 2).
        fusion: ``"attention"``, or ``"sum"`` (ablation: summed auxiliary values, no attention).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        tasks: dict | None = None,
        layer_dims: Sequence[int] | None = None,
        layers: str = "all",
        decoder_start: int = 7,
        n_heads: int = 4,
        query_hidden_dim: int = 640,
        query_hidden_layers: int = 2,
        fusion: str = "attention",
    ):
        super().__init__()
        names = list((tasks or {}).get("names", [])) if isinstance(tasks, dict) else None
        if not names or len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f'tasks must be {{"names": [distinct task names]}}, got {tasks!r}')
        if any("." in n for n in names):
            raise ValueError(f"task names may not contain '.', got {names}")
        if not layer_dims or any(int(d) <= 0 for d in layer_dims):
            raise ValueError(f"layer_dims must list the positive width of each block, got {layer_dims!r}")
        if layers not in LAYER_CHOICES:
            raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {layers!r}")
        if layers == "dec" and not 0 <= decoder_start < len(layer_dims):
            raise ValueError(
                f"decoder_start must index one of the {len(layer_dims)} blocks, got {decoder_start}"
            )
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if n_heads <= 0 or any(int(d) % n_heads for d in layer_dims):
            raise ValueError(f"n_heads={n_heads} must divide every layer width {list(layer_dims)}")
        self.task_names = names
        self.active_layers = list(range(decoder_start if layers == "dec" else 0, len(layer_dims)))
        self.task_layers = torch.nn.ModuleDict(
            {
                str(i): TaskAttentionLayer(
                    int(layer_dims[i]), names, query_hidden_dim, query_hidden_layers, fusion
                )
                for i in self.active_layers
            }
        )

    @classmethod
    def from_unet(cls, unet: torch.nn.Module, tasks: Sequence[str], **kwargs) -> TaskAttention:
        """Build zero-initialised task attention matching ``unet``'s transformer blocks (widths and decoder
        start read from the UNet); ``kwargs`` are the other constructor settings."""
        from stablemtl.models.attention_processors import self_attention_layers

        found = self_attention_layers(unet)
        dims = [attn.to_q.in_features for _, attn, _ in found]
        decoder_start = next((i for i, (_, _, part) in enumerate(found) if part == "up"), len(found) - 1)
        return cls(tasks={"names": list(tasks)}, layer_dims=dims, decoder_start=decoder_start, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """``ModelMixin.save_pretrained`` (safetensors) written atomically (a temporary sibling folder moved
        into place), plus a copy of this source file: a pipeline folder can then name the component
        ``["task_attention", "TaskAttention"]`` in ``model_index.json`` and load from the Hub, where
        diffusers looks for ``task_attention/task_attention.py``."""
        with atomic_folder(save_directory) as staged:
            kwargs.setdefault("safe_serialization", True)
            super().save_pretrained(staged, *args, **kwargs)
            shutil.copyfile(Path(__file__), staged / "task_attention.py")

    # -- math ---------------------------------------------------------------------------------------------
    def forward(
        self,
        layer: int,
        hidden_states: torch.Tensor,
        aux_features: torch.Tensor,
        main_tasks: Sequence[str],
        aux_tasks: Sequence[str],
        image_index: torch.Tensor,
        visible: torch.Tensor,
        masking: TaskMasking | None = None,
        decisions: dict[int, torch.Tensor] | None = None,
        use_xformers: bool | None = None,
    ) -> torch.Tensor:
        """The task-attention term of one layer, to add to the main stream's self-attention output.

        Args:
            layer: transformer-block index (forward order); inactive layers return zeros.
            hidden_states: ``(R, N, C)`` main-stream self-attention output, R rows = (image, main task).
            aux_features: ``(A, B, N, C)`` auxiliary features of A tasks for B images.
            main_tasks: R names, the main task of each row. aux_tasks: A names.
            image_index: ``(R,)`` long, the image of each row (indexes ``aux_features``' B axis).
            visible: ``(R, A)`` bool, the auxiliary tasks each row may attend to (e.g. not its own task).
            masking: training-time task masking, or None.
            decisions: per-layer memo of masking decisions; a recomputation under gradient checkpointing
                finds this layer's decision there and reuses it instead of drawing a new one.
            use_xformers: xformers for the per-pixel attention; None: when installed and on CUDA.

        Returns:
            ``(R, N, C)``, zero for rows that see no auxiliary task.
        """
        if str(layer) not in self.task_layers:
            return torch.zeros_like(hidden_states)
        module = self.task_layers[str(layer)]
        rows, pixels, dim = hidden_states.shape
        if aux_features.shape[0] != len(aux_tasks) or aux_features.shape[2:] != (pixels, dim):
            raise ValueError(
                f"aux_features {tuple(aux_features.shape)} do not match {len(aux_tasks)} tasks and hidden "
                f"states "
                f"{tuple(hidden_states.shape)} at layer {layer}"
            )
        features = aux_features.to(hidden_states.dtype)
        values = torch.stack(
            [module.task_to_v[t](module.task_norm_v[t](f)) for t, f in zip(aux_tasks, features)]
        )
        values = values.transpose(0, 1)[image_index]  # [R,A,N,C]
        visible = visible.to(hidden_states.device)
        if self.config.fusion == "sum":
            keep = self._masked_visible(layer, None, visible, masking, decisions)
            fused = (values * keep[:, :, None, None].to(values.dtype)).sum(dim=1)
            return module.to_out_task(fused)
        keys = torch.stack(
            [module.task_to_k[t](module.task_norm_k[t](f)) for t, f in zip(aux_tasks, features)]
        )
        keys = keys.transpose(0, 1)[image_index]  # [R,A,N,C]
        queries = torch.empty_like(hidden_states)
        for task in dict.fromkeys(main_tasks):
            index = torch.tensor(
                [i for i, t in enumerate(main_tasks) if t == task], device=hidden_states.device
            )
            queries[index] = module.task_to_q[task](module.task_norm_q[task](hidden_states[index]))
        heads = self.config.n_heads
        head_dim = dim // heads
        q = queries.reshape(rows * pixels, 1, heads, head_dim)  # one query per (row, pixel)
        k = keys.permute(0, 2, 1, 3).reshape(rows * pixels, -1, heads, head_dim)  # [R*N,A,h,d]
        v = values.permute(0, 2, 1, 3).reshape(rows * pixels, -1, heads, head_dim)
        keep = self._masked_visible(layer, (q, k, rows, pixels), visible, masking, decisions)
        attended = _per_pixel_attention(q, k, v, keep.repeat_interleave(pixels, dim=0), use_xformers)
        out = module.to_out_task(attended.reshape(rows, pixels, dim))
        # Rows that see no auxiliary task get nothing (their softmax would be over an empty set).
        return out * keep.any(dim=1)[:, None, None].to(out.dtype)

    def _masked_visible(self, layer, qk, visible, masking, decisions) -> torch.Tensor:
        """``visible`` minus the tasks hidden by ``masking`` at this layer (memoised in ``decisions``)."""
        if masking is None or not self.training:
            return visible
        if decisions is not None and layer in decisions:
            return visible & ~decisions[layer].to(visible.device)
        rows = masking.select_rows(visible)
        probabilities = None
        if bool(rows.any()) and masking.needs_probabilities:
            probabilities = self._mean_probabilities(qk, visible) if qk is not None else None
        if probabilities is None and masking.needs_probabilities:
            # Plain fusion weighs every visible task equally.
            probabilities = visible.float() / visible.sum(dim=1, keepdim=True).clamp(min=1)
        drop = masking.choose(probabilities, visible, rows)
        if decisions is not None:
            decisions[layer] = drop
        return visible & ~drop.to(visible.device)

    @torch.no_grad()
    def _mean_probabilities(self, qk, visible: torch.Tensor) -> torch.Tensor:
        """``(R, A)`` attention weight of each key averaged over pixels and heads (masking's guide)."""
        q, k, rows, pixels = qk
        scores = torch.einsum("bqhd,bkhd->bhk", q.float(), k.float()) / math.sqrt(q.shape[-1])
        scores = scores.reshape(rows, pixels, -1, k.shape[1])
        scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
        probabilities = torch.nan_to_num(scores.softmax(dim=-1), nan=0.0)
        return probabilities.mean(dim=(1, 2))


def _per_pixel_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor, use_xformers: bool | None
) -> torch.Tensor:
    """``q (M,1,h,d)``, ``k, v (M,A,h,d)``, ``keep (M,A)`` bool -> ``(M, h*d)``: softmax attention of each
    row's single query over its kept keys (rows without keys give zeros, masked by the caller)."""
    if use_xformers is None:
        use_xformers = q.is_cuda and is_xformers_available()
    outputs = []
    for start in range(0, q.shape[0], _CHUNK_ROWS):
        part = slice(start, start + _CHUNK_ROWS)
        qc, kc, vc, keepc = q[part], k[part], v[part], keep[part]
        # A row with no key would softmax over nothing (NaN); let it see everything, the caller zeroes it.
        keepc = keepc | ~keepc.any(dim=1, keepdim=True)
        if use_xformers:
            import xformers.ops

            # xformers wants the bias' last dimension allocated in multiples of 8.
            tasks = kc.shape[1]
            padded = torch.zeros(
                qc.shape[0], qc.shape[2], 1, (tasks + 7) // 8 * 8, device=q.device, dtype=q.dtype
            )
            bias = padded[..., :tasks]
            bias.masked_fill_(~keepc[:, None, None, :], float("-inf"))
            out = xformers.ops.memory_efficient_attention(qc, kc, vc, attn_bias=bias)  # [M,1,h,d]
        else:
            out = F.scaled_dot_product_attention(
                qc.transpose(1, 2), kc.transpose(1, 2), vc.transpose(1, 2), attn_mask=keepc[:, None, None, :]
            ).transpose(1, 2)
        outputs.append(out.reshape(out.shape[0], -1))
    return torch.cat(outputs)
