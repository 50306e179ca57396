"""The multi-stream model: a frozen auxiliary UNet feeds task attention in a trainable main UNet.

For B images and T requested tasks, ``MultiStreamUNet`` makes two UNet calls (StableMTL paper §3.3, run the
way the paper's model allows rather than the official per-task loop, which costs T + T(T-1) passes):

1. one batched auxiliary call over every auxiliary task needed by any requested task (``A*B`` rows, under
   no-grad), capturing each transformer block's features;
2. one batched main call over the ``T*B`` (task, image) rows, where row (m, b) attends at each pixel to the
   auxiliary features of image b for the model's tasks other than m (``exclude_main_task``).

The auxiliary features depend only on (image, auxiliary task), so computing them once and sharing them
between main tasks is exact. Rows are ordered task-major: row ``j*B + b`` is task ``tasks[j]``, image ``b``.
The number of tasks N is whatever the task attention was built for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from stablemtl.models.attention_processors import (
    FeatureCapture,
    TaskAttentionState,
    aux_feature_layers,
    install_task_attention,
)
from stablemtl.models.task_attention import TaskAttention
from stablemtl.models.task_masking import TaskMasking
from stablemtl.models.task_tokens import TaskEmbeddings


@dataclass
class MultiStreamOutput(BaseOutput):
    """``main``: ``{requested task: (B, 4, h, w)}`` x0 latents of the main stream. ``aux``: ``{auxiliary task:
    (B, 4, h, w)}`` the auxiliary (single-stream) UNet's latents, a free by-product of the feature pass."""

    main: dict[str, torch.Tensor]
    aux: dict[str, torch.Tensor]


