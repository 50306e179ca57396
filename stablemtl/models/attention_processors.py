"""Attention processors that turn two stock ``UNet2DConditionModel``s into StableMTL's two streams.

No UNet fork: the auxiliary UNet gets ``CaptureProcessor``s (they record, per transformer block, the feature
the task attention reads) and the main UNet gets ``TaskAttentionProcessor``s on the self-attention
(``attn1``) of every transformer block (they add the task-attention term before the output dropout).

State never travels through ``cross_attention_kwargs`` (diffusers drops a keyword that another installed
processor does not declare, with a warning per layer and call): the processors of one UNet share a small
state object that the caller fills before the UNet call (``FeatureCapture`` / ``TaskAttentionState``).

Under gradient checkpointing a block runs twice; both processors are safe there: capture stores by layer
index (the recomputation overwrites the same value), injection reads its inputs and memoises its masking
draws per layer (the recomputation reuses them).

``enable_xformers_memory_efficient_attention`` replaces every processor of a UNet. ``install_*`` can be
called again afterwards and reinstall ours (capture wraps whatever processor it finds, so it keeps the
xformers one; injection has its own xformers path, used when xformers is installed and the tensors are on
CUDA); ``MultiStreamUNet`` does so before every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.utils import is_xformers_available

from stablemtl.models.task_masking import TaskMasking

if TYPE_CHECKING:
    from stablemtl.models.task_attention import TaskAttention

# Capture points of the auxiliary features (the official ``return_feature`` names in the comments).
CAPTURE_POINTS = (
    "self_attn_residual",  # afterSelfAttn_residual (default): attn1's output, before the residual add
    "self_attn_input",  # beforeSelfAttn: the normalised hidden states attn1 receives
    "self_attn_main",  # afterSelfAttn_main: the block's hidden states after the self-attention residual
    "cross_attn_residual",  # afterXAttn_residual: attn2's output
    "cross_attn_main",  # afterXAttn_main: hidden states after the cross-attention residual
    "ff_residual",  # afterFF_residual: the feed-forward output
    "ff_main",  # afterFF_main: the block's output
)


def self_attention_layers(unet: torch.nn.Module) -> list[tuple[str, Attention, str]]:
    """The transformer blocks' self-attention modules in forward order: ``(processor key without
    ".processor", attn1 module, "down" | "mid" | "up")``. SD2's UNet has 16 (6 down, 1 mid, 9 up)."""
    found: list[tuple[str, Attention, str]] = []
    parts = [("down", f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    if getattr(unet, "mid_block", None) is not None:
        parts.append(("mid", "mid_block", unet.mid_block))
    parts += [("up", f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    for part, prefix, block in parts:
        for name, module in block.named_modules():
            if name.endswith("attn1") and isinstance(module, Attention):
                found.append((f"{prefix}.{name}", module, part))
    if not found:
        raise ValueError("the UNet has no transformer blocks with a self-attention (attn1) to hook")
    return found


def _transformer_blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that own each ``attn1`` of ``self_attention_layers`` (same order)."""
    owners = {id(m.attn1): m for m in unet.modules() if isinstance(getattr(m, "attn1", None), Attention)}
    return [owners[id(attn)] for _, attn, _ in self_attention_layers(unet)]


def _set_processors(unet: torch.nn.Module, replace: dict[str, object]) -> None:
    """``set_attn_processor`` with a dict covering every attention layer (diffusers requires that):
    ``replace`` maps processor keys to new processors, every other layer keeps its own."""
    processors = dict(unet.attn_processors)
    unknown = set(replace) - set(processors)
    if unknown:
        raise ValueError(f"no attention layers {sorted(unknown)} in the UNet")
    processors.update(replace)
    unet.set_attn_processor(processors)


def _xformers_usable(tensor: torch.Tensor, use_xformers: bool | None) -> bool:
    if use_xformers is None:
        return tensor.is_cuda and is_xformers_available()
    return use_xformers


def projected_self_attention(
    attn: Attention,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None,
    use_xformers: bool | None,
) -> tuple[torch.Tensor, tuple]:
    """The self-attention of ``attn`` up to and including ``to_out[0]`` (before dropout), as diffusers'
    ``AttnProcessor2_0`` computes it (operation for operation, so outputs are bit-identical to it).

    Returns ``(S (B, N, C), restore)``; ``restore`` is what ``_finish`` needs to give the processor's output.
    """
    residual = hidden_states
    if attn.spatial_norm is not None:
        raise ValueError("task attention supports transformer self-attention only (no spatial norm)")
    input_ndim = hidden_states.ndim
    shape = hidden_states.shape
    if input_ndim == 4:
        batch, channels, height, width = shape
        hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
    batch, length, _ = hidden_states.shape
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    key = attn.to_k(hidden_states)
    value = attn.to_v(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim)
    key = key.view(batch, -1, attn.heads, head_dim)
    value = value.view(batch, -1, attn.heads, head_dim)
    if attn.norm_q is not None:
        query = attn.norm_q(query.transpose(1, 2)).transpose(1, 2)
    if attn.norm_k is not None:
        key = attn.norm_k(key.transpose(1, 2)).transpose(1, 2)
    if _xformers_usable(query, use_xformers) and attention_mask is None:
        import xformers.ops

        out = xformers.ops.memory_efficient_attention(query, key, value, scale=attn.scale)  # [B,N,h,d]
    else:
        out = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask
        ).transpose(1, 2)
    out = out.reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    return attn.to_out[0](out), (residual, input_ndim, shape)


def _finish(attn: Attention, projected: torch.Tensor, restore: tuple) -> torch.Tensor:
    residual, input_ndim, shape = restore
    hidden_states = attn.to_out[1](projected)  # dropout
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(shape)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


# -- injection (main stream) ------------------------------------------------------------------------------
@dataclass
class TaskAttentionState:
    """What the main UNet's processors read during one call; set by the caller before it.

    ``aux_features`` maps a layer index to ``(A, B, N, C)`` features of the A ``aux_tasks`` for B images;
    None makes the processors plain self-attention (the single-stream model). ``main_tasks`` (R names),
    ``image_index`` ``(R,)`` and ``visible`` ``(R, A)`` describe the R rows of the UNet batch. ``decisions``
    memoises the masking draws of the current call (cleared by ``set``).

    The state of one call lives until the next ``set``: with gradient checkpointing, run the backward pass of
    a main call before the next main call (the recomputed blocks read this state).
    """

    task_attention: TaskAttention
    aux_features: dict[int, torch.Tensor] | None = None
    aux_tasks: list[str] = field(default_factory=list)
    main_tasks: list[str] = field(default_factory=list)
    image_index: torch.Tensor | None = None
    visible: torch.Tensor | None = None
    masking: TaskMasking | None = None
    use_xformers: bool | None = None
    decisions: dict[int, torch.Tensor] = field(default_factory=dict)

    def set(self, aux_features, aux_tasks, main_tasks, image_index, visible, masking=None) -> None:
        """Prepare one main-stream call (see the class docstring for shapes)."""
        rows = len(main_tasks)
        if image_index.shape != (rows,) or visible.shape != (rows, len(aux_tasks)):
            raise ValueError(
                f"image_index {tuple(image_index.shape)} and visible {tuple(visible.shape)} must be "
                f"({rows},) "
                f"and ({rows}, {len(aux_tasks)})"
            )
        self.aux_features, self.aux_tasks, self.main_tasks = aux_features, list(aux_tasks), list(main_tasks)
        self.image_index, self.visible, self.masking = image_index, visible.bool(), masking
        self.decisions = {}

    def clear(self) -> None:
        """Drop the features (the main UNet then computes the single-stream model)."""
        self.aux_features, self.image_index, self.visible, self.masking = None, None, None, None
        self.decisions = {}


class TaskAttentionProcessor:
    """Self-attention of one transformer block plus the task-attention term, added before dropout."""

    def __init__(self, layer: int, state: TaskAttentionState):
        self.layer = layer
        self.state = state

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None:
            raise ValueError("TaskAttentionProcessor belongs on self-attention (attn1) layers")
        state = self.state
        projected, restore = projected_self_attention(attn, hidden_states, attention_mask, state.use_xformers)
        features = None if state.aux_features is None else state.aux_features.get(self.layer)
        if features is not None:
            if projected.shape[0] != len(state.main_tasks):
                raise ValueError(
                    f"the UNet batch has {projected.shape[0]} rows but the task-attention state describes "
                    f"{len(state.main_tasks)}"
                )
            projected = projected + state.task_attention(
                self.layer,
                projected,
                features,
                state.main_tasks,
                state.aux_tasks,
                state.image_index,
                state.visible,
                masking=state.masking,
                decisions=state.decisions,
                use_xformers=state.use_xformers,
            )
        return _finish(attn, projected, restore)


def install_task_attention(
    unet: torch.nn.Module, task_attention: TaskAttention, state: TaskAttentionState | None = None
) -> TaskAttentionState:
    """Put a ``TaskAttentionProcessor`` on every ``attn1`` of ``unet`` (idempotent; call again after anything
    replaced the processors). Returns the shared state (``state`` if given)."""
    layers = self_attention_layers(unet)
    if len(layers) != len(task_attention.config.layer_dims):
        raise ValueError(
            f"task_attention was built for {len(task_attention.config.layer_dims)} blocks, "
            f"the UNet has {len(layers)}"
        )
    for i, (_, attn, _) in enumerate(layers):
        if attn.to_q.in_features != task_attention.config.layer_dims[i]:
            raise ValueError(
                f"block {i} has width {attn.to_q.in_features}, task_attention expects "
                f"{task_attention.config.layer_dims[i]}"
            )
    state = state or TaskAttentionState(task_attention)
    current = [attn.processor for _, attn, _ in layers]
    if all(isinstance(p, TaskAttentionProcessor) and p.state is state for p in current):
        return state
    _set_processors(
        unet, {f"{name}.processor": TaskAttentionProcessor(i, state) for i, (name, _, _) in enumerate(layers)}
    )
    return state


# -- capture (auxiliary stream) ---------------------------------------------------------------------------
class FeatureCapture:
    """Records one feature per transformer block of the auxiliary UNet at ``point`` (``CAPTURE_POINTS``).

    ``features()`` returns ``{layer index: (B, N, C)}`` after a UNet call; ``reset()`` before the next one.
    Records are keyed by layer, so a recomputed block (gradient checkpointing) overwrites, never appends.
    """

    def __init__(self, point: str = "self_attn_residual"):
        if point not in CAPTURE_POINTS:
            raise ValueError(f"capture point {point!r} is unknown; known: {', '.join(CAPTURE_POINTS)}")
        self.point = point
        self.records: dict[tuple[str, int], torch.Tensor] = {}
        self._hooks: list = []
        self._unet_id: int | None = None

    def reset(self) -> None:
        self.records = {}

    def record(self, name: str, layer: int, value: torch.Tensor) -> None:
        self.records[(name, layer)] = value

    def features(self) -> dict[int, torch.Tensor]:
        """``{layer: (B, N, C)}`` at the capture point for every block of the last UNet call."""
        layers = sorted({layer for _, layer in self.records})
        return {layer: self._feature(layer) for layer in layers}

    def _feature(self, layer: int) -> torch.Tensor:
        get = lambda name: self.records[(name, layer)]  # noqa: E731
        point = self.point
        if point == "self_attn_residual":
            return get("attn1_out")
        if point == "self_attn_input":
            return get("attn1_in")
        if point == "self_attn_main":
            return get("block_in") + get("attn1_out")
        if point == "cross_attn_residual":
            return get("attn2_out")
        if point == "cross_attn_main":
            return get("block_in") + get("attn1_out") + get("attn2_out")
        if point == "ff_residual":
            return get("block_out") - (get("block_in") + get("attn1_out") + get("attn2_out"))
        return get("block_out")

    def install(self, unet: torch.nn.Module) -> FeatureCapture:
        """Wrap the processors of ``unet``'s transformer blocks (and hook the blocks when the capture point
        needs their input or output). Idempotent; call again after anything replaced the processors."""
        layers = self_attention_layers(unet)
        blocks = _transformer_blocks(unet)
        needs_cross = self.point in ("cross_attn_residual", "cross_attn_main", "ff_residual")
        replace: dict[str, object] = {}
        for i, ((name, attn1, _), block) in enumerate(zip(layers, blocks)):
            if not (isinstance(attn1.processor, CaptureProcessor) and attn1.processor.capture is self):
                replace[f"{name}.processor"] = CaptureProcessor(attn1.processor, self, i, "attn1")
            attn2 = getattr(block, "attn2", None)
            if needs_cross:
                if attn2 is None:
                    raise ValueError(f"capture point {self.point!r} needs cross-attention in every block")
                if not (isinstance(attn2.processor, CaptureProcessor) and attn2.processor.capture is self):
                    replace[f"{name[: -len('attn1')]}attn2.processor"] = CaptureProcessor(
                        attn2.processor, self, i, "attn2"
                    )
        if replace:
            _set_processors(unet, replace)
        if self.point in (
            "self_attn_main",
            "cross_attn_main",
            "ff_residual",
            "ff_main",
        ) and self._unet_id != id(unet):
            for handle in self._hooks:
                handle.remove()
            self._hooks = []
            for i, block in enumerate(blocks):
                self._hooks.append(block.register_forward_pre_hook(self._block_input(i), with_kwargs=True))
                self._hooks.append(block.register_forward_hook(self._block_output(i)))
            self._unet_id = id(unet)
        return self

    def _block_input(self, layer: int):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.record("block_in", layer, hidden)

        return hook

    def _block_output(self, layer: int):
        def hook(module, args, output):
            self.record("block_out", layer, output)

        return hook


class CaptureProcessor:
    """Runs the processor it wraps and records its input (``attn1``) and output for a ``FeatureCapture``."""

    def __init__(self, inner, capture: FeatureCapture, layer: int, which: str):
        # Do not wrap another capture: unwrap to the real attention processor.
        self.inner = inner.inner if isinstance(inner, CaptureProcessor) else inner
        if self.inner is None:
            self.inner = AttnProcessor2_0()
        self.capture, self.layer, self.which = capture, layer, which

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        kwargs = {} if temb is None else {"temb": temb}
        out = self.inner(
            attn,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **kwargs,
        )
        if self.which == "attn1":
            self.capture.record("attn1_in", self.layer, hidden_states)
        self.capture.record(f"{self.which}_out", self.layer, out)
        return out


def aux_feature_layers(features: dict[int, torch.Tensor], layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Keep the captured features of ``layers`` only, raising when one is missing."""
    missing = [layer for layer in layers if layer not in features]
    if missing:
        raise ValueError(f"no captured auxiliary features for layers {missing}")
    return {layer: features[layer] for layer in layers}
