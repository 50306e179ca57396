"""HiTT as an objective of the shared training loop: phase 1 (partial labels), phase 2 (pseudo supervision).

Phase 1 (``phase=1``): the supervised mixture loss of each micro-batch's task on its own labels (paper Eq. 2,
8-10). Phase 2 (``phase=2``): a fresh model trained with ``L_s + L_p + L_f`` (Eq. 2-4), the pseudo labels
and feature targets discovered offline by the frozen phase-1 model (``stablemtl.training.hitt_pseudo``,
run by ``train_scripts/train_hitt.py`` before training). The samples of phase 2 carry them as
``group["pseudo"]`` (``hitt_pseudo.collate_pseudo``): ``{"labelled": {task: [B] bool}, "targets": {task:
{"value", "confidence", "feature", "feature_confidence"}}}``. A training micro-batch without them is an
error; validation groups (no gradient) have none and get the supervised loss alone.

Normalisation: the paper's ``1/T`` applies to every term. Under task-isolated micro-batches, a batch of
task ``t`` on one-label images gives exactly the paper's per-image loss
``(1/T) [L_t + sum_{i != t} L_p,i + sum_i L_f,i]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stablemtl.models.baselines.hitt import HiTTModel
from stablemtl.models.baselines.hitt_losses import (
    feature_loss,
    mixture_loss_map,
    pseudo_label_loss,
    supervised_loss,
)
from stablemtl.training.hitt_pseudo import collate_pseudo
from stablemtl.training.hitt_targets import decode_space_targets, fit_model_centres, head_specs
from stablemtl.training.objectives.base import Objective


@dataclass
class HiTTConfig:
    """Settings of a HiTT run (parsed beside ``TrainConfig`` from the same YAML/flags)."""

    phase: int = field(
        default=1,
        metadata={"help": "1: supervised on the partial labels; 2: retrain from scratch with pseudo targets"},
    )
    phase1_model: str | None = field(
        default=None, metadata={"help": "phase 2: folder of the trained phase-1 HiTT model"}
    )
    pseudo_targets_dir: str | None = field(
        default=None,
        metadata={"help": "phase 2: folder of the discovered targets (default: <output_dir>/pseudo_targets)"},
    )
    backbone: str | None = field(
        default=None, metadata={"help": "Hub id or folder of a pretrained transformers ResNet (random init)"}
    )
    token_dim: int = field(
        default=256, metadata={"help": "width C of the task tokens, fused features and heads"}
    )
    num_heads: int = field(default=8, metadata={"help": "heads of the intra-task attention"})
    fuse_stride: int = field(
        default=8, metadata={"help": "stride of the grid where scales are fused and attention runs (4-32)"}
    )
    aspp_rates: list[int] = field(
        default_factory=lambda: [6, 12, 18], metadata={"help": "dilation rates of the ASPP heads"}
    )
    multi_scale: bool = field(
        default=True, metadata={"help": "task tokens at all four backbone scales (paper A.4)"}
    )
    heads: dict[str, dict[str, Any]] = field(
        default_factory=dict, metadata={"help": 'per-task head overrides, e.g. {"depth": {"tau": 0.5}}'}
    )
    use_global_tokens: bool = field(
        default=True, metadata={"help": "global task tokens theta (ablation: w/o theta)"}
    )
    use_inter_task_attention: bool = field(
        default=True, metadata={"help": "inter-task attention (ablation: w/o inter)"}
    )
    use_intra_task_attention: bool = field(
        default=True, metadata={"help": "intra-task attention (ablation: w/o intra)"}
    )
    use_fine_grained_tokens: bool = field(
        default=True, metadata={"help": "fine-grained tokens phi (ablation: w/o phi)"}
    )
    use_orthogonal_embeddings: bool = field(
        default=True, metadata={"help": "orthogonal embeddings of phi (ablation: w/o OE)"}
    )
    mtl_baseline: bool = field(
        default=False, metadata={"help": "every HiTT part off: the MTL baseline with the same backbone"}
    )
    use_pseudo_label_loss: bool = field(
        default=True, metadata={"help": "phase 2: pseudo-label loss L_p (off: 'HiTT + L_f')"}
    )
    use_feature_loss: bool = field(
        default=True, metadata={"help": "phase 2: feature loss L_f (off: 'HiTT + L_p')"}
    )
    orthogonal_basis: str = field(
        default="identity", metadata={"help": "basis o of the orthogonal embeddings: identity | random"}
    )
    regression_weight_on: str = field(
        default="regression",
        metadata={"help": "lambda=0.1 on: regression (paper Eq. 10) | classification (released code)"},
    )
    confidence_sharpening: float = field(
        default=1.0, metadata={"help": "logit factor before the pseudo-label confidence (code: 5)"}
    )
    fit_centres: bool = field(
        default=True, metadata={"help": "k-means the vector-valued centres on training labels (paper A.3)"}
    )
    centre_points: int = field(
        default=100_000, metadata={"help": "label values per task for the k-means centres"}
    )
    model_seed: int = field(default=0, metadata={"help": "seed of the model initialisation"})

    def __post_init__(self) -> None:
        if self.phase not in (1, 2):
            raise ValueError(f"phase must be 1 or 2, got {self.phase}")
        if self.phase == 2 and not self.phase1_model:
            raise ValueError("phase 2 needs phase1_model, the folder of the trained phase-1 model")

    def model_kwargs(self) -> dict[str, Any]:
        names = (
            "backbone", "token_dim", "num_heads", "fuse_stride", "aspp_rates", "multi_scale",
            "use_global_tokens", "use_inter_task_attention", "use_intra_task_attention",
            "use_fine_grained_tokens", "use_orthogonal_embeddings", "orthogonal_basis",
            "confidence_sharpening", "mtl_baseline",
        )  # fmt: skip
        return {name: getattr(self, name) for name in names} | {"seed": self.model_seed}


class HiTTObjective(Objective):
    """Trains a :class:`HiTTModel` on task-isolated micro-batches.

    Args:
        config: the HiTT settings.
        tasks: the tasks of the run (the loop's task list).
        samples: un-augmented training samples to fit the quantisation centres on (phase 1; phase 2
            copies the phase-1 centres, which the stored pseudo labels refer to).
    """

    # A task-isolated micro-batch runs one task's head: under DDP the other heads get no gradient.
    ddp_find_unused_parameters = True

    def __init__(self, config: HiTTConfig, tasks: Sequence[str], samples: Sequence[Mapping] | None = None):
        self.config = config
        self.model = HiTTModel(head_specs(tasks, config.heads), **config.model_kwargs())
        if config.phase == 2:
            teacher = HiTTModel.from_pretrained(config.phase1_model)
            missing = [t for t in self.model.task_names if t not in teacher.task_names]
            if missing:
                raise ValueError(f"phase1_model {config.phase1_model!r} does not predict tasks {missing}")
            for task in self.model.task_names:
                if self.model.head(task).is_regression:
                    self.model.set_centres(task, teacher.task_centres(task))
        elif config.fit_centres and samples is not None:
            fit_model_centres(
                self.model, samples, points_per_task=config.centre_points, seed=config.model_seed
            )

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"hitt": self.model}

    def loss(self, modules: Mapping[str, torch.nn.Module], groups: Sequence[Mapping]) -> torch.Tensor:
        model = modules["hitt"]
        heads = self.model  # the unwrapped model: heads, centres, target ids (DDP wraps ``model``)
        total = torch.zeros((), device=self._device(model))
        count = len(heads.task_names)
        for group in groups:
            task = group["task"]
            images = group["image"].to(total.device)
            next_images = group.get("next_image")
            next_images = None if next_images is None else next_images.to(total.device)
            # Phase 1 needs only this task's head; phase 2 supervises every task.
            out = model(images, next_images, None if self.config.phase == 2 else [task])
            target, valid = decode_space_targets(
                task, group["label"].to(total.device), group["valid"].to(total.device)
            )
            ids = heads.target_ids(task, target)
            loss_map = self._loss_map(heads, task, out.logits[task], ids, target, valid)
            total = total + supervised_loss(loss_map, valid) / count
            if "pseudo" not in group and group.get("extras"):  # stored targets served by the source
                group = {**group, "pseudo": collate_pseudo(group["extras"], heads.task_names)}
            if self.config.phase == 2 and (group.get("pseudo") is not None or torch.is_grad_enabled()):
                total = total + self._pseudo_terms(heads, out, task, group) / count
        return total.float()

    def _loss_map(self, heads: HiTTModel, task, logits, ids, target, valid) -> torch.Tensor:
        spec = heads.head(task)
        centres = heads.task_centres(task) if spec.is_regression else None
        values = target if spec.is_regression else None
        return mixture_loss_map(logits, ids, values, valid, spec, centres, self.config.regression_weight_on)

    def _pseudo_terms(self, heads: HiTTModel, out, task: str, group: Mapping) -> torch.Tensor:
        pseudo = group.get("pseudo")
        if pseudo is None:
            raise ValueError(
                "phase 2 micro-batches need stored pseudo targets (group['pseudo']); train through "
                "train_scripts/train_hitt.py, which discovers and attaches them"
            )
        device = out.logits[task].device
        total = torch.zeros((), device=device)
        for name, fields in pseudo["targets"].items():
            if heads.head(name).pair and group.get("next_image") is None:
                continue  # the forward pass saw a static pair: its flows do not match the stored targets
            labelled = pseudo["labelled"][name].to(device)
            if name == task:
                labelled = torch.ones_like(labelled)  # this micro-batch's own labels
            fields = {k: v.to(device) for k, v in fields.items()}
            if self.config.use_pseudo_label_loss:
                value = fields["value"]
                ids = heads.target_ids(name, value)
                everywhere = torch.ones_like(ids, dtype=torch.bool)
                loss_map = self._loss_map(heads, name, out.logits[name], ids, value, everywhere)
                mask = fields["confidence"] > heads.head(name).tau
                total = total + pseudo_label_loss(loss_map, mask, labelled)
            if self.config.use_feature_loss:
                total = total + feature_loss(
                    out.features[name], fields["feature"], fields["feature_confidence"], labelled
                )
        return total

    @staticmethod
    def _device(model: torch.nn.Module) -> torch.device:
        return next(model.parameters()).device

    @torch.no_grad()
    def predict(
        self,
        modules: Mapping[str, torch.nn.Module],
        images: torch.Tensor,
        next_images: torch.Tensor | None,
        tasks: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        model = modules["hitt"]
        device = self._device(model)
        next_images = None if next_images is None else next_images.to(device)
        return model.predict(images.to(device), next_images, list(tasks))

    def save_model(self, modules: Mapping[str, torch.nn.Module], output_dir: Path) -> None:
        """``config.json`` (``"model_type": "hitt"``) + ``model.safetensors``, each written atomically."""
        modules["hitt"].save_pretrained(Path(output_dir))

    def training_info(self) -> dict:
        return {"model_type": "hitt", "phase": self.config.phase, "hitt": self.model.config}
