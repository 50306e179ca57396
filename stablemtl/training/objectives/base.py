"""The objective plug of the shared training loop: what one model contributes to training.

The loop (:mod:`stablemtl.training.loop`) owns everything every model shares: accelerate (devices, DDP,
mixed precision, gradient accumulation), the task-isolated sampler, the optimizer and learning-rate
schedule, EMA, exact resume, checkpoints, trackers, validation and the push to the Hub. A model
(StableMTL stage 1 or 2, a baseline, LoRA adapters) plugs in as an :class:`Objective`: it names its
trainable modules, computes the loss of one task-isolated micro-batch, predicts for validation and
writes its final model folder. ``docs/architecture.md`` shows how to add one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch


class Objective(ABC):
    """One model's part in training.

    ``modules`` arguments are the trainable modules by name, as :meth:`trainable_modules` returned them
    but prepared by accelerate (possibly DDP-wrapped) in :meth:`loss`, and unwrapped in :meth:`predict`
    and :meth:`save_model`.
    """

    # DDP must look for parameters without a gradient (e.g. one head per task-isolated micro-batch).
    ddp_find_unused_parameters: bool = False

    @abstractmethod
    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        """The modules whose parameters the optimizer updates, by name (the order is kept)."""

    def setup(self, device: torch.device, weight_dtype: torch.dtype) -> None:  # noqa: B027 (optional hook)
        """Move frozen parts (VAE, auxiliary networks) to ``device``; compute dtype ``weight_dtype``."""

    @abstractmethod
    def loss(self, modules: Mapping[str, torch.nn.Module], groups: Sequence[Mapping]) -> torch.Tensor:
        """The float32 scalar loss of one micro-batch.

        ``groups``: collated per-task groups (:func:`stablemtl.data.collate_task_batch`), each with
        ``task``, ``image`` ``[B,3,H,W]`` in [0, 1], optional ``next_image``, ``label`` ``[B,C,H,W]`` and
        ``valid`` ``[B,H,W]`` bool. Under task isolation there is exactly one group.
        """

    @abstractmethod
    def predict(
        self,
        modules: Mapping[str, torch.nn.Module],
        images: torch.Tensor,
        next_images: torch.Tensor | None,
        tasks: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        """Predictions ``{task: [B,C,H,W]}`` in each task's ``decode`` space for images in [0, 1]."""

    @abstractmethod
    def save_model(self, modules: Mapping[str, torch.nn.Module], output_dir: Path) -> None:
        """Write the final model (EMA weights applied) into ``output_dir``, loadable by its class."""

    def training_info(self) -> dict:
        """Facts about the run for the model card (merged by :meth:`save_model` where it writes one)."""
        return {}