class MultiStreamUNet(torch.nn.Module):
    """Main UNet + frozen auxiliary UNet + ``TaskAttention``, as one module (wrap this one in DDP: the
    processors call the task attention from inside the main UNet, not through its own ``forward``).

    Args:
        unet: the trainable main ``UNet2DConditionModel`` (12 input channels).
        aux_unet: the frozen auxiliary UNet (the stage-1 model); set to eval and ``requires_grad_(False)``.
        task_attention: weights built for the UNets' transformer blocks and the model's tasks.
        exclude_main_task: a row never attends to its own task's auxiliary features (official default).
        aux_tasks: the auxiliary task set (default: every task of ``task_attention``).
        capture_point: where the auxiliary features are read (``attention_processors.CAPTURE_POINTS``).
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        aux_unet: torch.nn.Module,
        task_attention: TaskAttention,
        exclude_main_task: bool = True,
        aux_tasks: Sequence[str] | None = None,
        capture_point: str = "self_attn_residual",
    ):
        super().__init__()
        if unet is aux_unet:
            raise ValueError("unet and aux_unet must be two modules (the auxiliary one stays frozen)")
        self.unet = unet
        self.aux_unet = aux_unet.eval().requires_grad_(False)
        self.task_attention = task_attention
        self.exclude_main_task = bool(exclude_main_task)
        known = task_attention.task_names
        aux_tasks = list(known if aux_tasks is None else aux_tasks)
        unknown = [t for t in aux_tasks if t not in known]
        if unknown or not aux_tasks:
            raise ValueError(f"aux_tasks {aux_tasks} must be a non-empty subset of the model's tasks {known}")
        self.aux_task_set = [t for t in known if t in aux_tasks]
        self.capture = FeatureCapture(capture_point)
        self.state = TaskAttentionState(task_attention)
        self.install_processors()

    @property
    def tasks(self) -> list[str]:
        return list(self.task_attention.task_names)

    def train(self, mode: bool = True) -> MultiStreamUNet:
        super().train(mode)
        self.aux_unet.eval()  # frozen stream: no dropout, ever
        return self

    def install_processors(self) -> None:
        """(Re)install the capture and task-attention processors; cheap when they are in place. Called before
        every forward, so ``enable_xformers_memory_efficient_attention`` or a ``set_attn_processor`` on
        either UNet cannot silently switch the task attention off."""
        self.capture.install(self.aux_unet)
        install_task_attention(self.unet, self.task_attention, self.state)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the main UNet's blocks in the backward pass (the auxiliary one runs without grad)."""
        self.unet.enable_gradient_checkpointing()

    def enable_xformers_memory_efficient_attention(self) -> None:
        """xformers in both UNets: diffusers' switch replaces every processor, then ours are reinstalled
        (capture keeps the xformers processor inside; injection uses xformers itself on CUDA)."""
        self.unet.enable_xformers_memory_efficient_attention()
        self.aux_unet.enable_xformers_memory_efficient_attention()
        self.state.use_xformers = True
        self.install_processors()

    def aux_tasks_for(self, tasks: Sequence[str]) -> list[str]:
        """Auxiliary tasks any of ``tasks`` attends to, in the model's task order."""
        needed = set()
        for task in tasks:
            needed.update(t for t in self.aux_task_set if not (self.exclude_main_task and t == task))
        return [t for t in self.aux_task_set if t in needed]

    def check_inputs(
        self, samples: Mapping[str, torch.Tensor], tasks: Sequence[str], needed: Sequence[str]
    ) -> None:
        if not tasks or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be a non-empty list of distinct task names, got {list(tasks)}")
        unknown = [t for t in tasks if t not in self.tasks]
        if unknown:
            raise ValueError(
                f"tasks {unknown} are unknown to the task attention; known: {', '.join(self.tasks)}"
            )
        missing = [t for t in (*tasks, *needed) if t not in samples]
        if missing:
            raise ValueError(
                f"samples has no UNet input for tasks {sorted(set(missing))} (needed as main or aux)"
            )
        shapes = {tuple(samples[t].shape) for t in (*tasks, *needed)}
        if len(shapes) != 1 or len(next(iter(shapes))) != 4:
            raise ValueError(f"samples must all be (B, C, h, w) tensors of one shape, got {sorted(shapes)}")

    def forward(
        self,
        samples: Mapping[str, torch.Tensor],
        tasks: Sequence[str],
        task_tokens: TaskEmbeddings,
        timestep: int | torch.Tensor = 999,
        masking: TaskMasking | None = None,
    ) -> MultiStreamOutput:
        """Predict the x0 latents of ``tasks`` for a batch of images.

        Args:
            samples: ``{task: (B, 12, h, w)}`` UNet inputs of each image for that task (frames' latents and
                the zero target), for every requested task and every auxiliary task they need
                (``aux_tasks_for(tasks)``).
            tasks: the T requested (main) tasks.
            task_tokens: the cached task-prompt embeddings.
            timestep: the fixed timestep (an int or a 0-d tensor).
            masking: task masking (applied only while ``task_attention`` is in training mode).
        """
        tasks = list(tasks)
        aux = self.aux_tasks_for(tasks)
        self.check_inputs(samples, tasks, aux)
        self.install_processors()
        count = samples[tasks[0]].shape[0]
        aux_out: dict[str, torch.Tensor] = {}
        if aux:
            features, aux_latents = self.aux_features(samples, aux, task_tokens, timestep)
            aux_out = dict(zip(aux, aux_latents.split(count)))
            main_tasks = [t for t in tasks for _ in range(count)]
            device = aux_latents.device
            image_index = torch.arange(count, device=device).repeat(len(tasks))  # [T*B]
            visible = torch.tensor(
                [[not (self.exclude_main_task and a == m) for a in aux] for m in main_tasks], device=device
            )  # [T*B,A]
            self.state.set(features, aux, main_tasks, image_index, visible, masking)
        else:
            self.state.clear()  # nothing to attend to: the main stream is the single-stream model
        try:
            latents = self._unet_call(self.unet, samples, tasks, task_tokens, timestep)
        finally:
            # Keep the features for a backward pass that recomputes blocks (gradient checkpointing) but
            # drop the capture records, which only the auxiliary call needs.
            self.capture.reset()
        return MultiStreamOutput(main=dict(zip(tasks, latents.split(count))), aux=aux_out)

    @torch.no_grad()
    def aux_features(
        self, samples: Mapping[str, torch.Tensor], aux: Sequence[str], task_tokens: TaskEmbeddings, timestep
    ) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """One auxiliary call over ``aux`` -> (``{layer: (A, B, N, C)}`` features of the task attention's
        active layers, ``(A*B, 4, h, w)`` auxiliary latents)."""
        count = samples[aux[0]].shape[0]
        self.capture.reset()
        latents = self._unet_call(self.aux_unet, samples, aux, task_tokens, timestep)
        captured = aux_feature_layers(self.capture.features(), self.task_attention.active_layers)
        features = {
            layer: value.reshape(len(aux), count, *value.shape[1:]).detach()
            for layer, value in captured.items()
        }
        self.capture.reset()
        return features, latents

    @staticmethod
    def _unet_call(unet, samples, tasks, task_tokens: TaskEmbeddings, timestep) -> torch.Tensor:
        """One UNet call over rows (task-major, then image) -> ``(T*B, 4, h, w)``."""
        sample = torch.cat([samples[t] for t in tasks])  # [T*B,C,h,w]
        count = samples[tasks[0]].shape[0]
        dtype = next(unet.parameters()).dtype
        hidden, mask = task_tokens.batch(tasks, device=sample.device, dtype=dtype)  # [T,L,D], [T,L]
        hidden = hidden.repeat_interleave(count, dim=0)  # [T*B,L,D]
        mask = None if mask is None else mask.repeat_interleave(count, dim=0)
        steps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        return unet(
            sample.to(dtype),
            steps,
            encoder_hidden_states=hidden,
            encoder_attention_mask=mask,
            return_dict=False,
        )[0]
