"""From dataset folders to task-isolated micro-batches: sources, the sampler and the DataLoader.

The sampler yields keys ``(task, source, index)``; :class:`KeyedSources` turns a key into
``(task, sample)`` and :func:`collate_groups` turns a micro-batch into a list of per-task groups
(``collate_task_batch`` outputs): one group under task isolation, several under ``joint``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from stablemtl.data import SourceDataset, collate_task_batch, load_source
from stablemtl.data.augment import crop_sample
from stablemtl.data.label_protocols import apply_label_protocol
from stablemtl.data.sampler import SourceInfo, TaskIsolatedSampler
from stablemtl.tasks import task_names
from stablemtl.training.config import TrainConfig
from stablemtl.utils.memo import ByteBudgetMemo

logger = logging.getLogger(__name__)

# The keys of the Sample contract (stablemtl.data); anything else a source adds is passed on as extras.
SAMPLE_KEYS = frozenset({"image", "next_image", "source", "labels", "valid", "intrinsics", "index"})


class KeyedSources(Dataset):
    """Several sources behind one map-style dataset indexed by sampler keys ``(task, source, index, epoch)``.

    The epoch goes to the source's ``set_epoch`` (when it has one), whose augmentation is a pure function
    of ``(seed, epoch, index)``: a key always gives the same sample, in any worker, after any resume.
    With ``resolution`` every sample is cropped to a square of that side: at a random position drawn
    from the same key (``random_crop``) or centred. ``row_memo`` is the memo of decoded rows its source
    folders share (``--row_cache_mb``), kept here for the end-of-run summary.
    """

    def __init__(
        self,
        sources: Sequence[Dataset],
        resolution: int | None = None,
        random_crop: bool = False,
        seed: int = 0,
    ):
        self.sources = list(sources)
        self.resolution, self.random_crop, self.seed = resolution, random_crop, seed
        self.row_memo: ByteBudgetMemo | None = None

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources)

    def __getitem__(self, key: tuple[str, int, int, int]) -> tuple[str, dict]:
        task, source, index, epoch = key
        dataset = self.sources[source]
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        # ``item`` applies the source's augmentation for this task (the paper augments per source and task).
        sample = dataset.item(index, task) if hasattr(dataset, "item") else dataset[index]
        if self.resolution is not None:
            sample = self._crop(sample, key)
        return task, sample

    def _crop(self, sample: dict, key: tuple[str, int, int, int]) -> dict:
        size = self.resolution
        h, w = sample["image"].shape[-2:]
        if h < size or w < size:
            raise ValueError(
                f"source {sample.get('source')!r} has {h}x{w} samples, smaller than resolution={size}"
            )
        if not self.random_crop:
            return crop_sample(sample, (h - size) // 2, (w - size) // 2, size, size)
        _, source, index, epoch = key
        generator = torch.Generator().manual_seed(hash((self.seed, source, index, epoch)) & (2**63 - 1))
        top = int(torch.randint(h - size + 1, (), generator=generator))
        left = int(torch.randint(w - size + 1, (), generator=generator))
        return crop_sample(sample, top, left, size, size)


def collate_groups(items: Sequence[tuple[str, Mapping]]) -> list[dict]:
    """Group a micro-batch by task (first-appearance order) and collate each group."""
    by_task: dict[str, list[Mapping]] = {}
    for task, sample in items:
        by_task.setdefault(task, []).append(sample)
    groups = []
    for task, samples in by_task.items():
        group = collate_task_batch(samples, task)
        extras = [{k: v for k, v in s.items() if k not in SAMPLE_KEYS} for s in samples]
        if any(extras):  # per-sample data a wrapped source adds (e.g. stored targets): the objective's
            group["extras"] = extras
        groups.append(group)
    return groups


def held_out_rows(config: TrainConfig, size: int) -> int:
    """How many rows at the end of a training source of ``size`` rows training never draws, kept for
    validation: without ``validation_data``, ``num_validation_images`` but at most a quarter of the
    source (a tiny source keeps most of its rows for training); with ``validation_data``, none."""
    return 0 if config.validation_data else min(config.num_validation_images, size // 4)


def source_info(dataset: Dataset, tasks: Sequence[str] | None = None, held_out: int = 0) -> SourceInfo:
    """The sampler's view of a loaded source: name, size, labelled tasks and, for ``tasks``, the rows
    that label each (sources whose rows label different tasks expose ``rows_with_task``). The last
    ``held_out`` rows are left out: the sampler only sees rows ``[0, len - held_out)``."""
    size = len(dataset) - held_out
    if not 0 <= held_out < len(dataset):
        raise ValueError(
            f"held_out must be in [0, {len(dataset)}) for source {dataset.source!r}, got {held_out}"
        )
    rows = None
    if tasks is not None and hasattr(dataset, "rows_with_task"):
        rows = {
            t: tuple(r for r in dataset.rows_with_task(t) if r < size) for t in tasks if t in dataset.tasks
        }
    return SourceInfo(name=str(dataset.source), size=size, tasks=tuple(dataset.tasks), rows=rows)


def resolve_tasks(requested: Sequence[str] | None, infos: Sequence[SourceInfo]) -> list[str]:
    """The trained tasks: the requested ones (each must be labelled somewhere), or every labelled task."""
    labelled = {t for info in infos for t in info.tasks}
    if requested is None:
        return [t for t in task_names() if t in labelled]
    unknown = [t for t in requested if t not in task_names()]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(task_names())}")
    missing = [t for t in requested if t not in labelled]
    if missing:
        raise ValueError(
            f"tasks {missing} are labelled by no training source; the sources label {sorted(labelled)}"
        )
    return list(requested)


def build_training_data(
    config: TrainConfig, rank: int = 0, world_size: int = 1, wrap_source=None
) -> tuple[TaskIsolatedSampler, DataLoader, list[Dataset]]:
    """Load ``config.train_data`` (each source wrapped by ``wrap_source(dataset, index)`` when given) and
    build the sampler and a DataLoader over its micro-batches."""
    if not config.train_data:
        raise ValueError("train_data is empty: pass --train_data DIR [DIR ...] (one folder per source)")
    datasets = [load_source(path, augment=config.augment, seed=config.seed) for path in config.train_data]
    memo = None
    if config.row_cache_mb:
        memo = ByteBudgetMemo(int(config.row_cache_mb * 2**20), "row cache")
        for dataset in datasets:
            if isinstance(dataset, SourceDataset):
                dataset.row_memo = memo
        logger.info("decoded rows of dataset folders are kept in up to %g MB of memory", config.row_cache_mb)
    tasks = resolve_tasks(config.tasks, [source_info(d) for d in datasets])
    datasets = apply_label_protocol(datasets, config.label_protocol, config.label_seed, tasks)
    if wrap_source is not None:
        datasets = [wrap_source(d, i) for i, d in enumerate(datasets)]
    held_out = [held_out_rows(config, len(d)) for d in datasets]
    if any(held_out):
        logger.info("validation holds out the last rows of each training source: %s", held_out)
    infos = [source_info(d, tasks, n) for d, n in zip(datasets, held_out)]
    sampler = TaskIsolatedSampler(
        infos,
        tasks,
        batch_size=config.train_batch_size,
        accumulation_steps=config.gradient_accumulation_steps,
        source_weights=config.source_weights,
        task_sampling=config.task_sampling,
        task_grouping=config.task_grouping,
        seed=config.seed,
        rank=rank,
        world_size=world_size,
        adaptive=config.adaptive,
    )
    workers = config.dataloader_num_workers
    if workers and config.task_sampling == "adaptive":
        # Workers prefetch micro-batches before the loss that decides their task is known.
        logger.warning("task_sampling='adaptive' reads data in the main process (dataloader_num_workers=0)")
        workers = 0
    keyed = KeyedSources(datasets, config.resolution, random_crop=config.augment, seed=config.seed)
    keyed.row_memo = memo
    loader = DataLoader(
        keyed,
        batch_sampler=sampler,
        collate_fn=collate_groups,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    return sampler, loader, datasets


def log_row_cache(loader: DataLoader) -> None:
    """Log how many row decodes the row cache saved (nothing without one). With DataLoader workers each
    worker holds its own copy of the memo, so the main process has no counts to report."""
    memo = getattr(loader.dataset, "row_memo", None)
    if memo is None:
        return
    if loader.num_workers:
        logger.info("row cache: each of the %d DataLoader workers kept its own rows", loader.num_workers)
    else:
        logger.info(memo.summary())
