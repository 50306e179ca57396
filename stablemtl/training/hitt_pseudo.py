"""HiTT phase 2: discover pseudo supervision offline with the frozen phase-1 model, store it, serve it.

HiTT paper §3.3 / §A.1: after phase 1 the model is frozen and run once on every **un-augmented** training
image; per image and task it yields the fine-grained pseudo label ``Y~`` (class / bin id of ``G'``), its
confidence (the max softmax, so the threshold tau can change without rediscovery), the task feature
``F~ = F''`` and the global-token confidence ``M^f``. Phase 3 retrains from scratch on augmented images;
the stored targets must undergo the same flips as the image.

Storage: one safetensors file per source folder, tensors named ``"{index}/{task}/{field}"`` (``label``
int16 ``[H, W]``, ``confidence`` / ``feature`` / ``feature_confidence`` float16) and
``"{index}/labelled"`` (bool per model task: had the image a ground-truth label?). The metadata records
the task order and the model config. Written atomically.

Serving: :class:`PseudoTargetSource` wraps a source for the training loop and adds ``sample["pseudo"]``
(``{task: {"value", "confidence", "feature", "feature_confidence"}}``, ``value`` in the task's decode space
so ``Task.flip`` applies) and ``sample["labelled"]`` (task names with ground truth).
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from stablemtl.data.augment import Augmentation, augment_sample
from stablemtl.models.baselines.hitt import HiTTModel
from stablemtl.models.baselines.hitt_losses import centre_values
from stablemtl.tasks import get_task
from stablemtl.utils.atomic import atomic_path

FIELDS = ("label", "confidence", "feature", "feature_confidence")


@torch.no_grad()
def discover_source(
    model: HiTTModel, source, path: str | os.PathLike, batch_size: int = 8, device: str | torch.device = "cpu"
) -> Path:
    """Run the frozen ``model`` over every row of ``source`` (``raw``: un-augmented) and save the targets.

    Rows are batched in order; pair tasks are discovered only for rows with a next frame. Returns the
    written path.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tensors: dict[str, torch.Tensor] = {}
    model = model.to(device)
    tasks = model.task_names
    for start in range(0, len(source), batch_size):
        rows = [source.raw(i) for i in range(start, min(start + batch_size, len(source)))]
        images = torch.stack([r["image"] for r in rows]).to(device)
        has_pair = all(r.get("next_image") is not None for r in rows)
        next_images = torch.stack([r["next_image"] for r in rows]).to(device) if has_pair else None
        wanted = [t for t in tasks if has_pair or not model.head(t).pair]
        found = model.discover(images, next_images, wanted)
        for b, row in enumerate(rows):
            index = start + b
            tensors[f"{index}/labelled"] = torch.tensor([t in row["labels"] for t in tasks])
            for task in wanted:
                item = found[task]
                tensors[f"{index}/{task}/label"] = item["label"][b].to(torch.int16).cpu()
                for name in FIELDS[1:]:
                    tensors[f"{index}/{task}/{name}"] = item[name][b].to(torch.float16).cpu().contiguous()
    metadata = {"tasks": json.dumps(tasks), "rows": str(len(source)), "model": json.dumps(model.config)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


class PseudoTargets:
    """Read side of one stored source: ``load(index) -> ({task: {field: tensor}}, labelled task names)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"pseudo-target file {str(self.path)!r} does not exist; run the discovery first")
        with safe_open(str(self.path), "pt") as handle:
            metadata = handle.metadata() or {}
            self.keys = set(handle.keys())
        self.tasks: list[str] = json.loads(metadata.get("tasks", "[]"))
        self.rows = int(metadata.get("rows", 0))

    def __len__(self) -> int:
        return self.rows

    def load(self, index: int) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
        if not 0 <= index < self.rows:
            raise IndexError(f"row {index} is out of range for {self.rows} stored rows of {self.path}")
        targets: dict[str, dict[str, torch.Tensor]] = {}
        with safe_open(str(self.path), "pt") as handle:
            labelled_mask = handle.get_tensor(f"{index}/labelled")
            for task in self.tasks:
                if f"{index}/{task}/label" in self.keys:
                    targets[task] = {name: handle.get_tensor(f"{index}/{task}/{name}") for name in FIELDS}
        labelled = [t for t, has in zip(self.tasks, labelled_mask.tolist(), strict=True) if has]
        return targets, labelled


class PseudoTargetSource(Dataset):
    """A training source whose samples carry their stored phase-2 targets, flipped with the image.

    It exposes what the loop's sampler uses (``source``, ``tasks``, ``rows_with_task``, ``set_epoch``,
    ``item``). Augmentation follows the wrapped source's (per-task) ``Augmentation``: each flip is drawn
    from a generator seeded by ``(seed, epoch, index, source)``, applied to the sample through
    ``augment_sample`` and to the pseudo targets here; colour jitter touches the frames only.
    ``centres`` (``{task: (K, C)}``) turn stored bin ids into decode-space values.
    """

    def __init__(self, dataset, store: PseudoTargets, centres: Mapping[str, torch.Tensor], seed: int = 0):
        if len(store) != len(dataset):
            raise ValueError(f"{store.path} stores {len(store)} rows, the source has {len(dataset)}")
        self.dataset = dataset
        self.store = store
        self.centres = {t: c.detach().cpu().float() for t, c in centres.items()}
        self.seed = int(seed)
        self.epoch = 0

    source = property(lambda self: self.dataset.source)
    tasks = property(lambda self: self.dataset.tasks)

    def __len__(self) -> int:
        return len(self.dataset)

    def rows_with_task(self, task: str) -> list[int]:
        return self.dataset.rows_with_task(task)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict:
        return self.item(index)

    def item(self, index: int, task: str | None = None) -> dict[str, Any]:
        sample = self.dataset.raw(index)
        stored, labelled = self.store.load(index)
        pseudo = {name: self._decode(name, fields) for name, fields in stored.items()}
        base = getattr(self.dataset, "augmentation", None)
        if base is not None:
            augmentation = getattr(self.dataset, "task_augmentation", {}).get(task, base) if task else base
            key = f"{self.seed}/{self.epoch}/{int(index)}/{self.source}/pseudo"
            generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            for enabled, horizontal in ((augmentation.hflip, True), (augmentation.vflip, False)):
                if enabled and torch.rand((), generator=generator).item() < augmentation.flip_p:
                    flip = Augmentation(hflip=horizontal, vflip=not horizontal, flip_p=1.0)
                    sample = augment_sample(sample, flip, generator)
                    pseudo = {name: flip_targets(name, fields, horizontal) for name, fields in pseudo.items()}
            if augmentation.jitter is not None:
                jitter = Augmentation(hflip=False, vflip=False, jitter=augmentation.jitter)
                sample = augment_sample(sample, jitter, generator)
        return {**sample, "pseudo": pseudo, "labelled": labelled}

    def _decode(self, task: str, fields: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ids = fields["label"].long()  # [H,W]
        if task in self.centres:
            value = centre_values(ids[None], self.centres[task])[0]  # [C,H,W]
        else:
            value = ids[None]  # class ids [1,H,W]
        return {
            "value": value,
            "confidence": fields["confidence"].float(),
            "feature": fields["feature"].float(),
            "feature_confidence": fields["feature_confidence"].float(),
        }


def flip_targets(task: str, fields: Mapping[str, torch.Tensor], horizontal: bool) -> dict[str, torch.Tensor]:
    """Flip one task's pseudo targets like its label (``Task.flip`` negates normal x, flow u, ...)."""
    out = {name: tensor.flip(-1 if horizontal else -2) for name, tensor in fields.items()}
    out["value"] = get_task(task).flip(fields["value"], horizontal)
    return out


def collate_pseudo(samples: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Stack the pseudo targets of a micro-batch for the HiTT objective.

    Returns ``{"labelled": {task: [B] bool}, "targets": {task: {field: [B, ...]}}}``; a task's targets are
    present only when every sample has them (a pair task discovered only on rows with a next frame).
    """
    labelled = {t: torch.tensor([t in s["labelled"] for s in samples]) for t in tasks}
    targets = {}
    for task in tasks:
        if all(task in s["pseudo"] for s in samples):
            fields = samples[0]["pseudo"][task]
            targets[task] = {name: torch.stack([s["pseudo"][task][name] for s in samples]) for name in fields}
    return {"labelled": labelled, "targets": targets}
