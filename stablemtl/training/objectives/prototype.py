"""The task-prototype baseline as an objective of the shared training loop (docs/baselines-prototype.md).

One micro-batch group of task m: the label is mapped into m's prediction space by its ``Task``
(``decode(encode(label))``: affine-invariant depth in [0, 1], per-axis normalised flows, class ids, ...), so
the model's supervised loss compares like with like. The model runs every task's decoder (TKE and TC
cover all tasks of every image) and only m's head (the other tasks are unlabelled in this micro-batch).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stablemtl.models.baselines.backbones import ResNetEncoder
from stablemtl.models.baselines.prototype import PrototypeModel
from stablemtl.models.baselines.prototype_losses import PrototypeLossWeights
from stablemtl.tasks import get_task
from stablemtl.training.objectives.base import Objective

# Output kind of each built-in task's prediction space (see stablemtl.tasks); a new task adds its entry.
OUTPUT_KINDS = {
    "semantic": "classification",
    "depth": "unit_interval",
    "normal": "unit_vector",
    "optical_flow": "signed_unit_interval",
    "scene_flow": "signed_unit_interval",
    "albedo": "unit_interval",
    "shading": "unit_interval",
}


@dataclass
class PrototypeConfig:
    """Settings of the prototype model and its losses (YAML keys / flags beside ``TrainConfig``).

    Defaults and their reasons: docs/baselines-prototype.md.
    """

    prototype_pretrained_backbone: str | None = field(
        default=None,
        metadata={
            "help": "ImageNet ResNet for the encoder (transformers; Hub id or folder); None: random init"
        },
    )
    prototype_backbone_config: dict[str, Any] | None = field(
        default=None, metadata={"help": "ResNetConfig dict of the 6-channel encoder (JSON); None: ResNet-18"}
    )
    prototype_feature_channels: int = field(
        default=256, metadata={"help": "c, width of the shared (quantised) feature"}
    )
    prototype_task_feature_channels: int = field(
        default=256, metadata={"help": "c_t, width of each task feature"}
    )
    prototype_codebook_size: int = field(
        default=4096, metadata={"help": "K, entries of the vector-quantisation codebook"}
    )
    prototype_commitment_beta: float = field(
        default=0.25, metadata={"help": "beta of the VQ commitment term"}
    )
    prototype_slot_dim: int = field(
        default=1024, metadata={"help": "d, dimension of the task-prototype slots"}
    )
    prototype_temperature: float = field(
        default=0.1, metadata={"help": "temperature of the cosine affinities and of TC"}
    )
    prototype_retrieval_blocks: int = field(
        default=2, metadata={"help": "cross-attention blocks of the knowledge retrieval"}
    )
    prototype_retrieval_heads: int = field(
        default=8, metadata={"help": "attention heads of the knowledge retrieval"}
    )
    prototype_seed: int = field(default=0, metadata={"help": "seed of the model's initialisation"})
    lambda_tae: float = field(
        default=1.0, metadata={"help": "lambda_1, weight of the TAE image reconstruction"}
    )
    lambda_akg: float = field(default=0.1, metadata={"help": "lambda_2, weight of TKE + alpha * TC"})
    alpha_tc: float = field(
        default=1.0, metadata={"help": "alpha, weight of the task-consistency loss inside the lambda_2 term"}
    )
    use_task_consistency: bool = field(
        default=True, metadata={"help": "add TC; --no-use_task_consistency is the 'TKE only' ablation"}
    )
    vq_weight: float = field(default=1.0, metadata={"help": "weight of the codebook + commitment terms"})

    def __post_init__(self) -> None:
        self.loss_weights()  # validates the weights

    def loss_weights(self) -> PrototypeLossWeights:
        return PrototypeLossWeights(
            tae=self.lambda_tae,
            akg=self.lambda_akg,
            tc=self.alpha_tc,
            use_task_consistency=self.use_task_consistency,
            vq=self.vq_weight,
        )


def task_outputs(tasks: Sequence[str]) -> tuple[dict[str, int], dict[str, str], list[str]]:
    """``(output_channels, output_kinds, pair_tasks)`` of ``tasks`` from the task registry.

    A discrete task (class ids) is a classification with ``num_classes`` outputs; a continuous one has
    its ``prediction_channels`` and the kind in ``OUTPUT_KINDS`` that gives its range.
    """
    channels, kinds = {}, {}
    for name in tasks:
        task = get_task(name)
        if task.is_discrete:
            kinds[name], channels[name] = "classification", int(task.num_classes)
            continue
        if OUTPUT_KINDS.get(name, "classification") == "classification":
            raise ValueError(
                f"task {name!r} has no output kind for the prototype model; add it to {__name__}.OUTPUT_KINDS"
            )
        kinds[name], channels[name] = OUTPUT_KINDS[name], int(task.prediction_channels)
    return channels, kinds, [t for t in tasks if get_task(t).needs_pair]


def build_prototype_model(tasks: Sequence[str], config: PrototypeConfig) -> PrototypeModel:
    """A ``PrototypeModel`` for ``tasks``; with ``prototype_pretrained_backbone`` its encoder starts from
    that ResNet, stem inflated to the 6-channel frame pair."""
    channels, kinds, pairs = task_outputs(tasks)
    pretrained = None
    backbone_config = config.prototype_backbone_config
    if config.prototype_pretrained_backbone is not None:
        pretrained = ResNetEncoder.from_pretrained(config.prototype_pretrained_backbone, in_channels=6)
        backbone_config = pretrained.config_dict()
    model = PrototypeModel(
        list(tasks),
        channels,
        kinds,
        pairs,
        backbone_config=backbone_config,
        feature_channels=config.prototype_feature_channels,
        task_feature_channels=config.prototype_task_feature_channels,
        codebook_size=config.prototype_codebook_size,
        commitment_beta=config.prototype_commitment_beta,
        slot_dim=config.prototype_slot_dim,
        temperature=config.prototype_temperature,
        retrieval_blocks=config.prototype_retrieval_blocks,
        retrieval_heads=config.prototype_retrieval_heads,
        seed=config.prototype_seed,
    )
    if pretrained is not None:
        model.shared.encoder.load_state_dict(pretrained.state_dict())
    return model


class PrototypeObjective(Objective):
    """Trains a ``PrototypeModel`` (module name ``"model"``) with ``L_MTL + lambda_1 L_rec + L_vq +
    lambda_2 (L_tke + alpha L_tc)`` on task-isolated micro-batches.

    The heads of the tasks absent from a micro-batch receive no gradient in it: under DDP the loop must
    wrap with ``find_unused_parameters=True`` (``self.ddp_find_unused_parameters``).
    """

    ddp_find_unused_parameters = True

    def __init__(self, config: PrototypeConfig, tasks: Sequence[str], model: PrototypeModel | None = None):
        self.config = config
        self.weights = config.loss_weights()
        self.model = model if model is not None else build_prototype_model(tasks, config)
        if list(self.model.tasks) != list(tasks):
            raise ValueError(f"model tasks {self.model.tasks} differ from the run's tasks {list(tasks)}")

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {"model": self.model}

    def targets(self, group: Mapping, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """A group's label in its task's prediction space and the valid mask ``[B, H, W]``."""
        task = get_task(group["task"])
        image3, valid = task.encode(group["label"].to(device), group["valid"].to(device))
        return task.decode(image3), valid

    def loss(self, modules: Mapping[str, torch.nn.Module], groups: Sequence[Mapping]) -> torch.Tensor:
        if not groups:
            raise ValueError("a micro-batch needs at least one group")
        model = modules["model"]
        core: PrototypeModel = getattr(model, "module", model)  # DDP-wrapped or not
        device = next(core.parameters()).device
        total = torch.zeros((), device=device)
        for group in groups:
            images = group["image"].to(device)
            next_images = group.get("next_image")
            next_images = next_images.to(device) if next_images is not None else None
            targets = {group["task"]: self.targets(group, device)}
            # Forward through the (possibly DDP-wrapped) module so gradient synchronisation sees it.
            out = model(images, next_images, feature_tasks=core.tasks, head_tasks=list(targets))
            total = total + self.weights.combine(core.loss_terms(out, targets))
        return (total / len(groups)).float()

    @torch.no_grad()
    def predict(
        self,
        modules: Mapping[str, torch.nn.Module],
        images: torch.Tensor,
        next_images: torch.Tensor | None,
        tasks: Sequence[str],
    ) -> dict[str, torch.Tensor]:
        model = modules["model"]
        return getattr(model, "module", model).predict(images, next_images, list(tasks))

    def save_model(self, modules: Mapping[str, torch.nn.Module], output_dir: Path) -> None:
        """Write the model folder into ``output_dir`` (which also holds checkpoints and logs).

        The model saves itself into a hidden sibling; its files then move in, ``config.json`` last, so the
        folder loads only once it is complete."""
        model = modules["model"]
        model = getattr(model, "module", model)
        output_dir = Path(output_dir)
        tmp = output_dir / ".tmp-prototype"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        (output_dir / "config.json").unlink(missing_ok=True)
        for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):
            os.replace(entry, output_dir / entry.name)
        tmp.rmdir()
