"""Partial-label protocols of the multi-task literature (MTL-PSL, HiTT): hide some labels of a source.

``"one-label"`` keeps exactly one labelled task per image, balanced over the tasks; ``"random-labels"``
keeps a random non-empty proper subset (``k ~ U{1, n-1}`` of an image's ``n`` labelled tasks; all of
them when it has one); ``"full"`` keeps everything. The draw is made once per image from a seed, so it
never changes between epochs, runs or processes. Any source works: a synthetic profile, a reader, the
user's own data (:class:`LabelProtocolSource`), and the NYUD-v2 reader draws its protocols the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

PROTOCOLS = ("full", "one-label", "random-labels")


def draw_labels(labelled: np.ndarray, protocol: str, seed: int) -> np.ndarray:
    """Which labels each image keeps: ``labelled`` ``(N, T)`` bool (the labels it has) -> ``(N, T)`` bool.

    ``one-label`` visits the images in a seeded random order and gives each the labelled task with the
    fewest images so far (ties broken at random), so with every task labelled everywhere each task gets
    ``floor`` or ``ceil`` of ``N / T`` images.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"label protocol {protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}")
    labelled = np.asarray(labelled, dtype=bool)
    if labelled.ndim != 2:
        raise ValueError(f"labelled must be an (N, T) array, got shape {labelled.shape}")
    if protocol == "full":
        return labelled.copy()
    rng = np.random.default_rng(seed)
    keep = np.zeros_like(labelled)
    if protocol == "one-label":
        counts = np.zeros(labelled.shape[1], dtype=np.int64)
        for i in rng.permutation(len(labelled)):
            options = np.flatnonzero(labelled[i])
            if len(options) == 0:
                continue
            options = rng.permutation(options)
            choice = options[np.argmin(counts[options])]
            keep[i, choice] = True
            counts[choice] += 1
        return keep
    for i, row in enumerate(labelled):
        options = np.flatnonzero(row)
        if len(options) == 0:
            continue
        k = 1 if len(options) == 1 else int(rng.integers(1, len(options)))  # 1 .. n-1
        keep[i, rng.permutation(options)[:k]] = True
    return keep


class LabelProtocolSource:
    """A training source seen under a partial-label protocol: hidden labels are absent from its samples
    and from ``rows_with_task``, so the sampler never draws an image for a task it no longer labels.

    Args:
        dataset: a source with ``tasks``, ``rows_with_task(task)``, ``raw``/``item``/``__getitem__``.
        protocol: one of :data:`PROTOCOLS`.
        seed: seed of the draw.
        tasks: the tasks the protocol deals out (default: all the source labels); the others are hidden.
    """

    def __init__(self, dataset: Any, protocol: str, seed: int = 0, tasks: Sequence[str] | None = None):
        self.dataset = dataset
        tasks = [t for t in dataset.tasks if tasks is None or t in tasks]
        labelled = np.zeros((len(dataset), len(tasks)), dtype=bool)
        for j, task in enumerate(tasks):
            labelled[list(dataset.rows_with_task(task)), j] = True
        keep = draw_labels(labelled, protocol, seed)
        self._kept = [frozenset(t for t, k in zip(tasks, row) if k) for row in keep]
        self._rows = {t: [int(i) for i in np.flatnonzero(keep[:, j])] for j, t in enumerate(tasks)}
        self.tasks = [t for t in tasks if self._rows[t]]
        self.protocol = protocol
        logger.info(
            "source %s under %s: images per task %s",
            getattr(dataset, "source", "?"),
            protocol,
            {t: len(r) for t, r in self._rows.items()},
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # source, augmentation, set_epoch, ... of the wrapped source
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def rows_with_task(self, task: str) -> list[int]:
        return list(self._rows.get(task, []))

    def _restrict(self, sample: dict, index: int) -> dict:
        kept = self._kept[index]
        return {
            **sample,
            "labels": {t: v for t, v in sample["labels"].items() if t in kept},
            "valid": {t: v for t, v in sample["valid"].items() if t in kept},
        }

    def raw(self, index: int) -> dict:
        return self._restrict(self.dataset.raw(index), index)

    def item(self, index: int, task: str | None = None) -> dict:
        if task is not None and task not in self._kept[index]:
            raise ValueError(f"row {index} of {self.dataset.source!r} does not keep a {task!r} label")
        return self._restrict(self.dataset.item(index, task), index)

    def __getitem__(self, index: int) -> dict:
        return self._restrict(self.dataset[index], index)


def apply_label_protocol(
    datasets: Sequence[Any], protocol: str, seed: int, tasks: Sequence[str] | None = None
) -> list[Any]:
    """Wrap each source (a no-op for ``"full"``) to deal out ``tasks``; each source draws with its own
    seed offset."""
    if protocol == "full":
        return list(datasets)
    return [LabelProtocolSource(d, protocol, seed + i, tasks) for i, d in enumerate(datasets)]
