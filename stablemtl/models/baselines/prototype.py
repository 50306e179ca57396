"""Task-prototype knowledge retrieval for partially annotated multi-task dense prediction.

A re-implementation, from the paper's description, of Oh, Kim and Kim, "Task Prototype-Based Knowledge
Retrieval for Multi-Task Learning from Partially Annotated Data" (AAAI 2026, arXiv 2601.07474); no official
code exists. Every choice the paper leaves open is listed in ``docs/baselines-prototype.md``.

Data flow (T tasks, input ``[B, 3, H, W]`` in [0, 1], features at stride 8, ``h = H/8``):

1. Shared encoder: a ResNet-18 on a stacked frame pair ``[B, 6, H, W]`` (the frame and its next frame for
   the flow tasks, the frame twice, i.e. a still scene, for the single-frame tasks), its four stages fused
   at stride 8 -> encoded feature f_e ``[B, c, h, w]``.
2. Vector quantisation (paper §3, shared space): nearest entry of a learnable K-entry codebook per position,
   with the straight-through estimator -> f_q; the integrated feature is f_i = f_e + f_q.
   Task-agnostic enhancement (TAE): a light decoder reconstructs the stacked input from f_i
   (steps 1-2: ``shared_space.py``).
3. Task decoders: f_i -> task feature f_t ``[B, c_t, h, w]`` per task.
4. Task prototype: f_t pooled and projected to f^_t ``[B, d]``; cosine affinity to the T slots; the
   affinity-weighted slots are the task-affinity features ``[B, T, d]`` (``task_prototype.py``).
5. Knowledge retrieval: cross-attention of f_t (queries) over the task-affinity features -> f_tr
   (``knowledge_retrieval.py``), then a task head, upsampled to ``H x W``.

Task outputs are configured, not looked up (this layer knows nothing of ``stablemtl.tasks``): per task its
channel count and an output kind (``prototype_losses.OUTPUT_KINDS``): ``classification`` (logits, predicted
as int64 class ids ``[B, 1, H, W]``), ``unit_interval`` (sigmoid, [0, 1]), ``signed_unit_interval`` (tanh,
[-1, 1]) or ``unit_vector`` (L2-normalised).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import save_model
from torch import nn

from stablemtl.models.baselines.backbones import resnet18_config
from stablemtl.models.baselines.knowledge_retrieval import KnowledgeRetrievalTransformer
from stablemtl.models.baselines.prototype_losses import (
    OUTPUT_KINDS,
    supervised_task_loss,
    task_consistency_loss,
    task_knowledge_embedding_loss,
)
from stablemtl.models.baselines.shared_space import QuantisedSharedSpace, conv_block
from stablemtl.models.baselines.task_prototype import TaskPrototype
from stablemtl.utils.atomic import atomic_path, atomic_write_text

MODEL_TYPE = "prototype"  # what stablemtl-eval reads from config.json to pick the class
FEATURE_STRIDE = 8


@dataclass
class PrototypeOutput:
    """What ``PrototypeModel.forward`` returns.

    Attributes:
        outputs: ``{task: [B, C, H, W]}`` for the head tasks: class logits, or the activated prediction.
        feature_tasks: the tasks whose prototype affinities were computed, in slot order.
        projected: ``[B, len(feature_tasks), d]`` projected task features f^_t.
        affinity_logits: ``[B, len(feature_tasks), T]`` cosine(f^_t, v_k) / temperature.
        reconstruction_loss: SmoothL1 of the TAE reconstruction (mean over the encoded inputs).
        vq_loss: codebook + beta * commitment loss (mean over the encoded inputs).
    """

    outputs: dict[str, torch.Tensor]
    feature_tasks: list[str]
    projected: torch.Tensor
    affinity_logits: torch.Tensor
    reconstruction_loss: torch.Tensor
    vq_loss: torch.Tensor


class PrototypeModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="stablemtl",
    paper_url="https://arxiv.org/abs/2601.07474",
    license="apache-2.0",
    tags=["multi-task-learning", "dense-prediction", "partially-annotated", "task-prototype"],
):
    """The task-prototype multi-task model (see the module docstring for the data flow).

    Args:
        tasks: task names, in slot order (slot t belongs to ``tasks[t]``).
        output_channels: ``{task: C}``, channels of each task's output (classes for classification).
        output_kinds: ``{task: kind}``, one of ``OUTPUT_KINDS``.
        pair_tasks: tasks predicted from the frame pair (the flows); they need ``next_images``.
        backbone_config: ``ResNetConfig`` dict of the shared encoder with 6 input channels (default: the
            ResNet-18 layout, random init; load pretrained weights into ``encoder`` afterwards).
        feature_channels: c, width of f_e, f_q and f_i.
        task_feature_channels: c_t, width of each f_t (divisible by ``retrieval_heads``).
        codebook_size: K, number of codebook entries.
        commitment_beta: beta of the VQ commitment term.
        slot_dim: d, prototype slot dimension (paper's best: 1024).
        temperature: of the cosine affinities (and of the TC loss).
        retrieval_blocks, retrieval_heads: depth and heads of the knowledge-retrieval transformer.
        seed: seeds the initialisation (the caller's RNG state is left untouched).
    """

    def __init__(
        self,
        tasks: list[str],
        output_channels: dict[str, int],
        output_kinds: dict[str, str],
        pair_tasks: list[str] | None = None,
        backbone_config: dict[str, Any] | None = None,
        feature_channels: int = 256,
        task_feature_channels: int = 256,
        codebook_size: int = 4096,
        commitment_beta: float = 0.25,
        slot_dim: int = 1024,
        temperature: float = 0.1,
        retrieval_blocks: int = 2,
        retrieval_heads: int = 8,
        seed: int = 0,
    ):
        super().__init__()
        tasks, pair_tasks = list(tasks), list(pair_tasks or [])
        _check_tasks(tasks, output_channels, output_kinds, pair_tasks)
        if task_feature_channels < 1:
            raise ValueError(f"task_feature_channels must be >= 1, got {task_feature_channels}")
        self.tasks = tasks
        self.pair_tasks = pair_tasks
        self.output_kinds = {t: output_kinds[t] for t in tasks}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.shared = QuantisedSharedSpace(
                backbone_config or resnet18_config(6).to_dict(),
                feature_channels,
                codebook_size,
                commitment_beta,
                seed,
            )
            self.task_decoders = nn.ModuleDict(
                {
                    t: nn.Sequential(
                        conv_block(feature_channels, task_feature_channels),
                        conv_block(task_feature_channels, task_feature_channels),
                    )
                    for t in tasks
                }
            )
            self.prototype = TaskPrototype(len(tasks), task_feature_channels, slot_dim, temperature)
            self.retrieval = KnowledgeRetrievalTransformer(
                task_feature_channels, slot_dim, retrieval_blocks, retrieval_heads
            )
            self.heads = nn.ModuleDict(
                {
                    t: nn.Sequential(
                        conv_block(task_feature_channels, task_feature_channels),
                        nn.Conv2d(task_feature_channels, output_channels[t], 1),
                    )
                    for t in tasks
                }
            )
        self.config: dict[str, Any] = {
            "tasks": tasks,
            "output_channels": {t: int(output_channels[t]) for t in tasks},
            "output_kinds": dict(self.output_kinds),
            "pair_tasks": pair_tasks,
            "backbone_config": self.shared.encoder.config_dict(),
            "feature_channels": feature_channels,
            "task_feature_channels": task_feature_channels,
            "codebook_size": codebook_size,
            "commitment_beta": commitment_beta,
            "slot_dim": slot_dim,
            "temperature": temperature,
            "retrieval_blocks": retrieval_blocks,
            "retrieval_heads": retrieval_heads,
            "seed": seed,
        }

    # -- forward ------------------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        next_images: torch.Tensor | None = None,
        feature_tasks: Sequence[str] | None = None,
        head_tasks: Sequence[str] | None = None,
    ) -> PrototypeOutput:
        """Run the model.

        Args:
            images: ``[B, 3, H, W]`` in [0, 1].
            next_images: ``[B, 3, H, W]`` in [0, 1], the next frames, or None.
            feature_tasks: tasks whose features and prototype affinities are computed (default: all).
                A pair task without ``next_images`` uses the still pair (its affinity needs no motion).
            head_tasks: subset of ``feature_tasks`` that also run retrieval and their head (default: all
                of ``feature_tasks``). A pair task here requires ``next_images``.
        """
        feature_tasks = list(self.tasks if feature_tasks is None else feature_tasks)
        head_tasks = list(feature_tasks if head_tasks is None else head_tasks)
        self._check_inputs(images, next_images, feature_tasks, head_tasks)
        inputs = {"still": torch.cat([images, images], dim=1)}
        if next_images is not None and any(t in self.pair_tasks for t in feature_tasks):
            inputs["pair"] = torch.cat([images, next_images], dim=1)
        encoded = {key: self.shared(x) for key, x in inputs.items()}  # key -> (f_i, rec, vq)

        task_features = {}
        for task in feature_tasks:
            key = "pair" if task in self.pair_tasks and "pair" in encoded else "still"
            task_features[task] = self.task_decoders[task](encoded[key][0])  # f_t [B,c_t,h,w]
        projected = torch.stack(
            [self.prototype.project(task_features[t]) for t in feature_tasks], 1
        )  # [B,T',d]
        affinity_logits = self.prototype.affinity_logits(projected)  # [B,T',T]
        affinity_features = self.prototype.affinity_features(affinity_logits)  # [B,T',T,d]

        outputs = {}
        for task in head_tasks:
            index = feature_tasks.index(task)
            refined = self.retrieval(task_features[task], affinity_features[:, index])  # f_tr
            logits = F.interpolate(
                self.heads[task](refined), size=images.shape[-2:], mode="bilinear", align_corners=False
            )
            outputs[task] = _activate(logits, self.output_kinds[task])
        return PrototypeOutput(
            outputs=outputs,
            feature_tasks=feature_tasks,
            projected=projected,
            affinity_logits=affinity_logits,
            reconstruction_loss=torch.stack([e[1] for e in encoded.values()]).mean(),
            vq_loss=torch.stack([e[2] for e in encoded.values()]).mean(),
        )

    # -- training -----------------------------------------------------------------------------------------
    def compute_losses(
        self,
        images: torch.Tensor,
        next_images: torch.Tensor | None,
        targets: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """Loss terms of one batch with partial labels (combine them with ``PrototypeLossWeights``).

        Args:
            images, next_images: as in ``forward``.
            targets: ``{task: (target, valid)}`` for the labelled tasks only: ``target`` in the prediction
                space (``[B, 1, H, W]`` int64 ids for classification, else ``[B, C, H, W]``), ``valid``
                ``[B, H, W]`` bool (all False for an image without that label). Absent tasks are unlabelled
                and get no supervised loss; TKE and TC use every task of every image.
        Returns ``{"supervised", "reconstruction", "vq", "tke", "tc"}`` float32 scalars; ``supervised`` is
        the sum of the labelled tasks' losses (prototype paper's L_MTL).
        """
        self._check_targets(targets)
        return self.loss_terms(self(images, next_images, self.tasks, list(targets)), targets)

    def loss_terms(
        self, out: PrototypeOutput, targets: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The terms of ``compute_losses`` from a forward output with ``feature_tasks`` = all tasks and
        ``head_tasks`` = the labelled ones. Under DDP call the wrapped model's forward, then this on the
        unwrapped model, so that gradient synchronisation sees the forward pass."""
        self._check_targets(targets)
        if out.feature_tasks != self.tasks or set(out.outputs) != set(targets):
            raise ValueError(
                f"out must come from forward(feature_tasks={self.tasks}, head_tasks={list(targets)}), got "
                f"feature_tasks={out.feature_tasks}, head_tasks={list(out.outputs)}"
            )
        supervised = out.projected.new_zeros((), dtype=torch.float32)
        for task, (target, valid) in targets.items():
            supervised = supervised + supervised_task_loss(
                out.outputs[task], target, valid, self.output_kinds[task]
            )
        slot_index = torch.arange(len(self.tasks), device=out.affinity_logits.device)
        return {
            "supervised": supervised,
            "reconstruction": out.reconstruction_loss.float(),
            "vq": out.vq_loss.float(),
            "tke": task_knowledge_embedding_loss(out.affinity_logits, slot_index),
            "tc": task_consistency_loss(out.projected, self.prototype.temperature),
        }

    def _check_targets(self, targets: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        unknown = [t for t in targets if t not in self.tasks]
        if unknown:
            raise ValueError(f"targets name tasks {unknown} that the model does not have ({self.tasks})")

    # -- inference ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, images: torch.Tensor, next_images: torch.Tensor | None, tasks: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Predictor contract: ``{task: [B, C, H, W]}`` in each task's prediction space.

        ``images`` / ``next_images`` ``[B, 3, H, W]`` in [0, 1] (next frames needed by pair tasks only).
        Classification tasks give int64 class ids ``[B, 1, H, W]``, the others float32 maps. Runs in eval
        mode and restores the previous mode afterwards.
        """
        tasks = [tasks] if isinstance(tasks, str) else list(tasks)
        parameter = next(self.parameters())
        images = _as_images(images, "images").to(parameter.device, parameter.dtype)
        if next_images is not None:
            next_images = _as_images(next_images, "next_images").to(parameter.device, parameter.dtype)
        was_training = self.training
        self.eval()
        try:
            outputs = self(images, next_images, feature_tasks=tasks, head_tasks=tasks).outputs
        finally:
            self.train(was_training)
        return {
            t: outputs[t].argmax(dim=1, keepdim=True)
            if self.output_kinds[t] == "classification"
            else outputs[t].float()
            for t in tasks
        }

    # -- persistence --------------------------------------------------------------------------------------
    def _save_pretrained(self, save_directory: Path) -> None:
        """Write ``model.safetensors`` and ``config.json`` (with ``model_type``), each atomically."""
        save_directory = Path(save_directory)
        config = {"model_type": MODEL_TYPE, **self.config}
        with atomic_path(save_directory / "model.safetensors") as tmp:
            save_model(self, str(tmp))
        atomic_write_text(save_directory / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")

    # -- checks -------------------------------------------------------------------------------------------
    def _check_inputs(
        self,
        images: torch.Tensor,
        next_images: torch.Tensor | None,
        feature_tasks: list[str],
        head_tasks: list[str],
    ) -> None:
        _as_images(images, "images")
        if next_images is not None and _as_images(next_images, "next_images").shape != images.shape:
            raise ValueError(
                f"next_images shape {tuple(next_images.shape)} must equal images shape {tuple(images.shape)}"
            )
        for name, names in (("feature_tasks", feature_tasks), ("head_tasks", head_tasks)):
            unknown = [t for t in names if t not in self.tasks]
            if unknown or len(set(names)) != len(names) or (name == "feature_tasks" and not names):
                raise ValueError(f"{name} must be distinct tasks of {self.tasks}, got {names}")
        if set(head_tasks) - set(feature_tasks):
            raise ValueError(f"head_tasks {head_tasks} must be a subset of feature_tasks {feature_tasks}")
        if next_images is None and any(t in self.pair_tasks for t in head_tasks):
            raise ValueError(f"next_images is required for {[t for t in head_tasks if t in self.pair_tasks]}")
        if min(images.shape[-2:]) < 32:
            raise ValueError(
                f"images must be at least 32x32 (ResNet stride 32), got {tuple(images.shape[-2:])}"
            )


def _activate(logits: torch.Tensor, kind: str) -> torch.Tensor:
    """Head output -> prediction space (classification keeps the logits; ``predict`` takes the argmax)."""
    if kind == "unit_interval":
        return torch.sigmoid(logits)
    if kind == "signed_unit_interval":
        return torch.tanh(logits)
    if kind == "unit_vector":
        return F.normalize(logits, dim=1, eps=1e-6)
    return logits


def _as_images(images: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(f"{name} must be a float tensor [B, 3, H, W] in [0, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name} must be [B, 3, H, W] in [0, 1], got shape {tuple(images.shape)}")
    return images


def _check_tasks(
    tasks: list[str],
    output_channels: Mapping[str, int],
    output_kinds: Mapping[str, str],
    pair_tasks: list[str],
) -> None:
    if not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be a non-empty list of distinct names, got {tasks}")
    for name, mapping in (("output_channels", output_channels), ("output_kinds", output_kinds)):
        if set(mapping) != set(tasks):
            raise ValueError(f"{name} must have exactly the keys {tasks}, got {sorted(mapping)}")
    for task in tasks:
        kind, channels = output_kinds[task], output_channels[task]
        if kind not in OUTPUT_KINDS:
            raise ValueError(f"output_kinds[{task!r}] must be one of {OUTPUT_KINDS}, got {kind!r}")
        minimum = 2 if kind in ("classification", "unit_vector") else 1
        if not isinstance(channels, int) or channels < minimum:
            raise ValueError(
                f"output_channels[{task!r}] must be an int >= {minimum} for {kind}, got {channels}"
            )
    if set(pair_tasks) - set(tasks) or len(set(pair_tasks)) != len(pair_tasks):
        raise ValueError(f"pair_tasks must be distinct names from tasks {tasks}, got {pair_tasks}")
